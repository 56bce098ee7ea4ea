"""The asyncio WebSocket client: :func:`connect` and :func:`unix_connect`."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl as ssl_module
from collections.abc import AsyncIterator, Generator, Sequence
from types import TracebackType
from typing import Any

from ..exceptions import (
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
)
from ..protocol.connection import Side
from ..protocol.deflate import Deflate, client_accept, client_offer, compression_settings
from ..protocol.handshake import ClientHandshake
from ..protocol.http import HeadersLike
from ..uri import WebSocketURI, auth_headers, parse_uri
from .connection import Connection

__all__ = ["ClientConnection", "WebSocketURI", "connect", "parse_uri", "unix_connect"]


class ClientConnection(Connection):
    """The client side of a WebSocket connection, as returned by :func:`connect`."""

    side = Side.CLIENT

    def __init__(self, handshake: ClientHandshake, compression: Deflate | None,
                 **options: Any) -> None:
        super().__init__(**options)
        self._handshake = handshake
        self._compression = compression
        self._codec_state: Any = None
        self.request = handshake.request
        self.handshake_waiter: asyncio.Future[None] = self.loop.create_future()

    def _codec(self) -> Any:
        return self._codec_state

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the opening handshake request."""
        super().connection_made(transport)
        if self._debug:
            self.logger.debug("[%s] > GET %s", self.id, self.request.path if self.request
                              else "")
        assert self.transport is not None
        self.transport.write(self._handshake.send_request())

    def _handshake_received(self, data: bytes) -> None:
        """Handshake phase: feed the response parser (``b""`` at EOF)."""
        if self.handshake_waiter.done():
            return
        try:
            response = self._handshake.receive_data(data)
            if response is None:
                return
            self.response = response
            subprotocol, extensions = self._handshake.check_response(response)
            self._codec_state = client_accept(extensions, self._compression)
        except InvalidHandshake as exc:
            if self._debug:
                self.logger.debug("[%s] ! opening handshake failed: %s", self.id, exc)
            self.handshake_waiter.set_exception(exc)
            assert self.transport is not None
            self.transport.close()
            return
        self.subprotocol = subprotocol
        # Open first: frames that came with the response (even a close frame) are
        # the connection's business, not a handshake failure.
        self.handshake_waiter.set_result(None)
        self._open_protocol(self._handshake.trailing_data)

    def eof_received(self) -> bool | None:
        """The server closed its side: complete an error response or end the connection."""
        if not self._open:
            self._handshake_received(b"")
            return None
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail a pending handshake; otherwise as for any connection."""
        if not self.handshake_waiter.done():
            error = InvalidMessage("connection closed during the opening handshake")
            if exc is not None:
                error.__cause__ = exc
            self.handshake_waiter.set_exception(error)
        super().connection_lost(exc)


def _retryable(exc: BaseException) -> bool:
    """Errors after which reconnecting may help."""
    if isinstance(exc, InvalidStatus):
        return exc.response.status >= 500 or exc.response.status == 429
    if isinstance(exc, ssl_module.SSLCertVerificationError):
        return False
    return isinstance(exc, (OSError, asyncio.TimeoutError, InvalidMessage))


class connect:
    """Open a WebSocket connection to ``uri``.

    ``ws = await connect(uri)``, ``async with connect(uri) as ws``, or
    ``async for ws in connect(uri)`` to reconnect after each disconnection, with
    exponential backoff and full jitter (``backoff_initial`` seconds at first, growing
    by ``backoff_factor`` up to ``backoff_max``). Keyword arguments it does not know
    are passed to :meth:`loop.create_connection`.
    """

    def __init__(
        self,
        uri: str,
        *,
        origin: str | None = None,
        subprotocols: Sequence[str] | None = None,
        additional_headers: HeadersLike | None = None,
        user_agent_header: str | None = "tether",
        compression: str | Deflate | None = "deflate",
        open_timeout: float | None = 10,
        ping_interval: float | None = 20,
        ping_timeout: float | None = 20,
        close_timeout: float | None = 10,
        max_size: int | None = 2**20,
        max_queue: int | None = 16,
        write_limit: int = 2**15,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        ssl: ssl_module.SSLContext | bool | None = None,
        server_hostname: str | None = None,
        backoff_initial: float = 1.0,
        backoff_factor: float = 1.618,
        backoff_max: float = 60.0,
        **kwargs: Any,
    ) -> None:
        self.uri = uri
        self.wsuri = parse_uri(uri)
        if ssl is not None and ssl is not False and not self.wsuri.secure:
            raise ValueError("ssl= was given for a ws:// URI; use wss:// for TLS")
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.origin = origin
        self.subprotocols = subprotocols
        self.additional_headers = additional_headers
        self.user_agent_header = user_agent_header
        self.compression = compression_settings(compression)
        self.open_timeout = open_timeout
        self.logger = logger or logging.getLogger("tether.client")
        self.backoff_initial = backoff_initial
        self.backoff_factor = backoff_factor
        self.backoff_max = backoff_max
        self._connection_options: dict[str, Any] = {
            "max_size": max_size,
            "max_queue": max_queue,
            "write_limit": write_limit,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "close_timeout": close_timeout,
            "logger": logger,
        }
        self._kwargs = kwargs
        self.connection: ClientConnection | None = None

    def _factory(self) -> ClientConnection:
        wsuri = self.wsuri
        headers = list(auth_headers(wsuri))
        if self.additional_headers is not None:
            from ..protocol.http import Headers

            headers.extend(Headers(self.additional_headers).raw_items())
        handshake = ClientHandshake(
            wsuri.host_header,
            wsuri.path,
            origin=self.origin,
            subprotocols=self.subprotocols,
            extensions_offer=(
                client_offer(self.compression) if self.compression is not None else None
            ),
            additional_headers=headers or None,
            user_agent_header=self.user_agent_header,
        )
        return ClientConnection(handshake, self.compression, **self._connection_options)

    async def _create_connection(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        kwargs = dict(self._kwargs)
        if self.wsuri.secure:
            kwargs["ssl"] = True if self.ssl is None else self.ssl
            if self.server_hostname is not None:
                kwargs["server_hostname"] = self.server_hostname
        if "sock" in kwargs:
            _, conn = await loop.create_connection(self._factory, **kwargs)
        else:
            _, conn = await loop.create_connection(
                self._factory, self.wsuri.host, self.wsuri.port, **kwargs
            )
        return conn

    async def _open(self) -> ClientConnection:
        conn: ClientConnection | None = None
        try:
            async with _timeout(self.open_timeout):
                conn = await self._create_connection()
                await conn.handshake_waiter
        except BaseException:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            raise
        self.connection = conn
        return conn

    def __await__(self) -> Generator[Any, None, ClientConnection]:
        return self._open().__await__()

    async def __aenter__(self) -> ClientConnection:
        return await self._open()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.connection is not None:
            await self.connection.close()

    def __aiter__(self) -> AsyncIterator[ClientConnection]:
        return self._reconnect()

    async def _reconnect(self) -> AsyncIterator[ClientConnection]:
        delay = self.backoff_initial
        while True:
            try:
                conn = await self._open()
            except Exception as exc:
                if not _retryable(exc):
                    raise
                wait = random.uniform(0, delay)
                self.logger.info(
                    "connection to %s failed (%s); retrying in %.1f s", self.uri, exc, wait
                )
                await asyncio.sleep(wait)
                delay = min(delay * self.backoff_factor, self.backoff_max)
                continue
            delay = self.backoff_initial
            try:
                yield conn
            finally:
                await conn.close()


class unix_connect(connect):
    """:func:`connect` over the Unix socket at ``path``; ``uri`` defaults to ``ws://localhost/``."""

    def __init__(self, path: str | None = None, uri: str | None = None, **options: Any) -> None:
        if uri is None:
            uri = "wss://localhost/" if options.get("ssl") else "ws://localhost/"
        super().__init__(uri, **options)
        self._path = path

    async def _create_connection(self) -> ClientConnection:
        loop = asyncio.get_running_loop()
        kwargs = dict(self._kwargs)
        if self.wsuri.secure:
            kwargs["ssl"] = True if self.ssl is None else self.ssl
            kwargs.setdefault("server_hostname", self.server_hostname or self.wsuri.host)
        _, conn = await loop.create_unix_connection(self._factory, self._path, **kwargs)
        return conn


class _timeout:
    """``asyncio.timeout`` for Python 3.10 too (None = no timeout)."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._expired = False

    async def __aenter__(self) -> None:
        if self.delay is None:
            return
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._handle = asyncio.get_running_loop().call_later(self.delay, self._expire)

    def _expire(self) -> None:
        self._expired = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._expired and exc_type is asyncio.CancelledError:
            task = self._task
            if task is not None and hasattr(task, "uncancel"):
                task.uncancel()
            raise TimeoutError(f"opening handshake timed out after {self.delay} s") from exc
