"""The asyncio WebSocket client: :func:`connect` and :func:`unix_connect`.

Opening a connection, all bounded by ``open_timeout``: the TCP connection, straight
to the server or through a proxy (an HTTP CONNECT tunnel spoken by
:class:`_TunnelProtocol`, TLS to the proxy for ``https://`` proxies; SOCKS through
python-socks), TLS to the server for ``wss://`` (``loop.start_tls`` on the tunnel),
then the WebSocket handshake; a redirect starts again at the new URI
(:class:`tether.proxy.RedirectChain`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random as random_module
import socket
import ssl as ssl_module
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Sequence
from types import TracebackType
from typing import Any, cast

from ..exceptions import (
    InvalidHandshake,
    InvalidMessage,
    InvalidProxy,
    InvalidStatus,
)
from ..protocol.connection import Side
from ..protocol.deflate import Deflate, client_accept, client_offer, compression_settings
from ..protocol.handshake import ClientHandshake
from ..protocol.http import HeadersLike
from ..proxy import (
    MAX_REDIRECTS,
    SOCKS_INSTALL_HINT,
    ConnectHandshake,
    Proxy,
    ProxyOption,
    RedirectChain,
    check_proxy_option,
    proxy_error_is_temporary,
    redact,
    request_headers,
    retry_after,
    select_proxy,
    socks_error,
    socks_settings,
)
from ..uri import WebSocketURI, parse_uri
from .connection import Connection

__all__ = [
    "Backoff",
    "ClientConnection",
    "WebSocketURI",
    "connect",
    "parse_uri",
    "process_exception",
    "unix_connect",
]


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
    if isinstance(exc, InvalidProxy):
        return proxy_error_is_temporary(exc)
    # A certificate that did not verify (or a name that does not match) stays so: an
    # ssl.SSLCertVerificationError is an OSError, so this test comes first.
    if isinstance(exc, ssl_module.SSLCertVerificationError):
        return False
    return isinstance(exc, (OSError, asyncio.TimeoutError, InvalidMessage))


def process_exception(exc: Exception) -> Exception | None:
    """The default ``process_exception`` of :class:`connect`: which failures to retry.

    Returns ``None`` (try again, after a delay) for a failure that may be temporary: an
    :class:`OSError` such as a refused connection or a network error, a
    :class:`TimeoutError`, an :class:`~tether.InvalidMessage` (a malformed answer, a
    connection closed during the handshake), an :class:`~tether.InvalidStatus` of 500 or
    more or 429, an :class:`~tether.InvalidProxy` for a proxy that answered so or could
    not reach the server. Returns ``exc`` itself (raise it) for the rest: another HTTP
    status such as 401 or 404, a certificate that did not verify, a failed negotiation.

    A ``process_exception`` of your own may call this one for the cases it leaves alone.
    """
    return None if _retryable(exc) else exc


def _retry_after(exc: Exception, now: float) -> float | None:
    """The ``Retry-After`` of the server's (or the proxy's) answer in ``exc``, if any."""
    if isinstance(exc, InvalidProxy):
        exc = exc.__cause__ if isinstance(exc.__cause__, InvalidStatus) else exc
    if not isinstance(exc, InvalidStatus):
        return None
    return retry_after(exc.response, now)


def _describe(exc: BaseException) -> str:
    """``exc`` in one line for a log message: its type and its message."""
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _note_time(times: list[float], clock: Callable[[], float], _: object) -> None:
    """Done callback: append the time to ``times``."""
    times.append(clock())


class Backoff:
    """Exponential backoff with full jitter: the delays before successive attempts.

    Each delay is random between 0 and a ceiling that starts at ``initial`` and is
    multiplied by ``factor`` after each delay, up to ``maximum`` ("full jitter": the
    clients that a server restart disconnected together come back spread out).
    :meth:`reset` starts again from ``initial``. ``random`` returns a float in
    [0, 1) (:func:`random.random`); tests pass one of their own.
    """

    def __init__(self, initial: float = 1.0, factor: float = 1.618, maximum: float = 60.0,
                 random: Callable[[], float] = random_module.random) -> None:
        if not initial >= 0:
            raise ValueError(f"backoff_initial must be >= 0 seconds, not {initial}")
        if not factor >= 1:
            raise ValueError(f"backoff_factor must be >= 1, not {factor}")
        if not maximum >= initial:
            raise ValueError(f"backoff_max must be >= backoff_initial ({initial}), "
                             f"not {maximum}")
        self.initial = initial
        self.factor = factor
        self.maximum = maximum
        self.random = random
        self.ceiling = initial

    def __iter__(self) -> Backoff:
        return self

    def __next__(self) -> float:
        """The next delay, in seconds."""
        ceiling = self.ceiling
        self.ceiling = min(ceiling * self.factor, self.maximum)
        return self.random() * ceiling

    def reset(self) -> None:
        """Start again from ``initial`` (after a connection that stayed up)."""
        self.ceiling = self.initial


#: Keyword arguments of ``loop.create_connection`` about the TLS layer: they apply to
#: TLS with the server, not to the TCP connection (to a proxy, say).
_TLS_KWARGS = frozenset({"ssl_handshake_timeout", "ssl_shutdown_timeout"})


class connect:
    """Open a WebSocket connection to ``uri``.

    ``ws = await connect(uri)``, ``async with connect(uri) as ws``, or
    ``async for ws in connect(uri)`` to reconnect after each disconnection, with
    exponential backoff and full jitter: a random delay between 0 and a ceiling that
    starts at ``backoff_initial`` seconds and grows by ``backoff_factor`` up to
    ``backoff_max``; a connection that stayed open ``backoff_reset_after`` seconds
    starts it again from ``backoff_initial``. A failure to connect is retried when
    ``process_exception(exc)`` returns ``None`` and raised when it returns an exception
    (see :func:`process_exception`, the default); a ``Retry-After`` header on a 503
    or 429 answer lengthens the delay, up to ``backoff_max``. ``proxy`` is a proxy URL
    (``http://``, ``https://``, ``socks5://``, ``socks5h://``, ``socks4://``,
    ``socks4a://``), ``True`` for the environment's (``https_proxy``, ``http_proxy``,
    ``all_proxy``, ``no_proxy``), or ``None`` for none; ``proxy_ssl`` is the
    :class:`ssl.SSLContext` for TLS to an ``https://`` proxy. Redirects (301, 302, 303,
    307, 308) are followed, at most ``max_redirects`` (``None``: no limit; 0: none).
    Keyword arguments it does not know are passed to :meth:`loop.create_connection`.
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
        proxy: ProxyOption = True,
        proxy_ssl: ssl_module.SSLContext | None = None,
        max_redirects: int | None = MAX_REDIRECTS,
        backoff_initial: float = 1.0,
        backoff_factor: float = 1.618,
        backoff_max: float = 60.0,
        backoff_reset_after: float = 10.0,
        process_exception: Callable[[Exception], Exception | None] = process_exception,
        **kwargs: Any,
    ) -> None:
        self.uri = uri
        self.wsuri = parse_uri(uri)
        if ssl is not None and ssl is not False and not self.wsuri.secure:
            raise ValueError("ssl= was given for a ws:// URI; use wss:// for TLS")
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.proxy = check_proxy_option(proxy)
        if isinstance(self.proxy, str) and "sock" in kwargs:
            raise ValueError("proxy= and sock= cannot be used together: sock is already "
                             "connected")
        self.proxy_ssl = proxy_ssl
        RedirectChain(uri, max_redirects)  # checks max_redirects
        self.max_redirects = max_redirects
        self.origin = origin
        self.subprotocols = subprotocols
        self.additional_headers = additional_headers
        self.user_agent_header = user_agent_header
        self.compression = compression_settings(compression, client=True)
        self.open_timeout = open_timeout
        self.logger = logger or logging.getLogger("tether.client")
        Backoff(backoff_initial, backoff_factor, backoff_max)  # checks the values
        if not backoff_reset_after >= 0:
            raise ValueError(f"backoff_reset_after must be >= 0 seconds, not "
                             f"{backoff_reset_after}")
        self.backoff_initial = backoff_initial
        self.backoff_factor = backoff_factor
        self.backoff_max = backoff_max
        self.backoff_reset_after = backoff_reset_after
        self.process_exception = process_exception
        # Seams for the tests of reconnection: how to wait, what time it is (both in
        # seconds, as asyncio.sleep and time.monotonic), and the jitter in [0, 1).
        self._sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep
        self._clock: Callable[[], float] = time.monotonic
        self._random: Callable[[], float] = random_module.random
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

    def _factory(self, wsuri: WebSocketURI, same_origin: bool = True) -> ClientConnection:
        headers = request_headers(wsuri, self.additional_headers, same_origin=same_origin)
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

    def _tls_options(self, wsuri: WebSocketURI) -> dict[str, Any]:
        """``ssl`` and ``server_hostname`` for ``create_connection`` (empty for ws://)."""
        if not wsuri.secure:
            return {}
        options: dict[str, Any] = {"ssl": True if self.ssl is None else self.ssl}
        if options["ssl"] is not False:
            # server_hostname overrides the name checked for the URI's host only.
            same_host = wsuri.host == self.wsuri.host
            options["server_hostname"] = (
                self.server_hostname if self.server_hostname is not None and same_host
                else wsuri.host
            )
        return options

    async def _create_connection(
        self, wsuri: WebSocketURI, same_origin: bool = True
    ) -> ClientConnection:
        loop = asyncio.get_running_loop()
        factory = functools.partial(self._factory, wsuri, same_origin)
        kwargs = dict(self._kwargs)
        tls = self._tls_options(wsuri)
        if "sock" in kwargs:
            _, conn = await loop.create_connection(factory, **tls, **kwargs)
            return conn
        proxy = select_proxy(wsuri, self.proxy)
        if proxy is None:
            _, conn = await loop.create_connection(
                factory, wsuri.host, wsuri.port, **tls, **kwargs
            )
            return conn
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("connecting to %s:%d through proxy %s",
                              wsuri.host, wsuri.port, proxy.url)
        tls_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _TLS_KWARGS}
        if not tls.get("ssl"):
            tls_kwargs = {}
        if proxy.is_http:
            return await self._through_http_proxy(proxy, wsuri, factory, tls, tls_kwargs, kwargs)
        sock = await _socks_connect(proxy, wsuri, kwargs)
        try:
            _, conn = await loop.create_connection(factory, sock=sock, **tls, **tls_kwargs)
        except BaseException:
            sock.close()
            raise
        return conn

    async def _through_http_proxy(
        self,
        proxy: Proxy,
        wsuri: WebSocketURI,
        factory: functools.partial[ClientConnection],
        tls: dict[str, Any],
        tls_kwargs: dict[str, Any],
        kwargs: dict[str, Any],
    ) -> ClientConnection:
        """A CONNECT tunnel through an HTTP(S) proxy, then TLS to the server for wss://."""
        loop = asyncio.get_running_loop()
        handshake = ConnectHandshake(proxy, wsuri.host, wsuri.port,
                                     user_agent_header=self.user_agent_header)
        tunnel = _TunnelProtocol(handshake, loop)
        proxy_tls: dict[str, Any] = {}
        if proxy.tls:
            proxy_tls = {"ssl": self.proxy_ssl or True, "server_hostname": proxy.host}
        transport, _ = await loop.create_connection(
            lambda: tunnel, proxy.host, proxy.port, **proxy_tls, **kwargs
        )
        try:
            await tunnel.waiter
            handshake.check_no_trailing_data(len(tunnel.unexpected))
            conn = factory()
            if tls.get("ssl"):
                context = tls["ssl"]
                if not isinstance(context, ssl_module.SSLContext):
                    context = ssl_module.create_default_context()
                try:
                    tls_transport = await loop.start_tls(
                        transport, conn, context, server_hostname=tls["server_hostname"],
                        **tls_kwargs,
                    )
                except TypeError as exc:  # Python 3.10's own event loop
                    raise InvalidProxy(
                        f"wss:// through the https:// proxy {proxy.url} needs TLS inside "
                        "TLS, which this event loop can't do; use Python 3.11 or later, "
                        f"uvloop, or an http:// proxy ({exc})"
                    ) from exc
                if tls_transport is None:  # pragma: no cover - closed meanwhile
                    raise InvalidMessage("connection closed during the TLS handshake")
                conn.connection_made(tls_transport)
            else:
                transport.set_protocol(conn)
                conn.connection_made(transport)
        except BaseException:
            transport.abort()
            raise
        return conn

    def _cannot_follow(self, old: WebSocketURI, new: WebSocketURI) -> str | None:
        """Why a redirect from ``old`` to ``new`` cannot be followed, if it cannot."""
        if "sock" in self._kwargs:
            return "connect() was given sock=, which cannot be used again"
        return None

    async def _open(self) -> ClientConnection:
        chain = RedirectChain(self.uri, self.max_redirects)
        wsuri = self.wsuri
        conn: ClientConnection | None = None
        try:
            async with _timeout(self.open_timeout):
                while True:
                    conn = None
                    conn = await self._create_connection(wsuri, chain.same_origin)
                    try:
                        await conn.handshake_waiter
                    except InvalidStatus as exc:
                        new = self._redirect(chain, exc, wsuri)
                        if new is None:
                            raise
                        wsuri = new
                        continue
                    break
        except BaseException:
            if conn is not None and conn.transport is not None:
                conn.transport.abort()
            raise
        self.connection = conn
        return conn

    def _redirect(
        self, chain: RedirectChain, exc: InvalidStatus, wsuri: WebSocketURI
    ) -> WebSocketURI | None:
        """The URI to try next after a redirect (``None``: not a redirect; raise exc)."""
        response = exc.response
        previous = chain.uri
        uri = chain.follow(response)
        if uri is None:
            return None
        new = parse_uri(uri)
        reason = self._cannot_follow(wsuri, new)
        if reason is not None:
            raise chain.error(
                response, f"cannot follow the redirect from {redact(previous)} to "
                f"{redact(uri)}: {reason}"
            ) from None
        self.logger.info("%s redirected to %s (HTTP %d %s)", redact(previous), redact(uri),
                         response.status, response.reason)
        return new

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
        backoff = Backoff(self.backoff_initial, self.backoff_factor, self.backoff_max,
                          self._random)
        while True:
            try:
                conn = await self._open()
            except Exception as exc:
                error = self.process_exception(exc)
                if error is exc:
                    raise
                if error is not None:
                    raise error from exc
                delay = self._retry_delay(exc, backoff)
                self.logger.info("connecting to %s failed: %s; retrying in %.1f s",
                                 redact(self.uri), _describe(exc), delay)
                await self._sleep(delay)
                continue
            opened = self._clock()
            lost: list[float] = []
            conn.connection_lost_waiter.add_done_callback(
                functools.partial(_note_time, lost, self._clock)
            )
            try:
                yield conn
            finally:
                await conn.close()
            uptime = (lost[0] if lost else self._clock()) - opened
            if uptime >= self.backoff_reset_after:
                backoff.reset()
            delay = next(backoff)
            self.logger.info("connection to %s closed after %.1f s (%s); reconnecting in "
                             "%.1f s", redact(self.uri), uptime, conn._closed_exc(), delay)
            await self._sleep(delay)

    def _retry_delay(self, exc: Exception, backoff: Backoff) -> float:
        """The delay before the next attempt after ``exc``: the backoff's, or longer if
        the server asked for it with ``Retry-After`` (but no more than ``backoff_max``)."""
        delay = next(backoff)
        asked = _retry_after(exc, time.time())
        if asked is not None:
            delay = max(delay, min(asked, self.backoff_max))
        return delay


