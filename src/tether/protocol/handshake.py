"""RFC 6455 section 4: the opening handshake, on top of h11.

h11 parses and serialises the HTTP/1.1 heads, with a bound on their size. The common
heads take a fast path first, several times faster: a request head or a ``101``
response head made only of printable ASCII with CRLF line ends, token header names, no
folding, no body and (a request) one Host header is split by :func:`parse_head` (C in
``tether._speedups`` when it is built, else its pure-Python twin). Anything else goes to
h11 from its first byte, so what is accepted and every error status are h11's either
way.

This module adds what makes them a WebSocket handshake: the key and accept values,
the Upgrade / Connection / Version checks, Origin, subprotocol and extension
negotiation.
A :class:`ServerHandshake` turns request bytes into a :class:`Request` and then into a
101 or an error :class:`Response`; a :class:`ClientHandshake` does the reverse. The
bytes that arrive after the head (the first frames) are handed on in ``trailing_data``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import h11

from ..exceptions import (
    InvalidHandshake,
    InvalidHeader,
    InvalidMessage,
    InvalidOrigin,
    InvalidStatus,
    InvalidUpgrade,
    NegotiationError,
)
from .http import Headers, HeadersLike, Request, Response

__all__ = [
    "GUID",
    "MAX_HEADERS",
    "MAX_HEAD_SIZE",
    "ClientHandshake",
    "ServerHandshake",
    "accept_key",
    "generate_key",
    "parse_tokens",
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Largest request or response head (request line and headers) accepted, in bytes.
MAX_HEAD_SIZE = 16 * 1024
#: Most header lines accepted in a request or response head.
MAX_HEADERS = 128
#: Largest body of a non-101 response kept for :class:`InvalidStatus`.
MAX_BODY_SIZE = 64 * 1024

SERVER_AGENT = "tether"

# RFC 9110 5.1 and 5.5: what a header name and value may hold.
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# A byte that no head the fast path takes contains: h11 reads such a stream at once.
_UNUSUAL = re.compile(rb"[^\x20-\x7e\t\r\n]")
# The plain heads parse_head_py takes (on text decoded as latin-1).
_REQUEST_LINE = re.compile(r"([-!#$%&'*+.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/1\.([01])\r\n")
_STATUS_101 = re.compile(r"HTTP/1\.1 101(?: ([\x20-\x7e\t]*))?\r\n")
_HEADER_LINE = re.compile(r"([-!#$%&'*+.^_`|~0-9A-Za-z]+):([\x20-\x7e\t]*)\r\n")
_TARGET_STR = re.compile(r"[\x21-\x7e]+")
_PLAIN_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?")


#: What :func:`parse_head` gives: (method or status, target or reason, HTTP version,
#: header pairs).
HeadParts = tuple[Any, str, str, list[tuple[str, str]]]


def parse_head_py(head: bytes, response: bool) -> HeadParts | None:
    """Split a whole, *plain* HTTP/1.x head into its parts; ``None`` when h11 must read it.

    Plain: a request line ``token SP target SP HTTP/1.x`` (``response=False``) or a
    status line ``HTTP/1.1 101[ SP reason]`` (``response=True``); header lines
    ``token:value`` of printable ASCII and tabs, without folding; for a request, no body
    header and, in HTTP/1.1, exactly one Host. h11 accepts every such head and reads
    it the same way (the tests check this). Values are stripped of spaces and tabs.
    The twin of the C ``tether._speedups.parse_head``, used when that is not built.
    """
    if not head.endswith(b"\r\n\r\n"):
        return None
    text = head.decode("latin-1")
    first: Any
    if response:
        m = _STATUS_101.match(text)
        if m is None:
            return None
        first, second, version = 101, m.group(1) or "", "1.1"
    else:
        m = _REQUEST_LINE.match(text)
        if m is None:
            return None
        first, second, minor = m.groups()
        version = "1.1" if minor == "1" else "1.0"
    pos = m.end()
    end = len(text) - 2
    items: list[tuple[str, str]] = []
    hosts = 0
    match = _HEADER_LINE.match
    while pos < end:
        line = match(text, pos)
        if line is None:
            return None
        name, value = line.groups()
        if not response:
            lower = name.lower()
            if lower == "host":
                hosts += 1
            elif lower == "content-length" or lower == "transfer-encoding":
                return None  # h11 checks bodies
        items.append((name, value.strip(" \t")))
        pos = line.end()
    if not response and hosts != 1 and version == "1.1":
        return None
    return first, second, version, items


#: The head parser of the fast path: C when ``tether._speedups`` is built, else the
#: pure-Python twin; ``None`` (in tests) sends every head to h11.
parse_head: Callable[[bytes, bool], HeadParts | None] | None = parse_head_py
if os.environ.get("TETHER_NO_SPEEDUPS") != "1":
    try:
        from .._speedups import parse_head  # type: ignore[no-redef,unused-ignore]
    except ImportError:  # not built
        pass


def _fast_request(head: bytes) -> Request | None:
    """The request of a whole plain head, without h11; ``None`` when h11 must decide."""
    parts = parse_head(head, False) if parse_head is not None else None
    if parts is None:
        return None
    method, target, version, items = parts
    headers = Headers()
    headers._items = items
    return Request(path=target, headers=headers, method=method, http_version=version)


def generate_key() -> str:
    """A fresh random Sec-WebSocket-Key (RFC 6455 4.1: 16 random bytes, base64)."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    digest = hashlib.sha1((key + GUID).encode()).digest()
    return base64.b64encode(digest).decode()


