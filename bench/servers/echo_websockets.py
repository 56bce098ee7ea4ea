"""Echo server on websockets 17 (``websockets.asyncio.server``), for bench/run.py."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import _common
from websockets.asyncio.server import ServerConnection, serve


async def handler(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def start(port: int, compression: bool) -> AbstractAsyncContextManager[Any]:
    # "deflate" is websockets' default: 12-bit windows, memLevel 5, zlib's default level,
    # every message compressed.
    return serve(
        handler,
        _common.HOST,
        port,
        compression="deflate" if compression else None,
        max_size=None,
    )


if __name__ == "__main__":
    _common.main(__doc__ or "", start)
