"""Connections of both layers behave alike: messages, fragments, ping, closing, limits.

Each test runs once per layer (the ``layer`` fixture of conftest.py). Scenarios that
apply to both ends run once with the client sending and once with the server sending
(``side``): ``sender, receiver = pick(side, pair)``.
"""

from __future__ import annotations

import queue
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import tether

from .._peers import (
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
    wait_until,
)
from .conftest import Layer, Peer

SIDES = ["client sends", "server sends"]
MIB = 2**20


def pick(side: str, pair: tuple[Peer, Peer]) -> tuple[Peer, Peer]:
    """Return (sender, receiver) for ``side``."""
    server_ws, client_ws = pair
    return (client_ws, server_ws) if side == "client sends" else (server_ws, client_ws)


def options(side: str, sender: dict[str, Any], receiver: dict[str, Any]) -> dict[str, Any]:
    """``pair`` keyword arguments giving ``sender`` / ``receiver`` options to the right ends."""
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
def test_echo(layer: Layer, name: str, message: str | bytes, compression: str | None) -> None:
    """Text comes back as str, binary as bytes, whatever the size (max_size is inclusive)."""
    with layer.serve(compression=compression) as server, layer.connect(
        server.uri(), compression=compression
    ) as ws:
        ws.send(message)
        assert ws.recv() == message


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize(
    "message", [bytearray(b"abc"), memoryview(b"abc"), memoryview(b"xabcx")[1:4]],
    ids=["bytearray", "memoryview", "sliced memoryview"],
)
def test_bytes_like_is_sent_as_binary(
    layer: Layer, side: str, message: bytearray | memoryview
) -> None:
    with layer.pair() as pair:
        sender, receiver = pick(side, pair)
        sender.send(message)
        assert receiver.recv() == b"abc"


@pytest.mark.parametrize("side", SIDES)
def test_recv_decode(layer: Layer, side: str) -> None:
    with layer.pair() as pair:
        sender, receiver = pick(side, pair)
        sender.send("é")
        sender.send("é".encode())
        sender.send("text")
        sender.send(b"bytes")
        assert receiver.recv(decode=False) == "é".encode()
        assert receiver.recv(decode=True) == "é"
        assert receiver.recv(decode=True) == "text"
        assert receiver.recv(decode=False) == b"bytes"


# ------------------------------------------------------------------ fragmented sends


def _generate(*items: str | bytes) -> Iterator[str | bytes]:
    yield from items


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize(
    ("fragments", "expected"),
    [
        (lambda: ["frag", "men", "ted ✓"], "fragmented ✓"),
        (lambda: [b"\x00", bytearray(b"\x01"), memoryview(b"\x02"), b""], b"\x00\x01\x02"),
        (lambda: _generate("gen", "erated"), "generated"),
        (lambda: ("one",), "one"),
        (lambda: ["big" * 100_000, "ger" * 100_000], "big" * 100_000 + "ger" * 100_000),
    ],
    ids=["str list", "bytes-like list", "generator", "one fragment", "large"],
)
def test_send_iterable_as_one_message(
    layer: Layer, side: str, compression: str | None, fragments: Any, expected: str | bytes
) -> None:
    opts = {"compression": compression}
    with layer.pair(opts, opts) as pair:
        sender, receiver = pick(side, pair)
        sender.send(fragments())
        sender.send("next")
        assert receiver.recv() == expected
        assert receiver.recv() == "next"


def test_fragments_on_the_wire_from_client(layer: Layer) -> None:
    """RFC 6455 5.4: the first frame has the opcode and FIN=0, then CONT frames, FIN=1 last."""
    with RawServer() as raw, layer.connect(raw.uri, compression=None, close_timeout=0.5
                                           ) as ws:
        peer = raw.next_peer()
        ws.send(["ab", "cd", "ef"])
        frames = [peer.recv_frame() for _ in range(3)]
        assert [(f.opcode, f.fin, f.payload) for f in frames] == [
            (OP_TEXT, False, b"ab"),
            (OP_CONT, False, b"cd"),
            (OP_CONT, True, b"ef"),
        ]
        ws.send([b"x", b"y"])
        frames = [peer.recv_frame() for _ in range(2)]
        assert [(f.opcode, f.fin) for f in frames] == [(OP_BINARY, False), (OP_CONT, True)]
        peer.abort()


def test_fragments_on_the_wire_from_server(layer: Layer) -> None:
    def handler(ws: Peer) -> None:
        ws.send([b"ab", b"cd"])
        ws.wait_closed()

    with layer.serve(handler) as server:
        peer = raw_client(server.port)
        frames = [peer.recv_frame() for _ in range(2)]
        assert [(f.opcode, f.fin, f.payload) for f in frames] == [
            (OP_BINARY, False, b"ab"),
            (OP_CONT, True, b"cd"),
        ]
        peer.close()


# ------------------------------------------------------------------- ping and pong


