"""Replies to a burst of received messages are written together: never reordered, never
held back, and never behind a close frame."""

from __future__ import annotations

import asyncio

import tether

from .conftest import TIMEOUT, Run, encode_frame, raw_client


def test_burst_replies_arrive_in_order_then_the_close_frame(run_any: Run) -> None:
    async def handler(ws: tether.ServerConnection) -> None:
        for _ in range(200):
            message = await ws.recv()
            await ws.send(message)
            if message == b"ping me":
                await ws.ping(b"p")
        await ws.close(1000, "done")

    async def main() -> None:
        async with tether.serve(handler, "127.0.0.1", 0, compression=None) as server:
            peer = await raw_client(server.port)
            burst = b"".join(
                encode_frame(0x2, b"ping me" if i == 100 else i.to_bytes(2, "big"), mask=True)
                for i in range(200)
            )
            peer.writer.write(burst)  # one write: the server reads it in a few chunks
            frames = await peer.recv_until(0x8)
            data = [f.payload for f in frames if f.opcode == 0x2]
            assert data == [b"ping me" if i == 100 else i.to_bytes(2, "big") for i in range(200)]
            pings = [i for i, f in enumerate(frames) if f.opcode == 0x9]
            # The ping follows the reply it was sent after, as written.
            assert len(pings) == 1 and frames[pings[0] - 1].payload == b"ping me"
            assert frames[-1].opcode == 0x8 and frames[-1].close_code == 1000
            await peer.send_frame(0x8, b"\x03\xe8")
            await peer.close()

    run_any(main())


def test_a_reply_is_not_held_when_the_handler_stops_reading(run_any: Run) -> None:
    """Messages are still queued, so the reply is corked; it goes out on the loop's next
    turn anyway."""
    stop = asyncio.Event()

    async def handler(ws: tether.ServerConnection) -> None:
        await ws.send(await ws.recv())
        await stop.wait()

    async def main() -> None:
        async with tether.serve(handler, "127.0.0.1", 0, compression=None) as server:
            peer = await raw_client(server.port)
            peer.writer.write(b"".join(encode_frame(0x1, b"%d" % i, mask=True) for i in range(5)))
            frame = await peer.recv_frame(TIMEOUT)
            assert frame.payload == b"0"
            stop.set()
            await peer.close()

    run_any(main())


def test_large_burst_is_written_before_it_exceeds_write_limit(run: Run) -> None:
    sizes: list[int] = []

    async def handler(ws: tether.ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)
            sizes.append(ws._wbuf_size)  # bytes corked, not yet given to the transport

    async def main() -> None:
        async with tether.serve(
            handler, "127.0.0.1", 0, compression=None, write_limit=4096, max_size=None
        ) as server:
            peer = await raw_client(server.port)
            payload = b"x" * 1000
            peer.writer.write(b"".join(encode_frame(0x2, payload, mask=True) for _ in range(50)))
            for _ in range(50):
                frame = await peer.recv_frame(TIMEOUT)
                assert frame.payload == payload
            await peer.send_frame(0x8, b"\x03\xe8")
            await peer.recv_until(0x8)
            await peer.close()

    run(main())
    assert len(sizes) == 50
    assert 0 < max(sizes) < 4096  # corked (messages were queued), and bounded
