"""Command line: an interactive client and a ready server for trying things out.

    python -m tether ws://localhost:8765/       interactive client (Ctrl-D to close)
    echo hello | python -m tether ws://...      send stdin lines, print what comes back
    python -m tether serve --echo               an echo server on localhost:8765

Exit status of the client: 0 after a normal closure (1000/1001), 1 when the
connection could not be opened, 3 when it closed abnormally, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Sequence

from .asyncio.client import connect
from .asyncio.server import ServerConnection, serve
from .exceptions import ConnectionClosed, ConnectionClosedOK, InvalidURI, TetherError

__all__ = ["main"]

EXIT_OK = 0
EXIT_CONNECT_FAILED = 1
EXIT_USAGE = 2
EXIT_ABNORMAL_CLOSE = 3
EXIT_INTERRUPTED = 130


def _format(message: str | bytes) -> str:
    if isinstance(message, str):
        return message
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        return f"<binary, {len(message)} bytes> {message.hex(' ')}"
    return f"<binary, {len(message)} bytes> {text!r}"


async def _read_stdin_lines(queue: asyncio.Queue[str | None], interactive: bool) -> None:
    """Read lines from stdin in a thread (works for terminals, pipes and files)."""
    loop = asyncio.get_running_loop()
    while True:
        if interactive:
            try:
                line: str | None = await loop.run_in_executor(None, input, "")
            except EOFError:
                line = None
        else:
            raw = await loop.run_in_executor(None, sys.stdin.readline)
            line = raw.rstrip("\r\n") if raw else None
        await queue.put(line)
        if line is None:
            return


async def run_client(args: argparse.Namespace) -> int:
    """Connect, send stdin lines, print received messages; return the exit status."""
    interactive = sys.stdin.isatty()
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    headers = [tuple(h.split(":", 1)) for h in args.header or []]
    if any(len(h) != 2 for h in headers):
        print("error: --header must look like 'Name: value'", file=sys.stderr)
        return EXIT_USAGE
    ssl_context = None
    if args.insecure and args.uri.startswith("wss://"):
        import ssl

        ssl_context = ssl.create_default_context()
        ssl_context.check_hostname = False
        ssl_context.verify_mode = ssl.CERT_NONE
    try:
        ws = await connect(
            args.uri,
            additional_headers=[(n.strip(), v.strip()) for n, v in headers],
            subprotocols=args.subprotocol or None,
            ssl=ssl_context,
            max_size=None,
        )
    except InvalidURI:
        raise
    except (OSError, TimeoutError, TetherError) as exc:
        print(f"Failed to connect to {args.uri}: {exc}", file=sys.stderr)
        return EXIT_CONNECT_FAILED
    if interactive:
        print(f"Connected to {args.uri}. Type a message and Enter; Ctrl-D to close.",
              file=sys.stderr)

    async def printer() -> None:
        async for message in ws:
            print(("< " if interactive else "") + _format(message), flush=True)

    queue: asyncio.Queue[str | None] = asyncio.Queue()
    reader = asyncio.ensure_future(_read_stdin_lines(queue, interactive))
    printing = asyncio.ensure_future(printer())
    try:
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, printing},
                                         return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            line = getter.result()
            if line is None:
                await ws.close()
                break
            await ws.send(line)
        await printing
    except ConnectionClosed:
        pass
    finally:
        reader.cancel()
        printing.cancel()
    await ws.wait_closed()
    code, reason = ws.close_code, ws.close_reason
    if interactive or code not in (1000, 1001):
        print(f"Connection closed: {code} {reason or ''}".rstrip(), file=sys.stderr)
    closed = ws._closed_exc()
    return EXIT_OK if isinstance(closed, ConnectionClosedOK) else EXIT_ABNORMAL_CLOSE


async def run_server(args: argparse.Namespace) -> int:
    """Serve until interrupted: print every message, echo it back with --echo."""

    async def handler(ws: ServerConnection) -> None:
        print(f"+ {ws.id} connected from {ws.remote_address}", flush=True)
        try:
            async for message in ws:
                if not args.quiet:
                    print(f"< {ws.id}: {_format(message)}", flush=True)
                if args.echo:
                    await ws.send(message)
        finally:
            print(f"- {ws.id} closed: {ws.close_code}", flush=True)

    async with serve(handler, args.host, args.port, max_size=None) as server:
        addrs = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}"
                          for s in server.sockets)
        print(f"Listening on {addrs}" + (" (echo)" if args.echo else ""), flush=True)
        await server.serve_forever()
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tether",
        description="WebSocket client (python -m tether URI) and server (python -m tether serve).",
    )
    parser.add_argument("uri", help="ws:// or wss:// URI to connect to, or 'serve'")
    parser.add_argument("--header", "-H", action="append", help="extra header 'Name: value'")
    parser.add_argument("--subprotocol", action="append", help="subprotocol to offer")
    parser.add_argument("--insecure", "-k", action="store_true",
                        help="don't verify the server's TLS certificate")
    parser.add_argument("--host", default="localhost", help="serve: address to bind")
    parser.add_argument("--port", type=int, default=8765, help="serve: port to bind")
    parser.add_argument("--echo", action="store_true", help="serve: echo every message back")
    parser.add_argument("--quiet", "-q", action="store_true", help="serve: don't print messages")
    parser.add_argument("--verbose", "-v", action="count", default=0,
                        help="log at INFO (-v) or DEBUG (-vv, every frame)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tether`` and of the ``tether`` script."""
    args = _parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose > 1 else logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
    try:
        if args.uri == "serve":
            return asyncio.run(run_server(args))
        return asyncio.run(run_client(args))
    except InvalidURI as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    # Threads blocked reading stdin must not keep the process alive.
    os._exit(code)
