"""The threading WebSocket server: :func:`serve`, :func:`unix_serve` and :class:`Server`.

A listening socket and an accept loop (:meth:`Server.serve_forever`) that waits with
:mod:`selectors` on the socket and on a wakeup socket, so that :meth:`Server.shutdown`
ends it at once from any thread or from a signal handler. Each connection gets a thread
that runs the opening handshake (TLS first, if any) and then the handler; the
connection's own reader and timer threads do the rest (see :mod:`.connection`).
"""

from __future__ import annotations

import errno
import inspect
import logging
import os
import selectors
import socket
import ssl as ssl_module
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, cast

from ..exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage
from ..protocol.connection import Codec, Side
from ..protocol.deflate import Deflate, ServerNegotiator, compression_settings
from ..protocol.handshake import ServerHandshake
from ..protocol.http import Request, Response
from .connection import Connection, _wait_event
from .transport import remaining as _remaining

__all__ = ["Server", "ServerConnection", "serve", "unix_serve"]

Handler = Callable[["ServerConnection"], Any]
ProcessRequest = Callable[["ServerConnection", Request], "Response | None"]
ProcessResponse = Callable[["ServerConnection", Request, Response], "Response | None"]
SelectSubprotocol = Callable[["ServerConnection", Sequence[str]], "str | None"]

