"""A small chat room: what one client says, every connected client sees.

    python examples/chat_server.py [--host localhost] [--port 8765]

Join with ``python -m tether ws://localhost:8765``: the first line you type is your
name, each line after it is a message to the room. Everyone, you included, sees
``name: message``, and ``* name joined`` / ``* name left`` as people come and go.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import tether

#: the clients that have given their name, with that name
MEMBERS: dict[tether.ServerConnection, str] = {}


async def deliver(ws: tether.ServerConnection, message: str) -> None:
    """Send to one member; one that is leaving at this moment is not an error."""
    try:
        await ws.send(message)
    except tether.ConnectionClosed:
        pass


async def send_to_all(message: str) -> None:
    """Send to every member concurrently, so that no member waits for another."""
    await asyncio.gather(*(deliver(ws, message) for ws in list(MEMBERS)))


async def chat(ws: tether.ServerConnection) -> None:
    try:
        name = await ws.recv()
    except tether.ConnectionClosed:
        return  # gone before saying who they are
    if not isinstance(name, str) or not name.strip():
        # 1008: policy violation, the generic "you broke this server's rules" code.
        await ws.close(1008, "send your name as the first text message")
        return
    name = name.strip()[:32]
    MEMBERS[ws] = name
    try:
        await send_to_all(f"* {name} joined")
        async for message in ws:
            if isinstance(message, str):
                await send_to_all(f"{name}: {message}")
    except tether.ConnectionClosedError:
        pass  # dropped without a closing handshake (network, killed client): not our bug
    finally:
        del MEMBERS[ws]
        await send_to_all(f"* {name} left")


async def main(host: str, port: int) -> None:
    async with tether.serve(chat, host, port) as server:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.close)
        print(f"chat server listening on ws://{host}:{server.port}", flush=True)
        await server.serve_forever()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="tether chat server")
    parser.add_argument("--host", default="localhost", help="address to bind (localhost)")
    parser.add_argument("--port", type=int, default=8765, help="port to bind (8765)")
    return parser.parse_args()


if __name__ == "__main__":
    args = parse_args()
    asyncio.run(main(args.host, args.port))
