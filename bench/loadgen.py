"""The one load generator used against every echo server.

A raw :class:`asyncio.Protocol` client: it writes a fixed opening-handshake request,
checks the ``101`` status line and the ``Sec-WebSocket-Accept`` value, then sends
pre-built masked frames and parses only the *headers* of what comes back, counting
payload bytes until a whole echoed message has returned. It never unmasks, copies,
decodes or validates a payload, so it spends less per message than any WebSocket client
library: the figure measured is the server's cost.

With ``--deflate`` it negotiates permessage-deflate (offering
``client_no_context_takeover``), so that every message it sends can be one of a few
pre-compressed frames built once; it checks that every reply is a compressed text
message (RSV1 and opcode of its first frame) and, before measuring, decompresses two
replies on a separate connection and compares them with what was sent.

``--mode idle`` opens many connections and keeps them open for a memory measurement,
stepping through phases on the runner's command (see :func:`run_idle`).

Run by ``bench/run.py`` in its own process (never the servers' one); usable alone::

    python bench/loadgen.py --port 8765 --mode rt --size 16 --duration 2
    python bench/loadgen.py --port 8765 --mode rt --size 16 --connections 100
    python bench/loadgen.py --port 8765 --mode rt --size 1024 --deflate
    python bench/loadgen.py --port 8765 --mode handshake

It prints one JSON object on stdout: ``{"rate": ..., "count": ..., "elapsed": ...}``.
Every run is bounded by a message count and by a time limit, and by a watchdog.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import hashlib
import importlib.util
import json
import os
import random
import resource
import socket
import struct
import sys
import time
import zlib
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, BinaryIO, TypeVar, cast

HOST = "127.0.0.1"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A fixed key, so the expected accept value and the "limit" server's canned 101
# response are constants too.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = base64.b64encode(hashlib.sha1((KEY + GUID).encode()).digest()).decode()
MASK = b"\x37\xfa\x21\x3d"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

RSV1 = 0x40

MAX_RESPONSE_HEAD = 16 * 1024

# permessage-deflate offers. Round trips ask for client_no_context_takeover: every message
# the load generator sends is then a stream of its own, so a few frames compressed once
# can be sent again and again, and the server may drop its decompressor after each
# message. The memory measurement makes the offer browsers make (context takeover both
# ways: a server keeps a decompressor and a compressor per connection); it sends a single
# message per connection, whose compressed form is the same either way.
DEFLATE_OFFER = "permessage-deflate; client_no_context_takeover; client_max_window_bits"
BROWSER_DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
TAIL = b"\x00\x00\xff\xff"
# Distinct pre-compressed messages sent in turn: more than a 32 KiB window (the largest
# permessage-deflate allows) holds at 1 KiB, so no reply is a back-reference to an
# earlier reply of the connection.
FRAME_POOL = 64


def handshake_request(port: int, path: str = "/", extensions: str | None = None) -> bytes:
    """The opening-handshake request, as bytes, offering ``extensions`` if given."""
    offer = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        f"{offer}"
        "\r\n"
    ).encode("ascii")


def mask_payload(payload: bytes, key: bytes = MASK) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` (whole buffer at once, via big ints)."""
    n = len(payload)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    masked = int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")
    return masked.to_bytes(n, "little")


def frame_header(opcode: int, length: int, *, masked: bool, fin: bool = True) -> bytes:
    """A frame header (without the masking key)."""
    b0 = (0x80 if fin else 0) | opcode
    m = 0x80 if masked else 0
    if length < 126:
        return struct.pack("!BB", b0, m | length)
    if length < 1 << 16:
        return struct.pack("!BBH", b0, m | 126, length)
    return struct.pack("!BBQ", b0, m | 127, length)


def build_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False, key: bytes = MASK
) -> bytes:
    """A complete client-to-server (masked) frame."""
    header = frame_header(opcode, len(payload), masked=True, fin=fin)
    if rsv1:
        header = bytes([header[0] | RSV1]) + header[1:]
    return header + key + mask_payload(payload, key)


CLOSE_FRAME = build_frame(OP_CLOSE, struct.pack("!H", 1000))


def make_payload(size: int, seed: int = 6455) -> bytes:
    """Deterministic, incompressible-looking payload bytes."""
    return random.Random(seed).randbytes(size)


