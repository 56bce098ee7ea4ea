"""tether.asyncio.connection over real loopback sockets: messages, ping, closing, flow control.

Scenarios that apply to both ends run once with the client sending and once with the
server sending (``side``): ``sender, receiver = pick(side, pair)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

import tether

from .conftest import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TIMEOUT,
    RawServer,
    Run,
    close_payload,
    echo,
    raw_client,
    uri,
    ws_pair,
)

SIDES = ["client sends", "server sends"]
NO_COMPRESSION = {"compression": None}


def pick(
    side: str, pair: tuple[tether.ServerConnection, tether.ClientConnection]
) -> tuple[tether.Connection, tether.Connection]:
    """Return (sender, receiver) for ``side``."""
    server_ws, client_ws = pair
    return (client_ws, server_ws) if side == "client sends" else (server_ws, client_ws)


def options(side: str, sender: dict[str, Any], receiver: dict[str, Any]) -> dict[str, Any]:
    """ws_pair keyword arguments giving ``sender`` / ``receiver`` options to the right ends."""
    if side == "client sends":
        return {"client_options": sender, "server_options": receiver}
    return {"client_options": receiver, "server_options": sender}


MIB = 2**20
MESSAGES: list[tuple[str, str | bytes]] = [
    ("text", "héllo wörld ✓"),
    ("binary", b"\x00\x01\xfe\xff"),
    ("empty text", ""),
    ("empty binary", b""),
    ("1 MiB text", "abcdefgh" * (MIB // 8)),
    ("1 MiB binary", bytes(range(256)) * (MIB // 256)),
]


# -------------------------------------------------------------------------- messages


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize(("name", "message"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_echo(run_any: Run, name: str, message: str | bytes, compression: str | None) -> None:
    """Text comes back as str, binary as bytes, whatever the size (max_size is inclusive)."""

    async def main() -> None:
        async with (
            tether.serve(echo, "127.0.0.1", 0, compression=compression) as server,
            tether.connect(uri(server), compression=compression) as ws,
        ):
            await ws.send(message)
            got = await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert type(got) is type(message)
            assert got == message

    run_any(main())


@pytest.mark.parametrize("side", SIDES)
def test_bytes_like_is_sent_as_binary(run: Run, side: str) -> None:
    async def main() -> None:
        async with ws_pair() as pair:
            sender, receiver = pick(side, pair)
            await sender.send(bytearray(b"abc"))
            await sender.send(memoryview(b"xdefx")[1:4])
            assert await asyncio.wait_for(receiver.recv(), TIMEOUT) == b"abc"
            assert await asyncio.wait_for(receiver.recv(), TIMEOUT) == b"def"

    run(main())


@pytest.mark.parametrize("side", SIDES)
def test_recv_decode(run: Run, side: str) -> None:
    """decode=False gives text as UTF-8 bytes; decode=True gives binary as str."""

    async def main() -> None:
        async with ws_pair() as pair:
            sender, receiver = pick(side, pair)
            messages: list[str | bytes] = ["é", b"\xc3\xa9"] * 3
            for message in messages:
                await sender.send(message)
            assert await receiver.recv(decode=False) == b"\xc3\xa9"
            assert await receiver.recv(decode=True) == "é"
            assert await receiver.recv(decode=True) == "é"
            assert await receiver.recv(decode=False) == b"\xc3\xa9"
            assert await receiver.recv() == "é"
            assert await receiver.recv() == b"\xc3\xa9"

    run(main())


def test_messages_from_large_reads_are_intact_across_connections(run_any: Run) -> None:
    """Large reads are parsed in the thread's shared read buffer: messages taken from it
    stay intact while three connections of one loop read into it in turn, both ways."""
    sizes = [20_000, 7, 70_000, 300_000, 125, 16_384, 40_000, 1_000]

    def message(conn: int, side: int, i: int) -> bytes | str:
        size = sizes[i % len(sizes)]
        seed = bytes([conn, side, i % 256]) + uuid.uuid4().bytes
        body = (seed * (size // len(seed) + 1))[:size]
        return body.hex()[:size] if i % 3 == 0 else body

    async def exchange(pair: tuple[tether.ServerConnection, tether.ClientConnection],
                       conn: int) -> None:
        server_ws, client_ws = pair
        sent: dict[int, list[bytes | str]] = {0: [], 1: []}

        async def send(side: int, ws: tether.Connection) -> None:
            for i in range(40):
                sent[side].append(message(conn, side, i))
                await ws.send(sent[side][-1])

        async def receive(side: int, ws: tether.Connection) -> None:
            for i in range(40):
                got = await asyncio.wait_for(ws.recv(), TIMEOUT)
                assert got == sent[side][i], f"connection {conn}, side {side}, message {i}"

        await asyncio.gather(
            send(0, client_ws), send(1, server_ws), receive(0, server_ws), receive(1, client_ws)
        )

    async def main() -> None:
        options = {"compression": None, "max_size": None}
        async with (
            ws_pair(options, options) as a,
            ws_pair(options, options) as b,
            ws_pair(options, options) as c,
        ):
            await asyncio.gather(exchange(a, 0), exchange(b, 1), exchange(c, 2))

    run_any(main())


def test_send_rejects_a_non_message(run: Run) -> None:
    async def main() -> None:
        async with ws_pair() as (server_ws, client_ws):
            with pytest.raises(TypeError):
                await client_ws.send(42)  # type: ignore[arg-type]
            # The connection is still usable.
            await client_ws.send("still open")
            assert await asyncio.wait_for(server_ws.recv(), TIMEOUT) == "still open"

    run(main())


# ------------------------------------------------------------------ fragmented sends


def _gen(parts: list[Any]) -> Iterator[Any]:
    yield from parts


async def _agen(parts: list[Any]) -> AsyncIterator[Any]:
    for part in parts:
        await asyncio.sleep(0)
        yield part


FRAGMENTS: list[tuple[str, list[Any]]] = [
    ("text", ["ab", "cd", "é", "ef"]),
    ("binary", [b"ab", bytearray(b"cd"), b"", b"ef"]),
]


@pytest.mark.parametrize("kind", ["list", "generator", "async generator"])
@pytest.mark.parametrize(("name", "parts"), FRAGMENTS, ids=[f[0] for f in FRAGMENTS])
@pytest.mark.parametrize("side", SIDES)
def test_send_iterable_as_one_message(
    run: Run, side: str, kind: str, name: str, parts: list[Any]
) -> None:
    async def main() -> None:
        async with ws_pair() as pair:
            sender, receiver = pick(side, pair)
            make: dict[str, Callable[[list[Any]], Any]] = {
                "list": list,
                "generator": _gen,
                "async generator": _agen,
            }
            source = make[kind](parts)
            await sender.send(source)
            await sender.send("next")
            whole = "".join(parts) if name == "text" else b"".join(parts)
            assert await asyncio.wait_for(receiver.recv(), TIMEOUT) == whole
            assert await asyncio.wait_for(receiver.recv(), TIMEOUT) == "next"

    run(main())


@pytest.mark.parametrize("kind", ["list", "async generator"])
def test_fragments_on_the_wire_from_client(run: Run, kind: str) -> None:
    """RFC 6455 5.4: the first frame has the opcode and FIN=0, then CONT frames, FIN=1 last."""

    async def main() -> None:
        async with RawServer() as raw, tether.connect(f"ws://127.0.0.1:{raw.port}/") as ws:
            peer = await raw.next_peer()
            parts = ["ab", "cd", "ef"]
            await ws.send(parts if kind == "list" else _agen(parts))
            frames = [await peer.recv_frame() for _ in range(3)]
            assert [(f.opcode, f.fin, f.payload) for f in frames] == [
                (OP_TEXT, False, b"ab"),
                (OP_CONT, False, b"cd"),
                (OP_CONT, True, b"ef"),
            ]
            peer.abort()

    run(main())


def test_fragments_on_the_wire_from_server(run: Run) -> None:
    async def handler(ws: tether.ServerConnection) -> None:
        await ws.send([b"ab", b"cd"])
        await ws.wait_closed()

    async def main() -> None:
        async with tether.serve(handler, "127.0.0.1", 0) as server:
            peer = await raw_client(server.port)
            frames = [await peer.recv_frame() for _ in range(2)]
            assert [(f.opcode, f.fin, f.payload) for f in frames] == [
                (OP_BINARY, False, b"ab"),
                (OP_CONT, True, b"cd"),
            ]
            await peer.close()

    run(main())


# ---------------------------------------------------------------------- ping and pong


@pytest.mark.parametrize("side", ["client pings", "server pings"])
def test_ping_returns_awaitable_of_rtt(run_any: Run, side: str) -> None:
    async def main() -> None:
        async with ws_pair() as (server_ws, client_ws):
            pinger = client_ws if side == "client pings" else server_ws
            assert pinger.latency == 0
            pong_waiter = await pinger.ping()
            rtt = await asyncio.wait_for(pong_waiter, TIMEOUT)
            assert isinstance(rtt, float)
            assert 0 < rtt < TIMEOUT
            assert pinger.latency == rtt
            # Named pings, several at once.
            waiters = [await pinger.ping(data) for data in ("a", b"b", "c")]
            rtts = await asyncio.wait_for(asyncio.gather(*waiters), TIMEOUT)
            assert all(0 < r < TIMEOUT for r in rtts)

    run_any(main())


def test_ping_data_and_matching_pong(run: Run) -> None:
    """The ping carries its data; only the pong with the same data resolves it."""

    async def main() -> None:
        async with RawServer() as raw, tether.connect(f"ws://127.0.0.1:{raw.port}/") as ws:
            peer = await raw.next_peer()
            waiter = await ws.ping("hello")
            frame = await peer.recv_frame()
            assert (frame.opcode, frame.payload) == (OP_PING, b"hello")
            await peer.send_frame(OP_PONG, b"other")
            # A pong travels in order with data frames: once "marker" arrives the
            # unrelated pong was processed, and must not have resolved the ping.
            await peer.send_frame(OP_TEXT, b"marker")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "marker"
            assert not asyncio.ensure_future(waiter).done()
            await peer.send_frame(OP_PONG, b"hello")
            assert await asyncio.wait_for(waiter, TIMEOUT) >= 0
            peer.abort()

    run(main())


def test_pings_are_answered_automatically(run: Run) -> None:
    async def main() -> None:
        async with RawServer() as raw, tether.connect(f"ws://127.0.0.1:{raw.port}/") as _ws:
            peer = await raw.next_peer()
            await peer.send_frame(OP_PING, b"are you there")
            frame = await peer.recv_frame()
            assert (frame.opcode, frame.payload) == (OP_PONG, b"are you there")
            peer.abort()

    run(main())


def test_ping_on_closed_connection_raises(run: Run) -> None:
    async def main() -> None:
        async with ws_pair() as (_server_ws, client_ws):
            await client_ws.close()
            with pytest.raises(tether.ConnectionClosed):
                await client_ws.ping()

    run(main())


@pytest.mark.parametrize("side", ["client pings", "server pings"])
def test_keepalive_pings_keep_going_when_answered(run_any: Run, side: str) -> None:
    """Keepalive pings every ping_interval; a peer that answers them is never closed."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        keepalive: dict[str, Any] = {"ping_interval": 0.05, "ping_timeout": 0.05}
        async with contextlib.AsyncExitStack() as stack:
            if side == "client pings":
                raw = await stack.enter_async_context(RawServer())
                ws: tether.Connection = await tether.connect(
                    f"ws://127.0.0.1:{raw.port}/", **keepalive
                )
                stack.push_async_callback(ws.close)
                peer = await raw.next_peer()
            else:
                handed: asyncio.Future[tether.ServerConnection] = loop.create_future()

                async def handler(conn: tether.ServerConnection) -> None:
                    handed.set_result(conn)
                    await conn.wait_closed()

                server = await stack.enter_async_context(
                    tether.serve(handler, "127.0.0.1", 0, **keepalive)
                )
                peer = await raw_client(server.port)
                stack.push_async_callback(peer.close)
                ws = await asyncio.wait_for(handed, TIMEOUT)
            start = loop.time()
            for _ in range(4):
                frame = await peer.recv_frame()
                assert frame.opcode == OP_PING, frame
                await peer.send_frame(OP_PONG, frame.payload)
            # Four pings, each sent ping_interval after the previous pong at the latest.
            assert loop.time() - start > 0.15
            assert ws.state is tether.State.OPEN
            assert ws.latency >= 0
            peer.abort()

    run_any(main())


