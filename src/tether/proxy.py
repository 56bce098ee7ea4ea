"""Reaching the server: proxies and HTTP redirects, without I/O.

Shared by the asyncio and threading clients, which do the I/O:

- :func:`parse_proxy` checks a proxy URL (``http://``, ``https://``, ``socks4://``,
  ``socks4a://``, ``socks5://``, ``socks5h://``) and :func:`select_proxy` picks the
  proxy for a WebSocket URI: the one given, or the environment's (``https_proxy`` for
  ``wss://``, ``http_proxy`` for ``ws://``, then ``all_proxy``) unless ``no_proxy``
  names the host. The environment is read as curl reads it (see :func:`environment_proxy`).
- :class:`ConnectHandshake` is the HTTP CONNECT exchange (RFC 9110 9.3.6) with an HTTP
  proxy, on top of h11, in the style of :class:`tether.protocol.handshake.ClientHandshake`:
  bytes out with :meth:`~ConnectHandshake.send_request`, bytes in with
  :meth:`~ConnectHandshake.receive_data` until the tunnel is open. SOCKS is spoken by
  python-socks, in the drivers.
- :class:`RedirectChain` follows the redirects of the opening handshake (301, 302, 303,
  307, 308): it resolves ``Location``, refuses ``wss://`` to ``ws://``, loops and more
  than ``max_redirects`` hops.
- :func:`retry_after` reads how long a 503 or 429 answer asks the client to wait.

Credentials never appear in messages: URLs are shown through :func:`redact`.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

import h11

from .exceptions import InvalidProxy, InvalidStatus, InvalidURI
from .protocol.handshake import MAX_HEAD_SIZE
from .protocol.http import Headers, HeadersLike, Response
from .uri import WebSocketURI, auth_headers, parse_uri

__all__ = [
    "CREDENTIAL_HEADERS",
    "DEFAULT_PORTS",
    "MAX_REDIRECTS",
    "REDIRECT_STATUSES",
    "SOCKS_INSTALL_HINT",
    "ConnectHandshake",
    "Proxy",
    "ProxyOption",
    "RedirectChain",
    "bypass_proxy",
    "check_proxy_option",
    "environment_proxy",
    "parse_proxy",
    "proxy_error_is_temporary",
    "redact",
    "request_headers",
    "retry_after",
    "select_proxy",
    "socks_error",
    "socks_settings",
]

#: Default port of each proxy scheme (those of requests and websockets; curl uses 1080
#: for every scheme).
DEFAULT_PORTS = {
    "http": 80,
    "https": 443,
    "socks4": 1080,
    "socks4a": 1080,
    "socks5": 1080,
    "socks5h": 1080,
}
#: Redirects followed by default before giving up.
MAX_REDIRECTS = 10
#: The statuses that redirect a WebSocket handshake (always a GET, so 303 is like 302).
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
SOCKS_INSTALL_HINT = "pip install 'tether[socks]'"

#: What the ``proxy`` option accepts: a URL, ``True`` (the environment's) or ``None``.
ProxyOption = str | bool | None


def redact(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


# ------------------------------------------------------------------------- proxy URLs


@dataclass(frozen=True, slots=True)
class Proxy:
    """A parsed proxy URL."""

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def is_http(self) -> bool:
        """An HTTP proxy, reached with CONNECT (``http://`` or ``https://``)."""
        return self.scheme in ("http", "https")

    @property
    def tls(self) -> bool:
        """TLS to the proxy itself (``https://``)."""
        return self.scheme == "https"

    @property
    def url(self) -> str:
        """The proxy's URL without credentials, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def authorization(self) -> str | None:
        """The Proxy-Authorization value for an HTTP proxy with credentials (Basic)."""
        if self.username is None:
            return None
        creds = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(creds).decode()


def parse_proxy(url: str) -> Proxy:
    """Parse and check a proxy URL; raise :class:`InvalidProxy`.

    A URL without a scheme is an HTTP proxy (``proxy.example:3128``), as for curl.
    """
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    shown = redact(text)
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise InvalidProxy(f"invalid proxy URL {shown!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidProxy(
            f"unsupported proxy scheme {scheme!r} in {shown!r}; use http://, https://, "
            "socks5://, socks5h://, socks4:// or socks4a://"
        )
    if not parts.hostname:
        raise InvalidProxy(f"invalid proxy URL {shown!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidProxy(
            f"invalid proxy URL {shown!r}: a proxy URL has no path, query or fragment"
        )
    return Proxy(
        scheme=scheme,
        host=parts.hostname,
        port=DEFAULT_PORTS[scheme] if port is None else port,
        username=urllib.parse.unquote(parts.username) if parts.username is not None else None,
        password=urllib.parse.unquote(parts.password) if parts.password is not None else None,
    )


# ------------------------------------------------------------------------ environment


def _getenv(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def environment_proxy(
    secure: bool, environ: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """The environment's proxy for ``wss://`` (``secure``) or ``ws://``: ``(name, value)``.

    As curl reads them: ``https_proxy`` or ``HTTPS_PROXY`` for ``wss://``, ``http_proxy``
    for ``ws://`` (lower case only: ``HTTP_PROXY`` may come from a request header in CGI
    programs, the "httpoxy" problem), then ``all_proxy`` or ``ALL_PROXY``. Empty values
    count as unset.
    """
    env = os.environ if environ is None else environ
    first = ("https_proxy", "HTTPS_PROXY") if secure else ("http_proxy",)
    return _getenv(env, *first, "all_proxy", "ALL_PROXY")


_PORT_SUFFIX = re.compile(r"^(?P<host>[^:]*|\[[^\]]*\]):(?P<port>\d+)$")


def _no_proxy_entry(entry: str) -> tuple[str, int | None]:
    """Split a ``no_proxy`` entry into host (unbracketed, lower case) and port."""
    match = _PORT_SUFFIX.match(entry)
    host, port = (match["host"], int(match["port"])) if match else (entry, None)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.lower(), port


def _ip_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None


def bypass_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``no_proxy`` says to reach ``host:port`` directly, as curl decides.

    ``no_proxy`` is a list of entries separated by commas (or spaces): ``*`` (every
    host); a domain, which matches itself and its subdomains (``example.com`` and
    ``.example.com`` both match ``example.com`` and ``ws.example.com``; ``*.`` is read
    as ``.``); an IP address or a CIDR block (``10.0.0.0/8``, ``fd00::/8``), which
    matches IP addresses only, as no name is resolved. An entry may end with ``:port``
    to match that port only. ``localhost`` and ``127.0.0.1`` go through the proxy unless
    an entry names them.
    """
    name = host.lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = (
            ipaddress.ip_address(name)
        )
    except ValueError:
        address = None
    for entry in re.split(r"[,\s]+", no_proxy.strip()):
        if not entry:
            continue
        if entry == "*":
            return True
        entry_host, entry_port = _no_proxy_entry(entry)
        if entry_port is not None and entry_port != port:
            continue
        if address is not None:
            network = _ip_network(entry_host)
            if network is not None and address in network:
                return True
            continue
        if entry_host.startswith("*."):
            entry_host = entry_host[1:]
        domain = entry_host.lstrip(".").rstrip(".")
        if domain and (name == domain or name.endswith("." + domain)):
            return True
    return False


