"""tether.connect / tether.unix_connect over real loopback sockets."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import logging
import re
import socket
import ssl
import sys
import uuid
from collections.abc import Callable, Iterator
from http import HTTPStatus

import pytest

import tether
from tether.asyncio.client import _retryable

from ..test_proxy import Certificate, ProxyServer, clear_proxy_environment, make_certificate
from .conftest import (
    TIMEOUT,
    RawServer,
    Run,
    echo,
    echo_server,
    read_http_head,
    uri,
    ws_pair,
)

# --------------------------------------------------------------- connect, the forms


def test_connect_is_awaitable(run_any: Run) -> None:
    async def main() -> None:
        async with echo_server() as server:
            ws = await tether.connect(uri(server))
            states = [ws.state]
            try:
                assert isinstance(ws, tether.ClientConnection)
                await ws.send("hello")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hello"
            finally:
                await asyncio.wait_for(ws.close(), TIMEOUT)
            states.append(ws.state)
            assert states == [tether.State.OPEN, tether.State.CLOSED]
            assert ws.close_code == 1000

    run_any(main())


def test_connect_is_async_context_manager(run_any: Run) -> None:
    async def main() -> None:
        async with echo_server() as server:
            async with tether.connect(uri(server)) as ws:
                assert isinstance(ws, tether.ClientConnection)
                await ws.send(b"hello")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"hello"
            assert ws.state is tether.State.CLOSED
            assert ws.close_code == 1000

    run_any(main())


def test_connect_context_manager_closes_on_error(run: Run) -> None:
    class Oops(Exception):
        pass

    async def main() -> None:
        async with echo_server() as server:
            with pytest.raises(Oops):
                async with tether.connect(uri(server)) as ws:
                    raise Oops
            assert ws.state is tether.State.CLOSED

    run(main())


def test_reconnecting_iterator(run: Run) -> None:
    """async for ws in connect(...): retries a 503, hands a new connection after a drop."""
    attempts: list[str] = []

    def flaky(
        connection: tether.ServerConnection, request: tether.Request
    ) -> tether.Response | None:
        attempts.append(request.path)
        return connection.respond(503, "busy\n") if len(attempts) == 1 else None

    async def handler(ws: tether.ServerConnection) -> None:
        if len(attempts) == 2:
            await ws.send("first")
            await ws.close(1011, "crash")
        else:
            await ws.send("second")
            await ws.wait_closed()

    async def main() -> None:
        got: list[str | bytes] = []
        connections = 0
        async with tether.serve(handler, "127.0.0.1", 0, process_request=flaky) as server:
            async for ws in tether.connect(uri(server)):
                connections += 1
                try:
                    async for message in ws:
                        got.append(message)
                        if message == "second":
                            break
                except tether.ConnectionClosedError:
                    continue
                await ws.close()
                break
        assert got == ["first", "second"]
        assert connections == 2
        assert len(attempts) == 3

    run(main())


# ------------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    "bad",
    [
        "http://localhost/",
        "localhost:8765",
        "ws://",
        "ws:///path",
        "ws://localhost:port/",
        "ws://localhost:99999/",
        "ws://localhost/#fragment",
        "wss://[::1/",
    ],
)
def test_bad_uri_raises_invalid_uri(run: Run, bad: str) -> None:
    async def main() -> None:
        with pytest.raises(tether.InvalidURI) as info:
            await tether.connect(bad)
        assert isinstance(info.value, tether.TetherError)
        assert bad in str(info.value)

    run(main())


def test_open_timeout_against_a_silent_server(run_any: Run) -> None:
    """A server that accepts TCP but never answers: TimeoutError after open_timeout."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with RawServer(handshake=False) as raw:
            start = loop.time()
            with pytest.raises(TimeoutError):
                await tether.connect(f"ws://127.0.0.1:{raw.port}/", open_timeout=0.2)
            elapsed = loop.time() - start
            assert 0.15 < elapsed < 3
            # The client did not leave the TCP connection open.
            peer = await raw.next_peer()
            first, _ = await read_http_head(peer.reader)
            assert first == "GET / HTTP/1.1"
            assert await peer.read_eof() == b""

    run_any(main())


@pytest.mark.parametrize("how", ["cancel", "wait_for"])
def test_cancelled_open(run_any: Run, how: str) -> None:
    async def main() -> None:
        async with RawServer(handshake=False) as raw:
            opening = asyncio.ensure_future(
                asyncio.wait_for(tether.connect(f"ws://127.0.0.1:{raw.port}/"), 0.2)
                if how == "wait_for"
                else tether.connect(f"ws://127.0.0.1:{raw.port}/")
            )
            peer = await raw.next_peer()
            await read_http_head(peer.reader)
            if how == "cancel":
                opening.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await opening
            else:
                with pytest.raises(asyncio.TimeoutError):
                    await opening
            assert await peer.read_eof() == b""

    run_any(main())


