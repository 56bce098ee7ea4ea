"""Benchmark tether against websockets and against the physical limit, in one run.

    python bench/run.py [--quick] [--libs tether,websockets] [--loop asyncio|uvloop]
                        [--json out.json]

Each server under test (plus the "limit" server: no WebSocket library, bytes echoed
back) runs in its own process; one fixed load generator (bench/loadgen.py) runs in
another for each measurement. Measurements are interleaved across servers, repeated over
rounds, and reported as medians with their spread and their ratios to websockets and to
the limit in the same run. See bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import loadgen

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SERVERS = BENCH / "servers"
HOST = loadgen.HOST

LIBS: dict[str, str] = {
    "tether": "echo_tether.py",
    "websockets": "echo_websockets.py",
    "limit": "echo_limit.py",
}
REFERENCE = "websockets"
LIMIT = "limit"
SERVER_CPU, LOADGEN_CPU = 0, 1  # with --pin: one core each


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    mode: str  # "rt" (round trips) or "handshake"
    size: int = 0
    connections: int = 1
    count: int = 1_000_000  # count limit of one measurement (the time limit is --duration)
    unit: str = "msg/s"


SCENARIOS: list[Scenario] = [
    Scenario("rt16", "round trip 16 B", "rt", size=16),
    Scenario("rt1k", "round trip 1 KiB", "rt", size=1024),
    Scenario("rt64k", "round trip 64 KiB", "rt", size=64 * 1024, count=200_000),
    Scenario("rt1m", "round trip 1 MiB", "rt", size=1024 * 1024, count=10_000),
    Scenario("conc100", "100 connections x round trip 16 B", "rt", size=16, connections=100,
             count=5_000_000),
    Scenario("handshake", "handshakes (open + close, sequential)", "handshake",
             count=200_000, unit="handshakes/s"),
]  # fmt: skip


@dataclass
class Result:
    samples: list[float] = field(default_factory=list)
    server_cpu_us: list[float] = field(default_factory=list)
    loadgen_cpu_us: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def spread(self) -> float | None:
        """Half the range (max - min) relative to the median."""
        median = self.median
        if not median or len(self.samples) < 2:
            return None
        return (max(self.samples) - min(self.samples)) / 2 / median


class BenchFailure(Exception):
    pass


# processes


_libc: Any = None
if sys.platform.startswith("linux"):
    with contextlib.suppress(OSError):
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
PR_SET_PDEATHSIG = 1


def child_setup(cpu: int | None) -> Callable[[], None]:
    """What a child does before exec: pin itself, and die with SIGTERM if we die."""

    def setup() -> None:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        if _libc is not None:
            _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return setup


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def lib_env(lib: str) -> dict[str, str]:
    """tether is always imported from this checkout's src/, so bench/ measures its tree."""
    env = dict(os.environ)
    if lib == "tether":
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p
        )
    return env


