"""tether against Node's ``ws`` 8.x, both ways, over real sockets on 127.0.0.1.

"tether server" tests run ``tests/interop/node/ws_client.js`` (a ``ws`` client, told
what to send on stdin, printing what it saw as JSON) against ``tether.serve``;
"tether client" tests connect ``tether.connect`` to ``tests/interop/node/ws_echo_server.js``
(a ``ws`` echo server that reports each connection's negotiated extensions and close
as JSON lines). Both sides offer or accept permessage-deflate unless a test says not.

The Node packages come from ``bash .ci/install-peers.sh``; without them these tests
are skipped, unless ``TETHER_REQUIRE_PEERS=1`` (then they fail). Every Node process
runs on 127.0.0.1 only, every wait on it is bounded, and it is killed at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import tether

from .conftest import HOST, Probe, Relay, Runner, tether_server, within

NODE_DIR = Path(__file__).parent / "node"
#: bound on one Node peer's whole run (ws_client.js gives up after its own timeout first)
NODE_TIMEOUT = 20.0

#: 64 KiB of repetitive text: deflate shrinks it to a few hundred bytes
REPETITIVE = ("tether interop: the quick brown fox jumps over the lazy dog. " * 1200)[:2**16]

MESSAGES = [
    pytest.param("hello, wörld ✓", id="text"),
    pytest.param(b"\x00\x01\x02\xfe\xff", id="binary"),
    pytest.param("", id="empty-text"),
    pytest.param(b"", id="empty-binary"),
    pytest.param(REPETITIVE, id="text-64KiB-repetitive"),
    pytest.param(REPETITIVE.encode() * 4, id="binary-256KiB-repetitive"),
    pytest.param(bytes(range(256)) * 1024, id="binary-256KiB"),
]

FRAGMENTS = [
    pytest.param(["frag", "mé", "nted ✓"], id="text"),
    pytest.param([b"\x00\x01", b"\x02" * 1000, b"\xff"], id="binary"),
    pytest.param([REPETITIVE[:30000], REPETITIVE[30000:]], id="text-64KiB-repetitive"),
]

#: close codes and reasons sent by the peer or by tether, and whether tether must
#: see the closure as normal
CLOSES = [
    pytest.param(1000, "", True, id="1000"),
    pytest.param(1001, "going away", True, id="1001"),
    pytest.param(4000, "bye ✓", False, id="4000-bye"),
    pytest.param(4002, "é" * 61 + "x", False, id="4002-123-byte-reason"),
]


# ------------------------------------------------------------------------- Node peers


def peers_missing(*, chromium: bool = False) -> str | None:
    """Why the Node peers (and Chromium, if asked) cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (Node.js 20+; then: bash .ci/install-peers.sh)"
    wanted = ["ws", "playwright-core"] if chromium else ["ws"]
    for package in wanted:
        if not (NODE_DIR / "node_modules" / package / "package.json").is_file():
            return (f"{package} is not installed in {NODE_DIR / 'node_modules'} "
                    "(run: bash .ci/install-peers.sh)")
    if chromium and not os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium is not installed (run: bash .ci/install-peers.sh)"
    return None


