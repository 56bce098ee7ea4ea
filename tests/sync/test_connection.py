"""tether.sync.connection over real loopback sockets: messages, threads, ping, closing.

Scenarios that apply to both ends run once with the client sending and once with the
server sending (``side``): ``sender, receiver = pick(side, pair)``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import queue
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import tether
from tether.sync import ClientConnection, Connection, PongWaiter, ServerConnection, connect

from .conftest import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TIMEOUT,
    Background,
    RawServer,
    close_payload,
    raw_client,
    sync_server,
    uri,
    wait_until,
    ws_pair,
)

SIDES = ["client sends", "server sends"]
NO_COMPRESSION = {"compression": None}
MIB = 2**20


def pick(side: str, pair: tuple[ServerConnection, ClientConnection]
         ) -> tuple[Connection, Connection]:
    """Return (sender, receiver) for ``side``."""
    server_ws, client_ws = pair
    return (client_ws, server_ws) if side == "client sends" else (server_ws, client_ws)


def options(side: str, sender: dict[str, Any], receiver: dict[str, Any]) -> dict[str, Any]:
    """ws_pair keyword arguments giving ``sender`` / ``receiver`` options to the right ends."""
    if side == "client sends":
        return {"client_options": sender, "server_options": receiver}
    return {"client_options": receiver, "server_options": sender}


# -------------------------------------------------------------------------- messages

MESSAGES: list[tuple[str, str | bytes]] = [
    ("text", "héllo wörld ✓"),
    ("binary", b"\x00\x01\xfe\xff"),
    ("empty text", ""),
    ("empty binary", b""),
    ("1 MiB text", "abcdefgh" * (MIB // 8)),
    ("1 MiB binary", bytes(range(256)) * (MIB // 256)),
]


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize(("name", "message"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_echo(name: str, message: str | bytes, compression: str | None) -> None:
    """Text comes back as str, binary as bytes, whatever the size (max_size is inclusive)."""
    with sync_server(compression=compression) as server, connect(
        uri(server), compression=compression
    ) as ws:
        ws.send(message)
        assert ws.recv(timeout=TIMEOUT) == message


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    "message", [bytearray(b"abc"), memoryview(b"abc"), memoryview(b"xabcx")[1:4]],
    ids=["bytearray", "memoryview", "sliced memoryview"],
)
def test_bytes_like_is_sent_as_binary(side: str, message: bytearray | memoryview) -> None:
    with ws_pair() as pair:
        sender, receiver = pick(side, pair)
        sender.send(message)
        assert receiver.recv(timeout=TIMEOUT) == b"abc"


@pytest.mark.parametrize("side", SIDES)
def test_recv_decode(side: str) -> None:
    with ws_pair() as pair:
        sender, receiver = pick(side, pair)
        sender.send("é")
        sender.send("é".encode())
        sender.send("text")
        sender.send(b"bytes")
        assert receiver.recv(timeout=TIMEOUT, decode=False) == "é".encode()
        assert receiver.recv(timeout=TIMEOUT, decode=True) == "é"
        assert receiver.recv(timeout=TIMEOUT, decode=True) == "text"
        assert receiver.recv(timeout=TIMEOUT, decode=False) == b"bytes"


@pytest.mark.parametrize(
    "message", [{"a": 1}, 42, None, 1.5], ids=["dict", "int", "None", "float"]
)
def test_send_rejects_a_non_message(message: Any) -> None:
    with ws_pair() as (server_ws, client_ws):
        with pytest.raises(TypeError, match="str, bytes-like, or an iterable"):
            client_ws.send(message)
        client_ws.send("still open")
        assert server_ws.recv(timeout=TIMEOUT) == "still open"


def _generate(*items: str | bytes) -> Iterator[str | bytes]:
    yield from items


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize(
    ("fragments", "expected"),
    [
        (lambda: ["frag", "men", "ted ✓"], "fragmented ✓"),
        (lambda: [b"\x00", bytearray(b"\x01"), memoryview(b"\x02")], b"\x00\x01\x02"),
        (lambda: _generate("gen", "erated"), "generated"),
        (lambda: ("one",), "one"),
        (lambda: ["big" * 100_000, "ger" * 100_000], "big" * 100_000 + "ger" * 100_000),
    ],
    ids=["str list", "bytes-like list", "generator", "one fragment", "large"],
)
def test_send_iterable_as_one_message(
    side: str, compression: str | None, fragments: Any, expected: str | bytes
) -> None:
    opts = {"compression": compression}
    with ws_pair(opts, opts) as pair:
        sender, receiver = pick(side, pair)
        sender.send(fragments())
        sender.send("next")
        assert receiver.recv(timeout=TIMEOUT) == expected
        assert receiver.recv(timeout=TIMEOUT) == "next"


def test_fragments_on_the_wire() -> None:
    with RawServer() as raw, connect(raw.uri, compression=None, close_timeout=1) as ws:
        peer = raw.next_peer()
        ws.send(["a", "b", "c"])
        frames = [peer.recv_frame() for _ in range(3)]
        assert [(f.opcode, f.fin, f.payload) for f in frames] == [
            (OP_TEXT, False, b"a"), (OP_CONT, False, b"b"), (OP_CONT, True, b"c"),
        ]
        ws.send([b"x", b"y"])
        frames = [peer.recv_frame() for _ in range(2)]
        assert [(f.opcode, f.fin) for f in frames] == [(OP_BINARY, False), (OP_CONT, True)]
        peer.close()


def test_empty_iterable_sends_nothing() -> None:
    with ws_pair() as (server_ws, client_ws):
        client_ws.send([])
        client_ws.send("after")
        assert server_ws.recv(timeout=TIMEOUT) == "after"


def test_mixed_fragment_types_fail_the_message_with_1011() -> None:
    """A fragmented message that can't be finished closes the connection with 1011."""
    with ws_pair() as (server_ws, client_ws):
        with pytest.raises(TypeError, match="all fragments"):
            client_ws.send(["text", b"bytes"])
        with pytest.raises(tether.ConnectionClosedError) as info:
            server_ws.recv(timeout=TIMEOUT)
        assert info.value.code == 1011
        client_ws.wait_closed(TIMEOUT)


