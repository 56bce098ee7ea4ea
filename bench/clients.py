"""Benchmark WebSocket *client* libraries against one fixed server, in one run.

    python bench/clients.py [--quick] [--clients tether,websockets,...] [--loop asyncio,uvloop]
                            [--json out.json]

The server is fixed and as cheap as this machine allows: picows' callback echo server
(bench/servers/echo_picows.py) on uvloop, in its own process, compression off. Each
measurement runs one client library in a fresh process: it opens one connection and
does sequential round trips (send a binary message, await the echo) for ``--duration``
seconds after a warm-up, then reports round trips per second and its own CPU time per
round trip (user + system, from ``time.process_time``): the client's cost. Clients and
sizes are interleaved over rounds (A B C, then B C A...), medians and spread reported,
every figure also as a ratio to websockets' client in the same run.

Clients: ``tether`` (tether.connect), ``websockets`` (websockets.asyncio.client),
``aiohttp`` (ClientSession.ws_connect), ``picows`` (its callback core: ws_connect with a
WSListener that sends the next message from on_ws_frame) and ``picows-websockets``
(picows' websockets-like API). All with compression off and no size limit. And
``limit-coro``: no library, a raw protocol whose coroutine awaits each echo through a
future (pre-built frame, nothing parsed): the floor of any coroutine client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import run as runner  # noqa: E402  (bench/run.py: server processes, versions, machine)

CLIENTS = ["tether", "websockets", "aiohttp", "picows", "picows-websockets", "limit-coro"]
DISTS = {"picows-websockets": "picows"}
REFERENCE = "websockets"
SIZES = [16, 1024, 64 * 1024]


# ---------------------------------------------------------------- the child process


async def _tether(uri: str, payload: bytes, meter: _Meter) -> None:
    import tether

    async with tether.connect(uri, compression=None, max_size=None, proxy=None) as ws:
        while meter.tick():
            await ws.send(payload)
            await ws.recv()


async def _websockets(uri: str, payload: bytes, meter: _Meter) -> None:
    from websockets.asyncio.client import connect

    async with connect(uri, compression=None, max_size=None, proxy=None) as ws:
        while meter.tick():
            await ws.send(payload)
            await ws.recv()


async def _picows_websockets(uri: str, payload: bytes, meter: _Meter) -> None:
    from picows.websockets.asyncio.client import connect

    async with connect(uri, compression=None, max_size=None, proxy=None) as ws:
        while meter.tick():
            await ws.send(payload)
            await ws.recv()


async def _aiohttp(uri: str, payload: bytes, meter: _Meter) -> None:
    import aiohttp

    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(uri, compress=0, max_msg_size=0, autoping=True) as ws,
    ):
        while meter.tick():
            await ws.send_bytes(payload)
            await ws.receive()


async def _picows(uri: str, payload: bytes, meter: _Meter) -> None:
    import picows

    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    class Client(picows.WSListener):  # type: ignore[misc]
        def on_ws_connected(self, transport: picows.WSTransport) -> None:
            meter.tick()
            transport.send(picows.WSMsgType.BINARY, payload)

        def on_ws_frame(self, transport: picows.WSTransport, frame: picows.WSFrame) -> None:
            if frame.msg_type is not picows.WSMsgType.BINARY:
                return
            if meter.tick():
                transport.send(picows.WSMsgType.BINARY, payload)
            elif not done.done():
                done.set_result(None)

    transport, _ = await picows.ws_connect(Client, uri, max_frame_size=64 * 1024 * 1024)
    try:
        await done
    finally:
        transport.send_close(picows.WSCloseCode.OK)
        transport.disconnect()


async def _limit_coro(uri: str, payload: bytes, meter: _Meter) -> None:
    """No WebSocket library: the floor of a coroutine client on asyncio.

    A raw asyncio.Protocol writes a canned upgrade request, then a pre-built masked frame,
    and the coroutine awaits a future that data_received sets once as many bytes as the
    echo's frame has arrived (nothing parsed, unmasked or copied). What is left is what
    every coroutine API pays per round trip: a write, a read and a task woken through a
    future."""
    import struct

    port = int(uri.rsplit(":", 1)[1].strip("/"))
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x82, 0x80 | size)
        reply = 2 + size
    elif size < 65536:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, size)
        reply = 4 + size
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, size)
        reply = 10 + size
    mask = b"\x37\xfa\x21\x3d"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    frame = head + mask + masked
    loop = asyncio.get_running_loop()

    class Raw(asyncio.Protocol):
        def __init__(self) -> None:
            self.head = b""
            self.open = loop.create_future()
            self.got = 0
            self.waiter: asyncio.Future[None] | None = None

        def data_received(self, data: bytes) -> None:
            if not self.open.done():
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end >= 0:
                    self.got = len(self.head) - end - 4
                    self.open.set_result(None)
                return
            self.got += len(data)
            if self.got >= reply and self.waiter is not None:
                self.waiter.set_result(None)

    transport, raw = await loop.create_connection(Raw, "127.0.0.1", port)
    transport.write(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await raw.open
    try:
        while meter.tick():
            raw.waiter = loop.create_future()
            transport.write(frame)
            await raw.waiter
            raw.got -= reply
    finally:
        transport.close()


RUNNERS: dict[str, Callable[[str, bytes, _Meter], Awaitable[None]]] = {
    "limit-coro": _limit_coro,
    "tether": _tether,
    "websockets": _websockets,
    "aiohttp": _aiohttp,
    "picows": _picows,
    "picows-websockets": _picows_websockets,
}


class _Meter:
    """Counts round trips after the warm-up, until the duration or count is reached."""

    def __init__(self, warmup: float, duration: float, limit: int) -> None:
        self.warm_end = time.perf_counter() + warmup
        self.duration = duration
        self.limit = limit
        self.warming = True
        self.count = 0
        self.start = self.stop = 0.0
        self.cpu_start = self.cpu_stop = 0.0

    def tick(self) -> bool:
        """Called before each round trip (and once after the last); False to stop."""
        now = time.perf_counter()
        if self.warming:
            if now >= self.warm_end:
                self.warming = False
                self.start = now
                self.cpu_start = time.process_time()
            return True
        self.count += 1
        if self.count >= self.limit or now - self.start >= self.duration:
            self.stop = now
            self.cpu_stop = time.process_time()
            return False
        return True


def child(args: argparse.Namespace) -> int:
    payload = bytes(i % 251 for i in range(args.size))
    meter = _Meter(args.warmup, args.duration, args.count)
    uri = f"ws://127.0.0.1:{args.port}/"
    coro = asyncio.wait_for(
        RUNNERS[args.child](uri, payload, meter), args.warmup + args.duration + 30
    )
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
    elapsed = meter.stop - meter.start
    print(
        json.dumps(
            {
                "rate": meter.count / elapsed if elapsed > 0 else 0.0,
                "count": meter.count,
                "client_cpu_us": (meter.cpu_stop - meter.cpu_start) / max(meter.count, 1) * 1e6,
            }
        )
    )
    return 0


# ---------------------------------------------------------------------- the runner


def measure(
    client: str, port: int, size: int, loop: str, args: argparse.Namespace
) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", client]
    cmd += ["--port", str(port), "--size", str(size), "--loop", loop]
    cmd += ["--warmup", str(args.warmup), "--duration", str(args.duration)]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=args.warmup + args.duration + 90,
        env=runner.lib_env("tether" if client == "tether" else client),
        preexec_fn=runner.child_setup(runner.LOADGEN_CPU if args.pin else None),
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise runner.BenchFailure(lines[-1] if lines else f"exit status {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def client_version(client: str) -> str:
    if client == "limit-coro":
        return "-"  # no library
    dist = DISTS.get(client, client)
    code = f"import importlib.metadata as m\nprint(m.version({dist!r}))\n"
    env = runner.lib_env("tether" if client == "tether" else client)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    if proc.returncode != 0:
        raise runner.BenchFailure(f"{dist} is not installed")
    return proc.stdout.strip()


def _version_or_reason(client: str) -> str:
    """The client's version, or "!" and why it cannot be measured."""
    try:
        return client_version(client)
    except runner.BenchFailure as exc:
        return f"!{exc}"


