"""Echo server on picows' callback core (``picows.ws_create_server`` + a WSListener).

picows hands the listener frames, not messages, and has no permessage-deflate: this
server echoes each data frame as it comes (bench/loadgen.py sends unfragmented messages)
and answers a close frame with the same code. It is what a picows user writes for speed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import _common
import picows
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest


class Echo(WSListener):  # type: ignore[misc]
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code() or WSCloseCode.OK)
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.BINARY, WSMsgType.TEXT, WSMsgType.CONTINUATION):
            transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)


def start(port: int, compression: bool) -> AbstractAsyncContextManager[Any]:
    if compression:
        raise SystemExit("picows has no permessage-deflate")

    def listener_factory(request: WSUpgradeRequest) -> Echo:
        return Echo()

    @asynccontextmanager
    async def serving() -> AsyncIterator[None]:
        server = await picows.ws_create_server(
            listener_factory, _common.HOST, port, max_frame_size=64 * 1024 * 1024
        )
        try:
            yield
        finally:
            server.close()
            await server.wait_closed()

    return serving()


if __name__ == "__main__":
    _common.main(__doc__ or "", start)