def test_bad_first_fragment_sends_nothing() -> None:
    with ws_pair() as (server_ws, client_ws):
        with pytest.raises(TypeError, match="fragments must be str or bytes-like"):
            client_ws.send([1, 2])  # type: ignore[list-item]
        client_ws.send("fine")
        assert server_ws.recv(timeout=TIMEOUT) == "fine"


def test_iterable_that_raises_mid_message_closes_with_1011() -> None:
    def fragments() -> Iterator[str]:
        yield "a"
        yield "b"
        raise ValueError("producer failed")

    with ws_pair() as (server_ws, client_ws):
        with pytest.raises(ValueError, match="producer failed"):
            client_ws.send(fragments())
        with pytest.raises(tether.ConnectionClosedError) as info:
            server_ws.recv(timeout=TIMEOUT)
        assert info.value.code == 1011


def test_fragmented_message_is_not_interleaved_with_another_thread() -> None:
    """While one thread sends a fragmented message, another thread's send waits."""
    first_sent = threading.Event()
    go_on = threading.Event()

    def fragments() -> Iterator[str]:
        yield "a1"
        yield "a2"
        first_sent.wait(TIMEOUT)  # the frame of "a1" is on the wire now
        go_on.wait(TIMEOUT)
        yield "a3"

    with ws_pair() as (server_ws, client_ws):
        sending = Background(lambda: client_ws.send(fragments()))
        first_sent.set()
        other = Background(lambda: client_ws.send("b"))
        with pytest.raises(tether.InvalidState):
            # The core refuses to start another message: proof the frame is out.
            client_ws.protocol.send_message("probe")
        go_on.set()
        sending.result()
        other.result()
        assert server_ws.recv(timeout=TIMEOUT) == "a1a2a3"
        assert server_ws.recv(timeout=TIMEOUT) == "b"


