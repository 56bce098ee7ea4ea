"""The threading WebSocket client: :func:`connect` and :func:`unix_connect`.

Opening is blocking and bounded as a whole by ``open_timeout``: the TCP (or Unix)
connection, straight to the server or through a proxy (an HTTP CONNECT tunnel, with TLS
to the proxy for ``https://`` proxies; SOCKS through python-socks), the TLS handshake
with the server, then the HTTP upgrade, each with the socket's timeout set to what is
left; a redirect starts again at the new URI (:class:`tether.proxy.RedirectChain`).
The URI is parsed by :func:`tether.uri.parse_uri` and proxies and redirects are
decided by :mod:`tether.proxy`, so both layers accept and refuse the same things.

TLS inside TLS (``wss://`` through an ``https://`` proxy) stacks two
:class:`~tether.sync.transport.TLSTransport`: the server's sends its records through the
proxy's instead of the socket.
"""

from __future__ import annotations

import inspect
import logging
import socket
import ssl as ssl_module
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..exceptions import InvalidProxy, InvalidStatus
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
    redact,
    request_headers,
    select_proxy,
    socks_error,
    socks_settings,
)
from ..uri import WebSocketURI, parse_uri
from .connection import Connection
from .transport import SocketTransport, TLSTransport, Transport, TunnelTransport
from .transport import remaining as _remaining

__all__ = ["ClientConnection", "connect", "unix_connect"]

_logger = logging.getLogger("tether.client")


class ClientConnection(Connection):
    """The client side of a WebSocket connection, as returned by :func:`connect`."""

    side = Side.CLIENT

    def __init__(self, sock: socket.socket, handshake: ClientHandshake,
                 compression: Deflate | None, **options: Any) -> None:
        super().__init__(sock, **options)
        self._handshake = handshake
        self._compression = compression
        self.request = handshake.request

    def _use_transport(self, transport: Transport) -> None:
        """Speak through ``transport`` (a proxy's TLS tunnel) instead of the socket."""
        self._transport = transport

    def _open_handshake(self, deadline: float | None) -> None:
        """Send the upgrade request, read and check the response, open the protocol."""
        handshake = self._handshake
        if self._debug:
            self.logger.debug("[%s] > GET %s", self.id, handshake.request.path)
        self.socket.settimeout(_remaining(deadline))
        self._transport.send(handshake.send_request())
        response = None
        while response is None:
            self.socket.settimeout(_remaining(deadline))
            # b"" at EOF completes an error response or raises InvalidMessage.
            response = handshake.receive_data(self._transport.recv())
        self.response = response
        subprotocol, extensions = handshake.check_response(response)
        codec = client_accept(extensions, self._compression)
        self.subprotocol = subprotocol
        self._open_protocol(handshake.trailing_data, codec)


# ------------------------------------------------------------------------------ opening

#: What an opener returns: the socket, and the transport to use instead of it (the
#: TLS connection to an ``https://`` proxy), if any.
_Stream = tuple[socket.socket, "TLSTransport | None"]
_Opener = Callable[[WebSocketURI, "float | None"], _Stream]