@pytest.mark.parametrize("side", ["client pings", "server pings"])
def test_ping_returns_the_round_trip_time(layer: Layer, side: str) -> None:
    with layer.pair() as (server_ws, client_ws):
        pinger = client_ws if side == "client pings" else server_ws
        assert pinger.latency == 0
        rtt = pinger.ping()
        assert isinstance(rtt, float)
        assert 0 < rtt < TIMEOUT
        assert pinger.latency == rtt
        assert 0 < pinger.ping("named") < TIMEOUT
        assert 0 < pinger.ping(b"bytes") < TIMEOUT


def test_ping_data_and_matching_pong(layer: Layer) -> None:
    """The ping carries its data; only the pong with the same data answers it."""
    with RawServer() as raw, layer.connect(raw.uri, close_timeout=0.5) as ws:
        peer = raw.next_peer()
        pinging = Background(lambda: ws.ping(b"abcd"))
        frame = peer.recv_frame()
        assert (frame.opcode, frame.payload) == (OP_PING, b"abcd")
        peer.send_frame(OP_PONG, b"other")  # not ours: ignored
        ws.send("after the wrong pong")
        assert peer.recv_frame().payload == b"after the wrong pong"
        assert not pinging.done()
        peer.send_frame(OP_PONG, b"abcd")
        assert pinging.result() >= 0
        peer.close()


def test_pings_are_answered_automatically(layer: Layer) -> None:
    with layer.serve() as server:
        peer = raw_client(server.port)
        peer.send_frame(OP_PING, b"are you there")
        frame = peer.recv_frame()
        assert (frame.opcode, frame.payload) == (OP_PONG, b"are you there")
        peer.send_frame(OP_CLOSE, close_payload(1000))
        assert peer.recv_frame().close_code == 1000
        assert peer.read_eof() == b""
        peer.close()


def test_keepalive_measures_latency(layer: Layer) -> None:
    with layer.pair(client_options={"ping_interval": 0.05}) as (_, client_ws):
        wait_until(lambda: client_ws.latency > 0)
        assert client_ws.state is tether.State.OPEN