# ------------------------------------------------------------------ recv and threads


@pytest.mark.parametrize("side", SIDES)
def test_recv_timeouts_lose_no_message(side: str) -> None:
    """recv(timeout=short) timing out again and again while messages arrive loses none."""
    count = 400
    timed_out = threading.Event()

    def produce(sender: Connection) -> None:
        sizes = itertools.cycle([1, 3, 7, 2, 5])
        i = 0
        while i < count:
            for _ in range(next(sizes)):
                if i < count:
                    sender.send(str(i) if i % 2 else str(i).encode())
                    i += 1
            # Let the reader time out at least once before the next burst.
            if i < count:
                assert timed_out.wait(TIMEOUT)
                timed_out.clear()

    with ws_pair() as pair:
        sender, receiver = pick(side, pair)
        producer = Background(lambda: produce(sender))
        received: list[str | bytes] = []
        timeouts = 0
        delays = itertools.cycle([0.01, 0.001, 0.003, 0.0005, 0])
        deadline = time.monotonic() + 20
        while len(received) < count:
            assert time.monotonic() < deadline, f"only {len(received)} messages received"
            try:
                received.append(receiver.recv(timeout=next(delays)))
            except TimeoutError:
                timeouts += 1
                timed_out.set()
        producer.result()
        assert received == [str(i) if i % 2 else str(i).encode() for i in range(count)]
        assert timeouts >= count // 5


def test_recv_timeout_message() -> None:
    with ws_pair() as (server_ws, _):
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no message received within 0\.05 s"):
            server_ws.recv(timeout=0.05)
        assert time.monotonic() - start >= 0.05
        with pytest.raises(TimeoutError):
            server_ws.recv(timeout=0)


def test_recv_timeout_zero_returns_a_buffered_message() -> None:
    with ws_pair() as (server_ws, client_ws):
        client_ws.send("buffered")
        client_ws.ping().result(TIMEOUT)  # the message came before the pong
        assert server_ws.recv(timeout=0) == "buffered"


@pytest.mark.parametrize("compression", ["deflate", None])
def test_recv_in_one_thread_while_others_send(compression: str | None) -> None:
    """One thread reads while four threads send: nothing is lost, mixed up or corrupt.

    With compression, frames must reach the wire in the order the compressor made them.
    """
    per_thread = 200
    senders = 4
    with sync_server(compression=compression) as server, connect(
        uri(server), compression=compression
    ) as ws:

        def read_all() -> list[str]:
            return [str(ws.recv(timeout=TIMEOUT)) for _ in range(per_thread * senders)]

        reader = Background(read_all)

        def send_all(n: int) -> None:
            for i in range(per_thread):
                ws.send(f"{n}:{i}:" + "x" * (i % 50) * 10)

        threads = [Background(functools.partial(send_all, n)) for n in range(senders)]
        for thread in threads:
            thread.result()
        received = reader.result(TIMEOUT * 2)
        for n in range(senders):
            mine = [m for m in received if m.startswith(f"{n}:")]
            assert [int(m.split(":")[1]) for m in mine] == list(range(per_thread))
            assert all(m.split(":")[2] == "x" * (int(m.split(":")[1]) % 50) * 10
                       for m in mine)


def test_concurrent_recv_raises_a_clear_error() -> None:
    with ws_pair() as (server_ws, client_ws):
        first = Background(lambda: server_ws.recv(timeout=TIMEOUT))
        wait_until(lambda: server_ws._receiving)
        with pytest.raises(RuntimeError, match="another thread is already running recv"):
            server_ws.recv(timeout=TIMEOUT)
        with pytest.raises(RuntimeError, match="another thread"):
            next(iter(server_ws))
        client_ws.send("for the first")
        assert first.result() == "for the first"
        client_ws.send("for the next")
        assert server_ws.recv(timeout=TIMEOUT) == "for the next"


