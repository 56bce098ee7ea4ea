"""tether.sync.connection over real loopback sockets: what is particular to threads.

The behaviour both layers share (echo of every kind of message, fragments, ping/pong,
close codes, keepalive, max_size, max_queue) is tested once for both in tests/both; here
are the sync API's own: recv(timeout), PongWaiter, several threads on one connection,
close from another thread, the failure grace period, logging.

Scenarios that apply to both ends run once with the client sending and once with the
server sending (``side``): ``sender, receiver = pick(side, pair)``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import tether
from tether.sync import ClientConnection, Connection, PongWaiter, ServerConnection, connect

from .conftest import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    TIMEOUT,
    Background,
    RawServer,
    raw_client,
    sync_server,
    uri,
    wait_until,
    ws_pair,
)

SIDES = ["client sends", "server sends"]
MIB = 2**20


def pick(side: str, pair: tuple[ServerConnection, ClientConnection]
         ) -> tuple[Connection, Connection]:
    """Return (sender, receiver) for ``side``."""
    server_ws, client_ws = pair
    return (client_ws, server_ws) if side == "client sends" else (server_ws, client_ws)


# -------------------------------------------------------------------------- messages

@pytest.mark.parametrize(
    "message", [{"a": 1}, 42, None, 1.5], ids=["dict", "int", "None", "float"]
)
def test_send_rejects_a_non_message(message: Any) -> None:
    with ws_pair() as (server_ws, client_ws):
        with pytest.raises(TypeError, match="str, bytes-like, or an iterable"):
            client_ws.send(message)
        client_ws.send("still open")
        assert server_ws.recv(timeout=TIMEOUT) == "still open"


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


def test_close_from_another_thread_ends_a_blocked_recv() -> None:
    with ws_pair() as (server_ws, client_ws):
        blocked = Background(lambda: client_ws.recv())
        wait_until(lambda: client_ws._receiving)
        client_ws.close()
        with pytest.raises(tether.ConnectionClosedOK):
            blocked.result()
        server_ws.wait_closed(TIMEOUT)


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


@pytest.mark.parametrize("side", ["client pings", "server pings"])
def test_pings_answered_when_the_application_stops_reading(side: str) -> None:
    """recv reads the socket itself while the application receives; once it stops, the
    reader thread takes over, so pings still get their pongs."""
    with ws_pair() as (server_ws, client_ws):
        pinger, other = (client_ws, server_ws) if side == "client pings" else (
            server_ws, client_ws)
        for i in range(20):
            pinger.send(str(i))
            assert other.recv(timeout=TIMEOUT) == str(i)
        # `other` received a moment ago and is not in recv now.
        assert 0 < pinger.ping().result(TIMEOUT) < TIMEOUT
        other.send("still there")
        assert pinger.recv(timeout=TIMEOUT) == "still there"


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


def test_keepalive_disabled() -> None:
    with RawServer() as raw, connect(raw.uri, ping_interval=None, close_timeout=1) as ws:
        peer = raw.next_peer()
        ws.send("no ping before this")
        assert peer.recv_frame().opcode == OP_TEXT
        with pytest.raises(TimeoutError):
            peer.recv_frame(timeout=0.3)  # nothing more: no keepalive ping
        peer.close()


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
