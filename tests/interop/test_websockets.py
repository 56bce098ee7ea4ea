"""tether against websockets 17.x, both ways, over real sockets on 127.0.0.1.

"tether server" tests connect a websockets client (``websockets.asyncio.client.connect``)
to ``tether.serve``; "tether client" tests connect ``tether.connect`` to a websockets
server (``websockets.asyncio.server.serve``).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection as WsClient
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection as WsServerConnection
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import ConnectionClosedError as WsClosedError
from websockets.exceptions import ConnectionClosedOK as WsClosedOK
from websockets.exceptions import InvalidStatus as WsInvalidStatus
from websockets.http11 import Request as WsRequest
from websockets.http11 import Response as WsResponse

import tether

from .conftest import MiB, Probe, Relay, Runner, tether_server, websockets_server, within

_rng = random.Random(6455)

#: messages echoed in both directions; the 1 MiB ones are exactly tether's default
#: max_size (a message of max_size bytes is allowed), the peer's limit is raised.
MESSAGES = [
    pytest.param("hello, wörld ✓", id="text"),
    pytest.param(b"\x00\x01\x02\xfe\xff", id="binary"),
    pytest.param("", id="empty-text"),
    pytest.param(b"", id="empty-binary"),
    pytest.param(_rng.randbytes(MiB // 2).hex(), id="text-1MiB"),
    pytest.param("é" * (MiB // 2), id="text-1MiB-2-byte-chars"),
    pytest.param(_rng.randbytes(MiB), id="binary-1MiB"),
]
PEER_MAX_SIZE = 4 * MiB

#: fragments of one message
FRAGMENTS = [
    pytest.param(["frag", "mé", "nted ✓"], id="text"),
    pytest.param([b"\x00\x01", b"\x02" * 1000, b"\xff"], id="binary"),
    pytest.param([_rng.randbytes(MiB // 4) for _ in range(4)], id="binary-1MiB"),
]

#: 64 KiB of repetitive text: compresses to a few hundred bytes
REPETITIVE = ("tether interop: the quick brown fox jumps over the lazy dog. " * 1200)[:2**16]

#: close codes a peer sends, and whether tether must see the closure as normal
CLOSES = [
    pytest.param(1000, "", True, id="1000"),
    pytest.param(1001, "going away", True, id="1001"),
    pytest.param(4000, "bye", False, id="4000-bye"),
    pytest.param(1011, "oops", False, id="1011"),
    pytest.param(4002, "é" * 61 + "x", False, id="4002-123-byte-reason"),
]


def ws_client(url: str, **options: Any) -> ws_connect:
    """A websockets client; a short close timeout keeps a failing test short."""
    options.setdefault("close_timeout", 2)
    return ws_connect(url, **options)


def joined(fragments: Sequence[str | bytes]) -> str | bytes:
    """The message that ``fragments`` make up."""
    texts = [f for f in fragments if isinstance(f, str)]
    if len(texts) == len(fragments):
        return "".join(texts)
    blobs = [f for f in fragments if isinstance(f, bytes)]
    assert len(blobs) == len(fragments), "fragments must be all str or all bytes"
    return b"".join(blobs)


def iterable(fragments: Sequence[str | bytes], asynchronous: bool) -> Any:
    """``fragments`` as a plain iterable (a generator) or as an async iterable."""
    if not asynchronous:
        return (f for f in fragments)

    async def agen() -> AsyncIterator[str | bytes]:
        for fragment in fragments:
            yield fragment

    return agen()


async def tether_echo(ws: tether.ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def ws_echo(ws: WsServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


@dataclass
class Closed:
    """How a tether connection saw its end."""

    #: what ``async for message in ws`` raised (None: it ended quietly)
    iteration_error: tether.ConnectionClosed | None
    #: what ``recv()`` raised afterwards
    recv_error: tether.ConnectionClosed
    close_code: int | None
    close_reason: str | None
    state: tether.State


async def observe_closure(ws: tether.Connection) -> Closed:
    """Read until the peer closes; report how the closure looked from tether."""
    iteration_error = None
    try:
        async for _ in ws:
            pass
    except tether.ConnectionClosed as exc:
        iteration_error = exc
    with pytest.raises(tether.ConnectionClosed) as info:
        await within(ws.recv())
    return Closed(iteration_error, info.value, ws.close_code, ws.close_reason, ws.state)


def check_closed(closed: Closed, code: int, reason: str, ok: bool) -> None:
    expected = tether.ConnectionClosedOK if ok else tether.ConnectionClosedError
    if ok:
        assert closed.iteration_error is None, "async for must end quietly on 1000/1001"
    else:
        assert isinstance(closed.iteration_error, tether.ConnectionClosedError)
        assert (closed.iteration_error.code, closed.iteration_error.reason) == (code, reason)
    assert type(closed.recv_error) is expected
    assert (closed.recv_error.code, closed.recv_error.reason) == (code, reason)
    assert (closed.close_code, closed.close_reason) == (code, reason)
    assert closed.state is tether.State.CLOSED


# ------------------------------------------------------------------------ data messages


@pytest.mark.parametrize("message", MESSAGES)
def test_echo_tether_server(run: Runner, message: str | bytes) -> None:
    async def main() -> None:
        async with tether_server(tether_echo) as url, ws_client(
            url, max_size=PEER_MAX_SIZE
        ) as ws:
            await within(ws.send(message))
            echo = await within(ws.recv())
            assert type(echo) is type(message)
            assert echo == message

    run(main())


@pytest.mark.parametrize("message", MESSAGES)
def test_echo_tether_client(run: Runner, message: str | bytes) -> None:
    async def main() -> None:
        async with websockets_server(ws_echo, max_size=PEER_MAX_SIZE) as url, tether.connect(
            url
        ) as ws:
            await within(ws.send(message))
            echo = await within(ws.recv())
            assert type(echo) is type(message)
            assert echo == message

    run(main())


def test_many_messages_in_order_tether_server(run: Runner) -> None:
    messages: list[str | bytes] = [f"message {i}" if i % 2 else bytes([i % 256]) * i
                                   for i in range(200)]

    async def main() -> None:
        async with tether_server(tether_echo) as url, ws_client(url) as ws:
            for message in messages:
                await within(ws.send(message))
            received = [await within(ws.recv()) for _ in messages]
            assert received == messages

    run(main())


def test_many_messages_in_order_tether_client(run: Runner) -> None:
    messages: list[str | bytes] = [f"message {i}" if i % 2 else bytes([i % 256]) * i
                                   for i in range(200)]

    async def main() -> None:
        async with websockets_server(ws_echo) as url, tether.connect(url) as ws:
            for message in messages:
                await within(ws.send(message))
            received = [await within(ws.recv()) for _ in messages]
            assert received == messages

    run(main())


# ------------------------------------------------------------------- fragmented messages


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["iterable", "async-iterable"])
@pytest.mark.parametrize("fragments", FRAGMENTS)
def test_fragmented_from_tether_server(
    run: Runner, fragments: list[str | bytes], asynchronous: bool, compression: str | None
) -> None:
    """tether sends an iterable: the websockets client gets one message, then the next.

    Uncompressed, each fragment is a frame of its own (recv_streaming shows them)."""

    async def main() -> None:
        async def handler(ws: tether.ServerConnection) -> None:
            await ws.send(iterable(fragments, asynchronous))
            await ws.send("after")
            await ws.wait_closed()

        async with tether_server(handler, compression=compression) as url, ws_client(
            url, max_size=PEER_MAX_SIZE
        ) as ws:
            received = [f async for f in ws.recv_streaming()]
            assert joined(received) == joined(fragments)
            assert type(joined(received)) is type(fragments[0])
            if compression is None:
                assert received == fragments
            assert await within(ws.recv()) == "after"

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["iterable", "async-iterable"])
@pytest.mark.parametrize("fragments", FRAGMENTS)
def test_fragmented_from_tether_client(
    run: Runner, fragments: list[str | bytes], asynchronous: bool, compression: str | None
) -> None:
    async def main() -> None:
        probe: Probe[tuple[list[str | bytes], str | bytes]] = Probe()

        async def receive(ws: WsServerConnection) -> tuple[list[str | bytes], str | bytes]:
            received = [f async for f in ws.recv_streaming()]
            return received, await ws.recv()

        async def handler(ws: WsServerConnection) -> None:
            await probe.run(receive(ws))

        async with websockets_server(handler, max_size=PEER_MAX_SIZE) as url, tether.connect(
            url, compression=compression
        ) as ws:
            await within(ws.send(iterable(fragments, asynchronous)))
            await within(ws.send("after"))
            received, after = await probe.result()
            assert joined(received) == joined(fragments)
            assert type(joined(received)) is type(fragments[0])
            if compression is None:
                assert received == fragments
            assert after == "after"

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("fragments", FRAGMENTS)
def test_fragmented_to_tether_server(
    run: Runner, fragments: list[str | bytes], compression: str | None
) -> None:
    """websockets sends an iterable: tether receives one message, then the next."""

    async def main() -> None:
        probe: Probe[tuple[str | bytes, str | bytes]] = Probe()

        async def receive(ws: tether.ServerConnection) -> tuple[str | bytes, str | bytes]:
            return await ws.recv(), await ws.recv()

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(receive(ws))
            await ws.wait_closed()

        async with tether_server(handler) as url, ws_client(
            url, compression=compression
        ) as ws:
            await within(ws.send(iter(fragments)))
            await within(ws.send("after"))
            message, after = await probe.result()
            assert type(message) is type(fragments[0])
            assert message == joined(fragments)
            assert after == "after"

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("fragments", FRAGMENTS)
def test_fragmented_to_tether_client(
    run: Runner, fragments: list[str | bytes], compression: str | None
) -> None:
    async def main() -> None:
        async def handler(ws: WsServerConnection) -> None:
            await ws.send(iter(fragments))
            await ws.send("after")
            await ws.wait_closed()

        async with websockets_server(handler, compression=compression) as url, tether.connect(
            url
        ) as ws:
            message = await within(ws.recv())
            assert type(message) is type(fragments[0])
            assert message == joined(fragments)
            assert await within(ws.recv()) == "after"

    run(main())


# ------------------------------------------------------------------------------ closing


@pytest.mark.parametrize(("code", "reason", "ok"), CLOSES)
def test_peer_client_closes_tether_server(run: Runner, code: int, reason: str, ok: bool
                                          ) -> None:
    async def main() -> None:
        probe: Probe[Closed] = Probe()

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(observe_closure(ws))

        async with tether_server(handler) as url, ws_client(url) as ws:
            await within(ws.close(code, reason))
            check_closed(await probe.result(), code, reason, ok)
            # tether answered the close frame: the closing handshake completed.
            assert ws.close_code == code

    run(main())


@pytest.mark.parametrize(("code", "reason", "ok"), CLOSES)
def test_peer_server_closes_tether_client(run: Runner, code: int, reason: str, ok: bool
                                          ) -> None:
    async def main() -> None:
        probe: Probe[int | None] = Probe()

        async def close(ws: WsServerConnection) -> int | None:
            await ws.close(code, reason)
            return ws.close_code

        async def handler(ws: WsServerConnection) -> None:
            await probe.run(close(ws))

        async with websockets_server(handler) as url, tether.connect(url) as ws:
            check_closed(await within(observe_closure(ws)), code, reason, ok)
            # tether answered the close frame: the closing handshake completed.
            assert await probe.result() == code

    run(main())


TETHER_CLOSES = [
    pytest.param(1001, "going", WsClosedOK, id="1001-going"),
    pytest.param(1000, "done", WsClosedOK, id="1000-done"),
    pytest.param(4001, "custom ✓", WsClosedError, id="4001-custom"),
    pytest.param(4002, "é" * 61 + "x", WsClosedError, id="4002-123-byte-reason"),
    # 1005: a close frame without a status code
    pytest.param(1005, "", WsClosedOK, id="1005-no-status"),
]


@pytest.mark.parametrize(("code", "reason", "peer_exc"), TETHER_CLOSES)
def test_tether_server_closes(run: Runner, code: int, reason: str,
                              peer_exc: type[WsClosed]) -> None:
    async def main() -> None:
        probe: Probe[tuple[int | None, tether.State]] = Probe()

        async def close(ws: tether.ServerConnection) -> tuple[int | None, tether.State]:
            await within(ws.close(code, reason))
            return ws.close_code, ws.state

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(close(ws))

        async with tether_server(handler) as url, ws_client(url) as ws:
            with pytest.raises(peer_exc) as info:
                await within(ws.recv())
            assert info.value.rcvd is not None
            assert (info.value.rcvd.code, info.value.rcvd.reason) == (code, reason)
            assert (ws.close_code, ws.close_reason) == (code, reason)
            # websockets echoes the code; tether's close() returned after the handshake.
            assert await probe.result() == (code, tether.State.CLOSED)

    run(main())


@pytest.mark.parametrize(("code", "reason", "peer_exc"), TETHER_CLOSES)
def test_tether_client_closes(run: Runner, code: int, reason: str,
                              peer_exc: type[WsClosed]) -> None:
    async def main() -> None:
        probe: Probe[WsClosed] = Probe()

        async def observe(ws: WsServerConnection) -> WsClosed:
            with pytest.raises(WsClosed) as info:
                await ws.recv()
            return info.value

        async def handler(ws: WsServerConnection) -> None:
            await probe.run(observe(ws))

        async with websockets_server(handler) as url, tether.connect(url) as ws:
            await within(ws.close(code, reason))
            assert ws.state is tether.State.CLOSED
            assert ws.close_code == code  # websockets echoes the code
            exc = await probe.result()
            assert type(exc) is peer_exc
            assert exc.rcvd is not None
            assert (exc.rcvd.code, exc.rcvd.reason) == (code, reason)

    run(main())


def test_tether_server_shutdown_closes_peer_with_1001(run: Runner) -> None:
    async def main() -> None:
        server = await tether.serve(tether_echo, "127.0.0.1", 0)
        try:
            async with ws_client(f"ws://127.0.0.1:{server.port}/") as ws:
                await within(ws.send("hi"))
                assert await within(ws.recv()) == "hi"
                server.close()
                with pytest.raises(WsClosedOK):
                    await within(ws.recv())
                assert ws.close_code == 1001
        finally:
            server.close()
            await within(server.wait_closed())

    run(main())


# ---------------------------------------------------------------------------- ping/pong


@pytest.mark.parametrize("data", [b"tether", None], ids=["data", "no-data"])
def test_tether_server_pings_peer(run: Runner, data: bytes | None) -> None:
    async def main() -> None:
        probe: Probe[tuple[float, float]] = Probe()

        async def ping(ws: tether.ServerConnection) -> tuple[float, float]:
            waiter = await ws.ping(data)
            rtt = await within(waiter)
            return rtt, ws.latency

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(ping(ws))
            await ws.wait_closed()

        async with tether_server(handler) as url, ws_client(url):
            rtt, latency = await probe.result()
            assert 0 <= rtt < 5
            assert latency == rtt

    run(main())


@pytest.mark.parametrize("data", [b"tether", None], ids=["data", "no-data"])
def test_tether_client_pings_peer(run: Runner, data: bytes | None) -> None:
    async def main() -> None:
        async with websockets_server(ws_echo) as url, tether.connect(url) as ws:
            waiter = await within(ws.ping(data))
            rtt = await within(waiter)
            assert 0 <= rtt < 5
            assert ws.latency == rtt

    run(main())


def test_peer_client_pings_tether_server(run: Runner) -> None:
    async def main() -> None:
        async with tether_server(tether_echo) as url, ws_client(url) as ws:
            for data in (b"peer", b"", "text ping"):
                # websockets resolves the waiter only on a pong carrying the same data.
                rtt = await within(await ws.ping(data))
                assert 0 <= rtt < 5

    run(main())


def test_peer_server_pings_tether_client(run: Runner) -> None:
    async def main() -> None:
        probe: Probe[list[float]] = Probe()

        async def ping(ws: WsServerConnection) -> list[float]:
            return [await within(await ws.ping(data)) for data in (b"peer", b"", "text ping")]

        async def handler(ws: WsServerConnection) -> None:
            await probe.run(ping(ws))
            await ws.wait_closed()

        async with websockets_server(handler) as url, tether.connect(url):
            rtts = await probe.result()
            assert all(0 <= rtt < 5 for rtt in rtts)

    run(main())


# ---------------------------------------------------------------------------- subprotocols


SUBPROTOCOLS = [
    pytest.param(["chat.v2", "chat.v1"], ["chat.v1", "chat.v0"], "chat.v1", id="common"),
    pytest.param(["chat.v2"], ["chat.v1"], None, id="none-in-common"),
    pytest.param(["chat.v1"], None, None, id="none-offered"),
]


@pytest.mark.parametrize(("supported", "offered", "chosen"), SUBPROTOCOLS)
def test_subprotocol_tether_server(
    run: Runner, supported: list[str], offered: list[str] | None, chosen: str | None
) -> None:
    async def main() -> None:
        probe: Probe[tuple[str | None, str | None]] = Probe()

        async def record(ws: tether.ServerConnection) -> tuple[str | None, str | None]:
            assert ws.response is not None
            return ws.subprotocol, ws.response.headers.get("Sec-WebSocket-Protocol")

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(record(ws))
            await ws.wait_closed()

        async with tether_server(handler, subprotocols=supported) as url, ws_client(
            url, subprotocols=offered
        ) as ws:
            assert await probe.result() == (chosen, chosen)
            assert ws.subprotocol == chosen
            assert ws.response is not None
            assert ws.response.headers.get("Sec-WebSocket-Protocol") == chosen

    run(main())


def test_subprotocol_tether_client(run: Runner) -> None:
    async def main() -> None:
        probe: Probe[str | None] = Probe()

        async def record(ws: WsServerConnection) -> str | None:
            return ws.subprotocol

        async def handler(ws: WsServerConnection) -> None:
            await probe.run(record(ws))
            await ws.wait_closed()

        async with websockets_server(
            handler, subprotocols=["chat.v1"]
        ) as url, tether.connect(url, subprotocols=["chat.v2", "chat.v1"]) as ws:
            assert await probe.result() == "chat.v1"
            assert ws.subprotocol == "chat.v1"
            assert ws.response is not None
            assert ws.response.headers.get("Sec-WebSocket-Protocol") == "chat.v1"

    run(main())


# ----------------------------------------------------------------------------- compression


COMPRESSIBLE: list[str | bytes] = [REPETITIVE, REPETITIVE.encode(), REPETITIVE]
#: bytes each way on the wire for the handshake and COMPRESSIBLE, compressed: far less
#: than one of the messages
COMPRESSED_WIRE_MAX = 2**13


async def echo_all(ws: tether.Connection | WsClient, messages: Iterable[str | bytes]) -> None:
    for message in messages:
        await within(ws.send(message))
        echo = await within(ws.recv())
        assert type(echo) is type(message)
        assert echo == message


def extensions(headers: Any) -> str | None:
    value = headers.get("Sec-WebSocket-Extensions")
    return None if value is None else str(value)


def test_deflate_by_default_tether_server(run: Runner) -> None:
    async def main() -> None:
        probe: Probe[tuple[str | None, str | None]] = Probe()

        async def record(ws: tether.ServerConnection) -> tuple[str | None, str | None]:
            assert ws.request is not None and ws.response is not None
            return extensions(ws.request.headers), extensions(ws.response.headers)

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(record(ws))
            await tether_echo(ws)

        async with tether_server(handler) as url, Relay(url) as relay, ws_client(
            relay.url
        ) as ws:
            offer, accepted = await probe.result()
            assert offer is not None and offer.startswith("permessage-deflate")
            assert accepted is not None and accepted.startswith("permessage-deflate")
            assert ws.response is not None
            assert extensions(ws.response.headers) == accepted
            await echo_all(ws, COMPRESSIBLE)
            assert 0 < relay.upstream < COMPRESSED_WIRE_MAX
            assert 0 < relay.downstream < COMPRESSED_WIRE_MAX

    run(main())


def test_deflate_by_default_tether_client(run: Runner) -> None:
    async def main() -> None:
        probe: Probe[tuple[str | None, str | None]] = Probe()

        async def record(ws: WsServerConnection) -> tuple[str | None, str | None]:
            assert ws.request is not None and ws.response is not None
            return extensions(ws.request.headers), extensions(ws.response.headers)

        async def handler(ws: WsServerConnection) -> None:
            await probe.run(record(ws))
            await ws_echo(ws)

        async with websockets_server(handler) as url, Relay(url) as relay, tether.connect(
            relay.url
        ) as ws:
            offer, accepted = await probe.result()
            assert offer is not None and offer.startswith("permessage-deflate")
            assert accepted is not None and accepted.startswith("permessage-deflate")
            assert ws.response is not None
            assert extensions(ws.response.headers) == accepted
            await echo_all(ws, COMPRESSIBLE)
            assert 0 < relay.upstream < COMPRESSED_WIRE_MAX
            assert 0 < relay.downstream < COMPRESSED_WIRE_MAX

    run(main())


DEFLATE_SETTINGS = [
    pytest.param(tether.Deflate(), id="default"),
    pytest.param(tether.Deflate(server_no_context_takeover=True,
                                client_no_context_takeover=True), id="no-context-takeover"),
    pytest.param(tether.Deflate(server_max_window_bits=9, client_max_window_bits=9),
                 id="9-bit-windows"),
    pytest.param(tether.Deflate(server_max_window_bits=15, client_max_window_bits=15,
                                threshold=0), id="15-bit-windows"),
]
#: messages that exercise context takeover and small windows
VARIED: list[str | bytes] = [
    REPETITIVE, "short", REPETITIVE, _rng.randbytes(3000), "", REPETITIVE[::-1], b"x" * 70000,
    # large messages (a compressor of their own) between small ones (context takeover)
    "short", REPETITIVE[:20000], REPETITIVE[:300], REPETITIVE[5:300], _rng.randbytes(40000),
    REPETITIVE[:300],
]


@pytest.mark.parametrize("settings", DEFLATE_SETTINGS)
def test_deflate_settings_tether_server(run: Runner, settings: tether.Deflate) -> None:
    async def main() -> None:
        async with tether_server(tether_echo, compression=settings) as url, ws_client(
            url
        ) as ws:
            assert ws.response is not None
            accepted = extensions(ws.response.headers)
            assert accepted is not None and accepted.startswith("permessage-deflate")
            await echo_all(ws, VARIED)

    run(main())


@pytest.mark.parametrize("settings", DEFLATE_SETTINGS)
def test_deflate_settings_tether_client(run: Runner, settings: tether.Deflate) -> None:
    async def main() -> None:
        async with websockets_server(ws_echo) as url, tether.connect(
            url, compression=settings
        ) as ws:
            assert ws.response is not None
            accepted = extensions(ws.response.headers)
            assert accepted is not None and accepted.startswith("permessage-deflate")
            await echo_all(ws, VARIED)

    run(main())


@pytest.mark.parametrize("off", ["tether", "peer"])
def test_compression_off_tether_server(run: Runner, off: str) -> None:
    """tether compression=None while the peer offers deflate; then the reverse."""

    async def main() -> None:
        probe: Probe[tuple[str | None, str | None]] = Probe()

        async def record(ws: tether.ServerConnection) -> tuple[str | None, str | None]:
            assert ws.request is not None and ws.response is not None
            return extensions(ws.request.headers), extensions(ws.response.headers)

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(record(ws))
            await tether_echo(ws)

        async with tether_server(
            handler, compression=None if off == "tether" else "deflate"
        ) as url, Relay(url) as relay, ws_client(
            relay.url, compression=None if off == "peer" else "deflate"
        ) as ws:
            offer, accepted = await probe.result()
            if off == "tether":
                assert offer is not None and offer.startswith("permessage-deflate")
            else:
                assert offer is None
            assert accepted is None
            assert ws.response is not None
            assert extensions(ws.response.headers) is None
            await echo_all(ws, COMPRESSIBLE)
            assert relay.upstream > 3 * len(REPETITIVE)
            assert relay.downstream > 3 * len(REPETITIVE)

    run(main())


@pytest.mark.parametrize("off", ["tether", "peer"])
def test_compression_off_tether_client(run: Runner, off: str) -> None:
    """tether compression=None while the peer accepts deflate; then the reverse."""

    async def main() -> None:
        probe: Probe[tuple[str | None, str | None]] = Probe()

        async def record(ws: WsServerConnection) -> tuple[str | None, str | None]:
            assert ws.request is not None and ws.response is not None
            return extensions(ws.request.headers), extensions(ws.response.headers)

        async def handler(ws: WsServerConnection) -> None:
            await probe.run(record(ws))
            await ws_echo(ws)

        async with websockets_server(
            handler, compression=None if off == "peer" else "deflate"
        ) as url, Relay(url) as relay, tether.connect(
            relay.url, compression=None if off == "tether" else "deflate"
        ) as ws:
            offer, accepted = await probe.result()
            if off == "tether":
                assert offer is None
            else:
                assert offer is not None and offer.startswith("permessage-deflate")
            assert accepted is None
            assert ws.response is not None
            assert extensions(ws.response.headers) is None
            await echo_all(ws, COMPRESSIBLE)
            assert relay.upstream > 3 * len(REPETITIVE)
            assert relay.downstream > 3 * len(REPETITIVE)

    run(main())


# -------------------------------------------------------------------------------- limits


TOO_BIG = [
    # (tether's max_size, the message): random data, and data that deflate shrinks to
    # almost nothing (tether must count the bytes after decompression).
    pytest.param(None, _rng.randbytes(MiB + 1), id="default-max_size-random"),
    pytest.param(2**16, "x" * (2**16 + 1), id="64KiB-max_size-compressible"),
    pytest.param(2**16, _rng.randbytes(2**16 + 1), id="64KiB-max_size-random"),
]


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize(("max_size", "message"), TOO_BIG)
def test_peer_client_message_too_big_gets_1009(
    run: Runner, max_size: int | None, message: str | bytes, compression: str | None
) -> None:
    async def main() -> None:
        probe: Probe[tether.ConnectionClosed] = Probe()

        async def observe(ws: tether.ServerConnection) -> tether.ConnectionClosed:
            with pytest.raises(tether.ConnectionClosed) as info:
                await ws.recv()
            return info.value

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(observe(ws))

        options: dict[str, Any] = {} if max_size is None else {"max_size": max_size}
        async with tether_server(handler, **options) as url, ws_client(
            url, compression=compression, max_size=PEER_MAX_SIZE
        ) as ws:
            await within(ws.send(message))
            with pytest.raises(WsClosedError) as info:
                await within(ws.recv())
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1009
            assert ws.close_code == 1009
            exc = await probe.result()
            assert isinstance(exc, tether.ConnectionClosedError)
            assert exc.sent_code == 1009
            assert isinstance(exc.__cause__, tether.PayloadTooBig)

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize(("max_size", "message"), TOO_BIG)
def test_peer_server_message_too_big_gets_1009(
    run: Runner, max_size: int | None, message: str | bytes, compression: str | None
) -> None:
    async def main() -> None:
        probe: Probe[WsClosed] = Probe()

        async def observe(ws: WsServerConnection) -> WsClosed:
            await ws.send(message)
            with pytest.raises(WsClosed) as info:
                await ws.recv()
            return info.value

        async def handler(ws: WsServerConnection) -> None:
            await probe.run(observe(ws))

        options: dict[str, Any] = {} if max_size is None else {"max_size": max_size}
        async with websockets_server(handler, compression=compression) as url, tether.connect(
            url, **options
        ) as ws:
            with pytest.raises(tether.ConnectionClosedError) as info:
                await within(ws.recv())
            assert info.value.sent_code == 1009
            assert isinstance(info.value.__cause__, tether.PayloadTooBig)
            exc = await probe.result()
            assert isinstance(exc, WsClosedError)
            assert exc.rcvd is not None
            assert exc.rcvd.code == 1009

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None])
def test_peer_client_fragmented_message_too_big_gets_1009(
    run: Runner, compression: str | None
) -> None:
    """Every fragment is below tether's max_size, the message is not."""

    async def main() -> None:
        probe: Probe[tether.ConnectionClosed] = Probe()

        async def observe(ws: tether.ServerConnection) -> tether.ConnectionClosed:
            with pytest.raises(tether.ConnectionClosed) as info:
                await ws.recv()
            return info.value

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(observe(ws))

        async with tether_server(handler, max_size=2**16) as url, ws_client(
            url, compression=compression
        ) as ws:
            await within(ws.send(iter([b"x" * 40_000, b"y" * 40_000])))
            with pytest.raises(WsClosedError) as info:
                await within(ws.recv())
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1009
            exc = await probe.result()
            assert isinstance(exc, tether.ConnectionClosedError)
            assert exc.sent_code == 1009

    run(main())