def test_recv_before_the_handshake_is_invalid_state() -> None:
    """process_request sees a CONNECTING connection: recv there is a misuse."""
    errors: queue.Queue[BaseException] = queue.Queue()

    def process_request(conn: ServerConnection, request: tether.Request) -> None:
        assert conn.state is tether.State.CONNECTING
        try:
            conn.recv(timeout=0)
        except tether.InvalidState as exc:
            errors.put(exc)

    with sync_server(process_request=process_request) as server, connect(uri(server)):
        assert "handshake is not complete" in str(errors.get(timeout=TIMEOUT))


# --------------------------------------------------------------------------- closing


@pytest.mark.parametrize("code", [1000, 1001])
@pytest.mark.parametrize("side", ["server closes", "client closes"])
def test_iteration_ends_quietly_on_normal_closure(side: str, code: int) -> None:
    with ws_pair() as (server_ws, client_ws):
        closer, reader = (
            (server_ws, client_ws) if side == "server closes" else (client_ws, server_ws)
        )
        closer.send("a")
        closer.send("b")
        closing = Background(lambda: closer.close(code, "bye"))
        assert list(reader) == ["a", "b"]
        closing.result()
        assert reader.close_code == code
        assert reader.close_reason == "bye"
        assert reader.state is tether.State.CLOSED
        with pytest.raises(tether.ConnectionClosedOK):
            reader.recv(timeout=TIMEOUT)
        with pytest.raises(tether.ConnectionClosedOK):
            reader.send("late")


@pytest.mark.parametrize("code", [1011, 4000])
@pytest.mark.parametrize("side", ["server closes", "client closes"])
def test_iteration_raises_on_abnormal_closure(side: str, code: int) -> None:
    with ws_pair() as (server_ws, client_ws):
        closer, reader = (
            (server_ws, client_ws) if side == "server closes" else (client_ws, server_ws)
        )
        closer.send("a")
        closing = Background(lambda: closer.close(code, "trouble"))
        received: list[str | bytes] = []
        with pytest.raises(tether.ConnectionClosedError) as info:
            received.extend(reader)
        closing.result()
        assert received == ["a"]
        assert info.value.code == code
        assert info.value.reason == "trouble"


def test_close_from_another_thread_ends_a_blocked_recv() -> None:
    with ws_pair() as (server_ws, client_ws):
        blocked = Background(lambda: client_ws.recv())
        wait_until(lambda: client_ws._receiving)
        client_ws.close()
        with pytest.raises(tether.ConnectionClosedOK):
            blocked.result()
        server_ws.wait_closed(TIMEOUT)


def test_close_is_idempotent_and_context_manager_closes_with_1000() -> None:
    with ws_pair() as (server_ws, client_ws):
        with client_ws:
            pass
        client_ws.close()
        client_ws.close(4000)
        server_ws.wait_closed(TIMEOUT)
        assert server_ws.close_code == 1000
        assert client_ws.close_code == 1000


def test_close_rejects_invalid_codes() -> None:
    with ws_pair() as (_, client_ws):
        with pytest.raises(ValueError, match="close code 1006 may not be sent"):
            client_ws.close(1006)
        with pytest.raises(ValueError, match="123 bytes"):
            client_ws.close(1000, "x" * 124)
        assert client_ws.state is tether.State.OPEN


def test_tcp_lost_without_close_frame_server() -> None:
    """A client that drops the TCP connection: the handler's recv raises 1006."""
    outcome: queue.Queue[BaseException] = queue.Queue()

    def handler(ws: ServerConnection) -> None:
        try:
            ws.recv()
        except tether.ConnectionClosed as exc:
            outcome.put(exc)

    with sync_server(handler) as server:
        peer = raw_client(server.port)
        peer.abort()
        exc = outcome.get(timeout=TIMEOUT)
        assert isinstance(exc, tether.ConnectionClosedError)
        assert exc.code == 1006
        assert "connection lost without a closing handshake" in str(exc)


