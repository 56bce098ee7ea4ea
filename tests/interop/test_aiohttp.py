"""tether against aiohttp 3.x, both ways, over real sockets on 127.0.0.1.

"tether server" tests connect an aiohttp client (``ClientSession.ws_connect``) to
``tether.serve``; "tether client" tests connect ``tether.connect`` to an aiohttp.web app
(``WebSocketResponse`` on an ``AppRunner`` + ``TCPSite``).

aiohttp's client offers permessage-deflate only when asked (``compress=15``); its
server accepts it by default. aiohttp cannot send a fragmented message, so only the
direction tether -> aiohttp is tested for fragments (websockets covers the other).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from multidict import CIMultiDictProxy

import tether

from .conftest import MiB, Probe, Relay, Runner, aiohttp_server, tether_server, within

_rng = random.Random(7692)

#: messages echoed in both directions; the 1 MiB ones are exactly tether's default
#: max_size (a message of max_size bytes is allowed); aiohttp's limit is 4 MiB.
MESSAGES = [
    pytest.param("hello, wörld ✓", id="text"),
    pytest.param(b"\x00\x01\x02\xfe\xff", id="binary"),
    pytest.param("", id="empty-text"),
    pytest.param(b"", id="empty-binary"),
    pytest.param(_rng.randbytes(MiB // 2).hex(), id="text-1MiB"),
    pytest.param("é" * (MiB // 2), id="text-1MiB-2-byte-chars"),
    pytest.param(_rng.randbytes(MiB), id="binary-1MiB"),
]

FRAGMENTS = [
    pytest.param(["frag", "mé", "nted ✓"], id="text"),
    pytest.param([b"\x00\x01", b"", b"\x02" * 1000, b"\xff"], id="binary"),
    pytest.param([_rng.randbytes(MiB // 4) for _ in range(4)], id="binary-1MiB"),
]

#: 64 KiB of repetitive text: compresses to a few hundred bytes
REPETITIVE = ("tether interop: the quick brown fox jumps over the lazy dog. " * 1200)[:2**16]
COMPRESSIBLE: list[str | bytes] = [REPETITIVE, REPETITIVE.encode(), REPETITIVE]
#: bytes each way on the wire for the handshake and COMPRESSIBLE, compressed
COMPRESSED_WIRE_MAX = 2**13

CLOSES = [
    pytest.param(1000, "", True, id="1000"),
    pytest.param(1001, "going away", True, id="1001"),
    pytest.param(4000, "bye", False, id="4000-bye"),
    pytest.param(1011, "oops", False, id="1011"),
    pytest.param(4002, "é" * 61 + "x", False, id="4002-123-byte-reason"),
]
TETHER_CLOSES = [
    pytest.param(1001, "going", id="1001-going"),
    pytest.param(1000, "done", id="1000-done"),
    pytest.param(4001, "custom ✓", id="4001-custom"),
    pytest.param(4002, "é" * 61 + "x", id="4002-123-byte-reason"),
]

AioWebSocket = aiohttp.ClientWebSocketResponse[bool] | web.WebSocketResponse[bool]


# ------------------------------------------------------------------------------ helpers


@contextlib.asynccontextmanager
async def aio_connect(
    url: str, **options: Any
) -> AsyncIterator[tuple[aiohttp.ClientWebSocketResponse[bool], CIMultiDictProxy[str]]]:
    """An aiohttp client connection and the headers of the server's 101 response."""
    responses: list[aiohttp.ClientResponse] = []

    async def on_request_end(session: aiohttp.ClientSession, context: SimpleNamespace,
                             params: aiohttp.TraceRequestEndParams) -> None:
        responses.append(params.response)

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    options.setdefault("timeout", aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2))
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        ws = await within(session.ws_connect(url, **options))
        async with ws:
            assert len(responses) == 1
            yield ws, responses[0].headers


Session = Callable[[web.Request, web.WebSocketResponse], Awaitable[None]]


