"""tether.sync.client: connecting, the opening handshake from the client's side, options,
redirects, proxies, and Ctrl-C while blocked in recv."""

from __future__ import annotations

import base64
import ipaddress
import logging
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path

import pytest

import tether
from tether.sync import ClientConnection, ServerConnection, connect, unix_connect, unix_serve

from ..test_proxy import ProxyServer, clear_proxy_environment
from .conftest import (
    HOST,
    OP_TEXT,
    TIMEOUT,
    Background,
    RawPeer,
    RawServer,
    TLSFiles,
    echo,
    read_http_head,
    running,
    sync_server,
    uri,
)


@pytest.mark.parametrize(
    "bad", ["http://localhost/", "ws://", "ws://host:notaport/", "ws://host/#fragment"]
)
def test_invalid_uri(bad: str) -> None:
    with pytest.raises(tether.InvalidURI):
        connect(bad)


def test_ssl_for_ws_uri_is_an_error() -> None:
    with pytest.raises(ValueError, match="use wss://"):
        connect("ws://localhost/", ssl=True)


def test_connection_refused() -> None:
    with socket.create_server((HOST, 0)) as sock:
        port = sock.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        connect(f"ws://{HOST}:{port}/")


def test_open_timeout_when_the_server_never_answers() -> None:
    with RawServer(handshake=False) as raw:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"opening handshake timed out after 0\.2 s"):
            connect(raw.uri, open_timeout=0.2)
        assert 0.15 < time.monotonic() - start < 2


def test_invalid_status_carries_the_response() -> None:
    body = b"no such path"
    respond = (
        b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with RawServer(respond=respond) as raw:
        with pytest.raises(tether.InvalidStatus) as info:
            connect(raw.uri)
        assert info.value.response.status == 404
        assert info.value.response.body == body
        assert "HTTP 404" in str(info.value)


def test_wrong_accept_key_is_an_invalid_header() -> None:
    respond = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n"
    )
    with RawServer(respond=respond) as raw, pytest.raises(
        tether.InvalidHeader, match="wrong Sec-WebSocket-Accept"
    ):
        connect(raw.uri)


def test_server_closing_during_the_handshake() -> None:
    with RawServer(respond=b"HTTP/1.1 101 Switch") as raw, pytest.raises(tether.InvalidMessage):
        connect(raw.uri)


def test_subprotocol_not_offered_is_a_negotiation_error() -> None:
    with RawServer(subprotocol="unexpected") as raw, pytest.raises(
        tether.NegotiationError, match="did not offer"
    ):
        connect(raw.uri, subprotocols=["chat"])


def test_extension_not_offered_is_a_negotiation_error() -> None:
    with RawServer(extensions="permessage-deflate") as raw, pytest.raises(
        tether.NegotiationError
    ):
        connect(raw.uri, compression=None)


def test_request_headers() -> None:
    with RawServer() as raw, connect(
        f"ws://user:p%40ss@{HOST}:{raw.port}/path?q=1",
        origin="https://app.example",
        additional_headers={"X-Token": "abc"},
        user_agent_header="my-agent/1.0",
        subprotocols=["chat", "json"],
        close_timeout=0.5,
    ):
        first, headers = raw.requests.get(timeout=TIMEOUT)
        raw.next_peer().close()
    assert first == "GET /path?q=1 HTTP/1.1"
    assert headers["host"] == f"{HOST}:{raw.port}"
    assert headers["origin"] == "https://app.example"
    assert headers["x-token"] == "abc"
    assert headers["user-agent"] == "my-agent/1.0"
    assert headers["sec-websocket-protocol"] == "chat, json"
    assert headers["authorization"] == "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert headers["sec-websocket-extensions"].startswith("permessage-deflate")


def test_no_compression_offer_when_off() -> None:
    with RawServer() as raw, connect(raw.uri, compression=None, close_timeout=0.5):
        _, headers = raw.requests.get(timeout=TIMEOUT)
        assert "sec-websocket-extensions" not in headers
        raw.next_peer().close()