def test_server_closes_during_handshake(run: Run) -> None:
    async def main() -> None:
        async with RawServer(handshake=False) as raw:
            opening = asyncio.ensure_future(tether.connect(f"ws://127.0.0.1:{raw.port}/"))
            peer = await raw.next_peer()
            await read_http_head(peer.reader)
            await peer.close()
            with pytest.raises(tether.InvalidHandshake):
                await asyncio.wait_for(opening, TIMEOUT)

    run(main())


def test_wrong_accept_key_raises_invalid_header(run: Run) -> None:
    async def main() -> None:
        async with RawServer(accept="d3JvbmcgYWNjZXB0IGtleSE=") as raw:
            with pytest.raises(tether.InvalidHeader):
                await asyncio.wait_for(tether.connect(f"ws://127.0.0.1:{raw.port}/"), TIMEOUT)

    run(main())


def test_subprotocol_not_offered_raises_negotiation_error(run: Run) -> None:
    async def main() -> None:
        async with RawServer(subprotocol="unasked") as raw:
            with pytest.raises(tether.NegotiationError):
                await asyncio.wait_for(
                    tether.connect(f"ws://127.0.0.1:{raw.port}/", subprotocols=["chat"]), TIMEOUT
                )

    run(main())


def test_connection_refused(run: Run) -> None:
    async def main() -> None:
        with socket_bound_not_listening() as port, pytest.raises(OSError):
            await asyncio.wait_for(tether.connect(f"ws://127.0.0.1:{port}/"), TIMEOUT)

    run(main())


@contextlib.contextmanager
def socket_bound_not_listening() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.parametrize(
    "name",
    [
        "ConnectionClosed",
        "ConnectionClosedOK",
        "ConnectionClosedError",
        "InvalidURI",
        "InvalidHandshake",
        "InvalidStatus",
        "InvalidHeader",
        "InvalidOrigin",
        "NegotiationError",
        "ProtocolError",
        "PayloadTooBig",
        "InvalidProxy",
    ],
)
def test_errors_derive_from_tether_error(name: str) -> None:
    assert issubclass(getattr(tether, name), tether.TetherError)


def test_error_tree() -> None:
    assert issubclass(tether.ConnectionClosedOK, tether.ConnectionClosed)
    assert issubclass(tether.ConnectionClosedError, tether.ConnectionClosed)
    for name in ("InvalidStatus", "InvalidHeader", "InvalidOrigin", "NegotiationError"):
        assert issubclass(getattr(tether, name), tether.InvalidHandshake)
    assert issubclass(tether.PayloadTooBig, tether.ProtocolError)


# --------------------------------------------------------------- what goes on the wire


def test_request_and_response(run: Run) -> None:
    async def main() -> None:
        async with ws_pair() as (server_ws, client_ws):
            port = client_ws.remote_address[1]
            assert client_ws.request is not None and server_ws.request is not None
            assert client_ws.request.path == "/"
            assert server_ws.request.headers["Host"] == f"127.0.0.1:{port}"
            assert server_ws.request.headers["Upgrade"].lower() == "websocket"
            assert client_ws.response is not None and server_ws.response is not None
            assert client_ws.response.status == 101
            assert "Sec-WebSocket-Accept" in client_ws.response.headers
            assert (
                client_ws.response.headers["Sec-WebSocket-Accept"]
                == (server_ws.response.headers["Sec-WebSocket-Accept"])
            )
            assert isinstance(client_ws.id, uuid.UUID)

    run(main())


def test_client_options_reach_the_server(run: Run) -> None:
    seen: list[tether.Request] = []

    def record(
        connection: tether.ServerConnection, request: tether.Request
    ) -> tether.Response | None:
        seen.append(request)
        return None

    async def main() -> None:
        async with (
            echo_server(process_request=record) as server,
            tether.connect(
                uri(server, "/room/42?user=ann&x=%20y"),
                origin="https://app.example",
                additional_headers={"X-Token": "t0k3n"},
                user_agent_header="test-agent/1.0",
            ) as ws,
        ):
            assert ws.request is not None
            assert ws.request.path == "/room/42?user=ann&x=%20y"
        [request] = seen
        assert request.path == "/room/42?user=ann&x=%20y"
        assert request.headers["Origin"] == "https://app.example"
        assert request.headers["X-Token"] == "t0k3n"
        assert request.headers["User-Agent"] == "test-agent/1.0"

    run(main())


@pytest.mark.parametrize(
    ("server_compression", "client_compression", "negotiated"),
    [("deflate", "deflate", True), (None, "deflate", False), ("deflate", None, False)],
)
def test_compression_negotiation(
    run: Run, server_compression: str | None, client_compression: str | None, negotiated: bool
) -> None:
    async def main() -> None:
        async with ws_pair(
            server_options={"compression": server_compression},
            client_options={"compression": client_compression},
        ) as (server_ws, client_ws):
            assert client_ws.response is not None
            extensions = client_ws.response.headers.get("Sec-WebSocket-Extensions") or ""
            assert ("permessage-deflate" in extensions) is negotiated
            message = "compress me " * 10_000
            await client_ws.send(message)
            assert await asyncio.wait_for(server_ws.recv(), TIMEOUT) == message
            await server_ws.send(message)
            assert await asyncio.wait_for(client_ws.recv(), TIMEOUT) == message

    run(main())