_EVENTS = ("click", "view", "purchase", "login", "logout", "search", "scroll", "share")
_TAGS = ("new", "sale", "eu", "us", "mobile", "desktop", "beta", "vip", "promo", "returning")


def make_json_payload(size: int, seed: int = 7692) -> bytes:
    """Deterministic, compressible JSON-like text of exactly ``size`` ASCII bytes.

    A batch of event records with repeated keys and varied values, as an application
    would stream them (with a 4 KiB window at zlib's default level, 1 KiB compresses
    2.6x and 64 KiB 4.6x). Cut to ``size``, so not always valid JSON, but always valid
    UTF-8.
    """
    rng = random.Random(seed)
    parts = [f'{{"type":"events","batch":{rng.randrange(10**6)},"items":[']
    length = len(parts[0])
    while length < size:
        record = (
            f'{{"id":{rng.randrange(10**9)},"user":"user_{rng.randrange(10**5):05d}",'
            f'"event":"{rng.choice(_EVENTS)}","ts":{1_700_000_000 + rng.randrange(10**7)},'
            f'"price":{rng.randrange(100, 100_000) / 100},"qty":{rng.randrange(1, 20)},'
            f'"tags":["{rng.choice(_TAGS)}","{rng.choice(_TAGS)}"],'
            f'"ok":{"true" if rng.random() < 0.9 else "false"}}},'
        )
        parts.append(record)
        length += len(record)
    return "".join(parts).encode("ascii")[:size]


def deflate_message(payload: bytes, window_bits: int) -> bytes:
    """``payload`` compressed as one message of its own (RFC 7692 7.2.1), from a fresh
    compressor: valid whatever context takeover was negotiated."""
    encoder = zlib.compressobj(9, zlib.DEFLATED, -window_bits, 9)
    data = encoder.compress(payload) + encoder.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(TAIL)
    return data[:-4]


