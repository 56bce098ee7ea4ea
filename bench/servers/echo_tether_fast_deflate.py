"""Echo server on tether with permessage-deflate tuned for speed, for bench/run.py.

The same server as ``echo_tether.py``; with ``--compression`` it uses
``tether.Deflate(server_max_window_bits=15, compress_level=1, mem_level=8)``: zlib's
fastest level with its full-size window and hash table, the trade aiohttp's default makes,
instead of tether's default (12-bit window, level 4, mem_level 3), which keeps a
connection under 40 KB. See docs/howto.md#compression for the memory of each setting.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import _common
from echo_tether import handler

import tether

FAST = tether.Deflate(server_max_window_bits=15, compress_level=1, mem_level=8)


def start(port: int, compression: bool) -> AbstractAsyncContextManager[Any]:
    server: AbstractAsyncContextManager[Any] = tether.serve(
        handler,
        _common.HOST,
        port,
        compression=FAST if compression else None,
        max_size=None,
    )
    return server


if __name__ == "__main__":
    _common.main(__doc__ or "", start)
