"""Echo server on tether, for bench/run.py."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import _common

import tether


async def handler(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


def start(port: int, compression: bool) -> AbstractAsyncContextManager[Any]:
    # "deflate" is tether's default: tether.Deflate() (windows of 12 bits for the server,
    # 11 for the client, level 4, mem_level 3, messages under 128 bytes sent uncompressed).
    server: AbstractAsyncContextManager[Any] = tether.serve(
        handler,
        _common.HOST,
        port,
        compression="deflate" if compression else None,
        max_size=None,
    )
    return server


if __name__ == "__main__":
    _common.main(__doc__ or "", start)