# accept() errors that mean "out of resources": pause accepting instead of spinning.
_ACCEPT_RESOURCE_ERRORS = frozenset(
    (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
)


class ServerConnection(Connection):
    """The server side of a WebSocket connection; the argument of the handler."""

    side = Side.SERVER

    def __init__(self, server: Server, sock: socket.socket, **options: Any) -> None:
        super().__init__(sock, **options)
        self.server = server
        self._handshake = ServerHandshake(
            origins=server.origins,
            subprotocols=server.subprotocols,
            select_subprotocol=(
                None if server.select_subprotocol is None else self._select_subprotocol
            ),
            extensions=(
                None if server.compression is None else ServerNegotiator(server.compression)
            ),
        )

    def _select_subprotocol(self, offered: Sequence[str]) -> str | None:
        assert self.server.select_subprotocol is not None
        return self.server.select_subprotocol(self, offered)

    def _run(self) -> None:
        """The connection's thread: handshake, then the handler, then closing."""
        if not self._open_handshake():
            return
        if self.server._shutting_down and self.server._close_connections:
            self._close_quietly(1001, "server shutting down")
            return
        code = 1011
        try:
            self.server.handler(self)
            code = 1000
        except ConnectionClosed as exc:
            # The peer went away while the handler was talking to it: not a bug.
            code = 1000
            if self._debug:
                self.logger.debug("[%s] handler ended: %s", self.id, exc)
        except Exception:
            self.logger.error("[%s] connection handler failed", self.id, exc_info=True)
        finally:
            self._close_quietly(code, "")

    def _close_quietly(self, code: int, reason: str) -> None:
        try:
            self.close(code, reason)
        except Exception:  # pragma: no cover - close() doesn't raise on a broken connection
            self.logger.debug("[%s] error while closing", self.id, exc_info=True)

    def _open_handshake(self) -> bool:
        """Run the opening handshake; return True when the connection is open."""
        server = self.server
        timeout = server.open_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            if server.ssl is not None:
                self._start_tls(
                    server.ssl, server_side=True, server_hostname=None, deadline=deadline
                )
            request = self._receive_request(deadline)
            if request is None:
                self._close_unopened(graceful=True)
                return False
            response = self._respond(request)
            self.socket.settimeout(_remaining(deadline))
            self._transport.send(self._serialize(response))
        except TimeoutError:
            self.logger.info("[%s] opening handshake timed out; closing", self.id)
            self._close_unopened(graceful=False)
            return False
        except OSError as exc:  # also ssl.SSLError
            if self._debug:
                self.logger.debug("[%s] opening handshake failed: %r", self.id, exc)
            self._close_unopened(graceful=False)
            return False
        except Exception:  # pragma: no cover - a bug: don't leak the socket
            self.logger.error("[%s] opening handshake failed", self.id, exc_info=True)
            self._close_unopened(graceful=False)
            return False
        if response.status != 101:
            if self._handshake.exc is not None:
                self.logger.info(
                    "[%s] opening handshake refused (%d): %s", self.id, response.status,
                    self._handshake.exc,
                )
            self._close_unopened(graceful=True)
            return False
        self.subprotocol = self._handshake.subprotocol
        self.logger.info("[%s] connection open: %s", self.id, request.path)
        codec = cast("Codec | None", self._handshake.extension_state)
        self._open_protocol(self._handshake.trailing_data, codec)
        return True

    def _receive_request(self, deadline: float | None) -> Request | None:
        """Read until the request head is complete; ``None`` if there is none."""
        while True:
            self.socket.settimeout(_remaining(deadline))
            data = self._transport.recv()
            if not data:
                if self._debug:
                    self.logger.debug(
                        "[%s] connection closed before the opening handshake", self.id
                    )
                return None
            try:
                request = self._handshake.receive_data(data)
            except InvalidMessage as exc:
                self.logger.info("[%s] invalid opening handshake request: %s", self.id, exc)
                self.response = self._handshake.reject(exc.status, f"{exc}\n")
                self._transport.send(self._handshake.send_response(self.response))
                return None
            if request is not None:
                self.request = request
                return request

    def _respond(self, request: Request) -> Response:
        """Choose the response: process_request, the 101 or an error, process_response."""
        server = self.server
        response: Response | None = None
        try:
            if server.process_request is not None:
                response = _sync_result(server.process_request(self, request),
                                        "process_request")
            if response is None:
                response = self._handshake.accept(request)
            if server.process_response is not None:
                replaced = _sync_result(
                    server.process_response(self, request, response), "process_response"
                )
                if replaced is not None:
                    response = replaced
        except Exception:
            self.logger.error("[%s] opening handshake failed", self.id, exc_info=True)
            response = self._handshake.reject(500, "Failed to open a WebSocket connection.\n")
        self.response = response
        return response

    def _serialize(self, response: Response) -> bytes:
        try:
            return self._handshake.send_response(response)
        except InvalidHandshake as exc:
            self.logger.error("[%s] %s", self.id, exc)
            response = self._handshake.reject(500, "Failed to open a WebSocket connection.\n")
            self.response = response
            return self._handshake.send_response(response)


def _sync_result(result: Any, name: str) -> Response | None:
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()  # don't warn "coroutine was never awaited" on top of this error
        raise TypeError(
            f"{name} returned an awaitable: with tether.sync it must be a regular "
            "function that returns a Response or None"
        )
    if result is not None and not isinstance(result, Response):
        raise TypeError(f"{name} must return a Response or None, not {type(result).__name__}")
    return result


class Server:
    """A WebSocket server running each connection's handler in a thread.

    Create one with :func:`serve` or :func:`unix_serve`: it is listening on return.
    :meth:`serve_forever` accepts connections until :meth:`shutdown`. Used as a context
    manager, leaving the block shuts it down.
    """

    def __init__(
        self,
        sock: socket.socket | Sequence[socket.socket],
        handler: Handler,
        *,
        origins: Sequence[str | None] | None = None,
        subprotocols: Sequence[str] | None = None,
        select_subprotocol: SelectSubprotocol | None = None,
        compression: str | Deflate | None = "deflate",
        process_request: ProcessRequest | None = None,
        process_response: ProcessResponse | None = None,
        open_timeout: float | None = 10,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float | None = 10,
        max_size: int | None = 2**20,
        max_queue: int | None = 16,
        write_limit: int = 2**15,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        self._sockets = (sock,) if isinstance(sock, socket.socket) else tuple(sock)
        if not self._sockets:
            raise ValueError("a server needs at least one listening socket")
        #: the (first) listening socket
        self.socket = self._sockets[0]
        self.handler = handler
        self.origins = origins
        self.subprotocols = subprotocols
        self.select_subprotocol = select_subprotocol
        self.compression = compression_settings(compression)
        self.process_request = process_request
        self.process_response = process_response
        self.open_timeout = open_timeout
        self.close_timeout = close_timeout
        self.ssl = ssl
        self.logger = logger or logging.getLogger("tether.server")
        self._connection_options: dict[str, Any] = {
            "max_size": max_size,
            "max_queue": max_queue,
            "write_limit": write_limit,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "close_timeout": close_timeout,
            "logger": logger,
        }
        self._lock = threading.Lock()
        self._connections: set[ServerConnection] = set()
        self._threads: set[threading.Thread] = set()
        self._shutting_down = False
        self._close_connections = True
        # shutdown() was called in serve_forever's thread (a signal handler): the
        # closing is then serve_forever's to do, once it is out of select().
        self._teardown_in_serve_forever = False
        self._serving_thread: threading.Thread | None = None
        self._serve_done = threading.Event()
        self._stop = threading.Event()
        self._teardown_lock = threading.Lock()
        self._torn_down = False
        self._unix_path: tuple[str, int] | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._address = self.socket.getsockname()
        for listener in self._sockets:
            listener.setblocking(False)
            self.logger.info("server listening on %s", _format_address(listener))

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets: one per address the host resolved to."""
        return self._sockets

    @property
    def port(self) -> int:
        """The bound port (the same on every listening socket)."""
        if self.socket.family in (socket.AF_INET, socket.AF_INET6):
            return int(self._address[1])
        raise RuntimeError("the server has no TCP socket")

    @property
    def connections(self) -> set[ServerConnection]:
        """The open connections (the opening handshake completed, not closed yet)."""
        with self._lock:
            return {c for c in self._connections if c._open and not c._finished}

    def serve_forever(self) -> None:
        """Accept connections until :meth:`shutdown` is called.

        :meth:`shutdown` closes the connections; when it was called from this thread
        (a signal handler), this method does the closing before it returns. Ctrl-C
        (KeyboardInterrupt) also ends it: with ``with serve(...) as server``, leaving
        the block then shuts the server down.
        """
        with self._lock:
            if self._serving_thread is not None:
                raise RuntimeError("serve_forever() is already running")
            if self._shutting_down:
                return
            self._serving_thread = threading.current_thread()
            self._serve_done.clear()
        try:
            with selectors.DefaultSelector() as selector:
                for listener in self._sockets:
                    selector.register(listener, selectors.EVENT_READ)
                selector.register(self._wake_r, selectors.EVENT_READ)
                while not self._shutting_down:
                    for key, _ in selector.select():
                        if key.fileobj is self._wake_r:
                            self._drain_wakeup()
                        elif not self._shutting_down:
                            self._accept(cast(socket.socket, key.fileobj))
        finally:
            with self._lock:
                self._serving_thread = None
                teardown = self._teardown_in_serve_forever
            self._serve_done.set()
        if teardown:
            self._teardown()

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                raise
            self.logger.error("cannot accept connections (%s); pausing for 1 s", exc)
            self._stop.wait(1.0)
            return
        sock.setblocking(True)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._shutting_down:
                sock.close()
                return
            conn = ServerConnection(self, sock, **self._connection_options)
            thread = threading.Thread(
                target=self._run_connection, args=(conn,),
                name=f"tether-conn-{str(conn.id)[:8]}", daemon=True,
            )
            try:
                thread.start()
            except RuntimeError as exc:  # can't start new thread: refuse this one
                self.logger.error("cannot start a thread for a connection: %s", exc)
                sock.close()
                return
            self._connections.add(conn)
            self._threads.add(thread)

    def _run_connection(self, conn: ServerConnection) -> None:
        try:
            conn._run()
        finally:
            with self._lock:
                self._connections.discard(conn)
                self._threads.discard(threading.current_thread())

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # buffer full (already woken) or already closed

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def shutdown(self, close_connections: bool = True) -> None:
        """Stop accepting connections, close the open ones with 1001 (going away), and
        wait for their handlers (each gets ``close_timeout`` seconds, then is left
        behind with a warning). Idempotent.

        Call it from another thread, or from a signal handler while
        :meth:`serve_forever` runs: it then returns at once, and ``serve_forever``
        does the closing before it returns. With ``close_connections=False`` open
        connections are left to end on their own.
        """
        with self._lock:
            self._shutting_down = True
            if not close_connections:
                self._close_connections = False
            serving = self._serving_thread
            if serving is threading.current_thread():
                self._teardown_in_serve_forever = True
        self._stop.set()
        self._wake()
        if serving is threading.current_thread():
            return
        if serving is not None:
            _wait_event(self._serve_done, None)
        self._teardown()

    def _teardown(self) -> None:
        with self._teardown_lock:
            if self._torn_down:
                return
            self._torn_down = True
            self.logger.info("server closing")
            self._close_listener()
            if self._close_connections:
                self._close_all()
            self.logger.info("server closed")

    def _close_listener(self) -> None:
        for listener in self._sockets:
            listener.close()
        self._wake_r.close()
        self._wake_w.close()
        if self._unix_path is not None:
            path, inode = self._unix_path
            try:
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except OSError:
                pass

    def _close_all(self) -> None:
        with self._lock:
            connections = list(self._connections)
            threads = list(self._threads)
        # Start every closing handshake first, so that close timeouts run together.
        for conn in connections:
            if conn._open:
                with conn._lock:
                    conn._queue_close(1001, "server shutting down")
            else:
                conn._transport.abort()  # handshake in progress: nothing to close nicely
        for conn in connections:
            if conn._open:
                conn._flush_pending()
        timeout = self.close_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        for conn in connections:
            _wait_event(conn._closed, _until(deadline))
        # The handlers see ConnectionClosedOK and return; give them close_timeout.
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(_until(deadline))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            self.logger.warning(
                "%d connection handler(s) still running after shutdown: %s",
                len(stuck), ", ".join(stuck),
            )

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def _until(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - time.monotonic(), 0.0)


def _format_address(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    if sock.family == socket.AF_INET:
        return f"{name[0]}:{name[1]}"
    return str(name)


def _listen(host: str | None, port: int | None, backlog: int, reuse_port: bool
            ) -> list[socket.socket]:
    """Listening sockets for ``host``: every address it resolves to, on one port."""
    port = port or 0
    if not host:
        # Every interface: IPv6 and IPv4 on one socket where the system allows it.
        if socket.has_dualstack_ipv6():
            return [socket.create_server(("", port), family=socket.AF_INET6,
                                         dualstack_ipv6=True, backlog=backlog,
                                         reuse_port=reuse_port)]
        return [socket.create_server(("", port), backlog=backlog, reuse_port=reuse_port)]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
    sockets: list[socket.socket] = []
    try:
        for family, (ip, _, *scope) in addresses:
            # With port 0 the first socket picks the port; the others share it.
            bound = sockets[0].getsockname()[1] if sockets else port
            sockets.append(socket.create_server((ip, bound, *scope), family=family,
                                                backlog=backlog, reuse_port=reuse_port))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def serve(
    handler: Handler,
    host: str | None = None,
    port: int | None = None,
    *,
    origins: Sequence[str | None] | None = None,
    subprotocols: Sequence[str] | None = None,
    select_subprotocol: SelectSubprotocol | None = None,
    compression: str | Deflate | None = "deflate",
    process_request: ProcessRequest | None = None,
    process_response: ProcessResponse | None = None,
    open_timeout: float | None = 10,
    ping_interval: float | None = 20,
    ping_timeout: float | None = 20,
    close_timeout: float | None = 10,
    max_size: int | None = 2**20,
    max_queue: int | None = 16,
    write_limit: int = 2**15,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ssl: ssl_module.SSLContext | None = None,
    sock: socket.socket | None = None,
    backlog: int = 100,
    reuse_port: bool = False,
) -> Server:
    """Listen on ``host``:``port`` and return the :class:`Server` (not yet accepting).

    ``handler(connection)`` runs in a thread of its own for each connection, once the
    opening handshake succeeded; when it returns the connection is closed with 1000,
    when it raises with 1011 (and the traceback is logged on ``tether.server``).
    ``host`` ``None`` or ``""`` listens on every interface, a name on every address it
    resolves to (``"localhost"``: 127.0.0.1 and ::1); port 0 or ``None`` picks a free
    port (see :attr:`Server.port`). ``ssl`` is an :class:`ssl.SSLContext` for
    ``wss://``; ``sock`` a socket already bound and listening, instead of ``host`` and
    ``port``. Options: as for :func:`tether.serve`.

    ``with serve(handler, "localhost", 8765) as server: server.serve_forever()``
    """
    sockets: socket.socket | list[socket.socket]
    if sock is None:
        sockets = _listen(host, port, backlog, reuse_port)
    elif host is not None or port is not None:
        raise ValueError("pass either sock= or host and port, not both")
    else:
        sockets = sock
    return Server(
        sockets, handler, origins=origins, subprotocols=subprotocols,
        select_subprotocol=select_subprotocol, compression=compression,
        process_request=process_request, process_response=process_response,
        open_timeout=open_timeout, ping_interval=ping_interval, ping_timeout=ping_timeout,
        close_timeout=close_timeout, max_size=max_size, max_queue=max_queue,
        write_limit=write_limit, logger=logger, ssl=ssl,
    )


def unix_serve(
    handler: Handler, path: str | None = None, *, sock: socket.socket | None = None,
    backlog: int = 100, **options: Any,
) -> Server:
    """:func:`serve` on a Unix socket at ``path`` (removed again by ``shutdown``)."""
    inode = None
    if sock is None:
        if path is None:
            raise ValueError("unix_serve needs a path or a sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(backlog)
            inode = os.stat(path).st_ino
        except BaseException:
            sock.close()
            raise
    elif path is not None:
        raise ValueError("pass either sock= or path, not both")
    server = serve(handler, sock=sock, **options)
    if path is not None and inode is not None:
        server._unix_path = (path, inode)
    return server