def test_tether_server_message_too_big_for_peer(run: Runner) -> None:
    """The websockets client (max_size 1 MiB) fails the connection with 1009: tether
    sees that code."""

    async def main() -> None:
        probe: Probe[tether.ConnectionClosed] = Probe()

        async def send_big(ws: tether.ServerConnection) -> tether.ConnectionClosed:
            await ws.send(_rng.randbytes(MiB + 1))
            with pytest.raises(tether.ConnectionClosed) as info:
                await ws.recv()
            return info.value

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(send_big(ws))

        async with tether_server(handler) as url, ws_client(url, max_size=MiB) as ws:
            with pytest.raises(WsClosedError):
                await within(ws.recv())
            exc = await probe.result()
            assert isinstance(exc, tether.ConnectionClosedError)
            assert exc.code == 1009

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None])
def test_peer_client_invalid_utf8_gets_1007(run: Runner, compression: str | None) -> None:
    async def main() -> None:
        probe: Probe[tether.ConnectionClosed] = Probe()

        async def observe(ws: tether.ServerConnection) -> tether.ConnectionClosed:
            with pytest.raises(tether.ConnectionClosed) as info:
                await ws.recv()
            return info.value

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(observe(ws))

        async with tether_server(handler) as url, ws_client(
            url, compression=compression
        ) as ws:
            # a text frame whose payload is not UTF-8
            await within(ws.send(b"caf\xc3 \xff" * 100, text=True))
            with pytest.raises(WsClosedError) as info:
                await within(ws.recv())
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1007
            exc = await probe.result()
            assert isinstance(exc, tether.ConnectionClosedError)
            assert exc.sent_code == 1007

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None])
def test_peer_server_invalid_utf8_gets_1007(run: Runner, compression: str | None) -> None:
    async def main() -> None:
        probe: Probe[WsClosed] = Probe()

        async def observe(ws: WsServerConnection) -> WsClosed:
            await ws.send(b"caf\xc3 \xff" * 100, text=True)
            with pytest.raises(WsClosed) as info:
                await ws.recv()
            return info.value

        async def handler(ws: WsServerConnection) -> None:
            await probe.run(observe(ws))

        async with websockets_server(handler, compression=compression) as url, tether.connect(
            url
        ) as ws:
            with pytest.raises(tether.ConnectionClosedError) as info:
                await within(ws.recv())
            assert info.value.sent_code == 1007
            exc = await probe.result()
            assert isinstance(exc, WsClosedError)
            assert exc.rcvd is not None
            assert exc.rcvd.code == 1007

    run(main())