def test_messages_sent_right_after_the_101_are_not_lost() -> None:
    """Frames that arrive in the same read as the 101 belong to the protocol."""
    from .conftest import accept_key, encode_frame, read_http_head

    with socket.create_server((HOST, 0)) as listener:
        port = listener.getsockname()[1]

        def answer() -> socket.socket:
            sock, _ = listener.accept()
            _, headers, _ = read_http_head(sock)
            sock.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + accept_key(headers["sec-websocket-key"]).encode() + b"\r\n\r\n"
                + encode_frame(OP_TEXT, b"first", mask=False)
            )
            return sock

        from .conftest import Background

        server_side = Background(answer)
        with connect(f"ws://{HOST}:{port}/", close_timeout=0.5) as ws:
            assert ws.recv(timeout=TIMEOUT) == "first"
            server_side.result().close()


def test_connect_with_sock() -> None:
    with sync_server() as server:
        sock = socket.create_connection((HOST, server.port), timeout=TIMEOUT)
        with connect(uri(server), sock=sock) as ws:
            ws.send("via sock")
            assert ws.recv(timeout=TIMEOUT) == "via sock"
        with socket.socket() as other, pytest.raises(TypeError, match="unexpected arguments"):
            connect(uri(server), sock=other, source_address=("127.0.0.1", 0))


def test_unix_connect(tmp_path: Path) -> None:
    path = str(tmp_path / "ws.sock")
    with running(unix_serve(echo, path, close_timeout=2)), unix_connect(
        path, "ws://localhost/chat"
    ) as ws:
        ws.send("hello")
        assert ws.recv(timeout=TIMEOUT) == "hello"
        assert ws.request is not None and ws.request.path == "/chat"
    with pytest.raises(FileNotFoundError):
        unix_connect(str(tmp_path / "missing.sock"))


# ------------------------------------------------------------------------- redirects


def redirecting(
    routes: dict[str, str], status: int = 302, seen: list[tuple[str, tether.Request]] | None = None,
    name: str = "",
) -> Callable[[ServerConnection, tether.Request], tether.Response | None]:
    """``process_request`` answering each path in ``routes`` with a redirect there; it
    records the requests in ``seen``."""

    def process_request(
        connection: ServerConnection, request: tether.Request
    ) -> tether.Response | None:
        if seen is not None:
            seen.append((name, request))
        target = routes.get(request.path)
        if target is None:
            return None
        response = connection.respond(status, f"moved to {target}\n")
        response.headers["Location"] = target
        return response

    return process_request


