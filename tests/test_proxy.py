"""tether.proxy: proxy URLs, the environment and no_proxy, the CONNECT exchange and the
redirect chain, without I/O; and :class:`ProxyServer`, the HTTP CONNECT and SOCKS proxy
that the client tests of both layers (tests/asyncio, tests/sync) run against."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, TypeVar

import pytest

import tether
from tether.protocol.http import Headers, Response
from tether.proxy import (
    ConnectHandshake,
    Proxy,
    RedirectChain,
    bypass_proxy,
    check_proxy_option,
    environment_proxy,
    parse_proxy,
    proxy_error_is_temporary,
    redact,
    request_headers,
    retry_after,
    select_proxy,
    socks_error,
    socks_settings,
)
from tether.uri import parse_uri

T = TypeVar("T")

#: Upper bound of any single wait here.
TIMEOUT = 5.0

# ------------------------------------------------------------------------ proxy URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://proxy.example:3128", Proxy("http", "proxy.example", 3128)),
        ("http://proxy.example", Proxy("http", "proxy.example", 80)),
        ("https://proxy.example", Proxy("https", "proxy.example", 443)),
        ("HTTP://Proxy.Example:8080/", Proxy("http", "proxy.example", 8080)),
        ("socks5://127.0.0.1", Proxy("socks5", "127.0.0.1", 1080)),
        ("socks5h://[::1]:9050", Proxy("socks5h", "::1", 9050)),
        ("socks4://h:1", Proxy("socks4", "h", 1)),
        ("socks4a://h", Proxy("socks4a", "h", 1080)),
        ("proxy.example:3128", Proxy("http", "proxy.example", 3128)),
        (
            "http://al%40ice:p%3Ass@proxy:8080",
            Proxy("http", "proxy", 8080, username="al@ice", password="p:ss"),
        ),
        ("http://bob@proxy", Proxy("http", "proxy", 80, username="bob")),
    ],
)
def test_parse_proxy(url: str, expected: Proxy) -> None:
    assert parse_proxy(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1:1", "unsupported proxy scheme 'ftp'"),
        ("socks6://h", "unsupported proxy scheme"),
        ("http://", "no host"),
        ("http://h:port", "invalid proxy URL"),
        ("http://h:99999", "invalid proxy URL"),
        ("http://h/path", "no path"),
        ("http://h?q", "no path"),
    ],
)
def test_parse_proxy_errors(url: str, message: str) -> None:
    with pytest.raises(tether.InvalidProxy, match=message):
        parse_proxy(url)


def test_errors_do_not_show_the_password() -> None:
    with pytest.raises(tether.InvalidProxy) as info:
        parse_proxy("ftp://user:s3cret@h")
    assert "s3cret" not in str(info.value)
    assert "user:***@h" in str(info.value)
    assert "s3cret" not in repr(parse_proxy("http://user:s3cret@h"))


def test_redact() -> None:
    assert redact("ws://u:p@h:1/x") == "ws://u:***@h:1/x"
    assert redact("ws://h/x") == "ws://h/x"
    assert redact("ws://u@h/x") == "ws://u@h/x"
    assert redact("http://[::1") == "<invalid URL>"


def test_proxy_properties() -> None:
    proxy = parse_proxy("https://user:pw@[::1]:8443")
    assert proxy.is_http and proxy.tls
    assert proxy.url == "https://[::1]:8443"
    assert proxy.authorization() == "Basic " + base64.b64encode(b"user:pw").decode()
    assert parse_proxy("http://user@h").authorization() == "Basic " + base64.b64encode(
        b"user:"
    ).decode()
    assert parse_proxy("http://h").authorization() is None
    assert not parse_proxy("socks5://h").is_http


@pytest.mark.parametrize(
    ("scheme", "settings"),
    [
        ("socks5", ("SOCKS5", False)),
        ("socks5h", ("SOCKS5", True)),
        ("socks4", ("SOCKS4", False)),
        ("socks4a", ("SOCKS4", True)),
    ],
)
def test_socks_settings(scheme: str, settings: tuple[str, bool]) -> None:
    assert socks_settings(parse_proxy(f"{scheme}://h")) == settings


def test_check_proxy_option() -> None:
    assert check_proxy_option(True) is True
    assert check_proxy_option(None) is None
    assert check_proxy_option(False) is False
    assert check_proxy_option("http://h") == "http://h"
    with pytest.raises(tether.InvalidProxy):
        check_proxy_option("gopher://h")
    with pytest.raises(TypeError, match="proxy must be"):
        check_proxy_option(8080)


# ------------------------------------------------------------------------ environment


@pytest.mark.parametrize(
    ("env", "secure", "expected"),
    [
        ({}, False, None),
        ({"http_proxy": "http://a"}, False, ("http_proxy", "http://a")),
        ({"http_proxy": "http://a"}, True, None),
        # HTTP_PROXY in upper case is ignored, as curl does (httpoxy).
        ({"HTTP_PROXY": "http://a"}, False, None),
        ({"https_proxy": "http://a"}, True, ("https_proxy", "http://a")),
        ({"HTTPS_PROXY": "http://b"}, True, ("HTTPS_PROXY", "http://b")),
        ({"https_proxy": "http://a", "HTTPS_PROXY": "http://b"}, True, ("https_proxy", "http://a")),
        ({"all_proxy": "socks5://c"}, False, ("all_proxy", "socks5://c")),
        ({"ALL_PROXY": "socks5://c"}, True, ("ALL_PROXY", "socks5://c")),
        ({"https_proxy": "http://a", "all_proxy": "socks5://c"}, True, ("https_proxy", "http://a")),
        ({"https_proxy": "http://a", "all_proxy": "socks5://c"}, False, ("all_proxy", "socks5://c")),
        ({"http_proxy": "  ", "all_proxy": "socks5://c"}, False, ("all_proxy", "socks5://c")),
    ],
)
def test_environment_proxy(
    env: dict[str, str], secure: bool, expected: tuple[str, str] | None
) -> None:
    assert environment_proxy(secure, env) == expected


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypass"),
    [
        ("example.com", 80, "", False),
        ("example.com", 80, "*", True),
        ("example.com", 80, "example.com", True),
        ("EXAMPLE.com.", 80, "example.COM", True),
        ("ws.example.com", 80, "example.com", True),
        ("ws.example.com", 80, ".example.com", True),
        ("example.com", 80, ".example.com", True),
        ("ws.example.com", 80, "*.example.com", True),
        ("badexample.com", 80, "example.com", False),
        ("example.com.evil", 80, "example.com", False),
        ("example.org", 80, "example.com, example.org", True),
        ("example.org", 80, "example.com example.org", True),
        ("example.org", 80, ",,example.org,", True),
        ("example.com", 8080, "example.com:8080", True),
        ("example.com", 80, "example.com:8080", False),
        # curl: loopback goes through the proxy unless no_proxy names it.
        ("127.0.0.1", 80, "", False),
        ("localhost", 80, "example.com", False),
        ("localhost", 80, "localhost", True),
        ("127.0.0.1", 80, "127.0.0.1", True),
        ("127.0.0.1", 80, "localhost", False),
        ("localhost", 80, "127.0.0.1", False),
        ("127.0.0.1", 80, "127.0.0.0/8", True),
        ("10.1.2.3", 80, "10.0.0.0/8", True),
        ("11.1.2.3", 80, "10.0.0.0/8", False),
        ("10.1.2.3", 80, "10.0.0.0/255.0.0.0", True),
        ("10.1.2.3", 443, "10.1.2.3:443", True),
        ("::1", 80, "::1", True),
        ("::1", 80, "[::1]", True),
        ("::1", 80, "[::1]:80", True),
        ("::1", 8080, "[::1]:80", False),
        ("fd00::5", 80, "fd00::/8", True),
        ("fe80::5", 80, "fd00::/8", False),
        ("::1", 80, "127.0.0.0/8", False),
        # An IP entry never matches a name: nothing is resolved.
        ("example.com", 80, "93.184.216.34", False),
        ("1.2.3.4", 80, "2.3.4", False),
    ],
)
def test_bypass_proxy(host: str, port: int, no_proxy: str, bypass: bool) -> None:
    assert bypass_proxy(host, port, no_proxy) is bypass


def test_select_proxy() -> None:
    ws, wss = parse_uri("ws://example.com/"), parse_uri("wss://example.com/")
    env = {"http_proxy": "http://p1:3128", "https_proxy": "https://p2", "no_proxy": "other"}
    assert select_proxy(ws, True, env) == Proxy("http", "p1", 3128)
    assert select_proxy(wss, True, env) == Proxy("https", "p2", 443)
    assert select_proxy(ws, None, env) is None
    assert select_proxy(ws, False, env) is None
    # A proxy given explicitly is used for every host, no_proxy or not.
    assert select_proxy(ws, "socks5://s", {"no_proxy": "*"}) == Proxy("socks5", "s", 1080)
    assert select_proxy(ws, True, {**env, "no_proxy": "example.com"}) is None
    assert select_proxy(ws, True, {**env, "no_proxy": "", "NO_PROXY": "*"}) is None
    assert select_proxy(ws, True, {}) is None


def test_select_proxy_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://from-env:1")
    assert select_proxy(parse_uri("ws://h/"), True) == Proxy("http", "from-env", 1)


def test_bad_environment_proxy_names_the_variable() -> None:
    with pytest.raises(tether.InvalidProxy, match=r"environment variable all_proxy: .*'ftp'"):
        select_proxy(parse_uri("ws://h/"), True, {"all_proxy": "ftp://x"})


# ---------------------------------------------------------------------- HTTP CONNECT


def connect_handshake(proxy: str = "http://proxy:3128", host: str = "example.com",
                      port: int = 443, **options: Any) -> ConnectHandshake:
    return ConnectHandshake(parse_proxy(proxy), host, port, **options)


def test_connect_request() -> None:
    handshake = connect_handshake(user_agent_header="tether")
    assert handshake.send_request() == (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
        b"User-Agent: tether\r\n\r\n"
    )


def test_connect_request_with_credentials_and_ipv6() -> None:
    handshake = connect_handshake("http://al%40ice:pw@proxy", host="::1", port=8080)
    creds = base64.b64encode(b"al@ice:pw").decode()
    assert handshake.send_request() == (
        b"CONNECT [::1]:8080 HTTP/1.1\r\nHost: [::1]:8080\r\n"
        b"Proxy-Authorization: Basic " + creds.encode() + b"\r\n\r\n"
    )


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 Connection established\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nProxy-Agent: test\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ],
)
def test_connect_accepted_in_any_chunks(answer: bytes) -> None:
    for size in (1, 3, len(answer)):
        handshake = connect_handshake()
        handshake.send_request()
        chunks = [answer[i:i + size] for i in range(0, len(answer), size)]
        results = [handshake.receive_data(chunk) for chunk in chunks]
        assert results[-1] is True and not any(results[:-1])
        assert handshake.trailing_data == b""
        handshake.check_no_trailing_data()
        assert handshake.response is not None and 200 <= handshake.response.status < 300


def test_connect_trailing_data_is_refused() -> None:
    handshake = connect_handshake()
    handshake.send_request()
    assert handshake.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert handshake.trailing_data == b"abc"
    with pytest.raises(tether.InvalidProxy, match="3 unexpected bytes"):
        handshake.check_no_trailing_data()
    with pytest.raises(tether.InvalidProxy, match="5 unexpected bytes"):
        connect_handshake().check_no_trailing_data(5)


@pytest.mark.parametrize(
    ("proxy", "answer", "message", "status"),
    [
        (
            "http://proxy:3128",
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n"
            b"Content-Length: 4\r\n\r\nnope",
            "proxy http://proxy:3128 refused CONNECT example.com:443: HTTP 407 Proxy "
            "Authentication Required; the proxy needs credentials",
            407,
        ),
        (
            "http://u:wrong@proxy:3128",
            b"HTTP/1.1 407 Denied\r\n\r\n",
            "HTTP 407 Denied; check the user name and password",
            407,
        ),
        ("http://proxy", b"HTTP/1.1 403 Forbidden\r\n\r\n", "HTTP 403 Forbidden", 403),
        ("http://proxy", b"HTTP/1.1 502 Bad Gateway\r\n\r\n", "HTTP 502 Bad Gateway", 502),
    ],
)
def test_connect_refused(proxy: str, answer: bytes, message: str, status: int) -> None:
    handshake = connect_handshake(proxy)
    handshake.send_request()
    with pytest.raises(tether.InvalidProxy, match=message) as info:
        handshake.receive_data(answer)
    assert "wrong" not in str(info.value)
    cause = info.value.__cause__
    assert isinstance(cause, tether.InvalidStatus)
    assert cause.response.status == status
    assert proxy_error_is_temporary(info.value) is (status >= 500)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"garbage\r\n\r\n", "invalid response from proxy http://proxy:3128 to CONNECT"),
        (b"", "closed the connection without answering CONNECT example.com:443"),
        (b"HTTP/1.1 200 OK\r\n", "closed the connection without answering"),
    ],
)
def test_connect_bad_answers(answer: bytes, message: str) -> None:
    handshake = connect_handshake()
    handshake.send_request()
    with pytest.raises(tether.InvalidProxy, match=message) as info:
        if answer:
            assert not handshake.receive_data(answer)
        handshake.receive_data(b"")
    # A proxy closing without an answer may be restarting: worth retrying.
    assert proxy_error_is_temporary(info.value) is message.startswith("closed")


def test_connect_response_head_is_bounded() -> None:
    handshake = connect_handshake(max_head_size=1024)
    handshake.send_request()
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Filler: " + b"x" * 2000 + b"\r\n"
    with pytest.raises(tether.InvalidProxy):
        handshake.receive_data(head)
    handshake = connect_handshake(max_head_size=1024)
    handshake.send_request()
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"y" * 50) for i in range(18))
    with pytest.raises(tether.InvalidProxy, match="larger than 1024"):
        handshake.receive_data(b"HTTP/1.1 200 OK\r\n" + lines + b"\r\n")


def test_socks_error() -> None:
    class FakeProxyError(Exception):
        error_code = 5

    error = socks_error(parse_proxy("socks5://u:pw@s:1080"), "ws.test", 80,
                        FakeProxyError("Connection refused"))
    assert str(error) == (
        "SOCKS proxy socks5://s:1080 refused the connection to ws.test:80: Connection refused"
    )
    assert proxy_error_is_temporary(error)
    FakeProxyError.error_code = 2
    assert not proxy_error_is_temporary(error)
    assert not proxy_error_is_temporary(tether.InvalidProxy("bad URL"))


# ------------------------------------------------------------------------- redirects


def redirect(status: int = 302, location: str | None = "/new") -> Response:
    headers = Headers()
    if location is not None:
        headers["Location"] = location
    return Response(status, headers, b"moved\n")


@pytest.mark.parametrize(
    ("uri", "location", "expected"),
    [
        ("ws://h/old", "/new", "ws://h/new"),
        ("ws://h/a/b", "c?x=1", "ws://h/a/c?x=1"),
        ("ws://h/a/b", "../c", "ws://h/c"),
        ("ws://h:8080/old", "/new", "ws://h:8080/new"),
        ("ws://h/old", "//other:81/x", "ws://other:81/x"),
        ("wss://h/old", "/new", "wss://h/new"),
        ("ws://h/old", "http://other/x", "ws://other/x"),
        ("ws://h/old", "https://other/x", "wss://other/x"),
        ("ws://h/old", "wss://other/x", "wss://other/x"),
        ("ws://h/old", "WS://other/x", "ws://other/x"),
        ("ws://h/old", "/new#frag", "ws://h/new"),
        ("ws://u:p@h/old", "/new", "ws://u:p@h/new"),
    ],
)
def test_redirect_location(uri: str, location: str, expected: str) -> None:
    chain = RedirectChain(uri)
    assert chain.follow(redirect(302, location)) == expected
    assert chain.uri == expected
    assert chain.uris == [uri, expected]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_statuses(status: int) -> None:
    assert RedirectChain("ws://h/").follow(redirect(status)) == "ws://h/new"


@pytest.mark.parametrize("status", [200, 300, 304, 305, 400, 401, 404, 500])
def test_other_statuses_are_not_redirects(status: int) -> None:
    assert RedirectChain("ws://h/").follow(redirect(status)) is None


def test_redirect_without_location_is_not_followed() -> None:
    assert RedirectChain("ws://h/").follow(redirect(302, None)) is None


def test_max_redirects_zero_follows_none() -> None:
    assert RedirectChain("ws://h/", 0).follow(redirect()) is None
    with pytest.raises(ValueError, match="max_redirects"):
        RedirectChain("ws://h/", -1)


def test_too_many_redirects() -> None:
    chain = RedirectChain("ws://h/0", 3)
    for i in range(1, 4):
        assert chain.follow(redirect(302, f"/{i}")) == f"ws://h/{i}"
    with pytest.raises(tether.InvalidStatus, match=r"too many redirects: more than "
                       r"max_redirects=3 \(the last from ws://h/3 to ws://h/4\)") as info:
        chain.follow(redirect(302, "/4"))
    assert info.value.response.status == 302


def test_unlimited_redirects() -> None:
    chain = RedirectChain("ws://h/0", None)
    for i in range(1, 50):
        assert chain.follow(redirect(307, f"/{i}")) == f"ws://h/{i}"


def test_redirect_loop() -> None:
    chain = RedirectChain("ws://h/a")
    chain.follow(redirect(302, "/b"))
    with pytest.raises(tether.InvalidStatus, match="redirect loop: ws://h/b redirected to "
                       r"ws://h/a \(HTTP 301\), which was already visited"):
        chain.follow(redirect(301, "/a"))


def test_redirect_to_itself_is_a_loop() -> None:
    with pytest.raises(tether.InvalidStatus, match="redirect loop"):
        RedirectChain("ws://h/a").follow(redirect(302, "ws://h/a"))


@pytest.mark.parametrize("location", ["ws://h/new", "http://h/new", "ws://other/"])
def test_redirect_from_wss_to_ws_is_refused(location: str) -> None:
    with pytest.raises(tether.InvalidStatus, match="wss:// may not redirect to ws://"):
        RedirectChain("wss://h/old").follow(redirect(302, location))


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("ftp://h/x", "Location 'ftp://h/x' is not a ws://, wss://, http:// or https:// URL"),
        ("mailto:a@b", "is not a ws://"),
        ("http://[::1/x", "is not a ws://"),
        ("ws://:80/x", "no host in Location"),
        ("http://h:99999/", "in Location"),
    ],
)
def test_unusable_location(location: str, message: str) -> None:
    with pytest.raises(tether.InvalidStatus, match=message):
        RedirectChain("ws://h/old").follow(redirect(302, location))


def test_redirect_messages_hide_passwords() -> None:
    chain = RedirectChain("wss://u:s3cret@h/a")
    with pytest.raises(tether.InvalidStatus) as info:
        chain.follow(redirect(302, "ws://u:s3cret@h/b"))
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("uri", "location", "same_origin"),
    [
        ("ws://h/", "/x", True),
        ("ws://h/", "ws://H/x", True),
        ("ws://h/", "wss://h/x", True),
        ("ws://h:8080/", "wss://h/x", False),
        ("ws://h/", "ws://h:8080/x", False),
        ("ws://h/", "ws://other/x", False),
        ("wss://h/", "wss://h:8443/x", False),
    ],
)
def test_redirect_same_origin(uri: str, location: str, same_origin: bool) -> None:
    chain = RedirectChain(uri)
    chain.follow(redirect(302, location))
    assert chain.same_origin is same_origin


def test_request_headers_drop_credentials_across_origins() -> None:
    extra = {"Authorization": "Bearer t", "Cookie": "c=1", "X-Trace": "1"}
    wsuri = parse_uri("ws://u:p@h/")
    basic = "Basic " + base64.b64encode(b"u:p").decode()
    assert request_headers(wsuri, extra) == [
        ("Authorization", basic), ("Authorization", "Bearer t"), ("Cookie", "c=1"),
        ("X-Trace", "1"),
    ]
    assert request_headers(wsuri, extra, same_origin=False) == [
        ("Authorization", basic), ("X-Trace", "1"),
    ]
    assert request_headers(parse_uri("ws://h/"), None) == []


# ----------------------------------------------------------------------- Retry-After

#: Sun, 06 Nov 1994 08:49:37 GMT, the example date of RFC 9110 5.6.7.
NOW = 784111777.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        # RFC 9110 5.6.7: IMF-fixdate, and the obsolete RFC 850 and asctime forms.
        ("Sun, 06 Nov 1994 08:49:47 GMT", 10.0),
        ("Sunday, 06-Nov-94 08:49:47 GMT", 10.0),
        ("Sun Nov  6 08:49:47 1994", 10.0),
        ("Sun, 06 Nov 1994 08:49:27 GMT", 0.0),  # in the past: now
        # Neither delay-seconds nor a date: ignored.
        ("-5", None),
        ("1.5", None),
        ("1e3", None),
        ("\u00b2", None),
        ("soon", None),
        ("", None),
    ],
)
def test_retry_after(value: str, expected: float | None) -> None:
    response = Response(503, Headers([("Retry-After", value)]))
    assert retry_after(response, NOW) == expected


def test_retry_after_missing() -> None:
    assert retry_after(Response(503), NOW) is None


# ------------------------------------------------------------ a proxy to test against


@dataclass(frozen=True)
class ProxyRequest:
    """What a client asked :class:`ProxyServer` for."""

    protocol: str  # "http", "socks4" or "socks5"
    host: str
    port: int
    #: SOCKS: how the host was sent: "domain", "ipv4" or "ipv6"
    address_type: str = "domain"
    #: HTTP: the Proxy-Authorization header; SOCKS: the user name
    credentials: str | None = None

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"


class ProxyServer:
    """An HTTP CONNECT proxy (``kind="http"``) or a SOCKS4/4a/5 proxy (``"socks"``) on
    127.0.0.1, for the client tests.

    It runs on an event loop in a thread of its own, so threaded tests and tests with
    their own event loop use it alike. ``auth=(user, password)`` requires credentials
    (Basic for HTTP, RFC 1929 for SOCKS5, the user id for SOCKS4); ``refuse`` answers
    every request with that HTTP status or SOCKS reply code; ``tls`` (a server
    :class:`ssl.SSLContext`) makes an ``https://`` proxy. It reaches loopback only: the
    names in ``hosts``, ``localhost`` and loopback addresses all lead to 127.0.0.1, and
    anything else is refused (403, SOCKS reply 4), so no test sends traffic elsewhere.
    Every request is recorded in :attr:`requests`.
    """

    def __init__(
        self,
        kind: str = "http",
        *,
        auth: tuple[str, str] | None = None,
        refuse: int | None = None,
        tls: ssl.SSLContext | None = None,
        hosts: Mapping[str, str] | None = None,
    ) -> None:
        assert kind in ("http", "socks")
        self.kind = kind
        self.auth = auth
        self.refuse = refuse
        self.tls = tls
        self.hosts = {name.lower(): address for name, address in (hosts or {}).items()}
        self.requests: list[ProxyRequest] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-proxy",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def targets(self) -> list[str]:
        return [request.target for request in self.requests]

    def url(self, scheme: str | None = None, *, credentials: tuple[str, str] | None = None
            ) -> str:
        """The proxy's URL, with the credentials given (by default, ``auth``'s)."""
        if scheme is None:
            scheme = ("https" if self.tls else "http") if self.kind == "http" else "socks5"
        creds = credentials or self.auth
        userinfo = f"{creds[0]}:{creds[1]}@" if creds else ""
        return f"{scheme}://{userinfo}127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ running

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(TIMEOUT)

    def __enter__(self) -> ProxyServer:
        self._thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self._shut_down()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        try:
            self._call(self._stop())
        finally:
            self._shut_down()

    def _shut_down(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the proxy's thread did not stop"
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for transport in self._transports:
            transport.abort()  # type: ignore[attr-defined]
        # Aborted, every connection's task ends on its own; cancel only a stuck one.
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=TIMEOUT)
        for task in self._tasks:
            task.cancel()
        await asyncio.wait_for(self._server.wait_closed(), TIMEOUT)

    # ----------------------------------------------------------------- proxying

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._transports.append(writer.transport)
        try:
            if self.kind == "http":
                upstream = await self._http(reader, writer)
            else:
                upstream = await self._socks(reader, writer)
            if upstream is not None:
                self._transports.append(upstream[1].transport)
                await asyncio.gather(self._pipe(reader, upstream[1]),
                                     self._pipe(upstream[0], writer))
                upstream[1].close()
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.CancelledError):
            pass  # a client that went away, or the proxy stopping
        finally:
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()
        except OSError:
            writer.close()

    def _resolve(self, host: str) -> str | None:
        """Where the proxy connects for ``host``: 127.0.0.1, or ``None`` (refused)."""
        host = host.lower()
        if host in self.hosts:
            return self.hosts[host]
        if host == "localhost":
            return "127.0.0.1"
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            return None
        return "127.0.0.1" if loopback else None

    async def _open(self, host: str, port: int
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        address = self._resolve(host)
        if address is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.open_connection(address, port), TIMEOUT)
        except OSError:
            return None

    # HTTP CONNECT

    @staticmethod
    def _respond(writer: asyncio.StreamWriter, status: int, headers: str = "") -> None:
        phrase = HTTPStatus(status).phrase
        body = f"{status} {phrase} (test proxy)\n".encode()
        writer.write(
            f"HTTP/1.1 {status} {phrase}\r\n{headers}Content-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
        )

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        head = await reader.readuntil(b"\r\n\r\n")
        first, *lines = head.decode("latin-1").split("\r\n")
        method, target, _version = first.split(" ", 2)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        host, _, port = target.rpartition(":")
        host = host[1:-1] if host.startswith("[") else host
        self.requests.append(ProxyRequest("http", host, int(port), "domain",
                                          headers.get("proxy-authorization")))
        if method != "CONNECT":
            self._respond(writer, 405)
            return None
        if self.refuse is not None:
            self._respond(writer, self.refuse)
            return None
        if self.auth is not None:
            expected = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
            if headers.get("proxy-authorization") != expected:
                self._respond(writer, 407, 'Proxy-Authenticate: Basic realm="test"\r\n')
                return None
        upstream = await self._open(host, int(port))
        if upstream is None:
            self._respond(writer, 403 if self._resolve(host) is None else 502)
            return None
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        return upstream

    # SOCKS (RFC 1928, RFC 1929; SOCKS4 and 4a)

    async def _socks(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        version = (await reader.readexactly(1))[0]
        if version == 5:
            return await self._socks5(reader, writer)
        if version == 4:
            return await self._socks4(reader, writer)
        return None

    async def _socks5(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        methods = await reader.readexactly((await reader.readexactly(1))[0])
        method = 2 if self.auth is not None else 0
        if method not in methods:
            writer.write(b"\x05\xff")
            return None
        writer.write(bytes([5, method]))
        user = None
        if self.auth is not None:
            await reader.readexactly(1)  # the subnegotiation's version, 1
            user = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            password = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            ok = (user, password) == self.auth
            writer.write(bytes([1, 0 if ok else 1]))
            if not ok:
                return None
        _version, command, _reserved, atyp = await reader.readexactly(4)
        if atyp == 1:
            host, kind = str(ipaddress.IPv4Address(await reader.readexactly(4))), "ipv4"
        elif atyp == 4:
            host, kind = str(ipaddress.IPv6Address(await reader.readexactly(16))), "ipv6"
        else:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
            kind = "domain"
        port = int.from_bytes(await reader.readexactly(2), "big")
        self.requests.append(ProxyRequest("socks5", host, port, kind, user))

        def reply(code: int) -> None:
            writer.write(bytes([5, code, 0, 1, 127, 0, 0, 1, 0, 0]))

        if command != 1:
            reply(7)  # command not supported
            return None
        if self.refuse is not None:
            reply(self.refuse)
            return None
        upstream = await self._open(host, port)
        reply(4 if upstream is None else 0)  # host unreachable, or succeeded
        return upstream

    async def _socks4(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        command = (await reader.readexactly(1))[0]
        port_bytes = await reader.readexactly(2)
        ip = await reader.readexactly(4)
        user = (await reader.readuntil(b"\x00"))[:-1].decode()
        if ip[:3] == b"\x00\x00\x00" and ip[3]:  # SOCKS4a: the name follows
            host, kind = (await reader.readuntil(b"\x00"))[:-1].decode(), "domain"
        else:
            host, kind = str(ipaddress.IPv4Address(ip)), "ipv4"
        port = int.from_bytes(port_bytes, "big")
        self.requests.append(ProxyRequest("socks4", host, port, kind, user or None))
        refused = (
            command != 1
            or self.refuse is not None
            or (self.auth is not None and user != self.auth[0])
        )
        upstream = None if refused else await self._open(host, port)
        writer.write(bytes([0, 0x5B if upstream is None else 0x5A]) + port_bytes + ip)
        return upstream


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for localhost and 127.0.0.1, with its key."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.load_verify_locations(self.cert)
        return context


def make_certificate(directory: Path) -> Certificate:
    """Make a :class:`Certificate` in ``directory`` with the cryptography package."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate = Certificate(directory / "cert.pem", directory / "key.pem")
    certificate.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    certificate.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )
    return certificate


def test_proxy_server_refuses_what_is_not_loopback() -> None:
    """The test proxy itself: it never connects beyond 127.0.0.1."""
    server = ProxyServer(hosts={"ws.proxy.test": "127.0.0.1"})
    assert server._resolve("ws.proxy.test") == "127.0.0.1"
    assert server._resolve("LOCALHOST") == "127.0.0.1"
    assert server._resolve("127.0.0.2") == "127.0.0.1"
    assert server._resolve("::1") == "127.0.0.1"
    assert server._resolve("example.com") is None
    assert server._resolve("10.0.0.1") is None
    server._loop.close()


PROXY_VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                   "ALL_PROXY", "no_proxy", "NO_PROXY")


def clear_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every proxy variable from the environment for the test."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
