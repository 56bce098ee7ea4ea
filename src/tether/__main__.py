"""Command line: an interactive client and a ready server for trying things out.

    python -m tether ws://localhost:8765/       interactive client (Ctrl-D to close)
    echo hello | python -m tether ws://...      send stdin lines, print what comes back
    python -m tether serve --echo               an echo server on localhost:8765

Exit status of the client: 0 after a normal closure (1000/1001), 1 when the
connection could not be opened, 2 for a usage error, 3 when it closed abnormally,
130 on Ctrl-C.

How the client works: a daemon thread reads standard input, with ``input()`` and
readline (line editing, history) on a terminal, with ``os.read`` otherwise, and hands
each line to the event loop, which sends it; a task prints each message received. On a
terminal a message must not break the line being typed: it is written *above* that
line with ANSI escapes (save the cursor, insert blank lines above the input line,
write there, restore the cursor a few lines lower), so the terminal, not readline,
moves what is being typed, and readline's idea of its line stays right.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import logging
import os
import shutil
import sys
import threading
import unicodedata
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from .asyncio.client import ClientConnection, connect
from .asyncio.server import ServerConnection, serve
from .exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidProxy,
    InvalidURI,
    TetherError,
)

__all__ = [
    "EXIT_ABNORMAL_CLOSE",
    "EXIT_CONNECT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "format_message",
    "main",
]

#: The connection closed normally (1000 or 1001), whichever side closed it.
EXIT_OK = 0
#: The connection could not be opened (network error, timeout, handshake refused).
EXIT_CONNECT_FAILED = 1
#: Bad arguments: an invalid URI or proxy URL, a --header without ":".
EXIT_USAGE = 2
#: The connection closed abnormally (any other close code; 1006 when it was lost).
EXIT_ABNORMAL_CLOSE = 3
#: Interrupted with Ctrl-C.
EXIT_INTERRUPTED = 130

#: The prompt on a terminal; messages received are shown after ``< ``.
PROMPT = "> "
#: Bytes of a binary message shown in hex on a terminal; the rest is counted.
HEX_SHOWN = 256


# ------------------------------------------------------------------------ formatting


def _escape_controls(text: str) -> str:
    """``text`` with control characters (escape sequences...) shown as ``\\x1b``; tabs
    become spaces. Line breaks stay."""
    if text.isprintable():
        return text
    out = []
    for char in text.expandtabs(4):
        if char == "\n" or unicodedata.category(char) != "Cc":
            out.append(char)
        else:
            out.append(f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
    return "".join(out)


def format_message(message: str | bytes, *, terminal: bool = False) -> str:
    """A received message as printed: text as it is, binary as ``<binary, N bytes>``
    followed by its text (when it is printable UTF-8) or its bytes in hex.

    On a terminal (``terminal=True``) control characters in text are escaped, so a
    message can't move the cursor or change colours, and at most :data:`HEX_SHOWN`
    bytes are shown in hex.
    """
    if isinstance(message, str):
        return _escape_controls(message) if terminal else message
    size = f"<binary, {len(message):,} byte{'' if len(message) == 1 else 's'}>"
    if not message:
        return size
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        if text.isprintable():
            return f"{size} {text}"
        return f"{size} {text!r}"
    shown = message[:HEX_SHOWN] if terminal else message
    rest = len(message) - len(shown)
    return f"{size} {shown.hex(' ')}" + (f" ... ({rest:,} more bytes)" if rest else "")


def _width(line: str) -> int:
    """Terminal columns taken by ``line`` (East Asian wide characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in line)