def test_client_max_size_closes_with_1009(run: Run) -> None:
    async def handler(ws: tether.ServerConnection) -> None:
        with contextlib.suppress(tether.ConnectionClosed):
            await ws.send(b"x" * (2**20 + 1))
            await ws.wait_closed()

    async def main() -> None:
        async with (
            tether.serve(handler, "127.0.0.1", 0, compression=None) as server,
            tether.connect(uri(server), max_size=2**20, compression=None) as ws,
        ):
            with pytest.raises(tether.ConnectionClosedError) as info:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            # This side failed the connection (RFC 6455 7.1.7): the code it received
            # may be the echo (1009) or none (1006); the error must say why.
            assert info.value.code in (1006, 1009)
            assert isinstance(info.value.__cause__, tether.PayloadTooBig) or (
                "max_size" in str(info.value)
            ), str(info.value)

    run(main())


# ----------------------------------------------------------- redirects and proxies

def test_follows_redirects(run: Run) -> None:
    """API.md: the client follows HTTP redirects (at most 10)."""

    def redirect(
        connection: tether.ServerConnection, request: tether.Request
    ) -> tether.Response | None:
        if request.path == "/old":
            response = connection.respond(302, "moved\n")
            port = connection.local_address[1]
            response.headers["Location"] = f"ws://127.0.0.1:{port}/new"
            return response
        return None

    async def main() -> None:
        async with (
            echo_server(process_request=redirect) as server,
            tether.connect(uri(server, "/old")) as ws,
        ):
            assert ws.request is not None and ws.request.path == "/new"
            await ws.send("redirected")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "redirected"

    run(main())


def test_redirect_loop_is_bounded(run: Run) -> None:
    requests: list[str] = []

    def loop_forever(
        connection: tether.ServerConnection, request: tether.Request
    ) -> tether.Response:
        requests.append(request.path)
        response = connection.respond(302)
        response.headers["Location"] = f"ws://127.0.0.1:{connection.local_address[1]}/again"
        return response

    async def main() -> None:
        async with echo_server(process_request=loop_forever) as server:
            with pytest.raises(tether.TetherError):
                await asyncio.wait_for(tether.connect(uri(server)), TIMEOUT)
        # The first request and at most 10 redirects, and some were followed.
        assert 2 <= len(requests) <= 11

    run(main())