@pytest.mark.parametrize("how", ["abort", "close"])
def test_tcp_lost_without_close_frame_client(how: str) -> None:
    with RawServer() as raw, connect(raw.uri, close_timeout=1) as ws:
        peer = raw.next_peer()
        peer.send_frame(OP_TEXT, b"last words")
        getattr(peer, how)()
        assert ws.recv(timeout=TIMEOUT) == "last words"
        with pytest.raises(tether.ConnectionClosedError) as info:
            ws.recv(timeout=TIMEOUT)
        assert info.value.code == 1006
        assert ws.close_code == 1006
        assert ws.state is tether.State.CLOSED
        with pytest.raises(tether.ConnectionClosedError):
            ws.send("nobody there")


def test_close_timeout_when_the_peer_never_answers() -> None:
    """A peer that never answers the close frame: close() gives up after close_timeout."""
    with RawServer() as raw:
        ws = connect(raw.uri, close_timeout=0.3)
        peer = raw.next_peer()
        start = time.monotonic()
        ws.close()
        elapsed = time.monotonic() - start
        assert 0.25 < elapsed < 2
        assert peer.recv_frame().close_code == 1000
        assert ws.state is tether.State.CLOSED
        with pytest.raises(tether.ConnectionClosedError) as info:
            ws.recv(timeout=TIMEOUT)
        assert info.value.code == 1006
        assert info.value.sent_code == 1000


def test_close_timeout_server_when_the_client_keeps_tcp_open() -> None:
    """The server half-closes after the closing handshake; a client that never closes
    its side is dropped after close_timeout."""
    with sync_server(lambda ws: None, close_timeout=0.3) as server:
        peer = raw_client(server.port)
        frame = peer.recv_frame()
        assert frame.close_code == 1000
        peer.send_frame(OP_CLOSE, frame.payload)
        start = time.monotonic()
        assert peer.read_eof() == b""  # the server's half-close, at once
        assert time.monotonic() - start < 0.25
        peer.close()


def test_close_while_another_thread_is_blocked_in_send() -> None:
    """close() doesn't wait behind a send blocked on a peer that doesn't read."""
    with RawServer() as raw:
        ws = connect(raw.uri, close_timeout=0.3, compression=None)
        raw.next_peer()  # never reads
        payload = b"\0" * MIB

        def flood() -> None:
            while True:
                ws.send(payload)

        sending = Background(flood)
        wait_until(lambda: ws._send_lock.locked() and not sending.done())
        # Keep the send lock busy long enough that it is surely blocked in the kernel.
        start = time.monotonic()
        ws.close()
        assert time.monotonic() - start < 2
        with pytest.raises(tether.ConnectionClosedError):
            sending.result()


# ------------------------------------------------------------------- ping and pong


@pytest.mark.parametrize("side", SIDES)
def test_ping_returns_a_pong_waiter(side: str) -> None:
    with ws_pair() as pair:
        sender, _ = pick(side, pair)
        waiter = sender.ping()
        assert isinstance(waiter, PongWaiter)
        assert isinstance(waiter, threading.Event)
        assert waiter.wait(TIMEOUT)
        assert waiter.latency is not None and 0 < waiter.latency < TIMEOUT
        assert sender.ping("hello").result(TIMEOUT) > 0
        assert sender.latency > 0


def test_ping_data_and_matching_pong() -> None:
    with RawServer() as raw, connect(raw.uri, close_timeout=1) as ws:
        peer = raw.next_peer()
        waiter = ws.ping(b"abcd")
        frame = peer.recv_frame()
        assert (frame.opcode, frame.payload) == (OP_PING, b"abcd")
        with pytest.raises(ValueError, match="already waiting"):
            ws.ping(b"abcd")
        with pytest.raises(TimeoutError, match="no pong"):
            waiter.result(timeout=0.01)
        peer.send_frame(OP_PONG, b"other")  # not ours: ignored
        assert not waiter.is_set()
        peer.send_frame(OP_PONG, b"abcd")
        assert waiter.result(TIMEOUT) >= 0
        peer.close()


