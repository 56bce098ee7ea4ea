"""The command line, ``python -m tether URI``, run as a real program in a subprocess.

Non-interactive runs get a pipe or a file on standard input; interactive runs get a
pseudo-terminal (``os.openpty``) on standard input, output and error, with
TERM=xterm, so that readline edits lines and the client writes received messages
above the line being typed. The servers are tether's own, on 127.0.0.1, running on an
event loop in a thread of the test process, so the test can look at what they received
and make them send. Every wait has a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import tether
from tether.__main__ import above_input_line, format_message

from .test_proxy import Certificate, ProxyServer, make_certificate

T = TypeVar("T")

#: Upper bound of one wait in these tests; a run of the program takes well under it.
TIMEOUT = 10.0
#: The interactive client's prompt.
PROMPT = b"> "

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX terminals and signals")


# ------------------------------------------------------------------------- servers


Handler = Callable[[tether.ServerConnection, "Server"], Awaitable[None]]


class Server:
    """A tether server on 127.0.0.1, on an event loop in a thread of its own.

    ``handler(ws, server)`` runs for each connection; :attr:`received` gets every
    message the server received and :attr:`connections` every connection.
    """

    def __init__(self, handler: Handler, port: int = 0, **options: Any) -> None:
        self.handler = handler
        self.options = options
        self.received: queue.Queue[str | bytes] = queue.Queue()
        self.connections: queue.Queue[tether.ServerConnection] = queue.Queue()
        self.count = 0
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="test-cli-server")
        self._server: tether.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.port

    def uri(self, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/"

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(TIMEOUT)

    async def _handle(self, ws: tether.ServerConnection) -> None:
        self.count += 1
        self.connections.put(ws)
        await self.handler(ws, self)

    async def _start(self) -> None:
        self._server = await tether.serve(self._handle, "127.0.0.1", self._port,
                                          **self.options)

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), TIMEOUT)

    def __enter__(self) -> Server:
        self._thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *_: object) -> None:
        try:
            if self._server is not None:
                self.call(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(TIMEOUT)
            self._loop.close()

    def next_message(self) -> str | bytes:
        return self.received.get(timeout=TIMEOUT)

    def next_connection(self) -> tether.ServerConnection:
        return self.connections.get(timeout=TIMEOUT)


async def echo(ws: tether.ServerConnection, server: Server) -> None:
    async for message in ws:
        server.received.put(message)
        await ws.send(message)


async def record(ws: tether.ServerConnection, server: Server) -> None:
    async for message in ws:
        server.received.put(message)


def sending(*messages: str | bytes, code: int = 1000, reason: str = "") -> Handler:
    """A handler that sends ``messages``, then closes with ``code``."""

    async def handler(ws: tether.ServerConnection, server: Server) -> None:
        for message in messages:
            await ws.send(message)
        await ws.close(code, reason)

    return handler


# ---------------------------------------------------------------------- the program


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tether", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment, without proxy settings (and with ``extra``)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("PYTHONASYNCIODEBUG", None)
    env.update(extra)
    return env


def run_cli(*args: str, stdin: str | None = "", env: dict[str, str] | None = None,
            stdin_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the program to its end with ``stdin`` piped in; return what it printed."""
    if stdin_file is not None:
        with stdin_file.open("rb") as file:
            return subprocess.run(command(*args), stdin=file, capture_output=True,
                                  text=True, timeout=TIMEOUT, env=env or clean_env())
    return subprocess.run(command(*args), input=stdin, capture_output=True, text=True,
                          timeout=TIMEOUT, env=env or clean_env())


