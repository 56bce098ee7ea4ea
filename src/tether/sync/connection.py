"""The threading driver of a WebSocket connection: blocking calls over the sans-I/O core.

Strategy. An open connection has two background threads and no event loop:

- the *reader* blocks in ``recv`` on the socket, feeds the bytes to the core
  (:meth:`Protocol.receive_data`) and wakes :meth:`Connection.recv` through a
  :class:`threading.Condition`. A message leaves the core's deque only when ``recv``
  returns it, so a ``recv`` that times out loses nothing. The reader stops reading
  while ``max_queue`` messages wait (TCP then pushes back on the peer) and resumes when
  ``recv`` has brought them down to a quarter of that.
- the *read role*: one thread at a time reads the socket (``_reader``). Handing every
  message from the reader to the thread in ``recv`` costs two thread wake-ups per
  message, more than the rest of a small round trip. So over a plain socket (not TLS;
  POSIX, for :func:`select.poll`) a ``recv`` that finds nothing buffered and nobody
  reading reads the socket itself, for up to ``DIRECT_WAIT`` seconds; and the reader,
  once it has handed a message to a waiting ``recv``, stands by while the application
  keeps receiving (it checks every ``STANDBY`` seconds). It reads again when ``recv``
  waits for it, when nobody called ``recv`` for ``STANDBY`` seconds, and at once while
  a ping awaits its pong or the connection is closing: pings and close frames get
  answered whether or not the application reads.
- the *timer* owns every deadline: keepalive pings, their ``ping_timeout``, the grace
  period of a failure's close frame (``FAIL_GRACE``), and the ``close_timeout`` after
  which the TCP connection is aborted.

``_lock`` guards the core and this driver's state and is never held across blocking
I/O. Writers hold ``_send_lock`` from building frames to handing them to the kernel, so
frames reach the wire in the order the core produced them (compression contexts and
close frames depend on it). ``send`` returns once the kernel has taken the bytes: the
socket's send buffer is the write limit. Frames made by the reader and the timer
(pongs, close replies, keepalive pings) and by ``ping`` / ``close`` are queued and
written by whichever thread holds ``_send_lock`` or takes it next, so none of those
waits behind a ``send`` blocked on a peer that does not read.

Bytes come and go through a :class:`~tether.sync.transport.Transport` (a socket, TLS
over it, TLS through a proxy's TLS): see :mod:`tether.sync.transport` for why TLS is an
:class:`ssl.SSLObject` under a lock rather than an :class:`ssl.SSLSocket`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import select
import socket
import ssl as ssl_module
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, ClassVar, TypeVar

from ..exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidState,
)
from ..protocol.connection import Codec, Pong, Protocol, Side, State
from ..protocol.frames import Close
from ..protocol.http import Request, Response
from .transport import SocketTransport, TLSTransport, Transport

__all__ = ["Connection", "Data", "PongWaiter"]

Data = str | bytes
_C = TypeVar("_C", bound="Connection")
BytesLike = bytes | bytearray | memoryview
#: Seconds a failure's close frame waits for the application to read the messages
#: that arrived before the offending frame (see ``Protocol._fail``); as in asyncio.
FAIL_GRACE = 1.0
#: Seconds a ``recv`` reads the socket itself before waiting for the reader thread.
DIRECT_WAIT = 0.05
#: Seconds after the last ``recv`` during which the reader thread stands by.
STANDBY = 0.05
_DEBUG = logging.DEBUG
# The connection's clock: round trips and deadlines. Fine-grained everywhere
# (time.monotonic has 15 ms steps on Windows).
_clock = time.perf_counter
_OPCODE_NAMES = {0: "CONT", 1: "TEXT", 2: "BINARY", 8: "CLOSE", 9: "PING", 10: "PONG"}
# On POSIX a thread blocked on a lock or condition is interrupted by Ctrl-C; on Windows
# it is not, so waits there are cut into slices and KeyboardInterrupt gets through.
_SLICE: float | None = 0.1 if sys.platform == "win32" else None


def _slice(timeout: float | None) -> float | None:
    if _SLICE is None:
        return timeout
    return _SLICE if timeout is None else min(timeout, _SLICE)


def _wait_event(event: threading.Event, timeout: float | None) -> bool:
    """``event.wait(timeout)``, interruptible by Ctrl-C everywhere."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return event.is_set()
        if event.wait(_slice(left)):
            return True


