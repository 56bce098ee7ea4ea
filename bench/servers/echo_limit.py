"""The physical limit: no WebSocket library at all, for bench/run.py.

A raw :class:`asyncio.Protocol` that answers the opening handshake with a canned ``101``
response (whatever the request says: it is only ever spoken to by bench/loadgen.py, whose
``Sec-WebSocket-Key`` is fixed) and then writes every byte it receives straight back,
without parsing a frame. The load generator accepts its (masked) echoes. What this row
measures is the loop, the kernel's loopback and the load generator: no server can beat it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

import _common

# The accept value for bench/loadgen.py's fixed key "dGhlIHNhbXBsZSBub25jZQ==".
RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"\r\n"
)
MAX_HEAD = 16 * 1024


class Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""  # None once the handshake is done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            self.echo(data)
            return
        transport = self.transport
        assert transport is not None
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_HEAD:
                transport.abort()
            return
        rest = self.head[end + 4 :]
        self.head = None
        transport.write(RESPONSE)
        self.opened(rest)

    def opened(self, rest: bytes) -> None:
        """The handshake is answered; ``rest`` came after the request head."""
        if rest:
            self.echo(rest)

    def echo(self, data: bytes) -> None:
        """Bytes after the handshake: straight back."""
        assert self.transport is not None
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close our side too

    # flow control: stop reading while the peer is not reading our echoes
    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()


@asynccontextmanager
async def serve_protocol(
    factory: Callable[[], asyncio.Protocol], port: int
) -> AsyncIterator[asyncio.Server]:
    """Serve ``factory``'s protocol on ``port`` while entered."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, _common.HOST, port)
    async with server:
        yield server


def start(port: int, compression: bool) -> AbstractAsyncContextManager[Any]:
    if compression:
        raise SystemExit("the limit server does not do compression")
    return serve_protocol(Echo, port)


if __name__ == "__main__":
    _common.main(__doc__ or "", start)