def deflate_params(head: bytes) -> dict[str, str | None] | None:
    """The permessage-deflate parameters a response head accepted, or None."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() != "sec-websocket-extensions":
            continue
        items = [item.strip() for item in value.split(";")]
        if items[0] != "permessage-deflate":
            raise BenchError(f"unexpected extension accepted: {value.strip()!r}")
        params: dict[str, str | None] = {}
        for item in items[1:]:
            key, eq, val = item.partition("=")
            params[key.strip()] = val.strip().strip('"') if eq else None
        return params
    return None


def client_window_bits(params: dict[str, str | None]) -> int:
    """The largest window the client may compress with, from the accepted parameters."""
    value = params.get("client_max_window_bits")
    bits = int(value) if value else 15
    return max(bits, 9)  # zlib cannot compress with 8; a smaller window is always valid


class BenchError(Exception):
    """The server under test misbehaved (bad status, wrong echo, stall, ...)."""


class Meter:
    """Counts completed units (messages or handshakes) against a count and a time limit.

    The first ``warmup`` seconds are not counted. Then the measurement runs until
    ``limit`` units are counted or ``duration`` seconds have passed, whichever is first.
    """

    __slots__ = (
        "count",
        "cpu_start",
        "cpu_stop",
        "done",
        "duration",
        "limit",
        "reply_bytes",
        "start",
        "stop",
        "total",
        "warm_end",
        "warming",
        "warmup",
    )

    def __init__(self, warmup: float, duration: float, limit: int) -> None:
        self.warmup = warmup
        self.duration = duration
        self.limit = limit
        self.warming = True
        self.warm_end = 0.0
        self.start = 0.0
        self.stop = 0.0
        self.count = 0
        self.total = 0  # including the warm-up
        self.reply_bytes = 0  # payload bytes of the replies counted in ``total``
        self.cpu_start = self.cpu_stop = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def begin(self) -> None:
        """Start the clock: warm-up first, then the measurement."""
        self.warm_end = time.perf_counter() + self.warmup

    def tick(self) -> bool:
        """Record one completed unit; return whether to go on."""
        if self.done.done():
            return False
        self.total += 1
        now = time.perf_counter()
        if self.warming:
            if now < self.warm_end:
                return True
            self.warming = False
            self.start = now
            self.cpu_start = time.process_time()
            return True
        self.count += 1
        if self.count >= self.limit or now - self.start >= self.duration:
            self.stop = now
            self.cpu_stop = time.process_time()
            self.done.set_result(None)
            return False
        return True

    @property
    def elapsed(self) -> float:
        return self.stop - self.start


class Client(asyncio.Protocol):
    """One WebSocket connection that parses frame headers only.

    ``frame`` is the pre-built masked message sent for each round trip and ``size`` its
    payload length: a message is complete when a final data frame ends and ``size``
    payload bytes have come back since the previous one. Pings are answered.
    """

    def __init__(
        self, request: bytes, frame: bytes, size: int, meter: Meter | None, inflight: int = 1
    ) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.frame = frame
        self.size = size
        self.meter = meter
        self.inflight = inflight  # messages sent ahead of their echoes (pipelining)
        self.outstanding = 0  # messages sent whose echo has not come back yet
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()  # close frame received
        self.lost: asyncio.Future[None] = loop.create_future()
        self.idle: asyncio.Future[None] = loop.create_future()  # nothing in flight any more
        self.handshaking = True
        self.head = b""
        self.partial = b""  # an incomplete frame header carried over to the next chunk
        self.remaining = 0  # payload bytes still to come in the current frame
        self.opcode = 0
        self.fin = False
        self.msg_bytes = 0
        self.msg_head = 0  # first byte of the current message's first frame
        self.ping = b""  # payload of a ping being received
        # Fast path: a whole small unmasked echo in one chunk is recognised by its length
        # and header alone.
        self.fast_header = frame_header(OP_BINARY, size, masked=False) if size < 126 else b""
        self.fast_len = len(self.fast_header) + size if self.fast_header else -1

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        err = BenchError(f"connection lost: {exc!r}")
        meter = self.meter
        if meter is not None and not meter.done.done() and not self.idle.done():
            meter.done.set_exception(err)
        for fut in (self.opened, self.closed, self.idle):
            if not fut.done():
                fut.set_exception(err)
                fut.exception()  # mark retrieved: nobody may be waiting on it
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        if (
            len(data) == self.fast_len
            and not self.remaining
            and not self.partial
            and data.startswith(self.fast_header)
            and not self.handshaking
        ):
            self.message_done(self.size)
            return
        if self.handshaking:
            self.handshake_data(data)
        else:
            self.frame_data(data)

    # parsing

    def handshake_data(self, data: bytes) -> None:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_RESPONSE_HEAD:
                self.fail(BenchError("response head too long"))
            return
        head, rest = self.head[:end], self.head[end + 4 :]
        self.head = b""
        if not head.startswith(b"HTTP/1.1 101 ") or ACCEPT.encode() not in head:
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            self.fail(BenchError(f"bad opening handshake response: {line!r}"))
            return
        if not self.check_head(head):
            return
        self.handshaking = False
        self.opened.set_result(None)
        if rest:
            self.frame_data(rest)

    def frame_data(self, data: bytes) -> None:
        if self.partial:
            data = self.partial + data
            self.partial = b""
        pos, end = 0, len(data)
        while pos < end:
            if self.remaining:
                take = min(self.remaining, end - pos)
                if self.opcode < OP_CLOSE:
                    self.msg_bytes += take
                elif self.opcode == OP_PING:
                    self.ping += data[pos : pos + take]
                pos += take
                self.remaining -= take
                if self.remaining:
                    return
                self.frame_done()
                continue
            avail = end - pos
            if avail < 2:
                self.partial = data[pos:]
                return
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            hlen = 2 if length < 126 else 4 if length == 126 else 10
            if b1 & 0x80:  # the "limit" server echoes our masked frames back
                hlen += 4
            if avail < hlen:
                self.partial = data[pos:]
                return
            if length == 126:
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            pos += hlen
            self.fin = bool(b0 & 0x80)
            self.opcode = opcode = b0 & 0x0F
            if 0 < opcode < OP_CLOSE:  # a message's first frame
                self.msg_head = b0
            elif opcode == OP_PING:
                self.ping = b""
            self.remaining = length
            if not length:
                self.frame_done()

    def frame_done(self) -> None:
        opcode = self.opcode
        if opcode < OP_CLOSE:
            if self.fin:
                size, self.msg_bytes = self.msg_bytes, 0
                self.message_done(size)
        elif opcode == OP_CLOSE and not self.closed.done():
            self.closed.set_result(None)
        elif opcode == OP_PING and self.transport is not None and not self.closed.done():
            self.transport.write(build_frame(OP_PONG, self.ping))
        # pongs are ignored

    def check_head(self, head: bytes) -> bool:
        """Check the 101 response's head further; False (after failing) if wrong."""
        return True

    def message_done(self, size: int) -> None:
        if size != self.size:
            self.fail(BenchError(f"echoed {size} bytes, sent {self.size}"))
            return
        meter = self.meter
        if meter is not None and meter.tick():
            assert self.transport is not None
            self.transport.write(self.frame)
        else:
            self.outstanding -= 1
            if self.outstanding <= 0 and not self.idle.done():
                self.idle.set_result(None)

    def fail(self, exc: BenchError) -> None:
        for fut in (self.opened, self.idle):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved: nobody may be waiting on it
        if self.meter is not None and not self.meter.done.done():
            self.meter.done.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    # driving

    def send_first(self) -> None:
        """Put ``inflight`` messages in flight at once."""
        assert self.transport is not None
        self.outstanding = self.inflight
        self.transport.write(self.frame * self.inflight)

    async def close(self, timeout: float = 5.0) -> None:
        """Closing handshake: wait until idle, send a close frame, await the server's."""
        assert self.transport is not None
        try:
            if self.meter is not None:
                await asyncio.wait_for(asyncio.shield(self.idle), timeout)
            self.transport.write(CLOSE_FRAME)
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
            self.transport.close()
        except (BenchError, asyncio.TimeoutError):
            self.transport.abort()
        await self.lost


