"""Echo server: every message a client sends comes back to it, text as text, bytes as bytes.

    python examples/echo_server.py [--host localhost] [--port 8765]

Talk to it with ``python examples/echo_client.py`` or ``python -m tether ws://localhost:8765``.
Ctrl-C or SIGTERM stops it gracefully: open connections are closed with 1001 (going away).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import tether


async def echo(ws: tether.ServerConnection) -> None:
    """The connection handler: one task per client, for as long as it stays connected."""
    async for message in ws:
        await ws.send(message)
    # Returning closes the connection with 1000 (normal closure).


async def main(host: str, port: int) -> None:
    async with tether.serve(echo, host, port) as server:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.close)
        print(f"echo server listening on ws://{host}:{server.port}", flush=True)
        await server.serve_forever()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="tether echo server")
    parser.add_argument("--host", default="localhost", help="address to bind (localhost)")
    parser.add_argument("--port", type=int, default=8765, help="port to bind (8765)")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    asyncio.run(main(args.host, args.port))