def connect(
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
    sock: socket.socket | None = None,
    **kwargs: Any,
) -> ClientConnection:
    """Open a WebSocket connection to ``uri`` and return it, open.

    ``with connect(uri) as ws:`` closes it on leaving the block. ``wss://`` verifies
    the server's certificate with the system's CAs unless ``ssl`` is an
    :class:`ssl.SSLContext` of your own; ``server_hostname`` overrides the name checked.
    ``proxy`` is a proxy URL (``http://``, ``https://``, ``socks5://``, ``socks5h://``,
    ``socks4://``, ``socks4a://``), ``True`` for the environment's (``https_proxy``,
    ``http_proxy``, ``all_proxy``, ``no_proxy``) or ``None`` for none; ``proxy_ssl`` is
    the :class:`ssl.SSLContext` for TLS to an ``https://`` proxy. Redirects (301, 302,
    303, 307, 308) are followed, at most ``max_redirects`` (``None``: no limit).
    ``sock`` is a socket already connected to the server (no proxy, no redirects).
    Other keyword arguments are passed to :func:`socket.create_connection`
    (``source_address``...). Options: as for :func:`tether.connect`. Raises
    :class:`TimeoutError` when opening takes longer than ``open_timeout``,
    :class:`OSError` when the server can't be reached, :class:`~tether.InvalidProxy`
    when the proxy can't be used, and :class:`~tether.InvalidHandshake`
    (:class:`~tether.InvalidStatus`...) when the server refuses the upgrade.
    """
    wsuri = parse_uri(uri)
    proxy = check_proxy_option(proxy)
    if sock is not None:
        if kwargs:
            raise TypeError(f"unexpected arguments with sock=: {', '.join(kwargs)}")
        if isinstance(proxy, str):
            raise ValueError("proxy= and sock= cannot be used together: sock is already "
                             "connected")
    deadline = None if open_timeout is None else time.monotonic() + open_timeout
    given = [sock]  # used once: a redirect can't reuse it

    def open_stream(target: WebSocketURI, deadline: float | None) -> _Stream:
        first = given.pop() if given else None
        if first is not None:
            return first, None
        chosen = select_proxy(target, proxy)
        if chosen is None:
            return socket.create_connection(
                (target.host, target.port), timeout=_remaining(deadline), **kwargs
            ), None
        return _open_through_proxy(chosen, target, deadline, proxy_ssl, user_agent_header,
                                   kwargs)

    return _open(
        open_stream, uri, wsuri, deadline, open_timeout=open_timeout, ssl=ssl,
        server_hostname=server_hostname, origin=origin, subprotocols=subprotocols,
        additional_headers=additional_headers, user_agent_header=user_agent_header,
        compression=compression, max_redirects=max_redirects,
        cannot_follow=(lambda old, new: "connect() was given sock=, which cannot be used "
                       "again") if sock is not None else None,
        options={
            "max_size": max_size,
            "max_queue": max_queue,
            "write_limit": write_limit,
            "ping_interval": ping_interval,
            "ping_timeout": ping_timeout,
            "close_timeout": close_timeout,
            "logger": logger,
        },
    )


#: Options of :func:`connect` that :func:`_open` takes by name...
_OPEN_OPTIONS = ("ssl", "server_hostname", "origin", "subprotocols", "additional_headers",
                 "user_agent_header", "compression", "max_redirects")
#: ... and those that go to the :class:`ClientConnection`.
_CONNECTION_OPTIONS = frozenset({"max_size", "max_queue", "write_limit", "ping_interval",
                                 "ping_timeout", "close_timeout", "logger"})


def unix_connect(path: str | None = None, uri: str | None = None, **options: Any
                 ) -> ClientConnection:
    """:func:`connect` over the Unix socket at ``path``; ``uri`` defaults to
    ``ws://localhost/`` (``wss://localhost/`` with ``ssl``). No proxy is used; a
    redirect is followed only to another path on the same host."""
    if uri is None:
        uri = "wss://localhost/" if options.get("ssl") else "ws://localhost/"
    if isinstance(options.get("proxy"), str):
        raise ValueError("unix_connect() does not go through a proxy; remove proxy=")
    if options.get("sock") is not None:
        return connect(uri, **{**options, "proxy": None})
    if path is None:
        raise ValueError("unix_connect needs a path or a sock")
    wsuri = parse_uri(uri)
    defaults = inspect.signature(connect).parameters
    open_timeout = options.pop("open_timeout", defaults["open_timeout"].default)
    deadline = None if open_timeout is None else time.monotonic() + open_timeout

    def open_stream(target: WebSocketURI, deadline: float | None) -> _Stream:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        return sock, None

    def cannot_follow(old: WebSocketURI, new: WebSocketURI) -> str | None:
        if (old.secure, old.host, old.port) != (new.secure, new.host, new.port):
            return "unix_connect() follows redirects to the same host only"
        return None

    settings = {name: options.pop(name, defaults[name].default) for name in _OPEN_OPTIONS}
    options.pop("proxy", None)
    options.pop("proxy_ssl", None)
    unknown = sorted(set(options) - _CONNECTION_OPTIONS)
    if unknown:
        raise TypeError(f"unix_connect() got unexpected arguments: {', '.join(unknown)}")
    return _open(open_stream, uri, wsuri, deadline, open_timeout=open_timeout,
                 cannot_follow=cannot_follow, options=options, **settings)