class DeflateClient(Client):
    """A connection that negotiated permessage-deflate and sends pre-compressed frames.

    It sends ``frames`` in turn, starting at ``start``; every reply must be a text
    message whose first frame has RSV1 set (its payload is counted, not inflated: the
    replies are checked for content once per run by :func:`verify_deflate_echo`).
    """

    def __init__(
        self,
        request: bytes,
        frames: list[bytes],
        start: int,
        meter: Meter | None,
        inflight: int = 1,
    ) -> None:
        super().__init__(request, frames[start % len(frames)], 0, meter, inflight)
        self.frames = frames
        self.next = start % len(frames)
        self.fast_len = -1  # replies are variable-length: always parse
        self.replies = 0

    def check_head(self, head: bytes) -> bool:
        try:
            params = deflate_params(head)
        except BenchError as exc:
            self.fail(exc)
            return False
        if params is None:
            self.fail(BenchError("the server did not accept permessage-deflate"))
            return False
        return True

    def send_first(self) -> None:
        assert self.transport is not None
        self.outstanding = self.inflight
        self.transport.write(b"".join(self.take_frame() for _ in range(self.inflight)))

    def take_frame(self) -> bytes:
        frames = self.frames
        frame = frames[self.next]
        self.next = (self.next + 1) % len(frames)
        return frame

    def message_done(self, size: int) -> None:
        head = self.msg_head
        if not head & RSV1 or head & 0x0F != OP_TEXT:
            self.fail(BenchError(f"reply not a compressed text message (first byte {head:#x})"))
            return
        self.replies += 1
        meter = self.meter
        if meter is not None:
            meter.reply_bytes += size  # compressed size: what went over the wire
        if meter is not None and meter.tick():
            assert self.transport is not None
            self.transport.write(self.take_frame())
        else:
            self.outstanding -= 1
            if self.outstanding <= 0 and not self.idle.done():
                self.idle.set_result(None)


Factory = Callable[[], Client]

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux


async def connect(port: int, factory: Factory, source: str | None = None) -> Client:
    """Open a connection and complete the opening handshake.

    With ``source`` (a 127.x.y.z address) the connection is made from that address, and
    the local port is chosen at connect time for the whole 4-tuple
    (``IP_BIND_ADDRESS_NO_PORT``), so that thousands of connections exhaust no port range.
    """
    loop = asyncio.get_running_loop()
    if source is None:
        _, client = await loop.create_connection(factory, HOST, port)
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if sys.platform.startswith("linux"):
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
            sock.setblocking(False)
            await loop.sock_connect(sock, (HOST, port))
        except BaseException:
            sock.close()
            raise
        _, client = await loop.create_connection(factory, sock=sock)
    await client.opened
    return client


