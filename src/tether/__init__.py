"""tether: WebSocket (RFC 6455, RFC 7692) for asyncio, with a sans-I/O core.

The same API with blocking calls, for code that is not async, is in :mod:`tether.sync`.

The public API: :func:`serve` and :func:`connect` (and their Unix-socket twins),
the :class:`Connection` they give, :class:`Response` for plain HTTP answers,
:class:`Deflate` to tune compression, and the exceptions rooted at :class:`TetherError`.
"""

from .asyncio.client import ClientConnection, connect, unix_connect
from .asyncio.connection import Connection
from .asyncio.server import Server, ServerConnection, serve, unix_serve
from .exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidHeader,
    InvalidMessage,
    InvalidOrigin,
    InvalidProxy,
    InvalidState,
    InvalidStatus,
    InvalidUpgrade,
    InvalidURI,
    NegotiationError,
    PayloadTooBig,
    ProtocolError,
    TetherError,
)
from .protocol.connection import State
from .protocol.deflate import Deflate
from .protocol.http import Headers, Request, Response

__version__ = "0.1.0"

__all__ = [
    "ClientConnection",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "Deflate",
    "Headers",
    "InvalidHandshake",
    "InvalidHeader",
    "InvalidMessage",
    "InvalidOrigin",
    "InvalidProxy",
    "InvalidState",
    "InvalidStatus",
    "InvalidURI",
    "InvalidUpgrade",
    "NegotiationError",
    "PayloadTooBig",
    "ProtocolError",
    "Request",
    "Response",
    "Server",
    "ServerConnection",
    "State",
    "TetherError",
    "connect",
    "serve",
    "unix_connect",
    "unix_serve",
]