def select_proxy(
    wsuri: WebSocketURI, proxy: ProxyOption, environ: Mapping[str, str] | None = None
) -> Proxy | None:
    """The proxy to reach ``wsuri`` through, or ``None`` to connect directly.

    ``proxy`` is a proxy URL (used for every host), ``True`` for the environment's
    settings (:func:`environment_proxy`, unless :func:`bypass_proxy` with ``no_proxy``
    or ``NO_PROXY``), or ``None`` / ``False`` for no proxy.
    """
    if proxy is None or proxy is False:
        return None
    if isinstance(proxy, str):
        return parse_proxy(proxy)
    env = os.environ if environ is None else environ
    found = environment_proxy(wsuri.secure, env)
    if found is None:
        return None
    no_proxy = _getenv(env, "no_proxy", "NO_PROXY")
    if no_proxy is not None and bypass_proxy(wsuri.host, wsuri.port, no_proxy[1]):
        return None
    name, value = found
    try:
        return parse_proxy(value)
    except InvalidProxy as exc:
        raise InvalidProxy(f"environment variable {name}: {exc}") from None


def check_proxy_option(proxy: object) -> ProxyOption:
    """Check the ``proxy`` option when ``connect()`` is called (a URL is parsed now)."""
    if proxy is None or isinstance(proxy, bool):
        return proxy
    if isinstance(proxy, str):
        parse_proxy(proxy)
        return proxy
    raise TypeError(
        f"proxy must be a URL string, True (the environment's) or None, not {proxy!r}"
    )


