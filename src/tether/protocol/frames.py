"""RFC 6455 section 5: frame headers, masking and close-frame payloads.

This module holds the wire format only. The stateful parser that turns a byte stream
into messages lives in :mod:`tether.protocol.connection`, which inlines the header
parse on its hot path; :func:`parse_frame` here is the readable reference version the
tests compare it with.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol

from ..exceptions import ProtocolError

__all__ = [
    "CLOSE_CODES_NOT_SENT",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Close",
    "Frame",
    "apply_mask",
    "apply_mask_py",
    "build_frame",
    "build_header",
    "check_close_code",
    "parse_frame",
    "parse_simple",
    "unmask_join",
    "unmask_join_py",
]

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

DATA_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY))
CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

# RFC 6455 7.4.1: 1005, 1006 and 1015 "MUST NOT be set as a status code in a
# Close control frame by an endpoint".
CLOSE_CODES_NOT_SENT = frozenset((1005, 1006, 1015))

_pack_h16 = struct.Struct("!BBH").pack
_pack_h64 = struct.Struct("!BBQ").pack
_unpack_close = struct.Struct("!H").unpack_from


def apply_mask_py(
    data: bytes | bytearray | memoryview, mask: bytes, prefix: bytes = b"", /
) -> bytes:
    """XOR ``data`` with the 4-byte ``mask`` repeated (RFC 6455 5.3), in pure Python;
    return it after ``prefix`` (a frame header: the C twin builds both in one copy).

    Works on the whole payload at once through Python's arbitrary-size integers,
    never with a Python-level loop over bytes. The twin of the C version in
    ``tether._speedups``, used when that is not built.
    """
    if len(mask) != 4:
        raise ValueError("mask must be 4 bytes long")
    n = len(data)
    if n == 0:
        return bytes(prefix)
    key = (mask * ((n >> 2) + 1))[:n]
    masked = (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(
        n, "little"
    )
    return prefix + masked if prefix else masked


def unmask_join_py(parts: Sequence[bytes | bytearray | memoryview], mask: bytes) -> bytes:
    """Join ``parts`` and XOR the result with ``mask`` as one payload, in pure Python.

    The twin of the C version, which does both in one pass over the data.
    """
    return apply_mask_py(b"".join(parts), mask)


class _ApplyMask(TypingProtocol):
    def __call__(
        self, data: bytes | bytearray | memoryview, mask: bytes, prefix: bytes = b"", /
    ) -> bytes: ...


#: The C hot path of ``Protocol.receive_data`` (whole unfragmented text and binary
#: frames), or ``None``: its pure-Python twin is the general frame loop there.
class ParseSimple(TypingProtocol):
    def __call__(
        self,
        data: bytes | bytearray | memoryview,
        pos: int,
        masked: bool,
        max_size: int,
        append: Callable[[Any], None],
        end: int = ...,
        /,
    ) -> int: ...


parse_simple: ParseSimple | None = None

apply_mask: _ApplyMask = apply_mask_py
unmask_join: Callable[[Sequence[bytes | bytearray | memoryview], bytes], bytes] = unmask_join_py
if os.environ.get("TETHER_NO_SPEEDUPS") != "1":
    try:
        from .._speedups import (  # type: ignore[no-redef,unused-ignore]
            apply_mask,
            parse_simple,
            unmask_join,
        )
    except ImportError:  # not built: no C compiler, or a platform without it
        pass


def build_header(opcode: int, length: int, fin: bool = True, rsv1: bool = False,
                 mask: bytes | None = None) -> bytes:
    """Serialise a frame header (RFC 6455 5.2) for a payload of ``length`` bytes."""
    b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    mbit = 0x80 if mask is not None else 0
    if length < 126:
        header = bytes((b0, mbit | length))
    elif length < 65536:
        header = _pack_h16(b0, mbit | 126, length)
    else:
        header = _pack_h64(b0, mbit | 127, length)
    if mask is not None:
        header += mask
    return header


def build_frame(opcode: int, payload: bytes | bytearray | memoryview, fin: bool = True,
                mask: bool = False, rsv1: bool = False) -> bytes:
    """Serialise a whole frame; a client (``mask=True``) masks with a fresh random key."""
    if mask:
        key = os.urandom(4)
        return build_header(opcode, len(payload), fin, rsv1, key) + apply_mask(payload, key)
    return build_header(opcode, len(payload), fin, rsv1) + payload


@dataclass(frozen=True, slots=True)
class Frame:
    """One WebSocket frame, unmasked."""

    opcode: int
    data: bytes
    fin: bool = True
    rsv1: bool = False
    rsv2: bool = False
    rsv3: bool = False

    def serialize(self, mask: bytes | None = None) -> bytes:
        """Serialise this frame, masked with ``mask`` when given."""
        b0 = (
            self.opcode
            | (0x80 if self.fin else 0)
            | (0x40 if self.rsv1 else 0)
            | (0x20 if self.rsv2 else 0)
            | (0x10 if self.rsv3 else 0)
        )
        header = bytearray(build_header(0, len(self.data), True, False, mask))
        header[0] = b0
        payload = self.data if mask is None else apply_mask(self.data, mask)
        return bytes(header) + payload


def parse_frame(data: bytes) -> tuple[Frame, bool, int] | None:
    """Parse one frame from the start of ``data``.

    Returns ``(frame, masked, consumed)`` or ``None`` when ``data`` holds less than a
    whole frame. Only the wire format is checked here, not protocol rules.
    """
    if len(data) < 2:
        return None
    b0, b1 = data[0], data[1]
    length = b1 & 0x7F
    pos = 2
    if length == 126:
        if len(data) < 4:
            return None
        length = int.from_bytes(data[2:4], "big")
        pos = 4
    elif length == 127:
        if len(data) < 10:
            return None
        length = int.from_bytes(data[2:10], "big")
        pos = 10
    masked = bool(b1 & 0x80)
    mask = b""
    if masked:
        if len(data) < pos + 4:
            return None
        mask = bytes(data[pos : pos + 4])
        pos += 4
    if len(data) < pos + length:
        return None
    payload = bytes(data[pos : pos + length])
    if masked:
        payload = apply_mask(payload, mask)
    frame = Frame(
        b0 & 0x0F, payload, bool(b0 & 0x80), bool(b0 & 0x40), bool(b0 & 0x20), bool(b0 & 0x10)
    )
    return frame, masked, pos + length


def check_close_code(code: int) -> bool:
    """Tell whether ``code`` may appear in a close frame on the wire (RFC 6455 7.4)."""
    return (1000 <= code <= 1014 and code not in (1004, 1005, 1006)) or 3000 <= code <= 4999


@dataclass(frozen=True, slots=True)
class Close:
    """The payload of a close frame: a status code and a reason.

    ``code`` 1005 stands for a close frame without a payload.
    """

    code: int = 1005
    reason: str = ""

    @classmethod
    def parse(cls, data: bytes) -> Close:
        """Parse a close frame payload, raising :class:`ProtocolError` when invalid."""
        if len(data) == 0:
            return cls(1005, "")
        if len(data) == 1:
            # RFC 6455 5.5.1: a body "MUST start with a two-byte unsigned integer".
            raise ProtocolError("close frame with a 1-byte payload", 1002)
        (code,) = _unpack_close(data)
        if not check_close_code(code):
            raise ProtocolError(f"close frame with invalid close code {code}", 1002)
        try:
            reason = data[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("close frame reason is not valid UTF-8", 1007) from None
        return cls(code, reason)

    def serialize(self) -> bytes:
        """Serialise this close payload; code 1005 gives an empty payload."""
        if self.code == 1005:
            return b""
        return struct.pack("!H", self.code) + self.reason.encode("utf-8")

    def check(self) -> None:
        """Raise :class:`ValueError` when this close frame may not be sent."""
        if self.code == 1005:
            if self.reason:
                raise ValueError("a close reason requires a close code")
            return
        if not check_close_code(self.code) or self.code in CLOSE_CODES_NOT_SENT:
            raise ValueError(
                f"close code {self.code} may not be sent; use 1000 (normal), 1001 (going "
                "away), another code from RFC 6455 7.4.1, or an application code 3000-4999"
            )
        if len(self.reason.encode("utf-8")) > 123:
            raise ValueError("close reason is longer than 123 bytes once encoded in UTF-8")