def parse_tokens(values: Sequence[str]) -> list[str]:
    """Split comma-separated header values into tokens, dropping empty ones."""
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def _headers_from_h11(raw: Sequence[tuple[bytes, bytes]]) -> Headers:
    # h11 has validated every name and value: no need to check them again one by one.
    headers = Headers()
    headers._items = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]
    return headers


def _h11_headers(headers: Headers) -> list[tuple[str, str]]:
    return headers.raw_items()


class ServerHandshake:
    """Server side of the opening handshake.

    Feed bytes to :meth:`receive_data` until it returns the :class:`Request`; build the
    answer with :meth:`accept` (a 101 or an error response) or :meth:`reject`, and
    serialise it with :meth:`send_response`.
    """

    def __init__(
        self,
        *,
        origins: Sequence[str | None] | None = None,
        subprotocols: Sequence[str] | None = None,
        select_subprotocol: Callable[[Sequence[str]], str | None] | None = None,
        extensions: Callable[[list[str]], tuple[str | None, object]] | None = None,
        server_header: str | None = SERVER_AGENT,
        max_head_size: int = MAX_HEAD_SIZE,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        self.origins = origins
        self.subprotocols = subprotocols
        self.select_subprotocol = select_subprotocol
        self.extensions = extensions
        self.server_header = server_header
        self.max_headers = max_headers
        self.max_head_size = max_head_size
        self._received = 0
        # The bytes so far, until the fast path has the head or hands everything to h11
        # (created then, or at once when the fast path is off).
        self._buffer: bytearray | None = bytearray() if parse_head is not None else None
        self._head_size = 0
        self._h11: h11.Connection | None = None
        if self._buffer is None:
            self._h11 = self._new_h11()
        self.request: Request | None = None
        # Whether the request proposed a protocol switch (an Upgrade header, no body):
        # only then may a 101 be sent.
        self._may_switch = False
        #: the subprotocol and extension state chosen by :meth:`accept`
        self.subprotocol: str | None = None
        self.extension_state: object = None
        #: why :meth:`accept` refused the request, if it did
        self.exc: InvalidHandshake | None = None

    def receive_data(self, data: bytes) -> Request | None:
        """Feed request bytes; return the :class:`Request` once its head is complete.

        Raises :class:`InvalidMessage` (with the HTTP status to answer) when the request
        is malformed or too large.
        """
        buffer = self._buffer
        if buffer is not None:
            start = max(0, len(buffer) - 3)
            buffer += data
            end = buffer.find(b"\r\n\r\n", start)
            if end < 0:
                if (len(buffer) <= self.max_head_size and b"\n\n" not in buffer
                        and b"\n\r\n" not in buffer and not _UNUSUAL.search(data)):
                    return None
            else:
                end += 4
                request = _fast_request(bytes(buffer[:end]))
                if request is not None:
                    self._head_size = end
                    return self._got_request(request, end, len(request.headers._items))
            # Something unusual, or too large: h11 decides, from the first byte.
            self._buffer = None
            data = bytes(buffer)
        conn = self._h11
        if conn is None:
            conn = self._h11 = self._new_h11()
        conn.receive_data(data)
        self._received += len(data)
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            msg = str(exc) or "malformed HTTP request"
            if status == 431 or "exceeds" in msg or "too long" in msg.lower():
                status = 431
                msg = f"request head larger than {self.max_head_size} bytes"
            raise InvalidMessage(f"invalid HTTP request: {msg}", status) from None
        if event is h11.NEED_DATA:
            return None
        if not isinstance(event, h11.Request):  # pragma: no cover - h11 guarantees it
            raise InvalidMessage("invalid HTTP request", 400)
        request = Request(
            path=event.target.decode("latin-1"),
            headers=_headers_from_h11(event.headers.raw_items()),
            method=event.method.decode("ascii"),
            http_version=event.http_version.decode("ascii"),
        )
        return self._got_request(
            request, self._received - len(conn.trailing_data[0]), len(event.headers)
        )

    def _got_request(self, request: Request, head_size: int, count: int) -> Request:
        # h11 bounds a head only while it is incomplete; check a whole one too.
        if head_size > self.max_head_size:
            raise InvalidMessage(
                f"invalid HTTP request: request head of {head_size} bytes is larger than "
                f"{self.max_head_size} bytes", 431
            )
        if count > self.max_headers:
            raise InvalidMessage(f"request has {count} headers, more than {self.max_headers}", 431)
        has_body = False
        upgrade = False
        for name, value in request.headers._items:
            lower = name.lower()
            if lower == "transfer-encoding" or (lower == "content-length" and value != "0"):
                has_body = True
            elif lower == "upgrade":
                upgrade = True
        self._may_switch = upgrade and not has_body
        self.request = request
        return request

    def _new_h11(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_size)

    def _h11_for_response(self) -> h11.Connection:
        """h11, in the state of a server that has read the request (to write an error
        response after the fast path read it)."""
        conn = self._h11
        if conn is None:
            conn = self._h11 = self._new_h11()
            assert self._buffer is not None
            conn.receive_data(bytes(self._buffer[: self._head_size]))
            try:
                conn.next_event()
            except h11.RemoteProtocolError:  # pragma: no cover - the fast path's head
                pass
        return conn

    def receive_trailing(self, data: bytes) -> None:
        """Keep bytes that arrive after the request head, for :attr:`trailing_data`."""
        if self._buffer is not None:
            self._buffer += data
        else:
            assert self._h11 is not None
            self._h11.receive_data(data)

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the request head: the client's first frames."""
        if self._buffer is not None:
            return bytes(self._buffer[self._head_size :])
        assert self._h11 is not None
        data, _closed = self._h11.trailing_data
        return bytes(data)

    def accept(self, request: Request) -> Response:
        """Check ``request`` and return the 101 response, or an error response.

        On an error response, :attr:`exc` tells what was wrong.
        """
        try:
            fields = _fields(request.headers)
            key = self._check_request(request, fields)
            items = [
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Accept", accept_key(key)),
            ]
            offer = fields.get("sec-websocket-extensions")
            if offer and self.extensions is not None:
                offered = parse_tokens(offer)
                if offered:
                    value, state = self.extensions(offered)
                    if value is not None:
                        items.append(("Sec-WebSocket-Extensions", value))
                        self.extension_state = state
            offer = fields.get("sec-websocket-protocol")
            self.subprotocol = self._choose_subprotocol(parse_tokens(offer) if offer else [])
            if self.subprotocol is not None:
                items.append(("Sec-WebSocket-Protocol", self.subprotocol))
            if self.server_header:
                items.append(("Server", self.server_header))
            headers = Headers()
            headers._items = items  # checked when serialised (send_response)
            return Response(101, headers, b"", "Switching Protocols")
        except InvalidOrigin as exc:
            self.exc = exc
            return self.reject(403, f"Failed to open a WebSocket connection: {exc}.\n")
        except InvalidUpgrade as exc:
            self.exc = exc
            response = self.reject(
                426,
                f"Failed to open a WebSocket connection: {exc}.\n\n"
                "You cannot access a WebSocket server directly with a browser. "
                "You need a WebSocket client.\n",
            )
            response.headers["Upgrade"] = "websocket"
            response.headers["Connection"] = "Upgrade"
            if exc.name == "Sec-WebSocket-Version":
                response.headers["Sec-WebSocket-Version"] = "13"
            return response
        except InvalidHandshake as exc:
            self.exc = exc
            return self.reject(400, f"Failed to open a WebSocket connection: {exc}.\n")

    def _check_request(self, request: Request, fields: dict[str, list[str]]) -> str:
        if request.method != "GET":
            raise InvalidHandshake(f"method must be GET, not {request.method}")
        if "transfer-encoding" in fields or fields.get("content-length", ["0"]) != ["0"]:
            raise InvalidHandshake("an opening handshake request has no body")
        if request.http_version != "1.1":
            raise InvalidHandshake(f"HTTP/{request.http_version} is not HTTP/1.1")
        values = fields.get("connection", [])
        if values != ["Upgrade"] and "upgrade" not in [t.lower() for t in parse_tokens(values)]:
            raise InvalidUpgrade("Connection", ", ".join(values) or None,
                                 "Connection header does not include Upgrade")
        values = fields.get("upgrade", [])
        if values != ["websocket"] and "websocket" not in [
            t.lower() for t in parse_tokens(values)
        ]:
            raise InvalidUpgrade("Upgrade", ", ".join(values) or None,
                                 "Upgrade header does not include websocket")
        version = fields.get("sec-websocket-version", [])
        if version != ["13"]:
            raise InvalidUpgrade(
                "Sec-WebSocket-Version", ", ".join(version) or None,
                "unsupported WebSocket version "
                + (repr(", ".join(version)) if version else "(missing)") + "; 13 is required",
            )
        keys = fields.get("sec-websocket-key", [])
        if len(keys) != 1:
            raise InvalidHeader("Sec-WebSocket-Key", None if not keys else ", ".join(keys))
        key = keys[0]
        try:
            raw = base64.b64decode(key.encode(), validate=True)
        except ValueError:
            raw = b""
        if len(raw) != 16:
            raise InvalidHeader("Sec-WebSocket-Key", key,
                                f"Sec-WebSocket-Key is not 16 bytes in base64: {key!r}")
        if self.origins is not None:
            origins = fields.get("origin")
            origin = ", ".join(origins) if origins else None
            if origin not in self.origins:
                raise InvalidOrigin(origin)
        return key

    def _choose_subprotocol(self, offered: list[str]) -> str | None:
        if self.select_subprotocol is not None:
            chosen = self.select_subprotocol(offered)
            if chosen is not None and chosen not in offered:
                raise NegotiationError(f"select_subprotocol chose {chosen!r}, not offered")
            return chosen
        if not offered or not self.subprotocols:
            return None
        for protocol in self.subprotocols:
            if protocol in offered:
                return protocol
        return None

    def reject(self, status: int, text: str = "") -> Response:
        """Build a plain-text error response that closes the connection."""
        response = Response.text(status, text)
        if self.server_header:
            response.headers["Server"] = self.server_header
        return response

    def send_response(self, response: Response) -> bytes:
        """Serialise ``response``: a 101 switches protocols, anything else ends HTTP."""
        headers = response.headers
        if response.status == 101:
            if not self._may_switch:
                raise InvalidHandshake("cannot send 101: the request did not ask to upgrade")
            # After a 101 h11 has nothing more to do: the head is written here, from
            # values checked as h11 would check them.
            return _serialize_head(response)
        hdrs = [(n, v) for n, v in headers.raw_items()
                if n.lower() not in ("content-length", "connection", "transfer-encoding")]
        hdrs.append(("Content-Length", str(len(response.body))))
        # RFC 9110 7.8: a sender of Upgrade also sends "Connection: upgrade".
        upgrade = "Upgrade" in headers
        hdrs.append(("Connection", "Upgrade, close" if upgrade else "close"))
        try:
            conn = self._h11_for_response()
            out = conn.send(
                h11.Response(status_code=response.status, headers=hdrs,
                             reason=response.reason.encode())
            ) or b""
            out += conn.send(h11.Data(data=response.body)) or b""
            out += conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            # h11 refuses a response in states where HTTP is already broken (for
            # example after a malformed request); write it by hand then.
            head = f"HTTP/1.1 {response.status} {response.reason}\r\n" + "".join(
                f"{n}: {v}\r\n" for n, v in hdrs
            ) + "\r\n"
            out = head.encode("latin-1") + response.body
        return out


def _request_head(request: Request) -> bytes | None:
    """The bytes of a client's GET request written directly, or ``None`` when a value
    is unusual enough that h11 should check and write it."""
    path = request.path
    if not _TARGET_STR.fullmatch(path):
        return None
    lines = [f"GET {path} HTTP/1.1\r\n"]
    for name, value in request.headers.raw_items():
        if not _TOKEN.fullmatch(name) or not _PLAIN_VALUE.fullmatch(value):
            return None
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("ascii")


def _fast_101(head: bytes, max_headers: int) -> Response | None:
    """The ``101`` response of a whole plain head, without h11; ``None`` when h11 must."""
    parts = parse_head(head, True) if parse_head is not None else None
    if parts is None or len(parts[3]) > max_headers:
        return None
    headers = Headers()
    headers._items = parts[3]
    return Response(101, headers, b"", parts[1])

def _fields(headers: Headers) -> dict[str, list[str]]:
    """The header values by lower-case name, for the checks of one message."""
    fields: dict[str, list[str]] = {}
    for name, value in headers._items:
        fields.setdefault(name.lower(), []).append(value)
    return fields


def _serialize_head(response: Response) -> bytes:
    """The bytes of a response head without a body (a 101), after checking each part.

    The headers are left in their compact form (see :class:`Headers`): the lines just
    written are that form.
    """
    reason = response.reason
    if _BAD_VALUE.search(reason):
        raise InvalidHandshake(f"invalid reason phrase in the response: {reason!r}")
    headers = response.headers
    lines = []
    exact = True
    for name, value in headers._items:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise InvalidHandshake(f"invalid header in the response: {name!r}: {value!r}")
        stripped = value.strip()
        if stripped != value:
            exact = False
        lines.append(f"{name}: {stripped}")
    block = "\r\n".join(lines)
    head = f"HTTP/1.1 {response.status} {reason}\r\n{block}\r\n\r\n" if block else (
        f"HTTP/1.1 {response.status} {reason}\r\n\r\n"
    )
    try:
        data = head.encode("latin-1")
    except UnicodeEncodeError:
        raise InvalidHandshake("a response header is not latin-1 text") from None
    if exact:
        headers._compact_from(block)
    return data


class ClientHandshake:
    """Client side of the opening handshake.

    :meth:`send_request` gives the request bytes; feed the answer to
    :meth:`receive_data` until it returns the :class:`Response`, then
    :meth:`check_response` validates it.
    """

    def __init__(
        self,
        host: str,
        path: str,
        *,
        origin: str | None = None,
        subprotocols: Sequence[str] | None = None,
        extensions_offer: str | None = None,
        additional_headers: HeadersLike | None = None,
        user_agent_header: str | None = SERVER_AGENT,
        max_head_size: int = MAX_HEAD_SIZE,
        max_headers: int = MAX_HEADERS,
    ) -> None:
        self.key = generate_key()
        self.subprotocols = list(subprotocols or [])
        self.max_headers = max_headers
        self.max_head_size = max_head_size
        self._received = 0
        headers = Headers()
        headers["Host"] = host
        headers["Upgrade"] = "websocket"
        headers["Connection"] = "Upgrade"
        headers["Sec-WebSocket-Key"] = self.key
        headers["Sec-WebSocket-Version"] = "13"
        if origin is not None:
            headers["Origin"] = origin
        if extensions_offer:
            headers["Sec-WebSocket-Extensions"] = extensions_offer
        if self.subprotocols:
            headers["Sec-WebSocket-Protocol"] = ", ".join(self.subprotocols)
        if additional_headers is not None:
            extra = Headers(additional_headers)
            for name in extra:
                if name.lower() == "host":
                    del headers["Host"]
            headers.update(extra)
        if user_agent_header and "User-Agent" not in headers:
            headers["User-Agent"] = user_agent_header
        self.request = Request(path, headers)
        self.response: Response | None = None
        # As on the server: a plain 101 is read without h11 (and the request written
        # without it); h11 is created for anything else.
        self._buffer: bytearray | None = bytearray() if parse_head is not None else None
        self._head_size = 0
        self._h11: h11.Connection | None = None
        self._status_response: h11.Response | None = None
        self._body = bytearray()

    def send_request(self) -> bytes:
        """Return the bytes of the upgrade request."""
        if self._buffer is not None:
            head = _request_head(self.request)
            if head is not None:
                return head
            self._buffer = None  # unusual values: h11 checks and writes them
        return self._new_h11()[1]

    def _new_h11(self) -> tuple[h11.Connection, bytes]:
        """h11, after sending the request: the connection and the request's bytes."""
        conn = self._h11 = h11.Connection(
            h11.CLIENT, max_incomplete_event_size=self.max_head_size
        )
        out = conn.send(
            h11.Request(method="GET", target=self.request.path.encode(),
                        headers=_h11_headers(self.request.headers))
        ) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        return conn, out

    def receive_data(self, data: bytes) -> Response | None:
        """Feed response bytes (``b""`` at EOF); return the :class:`Response` when complete.

        A 101 is complete after its head; another status after its body (up to
        ``MAX_BODY_SIZE`` bytes) or at EOF. Raises :class:`InvalidMessage` when the
        response is malformed.
        """
        buffer = self._buffer
        if buffer is not None:
            if data:
                start = max(0, len(buffer) - 3)
                buffer += data
                end = buffer.find(b"\r\n\r\n", start)
                if end >= 0:
                    end += 4
                    response = _fast_101(bytes(buffer[:end]), self.max_headers)
                    if response is not None:
                        if end > self.max_head_size:
                            raise InvalidMessage(
                                f"response head of {end} bytes is larger than "
                                f"{self.max_head_size} bytes"
                            )
                        self._head_size = end
                        self.response = response
                        return response
                elif (len(buffer) <= self.max_head_size and b"\n\n" not in buffer
                        and b"\n\r\n" not in buffer and not _UNUSUAL.search(data)):
                    return None
            # Not a plain 101: h11 reads the response from its first byte.
            self._buffer = None
            earlier = bytes(buffer[: len(buffer) - len(data)])
            fresh = self._new_h11()[0]
            if earlier:  # (b"" would tell h11 the stream ended)
                fresh.receive_data(earlier)
                self._received += len(earlier)
        conn = self._h11
        assert conn is not None
        conn.receive_data(data)
        self._received += len(data)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if self._status_response is not None:
                    return self._finish_error_response()
                raise InvalidMessage(f"invalid HTTP response: {exc}") from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.NEED_DATA and not data and self._status_response is not None:
                    return self._finish_error_response()
                if event is h11.NEED_DATA and not data:
                    raise InvalidMessage("connection closed during the opening handshake")
                return None
            if isinstance(event, (h11.InformationalResponse, h11.Response)):
                head_size = self._received - len(conn.trailing_data[0])
                if head_size > self.max_head_size and self._status_response is None:
                    raise InvalidMessage(
                        f"response head of {head_size} bytes is larger than "
                        f"{self.max_head_size} bytes"
                    )
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    self.response = self._make_response(event, b"")
                    return self.response
                continue  # 100 Continue and the like: ignore
            if isinstance(event, h11.Response):
                self._status_response = event
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) >= MAX_BODY_SIZE:
                    return self._finish_error_response()
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return self._finish_error_response()

    def _finish_error_response(self) -> Response:
        assert self._status_response is not None
        self.response = self._make_response(
            self._status_response, bytes(self._body[:MAX_BODY_SIZE])
        )
        return self.response

    def _make_response(
        self, event: h11.Response | h11.InformationalResponse, body: bytes
    ) -> Response:
        if len(event.headers) > self.max_headers:
            raise InvalidMessage(
                f"response has {len(event.headers)} headers, more than {self.max_headers}"
            )
        return Response(
            event.status_code,
            _headers_from_h11(event.headers.raw_items()),
            body,
            event.reason.decode("latin-1"),
        )

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the 101 head: the server's first frames."""
        if self._buffer is not None:
            return bytes(self._buffer[self._head_size :])
        assert self._h11 is not None
        data, _closed = self._h11.trailing_data
        return bytes(data)

    def check_response(self, response: Response) -> tuple[str | None, list[str]]:
        """Validate a response; return the subprotocol and the accepted extensions.

        Raises :class:`InvalidStatus` for a status other than 101, :class:`InvalidHeader`
        or :class:`NegotiationError` for a 101 that does not match the request.
        """
        if response.status != 101:
            raise InvalidStatus(response)
        headers = response.headers
        connection = [t.lower() for t in parse_tokens(headers.get_all("Connection"))]
        if "upgrade" not in connection:
            raise InvalidUpgrade("Connection", headers.get("Connection"),
                                 "server response Connection header does not include Upgrade")
        upgrade = [t.lower() for t in parse_tokens(headers.get_all("Upgrade"))]
        if upgrade != ["websocket"]:
            raise InvalidUpgrade("Upgrade", headers.get("Upgrade"),
                                 "server response Upgrade header is not websocket")
        accept = headers.get_all("Sec-WebSocket-Accept")
        if accept != [accept_key(self.key)]:
            raise InvalidHeader(
                "Sec-WebSocket-Accept", ", ".join(accept) or None,
                "server response has a wrong Sec-WebSocket-Accept"
                if accept else "server response has no Sec-WebSocket-Accept",
            )
        protocols = parse_tokens(headers.get_all("Sec-WebSocket-Protocol"))
        subprotocol: str | None = None
        if protocols:
            if len(protocols) > 1:
                raise NegotiationError(f"server chose several subprotocols: {protocols}")
            subprotocol = protocols[0]
            if subprotocol not in self.subprotocols:
                raise NegotiationError(
                    f"server chose subprotocol {subprotocol!r}, which the client did not offer"
                    + (f" (offered: {', '.join(self.subprotocols)})" if self.subprotocols
                       else "")
                )
        extensions = headers.get_all("Sec-WebSocket-Extensions")
        return subprotocol, extensions
