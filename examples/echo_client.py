"""Echo client: send each message to a WebSocket server and print what comes back.

    python examples/echo_client.py [--uri ws://localhost:8765] [message ...]

With no messages it sends one greeting. Start ``examples/echo_server.py`` first.
Exits with status 1 when the connection cannot be opened.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import tether


async def main(uri: str, messages: list[str]) -> int:
    try:
        ws = await tether.connect(uri)
    except (OSError, TimeoutError, tether.InvalidHandshake) as exc:
        print(f"cannot connect to {uri}: {exc}", file=sys.stderr)
        return 1
    try:
        for message in messages:
            await ws.send(message)
            reply = await ws.recv()
            print(reply)
    finally:
        await ws.close()
    return 0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="tether echo client")
    parser.add_argument("--port", type=int, default=8765,
                        help="port of the server on localhost, when --uri is not given (8765)")
    parser.add_argument("--uri", help="WebSocket URI to connect to (ws://localhost:PORT)")
    parser.add_argument("messages", nargs="*", default=["Hello, tether!"],
                        help="text messages to send, one by one")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    uri = args.uri or f"ws://localhost:{args.port}"
    sys.exit(asyncio.run(main(uri, args.messages)))