# ------------------------------------------------------------------------------ ping


class PongWaiter(threading.Event):
    """What :meth:`Connection.ping` returns: an event set when the matching pong arrives.

    It is a :class:`threading.Event`, so ``waiter.wait(timeout)`` and ``is_set()``
    work as usual. It is also set when the connection closes before the pong arrives,
    so that no wait outlives the connection: :attr:`latency` then stays ``None``.
    :meth:`result` is the short way: it waits and returns the round-trip time.
    """

    def __init__(self, connection: Connection, data: bytes, sent_at: float) -> None:
        super().__init__()
        #: the ping's payload
        self.data = data
        #: when the ping was queued (:func:`time.perf_counter`)
        self.sent_at = sent_at
        #: the round-trip time in seconds once the pong arrived, else ``None``
        self.latency: float | None = None
        self._connection = connection

    def _acknowledge(self, now: float) -> None:
        self.latency = now - self.sent_at
        self.set()

    def result(self, timeout: float | None = None) -> float:
        """Wait for the pong and return the round-trip time in seconds.

        Raises :class:`TimeoutError` when no pong came within ``timeout`` seconds (the
        ping is still pending: calling again waits more), :class:`ConnectionClosed`
        when the connection closed first.
        """
        if not _wait_event(self, timeout):
            raise TimeoutError(f"no pong received within {timeout} s")
        if self.latency is None:
            raise self._connection._closed_exc()
        return self.latency


# ------------------------------------------------------------------------ connection