def roundtrip(ws: ClientConnection, message: str = "through") -> None:
    ws.send(message)
    assert ws.recv(timeout=TIMEOUT) == message


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_statuses_and_relative_location(
    status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.client")
    with sync_server(process_request=redirecting({"/a/old": "new?x=1"}, status)) as server:
        old, new = uri(server, "/a/old"), uri(server, "/a/new?x=1")
        with connect(old, close_timeout=2) as ws:
            assert ws.request is not None and ws.request.path == "/a/new?x=1"
            roundtrip(ws)
    [record] = [r for r in caplog.records if "redirected" in r.getMessage()]
    assert record.name == "tether.client" and record.levelno == logging.INFO
    assert record.getMessage() == (
        f"{old} redirected to {new} (HTTP {status} {HTTPStatus(status).phrase})"
    )


def test_redirect_to_another_server_with_an_http_url() -> None:
    """An http:// Location means ws://; credentials in headers stay with the first host."""
    seen: list[tuple[str, tether.Request]] = []
    with sync_server(process_request=redirecting({}, seen=seen, name="B")) as b:
        to_b = {"/": f"http://localhost:{b.port}/b"}
        with sync_server(process_request=redirecting(to_b, seen=seen, name="A")) as a, connect(
            uri(a), additional_headers={"Authorization": "Bearer t0k3n", "X-Id": "7"},
            close_timeout=2,
        ) as ws:
            roundtrip(ws)
        port = b.port
    assert [(name, request.path) for name, request in seen] == [("A", "/"), ("B", "/b")]
    (_, first), (_, second) = seen
    assert first.headers["Authorization"] == "Bearer t0k3n"
    assert "Authorization" not in second.headers
    assert second.headers["X-Id"] == "7"
    assert second.headers["Host"] == f"localhost:{port}"


def test_redirect_loop_error_says_so() -> None:
    with sync_server(process_request=redirecting({"/a": "/b", "/b": "/a"})) as server, \
            pytest.raises(tether.InvalidStatus, match="redirect loop") as info:
        connect(uri(server, "/a"))
    assert info.value.response.status == 302


def test_too_many_redirects() -> None:
    seen: list[tuple[str, tether.Request]] = []
    routes = {f"/{i}": f"/{i + 1}" for i in range(20)}
    with sync_server(process_request=redirecting(routes, seen=seen)) as server, \
            pytest.raises(tether.InvalidStatus, match="too many redirects: more than "
                          "max_redirects=3"):
        connect(uri(server, "/0"), max_redirects=3)
    assert [request.path for _, request in seen] == ["/0", "/1", "/2", "/3"]


def test_max_redirects_zero_raises_the_redirect() -> None:
    with sync_server(process_request=redirecting({"/": "/new"})) as server, \
            pytest.raises(tether.InvalidStatus) as info:
        connect(uri(server), max_redirects=0)
    assert info.value.response.status == 302
    assert info.value.response.headers["Location"] == "/new"


def test_redirect_from_wss_to_ws_is_refused(tls_files: TLSFiles) -> None:
    seen: list[tuple[str, tether.Request]] = []
    with sync_server(process_request=redirecting({}, seen=seen)) as plain:
        to_plain = {"/": uri(plain)}
        with sync_server(process_request=redirecting(to_plain),
                         ssl=tls_files.server_context()) as secure, \
                pytest.raises(tether.InvalidStatus, match="wss:// may not redirect to ws://"):
            connect(uri(secure, scheme="wss"), ssl=tls_files.client_context())
    assert seen == []


def test_redirect_with_a_large_body_is_read_bounded() -> None:
    """A 302 whose body is announced as 1 MB and stalls after 100 kB: the client reads
    a bounded part of it, drops the connection and follows the redirect."""
    with sync_server() as target, socket.create_server((HOST, 0)) as listener:
        head = (f"HTTP/1.1 302 Found\r\nLocation: {uri(target, '/moved')}\r\n"
                "Content-Length: 1000000\r\n\r\n").encode()

        def answer() -> bytes:
            sock, _ = listener.accept()
            with sock:
                read_http_head(sock)
                sock.sendall(head + b"x" * 100_000)
                # Wait until the client closes: it must not wait for the rest.
                return RawPeer(sock, client=False).read_eof()

        server_side = Background(answer)
        with connect(f"ws://{HOST}:{listener.getsockname()[1]}/", open_timeout=TIMEOUT,
                     close_timeout=2) as ws:
            assert ws.request is not None and ws.request.path == "/moved"
            roundtrip(ws)
        assert server_side.result() == b""


def test_redirect_with_sock_cannot_be_followed() -> None:
    with sync_server(process_request=redirecting({"/": "/new"})) as server:
        sock = socket.create_connection((HOST, server.port), timeout=TIMEOUT)
        with pytest.raises(tether.InvalidStatus, match="sock="):
            connect(uri(server), sock=sock)


def test_unix_connect_follows_a_redirect_on_the_same_host(tmp_path: Path) -> None:
    path = str(tmp_path / "ws.sock")
    process_request = redirecting({"/old": "/new", "/away": "ws://elsewhere/"})
    with running(unix_serve(echo, path, close_timeout=2, process_request=process_request)):
        with unix_connect(path, "ws://localhost/old", close_timeout=2) as ws:
            assert ws.request is not None and ws.request.path == "/new"
            roundtrip(ws)
        with pytest.raises(tether.InvalidStatus, match="same host only"):
            unix_connect(path, "ws://localhost/away")
    with pytest.raises(ValueError, match="proxy"):
        unix_connect(path, proxy="http://127.0.0.1:1")
    with pytest.raises(TypeError, match="source_address"):
        unix_connect(path, source_address=("127.0.0.1", 0))


# --------------------------------------------------------------------------- proxies


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable in the environment; the monkeypatch to set some."""
    clear_proxy_environment(monkeypatch)
    return monkeypatch


def test_http_proxy() -> None:
    with ProxyServer() as proxy, sync_server() as server:
        with connect(uri(server), proxy=proxy.url(), close_timeout=2) as ws:
            roundtrip(ws)
            # The TCP connection is to the proxy.
            assert ws.remote_address == ("127.0.0.1", proxy.port)
            assert ws.ssl_object is None
        assert ws.close_code == 1000
        assert proxy.targets == [f"{HOST}:{server.port}"]
        assert proxy.requests[0].credentials is None


def test_http_proxy_with_credentials() -> None:
    with ProxyServer(auth=("al@ice", "s3:cret")) as proxy, sync_server() as server:
        proxy_url = f"http://al%40ice:s3%3Acret@127.0.0.1:{proxy.port}"
        with connect(uri(server), proxy=proxy_url, close_timeout=2) as ws:
            roundtrip(ws)
        [request] = proxy.requests
    assert request.credentials == "Basic " + base64.b64encode(b"al@ice:s3:cret").decode()


@pytest.mark.parametrize(
    ("credentials", "message"),
    [(None, "the proxy needs credentials"), (("alice", "wrong"), "check the user name")],
)
def test_http_proxy_authentication_required(
    credentials: tuple[str, str] | None, message: str
) -> None:
    with ProxyServer(auth=("alice", "right")) as proxy:
        url = proxy.url(credentials=credentials) if credentials else (
            f"http://127.0.0.1:{proxy.port}"
        )
        with pytest.raises(tether.InvalidProxy) as info:
            connect("ws://127.0.0.1:1/", proxy=url)
    text = str(info.value)
    assert text.startswith(
        f"proxy http://127.0.0.1:{proxy.port} refused CONNECT 127.0.0.1:1: "
        "HTTP 407 Proxy Authentication Required; "
    )
    assert message in text and "wrong" not in text
    assert isinstance(info.value.__cause__, tether.InvalidStatus)
    assert info.value.__cause__.response.status == 407


def test_proxy_refusing_connect() -> None:
    with ProxyServer(refuse=403) as proxy, pytest.raises(tether.InvalidProxy, match="HTTP 403"):
        connect("ws://127.0.0.1:1/", proxy=proxy.url())


def test_proxy_closing_without_an_answer() -> None:
    with RawServer(respond=b"") as raw, pytest.raises(
        tether.InvalidProxy, match="closed the connection without answering CONNECT"
    ):
        connect("ws://127.0.0.1:1/", proxy=f"http://127.0.0.1:{raw.port}")
    first, headers = raw.requests.get(timeout=TIMEOUT)
    assert first == "CONNECT 127.0.0.1:1 HTTP/1.1"
    assert headers["host"] == "127.0.0.1:1"


def test_unreachable_proxy_raises_oserror() -> None:
    with socket.create_server((HOST, 0)) as sock:
        port = sock.getsockname()[1]
    for scheme in ("http", "socks5"):
        with pytest.raises(ConnectionRefusedError):
            connect("ws://127.0.0.1:1/", proxy=f"{scheme}://127.0.0.1:{port}")


@pytest.mark.parametrize("scheme", ["http", "https", "socks5"])
def test_open_timeout_covers_the_proxy_handshake(scheme: str) -> None:
    with RawServer(handshake=False) as raw:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"opening handshake timed out after 0\.2 s"):
            connect("ws://127.0.0.1:1/", proxy=f"{scheme}://127.0.0.1:{raw.port}",
                    open_timeout=0.2)
        assert 0.15 < time.monotonic() - start < 2


@pytest.mark.parametrize("target", ["ws", "wss"])
def test_https_proxy(tls_files: TLSFiles, target: str) -> None:
    """TLS to the proxy; for wss://, TLS to the server inside it (two SSLObjects)."""
    secure = target == "wss"
    with ProxyServer(tls=tls_files.server_context()) as proxy, sync_server(
        ssl=tls_files.server_context() if secure else None
    ) as server:
        with connect(uri(server, scheme=target), proxy=proxy.url(),
                     proxy_ssl=tls_files.client_context(), close_timeout=2,
                     ssl=tls_files.client_context() if secure else None) as ws:
            assert proxy.url().startswith("https://")
            for size in (1, 100_000, 300_000):
                roundtrip(ws, "x" * size)
            assert ws.ping().result(TIMEOUT) >= 0
            # ssl_object is the server's TLS, never the proxy's.
            assert (ws.ssl_object is not None) is (target == "wss")
        assert ws.close_code == 1000
        assert proxy.targets == [f"{HOST}:{server.port}"]


def test_https_proxy_certificate_is_verified(tls_files: TLSFiles) -> None:
    with ProxyServer(tls=tls_files.server_context()) as proxy:
        with pytest.raises(ssl.SSLCertVerificationError):
            connect("ws://127.0.0.1:1/", proxy=proxy.url())
        assert proxy.requests == []


def test_wss_through_http_proxy(tls_files: TLSFiles) -> None:
    with ProxyServer() as proxy, sync_server(ssl=tls_files.server_context()) as server:
        with connect(f"wss://localhost:{server.port}/", proxy=proxy.url(),
                     ssl=tls_files.client_context(), close_timeout=2) as ws:
            roundtrip(ws)
            assert ws.ssl_object is not None
        assert proxy.targets == [f"localhost:{server.port}"]


@pytest.mark.parametrize("auth", [None, ("user", "pa ss")])
def test_socks5_proxy(auth: tuple[str, str] | None) -> None:
    with ProxyServer("socks", auth=auth) as proxy, sync_server() as server:
        with connect(uri(server), proxy=proxy.url(), close_timeout=2) as ws:
            roundtrip(ws)
        [request] = proxy.requests
        port = server.port
    assert request.protocol == "socks5"
    assert (request.host, request.port, request.address_type) == (HOST, port, "ipv4")
    assert request.credentials == (auth[0] if auth else None)


def test_socks5_wrong_password() -> None:
    with ProxyServer("socks", auth=("user", "right")) as proxy, pytest.raises(
        tether.InvalidProxy, match=r"refused the connection to 127\.0\.0\.1:1"
    ) as info:
        connect("ws://127.0.0.1:1/", proxy=proxy.url(credentials=("user", "wrong")))
    assert "wrong" not in str(info.value)


@pytest.mark.parametrize(
    ("scheme", "protocol"), [("socks5h", "socks5"), ("socks4a", "socks4")]
)
def test_socks_remote_name_resolution(scheme: str, protocol: str) -> None:
    """socks5h:// and socks4a:// send the name: only the proxy knows ws.proxy.test."""
    with ProxyServer("socks", hosts={"ws.proxy.test": HOST}) as proxy, sync_server() as server:
        with connect(f"ws://ws.proxy.test:{server.port}/", proxy=proxy.url(scheme),
                     close_timeout=2) as ws:
            roundtrip(ws)
        [request] = proxy.requests
        port = server.port
    assert (request.protocol, request.address_type) == (protocol, "domain")
    assert request.target == f"ws.proxy.test:{port}"


@pytest.mark.parametrize("scheme", ["socks5", "socks4"])
def test_socks_local_name_resolution(scheme: str) -> None:
    with ProxyServer("socks") as proxy, sync_server() as server:
        with connect(f"ws://localhost:{server.port}/", proxy=proxy.url(scheme),
                     close_timeout=2) as ws:
            roundtrip(ws)
        [request] = proxy.requests
    assert request.protocol == scheme
    assert request.address_type in ("ipv4", "ipv6")
    assert ipaddress.ip_address(request.host).is_loopback


def test_socks_without_python_socks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "python_socks", None)
    with pytest.raises(tether.InvalidProxy, match=r"pip install 'tether\[socks\]'"):
        connect("ws://127.0.0.1:1/", proxy="socks5h://127.0.0.1:1")


