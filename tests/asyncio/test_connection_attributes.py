"""What an application keeps on a server connection survives the memory savings:
its own attributes, weak references, and the handshake's request and response."""

from __future__ import annotations

import asyncio
import weakref

import tether

from .conftest import TIMEOUT, Run, uri


def test_handler_can_set_attributes_and_read_the_handshake(run_any: Run) -> None:
    live: weakref.WeakSet[tether.ServerConnection] = weakref.WeakSet()

    async def handler(ws: tether.ServerConnection) -> None:
        ws.user = "alice"  # type: ignore[attr-defined]
        live.add(ws)
        assert ws.request is not None and ws.response is not None
        await ws.send(
            "|".join(
                [
                    ws.user,  # type: ignore[attr-defined]
                    ws.request.path,
                    ws.request.headers["X-Token"],
                    ",".join(ws.request.headers.get_all("X-Many")),
                    str(ws.response.status),
                    ws.response.headers["Upgrade"],
                    str(len(live)),
                ]
            )
        )
        await ws.recv()

    async def main() -> None:
        async with (
            tether.serve(handler, "127.0.0.1", 0) as server,
            tether.connect(
                uri(server, "/room?id=1"),
                additional_headers=[("X-Token", "t0k"), ("X-Many", "a"), ("X-Many", "b")],
            ) as ws,
        ):
            reply = await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert reply == "alice|/room?id=1|t0k|a,b|101|websocket|1"
            (conn,) = server.connections
            assert conn.user == "alice"  # type: ignore[attr-defined]
            assert conn.request is not None
            assert conn.request.headers.get("x-token") == "t0k"
            conn.request.headers["X-Added"] = "later"
            assert conn.request.headers.raw_items()[-1] == ("X-Added", "later")

    run_any(main())
