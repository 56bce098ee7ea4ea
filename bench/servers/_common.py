"""What every echo server shares: command line, event loop choice, clean stop, profiling.

Each server binds 127.0.0.1 only, runs until SIGTERM or SIGINT, then closes its listening
socket and exits. With ``--profile FILE`` it runs under cProfile and writes the stats to
FILE on the way out (Python functions only; C code shows up in its caller). With
``--compression`` the library's default permessage-deflate is enabled (without it,
``compression=None``). The soft limit on open files is raised to the hard one, for the
thousands of idle connections of the memory measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import resource
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

HOST = "127.0.0.1"

# serve(port, compression) -> an async context manager that serves while entered
ServeFactory = Callable[[int, bool], AbstractAsyncContextManager[Any]]


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--profile", metavar="FILE", help="run under cProfile, dump stats here")
    parser.add_argument(
        "--compression",
        action="store_true",
        help="enable the library's default permessage-deflate (default: compression=None)",
    )
    return parser.parse_args()


def raise_nofile_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


async def _serve_until_signalled(serve: ServeFactory, port: int, compression: bool) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    async with serve(port, compression):
        await stop


def main(description: str, serve: ServeFactory) -> None:
    """Parse the command line and serve with ``serve(port, compression)`` until signalled."""
    args = parse_args(description)
    raise_nofile_limit()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    try:
        coro = _serve_until_signalled(serve, args.port, args.compression)
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