# permessage-deflate


def deflate_frames(size: int, window_bits: int, count: int = FRAME_POOL) -> list[bytes]:
    """``count`` distinct JSON-like messages of ``size`` bytes, each a pre-built
    compressed, masked text frame (seeds 1..count)."""
    return [
        build_frame(OP_TEXT, deflate_message(make_json_payload(size, seed), window_bits),
                    rsv1=True)
        for seed in range(1, count + 1)
    ]  # fmt: skip


def read_frame(reader: BinaryIO) -> tuple[int, bytes]:
    """One whole frame from a blocking reader: (first byte, unmasked payload)."""

    def exactly(n: int) -> bytes:
        data = reader.read(n)
        if len(data) != n:
            raise BenchError("connection closed in the middle of a frame")
        return data

    b0, b1 = exactly(2)
    length = b1 & 0x7F
    if length == 126:
        length = int.from_bytes(exactly(2), "big")
    elif length == 127:
        length = int.from_bytes(exactly(8), "big")
    key = exactly(4) if b1 & 0x80 else None
    payload = exactly(length)
    if key is not None:
        payload = mask_payload(payload, key)
    return b0, payload


def read_message(reader: BinaryIO) -> tuple[int, bytes]:
    """One whole data message: (first byte of its first frame, joined payload).
    Control frames in between are skipped."""
    first = -1
    parts: list[bytes] = []
    while True:
        b0, payload = read_frame(reader)
        opcode = b0 & 0x0F
        if opcode >= OP_CLOSE:
            if opcode == OP_CLOSE:
                raise BenchError("the server closed the connection")
            continue
        if first < 0:
            first = b0
        parts.append(payload)
        if b0 & 0x80:
            return first, b"".join(parts)


def read_response_head(reader: BinaryIO) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline(MAX_RESPONSE_HEAD)
        if not line:
            raise BenchError("connection closed during the opening handshake")
        head += line
        if len(head) > MAX_RESPONSE_HEAD:
            raise BenchError("response head too long")
    return head[:-4]


def verify_deflate_echo(port: int, size: int, offer: str, timeout: float = 10.0) -> int:
    """Check that the server compresses echoes correctly; return the client's window bits.

    On a connection of its own (blocking socket): offers ``offer``, checks that
    permessage-deflate is accepted, sends two different pre-compressed JSON-like
    messages, and decompresses both replies with one decompressor, as a client honouring
    the server's context takeover must, comparing them with what was sent. Then closes.
    """
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(handshake_request(port, extensions=offer))
        reader = cast(BinaryIO, sock.makefile("rb"))
        head = read_response_head(reader)
        if not head.startswith(b"HTTP/1.1 101 ") or ACCEPT.encode() not in head:
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            raise BenchError(f"bad opening handshake response: {line!r}")
        params = deflate_params(head)
        if params is None:
            raise BenchError("the server did not accept permessage-deflate")
        bits = client_window_bits(params)
        server_reset = "server_no_context_takeover" in params
        decoder = zlib.decompressobj(-15)  # any server window decodes with 15 bits
        for seed in (1, 2):
            payload = make_json_payload(size, seed)
            sock.sendall(build_frame(OP_TEXT, deflate_message(payload, bits), rsv1=True))
            first, data = read_message(reader)
            if not first & RSV1 or first & 0x0F != OP_TEXT:
                raise BenchError(f"reply not a compressed text message (first byte {first:#x})")
            echoed = decoder.decompress(data + TAIL)
            if echoed != payload:
                raise BenchError(
                    f"decompressed reply differs from the message ({len(echoed)} bytes, "
                    f"sent {len(payload)})"
                )
            if decoder.eof or server_reset:
                decoder = zlib.decompressobj(-15)
        sock.sendall(CLOSE_FRAME)
        with contextlib.suppress(BenchError):  # a close frame, or the TCP close
            while read_frame(reader)[0] & 0x0F != OP_CLOSE:
                pass
    return bits


