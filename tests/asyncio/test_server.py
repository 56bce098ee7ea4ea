"""tether.serve / tether.unix_serve / Server over real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import urllib.request
from collections.abc import Sequence

import pytest

import tether

from .conftest import (
    TIMEOUT,
    RawPeer,
    Run,
    TLSFiles,
    echo,
    echo_server,
    http_get,
    uri,
)

# ------------------------------------------------------------------ serve and Server


def test_serve_is_awaitable(run_any: Run) -> None:
    async def main() -> None:
        server = await tether.serve(echo, "127.0.0.1", 0)
        port = server.port
        try:
            assert isinstance(server, tether.Server)
            assert server.port > 0
            assert len(server.sockets) >= 1
            assert all(s.family == socket.AF_INET for s in server.sockets)
            assert server.sockets[0].getsockname()[:2] == ("127.0.0.1", server.port)
            async with tether.connect(uri(server)) as ws:
                await ws.send("ping")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ping"
        finally:
            server.close()
            await asyncio.wait_for(server.wait_closed(), TIMEOUT)
        # Closed: no longer accepting connections.
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)

    run_any(main())


def test_serve_is_async_context_manager(run_any: Run) -> None:
    async def main() -> None:
        async with tether.serve(echo, "127.0.0.1", 0) as server:
            assert isinstance(server, tether.Server)
            port = server.port
            ws = await tether.connect(uri(server))
            await ws.send(b"\x00")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\x00"
        # Leaving the block closed the server and its connections (1001 going away).
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
        assert ws.close_code == 1001
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)

    run_any(main())


def test_serve_forever_returns_when_closed(run: Run) -> None:
    async def main() -> None:
        async with tether.serve(echo, "127.0.0.1", 0) as server:
            forever = asyncio.ensure_future(server.serve_forever())
            done, _ = await asyncio.wait({forever}, timeout=0.05)
            assert not done, "serve_forever() returned while the server was open"
            server.close()
            await asyncio.wait_for(forever, TIMEOUT)

    run(main())


def test_serve_passes_unknown_options_to_create_server(run: Run) -> None:
    """sock= (and backlog=) go to loop.create_server."""

    async def main() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        async with tether.serve(echo, sock=sock, backlog=8) as server:
            assert server.port == port
            async with tether.connect(f"ws://127.0.0.1:{port}/") as ws:
                await ws.send("via sock")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "via sock"

    run(main())


def test_connections_are_the_open_ones(run: Run) -> None:
    async def main() -> None:
        entered: asyncio.Queue[tether.ServerConnection] = asyncio.Queue()

        async def handler(ws: tether.ServerConnection) -> None:
            await entered.put(ws)
            await ws.wait_closed()

        async with tether.serve(handler, "127.0.0.1", 0) as server:
            assert server.connections == set()
            one = await tether.connect(uri(server))
            two = await tether.connect(uri(server))
            first = await asyncio.wait_for(entered.get(), TIMEOUT)
            second = await asyncio.wait_for(entered.get(), TIMEOUT)
            assert server.connections == {first, second}
            assert all(isinstance(c, tether.ServerConnection) for c in server.connections)
            await one.close()
            await asyncio.wait_for(first.wait_closed(), TIMEOUT)
            assert server.connections == {second}
            await two.close()
            await asyncio.wait_for(second.wait_closed(), TIMEOUT)
            assert server.connections == set()

    run(main())


def test_close_closes_every_connection_with_1001(run_any: Run) -> None:
    async def main() -> None:
        async with echo_server() as server:
            clients = [await tether.connect(uri(server)) for _ in range(3)]
            for ws in clients:  # every handler is running
                await ws.send("hi")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hi"
            server.close()
            await asyncio.wait_for(server.wait_closed(), TIMEOUT)
            assert server.connections == set()
            for ws in clients:
                # The iteration ends quietly: 1001 is a normal closure.
                assert [m async for m in ws] == []
                assert ws.close_code == 1001
                assert ws.state is tether.State.CLOSED

    run_any(main())


def test_close_without_closing_connections(run: Run) -> None:
    async def main() -> None:
        async with echo_server() as server:
            ws = await tether.connect(uri(server))
            server.close(close_connections=False)
            closed = asyncio.ensure_future(server.wait_closed())
            done, _ = await asyncio.wait({closed}, timeout=0.1)
            assert not done, "wait_closed() returned while a connection was still open"
            # The open connection keeps working...
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "still here"
            # ... and wait_closed() returns once it ends.
            await ws.close()
            await asyncio.wait_for(closed, TIMEOUT)
            assert ws.close_code == 1000

    run(main())


def test_handler_returning_closes_with_1000(run_any: Run) -> None:
    async def handler(ws: tether.ServerConnection) -> None:
        await ws.send("bye")

    async def main() -> None:
        async with (
            tether.serve(handler, "127.0.0.1", 0) as server,
            tether.connect(uri(server)) as ws,
        ):
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "bye"
            with pytest.raises(tether.ConnectionClosedOK) as info:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert info.value.code == 1000
            assert ws.close_code == 1000

    run_any(main())


def test_handler_raising_closes_with_1011_logs_and_server_keeps_serving(
    run_any: Run, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tether")

    class Boom(Exception):
        pass

    async def handler(ws: tether.ServerConnection) -> None:
        message = await ws.recv()
        if message == "boom":
            raise Boom("handler blew up")
        await ws.send(message)

    async def main() -> None:
        async with tether.serve(handler, "127.0.0.1", 0) as server:
            async with tether.connect(uri(server)) as ws:
                await ws.send("boom")
                with pytest.raises(tether.ConnectionClosedError) as info:
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
                assert info.value.code == 1011
            # The server still serves the next connection.
            async with tether.connect(uri(server)) as ws:
                await ws.send("fine")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "fine"
        failures = [
            r
            for r in caplog.records
            if r.name == "tether.server" and r.levelno >= logging.ERROR and r.exc_info
        ]
        assert len(failures) == 1
        exc_info = failures[0].exc_info
        assert exc_info is not None and isinstance(exc_info[1], Boom)
        assert "Boom: handler blew up" in caplog.text

    run_any(main())


# --------------------------------------------------------------------- open_timeout


@pytest.mark.parametrize("sent", [b"", b"GET / HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half"])
def test_open_timeout_drops_a_client_that_never_completes_the_request(
    run_any: Run, sent: bytes
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with echo_server(open_timeout=0.2) as server:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(sent)
            start = loop.time()
            peer = RawPeer(reader, writer, client=True)
            assert await peer.read_eof() == b""
            elapsed = loop.time() - start
            assert 0.15 < elapsed < 3
            await peer.close()

    run_any(main())


# ---------------------------------------------------------- process_request/response


def test_process_request_serves_plain_http_on_the_same_port(run_any: Run) -> None:
    def health(
        connection: tether.ServerConnection, request: tether.Request
    ) -> tether.Response | None:
        if request.path == "/health":
            return connection.respond(200, "OK\n")
        return None

    async def main() -> None:
        async with echo_server(process_request=health) as server:
            status, headers, body = await http_get(server.port, "/health")
            assert (status, body) == (200, b"OK\n")
            assert headers["content-type"].startswith("text/plain")

            def fetch() -> tuple[int, bytes]:
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                with opener.open(f"http://127.0.0.1:{server.port}/health", timeout=TIMEOUT) as r:
                    return r.status, r.read()

            assert await asyncio.to_thread(fetch) == (200, b"OK\n")
            async with tether.connect(uri(server, "/ws")) as ws:
                await ws.send("still a websocket")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "still a websocket"

    run_any(main())


def test_process_request_async(run: Run) -> None:
    async def authenticate(
        connection: tether.ServerConnection, request: tether.Request
    ) -> tether.Response | None:
        await asyncio.sleep(0)
        if request.headers.get("Authorization") != "Bearer good":
            return connection.respond(401, "who are you?\n")
        return None

    async def main() -> None:
        async with echo_server(process_request=authenticate) as server:
            with pytest.raises(tether.InvalidStatus) as info:
                await tether.connect(uri(server))
            assert info.value.response.status == 401
            assert info.value.response.body == b"who are you?\n"
            async with tether.connect(
                uri(server), additional_headers={"Authorization": "Bearer good"}
            ) as ws:
                await ws.send("in")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "in"

    run(main())


def test_process_request_404_gives_invalid_status(run: Run) -> None:
    def not_found(
        connection: tether.ServerConnection, request: tether.Request
    ) -> tether.Response | None:
        return connection.respond(404, "nothing here\n") if request.path != "/" else None

    async def main() -> None:
        async with echo_server(process_request=not_found) as server:
            with pytest.raises(tether.InvalidStatus) as info:
                await tether.connect(uri(server, "/missing"))
            assert isinstance(info.value, tether.InvalidHandshake)
            assert isinstance(info.value, tether.TetherError)
            assert info.value.response.status == 404
            assert info.value.response.body == b"nothing here\n"
            assert "404" in str(info.value)
            assert server.connections == set()

    run(main())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_process_response_modifies_headers(run: Run, kind: str) -> None:
    seen: list[int] = []

    def add_header(
        connection: tether.ServerConnection, request: tether.Request, response: tether.Response
    ) -> None:
        seen.append(response.status)
        response.headers["X-Served-By"] = "tether-test"

    async def add_header_async(
        connection: tether.ServerConnection, request: tether.Request, response: tether.Response
    ) -> None:
        await asyncio.sleep(0)
        add_header(connection, request, response)

    async def main() -> None:
        hook = add_header if kind == "sync" else add_header_async
        async with (
            echo_server(process_response=hook) as server,
            tether.connect(uri(server)) as ws,
        ):
            assert ws.response is not None
            assert ws.response.headers["X-Served-By"] == "tether-test"
            await ws.send("ok")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ok"
        assert seen == [101]

    run(main())


def test_process_response_can_replace_the_response(run: Run) -> None:
    def refuse(
        connection: tether.ServerConnection, request: tether.Request, response: tether.Response
    ) -> tether.Response:
        return connection.respond(403, "not today\n")

    async def main() -> None:
        async with echo_server(process_response=refuse) as server:
            with pytest.raises(tether.InvalidStatus) as info:
                await tether.connect(uri(server))
            assert info.value.response.status == 403

    run(main())


def test_invalid_requests_get_an_http_error(run: Run) -> None:
    """RFC 6455 4.2.1: an invalid handshake gets an HTTP error; 4.4: a wrong version, 426."""

    async def main() -> None:
        async with echo_server() as server:
            status, _, _ = await http_get(server.port, "/")
            assert 400 <= status < 500
            status, headers, _ = await http_get(
                server.port,
                "/",
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n",
            )
            assert status == 426
            assert headers["sec-websocket-version"] == "13"
            # And the server keeps serving.
            async with tether.connect(uri(server)) as ws:
                await ws.send("ok")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ok"

    run(main())


# ------------------------------------------------------------------- origins


@pytest.mark.parametrize(
    ("origins", "origin", "allowed"),
    [
        (["https://a.example"], "https://a.example", True),
        (["https://a.example", "https://b.example"], "https://b.example", True),
        (["https://a.example"], "https://evil.example", False),
        (["https://a.example"], None, False),
        (["https://a.example", None], None, True),
        ([None], "https://a.example", False),
    ],
)
def test_origins(
    run: Run, origins: Sequence[str | None], origin: str | None, allowed: bool
) -> None:
    async def main() -> None:
        async with echo_server(origins=origins) as server:
            if allowed:
                async with tether.connect(uri(server), origin=origin) as ws:
                    assert ws.request is not None
                    assert ws.request.headers.get("Origin") == origin
                    await ws.send("hello")
                    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hello"
            else:
                with pytest.raises(tether.InvalidStatus) as info:
                    await tether.connect(uri(server), origin=origin)
                assert info.value.response.status == 403

    run(main())


# -------------------------------------------------------------- subprotocols


@pytest.mark.parametrize(
    ("server_protocols", "client_protocols", "chosen"),
    [
        (["chat", "superchat"], ["superchat"], "superchat"),
        (["chat", "superchat"], ["superchat", "chat"], "chat"),  # the server's preference
        (["chat"], ["other"], None),
        (["chat"], None, None),
        (None, ["chat"], None),
    ],
)
def test_subprotocol_negotiation(
    run: Run,
    server_protocols: list[str] | None,
    client_protocols: list[str] | None,
    chosen: str | None,
) -> None:
    async def main() -> None:
        handed: asyncio.Future[tether.ServerConnection] = asyncio.get_running_loop().create_future()

        async def handler(ws: tether.ServerConnection) -> None:
            handed.set_result(ws)
            await ws.wait_closed()

        async with (
            tether.serve(handler, "127.0.0.1", 0, subprotocols=server_protocols) as server,
            tether.connect(uri(server), subprotocols=client_protocols) as ws,
        ):
            server_ws = await asyncio.wait_for(handed, TIMEOUT)
            assert ws.subprotocol == chosen
            assert server_ws.subprotocol == chosen

    run(main())


@pytest.mark.parametrize("choice", ["v2", None])
def test_select_subprotocol(run: Run, choice: str | None) -> None:
    calls: list[tuple[tether.ServerConnection, list[str]]] = []

    def select(connection: tether.ServerConnection, offered: Sequence[str]) -> str | None:
        calls.append((connection, list(offered)))
        return choice

    async def main() -> None:
        async with (
            echo_server(select_subprotocol=select, subprotocols=["v1"]) as server,
            tether.connect(uri(server), subprotocols=["v1", "v2"]) as ws,
        ):
            assert ws.subprotocol == choice
            await ws.send("x")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "x"
        assert len(calls) == 1
        connection, offered = calls[0]
        assert isinstance(connection, tether.ServerConnection)
        assert offered == ["v1", "v2"]

    run(main())


# ------------------------------------------------------------------------ TLS, Unix


def test_tls(run_any: Run, tls_files: TLSFiles) -> None:
    async def main() -> None:
        async with echo_server(ssl=tls_files.server_context()) as server:
            for host in ("localhost", "127.0.0.1"):
                async with tether.connect(
                    f"wss://{host}:{server.port}/", ssl=tls_files.client_context()
                ) as ws:
                    await ws.send("secret")
                    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "secret"
                    await ws.send(b"\x00" * 100_000)
                    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\x00" * 100_000

    run_any(main())


def test_tls_verifies_by_default(run: Run, tls_files: TLSFiles) -> None:
    """wss:// without an ssl context verifies the certificate: a self-signed one fails."""

    async def main() -> None:
        async with echo_server(ssl=tls_files.server_context()) as server:
            with pytest.raises((ssl.SSLCertVerificationError, tether.TetherError)):
                await tether.connect(f"wss://localhost:{server.port}/")
            assert server.connections == set()

    run(main())