def test_keepalive_timeout_closes_with_1011_server(run_any: Run) -> None:
    """A raw client that never answers pings is closed with 1011 after ping_timeout."""
    errors: list[BaseException] = []

    async def handler(ws: tether.ServerConnection) -> None:
        try:
            await ws.recv()
        except tether.ConnectionClosed as exc:
            errors.append(exc)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with tether.serve(
            handler, "127.0.0.1", 0, ping_interval=0.1, ping_timeout=0.2, close_timeout=0.3
        ) as server:
            peer = await raw_client(server.port)
            start = loop.time()
            frames = await peer.recv_until(OP_CLOSE)
            elapsed = loop.time() - start
            assert frames[0].opcode == OP_PING
            assert frames[-1].close_code == 1011
            assert 0.25 < elapsed < 3
            # The peer never answers the close frame: the server gives up after
            # close_timeout and drops the TCP connection.
            assert await peer.read_eof() == b""
            await peer.close()
        assert len(errors) == 1
        assert isinstance(errors[0], tether.ConnectionClosedError)

    run_any(main())


def test_keepalive_timeout_closes_with_1011_client(run_any: Run) -> None:
    async def main() -> None:
        async with RawServer() as raw:
            ws = await tether.connect(
                f"ws://127.0.0.1:{raw.port}/", ping_interval=0.1, ping_timeout=0.2
            )
            peer = await raw.next_peer()
            frames = await peer.recv_until(OP_CLOSE)
            assert frames[0].opcode == OP_PING
            assert frames[-1].close_code == 1011
            # This peer does answer the close frame, then closes TCP.
            await peer.send_frame(OP_CLOSE, frames[-1].payload)
            await peer.close()
            with pytest.raises(tether.ConnectionClosedError) as info:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert info.value.code == 1011
            assert ws.state is tether.State.CLOSED

    run_any(main())