def test_pong_acknowledges_earlier_pings() -> None:
    with RawServer() as raw, connect(raw.uri, close_timeout=1) as ws:
        peer = raw.next_peer()
        first, second = ws.ping(b"1"), ws.ping(b"2")
        peer.recv_frame()
        peer.recv_frame()
        peer.send_frame(OP_PONG, b"2")
        assert second.result(TIMEOUT) >= 0
        assert first.is_set() and first.latency is not None
        peer.close()


def test_pong_waiter_is_released_when_the_connection_closes() -> None:
    with RawServer() as raw, connect(raw.uri, close_timeout=1) as ws:
        peer = raw.next_peer()
        waiter = ws.ping()
        peer.abort()
        assert waiter.wait(TIMEOUT)
        assert waiter.latency is None
        with pytest.raises(tether.ConnectionClosedError):
            waiter.result(TIMEOUT)
        with pytest.raises(tether.ConnectionClosedError):
            ws.ping()


def test_pings_are_answered_automatically() -> None:
    with sync_server() as server:
        peer = raw_client(server.port)
        peer.send_frame(OP_PING, b"are you there")
        frame = peer.recv_frame()
        assert (frame.opcode, frame.payload) == (OP_PONG, b"are you there")
        peer.send_frame(OP_CLOSE, close_payload(1000))
        assert peer.recv_frame().close_code == 1000
        assert peer.read_eof() == b""
        peer.close()


def test_unsolicited_pong() -> None:
    with RawServer() as raw, connect(raw.uri, close_timeout=1) as ws:
        peer = raw.next_peer()
        ws.pong("heartbeat")
        frame = peer.recv_frame()
        assert (frame.opcode, frame.payload) == (OP_PONG, b"heartbeat")
        peer.close()


def test_ping_payload_limit() -> None:
    with ws_pair() as (_, client_ws), pytest.raises(ValueError, match="125 bytes"):
        client_ws.ping(b"x" * 126)


def test_keepalive_measures_latency() -> None:
    with ws_pair(client_options={"ping_interval": 0.05}) as (_, client_ws):
        wait_until(lambda: client_ws.latency > 0)
        assert client_ws.state is tether.State.OPEN


def test_keepalive_timeout_closes_with_1011_server() -> None:
    """A raw client that never answers pings is closed with 1011 after ping_timeout."""
    outcome: queue.Queue[BaseException] = queue.Queue()

    def handler(ws: ServerConnection) -> None:
        try:
            ws.recv()
        except tether.ConnectionClosed as exc:
            outcome.put(exc)

    with sync_server(handler, ping_interval=0.1, ping_timeout=0.2, close_timeout=0.3
                     ) as server:
        peer = raw_client(server.port)
        start = time.monotonic()
        frames = peer.recv_until(OP_CLOSE)
        elapsed = time.monotonic() - start
        assert frames[0].opcode == OP_PING
        assert frames[-1].close_code == 1011
        assert 0.25 < elapsed < 2
        # The peer never answers the close frame: the server gives up after
        # close_timeout and drops the TCP connection.
        assert peer.read_eof() == b""
        peer.close()
        exc = outcome.get(timeout=TIMEOUT)
        assert isinstance(exc, tether.ConnectionClosedError)
        assert exc.sent_code == 1011


def test_keepalive_timeout_closes_with_1011_client() -> None:
    with RawServer() as raw:
        ws = connect(raw.uri, ping_interval=0.1, ping_timeout=0.2)
        peer = raw.next_peer()
        frames = peer.recv_until(OP_CLOSE)
        assert frames[0].opcode == OP_PING
        assert frames[-1].close_code == 1011
        # This peer does answer the close frame, then closes TCP.
        peer.send_frame(OP_CLOSE, frames[-1].payload)
        peer.close()
        with pytest.raises(tether.ConnectionClosedError) as info:
            ws.recv(timeout=TIMEOUT)
        assert info.value.code == 1011
        assert ws.state is tether.State.CLOSED