def test_unix_socket(run_any: Run, unix_path: str) -> None:
    async def main() -> None:
        async with tether.unix_serve(echo, unix_path) as server:
            assert isinstance(server, tether.Server)
            assert server.sockets[0].family == socket.AF_UNIX
            async with tether.unix_connect(unix_path) as ws:
                await ws.send("over unix")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "over unix"
                assert ws.remote_address == unix_path
            async with tether.unix_connect(unix_path, "ws://localhost/chat") as ws:
                assert ws.request is not None and ws.request.path == "/chat"
                await ws.send(b"bin")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"bin"

    run_any(main())


def test_unix_serve_is_awaitable(run: Run, unix_path: str) -> None:
    async def main() -> None:
        server = await tether.unix_serve(echo, unix_path)
        try:
            ws = await tether.unix_connect(unix_path)
            await ws.send("x")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "x"
            await ws.close()
        finally:
            server.close()
            await asyncio.wait_for(server.wait_closed(), TIMEOUT)

    run(main())


# -------------------------------------------------------------------------- max_size


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("kind", ["compressible", "incompressible"])
def test_max_size_closes_with_1009(run_any: Run, compression: str | None, kind: str) -> None:
    """max_size counts a whole message after decompression (API.md); 1009 (RFC 6455 7.4.1)."""
    size = 2 * 2**20
    message = b"a" * size if kind == "compressible" else bytes(range(256)) * (size // 256)
    outcome: list[BaseException] = []

    async def handler(ws: tether.ServerConnection) -> None:
        try:
            await ws.recv()
        except tether.ConnectionClosed as exc:
            outcome.append(exc)

    async def main() -> None:
        async with (
            tether.serve(
                handler, "127.0.0.1", 0, max_size=2**20, compression=compression
            ) as server,
            tether.connect(uri(server), compression=compression, max_size=None) as ws,
        ):
            try:
                await asyncio.wait_for(ws.send(message), TIMEOUT)
            except tether.ConnectionClosed:
                pass  # the server may close before the whole message is written
            with pytest.raises(tether.ConnectionClosedError) as info:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert info.value.code == 1009
            assert ws.close_code == 1009
        assert len(outcome) == 1
        assert isinstance(outcome[0], tether.ConnectionClosedError)

    run_any(main())
