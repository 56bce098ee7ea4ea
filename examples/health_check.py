"""WebSocket and plain HTTP on one port: ``GET /healthz`` answers ``200 OK``.

    python examples/health_check.py [--host localhost] [--port 8765]
    curl -i http://localhost:8765/healthz

Any other request goes on with the WebSocket handshake, to an echo handler. A load
balancer or an orchestrator can probe /healthz without speaking WebSocket.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import tether


def health_check(
    connection: tether.ServerConnection, request: tether.Request
) -> tether.Response | None:
    """``process_request``: answer /healthz in plain HTTP, let anything else through."""
    if request.path == "/healthz":
        return connection.respond(200, "OK\n")
    return None  # continue the WebSocket handshake


async def echo(ws: tether.ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def main(host: str, port: int) -> None:
    async with tether.serve(echo, host, port, process_request=health_check) as server:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.close)
        print(f"listening on ws://{host}:{server.port} (health check: /healthz)", flush=True)
        await server.serve_forever()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="tether server with an HTTP health check")
    parser.add_argument("--host", default="localhost", help="address to bind (localhost)")
    parser.add_argument("--port", type=int, default=8765, help="port to bind (8765)")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    asyncio.run(main(args.host, args.port))