def lib_version(lib: str) -> str:
    """The library's version, seen from the environment its server will run in."""
    if lib == LIMIT:
        return "-"
    code = (
        "import importlib, importlib.metadata as m, os, sys\n"
        f"mod = importlib.import_module({lib!r})\n"
        "try:\n"
        f"    v = m.version({lib!r})\n"
        "except m.PackageNotFoundError:\n"
        "    v = getattr(mod, '__version__', '?')\n"
        "print(v, os.path.dirname(mod.__file__ or ''))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=lib_env(lib), timeout=60
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise BenchFailure(f"{lib} cannot be imported by {sys.executable}: {last}")
    return proc.stdout.strip()


def probe(port: int, timeout: float = 2.0) -> None:
    """One real exchange: opening handshake, one echoed message checked byte for byte, close.

    Raises OSError while nothing listens yet, BenchFailure if the server answers wrongly.
    """
    payload = loadgen.make_payload(100, seed=1)
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(loadgen.handshake_request(port))
        reader = sock.makefile("rb")
        status = reader.readline()
        head = [status]
        while head[-1] not in (b"\r\n", b""):
            head.append(reader.readline())
        if not status.startswith(b"HTTP/1.1 101 ") or loadgen.ACCEPT.encode() not in b"".join(head):
            raise BenchFailure(f"bad opening handshake response: {status!r}")
        sock.sendall(loadgen.build_frame(loadgen.OP_BINARY, payload))
        opcode, echoed = read_frame(reader)
        if opcode != loadgen.OP_BINARY or echoed != payload:
            raise BenchFailure(f"bad echo: opcode {opcode}, {len(echoed)} bytes")
        sock.sendall(loadgen.CLOSE_FRAME)
        opcode, _ = read_frame(reader)
        if opcode != loadgen.OP_CLOSE:
            raise BenchFailure(f"expected a close frame, got opcode {opcode}")


def read_frame(reader: Any) -> tuple[int, bytes]:
    def exactly(n: int) -> bytes:
        data: bytes = reader.read(n)
        if len(data) != n:
            raise BenchFailure("connection closed in the middle of a frame")
        return data

    b0, b1 = exactly(2)
    length = b1 & 0x7F
    if length == 126:
        length = int.from_bytes(exactly(2), "big")
    elif length == 127:
        length = int.from_bytes(exactly(8), "big")
    key = exactly(4) if b1 & 0x80 else None
    payload = exactly(length)
    if key is not None:
        payload = loadgen.mask_payload(payload, key)
    return b0 & 0x0F, payload


class ServerProcess:
    """One echo server in its own process, on its own port."""

    def __init__(self, lib: str, loop: str, out_dir: Path, cpu: int | None, profile: bool) -> None:
        self.lib = lib
        self.loop = loop
        self.cpu = cpu
        self.port = free_port()
        self.log_path = out_dir / f"server-{lib}.log"
        self.profile_path = out_dir / f"server-{lib}.prof" if profile else None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 20.0) -> None:
        cmd = [sys.executable, str(SERVERS / LIBS[self.lib])]
        cmd += ["--port", str(self.port), "--loop", self.loop]
        if self.profile_path is not None:
            cmd += ["--profile", str(self.profile_path)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=lib_env(self.lib),
                preexec_fn=child_setup(self.cpu),  # safe: this process has one thread
            )
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float) -> None:
        """Poll the port with a real exchange until it works, the process dies or time's up."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchFailure(f"{self.lib} server exited ({self.proc.returncode})")
            try:
                probe(self.port)
                return
            except OSError as exc:  # not listening yet
                last = exc
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.05)  # the poll interval; returns early if it dies
        raise BenchFailure(f"{self.lib} server not ready after {timeout:.0f} s: {last}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cpu_seconds(self) -> float | None:
        """User + system CPU time used so far by the server process (Linux)."""
        if self.proc is None:
            return None
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def servers_running(
    libs: list[str], args: argparse.Namespace, out_dir: Path, skipped: dict[str, str]
) -> Iterator[dict[str, ServerProcess]]:
    """Start every server (those that fail go to ``skipped``); always stop them all."""
    cpu = SERVER_CPU if args.pin else None
    started: dict[str, ServerProcess] = {}
    try:
        for lib in libs:
            server = ServerProcess(lib, args.loop, out_dir, cpu, args.profile)
            started[lib] = server
            try:
                server.start()
            except BenchFailure as exc:
                log(f"!! {exc}; skipping {lib}. Log {server.log_path}:\n{server.log_tail()}")
                skipped[lib] = f"{exc} (see {server.log_path})"
                server.stop()
                del started[lib]
        yield started
    finally:
        for server in started.values():
            server.stop()


# measuring


def measure(server: ServerProcess, scenario: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(server.port)]
    cmd += ["--mode", scenario.mode, "--size", str(scenario.size)]
    cmd += ["--connections", str(scenario.connections), "--count", str(scenario.count)]
    cmd += ["--warmup", str(args.warmup), "--duration", str(args.duration)]
    cmd += ["--loop", args.loadgen_loop]
    cpu_before = server.cpu_seconds()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=args.warmup + args.duration + 90,
        preexec_fn=child_setup(LOADGEN_CPU if args.pin else None),
    )
    cpu_after = server.cpu_seconds()
    if proc.returncode != 0:
        raise BenchFailure(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    sample: dict[str, Any] = json.loads(proc.stdout)
    if cpu_before is not None and cpu_after is not None and sample["total"]:
        # over warm-up and measurement, per completed message or handshake
        sample["server_cpu_us"] = (cpu_after - cpu_before) / sample["total"] * 1e6
    return sample


def run_all(
    servers: dict[str, ServerProcess], scenarios: list[Scenario], args: argparse.Namespace
) -> dict[str, dict[str, Result]]:
    results = {s.key: {lib: Result() for lib in servers} for s in scenarios}
    libs = list(servers)
    total = args.rounds * len(scenarios) * len(libs)
    done = 0
    for round_no in range(args.rounds):
        order = libs[round_no % len(libs) :] + libs[: round_no % len(libs)]
        for scenario in scenarios:
            for lib in order:  # interleaved: A B C, then B C A, ...
                server = servers[lib]
                done += 1
                prefix = f"[{done}/{total}] round {round_no + 1} {scenario.key:<9} {lib:<10}"
                result = results[scenario.key][lib]
                if not server.alive():
                    result.errors.append("server not running")
                    log(f"{prefix} skipped: server not running")
                    continue
                try:
                    sample = measure(server, scenario, args)
                except (BenchFailure, subprocess.TimeoutExpired) as exc:
                    result.errors.append(str(exc))
                    log(f"{prefix} FAILED: {exc}")
                    if not server.alive():
                        log(f"!! {lib} server died. Log {server.log_path}:\n{server.log_tail()}")
                    continue
                result.samples.append(sample["rate"])
                result.loadgen_cpu_us.append(sample["loadgen_cpu_us"])
                if "server_cpu_us" in sample:
                    result.server_cpu_us.append(sample["server_cpu_us"])
                cpu = sample.get("server_cpu_us")
                cpu_text = f"  server {cpu:7.1f} µs/op" if cpu is not None else ""
                log(f"{prefix} {sample['rate']:>12,.0f} {scenario.unit}{cpu_text}")
    return results


# reporting


def ratio(results: dict[str, Result], lib: str, other: str) -> float | None:
    mine, theirs = results[lib].median, results.get(other, Result()).median
    if mine is None or not theirs:
        return None
    return mine / theirs


def fmt_rate(value: float | None, scenario: Scenario) -> str:
    if value is None:
        return "—"
    text = f"{value:,.0f} {scenario.unit}"
    if scenario.size >= 64 * 1024:
        text += f" ({value * scenario.size / 2**20:,.0f} MiB/s)"
    return text


def markdown_table(
    scenarios: list[Scenario], results: dict[str, dict[str, Result]], libs: list[str]
) -> str:
    rows = [
        "| scenario | server | median | spread | vs websockets | vs limit | server CPU µs/op |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        for lib in libs:
            result = results[scenario.key][lib]
            spread = result.spread
            vs_ref = ratio(results[scenario.key], lib, REFERENCE)
            vs_limit = ratio(results[scenario.key], lib, LIMIT)
            cpu = statistics.median(result.server_cpu_us) if result.server_cpu_us else None
            cells = [
                scenario.title,
                lib,
                fmt_rate(result.median, scenario)
                + (f" ({len(result.errors)} failed)" if result.errors else ""),
                f"±{spread * 100:.1f}%" if spread is not None else "—",
                f"{vs_ref:.2f}x" if vs_ref is not None else "—",
                f"{vs_limit * 100:.0f}%" if vs_limit is not None else "—",
                f"{cpu:,.1f}" if cpu is not None else "—",
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return rev.stdout.strip() or "?"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# command line


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark WebSocket echo servers with one fixed load generator.",
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 0.5 s measurements")
    parser.add_argument(
        "--libs",
        default="tether,websockets",
        help=f"comma-separated, from: {', '.join(LIBS)} (default: %(default)s; "
        "limit is added unless --no-limit)",
    )
    parser.add_argument("--no-limit", action="store_true", help="leave the limit row out")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                        help="event loop of the servers (default: %(default)s)")  # fmt: skip
    parser.add_argument(
        "--loadgen-loop",
        choices=["asyncio", "uvloop"],
        default=loadgen.default_loop(),
        help="event loop of the load generator (default: uvloop if installed: the cheapest)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(s.key for s in SCENARIOS),
        help="comma-separated subset of: %(default)s",
    )
    parser.add_argument("--rounds", type=int, help="default 3, or 1 with --quick")
    parser.add_argument("--duration", type=float, help="seconds per measurement (2, quick 0.5)")
    parser.add_argument("--warmup", type=float, help="uncounted seconds first (0.3, quick 0.1)")
    parser.add_argument("--json", metavar="FILE", type=Path, help="also write results as JSON")
    parser.add_argument("--out-dir", type=Path, default=BENCH / "out",
                        help="server logs and profiles (default: bench/out)")  # fmt: skip
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin the servers to CPU 0 and the load generator to CPU 1 (default: the "
        "scheduler decides; on VMs, cross-core wake-ups then dominate one-in-flight latency)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the servers under cProfile; hot spots go to OUT_DIR/server-LIB.prof.txt "
        "(the figures are then not comparable)",
    )
    args = parser.parse_args(argv)

    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (0.5 if args.quick else 2.0)
    args.warmup = args.warmup if args.warmup is not None else (0.1 if args.quick else 0.3)
    libs = [name.strip() for name in args.libs.split(",") if name.strip()]
    if unknown := [name for name in libs if name not in LIBS]:
        parser.error(f"unknown --libs {unknown}; choose from {list(LIBS)}")
    if not args.no_limit and LIMIT not in libs:
        libs.append(LIMIT)
    args.lib_list = list(dict.fromkeys(libs))
    keys = [key.strip() for key in args.scenarios.split(",") if key.strip()]
    known = {s.key: s for s in SCENARIOS}
    if unknown := [key for key in keys if key not in known]:
        parser.error(f"unknown --scenarios {unknown}; choose from {list(known)}")
    args.scenario_list = [known[key] for key in keys]
    if args.pin and not (
        hasattr(os, "sched_getaffinity") and {SERVER_CPU, LOADGEN_CPU} <= os.sched_getaffinity(0)
    ):
        parser.error(f"--pin needs CPUs {SERVER_CPU} and {LOADGEN_CPU} (and Linux)")
    for loop in {args.loop, args.loadgen_loop} - {"asyncio"}:
        if importlib.util.find_spec(loop) is None:
            parser.error(f"{loop} is not installed: pip install {loop}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so that every server is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    out_dir: Path = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    versions: dict[str, str] = {}
    skipped: dict[str, str] = {}  # library -> why it was not measured
    libs: list[str] = []
    for lib in args.lib_list:
        try:
            versions[lib] = lib_version(lib)
        except BenchFailure as exc:
            log(f"!! {exc}; skipping {lib}")
            skipped[lib] = str(exc)
            continue
        libs.append(lib)

    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "revision": git_revision(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpu": f"{cpu_model()} x {os.cpu_count()}",
        "server_loop": args.loop,
        "loadgen_loop": args.loadgen_loop,
        "pinned": args.pin,
        "rounds": args.rounds,
        "duration": args.duration,
        "warmup": args.warmup,
        "versions": versions,
        "profiled": args.profile,
        "skipped": skipped,
    }
    log(f"servers on {args.loop}, load generator on {args.loadgen_loop}, "
        f"{args.rounds} round(s) x {args.duration} s, pinned: {args.pin}")  # fmt: skip

    with servers_running(libs, args, out_dir, skipped) as servers:
        libs = list(servers)
        if not libs:
            log("!! no server started")
            return 1
        results = run_all(servers, args.scenario_list, args)
    failed = bool(skipped) or any(r.errors for rs in results.values() for r in rs.values())

    print(f"\n## tether benchmark — {meta['date']}\n")
    print(
        f"{meta['python']} on {meta['platform']}, {meta['cpu']}; servers on {args.loop}, "
        f"load generator on {args.loadgen_loop}; {args.rounds} round(s) of "
        f"{args.duration} s (+{args.warmup} s warm-up) per figure; "
        f"revision {meta['revision']}; "
        + ", ".join(f"{lib} {versions[lib].split()[0]}" for lib in libs if lib != LIMIT)
        + ".\n"
    )
    print(markdown_table(args.scenario_list, results, libs))
    print(
        "\nmedian over rounds; spread = ±half the range (max - min) / median; "
        "vs websockets and vs limit = ratio of medians in this run; server CPU = the server "
        "process's user + system time per message or handshake."
    )
    for lib, why in skipped.items():
        print(f"\n**{lib} not measured**: {why}")
    if args.profile:
        log(summarise_profiles(servers, out_dir))

    if args.json:
        doc = {
            "meta": meta,
            "scenarios": [
                {
                    "key": s.key,
                    "title": s.title,
                    "unit": s.unit,
                    "size": s.size,
                    "connections": s.connections,
                    "results": {
                        lib: {
                            "samples": r.samples,
                            "median": r.median,
                            "min": min(r.samples, default=None),
                            "max": max(r.samples, default=None),
                            "spread": r.spread,
                            "vs_websockets": ratio(results[s.key], lib, REFERENCE),
                            "vs_limit": ratio(results[s.key], lib, LIMIT),
                            "server_cpu_us": r.server_cpu_us,
                            "loadgen_cpu_us": r.loadgen_cpu_us,
                            "errors": r.errors,
                        }
                        for lib, r in results[s.key].items()
                    },
                }
                for s in args.scenario_list
            ],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 1 if failed else 0


def summarise_profiles(servers: dict[str, ServerProcess], out_dir: Path) -> str:
    import io
    import pstats

    lines = []
    for lib, server in servers.items():
        path = server.profile_path
        if path is None or not path.exists():
            continue
        stream = io.StringIO()
        pstats.Stats(str(path), stream=stream).sort_stats("tottime").print_stats(25)
        text_path = out_dir / f"server-{lib}.prof.txt"
        text_path.write_text(stream.getvalue())
        lines.append(f"{lib}: profile in {path}, top 25 by own time in {text_path}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