# ----------------------------------------------------------------------------- SOCKS


def socks_settings(proxy: Proxy) -> tuple[str, bool]:
    """python-socks' ``ProxyType`` name and ``rdns`` flag for a SOCKS proxy.

    ``socks5h://`` and ``socks4a://`` let the proxy resolve the server's name;
    ``socks5://`` and ``socks4://`` resolve it here, as curl does.
    """
    kind = "SOCKS5" if proxy.scheme.startswith("socks5") else "SOCKS4"
    return kind, proxy.scheme in ("socks5h", "socks4a")


#: SOCKS replies after which trying again later may succeed: SOCKS5 general failure,
#: network / host unreachable, connection refused, TTL expired (RFC 1928 6); SOCKS4
#: request rejected or failed (91).
_SOCKS_TEMPORARY = frozenset({1, 3, 4, 5, 6, 91})


def socks_error(proxy: Proxy, host: str, port: int, exc: Exception) -> InvalidProxy:
    """The :class:`InvalidProxy` for a SOCKS proxy's refusal (python-socks' ``ProxyError``).

    Its ``__cause__`` is ``exc``, whose ``error_code`` is the SOCKS reply.
    """
    error = InvalidProxy(
        f"SOCKS proxy {proxy.url} refused the connection to {_target(host, port)}: {exc}"
    )
    error.__cause__ = exc
    return error


def proxy_error_is_temporary(exc: InvalidProxy) -> bool:
    """Whether a proxy's failure may go away: a 5xx or 429 answer, a SOCKS reply such
    as "host unreachable", a connection lost or closed before the answer. A 407, a 403,
    a bad proxy URL or a malformed answer won't (reconnecting does not retry them)."""
    cause = exc.__cause__
    if isinstance(cause, InvalidStatus):
        return cause.response.status >= 500 or cause.response.status == 429
    if isinstance(cause, (OSError, EOFError)):
        return True
    return getattr(cause, "error_code", None) in _SOCKS_TEMPORARY


# ---------------------------------------------------------------------- HTTP CONNECT


