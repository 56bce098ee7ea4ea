"""WebSocket URIs (RFC 6455 3): parsing and checking, shared by every driver."""

from __future__ import annotations

import base64
import urllib.parse
from dataclasses import dataclass

from .exceptions import InvalidURI

__all__ = ["WebSocketURI", "auth_headers", "parse_uri"]


@dataclass(frozen=True, slots=True)
class WebSocketURI:
    """A parsed ``ws://`` or ``wss://`` URI."""

    secure: bool
    host: str
    port: int
    path: str
    username: str | None = None
    password: str | None = None

    @property
    def host_header(self) -> str:
        """The Host header value: the port is omitted when it is the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == (443 if self.secure else 80):
            return host
        return f"{host}:{self.port}"


def parse_uri(uri: str) -> WebSocketURI:
    """Parse and check a WebSocket URI (RFC 6455 3); raise :class:`InvalidURI`."""
    try:
        parsed = urllib.parse.urlsplit(uri)
        port = parsed.port
    except ValueError as exc:
        raise InvalidURI(uri, str(exc)) from None
    if parsed.scheme not in ("ws", "wss"):
        raise InvalidURI(uri, "scheme must be ws:// or wss://")
    if not parsed.hostname:
        raise InvalidURI(uri, "no host")
    if parsed.fragment:
        raise InvalidURI(uri, "a WebSocket URI must not have a #fragment")
    secure = parsed.scheme == "wss"
    path = parsed.path or "/"
    if parsed.query:
        path += "?" + parsed.query
    # Percent-encode what may not appear in a request target (IRIs, spaces).
    path = urllib.parse.quote(path, safe="/%:@!$&'()*+,;=?~-._")
    return WebSocketURI(
        secure=secure,
        host=parsed.hostname,
        port=port if port is not None else (443 if secure else 80),
        path=path,
        username=urllib.parse.unquote(parsed.username) if parsed.username else None,
        password=urllib.parse.unquote(parsed.password) if parsed.password else None,
    )


def auth_headers(wsuri: WebSocketURI) -> list[tuple[str, str]]:
    """The Authorization header for credentials in the URI (``ws://user:pass@host``)."""
    if wsuri.username is None:
        return []
    creds = f"{wsuri.username}:{wsuri.password or ''}".encode()
    return [("Authorization", "Basic " + base64.b64encode(creds).decode())]
