"""A decompression bomb is refused with 1009 while the server's memory stays bounded.

The server runs in its own process so that its peak memory (VmHWM) can be read from
/proc before and after the bomb; the client is tether's, which compresses a message
of 256 MiB of zeros into a frame of about 256 KiB.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import tether

SERVER = textwrap.dedent(
    """
    import asyncio, sys
    import tether

    async def handler(ws):
        try:
            async for message in ws:
                await ws.send(message)
        except tether.ConnectionClosed:
            pass

    async def main():
        async with tether.serve(handler, "127.0.0.1", 0, max_size=2**20) as server:
            print(server.port, flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    asyncio.run(main())
    """
)

BOMB_SIZE = 256 * 2**20


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_decompression_bomb_closes_1009_with_bounded_memory() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        baseline = peak_rss_kib(proc.pid)
        bomb = bytes(BOMB_SIZE)

        async def main() -> tether.ConnectionClosed:
            async with tether.connect(
                f"ws://127.0.0.1:{port}/", compression="deflate", open_timeout=10
            ) as ws:
                assert ws.response is not None
                assert "permessage-deflate" in (
                    ws.response.headers.get("Sec-WebSocket-Extensions") or ""
                )
                started = time.perf_counter()
                await ws.send(bomb)
                with pytest.raises(tether.ConnectionClosed) as caught:
                    await asyncio.wait_for(ws.recv(), 10)
                # The server stops inflating at max_size: no time spent on 256 MiB.
                assert time.perf_counter() - started < 5
                return caught.value

        closed = asyncio.run(main())
        assert closed.code == 1009
        assert "max_size" in closed.reason
        growth_kib = peak_rss_kib(proc.pid) - baseline
        # 1 MiB of max_size, plus buffers; nowhere near the 256 MiB the bomb inflates to.
        assert growth_kib < 16 * 1024, f"server peak memory grew by {growth_kib} KiB"
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
