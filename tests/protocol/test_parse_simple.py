"""The C hot path of Protocol.receive_data (``tether._speedups.parse_simple``) and its
pure-Python twin (the general frame loop) decide every input the same way."""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.protocol import connection as connection_module
from tether.protocol.connection import Protocol, Side
from tether.protocol.frames import Frame

speedups = pytest.importorskip("tether._speedups", reason="C speedups not built")

MASK = b"\x37\xfa\x21\x3d"
SIDES = [Side.SERVER, Side.CLIENT]


@contextmanager
def implementation(fast: Any) -> Iterator[None]:
    saved = connection_module.parse_simple
    connection_module.parse_simple = fast
    try:
        yield
    finally:
        connection_module.parse_simple = saved


def outcome(side: Side, max_size: int | None, chunks: list[bytes], fast: Any) -> dict[str, Any]:
    with implementation(fast):
        proto = Protocol(side, max_size=max_size)
        for chunk in chunks:
            proto.receive_data(chunk)
        pending = proto.pending_close
        if pending is not None:
            proto.fail_now()
    # What this side sent (pongs, close frames), as the peer reads it: client frames are
    # masked with random masks, so the bytes differ from run to run.
    peer = Protocol(Side.CLIENT if side is Side.SERVER else Side.SERVER, max_size=None)
    peer.receive_data(b"".join(proto.data_to_send()))
    return {
        "messages": list(proto.messages),
        "events": [repr(event) for event in proto.events],
        "out": ([repr(e) for e in peer.events], peer.close_rcvd, list(peer.messages),
                repr(peer.exc)),
        "exc": None if proto.exc is None else (type(proto.exc), proto.exc.code, str(proto.exc)),
        "pending": pending,
        "close_rcvd": proto.close_rcvd,
        "state": proto.state,
    }


def assert_twins(side: Side, max_size: int | None, chunks: list[bytes]) -> dict[str, Any]:
    c = outcome(side, max_size, chunks, speedups.parse_simple)
    python = outcome(side, max_size, chunks, None)
    assert c == python
    return c


def frame(b0: int, payload: bytes, masked: bool) -> bytes:
    f = Frame(
        b0 & 0x0F, payload, bool(b0 & 0x80), bool(b0 & 0x40), bool(b0 & 0x20), bool(b0 & 0x10)
    )
    return f.serialize(MASK if masked else None)


def random_stream(
    side: Side, frames: list[tuple[int, bool, bytes]], seed: int, sizes: tuple[int, ...]
) -> list[bytes]:
    """The frames serialised, cut into chunks of random sizes from ``sizes``. Mostly
    rightly masked for ``side`` (``ok``, and control frames), so that most frames get
    past the mask check."""
    right = side is Side.SERVER
    data = b"".join(frame(b0, p, right if ok or b0 & 0x0F > 2 else not right)
                    for b0, ok, p in frames)
    rnd = random.Random(seed)
    chunks = []
    pos = 0
    while pos < len(data):
        n = rnd.choice(sizes)
        chunks.append(data[pos : pos + n])
        pos += n
    return chunks


b0s = st.sampled_from([0x81, 0x82, 0x81, 0x82, 0x01, 0x02, 0x00, 0x80, 0x88, 0x89, 0x8A, 0xC1])
payloads = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(str.encode),
    st.sampled_from([b"\xff", "é".encode()[:1], b"ok\xc3", b"\xed\xa0\x80", b"\x03\xe8"]),
    st.integers(120, 70000).map(lambda n: bytes(i % 97 + 32 for i in range(n))),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    side=st.sampled_from(SIDES),
    frames=st.lists(st.tuples(b0s, st.booleans(), payloads), min_size=1, max_size=10),
    seed=st.integers(0, 2**32),
    max_size=st.sampled_from([None, 0, 16, 125, 65536, 2**20]),
)
def test_random_frames_and_chunking(
    side: Side, frames: list[tuple[int, bool, bytes]], seed: int, max_size: int | None
) -> None:
    chunks = random_stream(side, frames, seed, (1, 2, 7, 64, 1000, 70000, 200000))
    assert_twins(side, max_size, chunks)


@settings(max_examples=200, deadline=None)
@given(side=st.sampled_from(SIDES), chunks=st.lists(st.binary(max_size=60), max_size=8))
def test_random_bytes(side: Side, chunks: list[bytes]) -> None:
    assert_twins(side, 2**20, chunks)


@pytest.mark.parametrize("side", SIDES)
def test_a_batch_of_messages_then_invalid_utf8(side: Side) -> None:
    masked = side is Side.SERVER
    data = (frame(0x81, b"one", masked) + frame(0x82, b"two", masked)
            + frame(0x81, b"bad \xff", masked) + frame(0x81, b"never", masked))
    result = assert_twins(side, None, [data])
    assert result["messages"] == ["one", b"two"]
    assert result["exc"][1] == 1007


@pytest.mark.parametrize("side", SIDES)
def test_max_size_boundary(side: Side) -> None:
    masked = side is Side.SERVER
    data = frame(0x82, b"x" * 126, masked) + frame(0x82, b"y" * 127, masked)
    result = assert_twins(side, 126, [data])
    assert result["messages"] == [b"x" * 126]
    assert result["exc"][1] == 1009


