"""Exceptions raised by tether.

Every exception tether raises derives from :class:`TetherError`::

    TetherError
    ├── ConnectionClosed            the connection is closed (carries code and reason)
    │   ├── ConnectionClosedOK      ... normally: 1000 or 1001 on both sides
    │   └── ConnectionClosedError   ... abnormally: any other code; 1006 = TCP lost
    ├── InvalidURI                  the URI is not a ws:// or wss:// URI
    ├── InvalidHandshake            the opening handshake failed
    │   ├── InvalidMessage          the HTTP request or response is malformed
    │   ├── InvalidStatus           the server answered with a status other than 101
    │   ├── InvalidHeader           a header is missing or has a wrong value
    │   │   ├── InvalidUpgrade      ... Upgrade / Connection are not a websocket upgrade
    │   │   └── InvalidOrigin       ... the Origin is not allowed
    │   └── NegotiationError        subprotocol or extension negotiation failed
    ├── InvalidProxy                a proxy could not be used
    ├── ProtocolError               the peer broke RFC 6455 (carries the close code)
    │   └── PayloadTooBig           a message exceeded max_size (close code 1009)
    └── InvalidState                the API was used in a state that does not allow it

The split follows who is at fault: :class:`ProtocolError` and its subclasses are
the remote peer's violations and carry the close code tether sent; :class:`InvalidState`
and :class:`TypeError` / :class:`ValueError` are local misuses of the API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .protocol.http import Response

__all__ = [
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
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
    "TetherError",
]


class TetherError(Exception):
    """Base class of every exception raised by tether."""


class ConnectionClosed(TetherError):
    """The WebSocket connection is closed.

    ``code`` and ``reason`` are those of the close frame received from the peer, or
    1006 and ``""`` when the TCP connection ended without a closing handshake.
    ``sent_code`` / ``sent_reason`` are those of the close frame tether sent, if any.
    ``rcvd_then_sent`` tells which side started the closing handshake when both
    frames were exchanged.
    """

    def __init__(
        self,
        code: int = 1006,
        reason: str = "",
        *,
        sent_code: int | None = None,
        sent_reason: str = "",
        rcvd_then_sent: bool | None = None,
    ) -> None:
        self.code = code
        self.reason = reason
        self.sent_code = sent_code
        self.sent_reason = sent_reason
        self.rcvd_then_sent = rcvd_then_sent
        super().__init__(code, reason)

    def __str__(self) -> str:
        if self.code == 1006:
            text = "connection lost without a closing handshake (1006)"
        elif self.code == 1005:
            text = "received a close frame without a status code (1005)"
        else:
            text = f"received close frame with code {self.code}"
            if self.reason:
                text += f" and reason {self.reason!r}"
        if self.sent_code is not None and self.code != 1006:
            if self.rcvd_then_sent:
                text += f"; replied with code {self.sent_code}"
            elif self.rcvd_then_sent is False:
                text = f"sent close frame with code {self.sent_code}; " + text
        elif self.sent_code is not None:
            text += f" after sending close code {self.sent_code}"
            if self.sent_reason:
                text += f" ({self.sent_reason})"
        return text


class ConnectionClosedOK(ConnectionClosed):
    """The connection was closed normally, with code 1000 or 1001."""


class ConnectionClosedError(ConnectionClosed):
    """The connection was closed abnormally: a code other than 1000/1001, or 1006."""


class InvalidURI(TetherError, ValueError):
    """The URI is not a valid ``ws://`` or ``wss://`` URI."""

    def __init__(self, uri: str, msg: str) -> None:
        self.uri = uri
        self.msg = msg
        super().__init__(f"{uri!r} is not a valid WebSocket URI: {msg}")


class InvalidHandshake(TetherError):
    """The opening handshake failed."""


class InvalidMessage(InvalidHandshake):
    """The HTTP request or response of the handshake is malformed or too large.

    ``status`` is the HTTP status a server answers with (400, 431...).
    """

    def __init__(self, msg: str, status: int = 400) -> None:
        self.status = status
        super().__init__(msg)


class InvalidStatus(InvalidHandshake):
    """The server answered the handshake with a status other than 101.

    ``response`` is the :class:`~tether.Response` it sent, with its body when it was small.
    """

    def __init__(self, response: Response) -> None:
        self.response = response
        super().__init__(
            f"server rejected the WebSocket connection: HTTP {response.status}"
            + (f" {response.reason}" if response.reason else "")
        )


class InvalidHeader(InvalidHandshake):
    """A handshake header is missing or has a value tether cannot accept."""

    def __init__(self, name: str, value: str | None = None, msg: str | None = None) -> None:
        self.name = name
        self.value = value
        if msg is None:
            msg = f"missing {name} header" if value is None else f"invalid {name} header: {value}"
        super().__init__(msg)


class InvalidUpgrade(InvalidHeader):
    """The Upgrade or Connection header does not ask for a WebSocket upgrade."""


class InvalidOrigin(InvalidHeader):
    """The Origin header is not in the server's ``origins``."""

    def __init__(self, origin: str | None) -> None:
        super().__init__(
            "Origin",
            origin,
            "missing Origin header" if origin is None else f"origin not allowed: {origin}",
        )


class NegotiationError(InvalidHandshake):
    """Subprotocol or extension negotiation failed."""


class InvalidProxy(TetherError):
    """A proxy could not be used: bad proxy URL or a failed proxy handshake."""


class ProtocolError(TetherError):
    """The peer violated RFC 6455 / RFC 7692.

    ``code`` is the close code tether sent when it failed the connection
    (1002 protocol error, 1007 invalid data, 1009 too big, ...).
    """

    def __init__(self, msg: str, code: int = 1002) -> None:
        self.code = code
        super().__init__(msg)


class PayloadTooBig(ProtocolError):
    """A message exceeded ``max_size``."""

    def __init__(self, msg: str) -> None:
        super().__init__(msg, 1009)


class InvalidState(TetherError):
    """An operation is not allowed in the connection's current state."""