def require_peers(*, chromium: bool = False) -> None:
    """Skip the test when its peers are missing; fail instead with TETHER_REQUIRE_PEERS=1."""
    reason = peers_missing(chromium=chromium)
    if reason is None:
        return
    if os.environ.get("TETHER_REQUIRE_PEERS") == "1":
        pytest.fail(f"TETHER_REQUIRE_PEERS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _node_peers() -> None:
    require_peers()


def encode(message: str | bytes) -> dict[str, str]:
    """A message in the JSON form the Node scripts read and write."""
    if isinstance(message, str):
        return {"text": message}
    return {"binary": base64.b64encode(message).decode()}


def join(fragments: Sequence[str | bytes]) -> str | bytes:
    """The message that ``fragments`` make up."""
    texts = [f for f in fragments if isinstance(f, str)]
    if len(texts) == len(fragments):
        return "".join(texts)
    return b"".join(f for f in fragments if isinstance(f, bytes))


def decode(message: dict[str, str]) -> str | bytes:
    if "text" in message:
        return message["text"]
    return base64.b64decode(message["binary"])


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 5.0) -> None:
    """End ``proc``: SIGTERM (lets playwright close its browser), then SIGKILL."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    # Read what is left and reap it, so its pipes and transport are closed.
    with contextlib.suppress(asyncio.TimeoutError, ValueError):
        await asyncio.wait_for(proc.communicate(), timeout)


async def run_node(script: str, *args: str, spec: dict[str, Any],
                   timeout: float = NODE_TIMEOUT) -> dict[str, Any]:
    """Run ``node script args...`` with ``spec`` as JSON on stdin; return the JSON object
    it prints last. The process is killed if it outlives ``timeout``."""
    proc = await asyncio.create_subprocess_exec(
        "node", script, *args, cwd=NODE_DIR,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await within(proc.communicate(json.dumps(spec).encode()), timeout)
    finally:
        await stop_process(proc)
    lines = stdout.decode().strip().splitlines()
    assert lines, f"{script} printed nothing (exit {proc.returncode}): {stderr.decode()}"
    result: dict[str, Any] = json.loads(lines[-1])
    result["exit_code"] = proc.returncode
    result["stderr"] = stderr.decode()
    return result


async def node_client(url: str, send: Sequence[str | bytes] = (), *,
                      expect: int | None = None, close: tuple[int, str] | None = (1000, ""),
                      deflate: bool = True) -> dict[str, Any]:
    """Run ws_client.js against ``url``; ``close=None`` waits for the server to close.

    Returns ws_client.js's report, with ``received`` decoded to str / bytes."""
    spec = {
        "send": [encode(m) for m in send],
        "expect": len(send) if expect is None else expect,
        "close": None if close is None else list(close),
        "deflate": deflate,
        "timeout": NODE_TIMEOUT - 5,
    }
    result = await run_node("ws_client.js", url, spec=spec)
    assert result.get("error") is None, result
    result["received"] = [decode(m) for m in result["received"]]
    return result


@dataclass
class NodeServer:
    """ws_echo_server.js, running; ``url`` to connect to, events it reported."""

    proc: asyncio.subprocess.Process
    url: str = ""
    _events: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    _reader: asyncio.Task[None] | None = None

    async def event(self, kind: str) -> dict[str, Any]:
        """The next event of ``kind`` (``connection``, ``close``, ``error``)."""
        while True:
            event = await within(self._events.get())
            if event["event"] == kind:
                return event

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            await self._events.put(json.loads(line))


@contextlib.asynccontextmanager
async def node_server(*args: str) -> AsyncIterator[NodeServer]:
    """Start ws_echo_server.js on 127.0.0.1, a free port; stop it at the end."""
    proc = await asyncio.create_subprocess_exec(
        "node", "ws_echo_server.js", *args, cwd=NODE_DIR,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    server = NodeServer(proc)
    try:
        assert proc.stdout is not None
        line = await within(proc.stdout.readline(), NODE_TIMEOUT)
        assert line, "ws_echo_server.js exited: " + (
            (await within(proc.communicate()))[1].decode()
        )
        listening = json.loads(line)
        assert listening["event"] == "listening"
        server.url = f"ws://{HOST}:{listening['port']}/"
        server._reader = asyncio.get_running_loop().create_task(server._read())
        yield server
    finally:
        # The server exits when its stdin ends; stop_process makes sure of it.
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 2)
        if server._reader is not None:
            server._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await server._reader
        await stop_process(proc)


# --------------------------------------------------------------------- tether helpers


