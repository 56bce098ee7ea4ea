"""Echo server on tether, for bench/run.py."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import _common

import tether


async def handler(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


def start(port: int) -> AbstractAsyncContextManager[Any]:
    server: AbstractAsyncContextManager[Any] = tether.serve(
        handler, _common.HOST, port, compression=None, max_size=None
    )
    return server


if __name__ == "__main__":
    _common.main(__doc__ or "", start)
