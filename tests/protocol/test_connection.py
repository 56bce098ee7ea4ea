"""Tests of :mod:`tether.protocol.connection`, grouped by section of RFC 6455.

Every scenario runs from both sides (the ``side`` fixture): ``side`` is the side of
the :class:`Protocol` under test, and the frames it receives are built as its peer
would send them (masked when the peer is a client, with the fixed mask of RFC 6455 5.7).
"""

from __future__ import annotations

import itertools
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.exceptions import InvalidState, PayloadTooBig, ProtocolError
from tether.protocol.connection import Ping, Pong, Protocol, Side, State
from tether.protocol.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    Frame,
    build_header,
    parse_frame,
)

MASK = b"\x37\xfa\x21\x3d"
SIDES = [Side.SERVER, Side.CLIENT]
SIDE_IDS = ["server", "client"]
REPLY_CODES = frozenset((1002, 1007, 1009))


@pytest.fixture(params=SIDES, ids=SIDE_IDS)
def side(request: pytest.FixtureRequest) -> Side:
    value: Side = request.param
    return value


def peer_mask(side: Side) -> bytes | None:
    """The mask on frames that ``side`` receives: a server receives masked frames."""
    return MASK if side is Side.SERVER else None


def incoming(
    side: Side,
    opcode: int,
    data: bytes = b"",
    *,
    fin: bool = True,
    rsv1: bool = False,
    rsv2: bool = False,
    rsv3: bool = False,
) -> bytes:
    """A frame as the peer of ``side`` sends it."""
    return Frame(opcode, data, fin, rsv1, rsv2, rsv3).serialize(peer_mask(side))


def incoming_header(side: Side, opcode: int, length: int, *, fin: bool = True) -> bytes:
    """Only the header (with the masking key, if any) of a frame the peer sends."""
    return build_header(opcode, length, fin, False, peer_mask(side))


def parse_stream(side: Side, data: bytes) -> list[Frame]:
    """Parse the bytes ``side`` sent; check each frame is masked iff ``side`` is a client."""
    frames: list[Frame] = []
    while data:
        parsed = parse_frame(data)
        assert parsed is not None, f"incomplete frame in {data!r}"
        frame, masked, consumed = parsed
        assert masked is (side is Side.CLIENT)
        frames.append(frame)
        data = data[consumed:]
    return frames


def sent(proto: Protocol) -> list[Frame]:
    """The frames ``proto`` queued for sending (pongs, close frames)."""
    return parse_stream(proto.side, b"".join(proto.data_to_send()))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def assert_failed(proto: Protocol, code: int) -> None:
    """``proto`` failed the connection with ``code`` and queued a matching close frame."""
    assert proto.exc is not None, "the connection was not failed"
    assert isinstance(proto.exc, ProtocolError)
    assert proto.exc.code == code, str(proto.exc)
    if proto.pending_close is not None:
        # Held back until the messages received before the bad frame are read.
        assert proto.messages, "a failure is held back only behind unread messages"
        assert proto.state is State.OPEN
        assert proto.data_to_send() == [] or True
        proto.fail_now()
    assert proto.state is State.CLOSING
    assert proto.close_sent is not None
    assert proto.close_sent.code == code
    frames = sent(proto)
    assert frames, "no close frame was queued"
    assert frames[-1].opcode == OP_CLOSE
    assert Close.parse(frames[-1].data).code == code
    assert proto.close_expected() is True


def feed(proto: Protocol, data: bytes, sizes: list[int]) -> None:
    """Feed ``data`` in chunks whose sizes cycle through ``sizes``."""
    pos = 0
    i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        proto.receive_data(data[pos : pos + n])
        pos += n
        i += 1


# ------------------------------------------------------------------ state basics


