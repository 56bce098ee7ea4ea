"""tether.sync against real peers on loopback: the asyncio tether server and the
websockets server (each on an event loop in a thread of its own), and the
``websocket-client`` library and websockets' threading client against the sync server.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

import tether
from tether.sync import ServerConnection, connect

from .conftest import HOST, TIMEOUT, TLSFiles, sync_server, uri

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running in a daemon thread; :meth:`run` runs a coroutine
    on it from the test's thread, bounded."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


@contextlib.contextmanager
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()


async def _async_echo(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


@contextlib.contextmanager
def asyncio_server(
    start: Callable[[], Coroutine[Any, Any, Any]],
    stop: Callable[[Any], Coroutine[Any, Any, None]],
    port_of: Callable[[Any], int],
) -> Iterator[int]:
    with loop_thread() as lt:
        server = lt.run(start())
        try:
            yield port_of(server)
        finally:
            lt.run(stop(server), TIMEOUT * 2)


@contextlib.contextmanager
def tether_asyncio_server(**options: Any) -> Iterator[int]:
    async def start() -> tether.Server:
        return await tether.serve(_async_echo, HOST, 0, close_timeout=2, **options)

    async def stop(server: tether.Server) -> None:
        server.close()
        await server.wait_closed()

    with asyncio_server(start, stop, lambda s: s.port) as port:
        yield port


@contextlib.contextmanager
def websockets_server(**options: Any) -> Iterator[int]:
    from websockets.asyncio.server import serve

    async def start() -> Any:
        return await serve(_async_echo, HOST, 0, close_timeout=2, **options)

    async def stop(server: Any) -> None:
        server.close()
        await server.wait_closed()

    with asyncio_server(start, stop, lambda s: s.sockets[0].getsockname()[1]) as port:
        yield port


MESSAGES: list[str | bytes] = ["héllo", b"\x00\xff", "", "x" * 100_000, bytes(300_000)]


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("peer", ["tether.asyncio", "websockets"])
def test_sync_client_against_asyncio_servers(peer: str, compression: str | None) -> None:
    server = tether_asyncio_server if peer == "tether.asyncio" else websockets_server
    with server() as port, connect(f"ws://{HOST}:{port}/", compression=compression,
                                   close_timeout=2) as ws:
        for message in MESSAGES:
            ws.send(message)
            assert ws.recv(timeout=TIMEOUT) == message
        ws.send(["frag", "mented"])
        assert ws.recv(timeout=TIMEOUT) == "fragmented"
        assert ws.ping().result(TIMEOUT) > 0
        assert ws.response is not None
        assert ("Sec-WebSocket-Extensions" in ws.response.headers) == (compression is not None)
    assert ws.close_code == 1000


@pytest.mark.parametrize("peer", ["tether.asyncio", "websockets"])
def test_sync_client_sees_the_server_close_with_1001(peer: str) -> None:
    server = tether_asyncio_server if peer == "tether.asyncio" else websockets_server
    with server() as port:
        ws = connect(f"ws://{HOST}:{port}/", close_timeout=2)
        ws.send("hi")
        assert ws.recv(timeout=TIMEOUT) == "hi"
    # Leaving the block closed the server: its connections go away with 1001.
    with pytest.raises(tether.ConnectionClosedOK) as info:
        ws.recv(timeout=TIMEOUT)
    assert info.value.code == 1001


def test_sync_client_against_asyncio_tether_server_over_tls(tls_files: TLSFiles) -> None:
    with tether_asyncio_server(ssl=tls_files.server_context()) as port, connect(
        f"wss://{HOST}:{port}/", ssl=tls_files.client_context(), close_timeout=2
    ) as ws:
        for message in MESSAGES:
            ws.send(message)
            assert ws.recv(timeout=TIMEOUT) == message
    assert ws.close_code == 1000


def test_asyncio_tether_client_against_sync_server_over_tls(tls_files: TLSFiles) -> None:
    async def main(url: str) -> list[str | bytes]:
        async with tether.connect(url, ssl=tls_files.client_context(), close_timeout=2) as ws:
            received = []
            for message in MESSAGES:
                await ws.send(message)
                received.append(await ws.recv())
        assert ws.close_code == 1000
        return received

    with sync_server(ssl=tls_files.server_context()) as server, loop_thread() as lt:
        assert lt.run(main(uri(server, scheme="wss"))) == MESSAGES


@pytest.mark.parametrize("compression", ["deflate", None])
def test_websocket_client_library_against_sync_server(compression: str | None) -> None:
    websocket = pytest.importorskip("websocket")
    with sync_server(compression=compression) as server:
        ws = websocket.create_connection(uri(server), timeout=TIMEOUT)
        try:
            ws.send("hello from websocket-client")
            assert ws.recv() == "hello from websocket-client"
            ws.send_binary(b"\x01\x02")
            assert ws.recv() == b"\x01\x02"
            ws.send("y" * 200_000)
            assert ws.recv() == "y" * 200_000
            ws.ping(b"ping?")
            opcode, frame = ws.recv_data_frame(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_PONG
            assert frame.data == b"ping?"
        finally:
            ws.close()


def test_websocket_client_library_sees_handler_close_code() -> None:
    websocket = pytest.importorskip("websocket")

    def handler(ws: ServerConnection) -> None:
        ws.recv()
        ws.close(4001, "done here")

    with sync_server(handler) as server:
        ws = websocket.create_connection(uri(server), timeout=TIMEOUT)
        try:
            ws.send("go")
            opcode, frame = ws.recv_data_frame(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE
            assert frame.data[:2] == (4001).to_bytes(2, "big")
            assert frame.data[2:] == b"done here"
        finally:
            # websocket-client answered the close frame already; shutdown() closes the
            # socket (close() would not, since the library considers it closed).
            ws.shutdown()


@pytest.mark.parametrize("compression", ["deflate", None])
def test_websockets_threading_client_against_sync_server(compression: str | None) -> None:
    from websockets.sync.client import connect as ws_connect

    with sync_server(compression=compression) as server, ws_connect(
        uri(server), compression="deflate" if compression else None, close_timeout=2
    ) as ws:
        for message in MESSAGES:
            ws.send(message)
            assert ws.recv(timeout=TIMEOUT) == message
        ws.send(["a", "b"])
        assert ws.recv(timeout=TIMEOUT) == "ab"
        assert ws.ping().wait(TIMEOUT)
