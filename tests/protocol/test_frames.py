"""Tests of :mod:`tether.protocol.frames`: the wire format of RFC 6455 section 5."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.exceptions import ProtocolError
from tether.protocol.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    Frame,
    apply_mask,
    build_frame,
    build_header,
    check_close_code,
    parse_frame,
)

# The masking key of the examples in RFC 6455 5.7.
MASK = b"\x37\xfa\x21\x3d"


def naive_mask(data: bytes, mask: bytes) -> bytes:
    """RFC 6455 5.3 literally: ``j = i MOD 4; transformed[i] = original[i] XOR mask[j]``."""
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def parse_whole(data: bytes) -> tuple[Frame, bool]:
    """Parse ``data`` as exactly one frame."""
    parsed = parse_frame(data)
    assert parsed is not None
    frame, masked, consumed = parsed
    assert consumed == len(data)
    return frame, masked


# --------------------------------------------------------------- RFC 6455 5.2


class TestSection5_2BaseFraming:
    """RFC 6455 5.2: FIN, RSV1-3, opcode, MASK and the 7 / 7+16 / 7+64-bit lengths."""

    @pytest.mark.parametrize(
        ("length", "prefix"),
        [
            (0, b"\x82\x00"),
            (1, b"\x82\x01"),
            (125, b"\x82\x7d"),
            (126, b"\x82\x7e\x00\x7e"),
            (256, b"\x82\x7e\x01\x00"),
            (65535, b"\x82\x7e\xff\xff"),
            (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
            (70000, b"\x82\x7f" + (70000).to_bytes(8, "big")),
        ],
    )
    def test_length_encodings_unmasked(self, length: int, prefix: bytes) -> None:
        payload = bytes(i % 251 for i in range(length))
        frame = Frame(OP_BINARY, payload)
        wire = prefix + payload
        assert build_header(OP_BINARY, length) == prefix
        assert frame.serialize() == wire
        assert parse_whole(wire) == (frame, False)

    @pytest.mark.parametrize(
        ("length", "prefix"),
        [
            (0, b"\x81\x80"),
            (125, b"\x81\xfd"),
            (126, b"\x81\xfe\x00\x7e"),
            (65535, b"\x81\xfe\xff\xff"),
            (65536, b"\x81\xff\x00\x00\x00\x00\x00\x01\x00\x00"),
        ],
    )
    def test_length_encodings_masked(self, length: int, prefix: bytes) -> None:
        payload = b"x" * length
        frame = Frame(OP_TEXT, payload)
        wire = prefix + MASK + naive_mask(payload, MASK)
        assert build_header(OP_TEXT, length, mask=MASK) == prefix + MASK
        assert frame.serialize(MASK) == wire
        assert parse_whole(wire) == (frame, True)

    @pytest.mark.parametrize(
        ("frame", "first_byte"),
        [
            (Frame(OP_TEXT, b"a", fin=False), 0x01),
            (Frame(OP_CONT, b"a"), 0x80),
            (Frame(OP_BINARY, b"a", rsv1=True), 0xC2),
            (Frame(OP_BINARY, b"a", rsv2=True), 0xA2),
            (Frame(OP_BINARY, b"a", rsv3=True), 0x92),
            (Frame(OP_CLOSE, b""), 0x88),
            (Frame(OP_PING, b""), 0x89),
            (Frame(OP_PONG, b""), 0x8A),
            (Frame(0xB, b""), 0x8B),
            (Frame(0x3, b"", fin=False, rsv1=True, rsv2=True, rsv3=True), 0x73),
        ],
    )
    def test_first_byte_bits_round_trip(self, frame: Frame, first_byte: int) -> None:
        wire = frame.serialize(MASK)
        assert wire[0] == first_byte
        assert parse_whole(wire) == (frame, True)
        wire = frame.serialize()
        assert wire[0] == first_byte
        assert parse_whole(wire) == (frame, False)

    @pytest.mark.parametrize("length", [0, 5, 125, 126, 65535, 65536])
    @pytest.mark.parametrize("masked", [False, True])
    def test_every_proper_prefix_is_incomplete(self, length: int, masked: bool) -> None:
        wire = Frame(OP_BINARY, b"z" * length).serialize(MASK if masked else None)
        header_len = len(wire) - length
        # Every cut inside the header, and a few inside the payload.
        cuts = {*range(header_len), header_len, len(wire) - 1} - {len(wire)}
        for cut in sorted(cuts):
            assert parse_frame(wire[:cut]) is None, cut

    def test_parse_stops_after_one_frame(self) -> None:
        first = Frame(OP_TEXT, b"one").serialize(MASK)
        second = Frame(OP_BINARY, b"two").serialize(MASK)
        parsed = parse_frame(first + second)
        assert parsed == (Frame(OP_TEXT, b"one"), True, len(first))

    def test_build_header_flags(self) -> None:
        assert build_header(OP_TEXT, 3, fin=False) == b"\x01\x03"
        assert build_header(OP_TEXT, 3, rsv1=True) == b"\xc1\x03"
        assert build_header(OP_PING, 0, mask=MASK) == b"\x89\x80" + MASK

    @pytest.mark.parametrize("length", [0, 3, 125, 126, 65536])
    def test_build_frame_masked_uses_a_mask_and_round_trips(self, length: int) -> None:
        payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
        wire = build_frame(OP_BINARY, payload, mask=True)
        assert wire[1] & 0x80
        assert parse_whole(wire) == (Frame(OP_BINARY, payload), True)

    def test_build_frame_unmasked_is_header_plus_payload(self) -> None:
        assert build_frame(OP_TEXT, b"Hel", fin=False) == b"\x01\x03Hel"
        assert build_frame(OP_BINARY, b"\x00", rsv1=True) == b"\xc2\x01\x00"

    @given(
        opcode=st.integers(0, 15),
        payload=st.binary(max_size=300),
        fin=st.booleans(),
        rsv=st.tuples(st.booleans(), st.booleans(), st.booleans()),
        mask=st.none() | st.binary(min_size=4, max_size=4),
    )
    def test_serialize_parse_round_trip(
        self,
        opcode: int,
        payload: bytes,
        fin: bool,
        rsv: tuple[bool, bool, bool],
        mask: bytes | None,
    ) -> None:
        frame = Frame(opcode, payload, fin, *rsv)
        wire = frame.serialize(mask)
        assert parse_whole(wire) == (frame, mask is not None)
        if mask is not None:
            assert wire.endswith(naive_mask(payload, mask))


# --------------------------------------------------------------- RFC 6455 5.3


class TestSection5_3Masking:
    @given(data=st.binary(max_size=2000), mask=st.binary(min_size=4, max_size=4))
    def test_apply_mask_matches_naive_reference(self, data: bytes, mask: bytes) -> None:
        assert apply_mask(data, mask) == naive_mask(data, mask)

    @given(data=st.binary(max_size=200), mask=st.binary(min_size=4, max_size=4))
    def test_apply_mask_is_an_involution(self, data: bytes, mask: bytes) -> None:
        assert apply_mask(apply_mask(data, mask), mask) == data

    @pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
    def test_apply_mask_accepts_bytes_like(self, kind: type) -> None:
        data = bytes(range(37))
        result = apply_mask(kind(data), MASK)
        assert type(result) is bytes
        assert result == naive_mask(data, MASK)

    def test_apply_mask_empty(self) -> None:
        assert apply_mask(b"", MASK) == b""

    def test_apply_mask_keeps_leading_and_trailing_zero_bytes(self) -> None:
        # Integer-based XOR must not drop the zero bytes at either end.
        data = b"\x00\x00" + b"ab" + b"\x00\x00\x00"
        assert apply_mask(data, b"\x00\x00\x00\x00") == data
        assert len(apply_mask(MASK * 3, MASK)) == 12
        assert apply_mask(MASK * 3, MASK) == bytes(12)

    def test_large_payload(self) -> None:
        data = bytes(range(256)) * 4096 + b"tail"
        assert apply_mask(data, MASK) == naive_mask(data, MASK)


# --------------------------------------------------------------- RFC 6455 5.7


class TestSection5_7Examples:
    """The byte-exact examples of RFC 6455 5.7."""

    def test_single_frame_unmasked_text(self) -> None:
        wire = b"\x81\x05\x48\x65\x6c\x6c\x6f"
        assert Frame(OP_TEXT, b"Hello").serialize() == wire
        assert parse_whole(wire) == (Frame(OP_TEXT, b"Hello"), False)

    def test_single_frame_masked_text(self) -> None:
        wire = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
        assert Frame(OP_TEXT, b"Hello").serialize(MASK) == wire
        assert parse_whole(wire) == (Frame(OP_TEXT, b"Hello"), True)

    def test_fragmented_unmasked_text(self) -> None:
        first = b"\x01\x03\x48\x65\x6c"
        second = b"\x80\x02\x6c\x6f"
        assert Frame(OP_TEXT, b"Hel", fin=False).serialize() == first
        assert Frame(OP_CONT, b"lo").serialize() == second
        assert parse_frame(first + second) == (Frame(OP_TEXT, b"Hel", fin=False), False, 5)

    def test_unmasked_ping_and_masked_pong(self) -> None:
        assert Frame(OP_PING, b"Hello").serialize() == b"\x89\x05\x48\x65\x6c\x6c\x6f"
        assert (
            Frame(OP_PONG, b"Hello").serialize(MASK)
            == b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
        )

    def test_256_bytes_and_64_kib_binary(self) -> None:
        assert Frame(OP_BINARY, bytes(256)).serialize()[:4] == b"\x82\x7e\x01\x00"
        assert (
            Frame(OP_BINARY, bytes(65536)).serialize()[:10]
            == b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"
        )


# ------------------------------------------------------------- RFC 6455 5.5.1


VALID_CODES = [
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
    3999,
    4000,
    4999,
]
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


class TestSection5_5_1ClosePayload:
    @pytest.mark.parametrize("code", VALID_CODES)
    def test_valid_codes(self, code: int) -> None:
        assert check_close_code(code) is True

    @pytest.mark.parametrize("code", INVALID_CODES)
    def test_invalid_codes(self, code: int) -> None:
        assert check_close_code(code) is False

    def test_parse_empty_is_1005(self) -> None:
        assert Close.parse(b"") == Close(1005, "")

    def test_parse_code_and_reason(self) -> None:
        assert Close.parse(b"\x03\xe8") == Close(1000, "")
        assert Close.parse(b"\x0f\xa0caf\xc3\xa9") == Close(4000, "café")

    def test_parse_one_byte_is_1002(self) -> None:
        with pytest.raises(ProtocolError) as info:
            Close.parse(b"\x03")
        assert info.value.code == 1002

    @pytest.mark.parametrize("code", INVALID_CODES)
    def test_parse_invalid_code_is_1002(self, code: int) -> None:
        with pytest.raises(ProtocolError) as info:
            Close.parse(struct.pack("!H", code) + b"bye")
        assert info.value.code == 1002

    @pytest.mark.parametrize("reason", [b"\xff", b"ab\xc3", b"\xed\xa0\x80", b"\xc0\xaf"])
    def test_parse_invalid_utf8_reason_is_1007(self, reason: bytes) -> None:
        with pytest.raises(ProtocolError) as info:
            Close.parse(b"\x03\xe8" + reason)
        assert info.value.code == 1007

    def test_serialize(self) -> None:
        assert Close(1000, "").serialize() == b"\x03\xe8"
        assert Close(1001, "bye").serialize() == b"\x03\xe9bye"
        assert Close(4000, "café").serialize() == b"\x0f\xa0caf\xc3\xa9"
        assert Close(1005, "").serialize() == b""
        assert Close().serialize() == b""

    @given(code=st.sampled_from(VALID_CODES), reason=st.text(max_size=40))
    def test_serialize_parse_round_trip(self, code: int, reason: str) -> None:
        assert Close.parse(Close(code, reason).serialize()) == Close(code, reason)

    @pytest.mark.parametrize("code", [*VALID_CODES])
    def test_check_accepts_sendable_codes(self, code: int) -> None:
        Close(code, "ok").check()

    def test_check_accepts_1005_without_reason(self) -> None:
        Close(1005, "").check()

    def test_check_rejects_1005_with_reason(self) -> None:
        with pytest.raises(ValueError, match="reason"):
            Close(1005, "why").check()

    @pytest.mark.parametrize("code", [1006, 1015, 1004, 999, 0, 2999, 5000])
    def test_check_rejects_codes_not_sent(self, code: int) -> None:
        with pytest.raises(ValueError, match=str(code)):
            Close(code, "").check()

    def test_check_reason_length_in_utf8_bytes(self) -> None:
        Close(1000, "x" * 123).check()
        with pytest.raises(ValueError, match="123"):
            Close(1000, "x" * 124).check()
        # 62 two-byte characters are 124 bytes although only 62 characters.
        with pytest.raises(ValueError, match="123"):
            Close(1000, "é" * 62).check()


# --- the optional C accelerator and its pure-Python twin give the same bytes --------

def _mask_impls() -> list[object]:
    from tether.protocol import frames as _frames

    impls: list[object] = [pytest.param(_frames.apply_mask_py, id="python")]
    try:
        from tether import _speedups
    except ImportError:
        impls.append(pytest.param(None, id="c", marks=pytest.mark.skip("C speedups not built")))
    else:
        impls.append(pytest.param(_speedups.apply_mask, id="c"))
    return impls


@pytest.mark.parametrize("impl", _mask_impls())
@pytest.mark.parametrize("size", [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 125, 126, 65536, 65537])
def test_mask_implementations_agree_with_naive(impl: Any, size: int) -> None:
    data = bytes((i * 7 + 3) % 256 for i in range(size))
    mask = b"\x12\xab\xff\x00"
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    assert impl(data, mask) == expected
    assert impl(bytearray(data), mask) == expected
    assert impl(memoryview(data), mask) == expected


def _unmask_join_impls() -> list[object]:
    from tether.protocol import frames as _frames

    impls: list[object] = [pytest.param(_frames.unmask_join_py, id="python")]
    try:
        from tether import _speedups
    except ImportError:
        impls.append(pytest.param(None, id="c", marks=pytest.mark.skip("C speedups not built")))
    else:
        impls.append(pytest.param(_speedups.unmask_join, id="c"))
    return impls


@pytest.mark.parametrize("impl", _unmask_join_impls())
@pytest.mark.parametrize(
    "sizes", [[], [0], [1], [3, 5, 7], [100, 1, 2, 3, 1000], [8, 8], [13, 0, 17], [65537, 3]]
)
def test_unmask_join_is_join_then_mask(impl: Any, sizes: list[int]) -> None:
    # The mask's phase runs on across parts of any length, aligned or not.
    parts = [bytes((i * 11 + n) % 256 for i in range(n)) for n in sizes]
    mask = b"\x12\xab\xff\x00"
    joined = b"".join(parts)
    expected = bytes(b ^ mask[i % 4] for i, b in enumerate(joined))
    assert impl(parts, mask) == expected
    assert impl([memoryview(p) for p in parts], mask) == expected
    assert impl(tuple(bytearray(p) for p in parts), mask) == expected


def test_unmask_join_rejects_bad_arguments() -> None:
    try:
        from tether import _speedups
    except ImportError:
        pytest.skip("C speedups not built")
    with pytest.raises(ValueError, match="4 bytes"):
        _speedups.unmask_join([b"abc"], b"\x00")
    with pytest.raises(TypeError):
        _speedups.unmask_join([b"abc", "text"], b"\x00\x00\x00\x00")
    with pytest.raises(TypeError):
        _speedups.unmask_join(42, b"\x00\x00\x00\x00")  # type: ignore[arg-type]