def _target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ConnectHandshake:
    """HTTP CONNECT to an HTTP proxy (RFC 9110 9.3.6): the tunnel to ``host:port``.

    :meth:`send_request` gives the request bytes; feed the answer to
    :meth:`receive_data` until it returns ``True``. A refusal (any status but 2xx)
    raises :class:`InvalidProxy` as soon as its head arrives, with the proxy's
    :class:`~tether.Response` in ``__cause__.response`` (an :class:`InvalidStatus`).
    """

    def __init__(
        self,
        proxy: Proxy,
        host: str,
        port: int,
        *,
        user_agent_header: str | None = None,
        max_head_size: int = MAX_HEAD_SIZE,
    ) -> None:
        self.proxy = proxy
        self.target = _target(host, port)
        self.max_head_size = max_head_size
        self._received = 0
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head_size)
        self.response: Response | None = None
        headers = Headers()
        # RFC 9110 9.3.6: the request target is authority-form, and so is Host.
        headers["Host"] = self.target
        authorization = proxy.authorization()
        if authorization is not None:
            headers["Proxy-Authorization"] = authorization
        if user_agent_header:
            headers["User-Agent"] = user_agent_header
        self.headers = headers

    def send_request(self) -> bytes:
        """Return the bytes of the CONNECT request."""
        conn = self._h11
        out = conn.send(
            h11.Request(method="CONNECT", target=self.target.encode("ascii"),
                        headers=self.headers.raw_items())
        ) or b""
        return out + (conn.send(h11.EndOfMessage()) or b"")

    def receive_data(self, data: bytes) -> bool:
        """Feed response bytes (``b""`` at EOF); ``True`` once the tunnel is open."""
        conn = self._h11
        conn.receive_data(data)
        self._received += len(data)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                if not data:
                    closed = self._closed()
                    raise closed from closed.__cause__
                raise InvalidProxy(
                    f"invalid response from proxy {self.proxy.url} to CONNECT: {exc}"
                ) from None
            if event is h11.NEED_DATA:
                if not data:
                    raise self._closed()
                return False
            if isinstance(event, h11.InformationalResponse):
                continue  # 100 Continue and the like
            if isinstance(event, h11.Response):
                return self._response_received(event)
            # PAUSED without a response cannot happen: h11 pauses after the 2xx only.
            raise InvalidProxy(  # pragma: no cover
                f"unexpected response from proxy {self.proxy.url}: {event!r}"
            )

    def _closed(self) -> InvalidProxy:
        error = InvalidProxy(
            f"proxy {self.proxy.url} closed the connection without answering "
            f"CONNECT {self.target}"
        )
        error.__cause__ = EOFError("end of stream")
        return error

    def _response_received(self, event: h11.Response) -> bool:
        head_size = self._received - len(self._h11.trailing_data[0])
        if head_size > self.max_head_size:
            raise InvalidProxy(
                f"response of proxy {self.proxy.url} to CONNECT has a head of {head_size} "
                f"bytes, larger than {self.max_head_size}"
            )
        headers = Headers()
        for name, value in event.headers.raw_items():
            headers[name.decode("latin-1")] = value.decode("latin-1")
        self.response = Response(event.status_code, headers,
                                 reason=event.reason.decode("latin-1"))
        if 200 <= event.status_code < 300:
            return True
        raise self._refusal(self.response)

    def _refusal(self, response: Response) -> InvalidProxy:
        text = f"HTTP {response.status}" + (f" {response.reason}" if response.reason else "")
        msg = f"proxy {self.proxy.url} refused CONNECT {self.target}: {text}"
        if response.status == 407:
            msg += (
                "; check the user name and password in the proxy URL"
                if self.proxy.username is not None
                else "; the proxy needs credentials: http://user:password@host:port"
            )
        error = InvalidProxy(msg)
        error.__cause__ = InvalidStatus(response)
        return error

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the 2xx head: they came through the tunnel."""
        data, _closed = self._h11.trailing_data
        return bytes(data)

    def check_no_trailing_data(self, more: int = 0) -> None:
        """Refuse bytes that came before the client spoke through the tunnel.

        Neither a WebSocket server nor a TLS server speaks first, so such bytes are a
        proxy's fault (such as a body after the 2xx, which RFC 9110 9.3.6 forbids).
        ``more`` counts bytes the driver received after the 2xx, beside these.
        """
        extra = len(self._h11.trailing_data[0]) + more
        if extra:
            raise InvalidProxy(
                f"proxy {self.proxy.url} sent {extra} unexpected bytes after its "
                f"response to CONNECT {self.target}"
            )


# ------------------------------------------------------------------------- redirects

#: Request headers that carry credentials: not sent to another host after a redirect.
CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


def request_headers(
    wsuri: WebSocketURI, additional_headers: HeadersLike | None, *, same_origin: bool = True
) -> list[tuple[str, str]]:
    """The headers a client adds to its handshake request: Authorization for the
    credentials in the URI, then ``additional_headers``, less those that carry
    credentials once a redirect has left the first host (:data:`CREDENTIAL_HEADERS`,
    as curl and requests do)."""
    headers = auth_headers(wsuri)
    if additional_headers is not None:
        extra = Headers(additional_headers).raw_items()
        if not same_origin:
            extra = [(n, v) for n, v in extra if n.lower() not in CREDENTIAL_HEADERS]
        headers.extend(extra)
    return headers



def _to_http(uri: str) -> str:
    scheme, sep, rest = uri.partition("://")
    mapping = {"ws": "http", "wss": "https"}
    return mapping.get(scheme.lower(), scheme) + sep + rest


def _same_origin(old: WebSocketURI, new: WebSocketURI) -> bool:
    """Whether credentials for ``old`` may go to ``new`` (as requests decides): the same
    host and port, or ``ws://host`` to ``wss://host`` on the default ports."""
    if old.host.lower() != new.host.lower():
        return False
    if old.secure == new.secure:
        return old.port == new.port
    return not old.secure and old.port == 80 and new.port == 443