# ----------------------------------------------------------------------------- closing


@pytest.mark.parametrize("code", [1000, 1001])
@pytest.mark.parametrize("side", ["server closes", "client closes"])
def test_async_for_ends_quietly_on_normal_closure(run_any: Run, side: str, code: int) -> None:
    async def main() -> None:
        async with ws_pair() as (server_ws, client_ws):
            closer, reader = (
                (server_ws, client_ws) if side == "server closes" else (client_ws, server_ws)
            )
            await closer.send("a")
            await closer.send(b"b")
            await closer.close(code, "bye")
            received = [message async for message in reader]
            assert received == ["a", b"b"]
            assert reader.close_code == code
            assert reader.close_reason == "bye"

    run_any(main())


@pytest.mark.parametrize("code", [1011, 3000, 4999])
@pytest.mark.parametrize("side", ["server closes", "client closes"])
def test_async_for_raises_on_abnormal_closure(run: Run, side: str, code: int) -> None:
    async def main() -> None:
        async with ws_pair() as (server_ws, client_ws):
            closer, reader = (
                (server_ws, client_ws) if side == "server closes" else (client_ws, server_ws)
            )
            await closer.send("a")
            await closer.close(code, "oops")
            received: list[str | bytes] = []
            with pytest.raises(tether.ConnectionClosedError) as info:
                async for message in reader:
                    # Not a comprehension: keep what arrived before the exception.
                    received.append(message)  # noqa: PERF401
            assert received == ["a"]
            assert info.value.code == code
            assert info.value.reason == "oops"

    run(main())


