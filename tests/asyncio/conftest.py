"""Shared helpers for the asyncio integration tests: loops, raw peers, TLS material.

Every test is a plain function that runs a coroutine in a fresh event loop through the
``run`` fixture (the default asyncio loop) or ``run_any`` (parametrised over the default
loop and uvloop). The loop is closed after each test and a test fails if it leaves a
task running, so a leaked handler or timer task is caught here.

The raw peers speak just enough HTTP and RFC 6455 framing, written by hand and not taken
from tether, to behave badly on purpose: never answer a ping, never answer a close frame,
drop the TCP connection without a close frame, never answer the handshake. Their codec
and the TLS material come from ``tests/_peers.py``, shared with tests/sync and tests/both;
the peers here speak it over asyncio streams.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

import tether

from .._peers import (
    GUID,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TIMEOUT,
    Frame,
    TLSFiles,
    accept_key,
    close_payload,
    encode_frame,
    parse_http_head,
    read_frame,
    switching_protocols,
    tls_files,
    upgrade_request,
)

__all__ = [
    "GUID", "OP_BINARY", "OP_CLOSE", "OP_CONT", "OP_PING", "OP_PONG", "OP_TEXT", "TIMEOUT",
    "Frame", "RawPeer", "RawServer", "Run", "TLSFiles", "accept_key", "close_payload",
    "echo", "echo_server", "encode_frame", "http_get", "raw_client", "read_http_head",
    "tls_files", "uri", "ws_pair",
]

T = TypeVar("T")

#: Upper bound of a whole test coroutine.
TEST_TIMEOUT = 20.0


# ----------------------------------------------------------------------------- loops


class Run(Protocol):
    """Run a coroutine to completion in a fresh event loop and return its result."""

    def __call__(self, coro: Coroutine[Any, Any, T], /) -> T: ...


def _uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    uvloop = pytest.importorskip("uvloop")
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _make_runner(factory: Callable[[], asyncio.AbstractEventLoop]) -> Run:
    def run(coro: Coroutine[Any, Any, T], /) -> T:
        loop = factory()
        try:
            main = loop.create_task(coro)
            # Not wait_for: it would wait without bound for a stuck task to unwind.
            loop.run_until_complete(asyncio.wait({main}, timeout=TEST_TIMEOUT))
            if not main.done():
                main.cancel()
                loop.run_until_complete(asyncio.wait({main}, timeout=TIMEOUT))
                pytest.fail(
                    f"the test did not finish within {TEST_TIMEOUT} s"
                    + ("" if main.done() else f" nor unwind within {TIMEOUT} s of cancellation")
                )
            result = main.result()
            leftover = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.wait(leftover, timeout=TIMEOUT))
            assert not leftover, f"the test left tasks running: {leftover}"
            return result
        finally:
            try:
                for task in asyncio.all_tasks(loop):
                    task.cancel()
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give uvloop tests a watchdog thread: a uvloop that hangs in C ignores SIGALRM."""
    here = Path(__file__).parent
    for item in items:
        callspec = getattr(item, "callspec", None)
        if here in item.path.parents and callspec and callspec.params.get("run_any") == "uvloop":
            item.add_marker(pytest.mark.timeout(60, method="thread"))


@pytest.fixture
def run() -> Run:
    """Run a coroutine in a fresh default asyncio event loop."""
    return _make_runner(asyncio.new_event_loop)


@pytest.fixture(params=["asyncio", "uvloop"])
def run_any(request: pytest.FixtureRequest) -> Run:
    """Run a coroutine in a fresh event loop: the default one, then uvloop."""
    if request.param == "uvloop":
        return _make_runner(_uvloop_factory())
    return _make_runner(asyncio.new_event_loop)


# --------------------------------------------------------------------- tether helpers


async def echo(ws: tether.ServerConnection) -> None:
    """The echo handler of the API's example."""
    async for message in ws:
        await ws.send(message)


def uri(server: tether.Server, path: str = "/") -> str:
    """The ws:// URI of a server listening on 127.0.0.1."""
    return f"ws://127.0.0.1:{server.port}{path}"


@contextlib.asynccontextmanager
async def echo_server(**options: Any) -> AsyncIterator[tether.Server]:
    """An echo server on 127.0.0.1, on a free port."""
    async with tether.serve(echo, "127.0.0.1", 0, **options) as server:
        yield server


@contextlib.asynccontextmanager
async def ws_pair(
    server_options: dict[str, Any] | None = None,
    client_options: dict[str, Any] | None = None,
) -> AsyncIterator[tuple[tether.ServerConnection, tether.ClientConnection]]:
    """A connected (server side, client side) pair over a real loopback socket.

    The server's handler hands its connection to the test and waits until the
    connection is closed, so the test drives both ends.
    """
    loop = asyncio.get_running_loop()
    handed: asyncio.Future[tether.ServerConnection] = loop.create_future()

    async def handler(ws: tether.ServerConnection) -> None:
        handed.set_result(ws)
        await ws.wait_closed()

    async with (
        tether.serve(handler, "127.0.0.1", 0, **(server_options or {})) as server,
        tether.connect(uri(server), **(client_options or {})) as client,
    ):
        server_ws = await asyncio.wait_for(handed, TIMEOUT)
        yield server_ws, client