def test_keepalive_disabled() -> None:
    with RawServer() as raw, connect(raw.uri, ping_interval=None, close_timeout=1) as ws:
        peer = raw.next_peer()
        ws.send("no ping before this")
        assert peer.recv_frame().opcode == OP_TEXT
        with pytest.raises(TimeoutError):
            peer.recv_frame(timeout=0.3)  # nothing more: no keepalive ping
        peer.close()


# ---------------------------------------------------------------------- limits


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("side", SIDES)
def test_max_size_closes_with_1009(side: str, compression: str | None) -> None:
    sender_opts = {"compression": compression}
    receiver_opts = {"compression": compression, "max_size": 1000}
    with ws_pair(**options(side, sender_opts, receiver_opts)) as pair:
        sender, receiver = pick(side, pair)
        sender.send("x" * 1000)  # max_size is inclusive
        assert receiver.recv(timeout=TIMEOUT) == "x" * 1000
        sender.send("x" * 1001)
        with pytest.raises(tether.ConnectionClosedError) as info:
            receiver.recv(timeout=TIMEOUT)
        assert info.value.sent_code == 1009
        assert isinstance(info.value.__cause__, tether.PayloadTooBig)
        assert "max_size" in str(info.value.__cause__)
        with pytest.raises(tether.ConnectionClosedError) as info:
            sender.recv(timeout=TIMEOUT)
        assert info.value.code == 1009


def test_max_queue_stops_reading_and_loses_nothing() -> None:
    """With max_queue=4 a handler that doesn't recv stops the reader: the client's sends
    block in the kernel. Once the handler reads, every message arrives once, in order."""
    go = threading.Event()
    received: queue.Queue[list[int]] = queue.Queue()
    count = 400
    payload = b"\xa5" * 2**16

    def handler(ws: ServerConnection) -> None:
        handed.put(ws)
        assert go.wait(TIMEOUT)
        indices = []
        for _ in range(count):
            message = ws.recv(timeout=TIMEOUT)
            assert isinstance(message, bytes)
            indices.append(struct.unpack("!I", message[:4])[0])
        received.put(indices)

    handed: queue.Queue[ServerConnection] = queue.Queue()
    with sync_server(handler, max_queue=4, compression=None) as server, connect(
        uri(server), compression=None
    ) as ws:
        def send_all() -> None:
            for i in range(count):
                ws.send(struct.pack("!I", i) + payload)

        sending = Background(send_all)
        server_ws = handed.get(timeout=TIMEOUT)
        wait_until(lambda: server_ws._paused)
        # Paused at max_queue (a read may hold a little more than one message).
        assert len(server_ws.protocol.messages) <= 5
        assert not sending.done()  # 25 MiB don't fit in the kernel's buffers
        go.set()
        assert received.get(timeout=TIMEOUT * 2) == list(range(count))
        sending.result()


# ---------------------------------------------------------------------- attributes


def test_connection_attributes() -> None:
    with ws_pair() as (server_ws, client_ws):
        assert isinstance(client_ws.id, uuid.UUID)
        assert server_ws.id != client_ws.id
        assert client_ws.state is server_ws.state is tether.State.OPEN
        assert server_ws.request is not None and server_ws.request.path == "/"
        assert client_ws.request is not None and client_ws.request.path == "/"
        assert client_ws.response is not None and client_ws.response.status == 101
        assert server_ws.response is not None and server_ws.response.status == 101
        assert server_ws.remote_address == client_ws.local_address
        assert client_ws.remote_address == server_ws.local_address
        assert client_ws.subprotocol is None
        assert client_ws.close_code is None and client_ws.close_reason is None
        assert client_ws.ssl_object is None
        assert repr(client_ws) == f"<ClientConnection {client_ws.id} OPEN>"
        assert client_ws.logger.name == "tether.client"
        assert server_ws.logger.name == "tether.server"