def test_recv_and_send_after_normal_close_raise_connection_closed_ok(run: Run) -> None:
    async def main() -> None:
        async with ws_pair() as (server_ws, client_ws):
            await client_ws.close()
            for ws in (client_ws, server_ws):
                await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
                with pytest.raises(tether.ConnectionClosedOK):
                    await ws.recv()
                with pytest.raises(tether.ConnectionClosedOK):
                    await ws.send("too late")
                # close() is idempotent.
                await asyncio.wait_for(ws.close(), TIMEOUT)

    run(main())


def test_close_code_and_reason(run: Run) -> None:
    async def main() -> None:
        async with ws_pair() as (server_ws, client_ws):
            assert client_ws.close_code is None
            assert client_ws.close_reason is None
            assert server_ws.close_code is None
            await client_ws.close(4001, "bye now")
            await asyncio.wait_for(server_ws.wait_closed(), TIMEOUT)
            assert server_ws.close_code == 4001
            assert server_ws.close_reason == "bye now"
            # The server echoed the code (RFC 6455 5.5.1).
            assert client_ws.close_code == 4001
            assert client_ws.state is tether.State.CLOSED
            assert server_ws.state is tether.State.CLOSED

    run(main())


def test_close_timeout_client(run_any: Run) -> None:
    """A server that never answers the close frame: close() returns after close_timeout."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with RawServer() as raw:
            ws = await tether.connect(f"ws://127.0.0.1:{raw.port}/", close_timeout=0.3)
            peer = await raw.next_peer()
            start = loop.time()
            await asyncio.wait_for(ws.close(), TIMEOUT)
            elapsed = loop.time() - start
            assert 0.25 < elapsed < 3
            assert ws.state is tether.State.CLOSED
            assert ws.close_code == 1006
            frame = await peer.recv_frame()
            assert frame.close_code == 1000
            assert await peer.read_eof() == b""

    run_any(main())


def test_close_timeout_server(run_any: Run) -> None:
    """A client that never answers the close frame: the handler's close() returns in time."""
    loop_time: dict[str, float] = {}

    async def handler(ws: tether.ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await ws.close(1000)
        loop_time["close"] = loop.time() - start

    async def main() -> None:
        async with tether.serve(handler, "127.0.0.1", 0, close_timeout=0.3) as server:
            peer = await raw_client(server.port)
            frame = await peer.recv_frame()
            assert frame.close_code == 1000
            assert await peer.read_eof() == b""
            await peer.close()
        assert 0.25 < loop_time["close"] < 3

    run_any(main())


@pytest.mark.parametrize("how", ["abort", "fin"])
def test_tcp_lost_without_close_frame_client(
    run_any: Run, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="tether")

    async def main() -> None:
        async with RawServer() as raw, tether.connect(f"ws://127.0.0.1:{raw.port}/") as ws:
            peer = await raw.next_peer()
            await peer.send_frame(OP_TEXT, b"last words")
            if how == "abort":
                peer.abort()
            else:
                await peer.close()
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "last words"
            with pytest.raises(tether.ConnectionClosedError) as info:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert info.value.code == 1006
            assert ws.close_code == 1006
            assert ws.state is tether.State.CLOSED
            _assert_logged_end(caplog, "tether.client", ws.id)

    run_any(main())


@pytest.mark.parametrize("how", ["abort", "fin"])
def test_tcp_lost_without_close_frame_server(
    run_any: Run, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="tether")
    outcomes: list[tuple[uuid.UUID, BaseException]] = []

    async def handler(ws: tether.ServerConnection) -> None:
        try:
            await ws.recv()
        except Exception as exc:
            outcomes.append((ws.id, exc))
            ended.set()

    async def main() -> None:
        async with tether.serve(handler, "127.0.0.1", 0) as server:
            peer = await raw_client(server.port)
            if how == "abort":
                peer.abort()
            else:
                await peer.close()
            await asyncio.wait_for(ended.wait(), TIMEOUT)
            [(ws_id, exc)] = outcomes
            assert isinstance(exc, tether.ConnectionClosedError)
            assert exc.code == 1006
            _assert_logged_end(caplog, "tether.server", ws_id)

    ended = asyncio.Event()
    run_any(main())


def _assert_logged_end(caplog: pytest.LogCaptureFixture, logger: str, ws_id: uuid.UUID) -> None:
    """The DEBUG log names the connection and tells that it closed and how."""
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == logger and r.levelno == logging.DEBUG and str(ws_id) in r.getMessage()
    ]
    assert lines, f"no DEBUG log line of {logger} names connection {ws_id}"
    ending = [line for line in lines if "closed" in line.lower()]
    assert ending, f"no DEBUG log line tells that {ws_id} closed: {lines}"
    assert any(
        word in line.lower() for line in ending for word in ("1006", "lost", "without", "abort")
    ), f"the log does not tell how {ws_id} ended: {ending}"


