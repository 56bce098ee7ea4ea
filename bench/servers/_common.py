"""What every echo server shares: command line, event loop choice, clean stop, profiling.

Each server binds 127.0.0.1 only, runs until SIGTERM or SIGINT, then closes its listening
socket and exits. With ``--profile FILE`` it runs under cProfile and writes the stats to
FILE on the way out (Python functions only; C code shows up in its caller).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

HOST = "127.0.0.1"

ServeFactory = Callable[[int], AbstractAsyncContextManager[Any]]


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--profile", metavar="FILE", help="run under cProfile, dump stats here")
    return parser.parse_args()


async def _serve_until_signalled(serve: ServeFactory, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    async with serve(port):
        await stop


def main(description: str, serve: ServeFactory) -> None:
    """Parse the command line and serve with ``serve(port)`` until signalled."""
    args = parse_args(description)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    try:
        coro = _serve_until_signalled(serve, args.port)
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
