"""Tests of :mod:`tether.protocol.deflate` (RFC 7692), alone and inside the core Protocol."""

from __future__ import annotations

import itertools
import random
import time
import tracemalloc
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.exceptions import NegotiationError, PayloadTooBig, ProtocolError
from tether.protocol.connection import Ping, Pong, Protocol, Side, State
from tether.protocol.deflate import (
    LARGE_MESSAGE,
    Deflate,
    PerMessageDeflate,
    ServerNegotiator,
    client_accept,
    client_offer,
    compression_settings,
    parse_extension_header,
    server_accept,
)
from tether.protocol.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    Frame,
    parse_frame,
)

MASK = b"\x37\xfa\x21\x3d"
SIDES = [Side.SERVER, Side.CLIENT]
SIDE_IDS = ["server", "client"]


@pytest.fixture(params=SIDES, ids=SIDE_IDS)
def side(request: pytest.FixtureRequest) -> Side:
    value: Side = request.param
    return value


def codec(
    *,
    local_bits: int = 15,
    remote_bits: int = 15,
    local_nct: bool = False,
    remote_nct: bool = False,
) -> PerMessageDeflate:
    return PerMessageDeflate(
        remote_no_context_takeover=remote_nct,
        local_no_context_takeover=local_nct,
        remote_max_window_bits=remote_bits,
        local_max_window_bits=local_bits,
    )