# --------------------------------------------------------------------- flow control


async def _send_until_blocked(
    ws: tether.Connection, payload: bytes, limit: int
) -> tuple[int, asyncio.Task[None]]:
    """Send numbered messages until one send does not complete within 0.3 s.

    Return how many were sent (the blocked one included) and the blocked send's task.
    """
    for i in range(limit):
        task = asyncio.ensure_future(ws.send(struct.pack("!I", i) + payload))
        done, _ = await asyncio.wait({task}, timeout=0.3)
        if not done:
            return i + 1, task
        task.result()
    raise AssertionError(f"send never blocked after {limit} messages of {len(payload)} bytes")


async def _recv_numbered(ws: tether.Connection, count: int) -> list[int]:
    indices = []
    for _ in range(count):
        message = await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert isinstance(message, bytes)
        indices.append(struct.unpack("!I", message[:4])[0])
    return indices


@pytest.mark.parametrize("side", SIDES)
def test_send_waits_when_peer_does_not_read(run_any: Run, side: str) -> None:
    """write_limit: send blocks while the peer doesn't read, and resumes when it does."""
    payload = b"\x5a" * 2**18

    async def main() -> None:
        sender_options = {"write_limit": 2**16, **NO_COMPRESSION}
        receiver_options = {"max_queue": 1, **NO_COMPRESSION}
        async with ws_pair(**options(side, sender_options, receiver_options)) as pair:
            sender, receiver = pick(side, pair)
            sent, blocked = await _send_until_blocked(sender, payload, 1000)
            assert not blocked.done()
            indices = await _recv_numbered(receiver, sent)
            await asyncio.wait_for(blocked, TIMEOUT)
            assert indices == list(range(sent))

    run_any(main())