# ----------------------------------------------------------------------------- handshake


def test_tether_client_rejected_with_403(run: Runner) -> None:
    async def main() -> None:
        def process_request(ws: WsServerConnection, request: WsRequest) -> WsResponse:
            return ws.respond(HTTPStatus.FORBIDDEN, "Forbidden: no token\n")

        async with websockets_server(ws_echo, process_request=process_request) as url:
            with pytest.raises(tether.InvalidStatus) as info:
                await within(tether.connect(url))
            assert info.value.response.status == 403
            assert b"Forbidden: no token" in info.value.response.body
            assert "403" in str(info.value)

    run(main())


def test_peer_client_rejected_by_tether_with_403(run: Runner) -> None:
    async def main() -> None:
        def process_request(ws: tether.ServerConnection, request: tether.Request
                            ) -> tether.Response:
            return ws.respond(403, "Forbidden: no token\n")

        async with tether_server(tether_echo, process_request=process_request) as url:
            with pytest.raises(WsInvalidStatus) as info:
                await within(ws_client(url))
            assert info.value.response.status_code == 403
            assert b"Forbidden: no token" in (info.value.response.body or b"")

    run(main())


# ------------------------------------------------------------------------------- uvloop


def test_uvloop_session_tether_server(run_uvloop: Runner) -> None:
    """On uvloop: echo text and binary, ping both ways, a fragmented message, close."""

    async def main() -> None:
        probe: Probe[float] = Probe()

        async def session(ws: tether.ServerConnection) -> float:
            for _ in range(2):
                await ws.send(await ws.recv())
            assert await ws.recv() == "done"
            await ws.send(iter(["frag", "mented"]))
            rtt = await within(await ws.ping(b"tether"))
            await within(ws.close(1001, "going"))
            return rtt

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(session(ws))

        async with tether_server(handler) as url, ws_client(url) as ws:
            await echo_all(ws, ["hello", b"\x00\xff"])
            assert 0 <= await within(await ws.ping(b"peer")) < 5
            await within(ws.send("done"))
            assert await within(ws.recv()) == "fragmented"
            with pytest.raises(WsClosedOK):
                await within(ws.recv())
            assert (ws.close_code, ws.close_reason) == (1001, "going")
            assert 0 <= await probe.result() < 5

    run_uvloop(main())