async def tether_echo(ws: tether.ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


def extensions(headers: tether.Headers) -> str | None:
    return headers.get("Sec-WebSocket-Extensions")


@dataclass
class Closed:
    """How a tether connection saw its end."""

    #: what ``async for message in ws`` raised (None: it ended quietly)
    iteration_error: tether.ConnectionClosed | None
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
    return Closed(iteration_error, ws.close_code, ws.close_reason, ws.state)


def check_closed(closed: Closed, code: int, reason: str, ok: bool) -> None:
    if ok:
        assert closed.iteration_error is None, "async for must end quietly on 1000/1001"
    else:
        assert isinstance(closed.iteration_error, tether.ConnectionClosedError)
        assert (closed.iteration_error.code, closed.iteration_error.reason) == (code, reason)
    assert (closed.close_code, closed.close_reason) == (code, reason)
    assert closed.state is tether.State.CLOSED


def recording_offers(offers: list[str | None]
                     ) -> Callable[[tether.ServerConnection, tether.Request], None]:
    """A process_request that records each request's Sec-WebSocket-Extensions."""

    def process_request(ws: tether.ServerConnection, request: tether.Request) -> None:
        offers.append(extensions(request.headers))

    return process_request


# ------------------------------------------------------------- tether server, ws client


@pytest.mark.parametrize("message", MESSAGES)
def test_echo_tether_server(run: Runner, message: str | bytes) -> None:
    async def main() -> None:
        async with tether_server(tether_echo) as url:
            result = await node_client(url, [message, message])
            assert result["received"] == [message, message]
            assert [type(m) for m in result["received"]] == [type(message)] * 2
            assert result["close"] == {"code": 1000, "reason": ""}

    run(main())


def test_many_messages_in_order_tether_server(run: Runner) -> None:
    messages: list[str | bytes] = [f"message {i}" if i % 2 else bytes([i % 256]) * i
                                   for i in range(200)]

    async def main() -> None:
        async with tether_server(tether_echo) as url:
            result = await node_client(url, messages)
            assert result["received"] == messages

    run(main())


def test_compressed_on_the_wire_tether_server(run: Runner) -> None:
    """64 KiB of repetitive text takes a few hundred bytes each way."""

    async def main() -> None:
        async with tether_server(tether_echo) as url, Relay(url) as relay:
            result = await node_client(relay.url, [REPETITIVE] * 3)
            assert result["received"] == [REPETITIVE] * 3
            assert "permessage-deflate" in (result["extensions"] or "")
        # the handshake is a few hundred bytes; 3 uncompressed messages are 192 KiB
        assert relay.upstream < 4000, relay.upstream
        assert relay.downstream < 4000, relay.downstream

    run(main())


def test_uncompressed_on_the_wire_tether_server(run: Runner) -> None:
    async def main() -> None:
        async with tether_server(tether_echo, compression=None) as url, Relay(url) as relay:
            result = await node_client(relay.url, [REPETITIVE])
            assert result["received"] == [REPETITIVE]
        assert relay.upstream > len(REPETITIVE)
        assert relay.downstream > len(REPETITIVE)

    run(main())


@pytest.mark.parametrize("tether_compression", ["deflate", None])
@pytest.mark.parametrize("node_deflate", [True, False], ids=["node-deflate", "node-plain"])
def test_extensions_tether_server(run: Runner, tether_compression: str | None,
                                  node_deflate: bool) -> None:
    """What ws offered, what tether answered, what ws saw: all agree."""

    async def main() -> None:
        offers: list[str | None] = []
        probe: Probe[str | None] = Probe()

        async def answer(ws: tether.ServerConnection) -> str | None:
            assert ws.response is not None
            return extensions(ws.response.headers)

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(answer(ws))
            await tether_echo(ws)

        async with tether_server(handler, compression=tether_compression,
                                 process_request=recording_offers(offers)) as url:
            result = await node_client(url, ["x" * 2000, REPETITIVE], deflate=node_deflate)
            assert result["received"] == ["x" * 2000, REPETITIVE]
            answered = await probe.result()
        assert len(offers) == 1
        if node_deflate:
            # ws's offer: permessage-deflate with client_max_window_bits, no value
            assert offers[0] == "permessage-deflate; client_max_window_bits"
        else:
            assert offers[0] is None
        assert result["extensions"] == answered
        if node_deflate and tether_compression is not None:
            assert answered is not None and answered.startswith("permessage-deflate")
            assert "client_max_window_bits=" in answered
            assert result["negotiated"] == "permessage-deflate"
        else:
            assert answered is None
            assert result["negotiated"] == ""

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["iterable", "async-iterable"])
@pytest.mark.parametrize("fragments", FRAGMENTS)
def test_fragmented_from_tether_server(run: Runner, fragments: list[str | bytes],
                                       asynchronous: bool, compression: str | None) -> None:
    """tether sends an iterable: the ws client gets one message, then the next."""

    async def main() -> None:
        async def pieces() -> AsyncIterator[str | bytes]:
            for fragment in fragments:
                yield fragment

        async def handler(ws: tether.ServerConnection) -> None:
            await ws.send(pieces() if asynchronous else iter(fragments))
            await ws.send("after")
            await ws.wait_closed()

        joined = join(fragments)
        async with tether_server(handler, compression=compression) as url:
            result = await node_client(url, expect=2)
            assert result["received"] == [joined, "after"]

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize(("code", "reason", "ok"), CLOSES)
def test_ws_client_closes_tether_server(run: Runner, code: int, reason: str, ok: bool,
                                        compression: str | None) -> None:
    async def main() -> None:
        probe: Probe[Closed] = Probe()

        async def handler(ws: tether.ServerConnection) -> None:
            await ws.send(await ws.recv())
            await probe.run(observe_closure(ws))

        async with tether_server(handler, compression=compression) as url:
            result = await node_client(url, ["hi"], close=(code, reason))
            assert result["received"] == ["hi"]
            # tether answered the close frame with the same code (RFC 6455 5.5.1; the
            # reason is not echoed): ws reports the close frame it received
            assert result["close"]["code"] == code
            check_closed(await probe.result(), code, reason, ok)

    run(main())


