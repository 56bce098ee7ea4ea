"""Echo server for the Autobahn Testsuite (``wstest -m fuzzingclient`` tests it).

Run: ``python tests/autobahn/echo_server.py --port 9002 [--impl tether|websockets]
[--layer asyncio|sync] [--compression none|deflate]``.

Every message received is sent back unchanged (text as text, binary as binary). Once the
server listens, one line ``echo_server ready: ...`` is printed to stdout. SIGTERM or SIGINT
stops it. ``--layer sync`` runs the threading server (``tether.sync.serve``: a thread per
connection, ``serve_forever()``) instead of the asyncio one. ``--impl websockets`` runs the
same server on the ``websockets`` library (``websockets.sync`` with ``--layer sync``), as a
reference for the harness itself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

IMPLS = ("tether", "websockets")
LAYERS = ("asyncio", "sync")


def load_impl(
    impl: str, layer: str = "asyncio"
) -> tuple[Callable[..., Any], type[BaseException]]:
    """Return ``(serve, ConnectionClosed)`` of the selected WebSocket library and layer."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}: expected one of {', '.join(LAYERS)}")
    if impl == "tether":
        import tether

        if layer == "sync":
            from tether.sync import serve as sync_serve

            return sync_serve, tether.ConnectionClosed
        return tether.serve, tether.ConnectionClosed
    if impl == "websockets":
        # websockets caps a message at 4096 fragments by default; cases 9.3.*/9.4.* send
        # up to 4 Mi fragments (2**22).
        os.environ.setdefault("WEBSOCKETS_MAX_FRAGMENTS", str(2**23))
        from websockets.exceptions import ConnectionClosed

        if layer == "sync":
            from websockets.sync.server import serve as ws_sync_serve

            return ws_sync_serve, ConnectionClosed
        from websockets.asyncio.server import serve

        return serve, ConnectionClosed
    raise ValueError(f"unknown impl {impl!r}: expected one of {', '.join(IMPLS)}")


def make_handler(closed: type[BaseException]) -> Callable[[Any], Awaitable[None]]:
    async def echo(ws: Any) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        except closed:
            # The fuzzer fails many connections on purpose: not an error of the server.
            pass

    return echo


def make_sync_handler(closed: type[BaseException] | None) -> Callable[[Any], None]:
    """The threading handler. With ``closed`` None (tether), a ConnectionClosed escaping
    the handler is left to the server, which treats it as the peer going away (as
    docs/sync.md says); websockets would log it as a handler failure, so it is caught."""

    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    if closed is None:
        return echo

    def echo_catching(ws: Any) -> None:
        try:
            echo(ws)
        except closed:
            pass

    return echo_catching


def parse_max_size(value: str) -> int | None:
    size = int(value)
    if size < 0:
        raise argparse.ArgumentTypeError("--max-size must be >= 0 (0 means no limit)")
    return size or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any)")
    parser.add_argument("--impl", choices=IMPLS, default="tether")
    parser.add_argument(
        "--layer", choices=LAYERS, default="asyncio", help="asyncio (default) or sync (threads)"
    )
    parser.add_argument("--compression", choices=("none", "deflate"), default="none")
    parser.add_argument(
        "--max-size",
        type=parse_max_size,
        default=None,
        help="largest message in bytes; 0 (the default) means no limit: cases 9.* send 16 MiB",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return parser


def ready_line(args: argparse.Namespace, port: int) -> str:
    return (
        f"echo_server ready: impl={args.impl} layer={args.layer} host={args.host} port={port} "
        f"compression={args.compression} max_size={args.max_size}"
    )


async def serve_until_stopped(args: argparse.Namespace) -> None:
    serve, closed = load_impl(args.impl)
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))

    async with serve(
        make_handler(closed),
        args.host,
        args.port,
        max_size=args.max_size,
        compression=None if args.compression == "none" else args.compression,
        # No keepalive pings: they would add frames the fuzzer does not expect.
        ping_interval=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(ready_line(args, port), flush=True)
        await stop


def serve_sync(args: argparse.Namespace) -> None:
    """The threading server: ``serve_forever()`` until SIGTERM or SIGINT."""
    serve, closed = load_impl(args.impl, "sync")
    with serve(
        make_sync_handler(None if args.impl == "tether" else closed),
        args.host,
        args.port,
        max_size=args.max_size,
        compression=None if args.compression == "none" else args.compression,
        # No keepalive pings: they would add frames the fuzzer does not expect.
        ping_interval=None,
    ) as server:
        if args.impl == "tether":
            # tether.sync: shutdown() may run in a signal handler (docs/sync.md); it only
            # tells serve_forever() to stop, which then closes the connections.
            def stop(signum: int, frame: object) -> None:
                server.shutdown()
        else:
            # websockets.sync's shutdown() waits for serve_forever() to return: it must
            # run in another thread.
            def stop(signum: int, frame: object) -> None:
                threading.Thread(target=server.shutdown, daemon=True).start()

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, stop)
        print(ready_line(args, server.socket.getsockname()[1]), flush=True)
        server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.layer == "sync":
        serve_sync(args)
    else:
        asyncio.run(serve_until_stopped(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