def test_socks_with_other_socket_arguments() -> None:
    with pytest.raises(TypeError, match="source_address but not all_errors"):
        connect("ws://127.0.0.1:1/", proxy="socks5://127.0.0.1:1", all_errors=True)


def test_proxy_from_environment(no_proxy_env: pytest.MonkeyPatch) -> None:
    with ProxyServer() as proxy, sync_server() as server:
        no_proxy_env.setenv("http_proxy", proxy.url())
        with connect(uri(server), close_timeout=2) as ws:
            roundtrip(ws)
        assert proxy.targets == [f"{HOST}:{server.port}"]


def test_https_proxy_from_environment_for_wss(
    tls_files: TLSFiles, no_proxy_env: pytest.MonkeyPatch
) -> None:
    with ProxyServer() as https_proxy, ProxyServer() as http_proxy, sync_server(
        ssl=tls_files.server_context()
    ) as server:
        no_proxy_env.setenv("https_proxy", https_proxy.url())
        no_proxy_env.setenv("http_proxy", http_proxy.url())
        with connect(uri(server, scheme="wss"), ssl=tls_files.client_context(),
                     close_timeout=2) as ws:
            roundtrip(ws)
        assert https_proxy.targets == [f"{HOST}:{server.port}"]
        assert http_proxy.targets == []