class TestStateBasics:
    def test_starts_open(self, side: Side) -> None:
        proto = Protocol(side)
        assert proto.state is State.OPEN
        assert proto.side is side
        assert proto.exc is None
        assert proto.close_rcvd is None
        assert proto.close_sent is None
        assert proto.data_to_send() == []
        assert proto.close_expected() is False

    def test_state_names_are_rfc_names(self) -> None:
        assert [s.name for s in State] == ["CONNECTING", "OPEN", "CLOSING", "CLOSED"]

    def test_data_to_send_returns_then_forgets(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_PING, b"a"))
        assert len(proto.data_to_send()) == 1
        assert proto.data_to_send() == []

    def test_receive_empty_bytes_is_harmless(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(b"")
        assert proto.exc is None
        assert list(proto.messages) == []

    @pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
    def test_receive_bytes_like(self, side: Side, kind: type) -> None:
        proto = Protocol(side)
        proto.receive_data(kind(incoming(side, OP_TEXT, b"hi")))
        assert list(proto.messages) == ["hi"]

    def test_receive_eof(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_eof()
        assert proto.eof_rcvd is True
        assert proto.state is State.CLOSED
        proto.receive_data(incoming(side, OP_TEXT, b"late"))
        assert list(proto.messages) == []
        with pytest.raises(InvalidState):
            proto.send_message("x")

    def test_tracer_sees_frames_in_and_out(self, side: Side) -> None:
        seen: list[tuple[str, int, bool, int, bytes]] = []

        def tracer(direction: str, opcode: int, fin: bool, length: int, head: bytes) -> None:
            seen.append((direction, opcode, fin, length, head))

        proto = Protocol(side, tracer=tracer)
        proto.receive_data(incoming(side, OP_TEXT, b"hey"))
        proto.receive_data(incoming(side, OP_PING, b"p"))
        proto.send_message(b"out")
        assert seen == [
            ("<", OP_TEXT, True, 3, b"hey"),
            ("<", OP_PING, True, 1, b"p"),
            (">", OP_PONG, True, 1, b"p"),
            (">", OP_BINARY, True, 3, b"out"),
        ]


# ---------------------------------------------------------- RFC 6455 5.1, 5.3


class TestSection5_1Masking:
    def test_server_fails_on_unmasked_frame(self) -> None:
        proto = Protocol(Side.SERVER)
        proto.receive_data(Frame(OP_TEXT, b"hello").serialize())
        assert list(proto.messages) == []
        assert_failed(proto, 1002)

    def test_client_fails_on_masked_frame(self) -> None:
        proto = Protocol(Side.CLIENT)
        proto.receive_data(Frame(OP_TEXT, b"hello").serialize(MASK))
        assert list(proto.messages) == []
        assert_failed(proto, 1002)

    @pytest.mark.parametrize("opcode", [OP_PING, OP_CLOSE, OP_CONT])
    def test_mask_direction_checked_on_every_opcode(self, side: Side, opcode: int) -> None:
        proto = Protocol(side)
        wrong = None if side is Side.SERVER else MASK
        proto.receive_data(Frame(opcode, b"").serialize(wrong))
        assert_failed(proto, 1002)

    def test_rfc_example_masked_hello(self) -> None:
        proto = Protocol(Side.SERVER)
        proto.receive_data(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58")
        assert list(proto.messages) == ["Hello"]
        assert proto.exc is None

    def test_rfc_example_unmasked_hello(self) -> None:
        proto = Protocol(Side.CLIENT)
        proto.receive_data(b"\x81\x05\x48\x65\x6c\x6c\x6f")
        assert list(proto.messages) == ["Hello"]

    def test_outgoing_frames_masked_only_by_client(self, side: Side) -> None:
        proto = Protocol(side)
        frames = parse_stream(side, proto.send_message("hello") + proto.send_ping(b"p"))
        assert frames == [Frame(OP_TEXT, b"hello"), Frame(OP_PING, b"p")]

    def test_client_uses_a_fresh_mask_per_frame(self) -> None:
        proto = Protocol(Side.CLIENT)
        keys = {proto.send_message(b"same")[2:6] for _ in range(8)}
        assert len(keys) > 1

    @pytest.mark.parametrize("sizes", [[1], [2], [3], [5], [4, 1, 7], [6]])
    def test_payload_split_across_chunks_unmasks_correctly(
        self, side: Side, sizes: list[int]
    ) -> None:
        payload = bytes(range(200)) + "žluťoučký kůň".encode()
        proto = Protocol(side)
        feed(proto, incoming(side, OP_BINARY, payload) + incoming(side, OP_TEXT, b"end"), sizes)
        assert list(proto.messages) == [payload, "end"]
        assert proto.exc is None


# --------------------------------------------------------------- RFC 6455 5.2


class TestSection5_2BaseFraming:
    @pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 70001])
    def test_lengths(self, side: Side, length: int) -> None:
        payload = bytes(i % 256 for i in range(length))
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_BINARY, payload))
        assert list(proto.messages) == [payload]

    def test_several_frames_in_one_chunk(self, side: Side) -> None:
        proto = Protocol(side)
        data = b"".join(incoming(side, OP_TEXT, str(i).encode()) for i in range(50))
        proto.receive_data(data)
        assert list(proto.messages) == [str(i) for i in range(50)]

    @pytest.mark.parametrize(
        "bits",
        [{"rsv1": True}, {"rsv2": True}, {"rsv3": True}, {"rsv1": True, "rsv3": True}],
        ids=["rsv1", "rsv2", "rsv3", "rsv1+rsv3"],
    )
    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE])
    def test_rsv_bits_without_extension(
        self, side: Side, opcode: int, bits: dict[str, bool]
    ) -> None:
        proto = Protocol(side)
        payload = b"\x03\xe8" if opcode == OP_CLOSE else b"x"
        proto.receive_data(incoming(side, opcode, payload, **bits))
        assert list(proto.messages) == []
        assert proto.events == []
        assert_failed(proto, 1002)

    def test_rsv_on_continuation_without_extension(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(
            incoming(side, OP_TEXT, b"a", fin=False) + incoming(side, OP_CONT, b"b", rsv2=True)
        )
        assert list(proto.messages) == []
        assert_failed(proto, 1002)

    @pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
    def test_reserved_opcodes(self, side: Side, opcode: int) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, opcode, b"x") + incoming(side, OP_TEXT, b"after"))
        assert list(proto.messages) == []
        assert proto.events == []
        assert_failed(proto, 1002)

    @pytest.mark.parametrize("opcode", [3, 0xB])
    def test_reserved_opcode_inside_fragmented_message(self, side: Side, opcode: int) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_TEXT, b"a", fin=False) + incoming(side, opcode))
        assert_failed(proto, 1002)

    def test_nothing_is_parsed_after_failure(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, 3))
        assert_failed(proto, 1002)
        proto.receive_data(incoming(side, OP_TEXT, b"ignored") + incoming(side, OP_PING))
        assert list(proto.messages) == []
        assert proto.events == []
        assert proto.data_to_send() == []
        assert proto.exc is not None
        assert proto.exc.code == 1002


# --------------------------------------------------------------- RFC 6455 5.4


