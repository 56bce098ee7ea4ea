"""Shared helpers for the asyncio integration tests: loops, raw peers, TLS material.

Every test is a plain function that runs a coroutine in a fresh event loop through the
``run`` fixture (the default asyncio loop) or ``run_any`` (parametrised over the default
loop and uvloop). The loop is closed after each test and a test fails if it leaves a
task running, so a leaked handler or timer task is caught here.

The raw peers speak just enough HTTP and RFC 6455 framing, written here by hand and not
taken from tether, to behave badly on purpose: never answer a ping, never answer a close
frame, drop the TCP connection without a close frame, never answer the handshake.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

import tether

T = TypeVar("T")

#: Upper bound of any single wait in these tests; nothing should come close to it.
TIMEOUT = 5.0
#: Upper bound of a whole test coroutine.
TEST_TIMEOUT = 20.0

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


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


def accept_key(key: str) -> str:
    """RFC 6455 4.2.2: base64(SHA-1(key + GUID))."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def encode_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool) -> bytes:
    """One RFC 6455 frame (section 5.2); clients mask, servers don't."""
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask else 0
    n = len(payload)
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n < 2**16:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


@dataclass(frozen=True)
class Frame:
    fin: bool
    opcode: int
    rsv1: bool
    payload: bytes

    @property
    def close_code(self) -> int:
        assert self.opcode == OP_CLOSE, self
        return int(struct.unpack("!H", self.payload[:2])[0]) if self.payload else 1005


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
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
        key = await self.reader.readexactly(4) if b1 & 0x80 else None
        payload = await self.reader.readexactly(n)
        if key is not None:
            payload = _mask(payload, key)
        return Frame(bool(b0 & 0x80), b0 & 0x0F, bool(b0 & 0x40), payload)

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
    first, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return first, headers


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
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
        ).encode()
    )
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
            extra = f"Sec-WebSocket-Protocol: {self.subprotocol}\r\n" if self.subprotocol else ""
            accept = self.accept or accept_key(headers["sec-websocket-key"])
            writer.write(
                (
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept}\r\n"
                    f"{extra}\r\n"
                ).encode()
            )
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


# ------------------------------------------------------------------------------- TLS


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        ctx.load_verify_locations(self.cert)
        return ctx


@pytest.fixture(scope="session")
def tls_files() -> Iterator[TLSFiles]:
    """A self-signed certificate for localhost and 127.0.0.1, made by the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    with tempfile.TemporaryDirectory(prefix="tether-tls-") as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        subprocess.run(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        yield TLSFiles(cert, key)


@pytest.fixture
def unix_path() -> Iterator[str]:
    """A short path for a Unix socket (sun_path is limited to about 100 bytes)."""
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no Unix sockets on this platform")
    with tempfile.TemporaryDirectory(prefix="tt-") as tmp:
        yield os.path.join(tmp, "ws.sock")
