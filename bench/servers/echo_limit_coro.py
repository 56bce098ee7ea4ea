"""The limit of a coroutine API: the "limit" server, with every echo made by a task.

The same raw :class:`asyncio.Protocol` as ``echo_limit.py`` (canned ``101``, no frame
parsing), except that what arrives is handed to one task per connection, which awaits
it and writes it back: ``data = await conn.read(); transport.write(data)``. That is the
least any library whose handler is a coroutine (``async for message in ws: await
ws.send(message)``) must do per message on asyncio: wake a task through a future. The
gap between this row and "limit" is the price of the coroutine API itself; the gap
between a library and this row is the library's own work.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import AbstractAsyncContextManager
from typing import Any

import _common
from echo_limit import Echo, serve_protocol


class CoroEcho(Echo):
    def __init__(self) -> None:
        super().__init__()
        self.chunks: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.task: asyncio.Task[None] | None = None

    def echo(self, data: bytes) -> None:
        self.chunks.append(data)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def opened(self, rest: bytes) -> None:
        if rest:
            self.chunks.append(rest)
        self.task = asyncio.get_running_loop().create_task(self.handler())

    async def read(self) -> bytes | None:
        while not self.chunks:
            if self.closed:
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        return self.chunks.popleft()

    async def handler(self) -> None:
        transport = self.transport
        assert transport is not None
        while (data := await self.read()) is not None:
            transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


def start(port: int, compression: bool) -> AbstractAsyncContextManager[Any]:
    if compression:
        raise SystemExit("the limit server does not do compression")
    return serve_protocol(CoroEcho, port)


if __name__ == "__main__":
    _common.main(__doc__ or "", start)
