"""Echo server on aiohttp 3 (``aiohttp.web`` with a WebSocketResponse), for bench/run.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import _common
from aiohttp import WSMsgType, web


def start(port: int, compression: bool) -> AbstractAsyncContextManager[Any]:
    async def handler(request: web.Request) -> web.WebSocketResponse:
        # compress=True is aiohttp's default (15-bit windows, zlib's default level);
        # max_msg_size=0 lifts the size limit as the other servers do.
        ws = web.WebSocketResponse(compress=compression, max_msg_size=0, autoping=True)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws

    @asynccontextmanager
    async def serving() -> AsyncIterator[None]:
        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, _common.HOST, port)
        await site.start()
        try:
            yield
        finally:
            await runner.cleanup()

    return serving()


if __name__ == "__main__":
    _common.main(__doc__ or "", start)