def test_all_proxy_from_environment(no_proxy_env: pytest.MonkeyPatch) -> None:
    with ProxyServer("socks") as proxy, sync_server() as server:
        no_proxy_env.setenv("all_proxy", proxy.url("socks5h"))
        with connect(uri(server), close_timeout=2) as ws:
            roundtrip(ws)
        assert proxy.targets == [f"{HOST}:{server.port}"]


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "127.0.0.0/8", "*", "example.com,127.0.0.1"])
def test_no_proxy_bypasses_the_environment_proxy(
    no_proxy_env: pytest.MonkeyPatch, no_proxy: str
) -> None:
    with ProxyServer() as proxy, sync_server() as server:
        no_proxy_env.setenv("http_proxy", proxy.url())
        no_proxy_env.setenv("NO_PROXY", no_proxy)
        with connect(uri(server), close_timeout=2) as ws:
            roundtrip(ws)
        assert proxy.requests == []


def test_loopback_is_proxied_unless_no_proxy_says_so(no_proxy_env: pytest.MonkeyPatch) -> None:
    with ProxyServer() as proxy, sync_server() as server:
        no_proxy_env.setenv("http_proxy", proxy.url())
        no_proxy_env.setenv("no_proxy", "localhost")
        with connect(uri(server), close_timeout=2) as ws:
            roundtrip(ws)
        assert proxy.targets == [f"{HOST}:{server.port}"]