@pytest.mark.parametrize("side", SIDES)
def test_a_64_bit_length_beyond_any_buffer(side: Side) -> None:
    masked = side is Side.SERVER
    head = bytes([0x82, 0xFF if masked else 0x7F]) + struct.pack("!Q", 2**63 + 5)
    data = frame(0x82, b"ok", masked) + head + (MASK if masked else b"")
    result = assert_twins(side, None, [data])
    assert result["messages"] == [b"ok"]


def test_parse_simple_takes_whole_simple_frames_only() -> None:
    got: list[Any] = []
    data = (frame(0x82, b"a" * 300, True) + frame(0x81, "é".encode() * 300, True)
            + frame(0x89, b"ping", True) + frame(0x82, b"after", True))
    end_of_second = len(frame(0x82, b"a" * 300, True) + frame(0x81, "é".encode() * 300, True))
    assert speedups.parse_simple(data, 0, True, -1, got.append) == end_of_second
    assert got == [b"a" * 300, "é" * 300]
    # Unmasked frames when masked ones are expected: nothing taken.
    assert speedups.parse_simple(frame(0x82, b"x", False), 0, True, -1, got.append) == 0
    # An incomplete frame: nothing taken.
    assert speedups.parse_simple(frame(0x82, b"xyz", True)[:-1], 0, True, -1, got.append) == 0
    assert len(got) == 2


def test_parse_simple_reads_buffers_up_to_end() -> None:
    data = frame(0x82, b"a" * 300, True) + frame(0x81, b"text", True) + frame(0x82, b"z", True)
    first_two = len(frame(0x82, b"a" * 300, True) + frame(0x81, b"text", True))
    buffer = bytearray(data + b"\x00" * 100)  # a reused read buffer: bytes after the read
    for source in (buffer, memoryview(buffer), bytes(buffer)):
        got: list[Any] = []
        assert speedups.parse_simple(source, 0, True, -1, got.append, len(data)) == len(data)
        assert got == [b"a" * 300, "text", b"z"]
        got.clear()
        # ``end`` cuts the last frame short: it is left to the caller.
        assert speedups.parse_simple(source, 0, True, -1, got.append, len(data) - 1) == first_two
        assert got == [b"a" * 300, "text"]
    # The messages are copies: reading into the buffer again changes none of them.
    got = []
    speedups.parse_simple(buffer, 0, True, -1, got.append, len(data))
    buffer[:] = bytes(len(buffer))
    assert got == [b"a" * 300, "text", b"z"]


def test_parse_simple_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError):
        speedups.parse_simple("\x82\x00", 0, False, -1, print)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        speedups.parse_simple(b"\x82\x00", 3, False, -1, print)
    with pytest.raises(ValueError, match="end out of range"):
        speedups.parse_simple(b"\x82\x00", 0, False, -1, print, 3)
    with pytest.raises(ValueError, match="end out of range"):
        speedups.parse_simple(memoryview(b"\x82\x00"), 0, False, -1, print, -1)
    with pytest.raises(ValueError, match="pos out of range"):
        speedups.parse_simple(bytearray(b"\x82\x00"), 2, False, -1, print, 1)
    with pytest.raises(TypeError):
        speedups.parse_simple(b"\x82\x00", 0, False)  # type: ignore[call-arg]

    def boom(message: object) -> None:
        raise RuntimeError("append failed")

    with pytest.raises(RuntimeError, match="append failed"):
        speedups.parse_simple(b"\x82\x00", 0, False, -1, boom)


def buffered_outcome(
    side: Side, max_size: int | None, chunks: list[bytes], fast: Any
) -> dict[str, Any]:
    """What a Protocol fed through ``receive_buffer`` decides: each chunk is read into one
    reused buffer (as the asyncio driver does), which is scribbled over after each call."""
    with implementation(fast):
        proto = Protocol(side, max_size=max_size)
        buffer = memoryview(bytearray(max((len(c) for c in chunks), default=0) + 16))
        for chunk in chunks:
            buffer[: len(chunk)] = chunk
            proto.receive_buffer(buffer, len(chunk))
            buffer[:] = b"\xaa" * len(buffer)
        return decisions(proto)


def decisions(proto: Protocol) -> dict[str, Any]:
    """What a Protocol made of its input: messages, events, error, close, state."""
    return {
        "messages": list(proto.messages),
        "events": [repr(event) for event in proto.events],
        "exc": None if proto.exc is None else (type(proto.exc), proto.exc.code),
        "close_rcvd": proto.close_rcvd,
        "state": proto.state,
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    side=st.sampled_from(SIDES),
    frames=st.lists(st.tuples(b0s, st.booleans(), payloads), min_size=1, max_size=10),
    seed=st.integers(0, 2**32),
    max_size=st.sampled_from([None, 16, 65536]),
)
def test_receive_buffer_decides_as_receive_data(
    side: Side, frames: list[tuple[int, bool, bytes]], seed: int, max_size: int | None
) -> None:
    chunks = random_stream(side, frames, seed, (1, 3, 64, 1000, 70000))
    with implementation(None):
        reference = Protocol(side, max_size=max_size)
        for chunk in chunks:
            reference.receive_data(chunk)
    expected = decisions(reference)
    assert buffered_outcome(side, max_size, chunks, speedups.parse_simple) == expected
    assert buffered_outcome(side, max_size, chunks, None) == expected