class TestSection5_4Fragmentation:
    def test_text_in_three_fragments(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(
            incoming(side, OP_TEXT, b"Hel", fin=False)
            + incoming(side, OP_CONT, b"lo, ", fin=False)
            + incoming(side, OP_CONT, b"world")
        )
        assert list(proto.messages) == ["Hello, world"]

    def test_binary_fragments_one_by_one(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_BINARY, b"\x00\x01", fin=False))
        assert list(proto.messages) == []
        proto.receive_data(incoming(side, OP_CONT, b"", fin=False))
        assert list(proto.messages) == []
        proto.receive_data(incoming(side, OP_CONT, b"\x02"))
        assert list(proto.messages) == [b"\x00\x01\x02"]

    def test_empty_fragments(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_TEXT, fin=False) + incoming(side, OP_CONT))
        proto.receive_data(incoming(side, OP_BINARY, fin=False) + incoming(side, OP_CONT))
        assert list(proto.messages) == ["", b""]

    def test_multibyte_character_split_across_fragments(self, side: Side) -> None:
        euro = "€".encode()
        proto = Protocol(side)
        proto.receive_data(
            incoming(side, OP_TEXT, b"1" + euro[:1], fin=False)
            + incoming(side, OP_CONT, euro[1:2], fin=False)
            + incoming(side, OP_CONT, euro[2:] + b"2")
        )
        assert list(proto.messages) == ["1€2"]
        assert proto.exc is None

    def test_continuation_without_start(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_CONT, b"orphan"))
        assert list(proto.messages) == []
        assert_failed(proto, 1002)

    def test_continuation_after_a_finished_message(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_TEXT, b"done") + incoming(side, OP_CONT, b"more"))
        assert list(proto.messages) == ["done"]
        assert_failed(proto, 1002)

    @pytest.mark.parametrize("first", [OP_TEXT, OP_BINARY])
    @pytest.mark.parametrize("second", [OP_TEXT, OP_BINARY])
    def test_new_data_frame_inside_fragmented_message(
        self, side: Side, first: int, second: int
    ) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, first, b"a", fin=False) + incoming(side, second, b"b"))
        assert list(proto.messages) == []
        assert_failed(proto, 1002)

    def test_new_data_frame_header_alone_fails(self, side: Side) -> None:
        # Decided from the header: the payload of the offending frame never arrives.
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_TEXT, b"a", fin=False))
        proto.receive_data(incoming_header(side, OP_BINARY, 1000))
        assert_failed(proto, 1002)

    def test_control_frames_interleaved(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(
            incoming(side, OP_TEXT, b"frag", fin=False)
            + incoming(side, OP_PING, b"1")
            + incoming(side, OP_CONT, b"men", fin=False)
            + incoming(side, OP_PONG, b"2")
            + incoming(side, OP_PING, b"3")
            + incoming(side, OP_CONT, b"ted")
        )
        assert list(proto.messages) == ["fragmented"]
        assert [(type(e), e.data) for e in proto.events if not isinstance(e, Close)] == [
            (Ping, b"1"),
            (Pong, b"2"),
            (Ping, b"3"),
        ]
        assert sent(proto) == [Frame(OP_PONG, b"1"), Frame(OP_PONG, b"3")]
        assert proto.exc is None

    def test_control_frames_interleaved_byte_by_byte(self, side: Side) -> None:
        proto = Protocol(side)
        data = (
            incoming(side, OP_BINARY, bytes(300), fin=False)
            + incoming(side, OP_PING, b"ping")
            + incoming(side, OP_CONT, b"\x01" * 300)
        )
        feed(proto, data, [1])
        assert list(proto.messages) == [bytes(300) + b"\x01" * 300]
        assert sent(proto) == [Frame(OP_PONG, b"ping")]

    def test_close_inside_fragmented_message(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(
            incoming(side, OP_TEXT, b"unfinished", fin=False)
            + incoming(side, OP_CLOSE, close_payload(1001, b"bye"))
        )
        assert list(proto.messages) == []
        assert proto.close_rcvd == Close(1001, "bye")
        assert proto.exc is None
        assert sent(proto) == [Frame(OP_CLOSE, close_payload(1001))]


# --------------------------------------------------------------- RFC 6455 5.5


class TestSection5_5ControlFrames:
    @pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
    def test_control_frame_over_125_bytes(self, side: Side, opcode: int) -> None:
        proto = Protocol(side)
        payload = close_payload(1000, b"x" * 124) if opcode == OP_CLOSE else b"x" * 126
        assert len(payload) == 126
        proto.receive_data(incoming(side, opcode, payload))
        assert proto.events == []
        assert_failed(proto, 1002)

    def test_control_frame_length_checked_from_header(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming_header(side, OP_PING, 65536))
        assert_failed(proto, 1002)

    @pytest.mark.parametrize("opcode", [OP_PING, OP_PONG])
    def test_control_frame_of_125_bytes_is_fine(self, side: Side, opcode: int) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, opcode, b"y" * 125))
        assert proto.exc is None
        [event] = proto.events
        assert isinstance(event, Ping if opcode == OP_PING else Pong)
        assert event.data == b"y" * 125

    @pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
    def test_fragmented_control_frame(self, side: Side, opcode: int) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, opcode, b"", fin=False))
        assert proto.events == []
        assert_failed(proto, 1002)


