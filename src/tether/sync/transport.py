"""Blocking byte streams under a threading connection: a socket, TLS, TLS in TLS.

Strategy. A :class:`Connection` has a reader thread blocked in :meth:`Transport.recv`
while other threads call :meth:`Transport.send` (one at a time: the connection's send
lock), so a transport must allow one reader and one writer at once. A socket does. An
:class:`ssl.SSLSocket` does not: OpenSSL forbids using one connection from two threads
at once. :class:`TLSTransport` therefore runs an :class:`ssl.SSLObject` on memory BIOs
under a lock of its own and does the socket I/O outside that lock, so that a reader
blocked on the socket never stops a writer.

TLS layers over another transport (its *lower* one): a :class:`SocketTransport` for
``wss://``, or the TLS connection to an ``https://`` proxy for ``wss://`` through it (TLS
in TLS). :class:`TunnelTransport` is ``ws://`` through such a proxy.

Reading may make TLS records to write (key updates, session tickets, the reply to a
close_notify): :meth:`Transport.has_output` tells, and :meth:`Transport.flush` writes
them; the connection does so after every read.
"""

from __future__ import annotations

import socket
import ssl as ssl_module
import threading
import time

__all__ = [
    "RECV_SIZE",
    "TLS_CHUNK",
    "SocketTransport",
    "TLSTransport",
    "Transport",
    "TunnelTransport",
    "remaining",
]

#: Bytes asked of the socket per read.
RECV_SIZE = 2**16
#: Plaintext bytes encrypted per step when sending over TLS.
TLS_CHUNK = 2**16


def remaining(deadline: float | None) -> float | None:
    """Seconds left until ``deadline`` (a :func:`time.monotonic` time; ``None``: no
    deadline); raise :class:`TimeoutError` once it passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


class Transport:
    """A connected byte stream: the interface a :class:`Connection` drives.

    ``recv`` may run in one thread while another calls ``send``, ``flush`` or
    ``shutdown_write`` (never two at once: the caller holds its send lock for those);
    ``abort`` and ``close`` may be called from any thread. Errors are :class:`OSError`
    (:class:`ssl.SSLError` is one); timeouts are the socket's (``sock.settimeout``).
    """

    #: the socket under the stream (for TLS in TLS, the TCP socket to the proxy)
    sock: socket.socket
    #: whether reads may make bytes to write (see :meth:`has_output`)
    tls = False
    #: the TLS session with the peer, or ``None``
    ssl_object: ssl_module.SSLObject | None = None

    def recv(self) -> bytes:
        """Block until bytes arrive; ``b""`` at the end of the stream."""
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        """Block until the kernel has taken ``data`` (its records, for TLS)."""
        raise NotImplementedError

    def has_output(self) -> bool:
        """Tell whether bytes are waiting to be written (TLS records made by reads)."""
        return False

    def flush(self) -> None:
        """Write what :meth:`has_output` reports."""

    def shutdown_write(self) -> None:
        """Half-close: send the end of the stream (TLS: close_notify first), keep reading."""
        raise NotImplementedError

    def abort(self) -> None:
        """End both directions now; a thread blocked in ``recv`` or ``send`` returns."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Release the socket."""
        self.sock.close()


class SocketTransport(Transport):
    """Bytes over a connected socket (TCP or Unix)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv(self) -> bytes:
        return self.sock.recv(RECV_SIZE)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shutdown_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)


class TLSTransport(Transport):
    """TLS through an :class:`ssl.SSLObject` over ``lower``: the lower transport's I/O
    stays outside the lock that serialises every call into OpenSSL."""

    tls = True

    def __init__(
        self, lower: Transport, context: ssl_module.SSLContext, *,
        server_side: bool, server_hostname: str | None,
    ) -> None:
        self.sock = lower.sock
        self._lower = lower
        self._incoming = ssl_module.MemoryBIO()
        self._outgoing = ssl_module.MemoryBIO()
        self._ssl = self.ssl_object = context.wrap_bio(
            self._incoming, self._outgoing,
            server_side=server_side, server_hostname=server_hostname,
        )
        self._lock = threading.Lock()

    def handshake(self, deadline: float | None) -> None:
        """Run the TLS handshake; bounded by ``deadline`` (raises :class:`TimeoutError`)."""
        while not self._handshake_step():
            self.sock.settimeout(remaining(deadline))
            self.flush()
            self._feed(self._lower.recv())
        self.sock.settimeout(remaining(deadline))
        self.flush()

    def _handshake_step(self) -> bool:
        with self._lock:
            try:
                self._ssl.do_handshake()
            except ssl_module.SSLWantReadError:
                return False
        return True

    def _feed(self, data: bytes) -> None:
        with self._lock:
            if data:
                self._incoming.write(data)
            else:
                self._incoming.write_eof()

    def recv(self) -> bytes:
        while True:
            with self._lock:
                try:
                    return self._ssl.read(RECV_SIZE)
                except ssl_module.SSLWantReadError:
                    pass
                except (ssl_module.SSLZeroReturnError, ssl_module.SSLEOFError):
                    return b""
            self._feed(self._lower.recv())

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        for start in range(0, len(view), TLS_CHUNK):
            with self._lock:
                self._ssl.write(view[start : start + TLS_CHUNK])
                records = self._outgoing.read()
            self._lower.send(records)

    def has_output(self) -> bool:
        with self._lock:
            pending = self._outgoing.pending > 0
        return pending or self._lower.has_output()

    def flush(self) -> None:
        with self._lock:
            records = self._outgoing.read()
        if records:
            self._lower.send(records)
        self._lower.flush()

    def shutdown_write(self) -> None:
        # TLS half-close: close_notify, then the lower stream's end.
        with self._lock:
            try:
                self._ssl.unwrap()
            except ssl_module.SSLError:
                pass  # SSLWantReadError: the peer's close_notify has not come yet
            records = self._outgoing.read()
        if records:
            self._lower.send(records)
        self._lower.shutdown_write()


class TunnelTransport(Transport):
    """A ``ws://`` connection through the TLS connection to an ``https://`` proxy.

    Its ``ssl_object`` stays ``None``: the TLS is the proxy's, not the server's.
    """

    tls = True  # reads may make TLS records to write: the connection flushes them

    def __init__(self, inner: TLSTransport) -> None:
        self.sock = inner.sock
        self._inner = inner

    def recv(self) -> bytes:
        return self._inner.recv()

    def send(self, data: bytes) -> None:
        self._inner.send(data)

    def has_output(self) -> bool:
        return self._inner.has_output()

    def flush(self) -> None:
        self._inner.flush()

    def shutdown_write(self) -> None:
        self._inner.shutdown_write()