class unix_connect(connect):
    """:func:`connect` over the Unix socket at ``path``; ``uri`` defaults to ``ws://localhost/``.

    No proxy is used. A redirect is followed only to another path on the same host.
    """

    def __init__(self, path: str | None = None, uri: str | None = None, **options: Any) -> None:
        if uri is None:
            uri = "wss://localhost/" if options.get("ssl") else "ws://localhost/"
        if isinstance(options.get("proxy"), str):
            raise ValueError("unix_connect() does not go through a proxy; remove proxy=")
        super().__init__(uri, **options)
        self._path = path

    async def _create_connection(
        self, wsuri: WebSocketURI, same_origin: bool = True
    ) -> ClientConnection:
        loop = asyncio.get_running_loop()
        kwargs = dict(self._kwargs)
        if wsuri.secure:
            kwargs["ssl"] = True if self.ssl is None else self.ssl
            kwargs.setdefault("server_hostname", self.server_hostname or wsuri.host)
        factory = functools.partial(self._factory, wsuri, same_origin)
        _, conn = await loop.create_unix_connection(factory, self._path, **kwargs)
        return conn

    def _cannot_follow(self, old: WebSocketURI, new: WebSocketURI) -> str | None:
        if (old.secure, old.host, old.port) != (new.secure, new.host, new.port):
            return "unix_connect() follows redirects to the same host only"
        return super()._cannot_follow(old, new)