class Piped:
    """The program with pipes, for tests that write and read while it runs."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            command(*args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env=env or clean_env(),
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.stdout = self._reader(self.proc.stdout)
        self.stderr = self._reader(self.proc.stderr)

    @staticmethod
    def _reader(stream: Any) -> queue.Queue[str]:
        lines: queue.Queue[str] = queue.Queue()

        def run() -> None:
            for line in stream:
                lines.put(line.rstrip("\n"))

        threading.Thread(target=run, daemon=True, name="test-cli-pipe").start()
        return lines

    @staticmethod
    def expect(lines: queue.Queue[str], pattern: str) -> str:
        """The next line matching ``pattern`` (the lines before it are skipped)."""
        deadline = time.monotonic() + TIMEOUT
        seen: list[str] = []
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in {seen}") from None
            seen.append(line)
            if re.search(pattern, line):
                return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def end_input(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def wait(self) -> int:
        return self.proc.wait(TIMEOUT)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@contextlib.contextmanager
def piped(*args: str, env: dict[str, str] | None = None) -> Iterator[Piped]:
    program = Piped(*args, env=env)
    try:
        yield program
    finally:
        program.kill()


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound, not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -------------------------------------------------------------------- formatting


def test_format_text() -> None:
    assert format_message("hello") == "hello"
    assert format_message("two\nlines") == "two\nlines"
    # On a terminal, control characters can't reach it.
    assert format_message("\x1b[2Jgotcha\x07", terminal=True) == "\\x1b[2Jgotcha\\x07"
    assert format_message("a\tb\nc", terminal=True) == "a   b\nc"


def test_format_binary() -> None:
    assert format_message(b"") == "<binary, 0 bytes>"
    assert format_message(b"x") == "<binary, 1 byte> x"
    assert format_message(b"hello") == "<binary, 5 bytes> hello"
    assert format_message("café".encode()) == "<binary, 5 bytes> café"
    assert format_message(b"a\nb") == "<binary, 3 bytes> 'a\\nb'"
    assert format_message(b"\x00\x01\xff") == "<binary, 3 bytes> 00 01 ff"


def test_format_long_binary_is_shortened_on_a_terminal() -> None:
    data = bytes(range(256)) * 4
    assert format_message(data).endswith("fe ff")
    shown = format_message(data, terminal=True)
    assert shown.startswith("<binary, 1,024 bytes> 00 01 02")
    assert shown.endswith("fe ff ... (768 more bytes)")


def test_above_input_line() -> None:
    sequence = above_input_line("< hi", 80)
    assert sequence == "\x1b7\n\x1b[1A\x1b[1L\r< hi\x1b8\x1b[1B"
    # Wrapped and multi-line text takes as many rows; wide characters count twice.
    assert "\x1b[3L" in above_input_line("x" * 100 + "\n", 80)
    assert "\x1b[2L" in above_input_line("\u4e2d" * 41, 80)


# ------------------------------------------------------------------ non-interactive


def test_piped_lines_are_sent_and_answers_printed() -> None:
    with Server(echo) as server:
        result = run_cli(server.uri(), stdin="hi\nthere\r\nlast line without newline")
        assert [server.next_message() for _ in range(3)] == [
            "hi", "there", "last line without newline"]
    assert result.stdout == "hi\nthere\nlast line without newline\n"
    assert result.stderr == ""
    assert result.returncode == 0


def test_stdin_from_a_file(tmp_path: Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("one\ntwo\n")
    with Server(echo) as server:
        result = run_cli(server.uri(), stdin_file=lines)
    assert result.stdout == "one\ntwo\n"
    assert result.returncode == 0


def test_binary_messages_are_shown_readably() -> None:
    with Server(sending(b"\x00\x01\xff", b"bytes", "text")) as server:
        result = run_cli(server.uri(), "--wait", "5", stdin=None)
    assert result.stdout.splitlines() == [
        "<binary, 3 bytes> 00 01 ff", "<binary, 5 bytes> bytes", "text"]
    assert result.returncode == 0


def test_server_closing_normally_exits_0() -> None:
    with Server(sending("bye", code=1001)) as server, piped(server.uri()) as program:
        program.expect(program.stdout, "^bye$")
        assert program.wait() == 0


def test_abnormal_closure_exits_3() -> None:
    with Server(sending("oops", code=1011, reason="crashed")) as server, \
            piped(server.uri()) as program:
        program.expect(program.stdout, "^oops$")
        assert program.wait() == 3
        program.expect(program.stderr, "^Connection closed: 1011 crashed$")


def test_connection_refused_exits_1() -> None:
    with refused_port() as port:
        result = run_cli(f"ws://127.0.0.1:{port}/")
    assert result.returncode == 1
    assert result.stderr.startswith(f"Failed to connect to ws://127.0.0.1:{port}/: ")


def test_handshake_refused_exits_1() -> None:
    def forbidden(ws: tether.ServerConnection, request: tether.Request) -> tether.Response:
        return ws.respond(403, "no\n")

    with Server(echo, process_request=forbidden) as server:
        result = run_cli(server.uri())
    assert result.returncode == 1
    assert "403" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["http://127.0.0.1/"], "scheme must be ws:// or wss://"),
        (["ws://127.0.0.1:1/", "--header", "no colon"], "--header must look like"),
        (["ws://127.0.0.1:1/", "--proxy", "ftp://proxy"], "unsupported proxy scheme"),
        (["ws://127.0.0.1:1/", "--no-such-option"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr


def test_header_and_subprotocol() -> None:
    async def tell(ws: tether.ServerConnection, server: Server) -> None:
        assert ws.request is not None
        await ws.send(f"{ws.request.headers['X-Token']} {ws.request.headers['X-Two']} "
                      f"{ws.subprotocol}")
        await ws.close()

    with Server(tell, subprotocols=["chat.v2"]) as server:
        result = run_cli(server.uri(), "-H", "X-Token: abc:def", "--header", "X-Two:2",
                         "--subprotocol", "chat.v1", "--subprotocol", "chat.v2", stdin=None)
    assert result.stdout == "abc:def 2 chat.v2\n"
    assert result.returncode == 0


def test_proxy() -> None:
    with Server(echo) as server, ProxyServer() as proxy:
        result = run_cli(server.uri(), "--proxy", proxy.url(), stdin="through\n")
        assert proxy.targets == [f"127.0.0.1:{server.port}"]
    assert result.stdout == "through\n"
    assert result.returncode == 0


def test_proxy_from_the_environment_and_proxy_none() -> None:
    with Server(echo) as server, ProxyServer() as proxy:
        env = clean_env(http_proxy=proxy.url())
        assert run_cli(server.uri(), stdin="a\n", env=env).stdout == "a\n"
        assert len(proxy.requests) == 1
        assert run_cli(server.uri(), "--proxy", "none", stdin="b\n", env=env).stdout == "b\n"
        assert len(proxy.requests) == 1


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("cli-tls"))


def test_insecure(certificate: Certificate) -> None:
    with Server(echo, ssl=certificate.server_context()) as server:
        refused = run_cli(server.uri("wss"), stdin="x\n")
        assert refused.returncode == 1
        assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr
        result = run_cli(server.uri("wss"), "--insecure", stdin="secure\n")
        assert result.stdout == "secure\n"
        assert result.returncode == 0


def test_verbose_logs_frames() -> None:
    with Server(echo) as server:
        result = run_cli(server.uri(), "-vv", "--wait", "0", stdin="x\n")
    assert result.returncode == 0
    assert "DEBUG" in result.stderr


# --------------------------------------------------------------------- --reconnect


def test_reconnect_after_the_server_closes() -> None:
    async def flaky(ws: tether.ServerConnection, server: Server) -> None:
        if server.count == 1:
            await ws.send("first")
            await ws.close(1011, "restarting")
            return
        await ws.send("second")
        await echo(ws, server)

    with Server(flaky) as server, piped(server.uri(), "--reconnect") as program:
        program.expect(program.stdout, "^first$")
        notice = program.expect(program.stderr, "reconnecting in")
        assert "1011" in notice and "restarting" in notice
        program.expect(program.stdout, "^second$")
        program.send("still here")
        assert server.next_message() == "still here"
        program.expect(program.stdout, "^still here$")
        program.end_input()
        assert program.wait() == 0


def test_reconnect_waits_for_the_server_to_come_up() -> None:
    with contextlib.ExitStack() as stack:
        placeholder = stack.enter_context(socket.socket())
        placeholder.bind(("127.0.0.1", 0))  # bound, not listening: refuses connections
        port = placeholder.getsockname()[1]
        program = stack.enter_context(piped(f"ws://127.0.0.1:{port}/", "--reconnect"))
        program.send("queued while down")
        program.expect(program.stderr, r"failed: ConnectionRefusedError.*retrying in")
        placeholder.close()
        server = stack.enter_context(Server(echo, port=port))
        assert server.next_message() == "queued while down"
        program.expect(program.stdout, "^queued while down$")
        program.end_input()
        assert program.wait() == 0


def test_reconnect_stops_on_404() -> None:
    def missing(ws: tether.ServerConnection, request: tether.Request) -> tether.Response:
        return ws.respond(404)

    with Server(echo, process_request=missing) as server:
        result = run_cli(server.uri(), "--reconnect")
    assert result.returncode == 1
    assert "404" in result.stderr


# ---------------------------------------------------------------------- a terminal


class Terminal:
    """The program on a pseudo-terminal: type into it, read what it shows."""

    def __init__(self, *args: str) -> None:
        import fcntl
        import termios

        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = clean_env(TERM="xterm", INPUTRC="/dev/null")
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        self.proc = subprocess.Popen(command(*args), stdin=self.slave, stdout=self.slave,
                                     stderr=self.slave, env=env)
        self.output = b""
        self.seen = 0

    def _read(self, deadline: float) -> None:
        ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            try:
                self.output += os.read(self.master, 65536)
            except OSError:  # pragma: no cover - EIO once the slave is gone
                pass

    def expect(self, text: str) -> bytes:
        """Wait until ``text`` appears after what was expected before; return the output
        from there to the end of ``text``."""
        wanted = text.encode()
        deadline = time.monotonic() + TIMEOUT
        while (index := self.output.find(wanted, self.seen)) < 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not shown; the terminal shows "
                                     f"{self.output[self.seen:]!r}")
            self._read(deadline)
        start, self.seen = self.seen, index + len(wanted)
        return self.output[start:self.seen]

    def prompted(self, times: int) -> None:
        """Wait until the prompt was shown ``times`` times in all: readline reads the
        terminal from then on. (The answer to a line may come before or after the next
        prompt, so the tests count prompts rather than expect them in order.)"""
        deadline = time.monotonic() + TIMEOUT
        while self.output.count(PROMPT) < times:
            if time.monotonic() > deadline:
                raise AssertionError(f"prompt not shown {times} times: {self.output!r}")
            self._read(deadline)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def wait(self) -> int:
        """Wait for the program to end, reading what it shows meanwhile."""
        deadline = time.monotonic() + TIMEOUT
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running; the terminal shows {self.output!r}")
            self._read(min(deadline, time.monotonic() + 0.05))
        self._read(time.monotonic())
        return self.proc.returncode

    def line_mode(self) -> bool:
        """Whether the terminal is back to cooked mode with echo (as it started)."""
        import termios

        lflag = termios.tcgetattr(self.slave)[3]
        return bool(lflag & termios.ICANON and lflag & termios.ECHO)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
        os.close(self.master)
        os.close(self.slave)


@contextlib.contextmanager
def terminal(*args: str) -> Iterator[Terminal]:
    term = Terminal(*args)
    try:
        yield term
    finally:
        term.close()


@pytest.fixture
def has_readline() -> None:
    result = subprocess.run([sys.executable, "-c", "import readline"], capture_output=True,
                            timeout=TIMEOUT)
    if result.returncode:
        pytest.skip("this Python has no readline")


needs_readline = pytest.mark.usefixtures("has_readline")


@needs_readline
def test_interactive_session() -> None:
    with Server(echo) as server, terminal(server.uri()) as term:
        term.expect(f"Connected to {server.uri()}. Type a message and Enter; Ctrl-D to close.")
        term.prompted(1)
        term.type("hello\r")
        assert server.next_message() == "hello"
        term.expect("< hello")
        term.prompted(2)
        term.type("\x04")  # Ctrl-D
        term.expect("Connection closed: 1000")
        assert term.wait() == 0
        assert term.line_mode()


@needs_readline
def test_message_arriving_while_typing_goes_above_the_line() -> None:
    with Server(record) as server, terminal(server.uri()) as term:
        ws = server.next_connection()
        term.prompted(1)
        term.type("abc")
        term.expect("abc")
        server.call(ws.send("incoming"))
        shown = term.expect("< incoming")
        # Saved cursor, room made, the line being typed pushed down, then restored.
        assert re.search(rb"\x1b7\r?\n\x1b\[1A\x1b\[1L\r$", shown[: -len(b"< incoming")])
        term.expect("\x1b8\x1b[1B")
        # What was typed is intact: finish the line.
        term.type("def\r")
        assert server.next_message() == "abcdef"
        server.call(ws.send(b"\x00\xff"))
        term.expect("< <binary, 2 bytes> 00 ff")
        server.call(ws.send("\x1b[2Jevil"))
        term.expect("< \\x1b[2Jevil")
        term.type("\x04")
        assert term.wait() == 0


@needs_readline
def test_line_editing_and_history() -> None:
    with Server(record) as server, terminal(server.uri()) as term:
        term.prompted(1)
        term.type("first\r")
        assert server.next_message() == "first"
        term.prompted(2)
        term.type("\x1b[A\r")  # Up: the line before
        assert server.next_message() == "first"
        term.prompted(3)
        term.type("helo\x1b[Dl\r")  # Left, then insert
        assert server.next_message() == "hello"
        term.prompted(4)
        term.type("orld\x01w\r")  # Ctrl-A: start of line
        assert server.next_message() == "world"
        term.type("\x04")
        assert term.wait() == 0


@needs_readline
def test_server_closing_while_typing_restores_the_terminal() -> None:
    with Server(record) as server, terminal(server.uri()) as term:
        ws = server.next_connection()
        term.prompted(1)
        term.type("half a li")
        term.expect("half a li")
        server.call(ws.close(1011, "bye"))
        term.expect("Connection closed: 1011 bye")
        assert term.wait() == 3
        assert term.line_mode()


@needs_readline
def test_ctrl_c_exits_130_and_restores_the_terminal() -> None:
    with Server(record) as server, terminal(server.uri()) as term:
        term.prompted(1)
        term.type("typing")
        term.expect("typing")
        term.proc.send_signal(signal.SIGINT)
        assert term.wait() == 130
        assert term.line_mode()


@needs_readline
def test_reconnect_notice_on_a_terminal() -> None:
    async def flaky(ws: tether.ServerConnection, server: Server) -> None:
        if server.count == 1:
            await ws.close(1012, "service restart")
            return
        await echo(ws, server)

    with Server(flaky) as server, terminal(server.uri(), "--reconnect") as term:
        term.expect("service restart")
        term.expect("reconnecting in")
        term.expect(f"Connected to {server.uri()}.")
        term.prompted(1)
        term.type("again\r")
        assert server.next_message() == "again"
        term.expect("< again")
        term.type("\x04")
        assert term.wait() == 0
