"""The threading WebSocket client: :func:`connect` and :func:`unix_connect`.

Opening is blocking and bounded as a whole by ``open_timeout``: the TCP (or Unix)
connection, the TLS handshake, then the HTTP upgrade, each with the socket's timeout
set to what is left. The URI is parsed by :func:`tether.uri.parse_uri`, so
both layers accept and refuse the same URIs.
"""

from __future__ import annotations

import logging
import socket
import ssl as ssl_module
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..protocol.connection import Side
from ..protocol.deflate import Deflate, client_accept, client_offer, compression_settings
from ..protocol.handshake import ClientHandshake
from ..protocol.http import Headers, HeadersLike
from ..uri import WebSocketURI, auth_headers, parse_uri
from .connection import Connection, _remaining

__all__ = ["ClientConnection", "connect", "unix_connect"]


class ClientConnection(Connection):
    """The client side of a WebSocket connection, as returned by :func:`connect`."""

    side = Side.CLIENT

    def __init__(self, sock: socket.socket, handshake: ClientHandshake,
                 compression: Deflate | None, **options: Any) -> None:
        super().__init__(sock, **options)
        self._handshake = handshake
        self._compression = compression
        self.request = handshake.request

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
    sock: socket.socket | None = None,
    **kwargs: Any,
) -> ClientConnection:
    """Open a WebSocket connection to ``uri`` and return it, open.

    ``with connect(uri) as ws:`` closes it on leaving the block. ``wss://`` verifies
    the server's certificate with the system's CAs unless ``ssl`` is an
    :class:`ssl.SSLContext` of your own; ``server_hostname`` overrides the name checked.
    ``sock`` is a socket already connected to the server. Other keyword arguments are
    passed to :func:`socket.create_connection` (``source_address``...). Options: as for
    :func:`tether.connect`. Raises :class:`TimeoutError` when opening takes longer
    than ``open_timeout``, :class:`OSError` when the server can't be reached, and
    :class:`~tether.InvalidHandshake` (:class:`~tether.InvalidStatus`...) when it
    refuses the upgrade.
    """
    wsuri = parse_uri(uri)
    deadline = None if open_timeout is None else time.monotonic() + open_timeout

    def open_socket() -> socket.socket:
        if sock is not None:
            if kwargs:
                raise TypeError(f"unexpected arguments with sock=: {', '.join(kwargs)}")
            return sock
        return socket.create_connection(
            (wsuri.host, wsuri.port), timeout=_remaining(deadline), **kwargs
        )

    return _connect(
        open_socket, wsuri, deadline, open_timeout=open_timeout, ssl=ssl,
        server_hostname=server_hostname, origin=origin, subprotocols=subprotocols,
        additional_headers=additional_headers, user_agent_header=user_agent_header,
        compression=compression,
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


def unix_connect(path: str | None = None, uri: str | None = None, **options: Any
                 ) -> ClientConnection:
    """:func:`connect` over the Unix socket at ``path``; ``uri`` defaults to
    ``ws://localhost/`` (``wss://localhost/`` with ``ssl``)."""
    if uri is None:
        uri = "wss://localhost/" if options.get("ssl") else "ws://localhost/"
    if options.get("sock") is None:
        if path is None:
            raise ValueError("unix_connect needs a path or a sock")
        open_timeout = options.get("open_timeout", 10)
        deadline = None if open_timeout is None else time.monotonic() + open_timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(_remaining(deadline))
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        options["sock"] = sock
    return connect(uri, **options)


def _connect(
    open_socket: Callable[[], socket.socket],
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
    options: dict[str, Any],
) -> ClientConnection:
    if ssl is not None and ssl is not False and not wsuri.secure:
        raise ValueError("ssl= was given for a ws:// URI; use wss:// for TLS")
    settings = compression_settings(compression)
    headers = list(auth_headers(wsuri))
    if additional_headers is not None:
        headers.extend(Headers(additional_headers).raw_items())
    handshake = ClientHandshake(
        wsuri.host_header,
        wsuri.path,
        origin=origin,
        subprotocols=subprotocols,
        extensions_offer=client_offer(settings) if settings is not None else None,
        additional_headers=headers or None,
        user_agent_header=user_agent_header,
    )
    sock: socket.socket | None = None
    try:
        sock = open_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = ClientConnection(sock, handshake, settings, **options)
        if wsuri.secure and ssl is not False:
            context = ssl if isinstance(ssl, ssl_module.SSLContext) else (
                ssl_module.create_default_context()
            )
            conn._start_tls(context, server_side=False,
                            server_hostname=server_hostname or wsuri.host, deadline=deadline)
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
