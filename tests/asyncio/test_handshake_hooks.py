"""The server's opening handshake with and without process_request/process_response
hooks, synchronous or not: answered inline without hooks or with synchronous ones, in a
task with asynchronous ones; the same behaviour either way."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import tether

from .conftest import (
    TIMEOUT,
    RawPeer,
    Run,
    accept_key,
    echo_server,
    encode_frame,
    http_get,
    read_http_head,
    uri,
)

Hook = Callable[..., Any]


def _sync_none(connection: tether.ServerConnection, request: tether.Request) -> None:
    return None


async def _async_none(connection: tether.ServerConnection, request: tether.Request) -> None:
    await asyncio.sleep(0)


HOOKS: dict[str, Hook | None] = {"none": None, "sync": _sync_none, "async": _async_none}


@pytest.mark.parametrize("hook", list(HOOKS))
def test_frames_sent_with_the_request_are_not_lost(run_any: Run, hook: str) -> None:
    """A client that sends its first messages in the same packet as the request."""

    async def main() -> None:
        async with echo_server(process_request=HOOKS[hook]) as server:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", server.port), TIMEOUT
            )
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
            frames = b"".join(
                encode_frame(0x1, f"early {i}".encode(), mask=True) for i in range(3)
            )
            writer.write(request + frames)
            first, headers = await read_http_head(reader)
            assert first.split()[1] == "101"
            assert headers["sec-websocket-accept"] == accept_key(key)
            peer = RawPeer(reader, writer, client=True)
            for i in range(3):
                frame = await peer.recv_frame()
                assert frame.payload == f"early {i}".encode()
            await peer.send_frame(0x8, b"\x03\xe8")
            frames_after = await peer.recv_until(0x8)
            assert frames_after[-1].close_code == 1000
            await peer.close()

    run_any(main())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_hook_that_raises_gives_500_and_the_server_goes_on(
    run: Run, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(connection: tether.ServerConnection, request: tether.Request) -> None:
        if request.path == "/broken":
            raise RuntimeError("hook bug")

    async def broken_async(connection: tether.ServerConnection, request: tether.Request) -> None:
        await asyncio.sleep(0)
        broken(connection, request)

    async def main() -> None:
        hook = broken if kind == "sync" else broken_async
        async with echo_server(process_request=hook) as server:
            with pytest.raises(tether.InvalidStatus) as info:
                await tether.connect(uri(server, "/broken"))
            assert info.value.response.status == 500
            async with tether.connect(uri(server)) as ws:
                await ws.send("fine")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "fine"

    with caplog.at_level(logging.ERROR, logger="tether.server"):
        run(main())
    failures = [r for r in caplog.records if "opening handshake failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None and "hook bug" in str(failures[0].exc_info[1])


def test_async_process_request_then_async_process_response(run: Run) -> None:
    calls: list[str] = []

    async def on_request(
        connection: tether.ServerConnection, request: tether.Request
    ) -> tether.Response | None:
        await asyncio.sleep(0)
        calls.append(f"request {request.path}")
        return None

    async def on_response(
        connection: tether.ServerConnection, request: tether.Request, response: tether.Response
    ) -> None:
        await asyncio.sleep(0)
        calls.append(f"response {response.status}")
        response.headers["X-Both"] = "yes"

    async def main() -> None:
        async with (
            echo_server(process_request=on_request, process_response=on_response) as server,
            tether.connect(uri(server, "/both")) as ws,
        ):
            assert ws.response is not None and ws.response.headers["X-Both"] == "yes"
            await ws.send("x")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "x"
        assert calls == ["request /both", "response 101"]

    run(main())


def test_sync_process_request_then_async_process_response_replacing_it(run: Run) -> None:
    def on_request(connection: tether.ServerConnection, request: tether.Request) -> None:
        return None

    async def on_response(
        connection: tether.ServerConnection, request: tether.Request, response: tether.Response
    ) -> tether.Response:
        await asyncio.sleep(0)
        return connection.respond(418, "teapot\n")

    async def main() -> None:
        async with echo_server(process_request=on_request, process_response=on_response) as s:
            with pytest.raises(tether.InvalidStatus) as info:
                await tether.connect(uri(s))
            assert info.value.response.status == 418
            status, _, body = await http_get(s.port, "/")
            assert (status, body) == (418, b"teapot\n")

    run(main())


def test_closing_the_server_while_an_async_hook_waits(run: Run) -> None:
    entered = asyncio.Event()

    async def stuck(connection: tether.ServerConnection, request: tether.Request) -> None:
        entered.set()
        await asyncio.Event().wait()  # never set: only the server's close ends it

    async def main() -> None:
        server = await tether.serve(lambda ws: ws.recv(), "127.0.0.1", 0, process_request=stuck)
        client: Awaitable[Any] = asyncio.ensure_future(tether.connect(uri(server)))
        await asyncio.wait_for(entered.wait(), TIMEOUT)
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)
        with pytest.raises((tether.InvalidHandshake, ConnectionError, EOFError, OSError)):
            await asyncio.wait_for(client, TIMEOUT)

    run(main())