def fmt_size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=1_000_000, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="1 round of 0.5 s")
    parser.add_argument(
        "--clients", default=",".join(CLIENTS), help="comma-separated, from: %(default)s"
    )
    parser.add_argument(
        "--loop",
        default=None,
        help="event loop(s) of the clients: asyncio, uvloop (default: both if uvloop is installed)",
    )
    parser.add_argument(
        "--sizes",
        default=",".join(str(s) for s in SIZES),
        help="message sizes in bytes (default: %(default)s)",
    )
    parser.add_argument("--rounds", type=int, help="default 3, or 1 with --quick")
    parser.add_argument("--duration", type=float, help="seconds per measurement (2, quick 0.5)")
    parser.add_argument("--warmup", type=float, help="uncounted seconds first (0.3, quick 0.1)")
    parser.add_argument(
        "--pin", action="store_true", help="pin the server to CPU 0 and the clients to CPU 1"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (0.5 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.1 if args.quick else 0.3)
    if args.child:
        return child(args)

    has_uvloop = importlib.util.find_spec("uvloop") is not None
    loops = [
        x.strip()
        for x in (args.loop or ("asyncio,uvloop" if has_uvloop else "asyncio")).split(",")
        if x.strip()
    ]
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if unknown := [c for c in clients if c not in CLIENTS]:
        parser.error(f"unknown --clients {unknown}; choose from {CLIENTS}")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    versions: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for client in list(clients):
        version = _version_or_reason(client)
        if version.startswith("!"):
            skipped[client] = version[1:]
            clients.remove(client)
            runner.log(f"!! {version[1:]}; skipping {client}")
        else:
            versions[client] = version
    out_dir = BENCH / "out"
    out_dir.mkdir(exist_ok=True)
    server = runner.ServerProcess(
        "picows",
        "uvloop" if has_uvloop else "asyncio",
        out_dir,
        runner.SERVER_CPU if args.pin else None,
        profile=False,
    )
    samples: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    errors: dict[tuple[str, int, str], list[str]] = {}
    load = [round(x, 2) for x in os.getloadavg()]
    try:
        server.start()
        total = args.rounds * len(loops) * len(sizes) * len(clients)
        done = 0
        for round_no in range(args.rounds):
            order = clients[round_no % len(clients) :] + clients[: round_no % len(clients)]
            for loop in loops:
                for size in sizes:
                    for client in order:
                        done += 1
                        key = (client, size, loop)
                        prefix = (
                            f"[{done}/{total}] round {round_no + 1} {loop:<8} "
                            f"{fmt_size(size):>6} {client:<18}"
                        )
                        try:
                            sample = measure(client, server.port, size, loop, args)
                        except (runner.BenchFailure, subprocess.TimeoutExpired) as exc:
                            errors.setdefault(key, []).append(str(exc))
                            runner.log(f"{prefix} FAILED: {exc}")
                            continue
                        samples.setdefault(key, []).append(sample)
                        runner.log(
                            f"{prefix} {sample['rate']:>10,.0f} round trips/s  "
                            f"client {sample['client_cpu_us']:6.1f} µs/rt"
                        )
    finally:
        server.stop()

    def med(key: tuple[str, int, str], field: str) -> float | None:
        values = [s[field] for s in samples.get(key, [])]
        return statistics.median(values) if values else None

    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"\n## Client libraries — {date}\n")
    print(
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.platform()}, {runner.cpu_model()} x {os.cpu_count()}; server: picows "
        f"{versions.get('picows', '')} callback echo on {server.loop}; one connection, "
        f"sequential round trips; {args.rounds} round(s) of {args.duration} s; revision "
        f"{runner.git_revision()}; load average at start {', '.join(map(str, load))}; "
        + ", ".join(f"{c} {v}" for c, v in versions.items())
        + ".\n"
    )
    for loop in loops:
        print(f"\n### Clients on {loop}\n")
        print("| message | client | round trips/s | spread | vs websockets | client CPU µs/rt |")
        print("|---|---|---:|---:|---:|---:|")
        for size in sizes:
            for client in clients:
                key = (client, size, loop)
                rate = med(key, "rate")
                cpu = med(key, "client_cpu_us")
                rates = [s["rate"] for s in samples.get(key, [])]
                spread = ((max(rates) - min(rates)) / 2 / rate) if rate and len(rates) > 1 else None
                ref = med((REFERENCE, size, loop), "rate")
                cells = [
                    fmt_size(size),
                    client,
                    f"{rate:,.0f}" if rate else "failed",
                    f"±{spread * 100:.1f}%" if spread is not None else "—",
                    f"{rate / ref:.2f}x" if rate and ref else "—",
                    f"{cpu:,.1f}" if cpu is not None else "—",
                ]
                print("| " + " | ".join(cells) + " |")
    print(
        "\nmedian over rounds; spread = ±half the range / median; client CPU = the client "
        "process's user + system time per round trip (the server's is not included)."
    )
    for client, why in skipped.items():
        print(f"\n**{client} not measured**: {why}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": date,
                    "versions": versions,
                    "loops": loops,
                    "results": [
                        {
                            "client": c,
                            "size": s,
                            "loop": lp,
                            "samples": v,
                            "errors": errors.get((c, s, lp), []),
                        }
                        for (c, s, lp), v in samples.items()
                    ],
                },
                indent=2,
            )
            + "\n"
        )
    return 1 if errors or skipped else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
