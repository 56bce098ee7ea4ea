"""The RFC 6455 data-transfer and closing state machine, sans I/O.

Strategy: :meth:`Protocol.receive_data` is fed whatever bytes arrive. It parses every
complete frame in them at once (the hot path: one header parse on the buffer, one
unmask of the whole payload, one UTF-8 decode) and appends the resulting events to
:attr:`Protocol.events`. A data frame whose payload is still incomplete is consumed
piece by piece instead of being buffered whole, so that invalid UTF-8 is detected as
soon as it arrives (fail fast) and ``max_size`` is enforced from the frame header,
before any payload is stored. Control frames (at most 125 bytes) are always parsed
whole.

The core does what the RFC requires by itself: it answers pings with pongs and close
frames with close frames, queueing those bytes for :meth:`Protocol.data_to_send`.
Feeding it bytes never raises: a peer's violation fails the connection (a close frame
with the right code is queued and :attr:`Protocol.exc` keeps the reason). Sending
methods return the bytes to write; they raise only for local misuse.
"""

from __future__ import annotations

import codecs
import enum
import os
import struct
from collections import deque
from collections.abc import Callable
from typing import Protocol as TypingProtocol

from ..exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
    PayloadTooBig,
    ProtocolError,
)
from .frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    apply_mask,
    build_header,
    parse_simple,
    unmask_join,
)

__all__ = [
    "Codec",
    "Ping",
    "Pong",
    "Protocol",
    "Side",
    "State",
]

_unpack_u16 = struct.Struct("!H").unpack_from
_unpack_u64 = struct.Struct("!Q").unpack_from
_urandom = os.urandom
MASK_POOL = 256  # bytes of os.urandom drawn at a time for client masks (64 masks)
LARGE_PAYLOAD = 256 * 1024
_pack_h8 = struct.Struct("!BB").pack
"""Payloads from this size on are returned apart from their frame header by
:meth:`Protocol.send_message_parts` (a server's, uncompressed): joining them would copy
more than an extra write costs."""
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")
#: Close codes that make a closure normal (ConnectionClosedOK) when both sides used one.
OK_CLOSE_CODES = frozenset((1000, 1001, 1005))


class Side(enum.IntEnum):
    """Which end of the connection this is."""

    SERVER = 0
    CLIENT = 1


class State(enum.IntEnum):
    """Connection state, with the names of RFC 6455."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class Ping:
    """Event: a ping was received (the pong is already queued)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Ping({self.data!r})"