@pytest.mark.parametrize(("code", "reason", "ok"), CLOSES)
def test_tether_server_closes_ws_client(run: Runner, code: int, reason: str, ok: bool) -> None:
    async def main() -> None:
        probe: Probe[tuple[int | None, tether.State]] = Probe()

        async def close(ws: tether.ServerConnection) -> tuple[int | None, tether.State]:
            await ws.send(await ws.recv())
            await within(ws.close(code, reason))
            return ws.close_code, ws.state

        async def handler(ws: tether.ServerConnection) -> None:
            await probe.run(close(ws))

        async with tether_server(handler) as url:
            result = await node_client(url, ["hi"], close=None)
            assert result["received"] == ["hi"]
            assert result["close"] == {"code": code, "reason": reason}
            # ws echoed the code; tether's close() returned after the closing handshake
            assert await probe.result() == (code, tether.State.CLOSED)

    run(main())


# ------------------------------------------------------------- tether client, ws server


@pytest.mark.parametrize("message", MESSAGES)
def test_echo_tether_client(run: Runner, message: str | bytes) -> None:
    async def main() -> None:
        async with node_server() as server, tether.connect(server.url) as ws:
            for _ in range(2):
                await within(ws.send(message))
                echo = await within(ws.recv())
                assert type(echo) is type(message)
                assert echo == message

    run(main())


def test_many_messages_in_order_tether_client(run: Runner) -> None:
    messages: list[str | bytes] = [f"message {i}" if i % 2 else bytes([i % 256]) * i
                                   for i in range(200)]

    async def main() -> None:
        async with node_server() as server, tether.connect(server.url) as ws:
            for message in messages:
                await within(ws.send(message))
            received = [await within(ws.recv()) for _ in messages]
            assert received == messages

    run(main())


def test_compressed_on_the_wire_tether_client(run: Runner) -> None:
    async def main() -> None:
        async with node_server() as server, Relay(server.url) as relay, tether.connect(
            relay.url
        ) as ws:
            for _ in range(3):
                await within(ws.send(REPETITIVE))
                assert await within(ws.recv()) == REPETITIVE
        assert relay.upstream < 4000, relay.upstream
        assert relay.downstream < 4000, relay.downstream

    run(main())