class TestSection5_5_2And5_5_3PingPong:
    @pytest.mark.parametrize("payload", [b"", b"abc", bytes(range(125))])
    def test_ping_gets_automatic_pong(self, side: Side, payload: bytes) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_PING, payload))
        assert len(proto.events) == 1
        event = proto.events[0]
        assert isinstance(event, Ping)
        assert event.data == payload
        assert sent(proto) == [Frame(OP_PONG, payload)]

    def test_pongs_in_ping_order(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(b"".join(incoming(side, OP_PING, bytes([i])) for i in range(5)))
        assert sent(proto) == [Frame(OP_PONG, bytes([i])) for i in range(5)]

    def test_ping_after_sending_close_still_gets_a_pong(self, side: Side) -> None:
        # RFC 6455 5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a Pong
        # frame in response, unless it already received a Close frame." Having sent one
        # is no exemption: 5.5.1 forbids only data frames after sending a Close.
        proto = Protocol(side)
        proto.send_close()
        proto.receive_data(incoming(side, OP_PING, b"still there?"))
        assert isinstance(proto.events[0], Ping)
        assert sent(proto) == [Frame(OP_PONG, b"still there?")]

    def test_pong_is_an_event_and_gets_no_answer(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_PONG, b"unsolicited"))
        assert len(proto.events) == 1
        assert isinstance(proto.events[0], Pong)
        assert proto.events[0].data == b"unsolicited"
        assert proto.data_to_send() == []

    def test_ping_split_across_chunks(self, side: Side) -> None:
        proto = Protocol(side)
        feed(proto, incoming(side, OP_PING, b"split ping"), [1])
        assert sent(proto) == [Frame(OP_PONG, b"split ping")]

    def test_send_ping_and_pong(self, side: Side) -> None:
        proto = Protocol(side)
        frames = parse_stream(side, proto.send_ping(b"x" * 125) + proto.send_pong())
        assert frames == [Frame(OP_PING, b"x" * 125), Frame(OP_PONG, b"")]

    @pytest.mark.parametrize("method", ["send_ping", "send_pong"])
    def test_send_control_over_125_bytes(self, side: Side, method: str) -> None:
        proto = Protocol(side)
        with pytest.raises(ValueError, match="125"):
            getattr(proto, method)(b"x" * 126)
        assert proto.state is State.OPEN


# ------------------------------------------------ RFC 6455 5.5.1, 7.1, 7.4


VALID_CLOSE_CODES = [
    1000,
    1001,
    1002,
    1003,
    1007,
    1008,
    1009,
    1010,
    1011,
    1012,
    1013,
    1014,
    3000,
    4999,
]
INVALID_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000]


class TestSection5_5_1And7ClosingHandshake:
    @pytest.mark.parametrize("code", VALID_CLOSE_CODES)
    def test_close_code_is_echoed(self, side: Side, code: int) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_CLOSE, close_payload(code, b"reason")))
        assert proto.close_rcvd == Close(code, "reason")
        assert proto.events == [Close(code, "reason")]
        assert proto.exc is None
        assert proto.state is State.CLOSING
        assert proto.close_sent is not None
        assert proto.close_sent.code == code
        assert proto.close_rcvd_then_sent is True
        frames = sent(proto)
        assert len(frames) == 1
        assert frames[0].opcode == OP_CLOSE
        assert Close.parse(frames[0].data).code == code

    def test_empty_close_is_1005_and_echoed_empty(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_CLOSE, b""))
        assert proto.close_rcvd == Close(1005, "")
        assert proto.exc is None
        assert sent(proto) == [Frame(OP_CLOSE, b"")]

    def test_one_byte_close_payload(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_CLOSE, b"\x03"))
        assert proto.close_rcvd is None
        assert_failed(proto, 1002)

    @pytest.mark.parametrize("code", INVALID_CLOSE_CODES)
    def test_invalid_close_code(self, side: Side, code: int) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_CLOSE, close_payload(code)))
        assert proto.close_rcvd is None
        assert_failed(proto, 1002)

    @pytest.mark.parametrize("reason", [b"\xff", b"ok\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"])
    def test_invalid_utf8_close_reason(self, side: Side, reason: bytes) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_CLOSE, close_payload(1000, reason)))
        assert proto.close_rcvd is None
        assert_failed(proto, 1007)

    def test_nothing_is_parsed_after_close(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(
            incoming(side, OP_CLOSE, close_payload(1000)) + incoming(side, OP_TEXT, b"late")
        )
        proto.receive_data(incoming(side, OP_PING, b"late"))
        assert list(proto.messages) == []
        assert proto.events == [Close(1000, "")]
        assert sent(proto) == [Frame(OP_CLOSE, close_payload(1000))]

    def test_send_close(self, side: Side) -> None:
        proto = Protocol(side)
        data = proto.send_close(1001, "going away")
        assert parse_stream(side, data) == [Frame(OP_CLOSE, close_payload(1001, b"going away"))]
        assert proto.state is State.CLOSING
        assert proto.close_sent == Close(1001, "going away")
        assert proto.close_rcvd_then_sent is False
        assert proto.data_to_send() == []

    def test_send_close_1005_sends_empty_payload(self, side: Side) -> None:
        proto = Protocol(side)
        assert parse_stream(side, proto.send_close(1005)) == [Frame(OP_CLOSE, b"")]

    def test_send_close_twice(self, side: Side) -> None:
        proto = Protocol(side)
        assert proto.send_close() != b""
        assert proto.send_close(1001) == b""
        assert proto.close_sent == Close(1000, "")

    def test_messages_still_received_after_sending_close(self, side: Side) -> None:
        proto = Protocol(side)
        proto.send_close(1000, "bye")
        proto.receive_data(
            incoming(side, OP_TEXT, b"in flight") + incoming(side, OP_CLOSE, close_payload(1000))
        )
        assert list(proto.messages) == ["in flight"]
        assert proto.close_rcvd == Close(1000, "")
        assert proto.close_sent == Close(1000, "bye")
        assert proto.close_rcvd_then_sent is False
        # The close frame was already sent: no second one.
        assert proto.data_to_send() == []

    def test_send_close_after_receiving_close_sends_nothing_more(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_CLOSE, close_payload(1000)))
        assert proto.send_close(1000) == b""
        assert sent(proto) == [Frame(OP_CLOSE, close_payload(1000))]

    @pytest.mark.parametrize(
        ("code", "reason"),
        [
            (1005, "with a reason"),
            (1006, ""),
            (1015, ""),
            (1004, ""),
            (999, ""),
            (5000, ""),
            (1000, "x" * 124),
            (1000, "é" * 62),
        ],
    )
    def test_send_close_validation(self, side: Side, code: int, reason: str) -> None:
        proto = Protocol(side)
        with pytest.raises(ValueError):
            proto.send_close(code, reason)
        assert proto.state is State.OPEN
        assert proto.close_sent is None
        assert proto.data_to_send() == []

    def test_send_close_reason_of_123_bytes(self, side: Side) -> None:
        proto = Protocol(side)
        frames = parse_stream(side, proto.send_close(1000, "x" * 123))
        assert frames == [Frame(OP_CLOSE, close_payload(1000, b"x" * 123))]

    @pytest.mark.parametrize("method", ["send_message", "send_fragment", "send_ping", "send_pong"])
    @pytest.mark.parametrize("how", ["sent", "received", "failed", "eof"])
    def test_sending_after_close_raises_invalid_state(
        self, side: Side, method: str, how: str
    ) -> None:
        proto = Protocol(side)
        if how == "sent":
            proto.send_close()
        elif how == "received":
            proto.receive_data(incoming(side, OP_CLOSE, close_payload(1000)))
        elif how == "failed":
            proto.receive_data(incoming(side, OP_CONT, b"x"))
        else:
            proto.receive_eof()
        args: tuple[object, ...] = (b"x", True) if method == "send_fragment" else (b"x",)
        with pytest.raises(InvalidState):
            getattr(proto, method)(*args)


