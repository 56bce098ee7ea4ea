"""The one load generator used against every echo server.

A raw :class:`asyncio.Protocol` client: it writes a fixed opening-handshake request,
checks the ``101`` status line and the ``Sec-WebSocket-Accept`` value, then sends
pre-built masked frames and parses only the *headers* of what comes back, counting
payload bytes until a whole echoed message has returned. It never unmasks, copies,
decodes or validates a payload, so it spends less per message than any WebSocket client
library: the figure measured is the server's cost.

Run by ``bench/run.py`` in its own process (never the servers' one); usable alone::

    python bench/loadgen.py --port 8765 --mode rt --size 16 --duration 2
    python bench/loadgen.py --port 8765 --mode rt --size 16 --connections 100
    python bench/loadgen.py --port 8765 --mode handshake

It prints one JSON object on stdout: ``{"rate": ..., "count": ..., "elapsed": ...}``.
Every run is bounded by a message count and by a time limit, and by a watchdog.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import hashlib
import importlib.util
import json
import os
import random
import struct
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

HOST = "127.0.0.1"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A fixed key, so the expected accept value and the "limit" server's canned 101
# response are constants too.
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = base64.b64encode(hashlib.sha1((KEY + GUID).encode()).digest()).decode()
MASK = b"\x37\xfa\x21\x3d"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

MAX_RESPONSE_HEAD = 16 * 1024


def handshake_request(port: int, path: str = "/") -> bytes:
    """The opening-handshake request, as bytes (no extension is offered)."""
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {HOST}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
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


def build_frame(opcode: int, payload: bytes, *, fin: bool = True, key: bytes = MASK) -> bytes:
    """A complete client-to-server (masked) frame."""
    return (
        frame_header(opcode, len(payload), masked=True, fin=fin) + key + mask_payload(payload, key)
    )


CLOSE_FRAME = build_frame(OP_CLOSE, struct.pack("!H", 1000))


def make_payload(size: int, seed: int = 6455) -> bytes:
    """Deterministic, incompressible-looking payload bytes."""
    return random.Random(seed).randbytes(size)


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
    payload bytes have come back since the previous one.
    """

    def __init__(self, request: bytes, frame: bytes, size: int, meter: Meter | None) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.frame = frame
        self.size = size
        self.meter = meter
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
                pos += take
                self.remaining -= take
                if self.opcode < OP_CLOSE:
                    self.msg_bytes += take
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
            self.opcode = b0 & 0x0F
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
        # pings and pongs are ignored: runs are far shorter than any keepalive timeout

    def message_done(self, size: int) -> None:
        if size != self.size:
            self.fail(BenchError(f"echoed {size} bytes, sent {self.size}"))
            return
        meter = self.meter
        if meter is not None and meter.tick():
            assert self.transport is not None
            self.transport.write(self.frame)
        elif not self.idle.done():
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
        assert self.transport is not None
        self.transport.write(self.frame)

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


Factory = Callable[[], Client]


async def connect(port: int, factory: Factory) -> Client:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(factory, HOST, port)
    await client.opened
    return client


async def run_round_trips(
    port: int, size: int, connections: int, warmup: float, duration: float, limit: int
) -> Meter:
    """``connections`` connections, each with one message of ``size`` bytes in flight."""
    request = handshake_request(port)
    frame = build_frame(OP_BINARY, make_payload(size))
    meter = Meter(warmup, duration, limit)
    clients: list[Client] = []
    for first in range(0, connections, 10):  # at most 10 handshakes at once
        batch = range(first, min(first + 10, connections))
        clients += await asyncio.gather(
            *(connect(port, lambda: Client(request, frame, size, meter)) for _ in batch)
        )
    meter.begin()
    try:
        for client in clients:
            client.send_first()
        await meter.done
    finally:
        await asyncio.gather(*(client.close() for client in clients))
    return meter


async def run_handshakes(port: int, warmup: float, duration: float, limit: int) -> Meter:
    """Sequential connections: open (counted), close with a closing handshake, repeat."""
    request = handshake_request(port)
    meter = Meter(warmup, duration, limit)
    meter.begin()
    while True:
        client = await connect(port, lambda: Client(request, b"", 0, None))
        going_on = meter.tick()
        await client.close()
        if not going_on:
            return meter


def run_loop(main: Coroutine[Any, Any, Meter], loop_name: str) -> Meter:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


def default_loop() -> str:
    """uvloop if installed: the cheaper loop for the load generator."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=["rt", "handshake"], default="rt")
    parser.add_argument("--size", type=int, default=16, help="payload bytes (rt)")
    parser.add_argument("--connections", type=int, default=1, help="concurrent connections (rt)")
    parser.add_argument("--warmup", type=float, default=0.3, help="seconds not counted")
    parser.add_argument("--duration", type=float, default=2.0, help="time limit, seconds")
    parser.add_argument("--count", type=int, default=1_000_000, help="count limit")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default=default_loop())
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to a CPU")
    args = parser.parse_args(argv)

    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    gc.disable()  # the generator makes no cycles; keep collector pauses out of the figures

    async def scenario() -> Meter:
        if args.mode == "handshake":
            work = run_handshakes(args.port, args.warmup, args.duration, args.count)
        else:
            work = run_round_trips(
                args.port, args.size, args.connections, args.warmup, args.duration, args.count
            )
        return await asyncio.wait_for(work, args.warmup + args.duration + 30)

    try:
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
        "loop": args.loop,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
