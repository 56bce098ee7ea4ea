"""Helpers for the interop tests: an event-loop runner, bounded waits, peers' servers.

Every test is a plain function that runs one coroutine on a fresh event loop through
the ``run`` fixture (asyncio's loop) or ``run_uvloop``; every wait inside is bounded with
:func:`within`, and the whole coroutine with :data:`TEST_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

import pytest
from aiohttp import web

import tether

T = TypeVar("T")

#: bound on any single wait inside a test
TIMEOUT = 5.0
#: bound on a whole test's coroutine
TEST_TIMEOUT = 20.0
#: 1 MiB
MiB = 2**20
HOST = "127.0.0.1"


async def within(aw: Awaitable[T], timeout: float = TIMEOUT) -> T:
    """Await ``aw`` for at most ``timeout`` seconds (TimeoutError otherwise)."""
    return await asyncio.wait_for(aw, timeout)


class Runner:
    """Runs a test's coroutine to completion on a new event loop, bounded in time."""

    def __init__(self, loop_name: str) -> None:
        self.loop_name = loop_name

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        if self.loop_name == "uvloop":
            import uvloop

            return uvloop.new_event_loop()
        return asyncio.new_event_loop()

    def __call__(self, coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
        """Run ``coro``; fail if it leaves an unclosed resource (socket, server...).

        ResourceWarnings are recorded rather than raised: uvloop emits them while
        closing the loop, where an exception makes ``loop.close()`` hang. Other
        warnings are re-issued, so the project's ``filterwarnings = error`` applies.
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            try:
                result = self._run(coro, timeout)
            except BaseException:
                # Run the finalizers of what the failed test left behind now: run while
                # pytest formats the failure, one that logs a traceback re-enters
                # ast.parse and CPython 3.11 fails with "SystemError: AST constructor
                # recursion depth mismatch" (an INTERNALERROR that ends the whole run).
                gc.collect()
                raise
        leaks = []
        for w in caught:
            if issubclass(w.category, ResourceWarning):
                leaks.append(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        assert not leaks, f"unclosed resources: {leaks}"
        return result

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(coro, timeout)

        if sys.version_info >= (3, 11):
            with asyncio.Runner(loop_factory=self._new_loop) as runner:
                return runner.run(bounded())
        loop = self._new_loop()  # pragma: no cover - Python 3.10
        try:  # pragma: no cover
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(bounded())
        finally:  # pragma: no cover
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()


@pytest.fixture
def run() -> Runner:
    """``run(coroutine)``: run it on a fresh asyncio event loop."""
    return Runner("asyncio")


@pytest.fixture
def run_uvloop() -> Runner:
    """``run_uvloop(coroutine)``: run it on a fresh uvloop event loop (a smaller set of
    tests uses it: a whole session each way per peer library)."""
    pytest.importorskip("uvloop")
    return Runner("uvloop")


class Probe(Generic[T]):
    """Carries what a server-side handler saw back to the test.

    ``await probe.run(coroutine)`` inside the handler records the coroutine's result or
    its exception; ``await probe.result()`` in the test returns it or raises it, so an
    assertion that fails inside a peer's handler fails the test.
    """

    def __init__(self) -> None:
        self._future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        # A test that fails before reading the result must not log "Future exception
        # was never retrieved" later, from a finalizer.
        self._future.add_done_callback(_retrieve)

    async def run(self, aw: Awaitable[T]) -> T:
        try:
            result = await aw
        except asyncio.CancelledError:
            if not self._future.done():
                self._future.cancel()
            raise
        except BaseException as exc:
            if not self._future.done():
                self._future.set_exception(exc)
            raise
        if not self._future.done():
            self._future.set_result(result)
        return result

    async def result(self, timeout: float = TIMEOUT) -> T:
        return await within(asyncio.shield(self._future), timeout)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


# ------------------------------------------------------------------------------ servers


@contextlib.asynccontextmanager
async def tether_server(
    handler: Callable[[tether.ServerConnection], Awaitable[Any]], **options: Any
) -> AsyncIterator[str]:
    """A tether server on 127.0.0.1, a free port; yields its ``ws://`` URL."""
    options.setdefault("close_timeout", 2)
    async with tether.serve(handler, HOST, 0, **options) as server:
        yield f"ws://{HOST}:{server.port}/"


@contextlib.asynccontextmanager
async def websockets_server(handler: Callable[[Any], Awaitable[Any]], **options: Any
                            ) -> AsyncIterator[str]:
    """A websockets server on 127.0.0.1, a free port; yields its ``ws://`` URL."""
    from websockets.asyncio.server import serve

    options.setdefault("close_timeout", 2)
    async with serve(handler, HOST, 0, **options) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://{HOST}:{port}/"


@contextlib.asynccontextmanager
async def aiohttp_server(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[str]:
    """An aiohttp.web app (AppRunner + TCPSite, 127.0.0.1, port 0) serving ``handler``
    on ``/``; yields its ``ws://`` URL."""
    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"ws://{HOST}:{port}/"
    finally:
        await runner.cleanup()


# -------------------------------------------------------------------------------- relay


class Relay:
    """A TCP relay on 127.0.0.1 in front of ``url``'s server that counts the bytes
    in each direction: it shows whether messages were compressed on the wire.

    ``async with Relay(url) as relay``: connect to ``relay.url`` instead of ``url``.
    ``relay.upstream`` counts client-to-server bytes, ``relay.downstream`` the others.
    A half-close (EOF) is passed on, as a closing handshake needs.
    """

    def __init__(self, url: str) -> None:
        host_port = url.removeprefix("ws://").split("/", 1)[0]
        self._target_port = int(host_port.rsplit(":", 1)[1])
        self.upstream = 0
        self.downstream = 0
        self.url = ""
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://{HOST}:{port}/"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=TIMEOUT)
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._relay(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
                     ) -> None:
        try:
            server_r, server_w = await within(asyncio.open_connection(HOST, self._target_port))
        except BaseException:
            client_w.close()
            raise
        try:
            await asyncio.gather(
                self._pipe(client_r, server_w, upstream=True),
                self._pipe(server_r, client_w, upstream=False),
            )
        finally:
            for w in (client_w, server_w):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    *, upstream: bool) -> None:
        try:
            while data := await reader.read(2**16):
                if upstream:
                    self.upstream += len(data)
                else:
                    self.downstream += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.close()