def raw_deflate(data: bytes, *, finish: bool = False, wbits: int = 15) -> bytes:
    """Compress ``data`` as one message, the RFC 7692 7.2.1 way (or with BFINAL=1)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, -wbits)
    if finish:
        return compressor.compress(data) + compressor.flush(zlib.Z_FINISH)
    out = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


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
    """A frame as the peer of ``side`` sends it (masked when ``side`` is the server)."""
    mask = MASK if side is Side.SERVER else None
    return Frame(opcode, data, fin, rsv1, rsv2, rsv3).serialize(mask)


def sent(proto: Protocol) -> list[Frame]:
    data = b"".join(proto.data_to_send())
    frames: list[Frame] = []
    while data:
        parsed = parse_frame(data)
        assert parsed is not None
        frames.append(parsed[0])
        data = data[parsed[2] :]
    return frames


def assert_failed(proto: Protocol, code: int) -> None:
    assert proto.exc is not None, "the connection was not failed"
    assert proto.exc.code == code, str(proto.exc)
    if proto.pending_close is not None:
        assert proto.messages
        proto.fail_now()
    assert proto.state is State.CLOSING
    frames = sent(proto)
    assert frames
    assert frames[-1].opcode == OP_CLOSE
    assert Close.parse(frames[-1].data).code == code


def negotiate(
    client_settings: Deflate, server_settings: Deflate
) -> tuple[PerMessageDeflate, PerMessageDeflate]:
    """Run the offer / answer exchange; return the (client, server) codecs."""
    answer, server_codec = server_accept([client_offer(client_settings)], server_settings)
    assert answer is not None
    assert isinstance(server_codec, PerMessageDeflate)
    client_codec = client_accept([answer], client_settings)
    assert client_codec is not None
    return client_codec, server_codec


def make_pair(
    client_settings: Deflate | None = None,
    server_settings: Deflate | None = None,
    *,
    max_size: int | None = 2**20,
) -> tuple[Protocol, Protocol]:
    client_codec, server_codec = negotiate(
        client_settings or Deflate(), server_settings or Deflate()
    )
    return (
        Protocol(Side.CLIENT, codec=client_codec, max_size=max_size),
        Protocol(Side.SERVER, codec=server_codec, max_size=max_size),
    )


def params_of(answer: str) -> dict[str, str | None]:
    [(name, params)] = parse_extension_header([answer])
    assert name == "permessage-deflate"
    return dict(params)


# ----------------------------------------------------------- RFC 7692 5, 7.1


class TestSection7_1ServerNegotiation:
    @pytest.mark.parametrize(
        ("offer", "server", "answer", "expected"),
        [
            # expected: (local_no_ctx, remote_no_ctx, local_bits, remote_bits) of the server
            (
                "permessage-deflate",
                Deflate(),
                {"server_max_window_bits": "12"},
                (False, False, 12, 15),
            ),
            (
                "permessage-deflate; client_max_window_bits",
                Deflate(),
                {"server_max_window_bits": "12", "client_max_window_bits": "11"},
                (False, False, 12, 11),
            ),
            (
                "permessage-deflate; client_max_window_bits=10",
                Deflate(),
                {"server_max_window_bits": "12", "client_max_window_bits": "10"},
                (False, False, 12, 10),
            ),
            (
                "permessage-deflate; client_max_window_bits=15",
                Deflate(),
                {"server_max_window_bits": "12", "client_max_window_bits": "11"},
                (False, False, 12, 11),
            ),
            (
                'permessage-deflate; client_max_window_bits="10"',
                Deflate(),
                {"server_max_window_bits": "12", "client_max_window_bits": "10"},
                (False, False, 12, 10),
            ),
            (
                "permessage-deflate; server_max_window_bits=10",
                Deflate(),
                {"server_max_window_bits": "10"},
                (False, False, 10, 15),
            ),
            (
                "permessage-deflate; server_max_window_bits=15",
                Deflate(),
                {"server_max_window_bits": "12"},
                (False, False, 12, 15),
            ),
            (
                "permessage-deflate; server_max_window_bits=8",
                Deflate(),
                {"server_max_window_bits": "8"},
                (False, False, 8, 15),
            ),
            (
                "permessage-deflate; server_no_context_takeover",
                Deflate(),
                {"server_no_context_takeover": None, "server_max_window_bits": "12"},
                (True, False, 12, 15),
            ),
            (
                "permessage-deflate; client_no_context_takeover",
                Deflate(),
                {"client_no_context_takeover": None, "server_max_window_bits": "12"},
                (False, True, 12, 15),
            ),
            (
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                "server_max_window_bits=9; client_max_window_bits=9",
                Deflate(),
                {
                    "server_no_context_takeover": None,
                    "client_no_context_takeover": None,
                    "server_max_window_bits": "9",
                    "client_max_window_bits": "9",
                },
                (True, True, 9, 9),
            ),
            (
                "permessage-deflate",
                Deflate(server_no_context_takeover=True),
                {"server_no_context_takeover": None, "server_max_window_bits": "12"},
                (True, False, 12, 15),
            ),
            (
                "permessage-deflate",
                Deflate(client_no_context_takeover=True),
                {"client_no_context_takeover": None, "server_max_window_bits": "12"},
                (False, True, 12, 15),
            ),
            (
                "permessage-deflate; client_max_window_bits",
                Deflate(server_max_window_bits=15, client_max_window_bits=15),
                {},
                (False, False, 15, 15),
            ),
            (
                "permessage-deflate",
                Deflate(server_max_window_bits=15, client_max_window_bits=9),
                {},
                (False, False, 15, 15),
            ),
        ],
    )
    def test_accepted_offers(
        self,
        offer: str,
        server: Deflate,
        answer: dict[str, str | None],
        expected: tuple[bool, bool, int, int],
    ) -> None:
        value, result = server_accept([offer], server)
        assert value is not None
        assert params_of(value) == answer
        assert isinstance(result, PerMessageDeflate)
        assert (
            result.local_no_context_takeover,
            result.remote_no_context_takeover,
            result.local_max_window_bits,
            result.remote_max_window_bits,
        ) == expected

    @pytest.mark.parametrize(
        "offer",
        [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=08",
            "permessage-deflate; server_max_window_bits=abc",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover=true",
            "permessage-deflate; client_no_context_takeover=1",
            "permessage-deflate; unknown_parameter",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits=10; client_max_window_bits=11",
            "permessage-deflate; =10",
            "x-webkit-deflate-frame",
            "permessage-compress",
        ],
    )
    def test_malformed_or_unknown_offers_are_declined(self, offer: str) -> None:
        assert server_accept([offer], Deflate()) == (None, None)

    @pytest.mark.parametrize(
        ("offers", "answer"),
        [
            (
                [
                    "permessage-deflate; server_max_window_bits=7",
                    "permessage-deflate; client_max_window_bits=9",
                ],
                {"server_max_window_bits": "12", "client_max_window_bits": "9"},
            ),
            (
                ["permessage-deflate; foo, permessage-deflate; server_no_context_takeover"],
                {"server_no_context_takeover": None, "server_max_window_bits": "12"},
            ),
            (
                ["x-webkit-deflate-frame", "permessage-deflate; server_max_window_bits=10"],
                {"server_max_window_bits": "10"},
            ),
        ],
    )
    def test_first_acceptable_offer_wins(
        self, offers: list[str], answer: dict[str, str | None]
    ) -> None:
        value, result = server_accept(offers, Deflate())
        assert value is not None
        assert params_of(value) == answer
        assert isinstance(result, PerMessageDeflate)

    def test_no_offer(self) -> None:
        assert server_accept([], Deflate()) == (None, None)

    def test_server_negotiator(self) -> None:
        value, result = ServerNegotiator(Deflate(server_no_context_takeover=True))(
            ["permessage-deflate"]
        )
        assert value is not None
        assert "server_no_context_takeover" in params_of(value)
        assert isinstance(result, PerMessageDeflate)
        assert result.local_no_context_takeover is True


class TestSection7_1ClientNegotiation:
    @pytest.mark.parametrize(
        ("settings", "offer"),
        [
            (Deflate(), {"server_max_window_bits": "12", "client_max_window_bits": None}),
            (
                Deflate(server_max_window_bits=15, client_max_window_bits=15),
                {"client_max_window_bits": None},
            ),
            (
                Deflate(
                    server_no_context_takeover=True,
                    client_no_context_takeover=True,
                    server_max_window_bits=9,
                    client_max_window_bits=10,
                ),
                {
                    "server_no_context_takeover": None,
                    "client_no_context_takeover": None,
                    "server_max_window_bits": "9",
                    "client_max_window_bits": None,
                },
            ),
        ],
    )
    def test_offer(self, settings: Deflate, offer: dict[str, str | None]) -> None:
        assert params_of(client_offer(settings)) == offer

    @pytest.mark.parametrize(
        ("settings", "answer", "expected"),
        [
            # expected: (local_no_ctx, remote_no_ctx, local_bits, remote_bits) of the client
            (Deflate(), "permessage-deflate; server_max_window_bits=12", (False, False, 11, 12)),
            (
                Deflate(),
                "permessage-deflate; server_max_window_bits=9; client_max_window_bits=10",
                (False, False, 10, 9),
            ),
            (
                Deflate(),
                "permessage-deflate; server_max_window_bits=8; client_max_window_bits=8",
                (False, False, 8, 8),
            ),
            (
                Deflate(),
                "permessage-deflate; server_no_context_takeover; "
                "client_no_context_takeover; server_max_window_bits=12",
                (True, True, 11, 12),
            ),
            (
                Deflate(client_no_context_takeover=True),
                "permessage-deflate; server_max_window_bits=12",
                (True, False, 11, 12),
            ),
            (
                Deflate(server_max_window_bits=15, client_max_window_bits=15),
                "permessage-deflate",
                (False, False, 15, 15),
            ),
            (
                Deflate(server_max_window_bits=15, client_max_window_bits=15),
                "permessage-deflate; server_max_window_bits=10",
                (False, False, 15, 10),
            ),
            (
                Deflate(server_no_context_takeover=True),
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=12",
                (False, True, 11, 12),
            ),
        ],
    )
    def test_accepted_answers(
        self, settings: Deflate, answer: str, expected: tuple[bool, bool, int, int]
    ) -> None:
        result = client_accept([answer], settings)
        assert result is not None
        assert (
            result.local_no_context_takeover,
            result.remote_no_context_takeover,
            result.local_max_window_bits,
            result.remote_max_window_bits,
        ) == expected

    @pytest.mark.parametrize(
        ("settings", "answer"),
        [
            (Deflate(), "permessage-deflate"),  # server_max_window_bits=12 was not accepted
            (Deflate(), "permessage-deflate; server_max_window_bits=13"),
            (Deflate(), "permessage-deflate; server_max_window_bits=7"),
            (Deflate(), "permessage-deflate; server_max_window_bits"),
            (Deflate(), "permessage-deflate; server_max_window_bits=12; client_max_window_bits"),
            (Deflate(), "permessage-deflate; server_max_window_bits=12; foo=1"),
            (
                Deflate(),
                "permessage-deflate; server_max_window_bits=12; server_no_context_takeover=1",
            ),
            (
                Deflate(),
                "permessage-deflate; server_max_window_bits=12, "
                "permessage-deflate; server_max_window_bits=12",
            ),
            (Deflate(), "x-webkit-deflate-frame"),
            (Deflate(), "permessage-deflate; ="),
            (
                Deflate(server_no_context_takeover=True),
                "permessage-deflate; server_max_window_bits=12",
            ),
            (None, "permessage-deflate"),
        ],
    )
    def test_answers_not_matching_the_offer(self, settings: Deflate | None, answer: str) -> None:
        with pytest.raises(NegotiationError):
            client_accept([answer], settings)

    def test_no_answer_means_no_compression(self) -> None:
        assert client_accept([], Deflate()) is None
        assert client_accept([], None) is None

    def test_negotiated_pair_agrees(self) -> None:
        settings = Deflate(
            server_no_context_takeover=True, server_max_window_bits=10, client_max_window_bits=11
        )
        client_codec, server_codec = negotiate(settings, Deflate())
        # The client never compresses with a larger window than the server inflates with.
        assert client_codec.local_max_window_bits == 11
        assert server_codec.remote_max_window_bits == 11
        assert client_codec.remote_max_window_bits == server_codec.local_max_window_bits == 10
        assert client_codec.remote_no_context_takeover is True
        assert server_codec.local_no_context_takeover is True


class TestSettings:
    @pytest.mark.parametrize(
        "kwargs",
        [
            {"server_max_window_bits": 8},
            {"server_max_window_bits": 16},
            {"client_max_window_bits": 8},
            {"compress_level": 10},
            {"mem_level": 0},
            {"mem_level": 10},
            {"threshold": -1},
        ],
    )
    def test_invalid_settings(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ValueError):
            Deflate(**kwargs)

    def test_compression_settings(self) -> None:
        assert compression_settings(None) is None
        assert compression_settings("deflate") == Deflate()
        custom = Deflate(threshold=0)
        assert compression_settings(custom) is custom
        with pytest.raises(ValueError, match="deflate"):
            compression_settings("gzip")


# ------------------------------------------------------------- RFC 7692 7.2


class TestSection7_2Codec:
    def test_compress_hello_rfc_7_2_3_1(self) -> None:
        assert codec().encode(b"Hello", True) == bytes.fromhex("f248cdc9c90700")

    @pytest.mark.parametrize(
        ("payloads", "expected"),
        [
            # 7.2.3.1 a message compressed with one block
            ([bytes.fromhex("f248cdc9c90700")], [b"Hello"]),
            # 7.2.3.2 two messages sharing the LZ77 window
            ([bytes.fromhex("f248cdc9c90700"), bytes.fromhex("f200110000")], [b"Hello", b"Hello"]),
            # 7.2.3.3 a block with no compression
            ([bytes.fromhex("000500faff48656c6c6f00")], [b"Hello"]),
            # 7.2.3.5 two DEFLATE blocks in one message
            ([bytes.fromhex("f24805000000ffffcac9c90700")], [b"Hello"]),
            # 7.2.3.6 an empty message
            ([b"\x00"], [b""]),
        ],
        ids=["7.2.3.1", "7.2.3.2", "7.2.3.3", "7.2.3.5", "7.2.3.6"],
    )
    def test_decode_rfc_examples(self, payloads: list[bytes], expected: list[bytes]) -> None:
        decoder = codec()
        assert [decoder.decode(p, True, None) for p in payloads] == expected

    def test_context_takeover_shrinks_repeated_messages(self) -> None:
        encoder = codec()
        first = encoder.encode(b"a fairly long message that repeats" * 3, True)
        second = encoder.encode(b"a fairly long message that repeats" * 3, True)
        assert len(second) < len(first)

    def test_no_context_takeover_resets_the_compressor(self) -> None:
        encoder = codec(local_nct=True)
        first = encoder.encode(b"a fairly long message that repeats" * 3, True)
        second = encoder.encode(b"a fairly long message that repeats" * 3, True)
        assert first == second
        # ... so a decoder that resets after each message decodes both.
        decoder = codec(remote_nct=True)
        assert decoder.decode(first, True, None) == decoder.decode(second, True, None)

    @pytest.mark.parametrize("bits", [9, 12, 15])
    def test_large_messages_get_a_compressor_of_their_own(self, bits: int) -> None:
        """A whole message of LARGE_MESSAGE bytes or more is compressed apart; the
        connection's compressor restarts after it; the peer's one continuous stream
        (plain zlib, with the window negotiated) decodes every message."""
        rng = random.Random(7692)
        text = b"".join(b"event %d user %05d ok; " % (i, rng.randrange(10**5))
                        for i in range(6000))
        messages = [text[:500], text[:LARGE_MESSAGE], text[100:600], text[:LARGE_MESSAGE - 1],
                    text[:500], text[1000:], b"", text[:500]]
        encoder = codec(local_bits=bits)
        peer = zlib.decompressobj(wbits=-bits)
        sizes = []
        for message in messages:
            data = encoder.encode(message, True)
            sizes.append(len(data))
            assert peer.decompress(data + b"\x00\x00\xff\xff") == message
            # After a large message, nothing is kept; after a small one, the context.
            assert (encoder._encoder is None) == (len(message) >= LARGE_MESSAGE)
        # The small message after a large one does not refer to it (a fresh start),
        # the one after a small one does (context takeover).
        assert sizes[2] > sizes[4] or bits == 9

    def test_large_last_fragment_uses_the_message_compressor(self) -> None:
        encoder, decoder = codec(), codec()
        big = bytes(range(256)) * (LARGE_MESSAGE // 256 + 1)
        encoded = [encoder.encode(b"start ", False), encoder.encode(big, True)]
        assert encoder._encoder is not None  # a fragment: the stream goes on
        decoded = b"".join(decoder.decode(e, i == 1, None) for i, e in enumerate(encoded))
        assert decoded == b"start " + big
        assert decoder.decode(encoder.encode(b"next", True), True, None) == b"next"

    def test_fragments(self) -> None:
        encoder, decoder = codec(), codec()
        pieces = [b"one ", b"", b"two ", b"three"]
        encoded = [encoder.encode(p, i == 3) for i, p in enumerate(pieces)]
        decoded = b"".join(decoder.decode(e, i == 3, None) for i, e in enumerate(encoded))
        assert decoded == b"one two three"

    def test_decode_is_bounded(self) -> None:
        bomb = raw_deflate(bytes(2**20))
        with pytest.raises(PayloadTooBig):
            codec().decode(bomb, True, 1000)
        assert codec().decode(raw_deflate(bytes(1000)), True, 1000) == bytes(1000)

    def test_corrupt_data(self) -> None:
        with pytest.raises(ProtocolError) as info:
            codec().decode(b"\xff\xff\xff\xff", True, None)
        assert info.value.code == 1007


# ------------------------------------------------------- RFC 7692 6, in Protocol


class TestSection6InProtocol:
    @pytest.mark.parametrize("message", ["", "x", "Hello" * 100, b"", b"\x00" * 5000])
    def test_round_trip_both_directions(self, message: str | bytes) -> None:
        client, server = make_pair(Deflate(threshold=0), Deflate(threshold=0))
        wire = client.send_message(message)
        assert wire[0] & 0x40, "RSV1 must mark a compressed message"
        server.receive_data(wire)
        server.receive_data(client.send_message(message))
        client.receive_data(server.send_message(message))
        client.receive_data(server.send_message(message))
        assert list(server.messages) == [message, message]
        assert list(client.messages) == [message, message]
        assert server.exc is None
        assert client.exc is None

    def test_compression_reduces_wire_size(self) -> None:
        client, server = make_pair()
        wire = client.send_message("all work and no play " * 200)
        assert len(wire) < 400
        server.receive_data(wire)
        assert list(server.messages) == ["all work and no play " * 200]

    def test_small_messages_under_threshold_are_not_compressed(self) -> None:
        client, server = make_pair(Deflate(threshold=128))
        wire = client.send_message("tiny")
        assert not wire[0] & 0x40
        server.receive_data(wire)
        assert list(server.messages) == ["tiny"]

    def test_uncompressed_message_is_accepted(self, side: Side) -> None:
        proto = Protocol(side, codec=codec())
        proto.receive_data(incoming(side, OP_TEXT, b"plain") + incoming(side, OP_BINARY, b"\x01"))
        assert list(proto.messages) == ["plain", b"\x01"]

    def test_fragmented_compressed_message(self, side: Side) -> None:
        payload = raw_deflate(b"Hello, compressed world")
        proto = Protocol(side, codec=codec())
        proto.receive_data(
            incoming(side, OP_TEXT, payload[:5], fin=False, rsv1=True)
            + incoming(side, OP_PING, b"p")
            + incoming(side, OP_CONT, payload[5:9], fin=False)
            + incoming(side, OP_CONT, payload[9:])
        )
        assert list(proto.messages) == ["Hello, compressed world"]
        assert proto.exc is None

    def test_send_fragments_compressed(self) -> None:
        client, server = make_pair()
        wire = client.send_fragment("Hello, ", False) + client.send_fragment("world", True)
        server.receive_data(wire)
        assert list(server.messages) == ["Hello, world"]

    def test_rsv1_on_continuation(self, side: Side) -> None:
        proto = Protocol(side, codec=codec())
        proto.receive_data(
            incoming(side, OP_TEXT, raw_deflate(b"ab"), fin=False, rsv1=True)
            + incoming(side, OP_CONT, raw_deflate(b"cd"), rsv1=True)
        )
        assert list(proto.messages) == []
        assert_failed(proto, 1002)

    def test_rsv1_on_continuation_of_uncompressed_message(self, side: Side) -> None:
        proto = Protocol(side, codec=codec())
        proto.receive_data(
            incoming(side, OP_TEXT, b"ab", fin=False) + incoming(side, OP_CONT, b"cd", rsv1=True)
        )
        assert_failed(proto, 1002)

    @pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
    def test_rsv1_on_control_frame(self, side: Side, opcode: int) -> None:
        proto = Protocol(side, codec=codec())
        proto.receive_data(incoming(side, opcode, b"\x03\xe8", rsv1=True))
        assert proto.events == []
        assert_failed(proto, 1002)

    @pytest.mark.parametrize("bits", [{"rsv2": True}, {"rsv3": True}], ids=["rsv2", "rsv3"])
    def test_rsv2_rsv3_with_deflate(self, side: Side, bits: dict[str, bool]) -> None:
        proto = Protocol(side, codec=codec())
        proto.receive_data(incoming(side, OP_TEXT, raw_deflate(b"x"), rsv1=True, **bits))
        assert_failed(proto, 1002)

    @pytest.mark.parametrize(
        "payload",
        [b"\xff\xff\xff\xff", b"\x07\x00", bytes(range(256)), raw_deflate(b"ok")[:-1] + b"\xff"],
    )
    def test_corrupt_deflate_data(self, side: Side, payload: bytes) -> None:
        proto = Protocol(side, codec=codec())
        proto.receive_data(incoming(side, OP_BINARY, payload, rsv1=True))
        assert list(proto.messages) == []
        assert_failed(proto, 1007)

    def test_invalid_utf8_after_decompression(self, side: Side) -> None:
        proto = Protocol(side, codec=codec())
        proto.receive_data(incoming(side, OP_TEXT, raw_deflate(b"ok \xff"), rsv1=True))
        assert_failed(proto, 1007)

    def test_invalid_utf8_fails_fast_in_compressed_fragment(self, side: Side) -> None:
        encoder = codec()
        proto = Protocol(side, codec=codec())
        proto.receive_data(
            incoming(side, OP_TEXT, encoder.encode(b"ok \xff", False), fin=False, rsv1=True)
        )
        assert_failed(proto, 1007)

    def test_context_takeover_across_messages(self, side: Side) -> None:
        encoder = codec()
        proto = Protocol(side, codec=codec())
        for _ in range(3):
            proto.receive_data(
                incoming(side, OP_TEXT, encoder.encode(b"repeat " * 20, True), rsv1=True)
            )
        assert list(proto.messages) == ["repeat " * 20] * 3

    def test_bfinal_block_then_next_message(self, side: Side) -> None:
        # RFC 7692 7.2.3.4: a sender may end a message with a block whose BFINAL is 1
        # (here the RFC's own example, then the 7.2.3.1 example, which references
        # nothing before it). Both must decode; the second must not vanish.
        proto = Protocol(side, codec=codec())
        proto.receive_data(
            incoming(side, OP_TEXT, bytes.fromhex("f348cdc9c9070000"), rsv1=True)
            + incoming(side, OP_TEXT, bytes.fromhex("f248cdc9c90700"), rsv1=True)
        )
        assert proto.exc is None
        assert list(proto.messages) == ["Hello", "Hello"]

    def test_bfinal_messages_from_a_compressor_reset_each_time(self, side: Side) -> None:
        # A sender may always choose not to use the window of earlier messages; one that
        # finishes each message with Z_FINISH (BFINAL=1) sends self-contained messages.
        proto = Protocol(side, codec=codec())
        for word in (b"Hello", b"World", b"again"):
            proto.receive_data(incoming(side, OP_TEXT, raw_deflate(word, finish=True), rsv1=True))
        assert proto.exc is None
        assert list(proto.messages) == ["Hello", "World", "again"]

    def test_eight_bit_windows(self) -> None:
        offer = "permessage-deflate; server_max_window_bits=8; client_max_window_bits=8"
        client_settings = Deflate(server_max_window_bits=9, client_max_window_bits=9, threshold=0)
        answer, server_codec = server_accept([offer], Deflate(threshold=0))
        assert answer is not None
        assert params_of(answer) == {"server_max_window_bits": "8", "client_max_window_bits": "8"}
        client_codec = client_accept([answer], client_settings)
        assert isinstance(server_codec, PerMessageDeflate)
        assert client_codec is not None
        client = Protocol(Side.CLIENT, codec=client_codec)
        server = Protocol(Side.SERVER, codec=server_codec)
        text = "".join(chr(0x41 + i % 50) for i in range(3000)) * 2
        for _ in range(3):
            server.receive_data(client.send_message(text))
            client.receive_data(server.send_message(text))
        assert list(server.messages) == [text] * 3
        assert list(client.messages) == [text] * 3


# --------------------------------------------------- decompression bombs (1009)


class TestMaxSizeAfterDecompression:
    def test_decompression_bomb_whole_frame(self) -> None:
        client, _ = make_pair(Deflate(threshold=0))
        wire = client.send_message(bytes(10 * 2**20))  # 10 MiB of zeros
        assert len(wire) < 64 * 1024
        _, server_codec = negotiate(Deflate(threshold=0), Deflate())
        server = Protocol(Side.SERVER, codec=server_codec, max_size=2**20)
        tracemalloc.start()
        try:
            start = time.perf_counter()
            server.receive_data(wire)
            elapsed = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert isinstance(server.exc, PayloadTooBig)
        assert_failed(server, 1009)
        assert list(server.messages) == []
        assert elapsed < 1.0
        # Never anywhere near the 10 MiB the frame would inflate to.
        assert peak < 4 * 2**20, f"peak {peak:,} bytes"

    def test_decompression_bomb_in_chunks(self) -> None:
        client, _ = make_pair(Deflate(threshold=0))
        wire = client.send_message(bytes(10 * 2**20))
        _, server_codec = negotiate(Deflate(threshold=0), Deflate())
        server = Protocol(Side.SERVER, codec=server_codec, max_size=2**20)
        tracemalloc.start()
        try:
            start = time.perf_counter()
            for i in range(0, len(wire), 1000):
                server.receive_data(wire[i : i + 1000])
            elapsed = time.perf_counter() - start
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert_failed(server, 1009)
        assert list(server.messages) == []
        assert elapsed < 1.0
        assert peak < 4 * 2**20, f"peak {peak:,} bytes"

    def test_bomb_across_fragments(self, side: Side) -> None:
        encoder = codec()
        proto = Protocol(side, codec=codec(), max_size=1000)
        proto.receive_data(
            incoming(side, OP_BINARY, encoder.encode(bytes(600), False), fin=False, rsv1=True)
        )
        assert proto.exc is None
        proto.receive_data(incoming(side, OP_CONT, encoder.encode(bytes(401), True)))
        assert_failed(proto, 1009)

    def test_exactly_max_size_after_decompression(self, side: Side) -> None:
        proto = Protocol(side, codec=codec(), max_size=1000)
        proto.receive_data(incoming(side, OP_BINARY, raw_deflate(bytes(1000)), rsv1=True))
        assert list(proto.messages) == [bytes(1000)]
        proto.receive_data(incoming(side, OP_BINARY, raw_deflate(bytes(1001)), rsv1=True))
        assert_failed(proto, 1009)

    def test_small_compressed_frame_is_not_judged_by_wire_size(self, side: Side) -> None:
        # Incompressible: more than 100 bytes on the wire, exactly 100 once inflated.
        payload = bytes(range(100))
        wire_payload = codec().encode(payload, True)
        assert len(wire_payload) > 100
        proto = Protocol(side, codec=codec(), max_size=100)
        proto.receive_data(incoming(side, OP_BINARY, wire_payload, rsv1=True))
        assert list(proto.messages) == [payload]


# -------------------------------------------------------------------- properties


def check_contract(proto: Protocol) -> None:
    frames = sent(proto)
    if proto.exc is not None:
        assert proto.exc.code in (1002, 1007, 1009)
        if proto.pending_close is not None:
            assert proto.messages
            proto.fail_now()
            frames += sent(proto)
        assert proto.state is State.CLOSING
        assert frames
        assert frames[-1].opcode == OP_CLOSE
        assert Close.parse(frames[-1].data).code == proto.exc.code
    elif proto.close_rcvd is None:
        assert proto.state is State.OPEN
        assert all(f.opcode == OP_PONG for f in frames)


class TestNeverRaisesWithDeflate:
    @settings(max_examples=300, deadline=None)
    @given(
        side=st.sampled_from(SIDES),
        frames=st.lists(
            st.tuples(
                st.sampled_from([OP_TEXT, OP_BINARY, OP_CONT, OP_PING]),
                st.booleans(),
                st.booleans(),
                st.binary(max_size=60) | st.text(max_size=40).map(str.encode).map(raw_deflate),
            ),
            min_size=1,
            max_size=6,
        ),
        max_size=st.sampled_from([None, 20, 2**20]),
    )
    def test_random_compressed_frames(
        self,
        side: Side,
        frames: list[tuple[int, bool, bool, bytes]],
        max_size: int | None,
    ) -> None:
        proto = Protocol(side, codec=codec(), max_size=max_size)
        for opcode, fin, rsv1, payload in frames:
            proto.receive_data(
                incoming(side, opcode, payload, fin=fin or opcode == OP_PING, rsv1=rsv1)
            )
        check_contract(proto)


deflate_settings = st.builds(
    Deflate,
    server_max_window_bits=st.integers(9, 15),
    client_max_window_bits=st.integers(9, 15),
    server_no_context_takeover=st.booleans(),
    client_no_context_takeover=st.booleans(),
    compress_level=st.sampled_from([0, 1, 6, 9]),
    threshold=st.sampled_from([0, 1, 128]),
)
small_text = st.text(max_size=100)
small_binary = st.binary(max_size=100)
repetitive = st.text(min_size=1, max_size=8).map(lambda s: s * (3000 // len(s)))
big_binary = st.integers(65536, 70000).map(lambda n: bytes(i % 7 for i in range(n)))
big_random = st.integers(0, 2**32).map(lambda seed: random.Random(seed).randbytes(66000))
messages_st = st.lists(
    st.one_of(small_text, small_binary, repetitive, small_text, big_binary, big_random),
    max_size=6,
)


class TestRoundTripWithDeflate:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        data=st.data(),
        messages=messages_st,
        client_settings=deflate_settings,
        server_settings=deflate_settings,
    )
    @pytest.mark.parametrize("sender_side", SIDES, ids=SIDE_IDS)
    def test_messages_survive_compression_fragmentation_and_chunking(
        self,
        sender_side: Side,
        data: st.DataObject,
        messages: list[str | bytes],
        client_settings: Deflate,
        server_settings: Deflate,
    ) -> None:
        client, server = make_pair(client_settings, server_settings, max_size=None)
        sender, receiver = (client, server) if sender_side is Side.CLIENT else (server, client)
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
        rnd: random.Random = data.draw(st.randoms(use_true_random=False))
        pos = 0
        while pos < len(wire):
            n = rnd.choice((1, 2, 3, 7, 64, 1024, 65536))
            receiver.receive_data(bytes(wire[pos : pos + n]))
            pos += n
        assert receiver.exc is None, str(receiver.exc)
        assert list(receiver.messages) == messages
        assert [e.data for e in receiver.events if isinstance(e, Ping)] == pings
        sender.receive_data(b"".join(receiver.data_to_send()))
        assert [e.data for e in sender.events if isinstance(e, Pong)] == pings


def test_client_clamps_a_larger_client_window_from_the_server() -> None:
    """A server may answer client_max_window_bits=15 to a valueless offer (Autobahn 13.4):
    the client keeps compressing with its own, smaller window, which is always valid."""
    codec = client_accept(
        ["permessage-deflate; server_max_window_bits=12; client_max_window_bits=15"], Deflate()
    )
    assert codec is not None
    assert codec.local_max_window_bits == 11