class ConnectProxy:
    """A minimal HTTP CONNECT proxy on 127.0.0.1 that records the targets asked for."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        first, _ = await read_http_head(reader)
        method, target, _version = first.split()
        assert method == "CONNECT"
        self.targets.append(target)
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        self._writers.append(up_writer)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for task in (
            asyncio.ensure_future(self._pipe(reader, up_writer)),
            asyncio.ensure_future(self._pipe(up_reader, writer)),
        ):
            self._tasks.add(task)

    async def __aenter__(self) -> ConnectProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=TIMEOUT)
        await asyncio.wait_for(self._server.wait_closed(), TIMEOUT)


def test_http_proxy(run: Run) -> None:
    async def main() -> None:
        async with echo_server() as server, ConnectProxy() as proxy:
            async with tether.connect(uri(server), proxy=proxy.url) as ws:
                await ws.send("through the proxy")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "through the proxy"
            assert proxy.targets == [f"127.0.0.1:{server.port}"]

    run(main())


def test_proxy_from_environment(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with echo_server() as server, ConnectProxy() as proxy:
            for name in ("no_proxy", "NO_PROXY"):
                monkeypatch.delenv(name, raising=False)
            monkeypatch.setenv("http_proxy", proxy.url)
            monkeypatch.setenv("https_proxy", proxy.url)
            async with tether.connect(uri(server)) as ws:
                await ws.send("via env")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "via env"
            assert proxy.targets == [f"127.0.0.1:{server.port}"]

    run(main())


def test_unsupported_proxy_raises_invalid_proxy(run: Run) -> None:
    async def main() -> None:
        async with echo_server() as server:
            with pytest.raises(tether.InvalidProxy):
                await asyncio.wait_for(
                    tether.connect(uri(server), proxy="ftp://127.0.0.1:1"), TIMEOUT
                )

    run(main())


# --------------------------------------------------------------- more on redirects


def redirecting(
    routes: dict[str, str], status: int = 302, seen: list[tuple[str, tether.Request]] | None = None,
    name: str = "",
) -> Callable[[tether.ServerConnection, tether.Request], tether.Response | None]:
    """``process_request`` answering each path in ``routes`` with a redirect there
    (``{port}`` stands for the server's port); it records the requests in ``seen``."""

    def process_request(
        connection: tether.ServerConnection, request: tether.Request
    ) -> tether.Response | None:
        if seen is not None:
            seen.append((name, request))
        target = routes.get(request.path)
        if target is None:
            return None
        response = connection.respond(status, f"moved to {target}\n")
        response.headers["Location"] = target.format(port=connection.local_address[1])
        return response

    return process_request


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_statuses_and_relative_location(
    run: Run, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether.client")

    async def main() -> None:
        process_request = redirecting({"/a/old": "new?x=1"}, status)
        async with echo_server(process_request=process_request) as server:
            old, new = uri(server, "/a/old"), uri(server, "/a/new?x=1")
            async with tether.connect(old) as ws:
                assert ws.request is not None and ws.request.path == "/a/new?x=1"
                await ws.send("here")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "here"
        [record] = [r for r in caplog.records if "redirected" in r.getMessage()]
        assert record.name == "tether.client" and record.levelno == logging.INFO
        assert record.getMessage() == (
            f"{old} redirected to {new} (HTTP {status} {HTTPStatus(status).phrase})"
        )

    run(main())


def test_redirect_to_another_server_with_an_http_url(run_any: Run) -> None:
    """An http:// Location means ws://; credentials in headers stay with the first host."""
    seen: list[tuple[str, tether.Request]] = []

    async def main() -> None:
        async with echo_server(process_request=redirecting({}, seen=seen, name="B")) as b:
            port = b.port
            to_b = {"/": f"http://localhost:{port}/b"}
            async with (
                echo_server(process_request=redirecting(to_b, seen=seen, name="A")) as a,
                tether.connect(
                    uri(a), additional_headers={"Authorization": "Bearer t0k3n", "X-Id": "7"}
                ) as ws,
            ):
                await ws.send("to B")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "to B"
        assert [(name, request.path) for name, request in seen] == [("A", "/"), ("B", "/b")]
        (_, first), (_, second) = seen
        assert first.headers["Authorization"] == "Bearer t0k3n"
        assert "Authorization" not in second.headers
        assert second.headers["X-Id"] == "7"
        assert second.headers["Host"] == f"localhost:{port}"

    run_any(main())


def test_redirect_loop_error_says_so(run: Run) -> None:
    async def main() -> None:
        process_request = redirecting({"/a": "/b", "/b": "/a"})
        async with echo_server(process_request=process_request) as server:
            with pytest.raises(tether.InvalidStatus, match="redirect loop") as info:
                await asyncio.wait_for(tether.connect(uri(server, "/a")), TIMEOUT)
        assert info.value.response.status == 302
        assert not _retryable(info.value)

    run(main())


def test_too_many_redirects(run: Run) -> None:
    seen: list[tuple[str, tether.Request]] = []

    async def main() -> None:
        routes = {f"/{i}": f"/{i + 1}" for i in range(20)}
        async with echo_server(process_request=redirecting(routes, seen=seen)) as server:
            with pytest.raises(tether.InvalidStatus, match=r"too many redirects: more than "
                               r"max_redirects=3 .*; fix the redirects or raise max_redirects"):
                await asyncio.wait_for(
                    tether.connect(uri(server, "/0"), max_redirects=3), TIMEOUT
                )
        assert [request.path for _, request in seen] == ["/0", "/1", "/2", "/3"]

    run(main())


def test_default_limit_is_ten_redirects(run: Run) -> None:
    seen: list[tuple[str, tether.Request]] = []

    async def main() -> None:
        routes = {f"/{i}": f"/{i + 1}" for i in range(10)}
        async with (
            echo_server(process_request=redirecting(routes, seen=seen)) as server,
            tether.connect(uri(server, "/0")) as ws,
        ):
            assert ws.request is not None and ws.request.path == "/10"
        assert len(seen) == 11

    run(main())


def test_max_redirects_zero_raises_the_redirect(run: Run) -> None:
    async def main() -> None:
        async with echo_server(process_request=redirecting({"/": "/new"})) as server:
            with pytest.raises(tether.InvalidStatus) as info:
                await asyncio.wait_for(tether.connect(uri(server), max_redirects=0), TIMEOUT)
        assert info.value.response.status == 302
        assert info.value.response.headers["Location"] == "/new"
        assert info.value.response.body == b"moved to /new\n"

    run(main())


def test_redirect_without_location_is_an_invalid_status(run: Run) -> None:
    def no_location(
        connection: tether.ServerConnection, request: tether.Request
    ) -> tether.Response:
        return connection.respond(302)

    async def main() -> None:
        async with echo_server(process_request=no_location) as server:
            with pytest.raises(tether.InvalidStatus, match="HTTP 302"):
                await asyncio.wait_for(tether.connect(uri(server)), TIMEOUT)

    run(main())


def test_redirect_from_wss_to_ws_is_refused(run: Run, certificate: Certificate) -> None:
    seen: list[tuple[str, tether.Request]] = []

    async def main() -> None:
        async with echo_server(process_request=redirecting({}, seen=seen)) as plain:
            to_plain = {"/": f"ws://127.0.0.1:{plain.port}/"}
            async with echo_server(
                process_request=redirecting(to_plain), ssl=certificate.server_context()
            ) as secure:
                with pytest.raises(tether.InvalidStatus,
                                   match="wss:// may not redirect to ws://"):
                    await asyncio.wait_for(
                        tether.connect(f"wss://127.0.0.1:{secure.port}/",
                                       ssl=certificate.client_context()),
                        TIMEOUT,
                    )
        assert seen == []

    run(main())


def test_redirect_from_ws_to_wss(run: Run, certificate: Certificate) -> None:
    async def main() -> None:
        async with echo_server(ssl=certificate.server_context()) as secure:
            to_secure = {"/": f"wss://127.0.0.1:{secure.port}/s"}
            async with echo_server(process_request=redirecting(to_secure)) as plain:
                # The wss:// hop uses the system's CAs, which don't know the test's
                # self-signed certificate: proof that it was tried with TLS.
                with pytest.raises(ssl.SSLCertVerificationError):
                    await asyncio.wait_for(tether.connect(uri(plain)), TIMEOUT)

    run(main())


def test_wss_large_messages(run_any: Run, certificate: Certificate) -> None:
    """Over TLS, decrypted bytes reach the connection's read buffer in pieces of the TLS
    layer's choosing; messages of every size still arrive whole and intact."""

    async def main() -> None:
        options = {"compression": None, "max_size": None}
        async with (
            echo_server(ssl=certificate.server_context(), **options) as server,
            tether.connect(f"wss://localhost:{server.port}/",
                           ssl=certificate.client_context(), **options) as ws,
        ):
            for size in (16_384, 70_000, 1_000_000, 5, 300_000, 20_000):
                message = uuid.uuid4().bytes * (size // 16) + bytes(size % 16)
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == message
            text = "wss ✓ " * 20_000
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == text

    run_any(main())


def test_redirect_with_sock_cannot_be_followed(run: Run) -> None:
    async def main() -> None:
        async with echo_server(process_request=redirecting({"/": "/new"})) as server:
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
            with pytest.raises(tether.InvalidStatus, match="sock="):
                await asyncio.wait_for(tether.connect(uri(server), sock=sock), TIMEOUT)

    run(main())


def test_unix_connect_follows_a_redirect_on_the_same_host(run: Run, unix_path: str) -> None:
    async def main() -> None:
        process_request = redirecting({"/old": "/new", "/away": "ws://elsewhere/"})
        async with tether.unix_serve(echo, unix_path, process_request=process_request):
            async with tether.unix_connect(unix_path, "ws://localhost/old") as ws:
                assert ws.request is not None and ws.request.path == "/new"
            with pytest.raises(tether.InvalidStatus, match="same host only"):
                await asyncio.wait_for(
                    tether.unix_connect(unix_path, "ws://localhost/away"), TIMEOUT
                )
        with pytest.raises(ValueError, match="proxy"):
            tether.unix_connect(unix_path, proxy="http://127.0.0.1:1")

    run(main())


# ---------------------------------------------------------------- more on proxies


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("proxy-tls"))


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No proxy variable in the environment; the monkeypatch to set some."""
    clear_proxy_environment(monkeypatch)
    return monkeypatch


async def roundtrip(ws: tether.ClientConnection, message: str = "through") -> None:
    await ws.send(message)
    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == message


def test_http_proxy_with_credentials(run: Run) -> None:
    async def main() -> None:
        with ProxyServer(auth=("al@ice", "s3:cret")) as proxy:
            proxy_url = f"http://al%40ice:s3%3Acret@127.0.0.1:{proxy.port}"
            async with echo_server() as server, tether.connect(uri(server), proxy=proxy_url) as ws:
                await roundtrip(ws)
                port = server.port
            [request] = proxy.requests
        assert request.credentials == "Basic " + base64.b64encode(b"al@ice:s3:cret").decode()
        assert request.target == f"127.0.0.1:{port}"

    run(main())


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        (None, "the proxy needs credentials"),
        (("alice", "wrong"), "check the user name and password"),
    ],
)
def test_http_proxy_authentication_required(
    run: Run, credentials: tuple[str, str] | None, message: str
) -> None:
    async def main() -> None:
        with ProxyServer(auth=("alice", "right")) as proxy:
            url = proxy.url(credentials=credentials) if credentials else (
                f"http://127.0.0.1:{proxy.port}"
            )
            with pytest.raises(tether.InvalidProxy) as info:
                await asyncio.wait_for(tether.connect("ws://127.0.0.1:1/", proxy=url), TIMEOUT)
        text = str(info.value)
        assert (
            f"proxy http://127.0.0.1:{proxy.port} refused CONNECT 127.0.0.1:1: "
            "HTTP 407 Proxy Authentication Required"
        ) in text
        assert message in text and "wrong" not in text
        assert isinstance(info.value.__cause__, tether.InvalidStatus)
        assert info.value.__cause__.response.status == 407
        assert info.value.__cause__.response.headers["Proxy-Authenticate"] == 'Basic realm="test"'
        assert not _retryable(info.value)

    run(main())


@pytest.mark.parametrize(("status", "retryable"), [(403, False), (502, True), (503, True)])
def test_proxy_refusing_connect(run: Run, status: int, retryable: bool) -> None:
    async def main() -> None:
        with (
            ProxyServer(refuse=status) as proxy,
            pytest.raises(tether.InvalidProxy, match=f"HTTP {status}") as info,
        ):
            await asyncio.wait_for(
                tether.connect("ws://127.0.0.1:1/", proxy=proxy.url()), TIMEOUT
            )
        assert _retryable(info.value) is retryable

    run(main())


def test_proxy_name_resolution_is_the_proxys(run: Run) -> None:
    """Through an HTTP proxy, the server's name is sent as is: the proxy resolves it."""

    async def main() -> None:
        with ProxyServer(hosts={"ws.proxy.test": "127.0.0.1"}) as proxy:
            async with echo_server(process_request=redirecting({}, seen=seen)) as server:
                port = server.port
                async with tether.connect(f"ws://ws.proxy.test:{port}/", proxy=proxy.url()) as ws:
                    await roundtrip(ws)
            assert proxy.targets == [f"ws.proxy.test:{port}"]
        [(_, request)] = seen
        assert request.headers["Host"] == f"ws.proxy.test:{port}"

    seen: list[tuple[str, tether.Request]] = []
    run(main())


def test_unreachable_proxy_raises_oserror(run: Run) -> None:
    async def main() -> None:
        with socket_bound_not_listening() as port:
            for scheme in ("http", "socks5"):
                with pytest.raises(OSError):
                    await asyncio.wait_for(
                        tether.connect("ws://127.0.0.1:1/", proxy=f"{scheme}://127.0.0.1:{port}"),
                        TIMEOUT,
                    )

    run(main())


@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_open_timeout_covers_the_proxy_handshake(run_any: Run, scheme: str) -> None:
    """A proxy that accepts TCP and never answers: TimeoutError after open_timeout."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with RawServer(handshake=False) as raw:
            start = loop.time()
            with pytest.raises(TimeoutError):
                await tether.connect(
                    "ws://127.0.0.1:1/", proxy=f"{scheme}://127.0.0.1:{raw.port}",
                    open_timeout=0.2,
                )
            assert 0.15 < loop.time() - start < 3
            # The client asked the proxy, then closed the connection to it.
            peer = await raw.next_peer()
            sent = await peer.read_eof()
            assert sent.startswith(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n" if scheme == "http"
                                   else b"\x05")

    run_any(main())


def test_proxy_closing_without_an_answer(run: Run) -> None:
    async def main() -> None:
        async with RawServer(handshake=False) as raw:
            opening = asyncio.ensure_future(
                tether.connect("ws://127.0.0.1:1/", proxy=f"http://127.0.0.1:{raw.port}")
            )
            peer = await raw.next_peer()
            first, headers = await read_http_head(peer.reader)
            assert first == "CONNECT 127.0.0.1:1 HTTP/1.1"
            assert headers["host"] == "127.0.0.1:1"
            await peer.close()
            with pytest.raises(tether.InvalidProxy, match=r"closed the connection without "
                               r"answering CONNECT 127\.0\.0\.1:1"):
                await asyncio.wait_for(opening, TIMEOUT)

    run(main())


def test_proxy_sending_garbage(run: Run) -> None:
    async def main() -> None:
        async with RawServer(handshake=False) as raw:
            opening = asyncio.ensure_future(
                tether.connect("ws://127.0.0.1:1/", proxy=f"http://127.0.0.1:{raw.port}")
            )
            peer = await raw.next_peer()
            await read_http_head(peer.reader)
            peer.writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            with pytest.raises(tether.InvalidProxy, match="invalid response from proxy"):
                await asyncio.wait_for(opening, TIMEOUT)

    run(main())


@pytest.mark.parametrize("target", ["ws", "wss"])
def test_https_proxy(run_any: Run, certificate: Certificate, target: str) -> None:
    """TLS to the proxy; for wss://, TLS to the server inside it."""

    async def main() -> None:
        secure = target == "wss"
        loop = asyncio.get_running_loop()
        if secure and sys.version_info < (3, 11) and not type(loop).__module__.startswith(
            "uvloop"
        ):
            # asyncio can't put TLS in TLS before 3.11: a clear error instead.
            async with echo_server(ssl=certificate.server_context()) as server:
                with (
                    ProxyServer(tls=certificate.server_context()) as proxy,
                    pytest.raises(tether.InvalidProxy, match=r"use Python 3\.11 or later, uvloop"),
                ):
                    await asyncio.wait_for(
                        tether.connect(f"wss://127.0.0.1:{server.port}/", proxy=proxy.url(),
                                       proxy_ssl=certificate.client_context()),
                        TIMEOUT,
                    )
            return
        with ProxyServer(tls=certificate.server_context()) as proxy:
            async with echo_server(
                ssl=certificate.server_context() if secure else None
            ) as server:
                port = server.port
                async with tether.connect(
                    f"{target}://127.0.0.1:{port}/", proxy=proxy.url(),
                    proxy_ssl=certificate.client_context(),
                    ssl=certificate.client_context() if secure else None,
                ) as ws:
                    assert proxy.url().startswith("https://")
                    await roundtrip(ws, "x" * 100_000)
                    assert ws.transport is not None
                    assert ws.transport.get_extra_info("ssl_object") is not None
                assert ws.close_code == 1000
            assert proxy.targets == [f"127.0.0.1:{port}"]

    run_any(main())


def test_https_proxy_certificate_is_verified(run: Run, certificate: Certificate) -> None:
    async def main() -> None:
        with ProxyServer(tls=certificate.server_context()) as proxy:
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.wait_for(
                    tether.connect("ws://127.0.0.1:1/", proxy=proxy.url()), TIMEOUT
                )
            assert proxy.requests == []

    run(main())


def test_wss_through_http_proxy(run: Run, certificate: Certificate) -> None:
    async def main() -> None:
        with ProxyServer() as proxy:
            async with echo_server(ssl=certificate.server_context()) as server:
                port = server.port
                async with tether.connect(f"wss://localhost:{port}/", proxy=proxy.url(),
                                          ssl=certificate.client_context()) as ws:
                    await roundtrip(ws)
                    assert ws.transport is not None
                    assert ws.transport.get_extra_info("ssl_object") is not None
            assert proxy.targets == [f"localhost:{port}"]

    run(main())


@pytest.mark.parametrize("auth", [None, ("user", "pa ss")])
def test_socks5_proxy(run_any: Run, auth: tuple[str, str] | None) -> None:
    async def main() -> None:
        with ProxyServer("socks", auth=auth) as proxy:
            async with echo_server() as server, tether.connect(
                uri(server), proxy=proxy.url()
            ) as ws:
                await roundtrip(ws)
                port = server.port
            [request] = proxy.requests
        assert request.protocol == "socks5"
        assert (request.host, request.port) == ("127.0.0.1", port)
        assert request.address_type == "ipv4"
        assert request.credentials == (auth[0] if auth else None)

    run_any(main())


def test_socks5_wrong_password(run: Run) -> None:
    async def main() -> None:
        with ProxyServer("socks", auth=("user", "right")) as proxy:
            message = (f"SOCKS proxy socks5://127.0.0.1:{proxy.port} refused the connection "
                       "to 127.0.0.1:1")
            with pytest.raises(tether.InvalidProxy, match=re.escape(message)) as info:
                await asyncio.wait_for(
                    tether.connect("ws://127.0.0.1:1/",
                                   proxy=proxy.url(credentials=("user", "wrong"))),
                    TIMEOUT,
                )
        assert "wrong" not in str(info.value)
        assert not _retryable(info.value)

    run(main())


def test_socks5_refusal_is_retryable(run: Run) -> None:
    async def main() -> None:
        with (
            ProxyServer("socks", refuse=5) as proxy,  # 5: connection refused
            pytest.raises(tether.InvalidProxy, match="refused") as info,
        ):
            await asyncio.wait_for(
                tether.connect("ws://127.0.0.1:1/", proxy=proxy.url()), TIMEOUT
            )
        assert _retryable(info.value)

    run(main())


@pytest.mark.parametrize(
    ("scheme", "protocol", "address_type"),
    [
        ("socks5h", "socks5", "domain"),
        ("socks4a", "socks4", "domain"),
    ],
)
def test_socks_remote_name_resolution(
    run: Run, scheme: str, protocol: str, address_type: str
) -> None:
    """socks5h:// and socks4a:// send the name: only the proxy knows ws.proxy.test."""

    async def main() -> None:
        with ProxyServer("socks", hosts={"ws.proxy.test": "127.0.0.1"}) as proxy:
            async with echo_server() as server:
                port = server.port
                async with tether.connect(f"ws://ws.proxy.test:{port}/",
                                          proxy=proxy.url(scheme)) as ws:
                    await roundtrip(ws)
            [request] = proxy.requests
        assert (request.protocol, request.address_type) == (protocol, address_type)
        assert request.target == f"ws.proxy.test:{port}"

    run(main())


@pytest.mark.parametrize(("scheme", "protocol"), [("socks5", "socks5"), ("socks4", "socks4")])
def test_socks_local_name_resolution(run: Run, scheme: str, protocol: str) -> None:
    """socks5:// and socks4:// resolve the name here and send an address."""

    async def main() -> None:
        with ProxyServer("socks") as proxy:
            async with echo_server() as server, tether.connect(
                f"ws://localhost:{server.port}/", proxy=proxy.url(scheme)
            ) as ws:
                await roundtrip(ws)
            [request] = proxy.requests
        assert request.protocol == protocol
        assert request.address_type in ("ipv4", "ipv6")
        assert ipaddress.ip_address(request.host).is_loopback

    run(main())


def test_socks_without_python_socks(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "python_socks", None)

    async def main() -> None:
        with pytest.raises(tether.InvalidProxy, match=r"pip install 'tether\[socks\]'"):
            await asyncio.wait_for(
                tether.connect("ws://127.0.0.1:1/", proxy="socks5://127.0.0.1:1"), TIMEOUT
            )

    run(main())


def test_https_proxy_from_environment_for_wss(
    run: Run, certificate: Certificate, no_proxy_env: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        with ProxyServer() as https_proxy, ProxyServer() as http_proxy:
            no_proxy_env.setenv("HTTPS_PROXY", https_proxy.url())
            no_proxy_env.setenv("http_proxy", http_proxy.url())
            async with echo_server(ssl=certificate.server_context()) as server:
                port = server.port
                async with tether.connect(f"wss://127.0.0.1:{port}/",
                                          ssl=certificate.client_context()) as ws:
                    await roundtrip(ws)
            assert https_proxy.targets == [f"127.0.0.1:{port}"]
            assert http_proxy.targets == []

    run(main())


def test_all_proxy_from_environment(run: Run, no_proxy_env: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        with ProxyServer("socks") as proxy:
            no_proxy_env.setenv("ALL_PROXY", proxy.url("socks5h"))
            async with echo_server() as server, tether.connect(uri(server)) as ws:
                await roundtrip(ws)
                port = server.port
            assert proxy.targets == [f"127.0.0.1:{port}"]

    run(main())


@pytest.mark.parametrize(
    "no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "127.0.0.0/8", "*", "example.com, 127.0.0.1"]
)
def test_no_proxy_bypasses_the_environment_proxy(
    run: Run, no_proxy_env: pytest.MonkeyPatch, no_proxy: str
) -> None:
    async def main() -> None:
        with ProxyServer() as proxy:
            no_proxy_env.setenv("http_proxy", proxy.url())
            no_proxy_env.setenv("no_proxy", no_proxy)
            async with echo_server() as server, tether.connect(uri(server)) as ws:
                await roundtrip(ws)
            assert proxy.requests == []

    run(main())


def test_no_proxy_not_matching(run: Run, no_proxy_env: pytest.MonkeyPatch) -> None:
    """curl's rule: loopback is proxied too unless no_proxy names it."""

    async def main() -> None:
        with ProxyServer() as proxy:
            no_proxy_env.setenv("http_proxy", proxy.url())
            no_proxy_env.setenv("NO_PROXY", "localhost,example.com")
            async with echo_server() as server, tether.connect(uri(server)) as ws:
                await roundtrip(ws)
                port = server.port
            assert proxy.targets == [f"127.0.0.1:{port}"]

    run(main())


def test_proxy_none_ignores_the_environment(run: Run, no_proxy_env: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        with ProxyServer() as proxy:
            no_proxy_env.setenv("http_proxy", proxy.url())
            no_proxy_env.setenv("all_proxy", proxy.url())
            async with echo_server() as server, tether.connect(uri(server), proxy=None) as ws:
                await roundtrip(ws)
            assert proxy.requests == []

    run(main())


def test_bad_environment_proxy(run: Run, no_proxy_env: pytest.MonkeyPatch) -> None:
    no_proxy_env.setenv("http_proxy", "gopher://127.0.0.1:70")

    async def main() -> None:
        with pytest.raises(tether.InvalidProxy, match="environment variable http_proxy"):
            await asyncio.wait_for(tether.connect("ws://127.0.0.1:1/"), TIMEOUT)

    run(main())


def test_each_redirect_hop_goes_through_the_proxy(
    run: Run, no_proxy_env: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        with ProxyServer() as proxy:
            no_proxy_env.setenv("http_proxy", proxy.url())
            async with echo_server() as b:
                to_b = {"/": f"ws://localhost:{b.port}/"}
                async with (
                    echo_server(process_request=redirecting(to_b)) as a,
                    tether.connect(uri(a)) as ws,
                ):
                    await roundtrip(ws)
                    expected = [f"127.0.0.1:{a.port}", f"localhost:{b.port}"]
            assert proxy.targets == expected

    run(main())


def test_bad_proxy_options() -> None:
    with pytest.raises(tether.InvalidProxy, match="unsupported proxy scheme"):
        tether.connect("ws://127.0.0.1:1/", proxy="ftp://127.0.0.1:1")
    with pytest.raises(TypeError, match="proxy must be"):
        tether.connect("ws://127.0.0.1:1/", proxy=8080)  # type: ignore[arg-type]
    with socket.socket() as sock, pytest.raises(ValueError, match="sock="):
        tether.connect("ws://127.0.0.1:1/", proxy="http://127.0.0.1:1", sock=sock)
    with pytest.raises(ValueError, match="max_redirects"):
        tether.connect("ws://127.0.0.1:1/", max_redirects=-1)


def test_reconnecting_iterator_does_not_retry_a_proxy_refusal(run: Run) -> None:
    async def main() -> None:
        with ProxyServer(refuse=407) as proxy:
            with pytest.raises(tether.InvalidProxy, match="407"):
                async for _ws in tether.connect("ws://127.0.0.1:1/", proxy=proxy.url()):
                    pytest.fail("no connection expected")  # pragma: no cover
            assert len(proxy.requests) == 1

    run(main())


# ----------------------------------------------------------------------- unix_connect


def test_unix_connect_with_options(run: Run, unix_path: str) -> None:
    async def main() -> None:
        async with (
            tether.unix_serve(echo, unix_path, subprotocols=["chat"]),
            tether.unix_connect(unix_path, subprotocols=["chat"]) as ws,
        ):
            assert ws.subprotocol == "chat"
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hi"

    run(main())