@pytest.mark.parametrize("tether_compression", ["deflate", None])
@pytest.mark.parametrize("node_deflate", [True, False], ids=["node-deflate", "node-plain"])
def test_extensions_tether_client(run: Runner, tether_compression: str | None,
                                  node_deflate: bool) -> None:
    """What tether offered, what ws answered, what tether saw: all agree."""

    async def main() -> None:
        args = () if node_deflate else ("--no-deflate",)
        async with node_server(*args) as server, tether.connect(
            server.url, compression=tether_compression
        ) as ws:
            connection = await server.event("connection")
            await within(ws.send("__extensions__"))
            reported = json.loads(str(await within(ws.recv())))
            assert reported == {"offer": connection["offer"], "accepted": connection["accepted"]}
            for message in ("x" * 2000, REPETITIVE, REPETITIVE.encode()):
                await within(ws.send(message))
                assert await within(ws.recv()) == message
            assert ws.response is not None
            answered = extensions(ws.response.headers)
            assert answered == connection["accepted"]
            assert ws.request is not None
            assert extensions(ws.request.headers) == connection["offer"]
            if tether_compression is None:
                assert connection["offer"] is None
            else:
                # What browsers send.
                assert connection["offer"] == "permessage-deflate; client_max_window_bits"
            if node_deflate and tether_compression is not None:
                assert answered is not None and answered.startswith("permessage-deflate")
            else:
                assert answered is None

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("asynchronous", [False, True], ids=["iterable", "async-iterable"])
@pytest.mark.parametrize("fragments", FRAGMENTS)
def test_fragmented_from_tether_client(run: Runner, fragments: list[str | bytes],
                                       asynchronous: bool, compression: str | None) -> None:
    """tether sends an iterable: ws receives one message (and echoes it)."""

    async def main() -> None:
        async def pieces() -> AsyncIterator[str | bytes]:
            for fragment in fragments:
                yield fragment

        joined = join(fragments)
        async with node_server() as server, tether.connect(
            server.url, compression=compression
        ) as ws:
            await within(ws.send(pieces() if asynchronous else iter(fragments)))
            await within(ws.send("after"))
            assert await within(ws.recv()) == joined
            assert await within(ws.recv()) == "after"

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize("fragments", FRAGMENTS)
def test_fragmented_to_tether_client(run: Runner, fragments: list[str | bytes],
                                     compression: str | None) -> None:
    """ws sends fragments (``fin: false``; compressed ones share one deflate stream):
    tether receives one message."""

    async def main() -> None:
        joined = join(fragments)
        async with node_server() as server, tether.connect(
            server.url, compression=compression
        ) as ws:
            command = "__fragmented__ " + json.dumps([encode(f) for f in fragments])
            await within(ws.send(command))
            await within(ws.send("after"))
            message = await within(ws.recv())
            assert type(message) is type(joined)
            assert message == joined
            assert await within(ws.recv()) == "after"

    run(main())


@pytest.mark.parametrize(("code", "reason", "ok"), CLOSES)
def test_tether_client_closes_ws_server(run: Runner, code: int, reason: str, ok: bool) -> None:
    async def main() -> None:
        async with node_server() as server:
            async with tether.connect(server.url) as ws:
                await within(ws.send("hi"))
                assert await within(ws.recv()) == "hi"
                await within(ws.close(code, reason))
                assert ws.state is tether.State.CLOSED
                assert ws.close_code == code  # ws echoes the code
            closed = await server.event("close")
            assert (closed["code"], closed["reason"]) == (code, reason)

    run(main())


@pytest.mark.parametrize("compression", ["deflate", None])
@pytest.mark.parametrize(("code", "reason", "ok"), CLOSES)
def test_ws_server_closes_tether_client(run: Runner, code: int, reason: str, ok: bool,
                                        compression: str | None) -> None:
    async def main() -> None:
        async with node_server() as server, tether.connect(
            server.url, compression=compression
        ) as ws:
            await within(ws.send(f"__close__ {code} {reason}"))
            check_closed(await within(observe_closure(ws)), code, reason, ok)
            # tether answered the close frame with the same code (not the reason): ws's
            # close event reports that answer, so the closing handshake completed
            closed = await server.event("close")
            assert closed["code"] == code

    run(main())