def test_proxy_none_ignores_the_environment(no_proxy_env: pytest.MonkeyPatch) -> None:
    with ProxyServer() as proxy, sync_server() as server:
        no_proxy_env.setenv("http_proxy", proxy.url())
        no_proxy_env.setenv("all_proxy", proxy.url())
        with connect(uri(server), proxy=None, close_timeout=2) as ws:
            roundtrip(ws)
        assert proxy.requests == []


def test_sock_ignores_the_environment(no_proxy_env: pytest.MonkeyPatch) -> None:
    with ProxyServer() as proxy, sync_server() as server:
        no_proxy_env.setenv("http_proxy", proxy.url())
        sock = socket.create_connection((HOST, server.port), timeout=TIMEOUT)
        with connect(uri(server), sock=sock, close_timeout=2) as ws:
            roundtrip(ws)
        assert proxy.requests == []


def test_each_redirect_hop_goes_through_the_proxy(no_proxy_env: pytest.MonkeyPatch) -> None:
    with ProxyServer() as proxy, sync_server() as b:
        no_proxy_env.setenv("http_proxy", proxy.url())
        to_b = {"/": f"ws://localhost:{b.port}/"}
        with sync_server(process_request=redirecting(to_b)) as a, connect(
            uri(a), close_timeout=2
        ) as ws:
            roundtrip(ws)
            expected = [f"{HOST}:{a.port}", f"localhost:{b.port}"]
        assert proxy.targets == expected


def test_bad_proxy_options() -> None:
    with pytest.raises(tether.InvalidProxy, match="unsupported proxy scheme 'ftp'"):
        connect("ws://127.0.0.1:1/", proxy="ftp://127.0.0.1:1")
    with pytest.raises(TypeError, match="proxy must be"):
        connect("ws://127.0.0.1:1/", proxy=8080)  # type: ignore[arg-type]
    with socket.socket() as sock, pytest.raises(ValueError, match="sock="):
        connect("ws://127.0.0.1:1/", proxy="http://127.0.0.1:1", sock=sock)
    with pytest.raises(ValueError, match="max_redirects"):
        connect("ws://127.0.0.1:1/", max_redirects=-1)


# ----------------------------------------------------------------------------- Ctrl-C

CTRL_C_CLIENT_SCRIPT = textwrap.dedent(
    """
    import sys
    from tether.sync import connect

    ws = connect(sys.argv[1])
    print("ready", flush=True)
    ws.recv()  # blocks: the server never sends anything
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_ends_a_script_blocked_in_recv() -> None:
    def handler(ws: tether.sync.ServerConnection) -> None:
        for _ in ws:
            pass

    with sync_server(handler) as server:
        proc = subprocess.Popen(
            [sys.executable, "-c", CTRL_C_CLIENT_SCRIPT, uri(server)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert proc.stdout is not None and proc.stderr is not None
            assert proc.stdout.readline() == "ready\n"
            start = time.monotonic()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(TIMEOUT) != 0
            assert time.monotonic() - start < 2
            assert "KeyboardInterrupt" in proc.stderr.read()
        finally:
            proc.kill()
            proc.wait(TIMEOUT)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