def test_max_queue_stops_reading_and_loses_nothing(run_any: Run) -> None:
    """With max_queue=4 a server that doesn't recv stops reading: the client's sends block.

    Once the handler reads, reading resumes; every message arrives once, in order.
    """
    received: list[int] = []
    payload = b"\xa5" * 2**16

    async def handler(ws: tether.ServerConnection) -> None:
        await go.wait()
        async for message in ws:
            assert isinstance(message, bytes)
            if message == b"end":
                break
            received.append(struct.unpack("!I", message[:4])[0])
        await ws.send("done")

    async def main() -> None:
        async with (
            tether.serve(handler, "127.0.0.1", 0, max_queue=4, compression=None) as server,
            tether.connect(uri(server), write_limit=2**14, compression=None) as ws,
        ):
            sent, blocked = await _send_until_blocked(ws, payload, 5000)
            assert not received
            go.set()
            await asyncio.wait_for(blocked, TIMEOUT)
            for i in range(sent, sent + 50):
                await asyncio.wait_for(ws.send(struct.pack("!I", i) + payload), TIMEOUT)
            await ws.send(b"end")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "done"
            assert received == list(range(sent + 50))

    go = asyncio.Event()
    run_any(main())


@pytest.mark.parametrize("side", SIDES)
def test_wait_for_recv_timeouts_lose_no_message(run_any: Run, side: str) -> None:
    """wait_for(recv(), short) timing out again and again while messages arrive loses none."""
    count = 400

    async def main() -> None:
        async with ws_pair() as pair:
            sender, receiver = pick(side, pair)
            timed_out = asyncio.Event()
            received: list[str | bytes] = []
            timeouts = 0

            async def produce() -> None:
                sizes = itertools.cycle([1, 3, 7, 2, 5])
                i = 0
                while i < count:
                    for _ in range(next(sizes)):
                        if i < count:
                            await sender.send(str(i) if i % 2 else str(i).encode())
                            i += 1
                    if i == count:
                        break
                    # Let the reader time out at least once before the next burst.
                    await asyncio.wait_for(timed_out.wait(), TIMEOUT)
                    timed_out.clear()

            producer = asyncio.ensure_future(produce())
            delays = itertools.cycle([0.01, 0.001, 0.003, 0.0005])
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while len(received) < count:
                assert loop.time() < deadline, f"only {len(received)} messages received"
                try:
                    received.append(await asyncio.wait_for(receiver.recv(), next(delays)))
                except asyncio.TimeoutError:
                    timeouts += 1
                    timed_out.set()
            await asyncio.wait_for(producer, TIMEOUT)
            expected = [str(i) if i % 2 else str(i).encode() for i in range(count)]
            assert received == expected
            assert timeouts >= count // 5

    run_any(main())


