"""Test helpers shared by tests/asyncio, tests/sync and tests/both.

- The RFC 6455 wire format written by hand, not taken from tether: frames
  (:func:`encode_frame`, :func:`read_frame`), the opening handshake's HTTP, so that raw
  peers can behave badly on purpose (never answer a ping or a close frame, drop the TCP
  connection without a close frame, never answer the handshake).
- A raw peer over a blocking socket (:class:`RawPeer`, :func:`raw_client`,
  :class:`RawServer`, :func:`http_get`): usable against a server of either layer from
  any thread. tests/asyncio has an asyncio-streams twin built on the same codec.
- Threads: :class:`Background`, :func:`wait_until` and the ``no_leaked_threads`` check.
- TLS: a self-signed certificate for localhost and 127.0.0.1, made at test time
  (``tls_files``: import the fixture into a conftest to use it).

Everything talks to 127.0.0.1 on port 0; every wait has a bound (:data:`TIMEOUT`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import ipaddress
import os
import queue
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: Upper bound of any single wait in these tests; nothing should come close to it.
TIMEOUT = 5.0
HOST = "127.0.0.1"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# -------------------------------------------------------------------------- frames


def accept_key(key: str) -> str:
    """RFC 6455 4.2.2: base64(SHA-1(key + GUID))."""
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def apply_mask(payload: bytes, key: bytes) -> bytes:
    """RFC 6455 5.3: XOR with the 4-byte key, repeated (masking and unmasking alike)."""
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
    return head + key + apply_mask(payload, key)


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


def read_frame() -> Generator[int, bytes, Frame]:
    """Parse one frame: yields how many bytes it needs next and is sent exactly those.

    A blocking peer drives it with ``sock.recv``, an asyncio one with ``readexactly``.
    """
    b0, b1 = yield 2
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", (yield 2))
    elif n == 127:
        (n,) = struct.unpack("!Q", (yield 8))
    key = (yield 4) if b1 & 0x80 else None
    payload = (yield n) if n else b""
    if key is not None:
        payload = apply_mask(payload, key)
    return Frame(bool(b0 & 0x80), b0 & 0x0F, bool(b0 & 0x40), payload)


# ------------------------------------------------------------------- HTTP handshake


def parse_http_head(head: bytes) -> tuple[str, dict[str, str]]:
    """An HTTP head (without the blank line): its first line and its headers (lower-case
    names)."""
    first, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return first, headers


def upgrade_request(port: int, path: str, key: str, extra_headers: str = "") -> bytes:
    """A client's opening handshake (RFC 6455 4.1) for 127.0.0.1:``port``."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    ).encode()


def switching_protocols(accept: str, *, subprotocol: str | None = None,
                        extensions: str | None = None) -> bytes:
    """A server's 101 response (RFC 6455 4.2.2) with this ``Sec-WebSocket-Accept``."""
    response = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    )
    if subprotocol is not None:
        response += f"Sec-WebSocket-Protocol: {subprotocol}\r\n"
    if extensions is not None:
        response += f"Sec-WebSocket-Extensions: {extensions}\r\n"
    return (response + "\r\n").encode()


# ------------------------------------------------------------ raw peer over a socket


