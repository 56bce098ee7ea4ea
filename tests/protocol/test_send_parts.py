"""Protocol.send_message_parts: large payloads apart from their header, never altered."""

from __future__ import annotations

import pytest

from tether.protocol.connection import LARGE_PAYLOAD, MASK_POOL, Protocol, Side
from tether.protocol.deflate import PerMessageDeflate
from tether.protocol.frames import OP_BINARY, OP_TEXT, build_header, parse_frame

SIZES = [0, 1, 125, 126, 65536, LARGE_PAYLOAD - 1, LARGE_PAYLOAD, LARGE_PAYLOAD + 3]
SIZES += [2 * LARGE_PAYLOAD]


def _codec() -> PerMessageDeflate:
    return PerMessageDeflate(
        remote_no_context_takeover=False,
        local_no_context_takeover=False,
        remote_max_window_bits=15,
        local_max_window_bits=15,
    )


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["bytes", "str", "bytearray", "memoryview"])
def test_server_parts_make_the_frame_send_message_makes(size: int, kind: str) -> None:
    payload = bytes(i % 251 for i in range(size))
    message: str | bytes | bytearray | memoryview = {
        "bytes": payload,
        "str": "é" * (size // 2) + "a" * (size % 2),
        "bytearray": bytearray(payload),
        "memoryview": memoryview(payload),
    }[kind]
    head, tail = Protocol(Side.SERVER).send_message_parts(message)
    assert head + tail == Protocol(Side.SERVER).send_message(message)
    encoded_size = size if kind != "str" else len(message.encode())  # type: ignore[union-attr]
    # str: decided on its length in characters (a lower bound of its UTF-8 size)
    if kind in ("bytes", "str") and len(message) >= LARGE_PAYLOAD:
        opcode = OP_TEXT if kind == "str" else OP_BINARY
        assert head == build_header(opcode, encoded_size, True)
        if kind == "bytes":
            assert tail is message  # not copied
    else:
        assert tail == b""


def test_client_parts_are_one_masked_frame() -> None:
    proto = Protocol(Side.CLIENT)
    payload = b"x" * (LARGE_PAYLOAD + 1)
    head, tail = proto.send_message_parts(payload)
    assert tail == b""
    parsed = parse_frame(head)
    assert parsed is not None
    frame, masked, consumed = parsed
    assert masked and consumed == len(head) and frame.data == payload


def test_compressed_large_message_is_one_frame() -> None:
    proto = Protocol(Side.SERVER, codec=_codec())
    head, tail = proto.send_message_parts(b"a" * LARGE_PAYLOAD)
    assert tail == b""
    assert head[0] == 0x80 | 0x40 | OP_BINARY  # FIN, RSV1: compressed
    assert len(head) < LARGE_PAYLOAD // 100


def test_client_masks_differ_across_pool_refills() -> None:
    proto = Protocol(Side.CLIENT)
    masks = []
    for _ in range(3 * MASK_POOL // 4):
        frame = proto.send_message(b"abcd")
        masks.append(frame[2:6])
    # 192 masks from 3 refills of os.urandom: all different (collision odds ~2**-17)
    assert len(set(masks)) == len(masks)