class _TunnelProtocol(asyncio.Protocol):
    """The HTTP CONNECT exchange with a proxy; the connection's protocol replaces it."""

    def __init__(self, handshake: ConnectHandshake, loop: asyncio.AbstractEventLoop) -> None:
        self.handshake = handshake
        self.waiter: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.BaseTransport | None = None
        #: bytes received after the 2xx, before the connection took over
        self.unexpected = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: don't check the type.
        self.transport = transport = cast(asyncio.Transport, transport)
        transport.write(self.handshake.send_request())

    def data_received(self, data: bytes) -> None:
        if self.waiter.done():
            self.unexpected += data
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        try:
            if self.handshake.receive_data(data):
                self.waiter.set_result(None)
        except InvalidProxy as exc:
            self.waiter.set_exception(exc)
            assert self.transport is not None
            self.transport.close()

    def eof_received(self) -> bool | None:
        if not self.waiter.done():
            self._feed(b"")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.waiter.done():
            error = InvalidProxy(
                f"connection to proxy {self.handshake.proxy.url} lost during CONNECT"
            )
            error.__cause__ = exc or EOFError("end of stream")
            self.waiter.set_exception(error)


#: python-socks' own time limit (it defaults to 60 s); ``open_timeout`` bounds it.
_SOCKS_TIMEOUT = 365 * 24 * 3600.0


