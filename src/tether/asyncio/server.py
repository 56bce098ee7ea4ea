"""The asyncio WebSocket server: :func:`serve`, :func:`unix_serve` and :class:`Server`."""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from types import TracebackType
from typing import Any

from ..exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage
from ..protocol.connection import Side
from ..protocol.deflate import Deflate, ServerNegotiator, compression_settings
from ..protocol.handshake import ServerHandshake
from ..protocol.http import Request, Response
from ._timers import Cancellable
from .connection import Connection

__all__ = ["Server", "ServerConnection", "serve", "unix_serve"]

Handler = Callable[["ServerConnection"], Awaitable[Any]]
ProcessRequest = Callable[
    ["ServerConnection", Request], "Response | Awaitable[Response | None] | None"
]
ProcessResponse = Callable[
    ["ServerConnection", Request, Response], "Response | Awaitable[Response | None] | None"
]
SelectSubprotocol = Callable[["ServerConnection", Sequence[str]], "str | None"]


class ServerConnection(Connection):
    """The server side of a WebSocket connection; the argument of the handler."""

    __slots__ = ("_codec_state", "_deciding", "_handshake", "_open_handle", "handler_task",
                 "server")

    side = Side.SERVER

    def __init__(self, server: Server, **options: Any) -> None:
        super().__init__(**options)
        self.server = server
        self._handshake = ServerHandshake(
            origins=server.origins,
            subprotocols=server.subprotocols,
            select_subprotocol=(
                None if server.select_subprotocol is None
                else self._select_subprotocol
            ),
            extensions=(
                None if server.compression is None else ServerNegotiator(server.compression)
            ),
        )
        self._open_handle: Cancellable | None = None
        self._codec_state: Any = None
        # True while an async process_request/process_response decides the answer
        self._deciding = False
        #: the task running the handler (and, with async hooks, the handshake's end)
        self.handler_task: asyncio.Task[None] | None = None

    def _select_subprotocol(self, offered: Sequence[str]) -> str | None:
        assert self.server.select_subprotocol is not None
        return self.server.select_subprotocol(self, offered)

    def _codec(self) -> Any:
        return self._handshake.extension_state

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the handshake: wait for the request, with ``open_timeout``."""
        super().connection_made(transport)
        self.server._connections.add(self)
        if self.server.open_timeout is not None:
            self._open_handle = self._timers.call_later(
                self.loop, self.server.open_timeout, self._open_timed_out
            )

    def _open_timed_out(self) -> None:
        self._open_handle = None
        if not self._open and self.transport is not None:
            self.logger.info("[%s] opening handshake timed out; closing", self.id)
            self.transport.abort()

    def _handshake_received(self, data: bytes) -> None:
        """Handshake phase: feed the request parser; answer once the request is whole.

        Without hooks, or with synchronous ones, the handshake is answered right here,
        and a task is created only for the handler once the connection is open.
        """
        if self._deciding:
            # Bytes after the request head: kept as trailing data.
            self._handshake.receive_trailing(data)
            return
        transport = self.transport
        assert transport is not None
        try:
            request = self._handshake.receive_data(data)
        except InvalidMessage as exc:
            self.logger.info("[%s] invalid opening handshake request: %s", self.id, exc)
            rejection = self._handshake.reject(exc.status, f"{exc}\n")
            transport.write(self._handshake.send_response(rejection))
            transport.close()
            return
        if request is None:
            return
        self.request = request
        server = self.server
        response: Response | None = None
        try:
            if server.process_request is not None:
                result = server.process_request(self, request)
                if inspect.isawaitable(result):
                    self._decide_later(self._finish_process_request(result))
                    return
                response = result
            if response is None:
                response = self._handshake.accept(request)
            assert response is not None
            if server.process_response is not None:
                result = server.process_response(self, request, response)
                if inspect.isawaitable(result):
                    self._decide_later(self._finish_process_response(result, response))
                    return
                if result is not None:
                    response = result
        except Exception:
            response = self._hook_failed()
        if self._send_handshake_response(response):
            self._start_handler()

    def _hook_failed(self) -> Response:
        self.logger.error("[%s] opening handshake failed", self.id, exc_info=True)
        return self._handshake.reject(500, "Failed to open a WebSocket connection.\n")

    def _decide_later(self, decision: Coroutine[Any, Any, Response]) -> None:
        """An async hook decides the response: read nothing more until it has (bytes that
        came with the request stay in the parser's buffer, bounded by one read); then run the
        handler in the same task."""
        assert self.transport is not None
        self._deciding = True
        self.transport.pause_reading()
        self._spawn(self._run_async_handshake(decision))

    async def _finish_process_request(self, result: Awaitable[Response | None]) -> Response:
        response = await result
        if response is None:
            assert self.request is not None
            response = self._handshake.accept(self.request)
        if self.server.process_response is not None:
            assert self.request is not None
            later = self.server.process_response(self, self.request, response)
            replaced = await later if inspect.isawaitable(later) else later
            if replaced is not None:
                response = replaced
        return response

    async def _finish_process_response(
        self, result: Awaitable[Response | None], response: Response
    ) -> Response:
        replaced = await result
        return replaced if replaced is not None else response

    async def _run_async_handshake(self, decision: Coroutine[Any, Any, Response]) -> None:
        try:
            try:
                response = await decision
            except Exception:
                response = self._hook_failed()
            self._deciding = False
            opened = self._send_handshake_response(response)
        except asyncio.CancelledError:
            if self.transport is not None:
                self.transport.abort()
            raise
        if opened:
            await self._run_handler()

    def _send_handshake_response(self, response: Response) -> bool:
        """Write the response; switch to WebSocket on a 101. Return whether open."""
        transport = self.transport
        assert transport is not None
        self.response = response
        if transport.is_closing():
            return False
        try:
            data = self._handshake.send_response(response)
        except InvalidHandshake as exc:
            self.logger.error("[%s] %s", self.id, exc)
            response = self._handshake.reject(500, "Failed to open a WebSocket connection.\n")
            self.response = response
            data = self._handshake.send_response(response)
        transport.write(data)
        if self._open_handle is not None:
            self._open_handle.cancel()
            self._open_handle = None
        if response.status != 101:
            if self._handshake.exc is not None:
                self.logger.info(
                    "[%s] opening handshake refused (%d): %s", self.id, response.status,
                    self._handshake.exc,
                )
            transport.close()
            return False
        self.subprotocol = self._handshake.subprotocol
        if self._info:
            assert self.request is not None
            self.logger.info("[%s] connection open: %s", self.id, self.request.path)
        trailing = self._handshake.trailing_data
        # The connection keeps its request and response for its whole life: in their
        # compact form, without the HTTP parser.
        assert self.request is not None
        self.request.headers._compact()
        response.headers._compact()
        self._open_protocol(trailing)
        self._handshake = None  # type: ignore[assignment]
        if not self._paused_reading and not transport.is_closing():
            transport.resume_reading()
        return True

    def _start_handler(self) -> None:
        self._spawn(self._run_handler())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.handler_task = self.loop.create_task(coro)
        handlers = self.server._handlers
        handlers.add(task)
        task.add_done_callback(handlers.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the connection."""
        self.server._connections.discard(self)
        if self._open_handle is not None:
            self._open_handle.cancel()
        super().connection_lost(exc)

    async def _run_handler(self) -> None:
        try:
            await self.server.handler(self)
        except asyncio.CancelledError:
            await self._close_quietly(1001, "")
            raise
        except ConnectionClosed as exc:
            # The peer went away while the handler was talking to it: not a bug.
            self.logger.debug("[%s] handler ended: %s", self.id, exc)
        except Exception:
            self.logger.error("[%s] connection handler failed", self.id, exc_info=True)
            await self._close_quietly(1011, "")
        else:
            if not self.connection_lost_waiter.done():
                await self._close_quietly(1000, "")

    async def _close_quietly(self, code: int, reason: str) -> None:
        try:
            await self.close(code, reason)
        except Exception:  # pragma: no cover - close() swallows connection errors
            self.logger.debug("[%s] error while closing", self.id, exc_info=True)


class Server:
    """A WebSocket server: listens, runs a handler per connection, closes gracefully.

    Create one with :func:`serve` or :func:`unix_serve`.
    """

    def __init__(
        self,
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
    ) -> None:
        self.handler = handler
        self.origins = origins
        self.subprotocols = subprotocols
        self.select_subprotocol = select_subprotocol
        self.compression = compression_settings(compression)
        self.process_request = process_request
        self.process_response = process_response
        self.open_timeout = open_timeout
        self.logger = logger or logging.getLogger("tether.server")
        self._connection_options: dict[str, Any] = {
            "max_size": max_size,
            "max_queue": max_queue,
            "write_limit": write_limit,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "close_timeout": close_timeout,
            "logger": self.logger,  # one lookup, not one per connection
        }
        self._connections: set[ServerConnection] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._closing: asyncio.Task[None] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None

    def _factory(self) -> ServerConnection:
        return ServerConnection(self, **self._connection_options)

    def _attach(self, server: asyncio.Server) -> None:
        self._server = server
        self._closed_waiter = asyncio.get_running_loop().create_future()
        for sock in server.sockets:
            self.logger.info("server listening on %s", _format_address(sock))

    @property
    def connections(self) -> set[ServerConnection]:
        """The open connections (the opening handshake completed, not closed yet)."""
        return {c for c in self._connections if c._open}

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening sockets."""
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def port(self) -> int:
        """The bound port of the first listening socket."""
        for sock in self.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(sock.getsockname()[1])
        raise RuntimeError("the server has no TCP socket")

    def is_serving(self) -> bool:
        """Tell whether the server accepts new connections."""
        return self._server is not None and self._server.is_serving()

    async def serve_forever(self) -> None:
        """Serve until :meth:`close` is called (or the task is cancelled)."""
        assert self._closed_waiter is not None, "the server is not started"
        await asyncio.shield(self._closed_waiter)

    def close(self, close_connections: bool = True) -> None:
        """Stop accepting connections; close open ones with 1001 (going away).

        With ``close_connections=False``, open connections are left to end on their
        own. :meth:`wait_closed` waits until everything is done.
        """
        if self._closing is None and self._server is not None:
            self._closing = asyncio.get_running_loop().create_task(
                self._close(close_connections)
            )

    async def _close(self, close_connections: bool) -> None:
        assert self._server is not None and self._closed_waiter is not None
        self.logger.info("server closing")
        self._server.close()
        if close_connections:
            pending = [c for c in self._connections if not c._open and c.transport]
            for conn in pending:
                # Handshake not complete: nothing to close gracefully. An async hook
                # still deciding the answer is cancelled.
                assert conn.transport is not None
                conn.transport.abort()
                if conn.handler_task is not None:
                    conn.handler_task.cancel()
            closing = [c.close(1001, "server shutting down") for c in list(self._connections)
                       if c._open]
            if closing:
                await asyncio.gather(*closing, return_exceptions=True)
        handlers = {t for t in self._handlers if not t.done()}
        if handlers:
            await asyncio.wait(handlers)
        await self._server.wait_closed()
        if not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        self.logger.info("server closed")

    async def wait_closed(self) -> None:
        """Wait until the server and every connection handler are done."""
        if self._closing is None:
            assert self._closed_waiter is not None, "the server is not started"
            await asyncio.shield(self._closed_waiter)
        else:
            await asyncio.shield(self._closing)

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
        await self.wait_closed()


def _format_address(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    if sock.family == socket.AF_INET:
        return f"{name[0]}:{name[1]}"
    return str(name)


class serve:
    """Start a WebSocket server: ``await serve(...)`` or ``async with serve(...) as server``.

    ``handler(connection)`` runs for each connection; when it returns the connection
    is closed with 1000, when it raises with 1011. Options: see :class:`Server`.
    Keyword arguments it does not know are passed to :meth:`loop.create_server`
    (``ssl``, ``sock``, ``reuse_port``, ``backlog``...). Port 0 picks a free port.
    """

    def __init__(
        self,
        handler: Handler,
        host: str | Sequence[str] | None = None,
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
        **kwargs: Any,
    ) -> None:
        self.server = Server(
            handler, origins=origins, subprotocols=subprotocols,
            select_subprotocol=select_subprotocol, compression=compression,
            process_request=process_request, process_response=process_response,
            open_timeout=open_timeout, ping_interval=ping_interval, ping_timeout=ping_timeout,
            close_timeout=close_timeout, max_size=max_size, max_queue=max_queue,
            write_limit=write_limit, logger=logger,
        )
        self._host = host
        self._port = port
        self._kwargs = kwargs

    async def _create(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        return await loop.create_server(self.server._factory, self._host, self._port,
                                        **self._kwargs)

    async def _start(self) -> Server:
        server = await self._create()
        # uvloop's server is not an asyncio.Server subclass but has the same API.
        self.server._attach(server)  # type: ignore[arg-type]
        return self.server

    def __await__(self) -> Generator[Any, None, Server]:
        return self._start().__await__()

    async def __aenter__(self) -> Server:
        return await self._start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.close()
        await self.server.wait_closed()


class unix_serve(serve):
    """:func:`serve` on a Unix socket at ``path``."""

    def __init__(self, handler: Handler, path: str | None = None, **options: Any) -> None:
        super().__init__(handler, None, None, **options)
        self._path = path

    async def _create(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        return await loop.create_unix_server(self.server._factory, self._path, **self._kwargs)