def test_keepalive_timeout_closes_with_1011_server(layer: Layer) -> None:
    """A raw client that never answers pings is closed with 1011 after ping_timeout."""
    outcome: queue.Queue[BaseException] = queue.Queue()

    def handler(ws: Peer) -> None:
        try:
            ws.recv(timeout=None)
        except tether.ConnectionClosed as exc:
            outcome.put(exc)

    with layer.serve(handler, ping_interval=0.1, ping_timeout=0.2, close_timeout=0.3
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


def test_keepalive_timeout_closes_with_1011_client(layer: Layer) -> None:
    with RawServer() as raw:
        ws = layer.connect(raw.uri, ping_interval=0.1, ping_timeout=0.2)
        peer = raw.next_peer()
        frames = peer.recv_until(OP_CLOSE)
        assert frames[0].opcode == OP_PING
        assert frames[-1].close_code == 1011
        # This peer does answer the close frame, then closes TCP.
        peer.send_frame(OP_CLOSE, frames[-1].payload)
        peer.close()
        with pytest.raises(tether.ConnectionClosedError) as info:
            ws.recv()
        assert info.value.code == 1011
        ws.wait_closed()
        assert ws.state is tether.State.CLOSED


# --------------------------------------------------------------------------- closing


@pytest.mark.parametrize("code", [1000, 1001])
@pytest.mark.parametrize("side", ["server closes", "client closes"])
def test_iteration_ends_quietly_on_normal_closure(layer: Layer, side: str, code: int) -> None:
    with layer.pair() as (server_ws, client_ws):
        closer, reader = (
            (server_ws, client_ws) if side == "server closes" else (client_ws, server_ws)
        )
        closer.send("a")
        closer.send("b")
        closing = Background(lambda: closer.close(code, "bye"))
        assert list(reader) == ["a", "b"]
        closing.result()
        reader.wait_closed()
        assert reader.close_code == code
        assert reader.close_reason == "bye"
        assert reader.state is tether.State.CLOSED
        with pytest.raises(tether.ConnectionClosedOK):
            reader.recv()
        with pytest.raises(tether.ConnectionClosedOK):
            reader.send("late")


@pytest.mark.parametrize("code", [1011, 3000, 4999])
@pytest.mark.parametrize("side", ["server closes", "client closes"])
def test_iteration_raises_on_abnormal_closure(layer: Layer, side: str, code: int) -> None:
    with layer.pair() as (server_ws, client_ws):
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


def test_close_code_and_reason_on_both_ends(layer: Layer) -> None:
    with layer.pair() as (server_ws, client_ws):
        assert (client_ws.close_code, client_ws.close_reason) == (None, None)
        client_ws.close(4000, "custom")
        server_ws.wait_closed()
        # Each end reports the close frame it received; the server echoed the code
        # (RFC 6455 5.5.1), not the reason.
        assert (server_ws.close_code, server_ws.close_reason) == (4000, "custom")
        assert (client_ws.close_code, client_ws.close_reason) == (4000, "")
        with pytest.raises(tether.ConnectionClosedError) as info:
            server_ws.recv()
        assert (info.value.code, info.value.reason) == (4000, "custom")


def test_close_is_idempotent_and_context_manager_closes_with_1000(layer: Layer) -> None:
    with layer.pair() as (server_ws, client_ws):
        with client_ws:
            pass
        client_ws.close()
        client_ws.close(4000)
        server_ws.wait_closed()
        assert server_ws.close_code == 1000
        assert client_ws.close_code == 1000


def test_close_rejects_invalid_codes(layer: Layer) -> None:
    with layer.pair() as (_, client_ws):
        with pytest.raises(ValueError, match="close code 1006 may not be sent"):
            client_ws.close(1006)
        with pytest.raises(ValueError, match="123 bytes"):
            client_ws.close(1000, "x" * 124)
        assert client_ws.state is tether.State.OPEN


def test_close_timeout_when_the_peer_never_answers(layer: Layer) -> None:
    """The peer never answers the close frame: close() gives up after close_timeout."""
    with RawServer() as raw:
        ws = layer.connect(raw.uri, close_timeout=0.2)
        peer = raw.next_peer()
        start = time.monotonic()
        ws.close()
        assert 0.15 < time.monotonic() - start < 2
        assert peer.recv_frame().close_code == 1000
        assert ws.state is tether.State.CLOSED
        assert ws.close_code == 1006
        with pytest.raises(tether.ConnectionClosedError) as info:
            ws.recv()
        assert info.value.code == 1006
        assert info.value.sent_code == 1000
        peer.close()


@pytest.mark.parametrize("how", ["abort", "fin"])
def test_tcp_lost_without_close_frame_client(layer: Layer, how: str) -> None:
    with RawServer() as raw:
        ws = layer.connect(raw.uri)
        peer = raw.next_peer()
        peer.send_frame(OP_TEXT, b"last words")
        peer.abort() if how == "abort" else peer.close()
        assert ws.recv() == "last words"
        with pytest.raises(tether.ConnectionClosedError) as info:
            ws.recv()
        assert info.value.code == 1006
        assert ws.close_code == 1006
        ws.wait_closed()
        assert ws.state is tether.State.CLOSED
        with pytest.raises(tether.ConnectionClosedError):
            ws.send("nobody there")


def test_tcp_lost_without_close_frame_server(layer: Layer) -> None:
    outcome: queue.Queue[BaseException] = queue.Queue()

    def handler(ws: Peer) -> None:
        try:
            ws.recv(timeout=None)
        except tether.ConnectionClosed as exc:
            outcome.put(exc)

    with layer.serve(handler) as server:
        raw_client(server.port).abort()
        exc = outcome.get(timeout=TIMEOUT)
        assert isinstance(exc, tether.ConnectionClosedError)
        assert exc.code == 1006
        assert "connection lost without a closing handshake" in str(exc)


# ---------------------------------------------------------------------- limits


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("side", SIDES)
def test_max_size_closes_with_1009(layer: Layer, side: str, compression: str | None) -> None:
    sender_opts = {"compression": compression}
    receiver_opts = {"compression": compression, "max_size": 1000}
    with layer.pair(**options(side, sender_opts, receiver_opts)) as pair:
        sender, receiver = pick(side, pair)
        sender.send("x" * 1000)  # max_size is inclusive
        assert receiver.recv() == "x" * 1000
        sender.send("x" * 1001)
        with pytest.raises(tether.ConnectionClosedError) as info:
            receiver.recv()
        assert info.value.sent_code == 1009
        assert isinstance(info.value.__cause__, tether.PayloadTooBig)
        assert "max_size" in str(info.value.__cause__)
        with pytest.raises(tether.ConnectionClosedError) as info:
            sender.recv()
        assert info.value.code == 1009


def test_max_queue_stops_reading_and_loses_nothing(layer: Layer) -> None:
    """With max_queue=4 a handler that doesn't recv makes the server stop reading its
    socket (TCP then pushes back on the client). Once the handler reads, every message
    arrives once, in order."""
    go = threading.Event()
    handed: queue.Queue[Peer] = queue.Queue()
    received: queue.Queue[list[int]] = queue.Queue()
    count = 400
    payload = b"\xa5" * 2**16

    def handler(ws: Peer) -> None:
        handed.put(ws)
        assert go.wait(TIMEOUT)
        indices = []
        for _ in range(count):
            message = ws.recv()
            indices.append(struct.unpack("!I", message[:4])[0])
        received.put(indices)

    with layer.serve(handler, max_queue=4, compression=None) as server, layer.connect(
        server.uri(), compression=None
    ) as ws:

        def send_all() -> None:
            for i in range(count):
                ws.send(struct.pack("!I", i) + payload)

        sending = Background(send_all)
        server_ws = handed.get(timeout=TIMEOUT)
        wait_until(lambda: layer.reading_paused(server_ws))
        assert not sending.done()  # 25 MiB don't fit in the kernel's buffers
        go.set()
        assert received.get(timeout=TIMEOUT * 2) == list(range(count))
        sending.result()