def above_input_line(text: str, columns: int) -> str:
    """Escape sequences that write ``text`` above the line the cursor is on, and leave
    the cursor where it was in that line (which moves down)."""
    lines = text.split("\n")
    rows = sum(max(1, -(-_width(line) // columns)) for line in lines)
    return (
        "\x1b7"  # DECSC: save the cursor, somewhere in the line being typed
        + "\n" * rows  # make room below it: at the bottom, this scrolls up
        + f"\x1b[{rows}A"  # back up to the line being typed
        + f"\x1b[{rows}L"  # IL: insert blank lines here, pushing that line down
        + "\r" + "\r\n".join(lines)
        + "\x1b8"  # DECRC: the saved cursor, now in the first inserted line...
        + f"\x1b[{rows}B"  # ... so down to the line being typed, same column
    )


class Output:
    """Where received messages (standard output) and notices (standard error) go.

    With ``terminal`` set, both are written above the line being typed, and messages
    are prefixed with ``< ``.
    """

    def __init__(self, terminal: bool) -> None:
        self.terminal = terminal
        self.lock = threading.Lock()

    def message(self, message: str | bytes) -> None:
        """Print a received message."""
        text = format_message(message, terminal=self.terminal)
        self._write(sys.stdout, "< " + text if self.terminal else text)

    def notice(self, text: str) -> None:
        """Print a notice about the connection (on standard error)."""
        self._write(sys.stderr, text)

    def _write(self, stream: TextIO, text: str) -> None:
        with self.lock:
            if self.terminal:
                sys.stdout.flush()
                columns = shutil.get_terminal_size().columns or 80
                stream.write(above_input_line(text, columns))
            else:
                stream.write(text + "\n")
            stream.flush()


class _NoticeHandler(logging.Handler):
    """Log records of the client (retries, redirects) as notices."""

    def __init__(self, output: Output) -> None:
        super().__init__(logging.INFO)
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.output.notice(record.getMessage())
        except Exception:  # pragma: no cover - as logging.Handler does
            self.handleError(record)


# ----------------------------------------------------------------------------- input


class Lines:
    """Lines of standard input, read by a daemon thread; ``None`` at the end of input.

    On a terminal (``prompt`` given) ``input()`` reads them, with readline's line
    editing and history; otherwise :func:`os.read` does, so that no lock of
    ``sys.stdin`` is held by a thread still blocked when the program exits.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, prompt: str | None) -> None:
        self.loop = loop
        self.prompt = prompt
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        #: lines taken but not sent (the connection closed meanwhile): sent first
        self.pending: deque[str] = deque()
        #: set when the input has ended
        self.ended = asyncio.Event()
        self.thread = threading.Thread(target=self._run, name="tether-cli-stdin", daemon=True)

    def start(self) -> None:
        """Start reading."""
        self.thread.start()

    async def get(self) -> str | None:
        """The next line, or ``None`` when the input has ended."""
        if self.pending:
            return self.pending.popleft()
        return await self.queue.get()

    def unget(self, line: str) -> None:
        """Put back a line that could not be sent."""
        self.pending.appendleft(line)

    def _deliver(self, line: str | None) -> None:
        self.queue.put_nowait(line)
        if line is None:
            self.ended.set()

    def _put(self, line: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
            self.loop.call_soon_threadsafe(self._deliver, line)

    def _run(self) -> None:
        try:
            lines = self._typed() if self.prompt is not None else self._piped()
            for line in lines:
                self._put(line)
        finally:
            self._put(None)

    def _typed(self) -> Iterator[str]:
        assert self.prompt is not None
        with contextlib.suppress(EOFError):
            while True:
                yield input(self.prompt)

    @staticmethod
    def _piped() -> Iterator[str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        buffer = ""
        fd = sys.stdin.fileno()
        while True:
            data = os.read(fd, 65536)
            buffer += decoder.decode(data, final=not data)
            *lines, buffer = buffer.split("\n")
            for line in lines:
                yield line.removesuffix("\r")
            if not data:
                if buffer:
                    yield buffer.removesuffix("\r")
                return


# ---------------------------------------------------------------------------- client


def _exit_status(ws: ClientConnection) -> int:
    closed = ws._closed_exc()
    return EXIT_OK if isinstance(closed, ConnectionClosedOK) else EXIT_ABNORMAL_CLOSE


async def _session(
    ws: ClientConnection, lines: Lines, output: Output, linger: float = 0
) -> bool:
    """Send lines and print messages until the input or the connection ends.

    At the end of the input, wait until no message came for ``linger`` seconds (the
    answers to the last lines), then close with 1000. Returns whether the input ended.
    """
    activity = asyncio.Event()

    async def receive() -> None:
        async for message in ws:
            activity.set()
            output.message(message)

    receiving = asyncio.ensure_future(receive())
    input_ended = False
    try:
        while True:
            getting = asyncio.ensure_future(lines.get())
            await asyncio.wait({getting, receiving}, return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
                break
            line = getting.result()
            if line is None:
                input_ended = True
                await _linger(receiving, activity, linger)
                await ws.close()
                break
            try:
                await ws.send(line)
            except ConnectionClosed:
                lines.unget(line)
                break
        with contextlib.suppress(ConnectionClosed):
            await receiving
    finally:
        receiving.cancel()
        if ws.transport is not None and not ws.connection_lost_waiter.done():
            ws.transport.abort()  # interrupted
    await ws.wait_closed()
    return input_ended


async def _linger(receiving: asyncio.Future[None], activity: asyncio.Event,
                  idle: float) -> None:
    """Wait until ``receiving`` ends or ``idle`` seconds pass without ``activity``."""
    while idle > 0 and not receiving.done():
        activity.clear()
        waiter: asyncio.Future[Any] = asyncio.ensure_future(activity.wait())
        try:
            done, _ = await asyncio.wait({receiving, waiter}, timeout=idle,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not done:
            return


def _closed_notice(ws: ClientConnection) -> str:
    return f"Connection closed: {ws.close_code} {ws.close_reason or ''}".rstrip()


async def _run_once(
    options: dict[str, Any], uri: str, lines: Lines, output: Output, linger: float
) -> int:
    try:
        ws = await connect(uri, **options)
    except (OSError, TimeoutError, TetherError) as exc:
        output.notice(f"Failed to connect to {uri}: {exc}")
        return EXIT_CONNECT_FAILED
    if output.terminal:
        output.notice(f"Connected to {uri}. Type a message and Enter; Ctrl-D to close.")
    lines.start()
    await _session(ws, lines, output, linger)
    status = _exit_status(ws)
    if output.terminal or status != EXIT_OK:
        output.notice(_closed_notice(ws))
    return status


async def _run_reconnecting(
    options: dict[str, Any], uri: str, lines: Lines, output: Output, linger: float
) -> int:
    """Connect again after each disconnection, until the input ends or an error that
    retrying can't fix. On a terminal, Ctrl-D while disconnected ends at once; piped
    input waits for a connection to send every line."""
    status = EXIT_CONNECT_FAILED
    in_session = False

    async def loop() -> None:
        nonlocal status, in_session
        lines.start()
        async for ws in connect(uri, **options):
            output.notice(f"Connected to {uri}."
                          + (" Type a message and Enter; Ctrl-D to close."
                             if output.terminal else ""))
            in_session = True
            input_ended = await _session(ws, lines, output, linger)
            in_session = False
            status = _exit_status(ws)
            if input_ended:
                if output.terminal or status != EXIT_OK:
                    output.notice(_closed_notice(ws))
                return

    running = asyncio.ensure_future(loop())
    ended = asyncio.ensure_future(lines.ended.wait())
    try:
        await asyncio.wait({running, ended}, return_when=asyncio.FIRST_COMPLETED)
        if not running.done() and output.terminal and not in_session:
            # Ctrl-D while (re)connecting: stop now.
            running.cancel()
            await asyncio.wait({running})
            output.notice("Input ended while disconnected.")
            return status
        # Otherwise a session takes the end of the input from the queue and closes.
        await asyncio.wait({running})
    finally:
        ended.cancel()
        running.cancel()
    try:
        running.result()
    except (OSError, TimeoutError, TetherError) as exc:
        output.notice(f"Failed to connect to {uri}: {exc}")
        return EXIT_CONNECT_FAILED
    return status


def _client_options(args: argparse.Namespace) -> dict[str, Any]:
    """connect()'s options from the command line; raise ValueError for bad ones."""
    headers = []
    for header in args.header or []:
        name, sep, value = header.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header must look like 'Name: value', not {header!r}")
        headers.append((name.strip(), value.strip()))
    options: dict[str, Any] = {
        "additional_headers": headers,
        "subprotocols": args.subprotocol or None,
        "max_size": None,
    }
    if args.proxy is not None:
        options["proxy"] = None if args.proxy.lower() in ("", "none") else args.proxy
    if args.insecure and args.uri.startswith("wss://"):
        import ssl

        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        options["ssl"] = context
    return options


def _use_readline() -> bool:
    """Import readline (line editing and history for ``input()``) if there is one."""
    try:
        import readline  # noqa: F401
    except ImportError:
        return False
    return True


async def run_client(args: argparse.Namespace) -> int:
    """Connect, send stdin lines, print received messages; return the exit status."""
    options = _client_options(args)
    interactive = sys.stdin.isatty()
    terminal = (
        interactive
        and sys.stdout.isatty()
        and os.environ.get("TERM", "") not in ("", "dumb")
        and _use_readline()
    )
    output = Output(terminal)
    lines = Lines(asyncio.get_running_loop(), PROMPT if terminal else "" if interactive
                  else None)
    # Created here so that a bad URI or proxy is a usage error, before connecting.
    connect(args.uri, **options)
    linger = 0.0 if interactive else args.wait
    with _notices(output, enabled=not args.verbose):
        if args.reconnect:
            return await _run_reconnecting(options, args.uri, lines, output, linger)
        return await _run_once(options, args.uri, lines, output, linger)


@contextlib.contextmanager
def _notices(output: Output, enabled: bool) -> Iterator[None]:
    """Show the client's INFO log (retries, redirects) as notices; with -v, logging
    prints it already."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("tether.client")
    handler = _NoticeHandler(output)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# ---------------------------------------------------------------------------- server


async def run_server(args: argparse.Namespace) -> int:
    """Serve until interrupted: print every message, echo it back with --echo."""

    async def handler(ws: ServerConnection) -> None:
        print(f"+ {ws.id} connected from {ws.remote_address}", flush=True)
        try:
            async for message in ws:
                if not args.quiet:
                    print(f"< {ws.id}: {format_message(message)}", flush=True)
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


# ------------------------------------------------------------------------------ main


_EPILOG = """\
client: lines read from standard input are sent as text messages; messages received
are printed (binary ones as <binary, N bytes> and their text or hex). On a terminal,
lines can be edited, Up and Down go through the history, received messages appear
above the line being typed, and Ctrl-D closes the connection.

exit status (client): 0 normal closure (1000/1001), 1 could not connect,
2 usage error, 3 abnormal closure, 130 interrupted (Ctrl-C)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tether",
        description="WebSocket client (python -m tether URI) and server (python -m tether serve).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("uri", help="ws:// or wss:// URI to connect to, or 'serve'")
    client = parser.add_argument_group("client")
    client.add_argument("--header", "-H", action="append", metavar="'NAME: VALUE'",
                        help="extra request header; repeatable")
    client.add_argument("--subprotocol", action="append", metavar="NAME",
                        help="subprotocol to offer; repeatable")
    client.add_argument("--proxy", metavar="URL",
                        help="proxy (http://, https://, socks5h://...), or 'none' to "
                             "connect directly (default: https_proxy, http_proxy, "
                             "all_proxy and no_proxy from the environment)")
    client.add_argument("--insecure", "-k", action="store_true",
                        help="don't verify the server's TLS certificate")
    client.add_argument("--reconnect", action="store_true",
                        help="connect again after each disconnection, with backoff, "
                             "until the input ends")
    client.add_argument("--wait", type=float, default=1.0, metavar="SECONDS",
                        help="when input is not a terminal: at its end, wait until no "
                             "message came for SECONDS (default: 1) before closing")
    server = parser.add_argument_group("serve")
    server.add_argument("--host", default="localhost", help="address to bind")
    server.add_argument("--port", type=int, default=8765, help="port to bind")
    server.add_argument("--echo", action="store_true", help="echo every message back")
    server.add_argument("--quiet", "-q", action="store_true", help="don't print messages")
    parser.add_argument("--verbose", "-v", action="count", default=0,
                        help="log at INFO (-v) or DEBUG (-vv, every frame)")
    return parser


@contextlib.contextmanager
def _terminal_restored() -> Iterator[None]:
    """Restore standard input's terminal settings on the way out: readline changes
    them while it reads a line, and the thread reading may be stopped mid-line."""
    try:
        import termios

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd) if os.isatty(fd) else None
    except (ImportError, OSError, ValueError):
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
            if sys.stdout.isatty():
                sys.stdout.write("\n")  # leave the line that was being typed


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
        with _terminal_restored():
            return asyncio.run(run_client(args))
    except (InvalidURI, InvalidProxy, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    # A thread blocked reading standard input must not keep the process alive.
    os._exit(main())
