"""tether.connect / tether.unix_connect over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import Iterator

import pytest

import tether

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

# Redirects and proxies are issue 6 ("The client users actually need"): these tests
# describe the behaviour API.md promises and fail until it is built (strict xfail:
# they turn red as soon as they pass, so the marker is removed then).
NOT_BUILT_ISSUE_6 = pytest.mark.xfail(
    strict=True, reason="redirects and proxies are not built yet (issue 6)"
)


@NOT_BUILT_ISSUE_6
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


@NOT_BUILT_ISSUE_6
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


@NOT_BUILT_ISSUE_6
def test_http_proxy(run: Run) -> None:
    async def main() -> None:
        async with echo_server() as server, ConnectProxy() as proxy:
            async with tether.connect(uri(server), proxy=proxy.url) as ws:
                await ws.send("through the proxy")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "through the proxy"
            assert proxy.targets == [f"127.0.0.1:{server.port}"]

    run(main())


@NOT_BUILT_ISSUE_6
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


@NOT_BUILT_ISSUE_6
def test_unsupported_proxy_raises_invalid_proxy(run: Run) -> None:
    async def main() -> None:
        async with echo_server() as server:
            with pytest.raises(tether.InvalidProxy):
                await asyncio.wait_for(
                    tether.connect(uri(server), proxy="ftp://127.0.0.1:1"), TIMEOUT
                )

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