# ------------------------------------------------------------------ raw RFC 6455 peer


class RawPeer:
    """One end of a WebSocket connection spoken by hand over asyncio streams."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, client: bool
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.client = client

    async def send_frame(self, opcode: int, payload: bytes = b"", *, fin: bool = True) -> None:
        self.writer.write(encode_frame(opcode, payload, fin=fin, mask=self.client))
        await self.writer.drain()

    async def recv_frame(self, timeout: float = TIMEOUT) -> Frame:
        """Read one frame; raise ``asyncio.IncompleteReadError`` at EOF."""
        return await asyncio.wait_for(self._read_frame(), timeout)

    async def _read_frame(self) -> Frame:
        parser = read_frame()
        try:
            wanted = next(parser)
            while True:
                wanted = parser.send(await self.reader.readexactly(wanted))
        except StopIteration as done:
            frame: Frame = done.value
            return frame

    async def recv_until(self, opcode: int, timeout: float = TIMEOUT) -> list[Frame]:
        """Read frames until one with ``opcode``; return them all, that one last."""
        frames: list[Frame] = []
        async with _deadline(timeout):
            while not frames or frames[-1].opcode != opcode:
                frames.append(await self._read_frame())
        return frames

    async def read_eof(self, timeout: float = TIMEOUT) -> bytes:
        """Read until the peer closes the TCP connection; return what came."""
        try:
            return await asyncio.wait_for(self.reader.read(), timeout)
        except ConnectionResetError:
            return b""

    def abort(self) -> None:
        """Drop the TCP connection at once (RST), without a close frame."""
        self.writer.transport.abort()

    async def close(self) -> None:
        """Close the TCP connection (FIN), without a close frame."""
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(self.writer.wait_closed(), TIMEOUT)


class _deadline:
    """``asyncio.timeout`` for Python 3.10 too."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.expired = False
        self.handle: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None

        def expire() -> None:
            self.expired = True
            task.cancel()

        self.handle = asyncio.get_running_loop().call_later(self.delay, expire)

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        assert self.handle is not None
        self.handle.cancel()
        if self.expired and exc_type is asyncio.CancelledError:
            raise TimeoutError(f"timed out after {self.delay} s")


async def read_http_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
    """Read an HTTP head; return its first line and its headers (lower-case names)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    return parse_http_head(head)


async def http_get(port: int, path: str, headers: str = "") -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 GET over a raw socket: status, headers, body."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}\r\n".encode())
        first, hdrs = await read_http_head(reader)
        status = int(first.split()[1])
        length = int(hdrs.get("content-length", "0"))
        body = await asyncio.wait_for(reader.readexactly(length), TIMEOUT)
        return status, hdrs, body
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(writer.wait_closed(), TIMEOUT)


async def raw_client(port: int, path: str = "/", extra_headers: str = "") -> RawPeer:
    """Open a WebSocket connection to a server on 127.0.0.1 with a hand-written handshake."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(upgrade_request(port, path, key, extra_headers))
    first, headers = await read_http_head(reader)
    assert first.split()[1] == "101", first
    assert headers["sec-websocket-accept"] == accept_key(key)
    return RawPeer(reader, writer, client=True)


class RawServer:
    """A TCP server on 127.0.0.1 that completes the handshake by hand (or never answers).

    Each accepted connection is put in :attr:`peers` as a :class:`RawPeer` (server
    role) and kept open until the test closes it or the server stops.
    """

    def __init__(
        self, *, handshake: bool = True, subprotocol: str | None = None, accept: str | None = None
    ) -> None:
        self.handshake = handshake
        self.subprotocol = subprotocol
        self.accept = accept
        self.peers: asyncio.Queue[RawPeer] = asyncio.Queue()
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._done = asyncio.Event()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        if self.handshake:
            try:
                first, headers = await read_http_head(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            self.requests.append((first, headers))
            accept = self.accept or accept_key(headers["sec-websocket-key"])
            writer.write(switching_protocols(accept, subprotocol=self.subprotocol or None))
        await self.peers.put(RawPeer(reader, writer, client=False))
        await self._done.wait()

    async def next_peer(self) -> RawPeer:
        return await asyncio.wait_for(self.peers.get(), TIMEOUT)

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._done.set()
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=TIMEOUT)
        await asyncio.wait_for(self._server.wait_closed(), TIMEOUT)


# ----------------------------------------------------------------------- Unix sockets


@pytest.fixture
def unix_path() -> Iterator[str]:
    """A short path for a Unix socket (sun_path is limited to about 100 bytes)."""
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets on this platform")
    with tempfile.TemporaryDirectory(prefix="tt-") as tmp:
        yield os.path.join(tmp, "ws.sock")