class TestSection7_1CloseExpected:
    """close_expected(): the server closes TCP first; either side after failing."""

    def test_not_before_closing(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_TEXT, b"x") + incoming(side, OP_PING))
        assert proto.close_expected() is False

    def test_not_after_only_sending_close(self, side: Side) -> None:
        proto = Protocol(side)
        proto.send_close()
        assert proto.close_expected() is False

    def test_after_receiving_close(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_CLOSE, close_payload(1000)))
        assert proto.close_expected() is (side is Side.SERVER)

    def test_after_full_handshake_started_locally(self, side: Side) -> None:
        proto = Protocol(side)
        proto.send_close()
        proto.receive_data(incoming(side, OP_CLOSE, close_payload(1000)))
        assert proto.close_expected() is (side is Side.SERVER)

    def test_after_failing(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_TEXT, b"\xff"))
        assert proto.close_expected() is True


# ------------------------------------------------------ RFC 6455 5.6, 8.1


INVALID_UTF8 = [
    b"\xff",
    b"\xc0\xaf",  # overlong "/"
    b"\xe0\x80\xaf",  # overlong
    b"\xed\xa0\x80",  # UTF-16 surrogate
    b"\xf4\x90\x80\x80",  # above U+10FFFF
    b"\xf8\x88\x80\x80\x80",  # 5-byte form
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",  # Autobahn 6.4.x
]


class TestSection8_1Utf8:
    @pytest.mark.parametrize("payload", INVALID_UTF8)
    def test_invalid_text_message(self, side: Side, payload: bytes) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_TEXT, payload))
        assert list(proto.messages) == []
        assert_failed(proto, 1007)

    @pytest.mark.parametrize("payload", [b"\xe2\x82", b"ok\xf0\x9f\x98"])
    def test_truncated_sequence_at_end_of_message(self, side: Side, payload: bytes) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_TEXT, payload))
        assert_failed(proto, 1007)

    def test_truncated_sequence_at_end_of_fragmented_message(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_TEXT, b"ok", fin=False))
        assert proto.exc is None
        proto.receive_data(incoming(side, OP_CONT, b"\xe2\x82"))
        assert list(proto.messages) == []
        assert_failed(proto, 1007)

    def test_binary_is_not_checked(self, side: Side) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_BINARY, b"\xff\xfe"))
        assert list(proto.messages) == [b"\xff\xfe"]

    @pytest.mark.parametrize("payload", INVALID_UTF8[:6])
    def test_fail_fast_in_first_fragment(self, side: Side, payload: bytes) -> None:
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_TEXT, b"ok" + payload, fin=False))
        # Failed before any continuation frame arrived.
        assert_failed(proto, 1007)

    def test_fail_fast_autobahn_6_4_1(self, side: Side) -> None:
        # "κόσμε" + \xf4 | \x90\x80\x80 | "edited": invalid as soon as \x90 arrives.
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_TEXT, "κόσμε".encode() + b"\xf4", fin=False))
        assert proto.exc is None
        proto.receive_data(incoming(side, OP_CONT, b"\x90\x80\x80", fin=False))
        assert_failed(proto, 1007)

    @pytest.mark.parametrize("payload", [b"\xff", b"\xed\xa0\x80", b"\xc0\xaf"])
    def test_fail_fast_in_first_partial_chunk_of_a_frame(self, side: Side, payload: bytes) -> None:
        body = b"fine " + payload + b"x" * 10000
        wire = incoming(side, OP_TEXT, body)
        header_len = len(wire) - len(body)
        proto = Protocol(side)
        # Only the header and the first few bytes of a 10 kB frame: fail now.
        proto.receive_data(wire[: header_len + 5 + len(payload)])
        assert_failed(proto, 1007)

    def test_fail_fast_in_partial_chunk_of_a_continuation(self, side: Side) -> None:
        body = b"\xff" + b"x" * 5000
        proto = Protocol(side)
        proto.receive_data(incoming(side, OP_TEXT, b"ok", fin=False))
        wire = incoming(side, OP_CONT, body)
        proto.receive_data(wire[: len(wire) - len(body) + 1])
        assert_failed(proto, 1007)

    def test_valid_partial_chunks_do_not_fail_early(self, side: Side) -> None:
        body = "ü€😀".encode() * 1000
        proto = Protocol(side)
        # Chunks of 7 split multi-byte characters everywhere.
        feed(proto, incoming(side, OP_TEXT, body), [7])
        assert list(proto.messages) == ["ü€😀" * 1000]
        assert proto.exc is None