class RedirectChain:
    """The redirects of one opening: resolve each ``Location``, refuse what is unsafe.

    :meth:`follow` returns the next URI, or ``None`` when the response is not a
    redirect to follow (then the :class:`InvalidStatus` stands). It raises an
    :class:`InvalidStatus` carrying the redirect response, with a message saying why,
    for a loop, too many redirects, ``wss://`` to ``ws://`` or an unusable
    ``Location``. :attr:`same_origin` turns ``False`` once a hop leaves the first
    host, after which credentials from ``additional_headers`` are not sent.
    """

    def __init__(self, uri: str, max_redirects: int | None = MAX_REDIRECTS) -> None:
        if max_redirects is not None and max_redirects < 0:
            raise ValueError(f"max_redirects must be >= 0 or None, not {max_redirects}")
        self.max_redirects = max_redirects
        self.uris = [uri]
        self.same_origin = True

    @property
    def uri(self) -> str:
        """The URI of the current hop."""
        return self.uris[-1]

    def follow(self, response: Response) -> str | None:
        """The URI to try next after ``response``, or ``None`` if it isn't a redirect."""
        location = response.headers.get("Location")
        if response.status not in REDIRECT_STATUSES or location is None:
            return None
        if self.max_redirects == 0:
            return None
        current = self.uri
        new = self._resolve(current, location.strip(), response)
        old_wsuri, new_wsuri = parse_uri(current), parse_uri(new)
        # As browsers and curl do: TLS is never given up on a redirect.
        if old_wsuri.secure and not new_wsuri.secure:
            raise self.error(
                response,
                f"refusing the redirect from {redact(current)} to {redact(new)}: "
                "wss:// may not redirect to ws://",
            )
        if new in self.uris:
            raise self.error(
                response,
                f"redirect loop: {redact(current)} redirected to {redact(new)} "
                f"(HTTP {response.status}), which was already visited",
            )
        if self.max_redirects is not None and len(self.uris) > self.max_redirects:
            raise self.error(
                response,
                f"too many redirects: more than max_redirects={self.max_redirects} "
                f"(the last from {redact(current)} to {redact(new)}); fix the redirects "
                "or raise max_redirects",
            )
        if not _same_origin(old_wsuri, new_wsuri):
            self.same_origin = False
        self.uris.append(new)
        return new

    def _resolve(self, current: str, location: str, response: Response) -> str:
        """``Location`` resolved against ``current`` (RFC 3986 5), as ws:// or wss://."""
        try:
            joined = urllib.parse.urljoin(_to_http(current), location)
        except ValueError:
            joined = ""
        scheme, sep, rest = joined.partition("://")
        mapping = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
        if not sep or scheme.lower() not in mapping:
            raise self.error(
                response,
                f"cannot follow the redirect from {redact(current)}: Location {location!r} "
                "is not a ws://, wss://, http:// or https:// URL",
            )
        # A WebSocket URI has no fragment (RFC 6455 3); one in Location is dropped.
        new = mapping[scheme.lower()] + sep + rest.partition("#")[0]
        try:
            parse_uri(new)
        except InvalidURI as exc:
            raise self.error(
                response, f"cannot follow the redirect from {redact(current)}: {exc.msg} "
                f"in Location {location!r}",
            ) from None
        return new

    def error(self, response: Response, msg: str) -> InvalidStatus:
        """An :class:`InvalidStatus` for ``response`` that says ``msg``."""
        error = InvalidStatus(response)
        error.args = (msg,)
        return error


# ----------------------------------------------------------------------- Retry-After

_DELAY_SECONDS = re.compile(r"[0-9]+")


def retry_after(response: Response, now: float) -> float | None:
    """The seconds ``response`` asks the client to wait before trying again, if it says.

    RFC 9110 10.2.3: ``Retry-After`` is a number of seconds or an HTTP-date; a date in
    the past means now (0). ``now`` is the current time as :func:`time.time` gives it,
    for dates. ``None`` when the header is missing or is neither (it is then ignored).
    """
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, as HTTP-dates are
        when = when.replace(tzinfo=datetime.timezone.utc)
    return max(0.0, when.timestamp() - now)
