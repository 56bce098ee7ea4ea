"""One behavioural suite over both layers: ``tether`` (asyncio) and ``tether.sync`` (threads).

Tests are plain blocking functions taking the ``layer`` fixture, parametrised over
``"asyncio"``, ``"uvloop"`` (the asyncio layer on uvloop, when installed) and ``"sync"``;
they start servers and clients through it and drive connections with the sync API's
vocabulary::

    def test_echo(layer: Layer) -> None:
        with layer.serve(echo) as server, layer.connect(server.uri()) as ws:
            ws.send("hi")
            assert ws.recv() == "hi"

Handlers are plain functions too (``def handler(ws: Peer)``). A :class:`Peer` wraps one
connection of either layer with the same blocking methods: ``send``, ``recv(timeout)``,
``ping(data) -> latency``, ``close``, ``wait_closed``, iteration; attributes
(``close_code``, ``subprotocol``, ``response``...) are the connection's own.

- sync: the connection is tether.sync's, its methods called as they are; the server runs
  ``serve_forever()`` in a thread.
- asyncio: an event loop runs in a thread for the test (:class:`LoopThread`); the
  connection's coroutines run there (:func:`asyncio.run_coroutine_threadsafe`) and each
  handler runs in a worker thread of that loop (:func:`asyncio.to_thread`). The loop must
  end the test with no task left, as in tests/asyncio.

Options (``compression``, ``max_size``, ``process_request``, ``ssl``...) go unchanged to
``serve`` / ``connect`` of the layer: both layers take the same ones.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

import tether
import tether.sync

from .._peers import HOST, TIMEOUT, no_leaked_threads, tls_files

__all__ = ["Layer", "Peer", "echo", "tls_files"]

T = TypeVar("T")
#: Bound of a call that may rightly wait long (a handler's ``recv`` on an idle connection).
LONG = 30.0


@pytest.fixture(autouse=True)
def no_leaked_threads_after_each_test() -> Iterator[None]:
    """Fail a test that leaves a tether thread running (the sync layer's)."""
    with no_leaked_threads():
        yield


# ------------------------------------------------------------------------- the peers


class Peer:
    """One connection of either layer, with blocking methods (see the module docstring)."""

    #: the layer's own connection object
    connection: Any

    def send(self, message: Any) -> None:
        raise NotImplementedError

    def recv(self, timeout: float | None = TIMEOUT, decode: bool | None = None) -> Any:
        """The next message; :class:`TimeoutError` after ``timeout`` (nothing is lost)."""
        raise NotImplementedError

    def ping(self, data: str | bytes | None = None) -> float:
        """Send a ping, wait for its pong, return the round-trip time."""
        raise NotImplementedError

    def close(self, code: int = 1000, reason: str = "") -> None:
        raise NotImplementedError

    def wait_closed(self, timeout: float = TIMEOUT) -> None:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Any]:
        """Messages until a normal closure (1000, 1001); an abnormal one raises."""
        try:
            while True:
                yield self.recv(timeout=None)
        except tether.ConnectionClosedOK:
            return

    def __getattr__(self, name: str) -> Any:
        return getattr(self.connection, name)

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class SyncPeer(Peer):
    def __init__(self, connection: tether.sync.Connection) -> None:
        self.connection = connection

    def send(self, message: Any) -> None:
        self.connection.send(message)

    def recv(self, timeout: float | None = TIMEOUT, decode: bool | None = None) -> Any:
        return self.connection.recv(timeout=LONG if timeout is None else timeout,
                                    decode=decode)

    def ping(self, data: str | bytes | None = None) -> float:
        latency: float = self.connection.ping(data).result(TIMEOUT)
        return latency

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.connection.close(code, reason)

    def wait_closed(self, timeout: float = TIMEOUT) -> None:
        self.connection.wait_closed(timeout)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.connection)


class AsyncioPeer(Peer):
    def __init__(self, connection: tether.Connection, loop: LoopThread) -> None:
        self.connection = connection
        self._loop = loop

    def send(self, message: Any) -> None:
        self._loop.run(self.connection.send(message))

    def recv(self, timeout: float | None = TIMEOUT, decode: bool | None = None) -> Any:
        limit = LONG if timeout is None else timeout
        return self._loop.run(asyncio.wait_for(self.connection.recv(decode), limit), limit)

    def ping(self, data: str | bytes | None = None) -> float:
        async def ping() -> float:
            waiter = await self.connection.ping(data)
            return await asyncio.wait_for(waiter, TIMEOUT)

        return self._loop.run(ping())

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._loop.run(self.connection.close(code, reason))

    def wait_closed(self, timeout: float = TIMEOUT) -> None:
        self._loop.run(asyncio.wait_for(self.connection.wait_closed(), timeout), timeout)

    def __iter__(self) -> Iterator[Any]:
        # ``async for``, one step at a time.
        messages = aiter(self.connection)

        async def step() -> tuple[bool, Any]:
            try:
                return True, await anext(messages)
            except StopAsyncIteration:
                return False, None

        while True:
            more, message = self._loop.run(step(), LONG)
            if not more:
                return
            yield message