# ---------------------------------------------------------------- max_size (1009)


class TestSection10_4MaxSize:
    @pytest.mark.parametrize("length", [1025, 65536, 2**20, 2**40])
    def test_decided_from_the_header(self, side: Side, length: int) -> None:
        proto = Protocol(side, max_size=1024)
        proto.receive_data(incoming_header(side, OP_BINARY, length))
        assert isinstance(proto.exc, PayloadTooBig)
        assert "1,024" in str(proto.exc)
        assert_failed(proto, 1009)

    def test_text_counted_in_bytes(self, side: Side) -> None:
        proto = Protocol(side, max_size=10)
        proto.receive_data(incoming(side, OP_TEXT, "€€€€".encode()))  # 4 characters, 12 bytes
        assert list(proto.messages) == []
        assert_failed(proto, 1009)

    def test_exactly_max_size_is_accepted(self, side: Side) -> None:
        proto = Protocol(side, max_size=1000)
        proto.receive_data(incoming(side, OP_BINARY, bytes(1000)))
        proto.receive_data(
            incoming(side, OP_TEXT, b"a" * 600, fin=False) + incoming(side, OP_CONT, b"b" * 400)
        )
        assert list(proto.messages) == [bytes(1000), "a" * 600 + "b" * 400]
        assert proto.exc is None

    def test_fragments_add_up(self, side: Side) -> None:
        proto = Protocol(side, max_size=1000)
        proto.receive_data(incoming(side, OP_BINARY, bytes(600), fin=False))
        assert proto.exc is None
        # The header of the second fragment is enough to know 600 + 401 > 1000.
        proto.receive_data(incoming_header(side, OP_CONT, 401))
        assert_failed(proto, 1009)

    def test_fragments_add_up_after_partial_first_frame(self, side: Side) -> None:
        proto = Protocol(side, max_size=1000)
        feed(proto, incoming(side, OP_BINARY, bytes(600), fin=False), [50])
        assert proto.exc is None
        proto.receive_data(incoming_header(side, OP_CONT, 401))
        assert_failed(proto, 1009)

    def test_each_message_has_its_own_budget(self, side: Side) -> None:
        proto = Protocol(side, max_size=100)
        for _ in range(5):
            proto.receive_data(
                incoming(side, OP_BINARY, bytes(60), fin=False) + incoming(side, OP_CONT, bytes(40))
            )
        assert list(proto.messages) == [bytes(100)] * 5
        assert proto.exc is None

    def test_no_limit(self, side: Side) -> None:
        proto = Protocol(side, max_size=None)
        payload = bytes(3 * 2**20)
        proto.receive_data(incoming(side, OP_BINARY, payload))
        assert list(proto.messages) == [payload]

    def test_control_frames_do_not_count(self, side: Side) -> None:
        proto = Protocol(side, max_size=10)
        proto.receive_data(
            incoming(side, OP_TEXT, b"12345", fin=False)
            + incoming(side, OP_PING, b"p" * 100)
            + incoming(side, OP_CONT, b"67890")
        )
        assert list(proto.messages) == ["1234567890"]
        assert proto.exc is None


# --------------------------------------------------------------------- sending