async def run_round_trips(
    port: int,
    size: int,
    connections: int,
    warmup: float,
    duration: float,
    limit: int,
    deflate_bits: int | None = None,
    inflight: int = 1,
) -> Meter:
    """``connections`` connections, each with ``inflight`` messages of ``size`` bytes in
    flight (sent ahead; each echo that comes back sends the next).

    With ``deflate_bits``, permessage-deflate is negotiated and the messages are
    JSON-like text, compressed beforehand with that window.
    """
    meter = Meter(warmup, duration, limit)
    factories: list[Factory]
    if deflate_bits is None:
        request = handshake_request(port)
        frame = build_frame(OP_BINARY, make_payload(size))
        factories = [lambda: Client(request, frame, size, meter, inflight)] * connections
    else:
        request = handshake_request(port, extensions=DEFLATE_OFFER)
        frames = deflate_frames(size, deflate_bits)
        # each connection starts at another message of the pool
        factories = [
            partial(DeflateClient, request, frames, i, meter, inflight) for i in range(connections)
        ]
    clients: list[Client] = []
    for first in range(0, connections, 10):  # at most 10 handshakes at once
        batch = factories[first : first + 10]
        clients += await asyncio.gather(*(connect(port, factory) for factory in batch))
    meter.begin()
    try:
        for client in clients:
            client.send_first()
        await meter.done
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    return meter


async def run_handshakes(
    port: int, warmup: float, duration: float, limit: int, parallel: int = 1
) -> Meter:
    """``parallel`` workers, each opening a connection (counted), closing it with a
    closing handshake, and again, until the meter says stop."""
    request = handshake_request(port)
    meter = Meter(warmup, duration, limit)

    async def worker() -> None:
        while True:
            client = await connect(port, lambda: Client(request, b"", 0, None))
            going_on = meter.tick()
            await client.close()
            if not going_on:
                return

    meter.begin()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    return meter


async def open_many(
    port: int, factories: list[Factory], sources: list[str], parallel: int = 50
) -> list[Client]:
    """Open one connection per factory, at most ``parallel`` handshakes at once (below the
    servers' listen backlog of 100), spread over the ``sources`` addresses."""
    gate = asyncio.Semaphore(parallel)

    async def one(i: int, factory: Factory) -> Client:
        async with gate:
            return await connect(port, factory, sources[i % len(sources)] if sources else None)

    return await asyncio.gather(*(one(i, factory) for i, factory in enumerate(factories)))