# -------------------------------------------------------- cancellation, per phase


def test_cancelled_recv_loses_nothing(run: Run) -> None:
    async def main() -> None:
        async with ws_pair() as (server_ws, client_ws):
            task = asyncio.ensure_future(server_ws.recv())
            await asyncio.sleep(0)  # let it start waiting
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await client_ws.send("after cancel")
            assert await asyncio.wait_for(server_ws.recv(), TIMEOUT) == "after cancel"
            assert server_ws.state is tether.State.OPEN

    run(main())


def test_cancelled_async_for_step_loses_nothing(run_any: Run) -> None:
    """``async for`` waits for a message without recv(): cancelling that wait, or a
    second reader meanwhile, behaves as with recv()."""

    async def main() -> None:
        async with ws_pair() as (server_ws, client_ws):
            iterator = server_ws.__aiter__()
            task = asyncio.ensure_future(iterator.__anext__())
            await asyncio.sleep(0)  # let it start waiting
            with pytest.raises(RuntimeError, match="already running recv"):
                await server_ws.recv()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await client_ws.send("after cancel")
            assert await asyncio.wait_for(iterator.__anext__(), TIMEOUT) == "after cancel"
            task = asyncio.ensure_future(iterator.__anext__())
            await asyncio.sleep(0)
            await client_ws.send(b"woken")
            assert await asyncio.wait_for(task, TIMEOUT) == b"woken"
            await client_ws.close()
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(iterator.__anext__(), TIMEOUT)

    run_any(main())


def test_recv_timeout_then_close(run: Run) -> None:
    """A recv timed out by wait_for leaves the connection usable, and closable."""

    async def main() -> None:
        async with ws_pair() as (server_ws, client_ws):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client_ws.recv(), 0.05)
            await server_ws.close()
            with pytest.raises(tether.ConnectionClosedOK):
                await asyncio.wait_for(client_ws.recv(), TIMEOUT)

    run(main())


@pytest.mark.parametrize("how", ["cancel", "wait_for"])
def test_cancelled_blocked_send(run_any: Run, how: str) -> None:
    """Cancelling a send blocked by backpressure leaves whole messages, in order, on the wire."""
    payload = b"\x33" * 2**18

    async def main() -> None:
        async with ws_pair(
            server_options={"max_queue": 1, **NO_COMPRESSION},
            client_options={"write_limit": 2**16, **NO_COMPRESSION},
        ) as (server_ws, client_ws):
            sent, blocked = await _send_until_blocked(client_ws, payload, 1000)
            if how == "cancel":
                # Cancel the send that is waiting for the buffer to drain.
                blocked.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await blocked
            else:
                # Leave that one waiting; time out another one behind it.
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(client_ws.send(struct.pack("!I", sent) + payload), 0.1)
                sent += 1
            after = asyncio.ensure_future(client_ws.send("after"))
            messages: list[str | bytes] = []
            while not messages or messages[-1] != "after":
                messages.append(await asyncio.wait_for(server_ws.recv(), TIMEOUT))
            await asyncio.wait_for(asyncio.gather(after, blocked, return_exceptions=True), TIMEOUT)
            numbered = [m for m in messages[:-1] if isinstance(m, bytes) and m[4:] == payload]
            assert numbered == messages[:-1], "a message arrived torn or out of place"
            indices = [struct.unpack("!I", m[:4])[0] for m in numbered]
            # Every message before the cancelled one arrived, in order; the cancelled
            # one arrived whole or not at all; the connection still works.
            assert indices in (list(range(sent)), list(range(sent - 1)))
            assert client_ws.state is tether.State.OPEN

    run_any(main())


def test_send_timeout_when_peer_does_not_read(run: Run) -> None:
    payload = b"\x44" * 2**18

    async def main() -> None:
        async with ws_pair(
            server_options={"max_queue": 1, **NO_COMPRESSION},
            client_options={"write_limit": 2**16, **NO_COMPRESSION},
        ) as (server_ws, client_ws):
            started = 0
            with pytest.raises(asyncio.TimeoutError):
                for _ in range(1000):
                    started += 1
                    await asyncio.wait_for(client_ws.send(payload), 0.3)
            assert started > 1
            # The connection is still usable: the reader catches up, nothing is torn.
            end = asyncio.ensure_future(client_ws.send("end"))
            messages: list[str | bytes] = []
            while not messages or messages[-1] != "end":
                messages.append(await asyncio.wait_for(server_ws.recv(), TIMEOUT))
            await asyncio.wait_for(end, TIMEOUT)
            # The send that timed out was written whole or not at all.
            assert messages[:-1] in ([payload] * started, [payload] * (started - 1))

    run(main())