def _open(
    open_stream: _Opener,
    uri: str,
    wsuri: WebSocketURI,
    deadline: float | None,
    *,
    open_timeout: float | None,
    ssl: ssl_module.SSLContext | bool | None,
    server_hostname: str | None,
    origin: str | None,
    subprotocols: Sequence[str] | None,
    additional_headers: HeadersLike | None,
    user_agent_header: str | None,
    compression: str | Deflate | None,
    max_redirects: int | None,
    cannot_follow: Callable[[WebSocketURI, WebSocketURI], str | None] | None,
    options: dict[str, Any],
) -> ClientConnection:
    """Open, following redirects: each hop is a new connection, all within ``deadline``."""
    if ssl is not None and ssl is not False and not wsuri.secure:
        raise ValueError("ssl= was given for a ws:// URI; use wss:// for TLS")
    settings = compression_settings(compression, client=True)
    chain = RedirectChain(uri, max_redirects)
    logger = options.get("logger") or _logger
    first = wsuri
    while True:
        headers = request_headers(wsuri, additional_headers, same_origin=chain.same_origin)
        handshake = ClientHandshake(
            wsuri.host_header,
            wsuri.path,
            origin=origin,
            subprotocols=subprotocols,
            extensions_offer=client_offer(settings) if settings is not None else None,
            additional_headers=headers or None,
            user_agent_header=user_agent_header,
        )
        # server_hostname overrides the name checked for the URI's host only.
        hostname = server_hostname if server_hostname is not None and (
            wsuri.host == first.host) else wsuri.host
        try:
            return _connect(open_stream, wsuri, deadline, handshake, settings,
                            open_timeout=open_timeout, ssl=ssl, server_hostname=hostname,
                            options=options)
        except InvalidStatus as exc:
            previous = chain.uri
            new_uri = chain.follow(exc.response)
            if new_uri is None:
                raise
            new = parse_uri(new_uri)
            reason = cannot_follow(wsuri, new) if cannot_follow is not None else None
            if reason is not None:
                raise chain.error(
                    exc.response, f"cannot follow the redirect from {redact(previous)} to "
                    f"{redact(new_uri)}: {reason}"
                ) from None
            logger.info("%s redirected to %s (HTTP %d %s)", redact(previous),
                        redact(new_uri), exc.response.status, exc.response.reason)
            wsuri = new


def _connect(
    open_stream: _Opener,
    wsuri: WebSocketURI,
    deadline: float | None,
    handshake: ClientHandshake,
    settings: Deflate | None,
    *,
    open_timeout: float | None,
    ssl: ssl_module.SSLContext | bool | None,
    server_hostname: str,
    options: dict[str, Any],
) -> ClientConnection:
    """One connection: TCP (through a proxy, maybe), TLS for wss://, the handshake."""
    sock: socket.socket | None = None
    tunnel: TLSTransport | None = None
    try:
        sock, tunnel = open_stream(wsuri, deadline)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = ClientConnection(sock, handshake, settings, **options)
        tls = wsuri.secure and ssl is not False
        context = ssl if isinstance(ssl, ssl_module.SSLContext) else None
        if tunnel is None and tls:
            conn._start_tls(context or ssl_module.create_default_context(), server_side=False,
                            server_hostname=server_hostname, deadline=deadline)
        elif tunnel is not None and tls:
            transport = TLSTransport(
                tunnel, context or ssl_module.create_default_context(), server_side=False,
                server_hostname=server_hostname,
            )
            conn._use_transport(transport)
            transport.handshake(deadline)
        elif tunnel is not None:
            conn._use_transport(TunnelTransport(tunnel))
        conn._open_handshake(deadline)
    except TimeoutError as exc:
        if sock is not None:
            sock.close()
        raise TimeoutError(f"opening handshake timed out after {open_timeout} s") from exc
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    return conn