async def command(word: str) -> None:
    """Say ``word`` on stdout, then wait for the runner's go-ahead (a line on stdin)."""
    print(word, flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        raise BenchError("the runner went away (stdin closed)")


IDLE_WARMUP = 20  # connections opened (and used) then closed before the measurement


async def run_idle(
    port: int, connections: int, size: int, deflate_bits: int | None, sources: list[str]
) -> dict[str, Any]:
    """Hold ``connections`` open connections, through phases the runner steps through.

    Each phase is announced by one line on stdout; the next starts when the runner
    writes a line on stdin (it reads the server's memory in between):

    1. ``ready``: after a warm-up (a few connections opened, used like the measured
       ones and closed), so that the server's lazy imports and caches come before.
    2. ``opened``: every opening handshake has completed; the connections are idle.
    3. with ``deflate_bits`` only, ``echoed``: every connection sent one compressed
       JSON-like message of ``size`` bytes and got its compressed echo back.

    Then every connection is closed with a closing handshake. Each phase has a time limit.
    """
    loop = asyncio.get_running_loop()
    frames: list[bytes] = []
    if deflate_bits is None:
        request = handshake_request(port)
    else:
        request = handshake_request(port, extensions=BROWSER_DEFLATE_OFFER)
        frames = deflate_frames(size, deflate_bits)

    def factories(n: int) -> list[Factory]:
        if deflate_bits is None:
            return [lambda: Client(request, b"", 0, None)] * n
        return [partial(DeflateClient, request, frames, i, None) for i in range(n)]

    async def exchange(clients: list[Client]) -> None:
        if deflate_bits is not None:
            for client in clients:
                client.send_first()
            await asyncio.gather(*(client.idle for client in clients))

    async def close(clients: list[Client]) -> None:
        await asyncio.gather(*(client.close() for client in clients))

    open_limit = 30 + connections / 50  # seconds: far more than any server needs
    warm = await asyncio.wait_for(open_many(port, factories(IDLE_WARMUP), sources), 30)
    await asyncio.wait_for(exchange(warm), 30)
    await asyncio.wait_for(close(warm), 30)
    await command("ready")

    start = time.perf_counter()
    clients = await asyncio.wait_for(open_many(port, factories(connections), sources), open_limit)
    open_seconds = time.perf_counter() - start
    await command("opened")

    echo_seconds = None
    if deflate_bits is not None:
        start = time.perf_counter()
        await asyncio.wait_for(exchange(clients), 30 + connections / 200)
        echo_seconds = time.perf_counter() - start
        await command("echoed")

    start = loop.time()
    await asyncio.wait_for(close(clients), 30 + connections / 200)
    return {
        "connections": connections,
        "open_seconds": open_seconds,
        "echo_seconds": echo_seconds,
        "close_seconds": loop.time() - start,
        "deflate_bits": deflate_bits,
    }


T = TypeVar("T")


def run_loop(main: Coroutine[Any, Any, T], loop_name: str) -> T:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def raise_nofile_limit(needed: int) -> None:
    """Raise the soft limit on open files to the hard one if ``needed`` exceeds it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise BenchError(
            f"{needed} open files needed, hard limit {hard}: use several load generators"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                else needed, hard))  # fmt: skip


def default_loop() -> str:
    """uvloop if installed: the cheaper loop for the load generator."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["rt", "handshake", "idle"], default="rt")
    parser.add_argument("--size", type=int, default=16, help="payload bytes (rt, idle)")
    parser.add_argument("--connections", type=int, default=1,
                        help="concurrent connections (rt, idle; handshake: parallel "
                        "workers)")  # fmt: skip
    parser.add_argument("--inflight", type=int, default=1,
                        help="messages in flight per connection (rt: pipelining)")  # fmt: skip
    parser.add_argument(
        "--deflate",
        action="store_true",
        help="negotiate permessage-deflate, send pre-compressed JSON-like text (rt, idle)",
    )
    parser.add_argument(
        "--sources",
        default="",
        help="comma-separated 127.x.y.z addresses to connect from, in turn (idle)",
    )
    parser.add_argument("--warmup", type=float, default=0.3, help="seconds not counted")
    parser.add_argument("--duration", type=float, default=2.0, help="time limit, seconds")
    parser.add_argument("--count", type=int, default=1_000_000, help="count limit")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default=default_loop())
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to a CPU")
    args = parser.parse_args(argv)

    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    gc.disable()  # the generator makes no cycles; keep collector pauses out of the figures
    sources = [address.strip() for address in args.sources.split(",") if address.strip()]

    async def scenario() -> Meter:
        if args.mode == "handshake":
            work = run_handshakes(
                args.port, args.warmup, args.duration, args.count, args.connections
            )
        else:
            work = run_round_trips(
                args.port,
                args.size,
                args.connections,
                args.warmup,
                args.duration,
                args.count,
                deflate_bits,
                args.inflight,
            )
        return await asyncio.wait_for(work, args.warmup + args.duration + 30)

    try:
        raise_nofile_limit(args.connections + 64)
        deflate_bits = None
        if args.deflate:
            offer = BROWSER_DEFLATE_OFFER if args.mode == "idle" else DEFLATE_OFFER
            deflate_bits = verify_deflate_echo(args.port, args.size, offer)
        if args.mode == "idle":
            report = run_loop(
                run_idle(args.port, args.connections, args.size, deflate_bits, sources),
                args.loop,
            )
            print(json.dumps(report))
            return 0
        meter = run_loop(scenario(), args.loop)
    except asyncio.TimeoutError:
        print("loadgen: timed out: the server stopped answering", file=sys.stderr)
        return 1
    except (BenchError, OSError) as exc:
        print(f"loadgen: failed: {exc}", file=sys.stderr)
        return 1
    result = {
        "rate": meter.count / meter.elapsed if meter.elapsed > 0 else 0.0,
        "count": meter.count,
        "elapsed": meter.elapsed,
        "total": meter.total,
        "loadgen_cpu_us": (meter.cpu_stop - meter.cpu_start) / max(meter.count, 1) * 1e6,
        "reply_bytes": meter.reply_bytes / max(meter.total, 1),
        "loop": args.loop,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