class RawPeer:
    """One end of a WebSocket connection spoken by hand over a blocking socket."""

    def __init__(self, sock: socket.socket, *, client: bool, buffered: bytes = b"") -> None:
        self.sock = sock
        self.client = client
        self._buf = bytearray(buffered)

    def send_frame(self, opcode: int, payload: bytes = b"", *, fin: bool = True) -> None:
        self.sock.sendall(encode_frame(opcode, payload, fin=fin, mask=self.client))

    def _read_exactly(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self._buf += data
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def recv_frame(self, timeout: float = TIMEOUT) -> Frame:
        """Read one frame; raise ``EOFError`` at EOF, ``TimeoutError`` after timeout."""
        deadline = time.monotonic() + timeout
        parser = read_frame()
        try:
            wanted = next(parser)
            while True:
                wanted = parser.send(self._read_exactly(wanted, deadline))
        except StopIteration as done:
            frame: Frame = done.value
            return frame

    def recv_until(self, opcode: int, timeout: float = TIMEOUT) -> list[Frame]:
        """Read frames until one with ``opcode``; return them all, that one last."""
        deadline = time.monotonic() + timeout
        frames = [self.recv_frame(timeout)]
        while frames[-1].opcode != opcode:
            frames.append(self.recv_frame(max(deadline - time.monotonic(), 0.001)))
        return frames

    def read_eof(self, timeout: float = TIMEOUT) -> bytes:
        """Read until the peer closes the TCP connection; return what came."""
        deadline = time.monotonic() + timeout
        data = bytes(self._buf)
        self._buf.clear()
        try:
            while True:
                self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = self.sock.recv(65536)
                if not chunk:
                    return data
                data += chunk
        except ConnectionResetError:
            return data

    def abort(self) -> None:
        """Drop the TCP connection at once (RST), without a close frame."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        """Close the TCP connection (FIN), without a close frame."""
        self.sock.close()


def read_http_head(sock: socket.socket, timeout: float = TIMEOUT
                   ) -> tuple[str, dict[str, str], bytes]:
    """Read an HTTP head; return its first line, its headers (lower-case names) and
    the bytes that came after it."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed after {data!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    first, headers = parse_http_head(head)
    return first, headers, rest


def http_get(port: int, path: str = "/", headers: str = "") -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 GET over a raw socket: status, headers, body."""
    with socket.create_connection((HOST, port), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{headers}\r\n".encode())
        first, hdrs, body = read_http_head(sock)
        length = int(hdrs.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(first.split()[1]), hdrs, body


def raw_client(port: int, path: str = "/", extra_headers: str = "") -> RawPeer:
    """Open a WebSocket connection to a server on 127.0.0.1 with a hand-written handshake."""
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(upgrade_request(port, path, key, extra_headers))
    first, headers, rest = read_http_head(sock)
    assert first.split()[1] == "101", first
    assert headers["sec-websocket-accept"] == accept_key(key)
    return RawPeer(sock, client=True, buffered=rest)


class RawServer:
    """A TCP server on 127.0.0.1 that completes the handshake by hand (or never answers).

    Each accepted connection is put in :attr:`peers` as a :class:`RawPeer` (server
    role). ``respond`` replaces the 101 by any HTTP response bytes, followed by the end
    of the TCP stream.
    """

    def __init__(self, *, handshake: bool = True, subprotocol: str | None = None,
                 extensions: str | None = None, respond: bytes | None = None) -> None:
        self.handshake = handshake
        self.subprotocol = subprotocol
        self.extensions = extensions
        self.respond = respond
        self.peers: queue.Queue[RawPeer] = queue.Queue()
        self.requests: queue.Queue[tuple[str, dict[str, str]]] = queue.Queue()
        self.sock = socket.create_server((HOST, 0))
        self.port: int = self.sock.getsockname()[1]
        self._accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="test-raw-server",
                                        daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.sock.accept()
            except OSError:
                return
            self._accepted.append(sock)
            if not self.handshake:
                continue
            try:
                first, headers, rest = read_http_head(sock)
            except (OSError, EOFError):
                continue
            self.requests.put((first, headers))
            if self.respond is not None:
                sock.sendall(self.respond)
                sock.shutdown(socket.SHUT_WR)
                continue
            sock.sendall(switching_protocols(
                accept_key(headers["sec-websocket-key"]),
                subprotocol=self.subprotocol, extensions=self.extensions,
            ))
            self.peers.put(RawPeer(sock, client=False, buffered=rest))

    def next_peer(self) -> RawPeer:
        return self.peers.get(timeout=TIMEOUT)

    @property
    def uri(self) -> str:
        return f"ws://{HOST}:{self.port}/"

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone may not.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(TIMEOUT)
        for sock in self._accepted:
            sock.close()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --------------------------------------------------------------------------- threads


def tether_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("tether-")]


@contextlib.contextmanager
def no_leaked_threads() -> Iterator[None]:
    """Fail if the block leaves a tether thread (reader, timer, connection) running."""
    before = set(tether_threads())
    yield
    deadline = time.monotonic() + TIMEOUT
    for thread in tether_threads():
        if thread not in before:
            thread.join(max(deadline - time.monotonic(), 0))
    leaked = [t.name for t in tether_threads() if t not in before]
    assert not leaked, f"threads left running: {leaked}"


class Background:
    """Run ``func`` in a daemon thread; :meth:`result` returns or re-raises, bounded."""

    def __init__(self, func: Callable[[], Any], name: str = "test-background") -> None:
        self._result: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(func,), name=name, daemon=True)
        self.thread.start()

    def _run(self, func: Callable[[], Any]) -> None:
        try:
            self._result.put((True, func()))
        except BaseException as exc:
            self._result.put((False, exc))

    def result(self, timeout: float = TIMEOUT) -> Any:
        try:
            ok, value = self._result.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"background call still running after {timeout} s") from None
        if not ok:
            raise value
        return value

    def done(self) -> bool:
        return not self.thread.is_alive()


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Poll ``predicate`` until it holds, with a deadline (for states no event signals)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        time.sleep(0.002)


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


def _write_cert_with_cryptography(cert_path: Path, key_path: Path) -> bool:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        return False
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return True


def _write_cert_with_openssl(cert_path: Path, key_path: Path) -> bool:
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "2", "-subj", "/CN=localhost",
            "-addext", f"subjectAltName=DNS:localhost,IP:{HOST}",
            "-keyout", str(key_path), "-out", str(cert_path),
        ],
        check=True, capture_output=True, timeout=30,
    )
    return True


@pytest.fixture(scope="session")
def tls_files() -> Iterator[TLSFiles]:
    """A self-signed certificate for localhost and 127.0.0.1, made at test time
    (with the cryptography package, or else the openssl command)."""
    with tempfile.TemporaryDirectory(prefix="tether-tls-") as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        if not (_write_cert_with_cryptography(cert, key)
                or _write_cert_with_openssl(cert, key)):
            pytest.skip("making a test certificate needs cryptography or openssl")
        yield TLSFiles(cert, key)