def test_debug_logging_of_frames_and_state(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tether")
    with ws_pair() as (server_ws, client_ws):
        client_ws.send("hi")
        assert server_ws.recv(timeout=TIMEOUT) == "hi"
    client_lines = [r.getMessage() for r in caplog.records if r.name == "tether.client"]
    server_lines = [r.getMessage() for r in caplog.records if r.name == "tether.server"]
    assert f"[{client_ws.id}] = connection is OPEN" in client_lines
    assert any(line.startswith(f"[{client_ws.id}] > TEXT 2 bytes") for line in client_lines)
    assert any(line.startswith(f"[{server_ws.id}] < TEXT 2 bytes") for line in server_lines)
    assert any("= connection CLOSED cleanly" in line for line in client_lines)
    assert any("x half-closing the TCP connection" in line for line in server_lines)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_close_reply_is_written_before_the_half_close(tls: bool, request: pytest.FixtureRequest
                                                      ) -> None:
    """The client closes while the handler is in the middle of a send: the server's
    close reply must still go out before its half-close (regression: a sender that
    finished its write after the close frame arrived half-closed first, losing the
    reply; the client then saw 1006)."""
    server_opts: dict[str, Any] = {}
    client_opts: dict[str, Any] = {}
    scheme = "ws"
    if tls:
        files = request.getfixturevalue("tls_files")
        server_opts["ssl"] = files.server_context()
        client_opts["ssl"] = files.client_context()
        scheme = "wss"

    def flood(ws: ServerConnection) -> None:
        while True:
            ws.send("x" * 2000)

    with sync_server(flood, compression=None, **server_opts) as server:
        for _ in range(30):
            with connect(uri(server, scheme=scheme), compression=None, **client_opts) as ws:
                ws.recv(timeout=TIMEOUT)
            assert ws.close_code == 1000, "the server's close reply was lost"


def test_failure_waits_for_earlier_messages_to_be_read() -> None:
    """A protocol error after good messages: the application still reads those
    messages, then the connection is failed (1009 here) without waiting for the grace
    period, since recv found the queue empty."""
    with ws_pair(server_options={"max_size": 10, "compression": None},
                 client_options={"compression": None}) as (server_ws, client_ws):
        client_ws.send("one")
        client_ws.send("two")
        client_ws.send("x" * 11)  # too big: fails the connection
        wait_until(lambda: server_ws.protocol.pending_close is not None)
        start = time.monotonic()
        assert server_ws.recv(timeout=TIMEOUT) == "one"
        assert server_ws.recv(timeout=TIMEOUT) == "two"
        with pytest.raises(tether.ConnectionClosedError) as info:
            server_ws.recv(timeout=TIMEOUT)
        assert time.monotonic() - start < 0.5
        assert info.value.sent_code == 1009
        with pytest.raises(tether.ConnectionClosedError) as info:
            client_ws.recv(timeout=TIMEOUT)
        assert info.value.code == 1009


def test_failure_is_sent_after_the_grace_period_if_nobody_reads() -> None:
    with ws_pair(server_options={"max_size": 10, "compression": None},
                 client_options={"compression": None}) as (server_ws, client_ws):
        client_ws.send("unread")
        client_ws.send("x" * 11)
        start = time.monotonic()
        with pytest.raises(tether.ConnectionClosedError) as info:
            client_ws.recv(timeout=TIMEOUT)
        assert 0.9 < time.monotonic() - start < 3
        assert info.value.code == 1009
        assert server_ws.recv(timeout=TIMEOUT) == "unread"
        with pytest.raises(tether.ConnectionClosedError):
            server_ws.recv(timeout=TIMEOUT)