class TestSending:
    @pytest.mark.parametrize(
        ("message", "frame"),
        [
            ("café", Frame(OP_TEXT, "café".encode())),
            ("", Frame(OP_TEXT, b"")),
            (b"\x00\xff", Frame(OP_BINARY, b"\x00\xff")),
            (bytearray(b"ba"), Frame(OP_BINARY, b"ba")),
            (memoryview(b"mv"), Frame(OP_BINARY, b"mv")),
            (b"x" * 70000, Frame(OP_BINARY, b"x" * 70000)),
        ],
        ids=["text", "empty", "bytes", "bytearray", "memoryview", "64-bit"],
    )
    def test_send_message(
        self, side: Side, message: str | bytes | bytearray | memoryview, frame: Frame
    ) -> None:
        proto = Protocol(side)
        assert parse_stream(side, proto.send_message(message)) == [frame]

    @pytest.mark.parametrize("message", [1, None, ["a"], 1.5])
    def test_send_message_type_error(self, side: Side, message: object) -> None:
        proto = Protocol(side)
        with pytest.raises(TypeError):
            proto.send_message(message)  # type: ignore[arg-type]

    def test_send_fragments(self, side: Side) -> None:
        proto = Protocol(side)
        data = (
            proto.send_fragment("a", False)
            + proto.send_fragment("b", False)
            + proto.send_fragment("c", True)
            + proto.send_fragment(b"d", True)
        )
        assert parse_stream(side, data) == [
            Frame(OP_TEXT, b"a", fin=False),
            Frame(OP_CONT, b"b", fin=False),
            Frame(OP_CONT, b"c"),
            Frame(OP_BINARY, b"d"),
        ]

    def test_fragments_must_keep_their_type(self, side: Side) -> None:
        proto = Protocol(side)
        proto.send_fragment(b"a", False)
        with pytest.raises(TypeError):
            proto.send_fragment("b", True)

    def test_no_message_while_a_fragmented_one_is_sent(self, side: Side) -> None:
        proto = Protocol(side)
        proto.send_fragment("a", False)
        with pytest.raises(InvalidState):
            proto.send_message("b")
        # Control frames may be interleaved, and the message can still be finished.
        frames = parse_stream(side, proto.send_ping(b"p") + proto.send_fragment("c", True))
        assert frames == [Frame(OP_PING, b"p"), Frame(OP_CONT, b"c")]
        assert parse_stream(side, proto.send_message("d")) == [Frame(OP_TEXT, b"d")]


# ------------------------------------------------ no-raise contract (fuzzing)


def check_contract(proto: Protocol) -> None:
    """What must hold after feeding any bytes: see the docstring of the module."""
    frames = sent(proto)
    if proto.exc is not None:
        assert isinstance(proto.exc, ProtocolError)
        assert proto.exc.code in REPLY_CODES
        if proto.pending_close is not None:
            assert proto.messages
            proto.fail_now()
            frames += sent(proto)
        assert proto.state is State.CLOSING
        assert proto.close_expected() is True
        assert frames
        assert frames[-1].opcode == OP_CLOSE
        assert Close.parse(frames[-1].data).code == proto.exc.code
        assert all(f.opcode == OP_PONG for f in frames[:-1])
    elif proto.close_rcvd is not None:
        assert proto.state is State.CLOSING
        assert frames
        assert frames[-1].opcode == OP_CLOSE
        assert Close.parse(frames[-1].data).code == proto.close_rcvd.code
    else:
        assert proto.state is State.OPEN
        assert all(f.opcode == OP_PONG for f in frames)
    # Once failed or closed, more input changes nothing and never raises.
    if proto.exc is not None or proto.close_rcvd is not None:
        n_messages, n_events = len(proto.messages), len(proto.events)
        proto.receive_data(b"\x81\x85" + MASK + b"hello" + b"\x00" * 20)
        assert (len(proto.messages), len(proto.events)) == (n_messages, n_events)
        assert proto.data_to_send() == []


def raw_frame(b0: int, masked: bool, payload: bytes) -> bytes:
    frame = Frame(
        b0 & 0x0F, payload, bool(b0 & 0x80), bool(b0 & 0x40), bool(b0 & 0x20), bool(b0 & 0x10)
    )
    return frame.serialize(MASK if masked else None)


likely_b0 = st.sampled_from([0x81, 0x82, 0x01, 0x02, 0x00, 0x80, 0x88, 0x89, 0x8A]) | st.integers(
    0, 255
)
payloads = st.binary(max_size=140) | st.sampled_from(
    [b"", b"\x03\xe8", b"\x03", b"\x03\xe8\xff", b"\xff", "é".encode()[:1], b"\x13\x88"]
)


class TestNeverRaises:
    @settings(max_examples=300, deadline=None)
    @given(
        side=st.sampled_from(SIDES),
        chunks=st.lists(st.binary(max_size=40), max_size=12),
        max_size=st.sampled_from([None, 0, 10, 2**20]),
    )
    def test_random_bytes(self, side: Side, chunks: list[bytes], max_size: int | None) -> None:
        proto = Protocol(side, max_size=max_size)
        for chunk in chunks:
            proto.receive_data(chunk)
        check_contract(proto)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        side=st.sampled_from(SIDES),
        frames=st.lists(st.tuples(likely_b0, st.integers(0, 9), payloads), min_size=1, max_size=8),
        seed=st.integers(0, 2**32),
        max_size=st.sampled_from([None, 50, 2**20]),
    )
    def test_random_frames(
        self,
        side: Side,
        frames: list[tuple[int, int, bytes]],
        seed: int,
        max_size: int | None,
    ) -> None:
        # Mostly correctly masked frames, so that the parser gets past the mask check.
        data = b"".join(
            raw_frame(b0, (side is Side.SERVER) != (wrong == 0), payload)
            for b0, wrong, payload in frames
        )
        rnd = random.Random(seed)
        proto = Protocol(side, max_size=max_size)
        pos = 0
        while pos < len(data):
            n = rnd.choice((1, 2, 3, 5, 11, 64, 1000))
            proto.receive_data(data[pos : pos + n])
            pos += n
        check_contract(proto)


# ------------------------------------------------------------ round trips