def test_uvloop_session_tether_client(run_uvloop: Runner) -> None:
    """On uvloop: echo text and binary, ping both ways, a fragmented message, close."""

    async def main() -> None:
        probe: Probe[tuple[float, WsClosed]] = Probe()

        async def session(ws: WsServerConnection) -> tuple[float, WsClosed]:
            for _ in range(2):
                await ws.send(await ws.recv())
            assert await ws.recv() == "done"
            await ws.send(iter(["frag", "mented"]))
            rtt = await within(await ws.ping(b"peer"))
            with pytest.raises(WsClosed) as info:
                await ws.recv()
            return rtt, info.value

        async def handler(ws: WsServerConnection) -> None:
            await probe.run(session(ws))

        async with websockets_server(handler) as url, tether.connect(url) as ws:
            await echo_all(ws, ["hello", b"\x00\xff"])
            assert 0 <= await within(await ws.ping(b"tether")) < 5
            await within(ws.send("done"))
            assert await within(ws.recv()) == "fragmented"
            await within(ws.close(1001, "going"))
            rtt, exc = await probe.result()
            assert 0 <= rtt < 5
            assert isinstance(exc, WsClosedOK)
            assert exc.rcvd is not None
            assert (exc.rcvd.code, exc.rcvd.reason) == (1001, "going")

    run_uvloop(main())