class LoopThread:
    """An asyncio event loop running in a thread of its own, for one test."""

    def __init__(self, new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.loop = new_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="test-loop",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = TIMEOUT) -> T:
        """Run ``coro`` on the loop and wait for it, at most ``timeout`` (plus a margin:
        the coroutine's own timeouts fire first)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout + TIMEOUT)
        except concurrent.futures.TimeoutError as exc:
            if not future.done():
                future.cancel()
                raise AssertionError(f"a call on the loop took over {timeout} s") from None
            if isinstance(exc, TimeoutError):
                raise
            raise TimeoutError(*exc.args) from exc  # Python 3.10: another class

    def close(self) -> None:
        """Stop the loop; fail if the test left tasks running (they are cancelled)."""
        leftover = self.run(self._cancel_leftovers())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        self.loop.run_until_complete(
            asyncio.wait_for(self.loop.shutdown_default_executor(), TIMEOUT)
        )
        self.loop.close()
        assert not leftover, f"the test left tasks running: {leftover}"

    @staticmethod
    async def _cancel_leftovers() -> list[asyncio.Task[Any]]:
        current = asyncio.current_task()
        leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.wait(leftover, timeout=TIMEOUT)
        return leftover


# ------------------------------------------------------------------------ the layers


Handler = Callable[[Peer], Any]


def echo(ws: Peer) -> None:
    """The echo handler of the documentation."""
    for message in ws:
        ws.send(message)


class Server:
    """A running server of either layer."""

    def __init__(self, server: Any) -> None:
        #: the layer's own server object
        self.server = server
        self.port: int = server.port

    def uri(self, path: str = "/", scheme: str = "ws") -> str:
        return f"{scheme}://{HOST}:{self.port}{path}"


class Layer:
    """Start servers and connect clients of one layer."""

    name: str

    def serve(
        self, handler: Handler = echo, **options: Any
    ) -> contextlib.AbstractContextManager[Server]:
        """A server on 127.0.0.1, a free port, with ``options``; stopped on exit."""
        raise NotImplementedError

    def connect(self, uri: str, **options: Any) -> Peer:
        """A client connection (close it, or use it as a context manager)."""
        raise NotImplementedError

    def reading_paused(self, peer: Peer) -> bool:
        """Whether the connection stopped reading its socket (``max_queue`` reached)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def pair(
        self,
        server_options: dict[str, Any] | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> Iterator[tuple[Peer, Peer]]:
        """A connected (server side, client side) pair: the handler hands its connection
        to the test and waits until it is closed, so the test drives both ends."""
        handed: queue.Queue[Peer] = queue.Queue()

        def handler(ws: Peer) -> None:
            handed.put(ws)
            ws.wait_closed(LONG)

        with self.serve(handler, **(server_options or {})) as server, self.connect(
            server.uri(), **(client_options or {})
        ) as client:
            yield handed.get(timeout=TIMEOUT), client

    def __repr__(self) -> str:
        return self.name


class SyncLayer(Layer):
    name = "sync"

    @contextlib.contextmanager
    def serve(self, handler: Handler = echo, **options: Any) -> Iterator[Server]:
        options.setdefault("close_timeout", 2)
        server = tether.sync.serve(lambda ws: handler(SyncPeer(ws)), HOST, 0, **options)
        serving = threading.Thread(target=server.serve_forever, name="test-serve-forever",
                                   daemon=True)
        serving.start()
        try:
            yield Server(server)
        finally:
            server.shutdown()
            serving.join(TIMEOUT)
            assert not serving.is_alive(), "serve_forever did not return after shutdown()"

    def connect(self, uri: str, **options: Any) -> Peer:
        options.setdefault("close_timeout", 2)
        return SyncPeer(tether.sync.connect(uri, **options))

    def reading_paused(self, peer: Peer) -> bool:
        return bool(peer.connection._paused)


class AsyncioLayer(Layer):
    def __init__(self, name: str, loop: LoopThread) -> None:
        self.name = name
        self.loop = loop

    @contextlib.contextmanager
    def serve(self, handler: Handler = echo, **options: Any) -> Iterator[Server]:
        options.setdefault("close_timeout", 2)

        async def run_handler(ws: tether.ServerConnection) -> None:
            await asyncio.to_thread(handler, AsyncioPeer(ws, self.loop))

        async def start() -> tether.Server:
            return await tether.serve(run_handler, HOST, 0, **options)

        async def stop(server: tether.Server) -> None:
            server.close()
            await asyncio.wait_for(server.wait_closed(), TIMEOUT)

        server = self.loop.run(start())
        try:
            yield Server(server)
        finally:
            self.loop.run(stop(server))

    def connect(self, uri: str, **options: Any) -> Peer:
        options.setdefault("close_timeout", 2)

        async def connect() -> tether.ClientConnection:
            return await tether.connect(uri, **options)

        return AsyncioPeer(self.loop.run(connect()), self.loop)

    def reading_paused(self, peer: Peer) -> bool:
        transport = peer.connection.transport
        return transport is not None and not transport.is_reading()


@pytest.fixture(params=["asyncio", "uvloop", "sync"])
def layer(request: pytest.FixtureRequest) -> Iterator[Layer]:
    """The layer under test: tether (asyncio; its loop, asyncio's or uvloop, in a
    thread), then tether.sync."""
    if request.param == "sync":
        yield SyncLayer()
        return
    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if request.param == "uvloop":
        new_loop = pytest.importorskip("uvloop").new_event_loop
    loop = LoopThread(new_loop)
    try:
        yield AsyncioLayer(request.param, loop)
    finally:
        loop.close()
