"""Echo server on picows' websockets-compatible API (``picows.websockets``), for bench/run.py.

The same handler as echo_websockets.py, on picows' Cython implementation of websockets'
asyncio API.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import _common
from picows.websockets.asyncio.server import serve


async def handler(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


def start(port: int, compression: bool) -> AbstractAsyncContextManager[Any]:
    server: AbstractAsyncContextManager[Any] = serve(
        handler,
        _common.HOST,
        port,
        compression="deflate" if compression else None,
        max_size=None,
    )
    return server


if __name__ == "__main__":
    _common.main(__doc__ or "", start)