def test_close_while_reading_is_paused_by_max_queue(run_any: Run) -> None:
    """A side whose reading is paused (max_queue full) must still read to see the close reply.

    RFC 6455 7.1.1 / 5.5.1: after sending a close frame an endpoint keeps reading until it
    receives the peer's close frame. Here the server's queue is full and the client has
    megabytes in flight; the server's close() must read past them to the client's close
    reply and complete the closing handshake (1000), not wait for close_timeout and
    drop the connection (1006).
    """
    payload = b"\x55" * 2**18

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with ws_pair(
            server_options={"max_queue": 1, "close_timeout": 3, **NO_COMPRESSION},
            client_options={"write_limit": 2**16, **NO_COMPRESSION},
        ) as (server_ws, client_ws):
            _sent, blocked = await _send_until_blocked(client_ws, payload, 1000)
            start = loop.time()
            await asyncio.wait_for(server_ws.close(), TIMEOUT)
            elapsed = loop.time() - start
            with contextlib.suppress(tether.ConnectionClosed):
                await asyncio.wait_for(blocked, TIMEOUT)
            assert server_ws.close_code == 1000, "the client's close reply was never read"
            assert elapsed < 2, f"close() took {elapsed:.1f} s: it waited for close_timeout"

    run_any(main())


def test_cancelled_close_still_closes(run_any: Run) -> None:
    """Cancelling close() against a silent peer: the connection still ends by close_timeout."""

    async def main() -> None:
        async with RawServer() as raw:
            ws = await tether.connect(f"ws://127.0.0.1:{raw.port}/", close_timeout=0.3)
            peer = await raw.next_peer()
            closing = asyncio.ensure_future(ws.close())
            frame = await peer.recv_frame()
            assert frame.close_code == 1000
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert ws.state is tether.State.CLOSED

    run_any(main())


def test_close_timed_out_by_wait_for(run: Run) -> None:
    async def main() -> None:
        async with RawServer() as raw:
            ws = await tether.connect(f"ws://127.0.0.1:{raw.port}/", close_timeout=0.5)
            peer = await raw.next_peer()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.close(), 0.05)
            assert (await peer.recv_frame()).close_code == 1000
            # Answer late: the closing handshake completes.
            await peer.send_frame(OP_CLOSE, close_payload(1000))
            await peer.close()
            await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
            assert ws.close_code == 1000

    run(main())


# ------------------------------------------------------------------------ attributes


def test_connection_attributes(run: Run) -> None:
    async def main() -> None:
        async with ws_pair() as (server_ws, client_ws):
            assert isinstance(client_ws.id, uuid.UUID)
            assert isinstance(server_ws.id, uuid.UUID)
            assert client_ws.id != server_ws.id
            assert isinstance(client_ws, tether.Connection)
            assert isinstance(server_ws, tether.Connection)
            states = [client_ws.state, server_ws.state]
            assert states == [tether.State.OPEN, tether.State.OPEN]
            assert all(isinstance(state, tether.State) for state in states)
            assert client_ws.local_address == server_ws.remote_address
            assert client_ws.remote_address == server_ws.local_address
            assert client_ws.remote_address[0] == "127.0.0.1"
            assert client_ws.subprotocol is None
            assert server_ws.subprotocol is None
            assert client_ws.latency == 0
            assert isinstance(client_ws.logger, (logging.Logger, logging.LoggerAdapter))
            assert client_ws.request is not None and server_ws.request is not None
            assert client_ws.request.path == server_ws.request.path == "/"
            assert client_ws.response is not None and server_ws.response is not None
            assert client_ws.response.status == server_ws.response.status == 101
            await client_ws.close()
            await asyncio.wait_for(server_ws.wait_closed(), TIMEOUT)
            assert [client_ws.state, server_ws.state] == [tether.State.CLOSED] * 2

    run(main())