# ------------------------------------------------------------------------------ proxies

#: Arguments of :func:`socket.create_connection` that also apply to a SOCKS proxy.
_SOCKS_KWARGS = frozenset({"source_address"})
#: python-socks' own time limit without ``open_timeout`` (it defaults to 60 s).
_NO_TIMEOUT = 365 * 24 * 3600.0


def _open_through_proxy(
    proxy: Proxy,
    target: WebSocketURI,
    deadline: float | None,
    proxy_ssl: ssl_module.SSLContext | None,
    user_agent_header: str | None,
    kwargs: dict[str, Any],
) -> _Stream:
    """A socket connected to ``target`` through ``proxy`` (and the proxy's TLS)."""
    _logger.debug("connecting to %s:%d through proxy %s", target.host, target.port,
                  proxy.url)
    if not proxy.is_http:
        return _socks_connect(proxy, target, deadline, kwargs), None
    sock = socket.create_connection((proxy.host, proxy.port), timeout=_remaining(deadline),
                                    **kwargs)
    try:
        transport: Transport = SocketTransport(sock)
        tunnel: TLSTransport | None = None
        if proxy.tls:
            tunnel = TLSTransport(transport, proxy_ssl or ssl_module.create_default_context(),
                                   server_side=False, server_hostname=proxy.host)
            tunnel.handshake(deadline)
            transport = tunnel
        handshake = ConnectHandshake(proxy, target.host, target.port,
                                     user_agent_header=user_agent_header)
        sock.settimeout(_remaining(deadline))
        transport.send(handshake.send_request())
        while True:
            sock.settimeout(_remaining(deadline))
            # b"" at EOF raises InvalidProxy.
            if handshake.receive_data(transport.recv()):
                break
        handshake.check_no_trailing_data()
    except BaseException:
        sock.close()
        raise
    return sock, tunnel


def _socks_connect(proxy: Proxy, target: WebSocketURI, deadline: float | None,
                   kwargs: dict[str, Any]) -> socket.socket:
    try:
        from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError, ProxyType
        from python_socks.sync import Proxy as SocksProxy
    except ImportError:
        raise InvalidProxy(
            f"{proxy.url} is a SOCKS proxy, which needs python-socks: {SOCKS_INSTALL_HINT}"
        ) from None
    unsupported = sorted(set(kwargs) - _SOCKS_KWARGS)
    if unsupported:
        raise TypeError(f"with a SOCKS proxy, connect() takes source_address but not "
                        f"{', '.join(unsupported)}")
    kind, rdns = socks_settings(proxy)
    client = SocksProxy(ProxyType[kind], proxy.host, proxy.port, proxy.username,
                        proxy.password, rdns=rdns)
    left = _remaining(deadline)
    try:
        return client.connect(target.host, target.port,
                              timeout=_NO_TIMEOUT if left is None else left,
                              local_addr=kwargs.get("source_address"))
    except ProxyError as exc:
        raise socks_error(proxy, target.host, target.port, exc) from exc
    except ProxyTimeoutError as exc:
        raise TimeoutError(str(exc)) from exc
    except ProxyConnectionError as exc:
        raise OSError(exc.errno, exc.strerror) from exc