class Pong:
    """Event: a pong was received."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Pong({self.data!r})"


Event = Ping | Pong | Close
"""What :attr:`Protocol.events` holds: the control frames received."""


class Codec(TypingProtocol):
    """A per-message extension codec (permessage-deflate) negotiated for a connection.

    ``decode`` is called with successive pieces of a message's payload that arrived with
    RSV1 set; it returns the decoded bytes so far and raises :class:`ProtocolError` (or
    :class:`PayloadTooBig` when more than ``max_length`` bytes would come out).
    """

    def decode(self, data: bytes, final: bool, max_length: int | None) -> bytes: ...

    def encode(self, data: bytes, final: bool) -> bytes: ...

    def should_compress(self, size: int) -> bool: ...


Tracer = Callable[[str, int, bool, int, bytes], None]
"""``tracer(direction, opcode, fin, length, head)``: called for each frame in/out."""


class Protocol:
    """WebSocket connection state machine for one side, in the OPEN state at creation.

    ``max_size`` bounds each whole message (after decompression); ``None`` disables it.
    ``codec`` is the negotiated permessage-deflate codec, if any.
    """

    __slots__ = (
        "_buf",
        "_codec",
        "_decoder",
        "_frame_fin",
        "_frame_left",
        "_frame_mask",
        "_frame_raw",
        "_mask_out",
        "_mask_pool",
        "_mask_pos",
        "_masked_in",
        "_msg_compressed",
        "_msg_opcode",
        "_msg_parts",
        "_msg_size",
        "_out",
        "_send_opcode",
        "_stopped",
        "close_rcvd",
        "close_rcvd_then_sent",
        "close_sent",
        "eof_rcvd",
        "events",
        "exc",
        "max_size",
        "messages",
        "pending_close",
        "side",
        "state",
        "tracer",
    )

    def __init__(
        self,
        side: Side,
        *,
        max_size: int | None = 2**20,
        codec: Codec | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        self.side = side
        self.state = State.OPEN
        self.max_size = max_size
        self.tracer = tracer
        self._codec = codec
        # RFC 6455 5.1: a client masks all frames it sends, a server none.
        self._mask_out = side is Side.CLIENT
        # Client masks are drawn from os.urandom in batches (one system call per 64).
        self._mask_pool = b""
        self._mask_pos = MASK_POOL
        self._masked_in = side is Side.SERVER
        self._buf = b""  # an incomplete frame header or control frame
        self._out: list[bytes] = []
        #: messages received, in order: ``str`` for text, ``bytes`` for binary. The
        #: driver pops them from the left; the core only appends.
        self.messages: deque[str | bytes] = deque()
        #: control frames received (pings, pongs, close), for the driver
        self.events: list[Event] = []
        #: the protocol error that made this side fail the connection, if any
        self.exc: ProtocolError | None = None
        #: close frame of a failure, held until earlier messages are read (see _fail)
        self.pending_close: Close | None = None
        self.close_rcvd: Close | None = None
        self.close_sent: Close | None = None
        self.close_rcvd_then_sent: bool | None = None
        self.eof_rcvd = False
        # True once no more input is parsed (close received, or connection failed).
        self._stopped = False
        # Message being reassembled: opcode (0 if none), parts, size so far.
        self._msg_opcode = 0
        self._msg_parts: list[bytes] | list[str] = []
        self._msg_size = 0
        self._msg_compressed = False
        self._decoder: codecs.IncrementalDecoder | None = None
        # Data frame being consumed piece by piece: bytes left, mask (rotated), fin.
        self._frame_left = 0
        self._frame_mask: bytes | None = None
        self._frame_fin = False
        # The frame is a whole binary message: its chunks are kept as received and
        # unmasked and joined in one pass at the end.
        self._frame_raw = False
        # Opcode of the fragmented message being sent (0 if none).
        self._send_opcode = 0

    # ------------------------------------------------------------------ receiving

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes received from the network.

        Messages go to :attr:`messages`, control frames to :attr:`events`, bytes the
        protocol must send in answer (pongs, close frames) to :meth:`data_to_send`.
        """
        if self._stopped:
            return
        if type(data) is not bytes:
            data = bytes(data)
        # Frames are parsed straight out of ``data``: each payload is copied once (and
        # unmasked in the same pass). Only an incomplete header or control frame is
        # kept over to the next call (``_buf``, at most 139 bytes); the payload of an
        # incomplete data frame is consumed as it comes (``_frame_left``).
        pos = 0
        end = len(data)
        if self._frame_left:
            left = self._frame_left
            if end <= left:
                self._consume_payload(data)
                return
            self._consume_payload(memoryview(data)[:left])
            if self._stopped:
                return
            pos = left
        elif self._buf:
            data = self._buf + data
            end = len(data)
            self._buf = b""
        masked_in = self._masked_in
        view: memoryview | None = None
        fast = parse_simple if self.tracer is None else None
        if fast is not None:
            max_size = -1 if self.max_size is None else self.max_size
            append = self.messages.append
        while end - pos >= 2:
            if fast is not None and not self._msg_opcode:
                # Whole unfragmented text and binary frames, in C; this loop takes
                # every other frame, and is the twin of that C code for these.
                pos = fast(data, pos, masked_in, max_size, append)
                if end - pos < 2:
                    break
            b0 = data[pos]
            b1 = data[pos + 1]
            length = b1 & 0x7F
            hlen = 2
            if length == 126:
                if end - pos < 4:
                    break
                (length,) = _unpack_u16(data, pos + 2)
                hlen = 4
            elif length == 127:
                if end - pos < 10:
                    break
                (length,) = _unpack_u64(data, pos + 2)
                hlen = 10
            if b1 & 0x80:
                if not masked_in:
                    # RFC 6455 5.1: "A client MUST close a connection if it detects
                    # a masked frame."
                    return self._fail(1002, "received a masked frame from the server")
                hlen += 4
            elif masked_in:
                # RFC 6455 5.1: "The server MUST close the connection upon
                # receiving a frame that is not masked."
                return self._fail(1002, "received an unmasked frame from the client")
            opcode = b0 & 0x0F
            if b0 & 0x70 and not self._check_rsv(b0, opcode):
                return
            fin = b0 & 0x80
            start = pos + hlen
            if opcode >= 8:
                if not self._check_control(opcode, fin, length):
                    return
                if end - start < length:
                    break
                if masked_in:
                    payload = apply_mask(data[start : start + length], data[start - 4 : start])
                else:
                    payload = data[start : start + length]
                pos = start + length
                if self.tracer is not None:
                    self.tracer("<", opcode, True, length, payload[:64])
                self._handle_control(opcode, payload)
                if self._stopped:
                    return
                continue
            if not self._check_data(opcode, length, bool(b0 & 0x40)):
                return
            if end - start < length:
                if end < start:
                    break
                # Incomplete payload: consume what is there and keep the frame's state,
                # so UTF-8 errors surface now and nothing big is buffered.
                mask = data[start - 4 : start] if masked_in else None
                self._start_partial(opcode, bool(fin), bool(b0 & 0x40), length, mask)
                if end > start:
                    self._consume_payload(memoryview(data)[start:])
                return
            if masked_in:
                if view is None:
                    view = memoryview(data)
                payload = apply_mask(view[start : start + length], data[start - 4 : start])
            else:
                payload = data[start : start + length]
            pos = start + length
            if self.tracer is not None:
                self.tracer("<", opcode, bool(fin), length, payload[:64])
            if opcode and fin and not b0 & 0x40:
                # Hot path: a whole unfragmented uncompressed message.
                if opcode == OP_TEXT:
                    try:
                        self.messages.append(payload.decode("utf-8"))
                    except UnicodeDecodeError as exc:
                        self._fail(1007, f"invalid UTF-8 in text message: {exc.reason}")
                        return
                else:
                    self.messages.append(payload)
                continue
            if opcode:
                self._msg_opcode = opcode
                self._msg_compressed = bool(b0 & 0x40)
            self._message_data(payload, bool(fin))
            if self._stopped:
                return
        if pos < end:
            self._buf = data[pos:]

    def receive_buffer(self, buffer: memoryview, nbytes: int) -> None:
        """Feed the first ``nbytes`` of ``buffer``, a buffer the caller reads into again.

        The same as ``receive_data(buffer[:nbytes].tobytes())``, with one copy less:
        whole messages are taken straight out of ``buffer`` (by the C hot path, when
        it is built); only the rest is copied. Nothing keeps a reference to ``buffer``.
        """
        fast = parse_simple
        if (
            fast is None
            or self.tracer is not None
            or self._stopped
            or self._frame_left
            or self._buf
            or self._msg_opcode
        ):
            self.receive_data(buffer[:nbytes].tobytes())
            return
        pos = fast(
            buffer, 0, self._masked_in, -1 if self.max_size is None else self.max_size,
            self.messages.append, nbytes,
        )
        if pos < nbytes:
            self.receive_data(buffer[pos:nbytes].tobytes())

    def receive_eof(self) -> None:
        """Signal that the peer closed its side of the TCP connection."""
        self.eof_rcvd = True
        self.state = State.CLOSED
        self._stopped = True
        self._buf = b""

    def data_to_send(self) -> list[bytes]:
        """Return and forget the bytes the protocol wants written (pongs, close frames)."""
        out = self._out
        if out:
            self._out = []
        return out

    def close_expected(self) -> bool:
        """Tell whether this side should now close (half-close) the TCP connection.

        RFC 6455 7.1.1: the server closes the TCP connection first once the closing
        handshake is done; either side closes it after failing the connection. A
        client otherwise waits for the server to close, with a timeout.
        """
        if self.exc is not None and self.close_sent is not None:
            return True
        if self.close_rcvd is None or self.close_sent is None:
            return False
        return self.side is Side.SERVER

    def _check_rsv(self, b0: int, opcode: int) -> bool:
        if b0 & 0x30:
            self._fail(1002, "RSV2 or RSV3 bit set without a negotiated extension")
            return False
        if self._codec is None:
            self._fail(1002, "RSV1 bit set but no extension was negotiated")
            return False
        # RFC 7692 6: RSV1 marks the first frame of a compressed message only.
        if opcode >= 8 or opcode == OP_CONT:
            self._fail(1002, "RSV1 bit set on a control or continuation frame")
            return False
        return True

    def _check_control(self, opcode: int, fin: int, length: int) -> bool:
        if opcode > OP_PONG:
            self._fail(1002, f"reserved opcode {opcode:#x}")
            return False
        # RFC 6455 5.5: "All control frames MUST have a payload length of 125 bytes
        # or less and MUST NOT be fragmented."
        if length > 125:
            self._fail(1002, "control frame payload longer than 125 bytes")
            return False
        if not fin:
            self._fail(1002, "fragmented control frame")
            return False
        return True

    def _check_data(self, opcode: int, length: int, rsv1: bool) -> bool:
        if opcode > OP_BINARY:
            self._fail(1002, f"reserved opcode {opcode:#x}")
            return False
        if opcode == OP_CONT:
            if not self._msg_opcode:
                self._fail(1002, "continuation frame without a message to continue")
                return False
        elif self._msg_opcode:
            self._fail(1002, "new data frame while a fragmented message is unfinished")
            return False
        max_size = self.max_size
        if max_size is not None and not (rsv1 or (self._msg_compressed and opcode == OP_CONT)):
            size = (self._msg_size if opcode == OP_CONT else 0) + length
            if size > max_size:
                self._fail(
                    1009,
                    f"message of {size:,} bytes or more exceeds max_size={max_size:,}; "
                    "raise max_size or send smaller messages",
                )
                return False
        return True

    def _start_partial(
        self, opcode: int, fin: bool, rsv1: bool, length: int, mask: bytes | None
    ) -> None:
        if opcode:
            self._msg_opcode = opcode
            self._msg_compressed = rsv1
        self._frame_left = length
        self._frame_mask = mask
        self._frame_fin = fin
        self._frame_raw = opcode == OP_BINARY and fin and not rsv1
        if self.tracer is not None:
            self.tracer("<", opcode, fin, length, b"")

    def _consume_payload(self, chunk: bytes | memoryview) -> None:
        """Unmask and take in the next bytes of the current frame's payload."""
        n = len(chunk)
        mask = self._frame_mask
        if self._frame_raw:
            parts: list[bytes | memoryview] = self._msg_parts  # type: ignore[assignment]
            parts.append(chunk)
            self._frame_left -= n
            if not self._frame_left:
                self._frame_raw = False
                self._deliver(unmask_join(parts, mask) if mask is not None else b"".join(parts))
            return
        if mask is not None:
            chunk = apply_mask(chunk, mask)
            r = n & 3
            if r:
                self._frame_mask = mask[r:] + mask[:r]
        elif type(chunk) is not bytes:
            chunk = bytes(chunk)
        self._frame_left -= n
        self._message_data(chunk, self._frame_fin and not self._frame_left)

    def _message_data(self, data: bytes, final: bool) -> None:
        """Add a piece of the current message's payload; deliver it when ``final``."""
        max_size = self.max_size
        if self._msg_compressed:
            codec = self._codec
            assert codec is not None
            limit = None if max_size is None else max_size - self._msg_size
            try:
                data = codec.decode(data, final, limit)
            except ProtocolError as exc:
                self._fail(exc.code, str(exc))
                return
            self._msg_size += len(data)
        else:
            self._msg_size += len(data)
        parts = self._msg_parts
        if self._msg_opcode == OP_TEXT:
            decoder = self._decoder
            if decoder is None:
                if final and not parts:
                    try:
                        text = data.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        self._fail(1007, f"invalid UTF-8 in text message: {exc.reason}")
                        return
                    self._deliver(text)
                    return
                decoder = self._decoder = _Utf8Decoder()
            try:
                piece = decoder.decode(data, final)
            except UnicodeDecodeError as exc:
                self._fail(1007, f"invalid UTF-8 in text message: {exc.reason}")
                return
            if piece:
                parts.append(piece)  # type: ignore[arg-type]
            if final:
                self._decoder = None
                self._deliver("".join(parts))  # type: ignore[arg-type]
        else:
            if data:
                parts.append(data)  # type: ignore[arg-type]
            if final:
                self._deliver(b"".join(parts))  # type: ignore[arg-type]

    def _deliver(self, message: str | bytes) -> None:
        self.messages.append(message)
        self._msg_opcode = 0
        self._msg_parts = []
        self._msg_size = 0
        self._msg_compressed = False

    def _handle_control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            self.events.append(Ping(payload))
            # RFC 6455 5.5.2: "Upon receipt of a Ping frame, an endpoint MUST send a
            # Pong frame in response, unless it already received a Close frame." No
            # frame is parsed after a close frame, so a ping here is always answered,
            # also after sending a close frame (only data frames are banned then).
            self._out.append(self._frame(OP_PONG, payload, True))
        elif opcode == OP_PONG:
            self.events.append(Pong(payload))
        else:
            self._receive_close(payload)

    def _receive_close(self, payload: bytes) -> None:
        try:
            close = Close.parse(payload)
        except ProtocolError as exc:
            self._fail(exc.code, str(exc))
            return
        self.close_rcvd = close
        self._stopped = True
        self.state = State.CLOSING
        self.events.append(close)
        if self.close_sent is None:
            # RFC 6455 5.5.1: reply with a close frame, "typically echoing the status
            # code it received".
            self.close_rcvd_then_sent = True
            self._queue_close(Close(close.code, ""))
        elif self.close_rcvd_then_sent is None:
            self.close_rcvd_then_sent = False

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): send a close frame, stop reading.

        When messages received before the offending frame are still waiting to be
        read, the close frame is held back in :attr:`pending_close` until the driver
        calls :meth:`fail_now` (once the application has read them, or after a grace
        period): the application can still answer what the peer sent correctly.
        """
        self.exc = PayloadTooBig(reason) if code == 1009 else ProtocolError(reason, code)
        self._stopped = True
        self._buf = b""
        self._msg_parts = []
        self._decoder = None
        if self.close_sent is None and self.state is State.OPEN:
            # The reason on the wire is capped at 123 bytes (RFC 6455 5.5).
            wire_reason = reason.encode("utf-8")[:123].decode("utf-8", "ignore")
            self.pending_close = Close(code, wire_reason)
            if not self.messages:
                self.fail_now()

    def fail_now(self) -> None:
        """Send the close frame of a failure held back by :meth:`_fail`, if any."""
        close = self.pending_close
        if close is not None:
            self.pending_close = None
            if self.close_sent is None and self.state is State.OPEN:
                self._queue_close(close)
            self.state = State.CLOSING

    def _queue_close(self, close: Close) -> None:
        self.close_sent = close
        self.state = State.CLOSING
        self._out.append(self._frame(OP_CLOSE, close.serialize(), True))

    def closed_ok(self) -> bool:
        """Whether close frames with 1000/1001/1005 went both ways (see :meth:`closed_exc`)."""
        rcvd, sent = self.close_rcvd, self.close_sent
        return (rcvd is not None and sent is not None
                and rcvd.code in OK_CLOSE_CODES and sent.code in OK_CLOSE_CODES)

    def closed_exc(self, lost: BaseException | None = None) -> ConnectionClosed:
        """The exception that tells the application how the connection ended.

        :class:`ConnectionClosedOK` when close frames with 1000/1001/1005 went both
        ways, :class:`ConnectionClosedError` otherwise (1006 without a close frame).
        Its cause is the protocol error that failed the connection, or ``lost``, the
        driver's error that ended the TCP connection.
        """
        rcvd, sent = self.close_rcvd, self.close_sent
        code = rcvd.code if rcvd is not None else 1006
        reason = rcvd.reason if rcvd is not None else ""
        cls = ConnectionClosedOK if self.closed_ok() else ConnectionClosedError
        exc = cls(
            code, reason,
            sent_code=sent.code if sent is not None else None,
            sent_reason=sent.reason if sent is not None else "",
            rcvd_then_sent=self.close_rcvd_then_sent,
        )
        if self.exc is not None:
            exc.__cause__ = self.exc
        elif lost is not None:
            exc.__cause__ = lost
        return exc

    # -------------------------------------------------------------------- sending

    def _frame(self, opcode: int, payload: bytes, fin: bool, rsv1: bool = False) -> bytes:
        if self.tracer is not None:
            self.tracer(">", opcode, fin, len(payload), payload[:64])
        if self._mask_out:
            pos = self._mask_pos
            if pos >= MASK_POOL:
                self._mask_pool = _urandom(MASK_POOL)
                pos = 0
            self._mask_pos = pos + 4
            key = self._mask_pool[pos : pos + 4]
            return apply_mask(payload, key, build_header(opcode, len(payload), fin, rsv1, key))
        return build_header(opcode, len(payload), fin, rsv1) + payload

    def _check_can_send(self) -> None:
        if self.state is not State.OPEN:
            raise InvalidState(
                f"cannot send a message: the connection is {self.state.name}"
            )

    def send_message(self, message: str | bytes | bytearray | memoryview) -> bytes:
        """Return the frame(s) for a whole message: ``str`` is text, bytes-like binary."""
        if self.state is not State.OPEN or self._send_opcode:
            self._check_can_send()
            raise InvalidState("cannot send a message while a fragmented message is being sent")
        if type(message) is str:
            opcode = OP_TEXT
            payload: bytes = message.encode("utf-8")
        elif isinstance(message, (bytes, bytearray, memoryview)):
            opcode = OP_BINARY
            payload = bytes(message) if type(message) is not bytes else message
        else:
            raise TypeError(
                f"message must be str or bytes-like, not {type(message).__name__}"
            )
        codec = self._codec
        if codec is not None and codec.should_compress(len(payload)):
            return self._frame(opcode, codec.encode(payload, True), True, True)
        if self.tracer is not None or self._mask_out:
            return self._frame(opcode, payload, True)
        # Hot path for servers: header and payload, no copy beyond the concatenation.
        n = len(payload)
        if n < 126:
            return _pack_h8(0x80 | opcode, n) + payload
        return build_header(opcode, n, True) + payload

    def send_message_parts(
        self, message: str | bytes | bytearray | memoryview
    ) -> tuple[bytes, bytes]:
        """Like :meth:`send_message`, as ``(head, tail)`` to write one after the other.

        For a large (:data:`LARGE_PAYLOAD`) uncompressed message sent unmasked (by a
        server), ``head`` is the frame header and ``tail`` the payload itself, not
        copied; otherwise ``head`` is the whole frame and ``tail`` is ``b""``.
        """
        if (
            len(message) >= LARGE_PAYLOAD
            and not self._mask_out
            and self.tracer is None
            and self.state is State.OPEN
            and not self._send_opcode
        ):
            if type(message) is str:
                opcode = OP_TEXT
                payload = message.encode("utf-8")
            elif type(message) is bytes:
                opcode = OP_BINARY
                payload = message
            else:
                return self.send_message(message), b""
            codec = self._codec
            if codec is None or not codec.should_compress(len(payload)):
                return build_header(opcode, len(payload), True), payload
            return self._frame(opcode, codec.encode(payload, True), True, True), b""
        return self.send_message(message), b""

    def send_fragment(self, data: str | bytes | bytearray | memoryview, fin: bool) -> bytes:
        """Return a frame for one fragment of a message sent in pieces.

        The first fragment's type (``str`` or bytes-like) sets the message type; the
        others must match. ``fin=True`` ends the message.
        """
        self._check_can_send()
        is_text = type(data) is str
        payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if self._send_opcode:
            if is_text != (self._send_opcode == OP_TEXT):
                raise TypeError("all fragments of a message must be str, or all bytes-like")
            opcode = OP_CONT
        else:
            opcode = OP_TEXT if is_text else OP_BINARY
            self._send_opcode = opcode
        if fin:
            self._send_opcode = 0
        codec = self._codec
        if codec is not None:
            rsv1 = opcode != OP_CONT
            return self._frame(opcode, codec.encode(payload, fin), fin, rsv1)
        return self._frame(opcode, payload, fin)

    def send_ping(self, data: bytes = b"") -> bytes:
        """Return a ping frame."""
        self._check_can_send()
        if len(data) > 125:
            raise ValueError("ping payload must be 125 bytes or less")
        return self._frame(OP_PING, data, True)

    def send_pong(self, data: bytes = b"") -> bytes:
        """Return an unsolicited pong frame."""
        self._check_can_send()
        if len(data) > 125:
            raise ValueError("pong payload must be 125 bytes or less")
        return self._frame(OP_PONG, data, True)

    def send_close(self, code: int = 1000, reason: str = "") -> bytes:
        """Start the closing handshake; return the close frame (``b""`` if already sent).

        ``code`` 1005 sends a close frame without a status code.
        """
        close = Close(code, reason)
        close.check()
        if self.pending_close is not None:
            # The connection already failed: close with the failure's code.
            close = self.pending_close
            self.pending_close = None
        if self.close_sent is not None or self.state is State.CLOSED:
            return b""
        self._queue_close(close)
        if self.close_rcvd is None:
            self.close_rcvd_then_sent = False
        out = self._out
        self._out = []
        return b"".join(out)