class Connection:
    """One WebSocket connection, server or client side, with blocking methods.

    Users get it as the argument of a server's handler or from ``connect()``; the
    methods they call are :meth:`recv`, :meth:`send`, :meth:`ping`, :meth:`close`,
    :meth:`wait_closed`, ``for message in connection`` and ``with connection``.
    ``recv`` may run in one thread while others call ``send``, ``ping`` or ``close``.
    """

    side: ClassVar[Side]
    #: the core state machine, created when the opening handshake succeeds
    protocol: Protocol
    request: Request | None
    response: Response | None

    def __init__(
        self,
        sock: socket.socket,
        *,
        max_size: int | None = 2**20,
        max_queue: int | None = 16,
        write_limit: int = 2**15,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float | None = 10,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self.id = uuid.uuid4()
        if logger is None:
            logger = logging.getLogger(
                "tether.server" if self.side is Side.SERVER else "tether.client"
            )
        self.logger = logger
        #: the connected socket (for TLS, the TCP socket under it)
        self.socket = sock
        self.max_size = max_size
        self.max_queue = max_queue
        #: accepted for compatibility with the asyncio layer; here ``send`` returns
        #: when the kernel has the bytes, so the socket's send buffer is the limit
        self.write_limit = write_limit
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.request = None
        self.response = None
        self.subprotocol: str | None = None
        #: round-trip time of the last ping answered, in seconds
        self.latency: float = 0.0
        self._remote = _address(sock.getpeername)
        self._local = _address(sock.getsockname)
        self._transport: Transport = SocketTransport(sock)
        self._debug = self.logger.isEnabledFor(_DEBUG)
        self._lock = threading.Lock()
        # Signals new messages, room in the queue, the start of closing, the end.
        self._cond = threading.Condition(self._lock)
        # Wakes the timer thread when a deadline changes.
        self._timer_cond = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        # Held for a whole message, so that a fragmented one is not interleaved.
        self._message_lock = threading.RLock()
        self._closed = threading.Event()
        self._open = False
        self._finished = False
        self._closing = False
        self._write_closed = False
        self._receiving = False
        self._paused = False
        # The read role (see the module's docstring).
        self._reader: int | None = None  # the thread reading the socket
        self._recv_waiting = False
        self._standby = False
        self._last_recv = -math.inf
        self._poller: select.poll | None = None
        # Wakes the reader thread from standby.
        self._reader_cond = threading.Condition(self._lock)
        self._pending: list[bytes] = []
        self._pings: dict[bytes, PongWaiter] = {}
        self._keepalive: PongWaiter | None = None
        self._next_ping_at = 0.0
        self._close_deadline: float | None = None
        self._fail_deadline: float | None = None
        self._lost_exc: BaseException | None = None

    # ------------------------------------------------------------ public attributes

    @property
    def state(self) -> State:
        """CONNECTING, OPEN, CLOSING or CLOSED."""
        if self._finished:
            return State.CLOSED
        if not self._open:
            return State.CONNECTING
        return self.protocol.state

    @property
    def remote_address(self) -> Any:
        """The peer's address, as the socket gives it (``(host, port)`` for TCP)."""
        return self._remote

    @property
    def local_address(self) -> Any:
        """This side's address, as the socket gives it."""
        return self._local

    @property
    def ssl_object(self) -> ssl_module.SSLObject | None:
        """The TLS session (``getpeercert()``, ``version()``...), or ``None``."""
        return self._transport.ssl_object

    @property
    def close_code(self) -> int | None:
        """The code of the close frame received; 1006 if the TCP connection was lost
        without one; ``None`` while the connection is open."""
        rcvd = self.protocol.close_rcvd if self._open else None
        if rcvd is not None:
            return rcvd.code
        return 1006 if self._finished else None

    @property
    def close_reason(self) -> str | None:
        """The reason of the close frame received (see :attr:`close_code`)."""
        rcvd = self.protocol.close_rcvd if self._open else None
        if rcvd is not None:
            return rcvd.reason
        return "" if self._finished else None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.state.name}>"

    def respond(self, status: int, text: str = "") -> Response:
        """Build a plain-text HTTP :class:`Response` for ``process_request``."""
        return Response.text(status, text)

    # --------------------------------------------------------------- opening

    def _start_tls(
        self, context: ssl_module.SSLContext, *, server_side: bool,
        server_hostname: str | None, deadline: float | None,
    ) -> None:
        transport = TLSTransport(
            self._transport, context, server_side=server_side, server_hostname=server_hostname
        )
        self._transport = transport
        transport.handshake(deadline)

    def _open_protocol(self, trailing: bytes, codec: Codec | None) -> None:
        """Switch to the WebSocket protocol after a successful handshake."""
        tracer = self._trace if self._debug else None
        self.protocol = Protocol(self.side, max_size=self.max_size, codec=codec, tracer=tracer)
        self.socket.settimeout(None)
        if type(self._transport) is SocketTransport and hasattr(select, "poll"):
            self._poller = select.poll()
            self._poller.register(self.socket, select.POLLIN)
        with self._lock:
            self._open = True
            if self.ping_interval is not None:
                self._next_ping_at = _clock() + self.ping_interval
        if self._debug:
            self.logger.debug("[%s] = connection is OPEN", self.id)
        if trailing:
            self._receive(trailing)
            self._flush_pending()
        name = str(self.id)[:8]
        try:
            threading.Thread(target=self._timer_loop, name=f"tether-timer-{name}",
                             daemon=True).start()
            threading.Thread(target=self._read_loop, name=f"tether-reader-{name}",
                             daemon=True).start()
        except BaseException:
            # No thread to run the connection (RuntimeError: can't start new thread).
            self._close_unopened(graceful=False)
            raise

    def _close_unopened(self, *, graceful: bool) -> None:
        """End a connection that has no reader thread (the handshake failed)."""
        if graceful:
            # Let an HTTP error response reach the client before the socket goes.
            try:
                self._transport.shutdown_write()
            except (OSError, ValueError):
                pass
        self._transport.abort()
        self._transport.close()
        with self._lock:
            self._finished = True
            self._cond.notify_all()
            self._timer_cond.notify_all()
        self._closed.set()

    def _trace(self, direction: str, opcode: int, fin: bool, length: int, head: bytes) -> None:
        name = _OPCODE_NAMES.get(opcode, hex(opcode))
        self.logger.debug(
            "[%s] %s %s%s %d bytes %r", self.id, direction, name, "" if fin else " (fin=0)",
            length, head[:32],
        )

    # ------------------------------------------------------------ reader thread

    def _read_loop(self) -> None:
        exc: BaseException | None = None
        try:
            while self._take_read_role():
                try:
                    data = self._transport.recv()
                except OSError as error:
                    exc = error
                    break
                if not data:
                    self._receive_eof()
                    break
                self._receive(data)
                self._flush_pending()
        except Exception as error:  # pragma: no cover - a bug: still end the connection
            exc = error
            self.logger.error("[%s] reader thread failed", self.id, exc_info=True)
        finally:
            self._finish(exc)

    def _take_read_role(self) -> bool:
        """Wait until the reader thread should read; ``False`` once the connection ended."""
        while True:
            self._wait_for_room()
            with self._lock:
                if self._finished:
                    return False
                max_queue = self.max_queue
                if (max_queue is not None and len(self.protocol.messages) >= max(max_queue, 1)
                        and not self._closing):
                    continue  # full again (a recv read the socket): wait for room
                wait = STANDBY if self._reader is not None else self._standby_time(_clock())
                if wait is None:
                    self._reader = threading.get_ident()
                    return True
                self._standby = True
                self._reader_cond.wait(wait)
                self._standby = False

    def _standby_time(self, now: float) -> float | None:
        """How long the reader thread stands by, ``None`` to read now (lock held)."""
        if (self._poller is None or self._recv_waiting or self._closing or self._pings
                or self._finished):
            return None
        if self._receiving:
            return STANDBY
        idle = now - self._last_recv
        return None if idle >= STANDBY else STANDBY - idle

    def _wake_reader(self) -> None:
        """Make the reader thread read now if it stands by (lock held)."""
        if self._standby:
            self._reader_cond.notify()

    def _wait_for_room(self) -> None:
        """Flow control: don't read while ``max_queue`` messages wait for ``recv``."""
        max_queue = self.max_queue
        if max_queue is None:
            return
        with self._lock:
            messages = self.protocol.messages
            if len(messages) < max(max_queue, 1) or self._closing:
                return
            self._paused = True
            if self._debug:
                self.logger.debug("[%s] - %d messages buffered: reading paused", self.id,
                                  len(messages))
            # Keep reading once closing starts, to see the close frame and the end.
            while len(messages) > max_queue // 4 and not self._closing:
                self._cond.wait()
            self._paused = False

    def _receive(self, data: bytes) -> None:
        """Feed bytes read from the socket to the core; give up the read role."""
        with self._lock:
            self._reader = None
            protocol = self.protocol
            protocol.receive_data(data)
            if protocol.events:
                self._handle_events()
            out = protocol.data_to_send()
            if out:
                self._pending.extend(out)
            if protocol.messages:
                self._recv_waiting = False  # the recv waiting for the reader is served
                self._cond.notify_all()
            if protocol.pending_close is not None and self._fail_deadline is None:
                # Failed, but earlier messages wait to be read: give the application
                # FAIL_GRACE seconds to read them before the close frame goes.
                if self._debug:
                    self.logger.debug(
                        "[%s] ! failing the connection once earlier messages are read: %s",
                        self.id, protocol.exc,
                    )
                self._fail_deadline = _clock() + FAIL_GRACE
                self._timer_cond.notify()
            self._check_closing()

    def _receive_eof(self) -> None:
        if self._debug:
            self.logger.debug("[%s] < EOF received", self.id)
        with self._lock:
            self.protocol.receive_eof()

    def _handle_events(self) -> None:
        events = self.protocol.events
        self.protocol.events = []
        for event in events:
            if type(event) is Pong:
                self._pong_received(event.data)
            elif type(event) is Close and self._debug:
                self.logger.debug(
                    "[%s] < close frame received: code %d reason %r; state CLOSING",
                    self.id, event.code, event.reason,
                )

    def _pong_received(self, data: bytes) -> None:
        pings = self._pings
        if data not in pings:
            return
        now = _clock()
        # Acknowledge this ping and every ping sent before it.
        for key in list(pings):
            waiter = pings.pop(key)
            waiter._acknowledge(now)
            if waiter is self._keepalive:
                self._timer_cond.notify()
            if key == data:
                self.latency = now - waiter.sent_at
                break

    def _check_closing(self) -> None:
        """Notice the start of the closing handshake: arm the close timeout."""
        protocol = self.protocol
        if self._closing or protocol.close_sent is None:
            return
        self._closing = True
        if protocol.exc is not None and self._debug:
            self.logger.debug("[%s] ! failing the connection: %s", self.id, protocol.exc)
        if self.close_timeout is not None:
            # Don't wait forever for the peer's close frame or its end of the TCP
            # connection (RFC 6455 7.1.1).
            self._close_deadline = _clock() + self.close_timeout
        self._timer_cond.notify()
        self._cond.notify_all()
        self._wake_reader()

    def _finish(self, exc: BaseException | None) -> None:
        """The TCP connection is over: release every waiter, then the socket.

        Called by the thread that found the end (the reader thread, or a ``recv`` that
        was reading); a second call does nothing."""
        with self._lock:
            if self._finished:
                return
            if self._lost_exc is None:
                self._lost_exc = exc
            protocol = self.protocol
            protocol.state = State.CLOSED
            self._finished = True
            waiters = list(self._pings.values())
            self._pings.clear()
            self._cond.notify_all()
            self._timer_cond.notify_all()
            self._reader_cond.notify_all()
        for waiter in waiters:
            waiter.set()
        # Wake a writer blocked in send; close the socket only once it has let go.
        self._transport.abort()
        with self._send_lock:
            self._transport.close()
        if self._debug:
            rcvd, sent = protocol.close_rcvd, protocol.close_sent
            how = "cleanly" if exc is None else f"with error {exc!r}"
            self.logger.debug(
                "[%s] = connection CLOSED %s; close frame received: %s; sent: %s",
                self.id, how,
                f"{rcvd.code} {rcvd.reason!r}" if rcvd else "none (1006)",
                f"{sent.code} {sent.reason!r}" if sent else "none",
            )
        self._closed.set()

    # ------------------------------------------------------------- timer thread

    def _timer_loop(self) -> None:
        while True:
            with self._lock:
                while True:
                    if self._finished:
                        return
                    action, wait = self._next_timer(_clock())
                    if action is not None:
                        break
                    self._timer_cond.wait(wait)
            action()

    def _next_timer(self, now: float) -> tuple[Callable[[], None] | None, float | None]:
        """Run what is due (lock held): return an action to run unlocked, or how long
        to sleep (``None``: until woken)."""
        deadlines: list[float] = []
        if self._fail_deadline is not None and self.protocol.pending_close is not None:
            if now >= self._fail_deadline:
                self._fail_now()
                return self._flush_pending, None
            deadlines.append(self._fail_deadline)
        if self._close_deadline is not None:
            if now >= self._close_deadline:
                self._close_deadline = None
                return self._close_timed_out, None
            deadlines.append(self._close_deadline)
        if self.ping_interval is not None and self.protocol.state is State.OPEN:
            keepalive = self._keepalive
            if keepalive is not None and keepalive.is_set():
                self._next_ping_at = keepalive.sent_at + self.ping_interval
                self._keepalive = keepalive = None
            if keepalive is None:
                if now >= self._next_ping_at:
                    self._send_keepalive(now)
                    return self._flush_pending, None
                deadlines.append(self._next_ping_at)
            elif self.ping_timeout is not None:
                limit = keepalive.sent_at + self.ping_timeout
                if now >= limit:
                    self.logger.info(
                        "[%s] no pong within ping_timeout=%ss: closing with 1011",
                        self.id, self.ping_timeout,
                    )
                    self._queue_close(1011, "keepalive ping timeout")
                    return self._flush_pending, None
                deadlines.append(limit)
        return None, (min(deadlines) - now if deadlines else None)

    def _send_keepalive(self, now: float) -> None:
        payload = os.urandom(4)
        while payload in self._pings:
            payload = os.urandom(4)
        waiter = PongWaiter(self, payload, now)
        self._pings[payload] = self._keepalive = waiter
        self._pending.append(self.protocol.send_ping(payload))
        self._wake_reader()  # to read the pong
        if self._debug:
            self.logger.debug("[%s] > keepalive ping sent", self.id)

    def _fail_now(self) -> None:
        """Send the close frame of a failure held back for earlier messages (lock held)."""
        protocol = self.protocol
        protocol.fail_now()
        self._pending.extend(protocol.data_to_send())
        self._check_closing()

    def _close_timed_out(self) -> None:
        if self._debug:
            self.logger.debug("[%s] x close timeout: aborting the TCP connection", self.id)
        self._abort()

    # ------------------------------------------------------------------ writing

    def _flush_pending(self) -> None:
        """Write queued frames, unless another thread is writing: it writes them when
        it is done (it checks again after releasing the send lock)."""
        while True:
            with self._lock:
                if not self._has_output():
                    return
            if not self._send_lock.acquire(blocking=False):
                return
            try:
                with self._lock:
                    chunks = self._take_output()
                if not self._write(chunks):
                    return  # the connection is being aborted
            finally:
                self._send_lock.release()

    def _has_output(self) -> bool:
        return bool(self._pending) or self._eof_due() or (
            self._transport.tls and not self._finished and self._transport.has_output()
        )

    def _eof_due(self) -> bool:
        # Only once every queued frame is out: the close reply may still be pending
        # when another thread finishes a write.
        return (
            self._open and not self._pending and not self._write_closed
            and not self._finished and self.protocol.close_expected()
        )

    def _take_output(self) -> list[bytes]:
        chunks = self._pending
        self._pending = []
        return chunks

    def _write(self, chunks: list[bytes]) -> bool:
        """Write frames, then half-close if the core says so (send lock held).

        Return ``False`` when the connection broke; it is then being aborted.
        """
        try:
            if chunks:
                self._transport.send(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            if self._transport.tls:
                self._transport.flush()
            with self._lock:
                eof = self._eof_due()
                if eof:
                    self._write_closed = True
            if eof:
                # RFC 6455 7.1.1: the server closes the TCP connection first; either
                # side does after failing the connection. The client waits for it.
                if self._debug:
                    self.logger.debug("[%s] x half-closing the TCP connection", self.id)
                self._transport.shutdown_write()
        except OSError as exc:
            with self._lock:
                if self._lost_exc is None and not self._finished:
                    self._lost_exc = exc
            if self._debug:
                self.logger.debug("[%s] ! write failed: %r", self.id, exc)
            self._abort()
            return False
        except BaseException:
            # Interrupted (Ctrl-C) in the middle of a frame: the stream can't go on.
            self._abort()
            raise
        return True

    def _abort(self) -> None:
        """Drop the TCP connection; the reader thread then finishes the connection."""
        with self._lock:
            self._closing = True
            self._cond.notify_all()
            self._wake_reader()
        self._transport.abort()

    def _queue_close(self, code: int, reason: str) -> None:
        """Start the closing handshake (lock held); the frame is written by a flush."""
        protocol = self.protocol
        if protocol.state is not State.OPEN or self._finished:
            return
        data = protocol.send_close(code, reason)
        if self._debug:
            self.logger.debug("[%s] > closing with code %d %r; state CLOSING", self.id, code,
                              reason)
        if data:
            self._pending.append(data)
        self._check_closing()

    def _send_frames(self, build: Callable[[Protocol], bytes]) -> None:
        """Build frames with the core and write them, in order (send lock held)."""
        with self._send_lock:
            chunks: list[bytes] | None = None
            with self._lock:
                if not self._open:
                    raise InvalidState("the opening handshake is not complete")
                if self.protocol.state is State.OPEN and not self._finished:
                    data = build(self.protocol)
                    chunks = self._take_output()
                    chunks.append(data)
            written = chunks is not None and self._write(chunks)
        self._flush_pending()
        if not written:
            self._raise_closed()

    # --------------------------------------------------------------- receiving

    def recv(self, timeout: float | None = None, decode: bool | None = None) -> Data:
        """Return the next message: ``str`` for a text frame, ``bytes`` for binary.

        Blocks until a message arrives or ``timeout`` seconds pass; then raises
        :class:`TimeoutError` and loses nothing: the next message is left for the next
        ``recv``. ``timeout=0`` only returns a message already received.
        ``decode=False`` returns text messages as UTF-8 ``bytes``; ``decode=True``
        returns binary messages decoded as UTF-8 ``str``.

        Raises :class:`ConnectionClosedOK` / :class:`ConnectionClosedError` once the
        connection is closed and every message received before was returned, and
        :class:`RuntimeError` if another thread is already in ``recv``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if not self._open:
                raise InvalidState("the opening handshake is not complete")
            if self._receiving:
                raise RuntimeError(
                    "cannot call recv while another thread is already running recv; "
                    "read from one thread and hand messages to others"
                )
            self._receiving = True
            try:
                message = self._next_message(deadline, timeout)
            finally:
                self._receiving = False
                self._recv_waiting = False
        if decode is None:
            return message
        if decode and type(message) is bytes:
            return message.decode("utf-8")
        if not decode and type(message) is str:
            return message.encode("utf-8")
        return message

    def _next_message(self, deadline: float | None, timeout: float | None) -> Data:
        messages = self.protocol.messages
        direct_until = time.monotonic() + DIRECT_WAIT if self._poller is not None else 0.0
        while not messages:
            if self._finished:
                raise self._closed_exc()
            if self.protocol.pending_close is not None and self._fail_deadline != 0.0:
                # No message before the failure is left: fail now (the timer sends it).
                self._fail_deadline = 0.0
                self._timer_cond.notify()
            now = time.monotonic()
            left = None if deadline is None else deadline - now
            if left is not None and left <= 0:
                raise TimeoutError(f"no message received within {timeout} s")
            if self._reader is None and now < direct_until:
                direct = direct_until - now
                self._read_directly(direct if left is None else min(left, direct))
                continue
            # Wait for the reader thread (woken if it stands by).
            self._recv_waiting = True
            self._wake_reader()
            self._cond.wait(_slice(left))
        self._last_recv = _clock()
        message = messages.popleft()
        if self._paused and len(messages) <= (self.max_queue or 0) // 4:
            self._cond.notify_all()
        return message

    def _read_directly(self, timeout: float) -> None:
        """Read the socket in the thread calling ``recv``, at most ``timeout`` seconds
        (lock held on entry and on exit; released while reading)."""
        assert self._poller is not None
        self._reader = me = threading.get_ident()
        self._lock.release()
        reading = False
        try:
            if not self._poller.poll(math.ceil(timeout * 1000)):
                return
            # From here an interruption (Ctrl-C) could lose bytes: the stream can't go on.
            reading = True
            try:
                data = self._transport.recv()
            except OSError as exc:
                self._finish(exc)
                return
            if data:
                self._receive(data)  # gives the role up: another thread may take it
                self._flush_pending()
            else:
                self._receive_eof()
                self._finish(None)
            reading = False
        except BaseException:
            if reading:
                self._abort()
            raise
        finally:
            self._lock.acquire()
            if self._reader == me:
                self._reader = None

    def __iter__(self) -> Iterator[Data]:
        """Iterate over messages; end quietly on a normal closure (1000, 1001).

        An abnormal closure raises :class:`ConnectionClosedError`.
        """
        try:
            while True:
                yield self.recv()
        except ConnectionClosedOK:
            return

    def _closed_exc(self) -> ConnectionClosed:
        """The exception that tells how the connection was closed."""
        if not self._open:
            return ConnectionClosedError(1006, "")
        return self.protocol.closed_exc(self._lost_exc)

    def _raise_closed(self) -> None:
        """Wait until the TCP connection is closed, then raise how it ended."""
        if not self._open:
            raise InvalidState("the opening handshake is not complete")
        _wait_event(self._closed, None)
        raise self._closed_exc()

    # ----------------------------------------------------------------- sending

    def send(self, message: Data | BytesLike | Iterable[Data | BytesLike]) -> None:
        """Send a message: ``str`` as text, bytes-like as binary.

        An iterable of ``str`` (or of bytes-like) is sent as one fragmented message, a
        frame per item; other threads' messages wait until it is complete. Returns once
        the kernel has taken the bytes (blocks while the peer does not read). Raises
        :class:`ConnectionClosed` once the connection is closing.
        """
        if isinstance(message, (str, bytes, bytearray, memoryview)):
            with self._message_lock:
                self._send_frames(functools.partial(Protocol.send_message, message=message))
            return
        if isinstance(message, Mapping):
            raise TypeError("message must be str, bytes-like, or an iterable of them, not a dict")
        if not isinstance(message, Iterable):
            raise TypeError(
                f"message must be str, bytes-like, or an iterable of them, not "
                f"{type(message).__name__}"
            )
        with self._message_lock:
            self._send_fragments(message)

    def _send_fragments(self, fragments: Iterable[Data | BytesLike]) -> None:
        started = False
        previous: Data | BytesLike | None = None
        try:
            for fragment in fragments:
                if not isinstance(fragment, (str, bytes, bytearray, memoryview)):
                    raise TypeError(
                        f"fragments must be str or bytes-like, not {type(fragment).__name__}"
                    )
                if previous is not None:
                    self._send_frames(
                        functools.partial(Protocol.send_fragment, data=previous, fin=False)
                    )
                    started = True
                previous = fragment
            if previous is not None:
                self._send_frames(
                    functools.partial(Protocol.send_fragment, data=previous, fin=True)
                )
        except BaseException:
            if started:
                # The message can't be finished, and no other may start: close 1011.
                with self._lock:
                    self._queue_close(1011, "error while sending a fragmented message")
                self._flush_pending()
            raise

    # ----------------------------------------------------------- ping and pong

    def ping(self, data: str | BytesLike | None = None) -> PongWaiter:
        """Send a ping; return a :class:`PongWaiter`, set when the pong arrives.

        ``ws.ping().result(timeout=5)`` waits and returns the round-trip time in
        seconds; ``ws.ping().wait(5)`` is the :class:`threading.Event` way. ``data``
        (up to 125 bytes) defaults to 4 random bytes. Pings are answered with pongs
        automatically; a pong also acknowledges every earlier ping.
        """
        payload = data.encode() if isinstance(data, str) else (
            None if data is None else bytes(data)
        )
        with self._lock:
            if not self._open:
                raise InvalidState("the opening handshake is not complete")
            waiter = None
            if self.protocol.state is State.OPEN and not self._finished:
                if payload is None:
                    payload = os.urandom(4)
                    while payload in self._pings:
                        payload = os.urandom(4)
                elif payload in self._pings:
                    raise ValueError("a ping with the same data is already waiting for its pong")
                frame = self.protocol.send_ping(payload)
                waiter = PongWaiter(self, payload, _clock())
                self._pings[payload] = waiter
                self._pending.append(frame)
                self._wake_reader()  # to read the pong
        if waiter is None:
            self._raise_closed()
        assert waiter is not None
        self._flush_pending()
        return waiter

    def pong(self, data: str | BytesLike = b"") -> None:
        """Send an unsolicited pong (a unidirectional heartbeat)."""
        payload = data.encode() if isinstance(data, str) else bytes(data)
        with self._lock:
            if not self._open:
                raise InvalidState("the opening handshake is not complete")
            closed = self.protocol.state is not State.OPEN or self._finished
            if not closed:
                self._pending.append(self.protocol.send_pong(payload))
        if closed:
            self._raise_closed()
        self._flush_pending()

    # ----------------------------------------------------------------- closing

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection: send a close frame, wait for the peer's and for the
        TCP connection to end (at most ``close_timeout``, then it is aborted).
        Idempotent; safe to call from any thread."""
        Close(code, reason).check()
        if not self._open:
            if not self._finished:
                self._close_unopened(graceful=False)
            return
        with self._lock:
            self._queue_close(code, reason)
        self._flush_pending()
        _wait_event(self._closed, None)

    def wait_closed(self, timeout: float | None = None) -> None:
        """Wait until the connection is closed; raise :class:`TimeoutError` after
        ``timeout`` seconds."""
        if not _wait_event(self._closed, timeout):
            raise TimeoutError(f"connection not closed within {timeout} s")

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _address(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except OSError:
        return None
