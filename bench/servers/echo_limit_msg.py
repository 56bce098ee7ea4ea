"""The limit for a library that hands the application whole messages, for bench/run.py.

The ``limit`` row writes each chunk back the moment it arrives, so a 1 MiB message
streams through it: its round trip overlaps receiving and sending. A WebSocket library
cannot do that: the application sees a message only once all of it is in, then sends
its reply. This row does the least such a library must do: it reads frame headers
(lengths only: no unmasking, no UTF-8 check), keeps the bytes of a frame until the frame
is complete (one copy, as a library's unmasking copy), and then writes the frame back
(still masked: the load generator accepts that). Nothing is parsed beyond lengths, no
coroutine is woken. The canned handshake is the limit row's.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any

import _common
from echo_limit import Echo, serve_protocol


def frame_size(buf: bytearray, pos: int) -> int:
    """The size of the frame at ``pos`` (header included), or 0 if its header is not
    complete yet."""
    left = len(buf) - pos
    if left < 2:
        return 0
    b1 = buf[pos + 1]
    length = b1 & 0x7F
    size = 2 + (4 if b1 & 0x80 else 0)
    if length == 126:
        if left < 4:
            return 0
        length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
        size += 2
    elif length == 127:
        if left < 10:
            return 0
        length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
        size += 8
    return size + length


class StoreAndForward(Echo):
    def __init__(self) -> None:
        super().__init__()
        self.buf = bytearray()

    def echo(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        buf = self.buf
        buf += data
        pos = 0
        while True:
            size = frame_size(buf, pos)
            if not size or len(buf) - pos < size:
                break
            pos += size
        if pos == len(buf):
            # Every frame complete: hand the buffer itself over, start a new one.
            transport.write(buf)
            self.buf = bytearray()
        elif pos:
            # Every complete frame in one write; the incomplete rest stays.
            transport.write(buf[:pos])
            del buf[:pos]


def start(port: int, compression: bool) -> AbstractAsyncContextManager[Any]:
    if compression:
        raise SystemExit("the limit server does not do compression")
    return serve_protocol(StoreAndForward, port)


if __name__ == "__main__":
    _common.main(__doc__ or "", start)
