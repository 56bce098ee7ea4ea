"""Benchmark *sync* (threading) WebSocket clients against one fixed echo server.

    python bench/sync_client.py [--quick] [--clients tether,websockets,websocket-client]
                                [--server websockets] [--sizes 16,1024,65536]
                                [--rounds 5] [--duration 2] [--json out.json] [--pin]

One echo server runs for the whole benchmark in its own process: bench/servers/echo_*.py
(``--server``: websockets by default, or tether), on uvloop when it is installed,
compression off. Each measurement runs one client in a fresh process: it opens one
connection and does sequential round trips (send a binary message, block until the echo
comes back) for ``--duration`` seconds after a warm-up, or ``--count`` round trips,
whichever comes first; it reports round trips per second and its own CPU time per round
trip (user + system of the whole process, its threads included).

Clients: ``tether`` (``tether.sync.connect``), ``websockets``
(``websockets.sync.client.connect``) and ``websocket-client``
(``websocket.create_connection``). All with compression off and no size limit (nor
keepalive pings, where the library sends them). Clients and sizes are interleaved over
rounds (A B C, then B C A...); medians, spread and ratios to websockets' sync client are
printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as runner  # noqa: E402  (bench/run.py: server processes, versions, machine)

CLIENTS = ["tether", "websockets", "websocket-client"]
DISTS = {"tether": "tether", "websockets": "websockets", "websocket-client": "websocket-client"}
SERVERS = ["websockets", "tether"]
REFERENCE = "websockets"
SIZES = [16, 1024, 64 * 1024]


# ---------------------------------------------------------------- the child process


class Meter:
    """Counts round trips after the warm-up, until the duration or the count is reached."""

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


def _tether(uri: str, payload: bytes, meter: Meter) -> None:
    from tether.sync import connect

    with connect(uri, compression=None, max_size=None, ping_interval=None, proxy=None) as ws:
        while meter.tick():
            ws.send(payload)
            ws.recv()


def _websockets(uri: str, payload: bytes, meter: Meter) -> None:
    from websockets.sync.client import connect

    with connect(uri, compression=None, max_size=None, proxy=None) as ws:
        while meter.tick():
            ws.send(payload)
            ws.recv()


def _websocket_client(uri: str, payload: bytes, meter: Meter) -> None:
    import websocket

    ws = websocket.create_connection(uri)
    try:
        while meter.tick():
            ws.send_binary(payload)
            ws.recv()
    finally:
        ws.close()


RUNNERS: dict[str, Callable[[str, bytes, Meter], None]] = {
    "tether": _tether,
    "websockets": _websockets,
    "websocket-client": _websocket_client,
}


def child(args: argparse.Namespace) -> int:
    payload = bytes(i % 251 for i in range(args.size))
    meter = Meter(args.warmup, args.duration, args.count)
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.runcall(RUNNERS[args.child], f"ws://127.0.0.1:{args.port}/", payload, meter)
        profiler.dump_stats(args.profile)
    else:
        RUNNERS[args.child](f"ws://127.0.0.1:{args.port}/", payload, meter)
    elapsed = meter.stop - meter.start
    print(json.dumps({
        "rate": meter.count / elapsed if elapsed > 0 else 0.0,
        "count": meter.count,
        "client_cpu_us": (meter.cpu_stop - meter.cpu_start) / max(meter.count, 1) * 1e6,
    }))
    return 0


# ---------------------------------------------------------------------- the runner


def measure(client: str, port: int, size: int, args: argparse.Namespace,
            profile: Path | None = None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", client]
    cmd += ["--port", str(port), "--size", str(size), "--count", str(args.count)]
    cmd += ["--warmup", str(args.warmup), "--duration", str(args.duration)]
    if profile is not None:
        cmd += ["--profile", str(profile)]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=args.warmup + args.duration + 60,
        env=runner.lib_env("tether" if client == "tether" else client),
        preexec_fn=runner.child_setup(runner.LOADGEN_CPU if args.pin else None),
    )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise runner.BenchFailure(lines[-1] if lines else f"exit status {proc.returncode}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def version(dist: str) -> str:
    if dist == "tether":
        # This checkout's src/, whatever is installed.
        env = runner.lib_env("tether")
        code = "import tether, importlib.metadata as m; print(m.version('tether'))"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, timeout=60, check=False)
        return proc.stdout.strip() or "?"
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "!not installed"


def fmt_size(size: int) -> str:
    return f"{size // 1024} KiB" if size >= 1024 else f"{size} B"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=16, help=argparse.SUPPRESS)
    parser.add_argument("--profile", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="1 round of 0.5 s")
    parser.add_argument("--clients", default=",".join(CLIENTS),
                        help="comma-separated, from: %(default)s")
    parser.add_argument("--server", choices=SERVERS, default="websockets",
                        help="the echo server's library (default: %(default)s)")
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES),
                        help="message sizes in bytes (default: %(default)s)")
    parser.add_argument("--rounds", type=int, help="default 5, or 1 with --quick")
    parser.add_argument("--duration", type=float, help="seconds per measurement (2, quick 0.5)")
    parser.add_argument("--warmup", type=float, help="uncounted seconds first (0.3, quick 0.1)")
    parser.add_argument("--count", type=int, default=1_000_000,
                        help="at most this many round trips per measurement")
    parser.add_argument("--pin", action="store_true",
                        help="pin the server to CPU 0 and the clients to CPU 1")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write results as JSON")
    parser.add_argument("--profile-tether", type=Path, metavar="FILE",
                        help="also run tether's client once per size under cProfile; "
                             "stats to FILE-<size>.prof")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.duration = args.duration or (0.5 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.1 if args.quick else 0.3)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if unknown := [c for c in clients if c not in CLIENTS]:
        sys.exit(f"unknown --clients {unknown}; choose from {CLIENTS}")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    versions = {c: version(DISTS[c]) for c in clients}
    if missing := [c for c, v in versions.items() if v.startswith("!")]:
        sys.exit(f"not installed: {', '.join(missing)}")
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    out_dir = BENCH / "out"
    out_dir.mkdir(exist_ok=True)
    server = runner.ServerProcess(args.server, loop, out_dir,
                                  runner.SERVER_CPU if args.pin else None, profile=False,
                                  tag="-sync-client")
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    errors: dict[tuple[str, int], list[str]] = {}
    load = [round(x, 2) for x in os.getloadavg()]
    started = time.monotonic()
    try:
        server.start()
        total = args.rounds * len(sizes) * len(clients)
        done = 0
        for round_no in range(args.rounds):
            shift = round_no % len(clients)
            order = clients[shift:] + clients[:shift]
            for size in sizes:
                for client in order:
                    done += 1
                    prefix = f"[{done}/{total}] round {round_no + 1} {fmt_size(size):>6} " \
                             f"{client:<17}"
                    try:
                        sample = measure(client, server.port, size, args)
                    except (runner.BenchFailure, subprocess.TimeoutExpired) as exc:
                        errors.setdefault((client, size), []).append(str(exc))
                        runner.log(f"{prefix} FAILED: {exc}")
                        continue
                    samples.setdefault((client, size), []).append(sample)
                    runner.log(f"{prefix} {sample['rate']:>9,.0f} round trips/s  "
                               f"client {sample['client_cpu_us']:6.1f} µs/rt")
        if args.profile_tether:
            for size in sizes:
                path = Path(f"{args.profile_tether}-{size}.prof")
                path.parent.mkdir(parents=True, exist_ok=True)
                measure("tether", server.port, size, args, profile=path)
                runner.log(f"profile of tether's client, {fmt_size(size)}: {path}")
    finally:
        server.stop()
    wall = time.monotonic() - started

    def med(key: tuple[str, int], field: str) -> float | None:
        values = [s[field] for s in samples.get(key, [])]
        return statistics.median(values) if values else None

    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"\n## Sync clients — {date}\n")
    print(
        f"{platform.python_implementation()} {platform.python_version()} on "
        f"{platform.platform()}, {runner.cpu_model()} x {os.cpu_count()}; server: "
        f"{args.server} {version(DISTS[args.server])} echo on {loop} in its own process; "
        f"one connection, sequential round trips; {args.rounds} round(s) of "
        f"{args.duration} s after {args.warmup} s of warm-up; revision "
        f"{runner.git_revision()}; load average at start {', '.join(map(str, load))}; "
        + ", ".join(f"{c} {v}" for c, v in versions.items())
        + f"; {wall:.0f} s in all.\n"
    )
    print("| message | client | round trips/s | spread | vs websockets | client CPU µs/rt |")
    print("|---|---|---:|---:|---:|---:|")
    for size in sizes:
        for client in clients:
            key = (client, size)
            rate, cpu = med(key, "rate"), med(key, "client_cpu_us")
            rates = [s["rate"] for s in samples.get(key, [])]
            spread = (max(rates) - min(rates)) / 2 / rate if rate and len(rates) > 1 else None
            ref = med((REFERENCE, size), "rate")
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
        "process's user + system time per round trip, all its threads (not the server's)."
    )
    if args.json:
        args.json.write_text(json.dumps({
            "date": date,
            "server": {"lib": args.server, "version": version(DISTS[args.server]),
                       "loop": loop},
            "versions": versions,
            "rounds": args.rounds,
            "duration": args.duration,
            "load_average": load,
            "results": [
                {"client": c, "size": s, "samples": v, "errors": errors.get((c, s), [])}
                for (c, s), v in samples.items()
            ],
        }, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