small_text = st.text(max_size=100)
small_binary = st.binary(max_size=100)
big_text = st.text(min_size=1, max_size=3).map(lambda s: s * (66000 // len(s)))
big_binary = st.integers(65536, 70000).map(lambda n: bytes(i % 253 for i in range(n)))
messages_st = st.lists(
    st.one_of(small_text, small_binary, small_text, small_binary, big_text, big_binary),
    max_size=6,
)


def feed_randomly(proto: Protocol, data: bytes, rnd: random.Random) -> None:
    pos = 0
    while pos < len(data):
        n = rnd.choice((1, 2, 3, 5, 17, 127, 1024, 65536))
        proto.receive_data(data[pos : pos + n])
        pos += n


class TestRoundTrip:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=st.data(), messages=messages_st)
    @pytest.mark.parametrize("sender_side", SIDES, ids=SIDE_IDS)
    def test_messages_survive_any_fragmentation_and_chunking(
        self, sender_side: Side, data: st.DataObject, messages: list[str | bytes]
    ) -> None:
        receiver_side = Side.SERVER if sender_side is Side.CLIENT else Side.CLIENT
        sender = Protocol(sender_side, max_size=None)
        receiver = Protocol(receiver_side, max_size=2**20)
        wire = bytearray()
        pings: list[bytes] = []
        for message in messages:
            cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=3)))
            if not cuts:
                wire += sender.send_message(message)
                continue
            bounds = [0, *cuts, len(message)]
            pieces = [message[a:b] for a, b in itertools.pairwise(bounds)]
            for i, piece in enumerate(pieces):
                wire += sender.send_fragment(piece, i == len(pieces) - 1)
                if data.draw(st.booleans()):
                    ping = data.draw(st.binary(max_size=125))
                    pings.append(ping)
                    wire += sender.send_ping(ping)
        wire += sender.send_close(1000, "done")
        rnd = data.draw(st.randoms(use_true_random=False))
        feed_randomly(receiver, bytes(wire), rnd)

        assert receiver.exc is None
        assert list(receiver.messages) == messages
        assert [e.data for e in receiver.events if isinstance(e, Ping)] == pings
        assert receiver.close_rcvd == Close(1000, "done")
        # The receiver's answers (pongs, then the echoed close) go back to the sender.
        sender.receive_data(b"".join(receiver.data_to_send()))
        assert sender.exc is None
        assert [e.data for e in sender.events if isinstance(e, Pong)] == pings
        assert sender.close_rcvd == Close(1000, "")
        assert receiver.close_expected() is (receiver_side is Side.SERVER)
        assert sender.close_expected() is (sender_side is Side.SERVER)

    @settings(max_examples=200, deadline=None)
    @given(
        text=st.text(max_size=60),
        cuts=st.lists(st.integers(0, 240), max_size=4),
        chunk=st.integers(1, 9),
        side=st.sampled_from(SIDES),
    )
    def test_text_split_anywhere_in_its_bytes(
        self, text: str, cuts: list[int], chunk: int, side: Side
    ) -> None:
        # Fragment boundaries inside multi-byte characters are allowed (RFC 6455 5.6).
        encoded = text.encode()
        bounds = [0, *sorted(min(c, len(encoded)) for c in cuts), len(encoded)]
        pieces = [encoded[a:b] for a, b in itertools.pairwise(bounds)]
        wire = b"".join(
            incoming(side, OP_TEXT if i == 0 else OP_CONT, piece, fin=i == len(pieces) - 1)
            for i, piece in enumerate(pieces)
        )
        proto = Protocol(side)
        feed(proto, wire, [chunk])
        assert proto.exc is None
        assert list(proto.messages) == [text]

    @settings(max_examples=100, deadline=None)
    @given(
        payloads=st.lists(st.binary(max_size=300), max_size=5),
        side=st.sampled_from(SIDES),
    )
    def test_core_parser_agrees_with_reference_parser(
        self, payloads: list[bytes], side: Side
    ) -> None:
        wire = b"".join(incoming(side, OP_BINARY, payload) for payload in payloads)
        proto = Protocol(side)
        proto.receive_data(wire)
        reference: list[bytes] = []
        rest = wire
        while rest:
            parsed = parse_frame(rest)
            assert parsed is not None
            reference.append(parsed[0].data)
            rest = rest[parsed[2] :]
        assert list(proto.messages) == reference


@pytest.mark.parametrize("side", [Side.SERVER, Side.CLIENT])
def test_failure_waits_for_earlier_messages_to_be_read(side: Side) -> None:
    """A bad frame after a good message: the message can still be answered first."""
    proto = Protocol(side)
    peer_mask = b"\x01\x02\x03\x04" if side is Side.SERVER else None
    good = Frame(OP_TEXT, b"Hello").serialize(peer_mask)
    bad = Frame(OP_TEXT, b"x", rsv2=True).serialize(peer_mask)
    proto.receive_data(good + bad)
    assert list(proto.messages) == ["Hello"]
    assert proto.pending_close is not None and proto.pending_close.code == 1002
    assert proto.state is State.OPEN
    assert proto.data_to_send() == []
    reply = proto.send_message("Hello")  # the application answers the good message
    assert reply
    proto.messages.popleft()
    proto.fail_now()
    assert proto.state is State.CLOSING
    assert proto.close_sent is not None and proto.close_sent.code == 1002
    assert proto.close_expected()


def test_close_while_failure_pending_sends_failure_code() -> None:
    proto = Protocol(Side.CLIENT)
    proto.receive_data(Frame(OP_TEXT, b"a").serialize() + b"\x8f\x00")  # reserved opcode
    assert proto.pending_close is not None
    assert proto.send_close(1000)
    assert proto.close_sent is not None and proto.close_sent.code == 1002
