"""The asyncio driver of a WebSocket connection: an asyncio buffered protocol over the core.

Received messages go straight from the core's deque to :meth:`Connection.recv`: a
message already buffered is returned without creating a future, and a ``recv`` that
is cancelled (``asyncio.wait_for`` timing out) loses nothing because a message leaves
the deque only when it is returned. Reading stops when ``max_queue`` messages are
buffered and resumes when the user has read them down to a quarter of that.
Sending writes to the transport at once and waits only when the transport's buffer
is above ``write_limit`` (backpressure). Timers (open, close, keepalive) are loop
callbacks, not tasks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Iterable, Mapping
from typing import Any, cast

from ..exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
)
from ..protocol.connection import LARGE_PAYLOAD, Ping, Pong, Protocol, Side, State
from ..protocol.frames import Close
from ..protocol.http import Request, Response
from ._timers import Cancellable, timers_for

__all__ = ["Connection", "Data"]

Data = str | bytes
#: Seconds a failure's close frame waits for the application to read the messages
#: that arrived before the offending frame (see Protocol._fail).
FAIL_GRACE = 1.0
_DEBUG = logging.DEBUG
#: Bytes of a large payload written together with its frame header (copied once).
_FIRST_PIECE = 64 * 1024
# Round trips are timed with a fine clock: uvloop's loop.time() has 1 ms steps.
_clock = time.perf_counter
_OPCODE_NAMES = {0: "CONT", 1: "TEXT", 2: "BINARY", 8: "CLOSE", 9: "PING", 10: "PONG"}


#: Bytes asyncio may read at once into the buffer below (its own recv size).
READ_SIZE = 256 * 1024
#: Reads of at least this many bytes are parsed in the buffer, not copied out first.
_DIRECT_READ = 16 * 1024
_read_buffers = threading.local()


def _read_buffer() -> memoryview:
    """This thread's read buffer, shared by every connection of the thread's loop.

    asyncio reads into it (``recv_into``) and :meth:`Connection.buffer_updated` copies
    the bytes out at once, before anything else runs in the thread: one buffer serves
    every connection (a large read is parsed in place, see ``Protocol.receive_buffer``:
    what is kept is copied). Plain ``recv(256 KiB)`` instead allocates 256 KiB per read and
    shrinks it to what came, which glibc may serve with mmap, mremap and munmap, three
    system calls per read (a third of a small round trip's server CPU, seen in bench/).
    """
    buffer: memoryview | None = getattr(_read_buffers, "buffer", None)
    if buffer is None:
        buffer = _read_buffers.buffer = memoryview(bytearray(READ_SIZE))
    return buffer


class Connection(asyncio.BufferedProtocol):
    """One WebSocket connection, server or client side.

    Users get it as the argument of a server's handler or from ``connect()``; the
    methods they call are :meth:`recv`, :meth:`send`, :meth:`ping`, :meth:`close`,
    :meth:`wait_closed` and ``async for message in connection``.
    """

    # Slots keep an idle connection small; "__dict__" (created on first use) still lets
    # applications hang their own attributes on a connection, "__weakref__" lets them
    # keep connections in a WeakSet.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_close_handle",
        "_debug",
        "_drain_waiter",
        "_fail_handle",
        "_flush_pending",
        "_fragmenting",
        "_id",
        "_info",
        "_keepalive_handle",
        "_lost_exc",
        "_lost_waiters",
        "_open",
        "_paused_reading",
        "_paused_writing",
        "_pings",
        "_rbuf",
        "_recv_waiter",
        "_stop_handled",
        "_timers",
        "_wbuf",
        "_wbuf_size",
        "close_timeout",
        "connection_lost_waiter",
        "latency",
        "logger",
        "loop",
        "max_queue",
        "max_size",
        "ping_interval",
        "ping_timeout",
        "protocol",
        "request",
        "response",
        "subprotocol",
        "transport",
        "write_limit",
    )

    side: Side
    #: the core state machine, created when the opening handshake succeeds
    protocol: Protocol
    request: Request | None
    response: Response | None

    def __init__(
        self,
        *,
        max_size: int | None = 2**20,
        max_queue: int | None = 16,
        write_limit: int = 2**15,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float | None = 10,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self._id: uuid.UUID | None = None
        if logger is None:
            logger = logging.getLogger(
                "tether.server" if self.side is Side.SERVER else "tether.client"
            )
        self.logger = logger
        self.max_size = max_size
        self.max_queue = max_queue
        self.write_limit = write_limit
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.request = None
        self.response = None
        self.subprotocol: str | None = None
        #: round-trip time of the last ping answered, in seconds
        self.latency: float = 0.0
        self.transport: asyncio.Transport | None = None
        self._open = False
        self._recv_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused_writing = False
        self._paused_reading = False
        self._fragmenting: asyncio.Future[None] | None = None
        self._pings: dict[bytes, tuple[asyncio.Future[float], float]] = {}
        self._timers = timers_for(self.loop)
        self._rbuf = _read_buffer()
        self._keepalive_handle: Cancellable | None = None
        self._close_handle: Cancellable | None = None
        self._fail_handle: asyncio.TimerHandle | None = None
        self._stop_handled = False
        # Frames of a burst of replies, written together (see _cork).
        self._wbuf: list[bytes] = []
        self._wbuf_size = 0
        self._flush_pending = False
        self._lost_exc: BaseException | None = None
        self._lost_waiters: list[asyncio.Future[None]] | None = None
        self.connection_lost_waiter: asyncio.Future[None] = self.loop.create_future()
        self._debug = self.logger.isEnabledFor(_DEBUG)
        self._info = self.logger.isEnabledFor(logging.INFO)

    # ------------------------------------------------------------ public attributes

    @property
    def id(self) -> uuid.UUID:
        """A random UUID for this connection, in every log line about it."""
        if self._id is None:
            self._id = uuid.uuid4()
        return self._id

    @property
    def state(self) -> State:
        """CONNECTING, OPEN, CLOSING or CLOSED."""
        if not self._open:
            return State.CLOSED if self.connection_lost_waiter.done() else State.CONNECTING
        if self.connection_lost_waiter.done():
            return State.CLOSED
        return self.protocol.state

    @property
    def remote_address(self) -> Any:
        """The peer's address, as the socket gives it (``(host, port)`` for TCP)."""
        return self.transport.get_extra_info("peername") if self.transport else None

    @property
    def local_address(self) -> Any:
        """This side's address, as the socket gives it."""
        return self.transport.get_extra_info("sockname") if self.transport else None

    @property
    def close_code(self) -> int | None:
        """The code of the close frame received; 1006 if the TCP connection was lost
        without one; ``None`` while the connection is open."""
        if not self._open:
            return 1006 if self.connection_lost_waiter.done() else None
        rcvd = self.protocol.close_rcvd
        if rcvd is not None:
            return rcvd.code
        if self.connection_lost_waiter.done():
            return 1006
        return None

    @property
    def close_reason(self) -> str | None:
        """The reason of the close frame received (see :attr:`close_code`)."""
        if not self._open:
            return "" if self.connection_lost_waiter.done() else None
        rcvd = self.protocol.close_rcvd
        if rcvd is not None:
            return rcvd.reason
        return "" if self.connection_lost_waiter.done() else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.state.name}>"

    # --------------------------------------------------- asyncio.BufferedProtocol API

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Called by asyncio when the TCP (or TLS, or Unix) connection is up."""
        # uvloop's transports are not asyncio.Transport subclasses: don't check the type.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.set_write_buffer_limits(self.write_limit, self.write_limit // 4)

    def _open_protocol(self, trailing: bytes) -> None:
        """Switch to the WebSocket protocol after a successful handshake."""
        tracer = self._trace if self._debug else None
        self.protocol = Protocol(
            self.side, max_size=self.max_size, codec=self._codec(), tracer=tracer
        )
        self._open = True
        if self._debug:
            self.logger.debug("[%s] = connection is OPEN", self.id)
        if self.ping_interval is not None:
            self._keepalive_handle = self._timers.call_later(
                self.loop, self.ping_interval, self._keepalive
            )
        if trailing:
            self.data_received(trailing)

    def _codec(self) -> Any:
        return None

    def _trace(self, direction: str, opcode: int, fin: bool, length: int, head: bytes) -> None:
        name = _OPCODE_NAMES.get(opcode, hex(opcode))
        self.logger.debug(
            "[%s] %s %s%s %d bytes %r", self.id, direction, name, "" if fin else " (fin=0)",
            length, head[:32],
        )

    def _handshake_received(self, data: bytes) -> None:
        """Bytes received during the opening handshake (server or client side)."""
        raise NotImplementedError

    def get_buffer(self, sizehint: int) -> memoryview:
        """Called by asyncio for a buffer to read into: the thread's shared one."""
        return self._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        """Called by asyncio once ``nbytes`` were read into the buffer."""
        if nbytes < _DIRECT_READ or not self._open:
            self.data_received(self._rbuf[:nbytes].tobytes())
            return
        # A large read: whole messages are parsed straight out of the shared buffer,
        # without copying the read first (nothing keeps a reference to the buffer).
        self.protocol.receive_buffer(self._rbuf, nbytes)
        self._received()

    def data_received(self, data: bytes) -> None:
        """Bytes from the network (bytes that came with the handshake, for one)."""
        if not self._open:
            self._handshake_received(data)
            return
        self.protocol.receive_data(data)
        self._received()

    def _received(self) -> None:
        """After the protocol took bytes: act on its events, wake ``recv``, apply
        backpressure, write what it wants written."""
        protocol = self.protocol
        if protocol.events:
            self._handle_events()
        messages = protocol.messages
        if messages:
            waiter = self._recv_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            max_queue = self.max_queue
            if (
                max_queue is not None
                and len(messages) >= max_queue
                and not self._paused_reading
                and protocol.close_sent is None  # keep reading to see the close reply
            ):
                self._paused_reading = True
                assert self.transport is not None
                self.transport.pause_reading()
        if protocol._out or (protocol._stopped and not self._stop_handled):
            self._stop_handled = protocol._stopped
            self._after_protocol_change()

    def _handle_events(self) -> None:
        events = self.protocol.events
        self.protocol.events = []
        for event in events:
            if type(event) is Pong:
                self._pong_received(event.data)
            elif type(event) is Close:
                # A waiting recv() is not woken: it would only wait for the end of the
                # TCP connection, which wakes it.
                if self._debug:
                    self.logger.debug(
                        "[%s] < close frame received: code %d reason %r; state CLOSING",
                        self.id, event.code, event.reason,
                    )
            else:
                assert type(event) is Ping

    def _after_protocol_change(self) -> None:
        """Write what the core queued, and close the TCP connection when it is time."""
        protocol = self.protocol
        transport = self.transport
        assert transport is not None
        out = protocol.data_to_send()
        if out and not transport.is_closing():
            self._write(b"".join(out))
        if protocol.pending_close is not None:
            if self._fail_handle is None:
                if self._debug:
                    self.logger.debug(
                        "[%s] ! failing the connection once earlier messages are read: %s",
                        self.id, protocol.exc,
                    )
                self._fail_handle = self.loop.call_later(FAIL_GRACE, self._fail_now)
            return
        if protocol.exc is not None and self._debug:
            self.logger.debug("[%s] ! failing the connection: %s", self.id, protocol.exc)
        if protocol.close_sent is not None:
            self._closing_started()

    def _fail_now(self) -> None:
        """Send the close frame of a failure that waited for earlier messages."""
        if self._fail_handle is not None:
            self._fail_handle.cancel()
            self._fail_handle = None
        if self.protocol.pending_close is not None and not self.connection_lost_waiter.done():
            self.protocol.fail_now()
            self._after_protocol_change()

    def _closing_started(self) -> None:
        """The closing handshake has begun: arm the close timeout; half-close if due."""
        protocol = self.protocol
        transport = self.transport
        assert transport is not None
        if self._keepalive_handle is not None:
            self._keepalive_handle.cancel()
            self._keepalive_handle = None
        if self._wbuf:
            self._flush()
        if protocol.close_expected() and not transport.is_closing():
            if protocol.exc is None and protocol.close_rcvd is not None:
                # The closing handshake is complete and the peer sends nothing after
                # its close frame: close at once, without waiting for its EOF.
                if self._debug:
                    self.logger.debug("[%s] x closing the TCP connection", self.id)
                transport.close()
                timeout = self.close_timeout
                if (timeout is not None and self._close_handle is None
                        and transport.get_write_buffer_size()):
                    # close() waits for the buffer to drain: bound that wait.
                    self._close_handle = self._timers.call_later(
                        self.loop, timeout, self._close_timed_out
                    )
                return
            if self._debug:
                self.logger.debug("[%s] x half-closing the TCP connection", self.id)
            try:
                if transport.can_write_eof():
                    transport.write_eof()
                else:
                    transport.close()
            except OSError:  # the peer is already gone (ENOTCONN...)
                transport.close()
        if self._close_handle is None and not transport.is_closing():
            # Don't wait forever for the peer's close frame or its end of the TCP
            # connection (RFC 6455 7.1.1).
            timeout = self.close_timeout
            if timeout is not None:
                self._close_handle = self._timers.call_later(
                    self.loop, timeout, self._close_timed_out
                )
        if self._paused_reading:
            # Keep reading to see the close frame and the end of the connection.
            self._paused_reading = False
            transport.resume_reading()

    def _close_timed_out(self) -> None:
        self._close_handle = None
        if self.transport is not None and not self.transport.is_closing():
            if self._debug:
                self.logger.debug("[%s] x close timeout: aborting the TCP connection", self.id)
            self.transport.abort()
        elif self.transport is not None:
            self.transport.abort()

    def eof_received(self) -> bool | None:
        """Called by asyncio when the peer half-closes: the connection is over."""
        if self._debug:
            self.logger.debug("[%s] < EOF received", self.id)
        if self._open:
            self.protocol.receive_eof()
        return None  # asyncio closes the transport

    def connection_lost(self, exc: Exception | None) -> None:
        """Called by asyncio when the TCP connection is closed."""
        self._lost_exc = exc
        transport = self.transport
        if transport is not None and not transport.is_closing():
            # Python 3.10's SSL transport is not marked closed when the connection is
            # lost underneath it; close it so it is not reported as leaked.
            transport.close()
        if self._debug:
            how = "cleanly" if exc is None else f"with error {exc!r}"
            rcvd = self.protocol.close_rcvd if self._open else None
            sent = self.protocol.close_sent if self._open else None
            self.logger.debug(
                "[%s] = connection CLOSED %s; close frame received: %s; sent: %s",
                self.id, how,
                f"{rcvd.code} {rcvd.reason!r}" if rcvd else "none (1006)",
                f"{sent.code} {sent.reason!r}" if sent else "none",
            )
        if self._open:
            self.protocol.state = State.CLOSED
        self._wbuf.clear()
        for handle in (self._keepalive_handle, self._close_handle, self._fail_handle):
            if handle is not None:
                handle.cancel()
        self._keepalive_handle = self._close_handle = self._fail_handle = None
        if not self.connection_lost_waiter.done():
            self.connection_lost_waiter.set_result(None)
        if self._lost_waiters is not None:
            for lost in self._lost_waiters:
                if not lost.done():
                    lost.set_result(None)
            self._lost_waiters = None
        waiter = self._recv_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._pings:
            closed = self._closed_exc()
            for fut, _ in self._pings.values():
                if not fut.done():
                    fut.set_exception(closed)
                    # Don't warn "exception never retrieved" for pings nobody awaits.
                    fut.exception()
            self._pings.clear()

    def pause_writing(self) -> None:
        """Called by asyncio when the write buffer is above ``write_limit``."""
        self._paused_writing = True

    def resume_writing(self) -> None:
        """Called by asyncio when the write buffer has drained below the low mark."""
        self._paused_writing = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --------------------------------------------------------------------- receiving

    async def recv(self, decode: bool | None = None) -> Data:
        """Return the next message: ``str`` for a text frame, ``bytes`` for binary.

        ``decode=False`` returns text messages as UTF-8 ``bytes``; ``decode=True``
        returns binary messages decoded as UTF-8 ``str``. Raises
        :class:`ConnectionClosedOK` / :class:`ConnectionClosedError` once the
        connection is closed and every message received before was returned.
        Cancelling ``recv`` (for example with :func:`asyncio.wait_for`) loses no
        message.
        """
        while True:
            if not self._open:
                raise InvalidState("the opening handshake is not complete")
            messages = self.protocol.messages
            if messages:
                message = messages.popleft()
                if self._paused_reading and len(messages) <= (self.max_queue or 0) // 4:
                    self._resume_reading()
                if decode is None:
                    return message
                if decode and type(message) is bytes:
                    return message.decode("utf-8")
                if not decode and type(message) is str:
                    return message.encode("utf-8")
                return message
            if self.protocol._stopped or self.connection_lost_waiter.done():
                # No message will come any more: the connection is closing or closed.
                if self.protocol.pending_close is not None:
                    self._fail_now()
                if not self.connection_lost_waiter.done():
                    await self._wait_for_close()
                raise self._closed_exc()
            if self._recv_waiter is not None:
                raise RuntimeError(
                    "cannot call recv while another coroutine is already running recv; "
                    "read from one task and hand messages to others"
                )
            self._recv_waiter = self.loop.create_future()
            try:
                await self._recv_waiter
            finally:
                self._recv_waiter = None

    def _resume_reading(self) -> None:
        self._paused_reading = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    async def _wait_for_close(self) -> None:
        """Wait until the TCP connection is closed (bounded by the close timeout)."""
        if not self.connection_lost_waiter.done():
            # A future of this caller's own (cheaper than shielding the shared one):
            # cancelling the caller cancels only it.
            waiter = self.loop.create_future()
            waiters = self._lost_waiters
            if waiters is None:
                waiters = self._lost_waiters = []
            waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter.cancelled() and waiter in waiters:
                    waiters.remove(waiter)

    def __aiter__(self) -> AsyncIterator[Data]:
        """Iterate over messages; end quietly on a normal closure (1000, 1001)."""
        return self

    async def __anext__(self) -> Data:
        """The next message, for ``async for`` (one coroutine per message, no async
        generator in between)."""
        # The common cases as recv() handles them, without a coroutine for recv() and
        # without building ConnectionClosedOK at the end; anything else goes to recv().
        while self._open:
            protocol = self.protocol
            messages = protocol.messages
            if messages:
                if not self._paused_reading:
                    return messages.popleft()
                break
            if self.connection_lost_waiter.done():
                if protocol.closed_ok():
                    raise StopAsyncIteration
                break
            if protocol._stopped or self._recv_waiter is not None:
                break
            waiter = self._recv_waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._recv_waiter = None
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    def _closed_exc(self) -> ConnectionClosed:
        """The exception that tells how the connection was closed."""
        if not self._open:
            return ConnectionClosedError(1006, "")
        return self.protocol.closed_exc(self._lost_exc)

    # ----------------------------------------------------------------------- sending

    async def send(
        self,
        message: Data | bytearray | memoryview | Iterable[Data] | AsyncIterable[Data],
    ) -> None:
        """Send a message: ``str`` as text, bytes-like as binary.

        An iterable or async iterable of ``str`` (or of bytes-like) is sent as one
        fragmented message, a frame per item. Waits while more than ``write_limit``
        bytes are buffered. Raises :class:`ConnectionClosed` once the connection is
        closing.
        """
        while self._fragmenting is not None:
            await asyncio.shield(self._fragmenting)
        if not self._open or self.protocol.state is not State.OPEN:
            await self._raise_closed()
        if isinstance(message, (str, bytes, bytearray, memoryview)):
            protocol = self.protocol
            if len(message) < LARGE_PAYLOAD:
                head, tail = protocol.send_message(message), b""
            else:
                head, tail = protocol.send_message_parts(message)
            if tail:
                # A large payload, not copied into one frame: its header goes out with
                # the payload's first bytes, so that the peer never gets a lone header
                # segment (on loopback its TCP receive path runs in this process).
                assert self.transport is not None
                view = memoryview(tail)
                self._write(head + view[:_FIRST_PIECE])
                self.transport.write(view[_FIRST_PIECE:])
            elif protocol.messages:
                # More received messages are waiting: this is likely one reply of a
                # burst. Write the burst's frames together, one system call.
                self._cork(head)
            elif self._wbuf:
                self._write(head)  # after the frames corked before it
            else:
                self.transport.write(head)  # type: ignore[union-attr]  # open: set
            if self._paused_writing:
                await self._drain()
            return
        if isinstance(message, Mapping):
            raise TypeError("message must be str, bytes-like, or an iterable of them, not a dict")
        if isinstance(message, AsyncIterable):
            await self._send_fragments_async(message)
        elif isinstance(message, Iterable):
            await self._send_fragments(message)
        else:
            raise TypeError(
                f"message must be str, bytes-like, or an iterable of them, not "
                f"{type(message).__name__}"
            )

    async def _raise_closed(self) -> None:
        if not self._open:
            raise InvalidState("the opening handshake is not complete")
        await self._wait_for_close()
        raise self._closed_exc()

    async def _send_fragments(self, fragments: Iterable[Data]) -> None:
        self._fragmenting = self.loop.create_future()
        try:
            previous: Data | None = None
            for fragment in fragments:
                if previous is not None:
                    await self._send_frame(previous, False)
                previous = fragment
            if previous is not None:
                await self._send_frame(previous, True)
        finally:
            self._end_fragmenting()

    async def _send_fragments_async(self, fragments: AsyncIterable[Data]) -> None:
        self._fragmenting = self.loop.create_future()
        try:
            previous: Data | None = None
            async for fragment in fragments:
                if previous is not None:
                    await self._send_frame(previous, False)
                previous = fragment
            if previous is not None:
                await self._send_frame(previous, True)
        finally:
            self._end_fragmenting()

    def _end_fragmenting(self) -> None:
        fut, self._fragmenting = self._fragmenting, None
        if self._open and self.protocol._send_opcode and self.protocol.state is State.OPEN:
            # The iterable raised (or we were cancelled) mid-message: the message can't
            # be finished, and no other message may start. Close with 1011.
            self.protocol._send_opcode = 0
            self._send_close_frame(1011, "error while sending a fragmented message")
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def _send_frame(self, fragment: Data, fin: bool) -> None:
        if not isinstance(fragment, (str, bytes, bytearray, memoryview)):
            raise TypeError(
                f"fragments must be str or bytes-like, not {type(fragment).__name__}"
            )
        if self.protocol.state is not State.OPEN:
            await self._raise_closed()
        self._write(self.protocol.send_fragment(fragment, fin))
        if self._paused_writing:
            await self._drain()

    def _write(self, data: bytes) -> None:
        """Write after whatever frames are corked: the order on the wire is kept."""
        if self._wbuf:
            self._wbuf.append(data)
            self._flush()
        else:
            assert self.transport is not None
            self.transport.write(data)

    def _cork(self, data: bytes) -> None:
        """Hold a frame until the end of this burst of sends (at most ``write_limit``
        bytes, and at the latest at the loop's next turn)."""
        self._wbuf.append(data)
        self._wbuf_size += len(data)
        if self._wbuf_size >= self.write_limit:
            self._flush()
        elif not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write the corked frames in one call."""
        self._flush_pending = False
        wbuf = self._wbuf
        if not wbuf:
            return
        data = wbuf[0] if len(wbuf) == 1 else b"".join(wbuf)
        wbuf.clear()
        self._wbuf_size = 0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    async def _drain(self) -> None:
        while self._paused_writing and not self.connection_lost_waiter.done():
            if self._drain_waiter is None or self._drain_waiter.done():
                self._drain_waiter = self.loop.create_future()
            await asyncio.shield(self._drain_waiter)
        if self.connection_lost_waiter.done():
            raise self._closed_exc()

    # ----------------------------------------------------------------- ping and pong

    async def ping(self, data: str | bytes | None = None) -> Awaitable[float]:
        """Send a ping; return an awaitable of the round-trip time in seconds.

        ``data`` (up to 125 bytes) defaults to 4 random bytes. Pongs answer pings
        automatically; a pong also acknowledges every earlier ping.
        """
        if not self._open or self.protocol.state is not State.OPEN:
            await self._raise_closed()
        payload = data.encode() if isinstance(data, str) else data
        if payload is None:
            payload = os.urandom(4)
            while payload in self._pings:
                payload = os.urandom(4)
        elif payload in self._pings:
            raise ValueError("a ping with the same data is already waiting for its pong")
        fut: asyncio.Future[float] = self.loop.create_future()
        frame = self.protocol.send_ping(payload)
        self._pings[payload] = (fut, _clock())
        self._write(frame)
        if self._paused_writing:
            await self._drain()
        return fut

    async def pong(self, data: str | bytes = b"") -> None:
        """Send an unsolicited pong (a unidirectional heartbeat)."""
        if not self._open or self.protocol.state is not State.OPEN:
            await self._raise_closed()
        payload = data.encode() if isinstance(data, str) else data
        self._write(self.protocol.send_pong(payload))

    def _pong_received(self, data: bytes) -> None:
        pings = self._pings
        if data not in pings:
            return
        now = _clock()
        # Acknowledge this ping and every ping sent before it.
        for key in list(pings):
            fut, sent_at = pings.pop(key)
            if not fut.done():
                fut.set_result(now - sent_at)
            if key == data:
                self.latency = now - sent_at
                break

    def _keepalive(self) -> None:
        self._keepalive_handle = None
        if not self._open or self.protocol.state is not State.OPEN:
            return
        payload = os.urandom(4)
        fut: asyncio.Future[float] = self.loop.create_future()
        self._pings[payload] = (fut, _clock())
        self._write(self.protocol.send_ping(payload))
        if self._debug:
            self.logger.debug("[%s] > keepalive ping sent", self.id)
        if self.ping_timeout is not None:
            timeout = self._timers.call_later(
                self.loop, self.ping_timeout, self._keepalive_timed_out, fut
            )
            fut.add_done_callback(lambda _: timeout.cancel())
        fut.add_done_callback(self._keepalive_answered)

    def _keepalive_answered(self, fut: asyncio.Future[float]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        if self.ping_interval is not None and self.protocol.state is State.OPEN:
            delay = max(self.ping_interval - fut.result(), 0)
            self._keepalive_handle = self._timers.call_later(self.loop, delay, self._keepalive)

    def _keepalive_timed_out(self, fut: asyncio.Future[float]) -> None:
        if fut.done() or self.protocol.state is not State.OPEN:
            return
        self.logger.info(
            "[%s] no pong within ping_timeout=%ss: closing with 1011", self.id, self.ping_timeout
        )
        self._send_close_frame(1011, "keepalive ping timeout")

    # ----------------------------------------------------------------------- closing

    def _send_close_frame(self, code: int, reason: str) -> None:
        data = self.protocol.send_close(code, reason)
        if self._debug:
            self.logger.debug("[%s] > closing with code %d %r; state CLOSING", self.id, code,
                              reason)
        assert self.transport is not None
        if data and not self.transport.is_closing():
            self._write(data)
        self._closing_started()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection: send a close frame, wait for the peer's and for the
        TCP connection to end (at most ``close_timeout``). Idempotent."""
        Close(code, reason).check()
        if not self._open:
            if self.transport is not None:
                self.transport.close()
            await self._wait_for_close()
            return
        if self.protocol.state is State.OPEN and not self.connection_lost_waiter.done():
            if self._fragmenting is not None:
                # A fragmented message is being sent; it can't be finished now.
                self.protocol._send_opcode = 0
            self._send_close_frame(code, reason)
        await self._wait_for_close()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed."""
        await self._wait_for_close()

    def respond(self, status: int, text: str = "") -> Response:
        """Build a plain-text HTTP :class:`Response` for ``process_request``."""
        return Response.text(status, text)