@contextlib.asynccontextmanager
async def aio_server(session: Session, **ws_options: Any) -> AsyncIterator[str]:
    """An aiohttp.web server running ``session(request, ws)`` for each connection."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(**ws_options)
        await ws.prepare(request)
        await session(request, ws)
        return ws

    async with aiohttp_server(handler) as url:
        yield url


async def aio_send(ws: AioWebSocket, message: str | bytes) -> None:
    if isinstance(message, str):
        await within(ws.send_str(message))
    else:
        await within(ws.send_bytes(message))


async def aio_recv(ws: AioWebSocket) -> str | bytes:
    """The next data message (str for text, bytes for binary); fail on anything else."""
    msg = await within(ws.receive())
    assert msg.type in (WSMsgType.TEXT, WSMsgType.BINARY), f"expected a message, got {msg}"
    data = msg.data
    assert isinstance(data, (str, bytes))
    return data


async def aio_echo(request: web.Request, ws: web.WebSocketResponse) -> None:
    async for msg in ws:
        if msg.type is WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type is WSMsgType.BINARY:
            await ws.send_bytes(msg.data)


async def tether_echo(ws: tether.ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def joined(fragments: Sequence[str | bytes]) -> str | bytes:
    """The message that ``fragments`` make up."""
    texts = [f for f in fragments if isinstance(f, str)]
    if len(texts) == len(fragments):
        return "".join(texts)
    blobs = [f for f in fragments if isinstance(f, bytes)]
    assert len(blobs) == len(fragments), "fragments must be all str or all bytes"
    return b"".join(blobs)


def iterable(fragments: Sequence[str | bytes], asynchronous: bool) -> Any:
    if not asynchronous:
        return (f for f in fragments)

    async def agen() -> AsyncIterator[str | bytes]:
        for fragment in fragments:
            yield fragment

    return agen()


@dataclass
class Closed:
    """How a tether connection saw its end."""

    iteration_error: tether.ConnectionClosed | None
    recv_error: tether.ConnectionClosed
    close_code: int | None
    close_reason: str | None
    state: tether.State


async def observe_closure(ws: tether.Connection) -> Closed:
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


def extensions(headers: Any) -> str | None:
    value = headers.get("Sec-WebSocket-Extensions")
    return None if value is None else str(value)


# ------------------------------------------------------------------------ data messages


@pytest.mark.parametrize("compress", [0, 15], ids=["plain", "deflate"])
@pytest.mark.parametrize("message", MESSAGES)
def test_echo_tether_server(run: Runner, message: str | bytes, compress: int) -> None:
    async def main() -> None:
        async with tether_server(tether_echo) as url, aio_connect(url, compress=compress) as (
            ws, _
        ):
            assert (ws.compress > 0) == (compress > 0)
            await aio_send(ws, message)
            echo = await aio_recv(ws)
            assert type(echo) is type(message)
            assert echo == message

    run(main())


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "deflate"])
@pytest.mark.parametrize("message", MESSAGES)
def test_echo_tether_client(run: Runner, message: str | bytes, compress: bool) -> None:
    async def main() -> None:
        async with aio_server(aio_echo, compress=compress) as url, tether.connect(url) as ws:
            assert ws.response is not None
            assert (extensions(ws.response.headers) is not None) == compress
            await within(ws.send(message))
            echo = await within(ws.recv())
            assert type(echo) is type(message)
            assert echo == message

    run(main())


MANY: list[str | bytes] = [f"message {i}" if i % 2 else bytes([i % 256]) * i
                           for i in range(200)]


def test_many_messages_in_order_tether_server(run: Runner) -> None:
    async def main() -> None:
        async with tether_server(tether_echo) as url, aio_connect(url, compress=15) as (ws, _):
            for message in MANY:
                await aio_send(ws, message)
            assert [await aio_recv(ws) for _ in MANY] == MANY

    run(main())


def test_many_messages_in_order_tether_client(run: Runner) -> None:
    async def main() -> None:
        async with aio_server(aio_echo) as url, tether.connect(url) as ws:
            for message in MANY:
                await within(ws.send(message))
            assert [await within(ws.recv()) for _ in MANY] == MANY

    run(main())


# ------------------------------------------------------------------- fragmented messages


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["iterable", "async-iterable"])
@pytest.mark.parametrize("fragments", FRAGMENTS)
def test_fragmented_from_tether_server(
    run: Runner, fragments: list[str | bytes], asynchronous: bool, compression: str | None
) -> None:
    """tether sends an iterable: the aiohttp client gets one message, then the next."""

    async def main() -> None:
        async def handler(ws: tether.ServerConnection) -> None:
            await ws.send(iterable(fragments, asynchronous))
            await ws.send("after")
            await ws.wait_closed()

        async with tether_server(handler, compression=compression) as url, aio_connect(
            url, compress=15
        ) as (ws, _):
            message = await aio_recv(ws)
            assert type(message) is type(fragments[0])
            assert message == joined(fragments)
            assert await aio_recv(ws) == "after"

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["iterable", "async-iterable"])
@pytest.mark.parametrize("fragments", FRAGMENTS)
def test_fragmented_from_tether_client(
    run: Runner, fragments: list[str | bytes], asynchronous: bool, compression: str | None
) -> None:
    async def main() -> None:
        probe: Probe[tuple[str | bytes, str | bytes]] = Probe()

        async def receive(ws: web.WebSocketResponse) -> tuple[str | bytes, str | bytes]:
            return await aio_recv(ws), await aio_recv(ws)

        async def session(request: web.Request, ws: web.WebSocketResponse) -> None:
            await probe.run(receive(ws))
            await aio_echo(request, ws)

        async with aio_server(session) as url, tether.connect(
            url, compression=compression
        ) as ws:
            await within(ws.send(iterable(fragments, asynchronous)))
            await within(ws.send("after"))
            message, after = await probe.result()
            assert type(message) is type(fragments[0])
            assert message == joined(fragments)
            assert after == "after"

    run(main())


# ------------------------------------------------------------------------------ closing


@pytest.mark.parametrize(("code", "reason", "ok"), CLOSES)
def test_peer_client_closes_tether_server(run: Runner, code: int, reason: str, ok: bool
                                          ) -> None:
    async def main() -> None:
        probe: Probe[Closed] = Probe()

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(observe_closure(ws))

        async with tether_server(handler) as url, aio_connect(url) as (ws, _):
            await within(ws.close(code=code, message=reason.encode()))
            check_closed(await probe.result(), code, reason, ok)
            # tether answered the close frame (echoing the code).
            assert ws.close_code == code

    run(main())


@pytest.mark.parametrize(("code", "reason", "ok"), CLOSES)
def test_peer_server_closes_tether_client(run: Runner, code: int, reason: str, ok: bool
                                          ) -> None:
    async def main() -> None:
        probe: Probe[int | None] = Probe()

        async def close(ws: web.WebSocketResponse) -> int | None:
            await ws.close(code=code, message=reason.encode())
            return ws.close_code

        async def session(request: web.Request, ws: web.WebSocketResponse) -> None:
            await probe.run(close(ws))

        async with aio_server(session) as url, tether.connect(url) as ws:
            check_closed(await within(observe_closure(ws)), code, reason, ok)
            # tether answered the close frame (echoing the code).
            assert await probe.result() == code

    run(main())


@pytest.mark.parametrize(("code", "reason"), TETHER_CLOSES)
def test_tether_server_closes(run: Runner, code: int, reason: str) -> None:
    async def main() -> None:
        probe: Probe[tuple[int | None, tether.State]] = Probe()

        async def close(ws: tether.ServerConnection) -> tuple[int | None, tether.State]:
            await within(ws.close(code, reason))
            return ws.close_code, ws.state

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(close(ws))

        async with tether_server(handler) as url, aio_connect(url) as (ws, _):
            msg = await within(ws.receive())
            assert msg.type is WSMsgType.CLOSE
            assert (msg.data, msg.extra) == (code, reason)
            assert ws.close_code == code
            # aiohttp answered (with 1000): tether's close() returned after the handshake.
            close_code, state = await probe.result()
            assert close_code == 1000
            assert state is tether.State.CLOSED

    run(main())


@pytest.mark.parametrize(("code", "reason"), TETHER_CLOSES)
def test_tether_client_closes(run: Runner, code: int, reason: str) -> None:
    async def main() -> None:
        probe: Probe[tuple[WSMsgType, Any, Any, int | None]] = Probe()

        async def observe(ws: web.WebSocketResponse) -> tuple[WSMsgType, Any, Any, int | None]:
            msg = await ws.receive()
            return msg.type, msg.data, msg.extra, ws.close_code

        async def session(request: web.Request, ws: web.WebSocketResponse) -> None:
            await probe.run(observe(ws))

        async with aio_server(session) as url, tether.connect(url) as ws:
            await within(ws.close(code, reason))
            assert ws.state is tether.State.CLOSED
            assert ws.close_code == 1000  # aiohttp answers a close frame with 1000
            assert await probe.result() == (WSMsgType.CLOSE, code, reason, code)

    run(main())


# ---------------------------------------------------------------------------- ping/pong


@pytest.mark.parametrize("autoping", [True, False], ids=["autoping", "manual-pong"])
def test_tether_server_pings_peer(run: Runner, autoping: bool) -> None:
    async def main() -> None:
        probe: Probe[tuple[float, float]] = Probe()

        async def ping(ws: tether.ServerConnection) -> tuple[float, float]:
            waiter = await ws.ping(b"tether")
            rtt = await within(waiter)
            await ws.send("done")
            return rtt, ws.latency

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(ping(ws))
            await ws.wait_closed()

        async with tether_server(handler) as url, aio_connect(url, autoping=autoping) as (
            ws, _
        ):
            if not autoping:
                msg = await within(ws.receive())
                assert (msg.type, msg.data) == (WSMsgType.PING, b"tether")
                await within(ws.pong(msg.data))
            # aiohttp answers pings only while receive() runs
            assert await aio_recv(ws) == "done"
            rtt, latency = await probe.result()
            assert 0 <= rtt < 5
            assert latency == rtt

    run(main())


@pytest.mark.parametrize("autoping", [True, False], ids=["autoping", "manual-pong"])
def test_tether_client_pings_peer(run: Runner, autoping: bool) -> None:
    async def main() -> None:
        async def session(request: web.Request, ws: web.WebSocketResponse) -> None:
            if not autoping:
                msg = await ws.receive()
                assert (msg.type, msg.data) == (WSMsgType.PING, b"tether")
                await ws.pong(msg.data)
            await aio_echo(request, ws)

        async with aio_server(session, autoping=autoping) as url, tether.connect(url) as ws:
            waiter = await within(ws.ping(b"tether"))
            rtt = await within(waiter)
            assert 0 <= rtt < 5
            assert ws.latency == rtt

    run(main())


def test_peer_client_pings_tether_server(run: Runner) -> None:
    async def main() -> None:
        async with tether_server(tether_echo) as url, aio_connect(url, autoping=False) as (
            ws, _
        ):
            for data in (b"peer", b"", b"\x00" * 125):
                await within(ws.ping(data))
                msg = await within(ws.receive())
                assert (msg.type, msg.data) == (WSMsgType.PONG, data)

    run(main())


def test_peer_server_pings_tether_client(run: Runner) -> None:
    async def main() -> None:
        probe: Probe[list[tuple[WSMsgType, Any]]] = Probe()

        async def ping(ws: web.WebSocketResponse) -> list[tuple[WSMsgType, Any]]:
            pongs = []
            for data in (b"peer", b"", b"\x00" * 125):
                await ws.ping(data)
                msg = await within(ws.receive())
                pongs.append((msg.type, msg.data))
            return pongs

        async def session(request: web.Request, ws: web.WebSocketResponse) -> None:
            await probe.run(ping(ws))
            await aio_echo(request, ws)

        async with aio_server(session, autoping=False) as url, tether.connect(url):
            assert await probe.result() == [
                (WSMsgType.PONG, b"peer"), (WSMsgType.PONG, b""), (WSMsgType.PONG, b"\x00" * 125)
            ]

    run(main())


# ---------------------------------------------------------------------------- subprotocols


SUBPROTOCOLS = [
    pytest.param(["chat.v2", "chat.v1"], ("chat.v1", "chat.v0"), "chat.v1", id="common"),
    pytest.param(["chat.v2"], ("chat.v1",), None, id="none-in-common"),
    pytest.param(["chat.v1"], (), None, id="none-offered"),
]


@pytest.mark.parametrize(("supported", "offered", "chosen"), SUBPROTOCOLS)
def test_subprotocol_tether_server(
    run: Runner, supported: list[str], offered: tuple[str, ...], chosen: str | None
) -> None:
    async def main() -> None:
        probe: Probe[tuple[str | None, str | None]] = Probe()

        async def record(ws: tether.ServerConnection) -> tuple[str | None, str | None]:
            assert ws.response is not None
            return ws.subprotocol, ws.response.headers.get("Sec-WebSocket-Protocol")

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(record(ws))
            await ws.wait_closed()

        async with tether_server(handler, subprotocols=supported) as url, aio_connect(
            url, protocols=offered
        ) as (ws, headers):
            assert await probe.result() == (chosen, chosen)
            assert ws.protocol == chosen
            assert headers.get("Sec-WebSocket-Protocol") == chosen

    run(main())


def test_subprotocol_tether_client(run: Runner) -> None:
    async def main() -> None:
        probe: Probe[str | None] = Probe()

        async def record(ws: web.WebSocketResponse) -> str | None:
            return ws.ws_protocol

        async def session(request: web.Request, ws: web.WebSocketResponse) -> None:
            await probe.run(record(ws))
            await aio_echo(request, ws)

        async with aio_server(session, protocols=("chat.v1",)) as url, tether.connect(
            url, subprotocols=["chat.v2", "chat.v1"]
        ) as ws:
            assert await probe.result() == "chat.v1"
            assert ws.subprotocol == "chat.v1"
            assert ws.response is not None
            assert ws.response.headers.get("Sec-WebSocket-Protocol") == "chat.v1"

    run(main())


# ----------------------------------------------------------------------------- compression


async def tether_echo_all(ws: tether.Connection, messages: Iterable[str | bytes]) -> None:
    for message in messages:
        await within(ws.send(message))
        echo = await within(ws.recv())
        assert type(echo) is type(message)
        assert echo == message


async def aio_echo_all(ws: AioWebSocket, messages: Iterable[str | bytes]) -> None:
    for message in messages:
        await aio_send(ws, message)
        echo = await aio_recv(ws)
        assert type(echo) is type(message)
        assert echo == message


def test_deflate_by_default_tether_server(run: Runner) -> None:
    """tether's server accepts the deflate offer of aiohttp's client (compress=15)."""

    async def main() -> None:
        probe: Probe[tuple[str | None, str | None]] = Probe()

        async def record(ws: tether.ServerConnection) -> tuple[str | None, str | None]:
            assert ws.request is not None and ws.response is not None
            return extensions(ws.request.headers), extensions(ws.response.headers)

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(record(ws))
            await tether_echo(ws)

        async with tether_server(handler) as url, Relay(url) as relay, aio_connect(
            relay.url, compress=15
        ) as (ws, headers):
            offer, accepted = await probe.result()
            assert offer is not None and offer.startswith("permessage-deflate")
            assert accepted is not None and accepted.startswith("permessage-deflate")
            assert extensions(headers) == accepted
            assert ws.compress > 0  # aiohttp negotiated compression
            await aio_echo_all(ws, COMPRESSIBLE)
            assert 0 < relay.upstream < COMPRESSED_WIRE_MAX
            assert 0 < relay.downstream < COMPRESSED_WIRE_MAX

    run(main())


def test_deflate_by_default_tether_client(run: Runner) -> None:
    async def main() -> None:
        probe: Probe[tuple[str | None, str | None, int]] = Probe()

        async def record(request: web.Request, ws: web.WebSocketResponse
                         ) -> tuple[str | None, str | None, int]:
            return extensions(request.headers), extensions(ws.headers), ws.compress

        async def session(request: web.Request, ws: web.WebSocketResponse) -> None:
            await probe.run(record(request, ws))
            await aio_echo(request, ws)

        async with aio_server(session) as url, Relay(url) as relay, tether.connect(
            relay.url
        ) as ws:
            offer, accepted, compress = await probe.result()
            assert offer is not None and offer.startswith("permessage-deflate")
            assert accepted is not None and accepted.startswith("permessage-deflate")
            assert compress > 0
            assert ws.response is not None
            assert extensions(ws.response.headers) == accepted
            await tether_echo_all(ws, COMPRESSIBLE)
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
VARIED: list[str | bytes] = [
    REPETITIVE, "short", REPETITIVE, _rng.randbytes(3000), "", REPETITIVE[::-1], b"x" * 70000,
]


@pytest.mark.parametrize("settings", DEFLATE_SETTINGS)
def test_deflate_settings_tether_server(run: Runner, settings: tether.Deflate) -> None:
    async def main() -> None:
        async with tether_server(tether_echo, compression=settings) as url, aio_connect(
            url, compress=15
        ) as (ws, headers):
            accepted = extensions(headers)
            assert accepted is not None and accepted.startswith("permessage-deflate")
            assert ws.compress > 0
            await aio_echo_all(ws, VARIED)

    run(main())


@pytest.mark.parametrize("settings", DEFLATE_SETTINGS)
def test_deflate_settings_tether_client(run: Runner, settings: tether.Deflate) -> None:
    async def main() -> None:
        async with aio_server(aio_echo) as url, tether.connect(url, compression=settings) as ws:
            assert ws.response is not None
            accepted = extensions(ws.response.headers)
            assert accepted is not None and accepted.startswith("permessage-deflate")
            await tether_echo_all(ws, VARIED)

    run(main())


@pytest.mark.parametrize("off", ["tether", "peer"])
def test_compression_off_tether_server(run: Runner, off: str) -> None:
    """tether compression=None while aiohttp offers deflate; then the reverse."""

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
        ) as url, Relay(url) as relay, aio_connect(
            relay.url, compress=0 if off == "peer" else 15
        ) as (ws, headers):
            offer, accepted = await probe.result()
            if off == "tether":
                assert offer is not None and offer.startswith("permessage-deflate")
            else:
                assert offer is None
            assert accepted is None
            assert extensions(headers) is None
            assert ws.compress == 0
            await aio_echo_all(ws, COMPRESSIBLE)
            assert relay.upstream > 3 * len(REPETITIVE)
            assert relay.downstream > 3 * len(REPETITIVE)

    run(main())


@pytest.mark.parametrize("off", ["tether", "peer"])
def test_compression_off_tether_client(run: Runner, off: str) -> None:
    """tether compression=None while aiohttp accepts deflate; then the reverse."""

    async def main() -> None:
        probe: Probe[tuple[str | None, str | None, int]] = Probe()

        async def record(request: web.Request, ws: web.WebSocketResponse
                         ) -> tuple[str | None, str | None, int]:
            return extensions(request.headers), extensions(ws.headers), ws.compress

        async def session(request: web.Request, ws: web.WebSocketResponse) -> None:
            await probe.run(record(request, ws))
            await aio_echo(request, ws)

        async with aio_server(session, compress=off != "peer") as url, Relay(
            url
        ) as relay, tether.connect(
            relay.url, compression=None if off == "tether" else "deflate"
        ) as ws:
            offer, accepted, compress = await probe.result()
            if off == "tether":
                assert offer is None
            else:
                assert offer is not None and offer.startswith("permessage-deflate")
            assert accepted is None
            assert compress == 0
            assert ws.response is not None
            assert extensions(ws.response.headers) is None
            await tether_echo_all(ws, COMPRESSIBLE)
            assert relay.upstream > 3 * len(REPETITIVE)
            assert relay.downstream > 3 * len(REPETITIVE)

    run(main())


# -------------------------------------------------------------------------------- limits


TOO_BIG = [
    pytest.param(None, _rng.randbytes(MiB + 1), id="default-max_size-random"),
    pytest.param(2**16, "x" * (2**16 + 1), id="64KiB-max_size-compressible"),
    pytest.param(2**16, _rng.randbytes(2**16 + 1), id="64KiB-max_size-random"),
]


@pytest.mark.parametrize("compress", [15, 0], ids=["deflate", "no-deflate"])
@pytest.mark.parametrize(("max_size", "message"), TOO_BIG)
def test_peer_client_message_too_big_gets_1009(
    run: Runner, max_size: int | None, message: str | bytes, compress: int
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
        async with tether_server(handler, **options) as url, aio_connect(
            url, compress=compress
        ) as (ws, _):
            await aio_send(ws, message)
            msg = await within(ws.receive())
            assert msg.type is WSMsgType.CLOSE
            assert msg.data == 1009
            # (not ws.close_code: tether closes the TCP connection at once after failing
            # it, as RFC 6455 7.1.7 allows, and aiohttp then sets 1006 when its answer
            # to the close frame cannot be written.)
            exc = await probe.result()
            assert isinstance(exc, tether.ConnectionClosedError)
            assert exc.sent_code == 1009
            assert isinstance(exc.__cause__, tether.PayloadTooBig)

    run(main())


@pytest.mark.parametrize("compress", [True, False], ids=["deflate", "no-deflate"])
@pytest.mark.parametrize(("max_size", "message"), TOO_BIG)
def test_peer_server_message_too_big_gets_1009(
    run: Runner, max_size: int | None, message: str | bytes, compress: bool
) -> None:
    async def main() -> None:
        probe: Probe[tuple[WSMsgType, Any]] = Probe()

        async def observe(ws: web.WebSocketResponse) -> tuple[WSMsgType, Any]:
            await aio_send(ws, message)
            msg = await ws.receive()
            # (not ws.close_code: see test_peer_client_message_too_big_gets_1009)
            return msg.type, msg.data

        async def session(request: web.Request, ws: web.WebSocketResponse) -> None:
            await probe.run(observe(ws))

        options: dict[str, Any] = {} if max_size is None else {"max_size": max_size}
        async with aio_server(session, compress=compress) as url, tether.connect(
            url, **options
        ) as ws:
            with pytest.raises(tether.ConnectionClosedError) as info:
                await within(ws.recv())
            assert info.value.sent_code == 1009
            assert isinstance(info.value.__cause__, tether.PayloadTooBig)
            assert await probe.result() == (WSMsgType.CLOSE, 1009)

    run(main())


def test_tether_server_message_too_big_for_peer(run: Runner) -> None:
    """The aiohttp client (max_msg_size 64 KiB) fails the connection with 1009: tether
    sees that code."""

    async def main() -> None:
        probe: Probe[tether.ConnectionClosed] = Probe()

        async def send_big(ws: tether.ServerConnection) -> tether.ConnectionClosed:
            await ws.send(_rng.randbytes(2**16 + 1))
            with pytest.raises(tether.ConnectionClosed) as info:
                await ws.recv()
            return info.value

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(send_big(ws))

        async with tether_server(handler) as url, aio_connect(url, max_msg_size=2**16) as (
            ws, _
        ):
            msg = await within(ws.receive())
            assert msg.type is WSMsgType.ERROR
            exc = await probe.result()
            assert isinstance(exc, tether.ConnectionClosedError)
            assert exc.code == 1009

    run(main())


INVALID_UTF8 = b"caf\xc3 \xff" * 100


@pytest.mark.parametrize("compress", [15, 0], ids=["deflate", "no-deflate"])
def test_peer_client_invalid_utf8_gets_1007(run: Runner, compress: int) -> None:
    async def main() -> None:
        probe: Probe[tether.ConnectionClosed] = Probe()

        async def observe(ws: tether.ServerConnection) -> tether.ConnectionClosed:
            with pytest.raises(tether.ConnectionClosed) as info:
                await ws.recv()
            return info.value

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(observe(ws))

        async with tether_server(handler) as url, aio_connect(url, compress=compress) as (
            ws, _
        ):
            await within(ws.send_frame(INVALID_UTF8, WSMsgType.TEXT))
            msg = await within(ws.receive())
            assert (msg.type, msg.data) == (WSMsgType.CLOSE, 1007)
            exc = await probe.result()
            assert isinstance(exc, tether.ConnectionClosedError)
            assert exc.sent_code == 1007

    run(main())


@pytest.mark.parametrize("compress", [True, False], ids=["deflate", "no-deflate"])
def test_peer_server_invalid_utf8_gets_1007(run: Runner, compress: bool) -> None:
    async def main() -> None:
        probe: Probe[tuple[WSMsgType, Any]] = Probe()

        async def observe(ws: web.WebSocketResponse) -> tuple[WSMsgType, Any]:
            await ws.send_frame(INVALID_UTF8, WSMsgType.TEXT)
            msg = await ws.receive()
            return msg.type, msg.data

        async def session(request: web.Request, ws: web.WebSocketResponse) -> None:
            await probe.run(observe(ws))

        async with aio_server(session, compress=compress) as url, tether.connect(url) as ws:
            with pytest.raises(tether.ConnectionClosedError) as info:
                await within(ws.recv())
            assert info.value.sent_code == 1007
            assert await probe.result() == (WSMsgType.CLOSE, 1007)

    run(main())


# ----------------------------------------------------------------------------- handshake


def test_tether_client_rejected_with_403(run: Runner) -> None:
    async def main() -> None:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(status=403, text="Forbidden: no token\n")

        async with aiohttp_server(handler) as url:
            with pytest.raises(tether.InvalidStatus) as info:
                await within(tether.connect(url))
            assert info.value.response.status == 403
            assert b"Forbidden: no token" in info.value.response.body

    run(main())


def test_peer_client_rejected_by_tether_with_403(run: Runner) -> None:
    async def main() -> None:
        def process_request(ws: tether.ServerConnection, request: tether.Request
                            ) -> tether.Response:
            return ws.respond(403, "Forbidden: no token\n")

        async with tether_server(tether_echo, process_request=process_request) as url:
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                async with aio_connect(url):
                    pass
            assert info.value.status == 403

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

        async with tether_server(handler) as url, aio_connect(
            url, compress=15, autoping=False
        ) as (ws, _):
            await aio_echo_all(ws, ["hello", b"\x00\xff"])
            await within(ws.ping(b"peer"))
            msg = await within(ws.receive())
            assert (msg.type, msg.data) == (WSMsgType.PONG, b"peer")
            await aio_send(ws, "done")
            assert await aio_recv(ws) == "fragmented"
            msg = await within(ws.receive())
            assert (msg.type, msg.data) == (WSMsgType.PING, b"tether")
            await within(ws.pong(msg.data))
            msg = await within(ws.receive())
            assert (msg.type, msg.data, msg.extra) == (WSMsgType.CLOSE, 1001, "going")
            assert 0 <= await probe.result() < 5

    run_uvloop(main())


def test_uvloop_session_tether_client(run_uvloop: Runner) -> None:
    """On uvloop: echo text and binary, ping both ways, a fragmented message, close."""

    async def main() -> None:
        probe: Probe[tuple[WSMsgType, Any, Any]] = Probe()

        async def observe(ws: web.WebSocketResponse) -> tuple[WSMsgType, Any, Any]:
            for _ in range(2):
                await aio_send(ws, await aio_recv(ws))
            assert await aio_recv(ws) == "done"
            await ws.ping(b"peer")
            msg = await within(ws.receive())
            assert (msg.type, msg.data) == (WSMsgType.PONG, b"peer")
            await ws.send_str("fragmented")
            msg = await within(ws.receive())
            assert (msg.type, msg.data) == (WSMsgType.PING, b"tether")
            await ws.pong(msg.data)
            msg = await within(ws.receive())
            return msg.type, msg.data, msg.extra

        async def session(request: web.Request, ws: web.WebSocketResponse) -> None:
            await probe.run(observe(ws))

        async with aio_server(session, autoping=False) as url, tether.connect(url) as ws:
            await tether_echo_all(ws, ["hello", b"\x00\xff"])
            await within(ws.send(iter(["do", "ne"])))
            assert await within(ws.recv()) == "fragmented"
            assert 0 <= await within(await ws.ping(b"tether")) < 5
            await within(ws.close(1001, "going"))
            assert await probe.result() == (WSMsgType.CLOSE, 1001, "going")

    run_uvloop(main())