async def _socks_connect(proxy: Proxy, wsuri: WebSocketURI, kwargs: dict[str, Any]
                         ) -> socket.socket:
    """A socket connected to the server through a SOCKS proxy (python-socks)."""
    try:
        from python_socks import ProxyConnectionError, ProxyError, ProxyType
        from python_socks.async_.asyncio import Proxy as SocksProxy
    except ImportError:
        raise InvalidProxy(
            f"{proxy.url} is a SOCKS proxy, which needs python-socks: {SOCKS_INSTALL_HINT}"
        ) from None
    unsupported = sorted(set(kwargs) - {"local_addr"})
    if unsupported:
        raise TypeError(f"with a SOCKS proxy, connect() takes local_addr but not "
                        f"{', '.join(unsupported)}")
    kind, rdns = socks_settings(proxy)
    client = SocksProxy(ProxyType[kind], proxy.host, proxy.port, proxy.username,
                        proxy.password, rdns=rdns, loop=asyncio.get_running_loop())
    try:
        return await client.connect(wsuri.host, wsuri.port, timeout=_SOCKS_TIMEOUT,
                                    local_addr=kwargs.get("local_addr"))
    except ProxyError as exc:
        raise socks_error(proxy, wsuri.host, wsuri.port, exc) from exc
    except ProxyConnectionError as exc:
        raise OSError(exc.errno, exc.strerror) from exc


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
