"""Benchmark tether against websockets and against the physical limit, in one run.

    python bench/run.py [--quick] [--libs tether,websockets] [--loop asyncio|uvloop]
                        [--json out.json]

Each server under test (plus the "limit" server: no WebSocket library, bytes echoed
back) runs in its own process; one fixed load generator (bench/loadgen.py) runs in
another for each measurement. Measurements are interleaved across servers, repeated over
rounds, and reported as medians with their spread and their ratios to websockets and to
the limit in the same run. Compression scenarios (``*-deflate``) run against a second
process of each library with its default permessage-deflate on. The memory scenarios
(``mem1k``, ``mem5k``) start a fresh server per measurement, open that many idle
connections and report the server's resident memory per connection, with and without
compression. See bench/README.md for the method.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import datetime
import importlib.util
import json
import math
import os
import platform
import resource
import selectors
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


@dataclass(frozen=True)
class Lib:
    script: str  # in bench/servers/
    module: str  # imported to check it is there and for its location
    dist: str  # distribution whose version is reported
    deflate: bool = True  # has permessage-deflate


LIBS: dict[str, Lib] = {
    "tether": Lib("echo_tether.py", "tether", "tether"),
    # tether with permessage-deflate tuned for speed (more memory): not in the defaults
    "tether-fast-deflate": Lib("echo_tether_fast_deflate.py", "tether", "tether"),
    # tether from another tree (TETHER_BASE_SRC=path/to/src): before/after in one run
    "tether-base": Lib("echo_tether.py", "tether", "tether"),
    "websockets": Lib("echo_websockets.py", "websockets", "websockets"),
    "aiohttp": Lib("echo_aiohttp.py", "aiohttp", "aiohttp"),
    # picows' callback core (frames, no permessage-deflate) and its websockets-like API
    "picows": Lib("echo_picows.py", "picows", "picows", deflate=False),
    "picows-websockets": Lib("echo_picows_websockets.py", "picows.websockets", "picows"),
    "limit": Lib("echo_limit.py", "asyncio", "-", deflate=False),
    # the limit, with each echo written by an awaiting task: the floor of a coroutine API
    "limit-coro": Lib("echo_limit_coro.py", "asyncio", "-", deflate=False),
    # the limit for whole messages: a frame is written back once all of it is in
    "limit-msg": Lib("echo_limit_msg.py", "asyncio", "-", deflate=False),
}
DEFAULT_LIBS = "tether,websockets,aiohttp,picows,picows-websockets"
REFERENCE = "websockets"
LIMIT = "limit"
SERVER_CPU, LOADGEN_CPU = 0, 1  # with --pin: one core each


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    mode: str  # "rt" (round trips), "handshake" or "memory" (idle connections)
    size: int = 0
    connections: int = 1  # handshake mode: workers opening connections in parallel
    inflight: int = 1  # messages in flight per connection (rt mode)
    count: int = 1_000_000  # count limit of one measurement (the time limit is --duration)
    unit: str = "msg/s"
    deflate: bool = False  # permessage-deflate negotiated (servers with compression on)
    quick: bool = True  # part of the default selection with --quick


MEM_MESSAGE_SIZE = 1024  # the one compressed message per connection of the memory scenarios

SCENARIOS: list[Scenario] = [
    Scenario("rt16", "round trip 16 B", "rt", size=16),
    Scenario("rt1k", "round trip 1 KiB", "rt", size=1024),
    Scenario("rt64k", "round trip 64 KiB", "rt", size=64 * 1024, count=200_000),
    Scenario("rt1m", "round trip 1 MiB", "rt", size=1024 * 1024, count=10_000),
    Scenario("pipe1k", "pipelined 1 KiB (64 in flight)", "rt", size=1024, inflight=64,
             count=5_000_000),
    Scenario("pipe64k", "pipelined 64 KiB (64 in flight)", "rt", size=64 * 1024, inflight=64,
             count=500_000),
    Scenario("conc100", "100 connections x round trip 16 B", "rt", size=16, connections=100,
             count=5_000_000),
    Scenario("handshake", "handshakes (open + close, sequential)", "handshake",
             count=200_000, unit="handshakes/s"),
    Scenario("handshake50", "handshakes (open + close, 50 in parallel)", "handshake",
             connections=50, count=500_000, unit="handshakes/s"),
    Scenario("rt1k-deflate", "deflate: round trip 1 KiB JSON", "rt", size=1024, deflate=True),
    Scenario("rt64k-deflate", "deflate: round trip 64 KiB JSON", "rt", size=64 * 1024,
             count=200_000, deflate=True),
    Scenario("conc100-deflate", "deflate: 100 connections x round trip 1 KiB JSON", "rt",
             size=1024, connections=100, count=5_000_000, deflate=True),
    Scenario("mem1k", "1,000 idle connections", "memory", connections=1_000, unit="KiB/conn"),
    Scenario("mem5k", "5,000 idle connections", "memory", connections=5_000, unit="KiB/conn",
             quick=False),
]  # fmt: skip


@dataclass
class Result:
    samples: list[float] = field(default_factory=list)
    server_cpu_us: list[float] = field(default_factory=list)
    loadgen_cpu_us: list[float] = field(default_factory=list)
    reply_bytes: list[float] = field(default_factory=list)  # deflate: payload B per reply
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


@dataclass
class MemResult:
    """KiB of server RSS per connection, one sample per round and case."""

    plain: list[float] = field(default_factory=list)  # no compression, idle
    deflate_idle: list[float] = field(default_factory=list)  # deflate, after the handshake
    deflate_message: list[float] = field(default_factory=list)  # deflate, after one message
    samples: list[dict[str, Any]] = field(default_factory=list)  # raw RSS and timings
    errors: list[str] = field(default_factory=list)


MEM_CASES = ("plain", "deflate_idle", "deflate_message")


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


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
    if lib.startswith("tether"):
        src = str(REPO / "src")
        if lib == "tether-base":
            src = env.get("TETHER_BASE_SRC", "")
            if not src:
                raise SystemExit("tether-base needs TETHER_BASE_SRC: the src/ of another tree")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    return env


def lib_version(lib: str) -> str:
    """The library's version, seen from the environment its server will run in."""
    if lib == LIMIT:
        return "-"
    spec = LIBS[lib]
    code = (
        "import importlib, importlib.metadata as m, os, sys\n"
        f"mod = importlib.import_module({spec.module!r})\n"
        "try:\n"
        f"    v = m.version({spec.dist!r})\n"
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


def variant_name(lib: str, deflate: bool) -> str:
    """``tether`` or ``tether-deflate``: names a server process, its log and profile."""
    return f"{lib}-deflate" if deflate else lib


class ServerProcess:
    """One echo server in its own process, on its own port."""

    def __init__(
        self,
        lib: str,
        loop: str,
        out_dir: Path,
        cpu: int | None,
        profile: bool,
        compression: bool = False,
        tag: str = "",
    ) -> None:
        self.lib = lib
        self.loop = loop
        self.cpu = cpu
        self.compression = compression
        self.name = variant_name(lib, compression)
        self.port = free_port()
        self.log_path = out_dir / f"server-{self.name}{tag}.log"
        self.profile_path = out_dir / f"server-{self.name}{tag}.prof" if profile else None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 20.0) -> None:
        cmd = [sys.executable, str(SERVERS / LIBS[self.lib].script)]
        cmd += ["--port", str(self.port), "--loop", self.loop]
        if self.compression:
            cmd += ["--compression"]
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
                raise BenchFailure(f"{self.name} server exited ({self.proc.returncode})")
            try:
                probe(self.port)
                return
            except OSError as exc:  # not listening yet
                last = exc
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=0.05)  # the poll interval; returns early if it dies
        raise BenchFailure(f"{self.name} server not ready after {timeout:.0f} s: {last}")

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

    def rss_kib(self) -> int:
        """The server process's resident set size, KiB (VmRSS of /proc/PID/status)."""
        assert self.proc is not None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError as exc:
            raise BenchFailure(f"cannot read the {self.name} server's memory: {exc}") from None
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])  # "VmRSS:  12345 kB"
        raise BenchFailure("no VmRSS in /proc/PID/status")

    def wait_quiet(self, interval: float = 0.05, polls: int = 4, timeout: float = 10.0) -> None:
        """Wait until the server has used no CPU for ``polls`` intervals in a row, so that
        it has finished with what the load generator just did (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        last, still = self.cpu_seconds(), 0
        while still < polls and time.monotonic() < deadline:
            time.sleep(interval)
            now = self.cpu_seconds()
            still = still + 1 if now == last else 0
            last = now

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


Variant = tuple[str, bool]  # (library, compression on)


@contextlib.contextmanager
def servers_running(
    variants: list[Variant], args: argparse.Namespace, out_dir: Path, skipped: dict[str, str]
) -> Iterator[dict[Variant, ServerProcess]]:
    """Start every server (those that fail go to ``skipped``); always stop them all."""
    cpu = SERVER_CPU if args.pin else None
    started: dict[Variant, ServerProcess] = {}
    try:
        for variant in variants:
            lib, deflate = variant
            server = ServerProcess(lib, args.loop, out_dir, cpu, args.profile, deflate)
            started[variant] = server
            try:
                server.start()
            except BenchFailure as exc:
                log(f"!! {exc}; skipping {server.name}. Log {server.log_path}:\n"
                    f"{server.log_tail()}")  # fmt: skip
                skipped[server.name] = f"{exc} (see {server.log_path})"
                server.stop()
                del started[variant]
        yield started
    finally:
        for server in started.values():
            server.stop()


def applicable(scenario: Scenario, lib: str) -> bool:
    """Compression does not apply to the limit server (it parses no frame) nor to
    servers without permessage-deflate."""
    return not scenario.deflate or LIBS[lib].deflate


# measuring


def measure(server: ServerProcess, scenario: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(server.port)]
    cmd += ["--mode", scenario.mode, "--size", str(scenario.size)]
    cmd += ["--connections", str(scenario.connections), "--count", str(scenario.count)]
    cmd += ["--inflight", str(scenario.inflight)]
    cmd += ["--warmup", str(args.warmup), "--duration", str(args.duration)]
    cmd += ["--loop", args.loadgen_loop]
    if scenario.deflate:
        cmd += ["--deflate"]
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
    servers: dict[Variant, ServerProcess],
    libs: list[str],
    scenarios: list[Scenario],
    args: argparse.Namespace,
) -> dict[str, dict[str, Result]]:
    """Every round trip and handshake scenario, for every library it applies to whose
    server (plain or with compression, as the scenario needs) started."""
    results = {
        s.key: {lib: Result() for lib in libs if (lib, s.deflate) in servers} for s in scenarios
    }
    total = args.rounds * sum(len(r) for r in results.values())
    done = 0
    for round_no in range(args.rounds):
        order = libs[round_no % len(libs) :] + libs[: round_no % len(libs)]
        for scenario in scenarios:
            for lib in order:  # interleaved: A B C, then B C A, ...
                if lib not in results[scenario.key]:
                    continue
                server = servers[(lib, scenario.deflate)]
                done += 1
                prefix = f"[{done}/{total}] round {round_no + 1} {scenario.key:<15} {lib:<10}"
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
                        log(f"!! {server.name} server died. Log {server.log_path}:\n"
                            f"{server.log_tail()}")  # fmt: skip
                    continue
                result.samples.append(sample["rate"])
                result.loadgen_cpu_us.append(sample["loadgen_cpu_us"])
                if scenario.deflate and sample.get("reply_bytes"):
                    result.reply_bytes.append(sample["reply_bytes"])
                if "server_cpu_us" in sample:
                    result.server_cpu_us.append(sample["server_cpu_us"])
                cpu = sample.get("server_cpu_us")
                cpu_text = f"  server {cpu:7.1f} µs/op" if cpu is not None else ""
                log(f"{prefix} {sample['rate']:>12,.0f} {scenario.unit}{cpu_text}")
    return results


# memory per idle connection

MAX_PER_LOADGEN = 10_000  # connections per load generator process
PER_SOURCE = 2_000  # connections per source address (127.0.<loadgen>.<n>)


class IdleLoadgen:
    """One ``loadgen.py --mode idle`` process, stepped through its phases over pipes."""

    def __init__(self, cmd: list[str], log_path: Path, cpu: int | None) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                preexec_fn=child_setup(cpu),
            )
        self.buffer = b""

    def step(self) -> None:
        """Let the load generator go on to its next phase."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"next\n")
        self.proc.stdin.flush()

    def read_line(self, deadline: float) -> str:
        """The next line on its stdout; BenchFailure at the deadline or if it exits."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.buffer:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchFailure(f"load generator timed out (see {self.log_path})")
                if not selector.select(left):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(timeout=10)
                    tail = self.log_path.read_text(errors="replace").strip().splitlines()
                    raise BenchFailure(tail[-1] if tail else "load generator exited")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def expect(self, word: str, deadline: float) -> None:
        line = self.read_line(deadline)
        if line != word:
            raise BenchFailure(f"load generator said {line!r}, expected {word!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def nofile_hard_limit() -> int | None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else hard


def measure_memory(
    lib: str, deflate: bool, connections: int, args: argparse.Namespace, out_dir: Path
) -> dict[str, Any]:
    """A fresh server; its RSS before and after ``connections`` idle connections open
    (and, with ``deflate``, after one compressed message each). Returns raw figures."""
    hard = nofile_hard_limit()
    if hard is not None and hard < connections + 100:
        raise BenchFailure(f"RLIMIT_NOFILE hard limit {hard} is too low for the server")
    per_loadgen = MAX_PER_LOADGEN if hard is None else min(MAX_PER_LOADGEN, hard - 100)
    processes = math.ceil(connections / per_loadgen)
    shares = [connections // processes + (i < connections % processes) for i in range(processes)]
    server = ServerProcess(lib, args.loop, out_dir, SERVER_CPU if args.pin else None,
                           profile=False, compression=deflate, tag="-mem")  # fmt: skip
    loadgens: list[IdleLoadgen] = []
    try:
        server.start()
        for i, share in enumerate(shares):
            sources = [f"127.0.{i + 1}.{j + 1}" for j in range(math.ceil(share / PER_SOURCE))]
            cmd = [sys.executable, str(BENCH / "loadgen.py"), "--port", str(server.port)]
            cmd += ["--mode", "idle", "--connections", str(share), "--sources", ",".join(sources)]
            cmd += ["--size", str(MEM_MESSAGE_SIZE), "--loop", args.loadgen_loop]
            if deflate:
                cmd += ["--deflate"]
            log_path = out_dir / f"loadgen-mem-{i}.log"
            loadgens.append(IdleLoadgen(cmd, log_path, LOADGEN_CPU if args.pin else None))

        def phase(word: str, seconds: float) -> None:
            deadline = time.monotonic() + seconds
            for loadgen_proc in loadgens:
                loadgen_proc.expect(word, deadline)
            server.wait_quiet()
            if not server.alive():
                raise BenchFailure(f"{server.name} server died: {server.log_tail(3)}")

        phase("ready", 60)
        before = server.rss_kib()
        for loadgen_proc in loadgens:
            loadgen_proc.step()
        phase("opened", 60 + connections / 50)
        idle = server.rss_kib()
        message = None
        if deflate:
            for loadgen_proc in loadgens:
                loadgen_proc.step()
            phase("echoed", 60 + connections / 100)
            message = server.rss_kib()
        reports = []
        deadline = time.monotonic() + 60 + connections / 100
        for loadgen_proc in loadgens:
            loadgen_proc.step()  # close every connection
            reports.append(json.loads(loadgen_proc.read_line(deadline)))
            loadgen_proc.proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for loadgen_proc in loadgens:
            loadgen_proc.stop()
        server.stop()
    return {
        "connections": connections,
        "loadgens": len(loadgens),
        "rss_before_kib": before,
        "rss_idle_kib": idle,
        "rss_message_kib": message,
        "idle_kib_per_conn": (idle - before) / connections,
        "message_kib_per_conn": None if message is None else (message - before) / connections,
        "open_seconds": max(r["open_seconds"] for r in reports),
        "deflate_client_bits": reports[0]["deflate_bits"],
    }


def run_memory(
    libs: list[str], scenarios: list[Scenario], args: argparse.Namespace, out_dir: Path
) -> dict[str, dict[str, MemResult]]:
    """Every memory scenario for every library, with and without compression (not the
    limit's), interleaved over rounds like the other scenarios. A fresh server each time."""
    results = {s.key: {lib: MemResult() for lib in libs} for s in scenarios}
    cases = [(lib, deflate) for lib in libs for deflate in (False, True) if not
             (deflate and not LIBS[lib].deflate)]  # fmt: skip
    total = args.rounds * len(scenarios) * len(cases)
    done = 0
    for round_no in range(args.rounds):
        order = libs[round_no % len(libs) :] + libs[: round_no % len(libs)]
        for scenario in scenarios:
            for lib in order:
                for deflate in (False, True):
                    if (lib, deflate) not in cases:
                        continue
                    done += 1
                    name = variant_name(lib, deflate)
                    prefix = f"[{done}/{total}] round {round_no + 1} {scenario.key:<15} {name:<18}"
                    result = results[scenario.key][lib]
                    try:
                        sample = measure_memory(lib, deflate, scenario.connections, args, out_dir)
                    except (BenchFailure, OSError, subprocess.TimeoutExpired, ValueError) as exc:
                        result.errors.append(f"{name}: {exc}")
                        log(f"{prefix} FAILED: {exc}")
                        continue
                    sample["deflate"] = deflate
                    result.samples.append(sample)
                    idle = sample["idle_kib_per_conn"]
                    text = f"{idle:6.1f} KiB/conn idle"
                    if deflate:
                        result.deflate_idle.append(idle)
                        result.deflate_message.append(sample["message_kib_per_conn"])
                        text += f", {sample['message_kib_per_conn']:6.1f} after one message"
                    else:
                        result.plain.append(idle)
                    log(f"{prefix} {text} (RSS at start {sample['rss_before_kib'] / 1024:.1f} "
                        f"MiB, opened in {sample['open_seconds']:.2f} s)")  # fmt: skip
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
            if lib not in results[scenario.key]:
                continue  # not applicable (the limit with compression) or not started
            result = results[scenario.key][lib]
            spread = result.spread
            vs_ref = ratio(results[scenario.key], lib, REFERENCE)
            vs_limit = ratio(results[scenario.key], lib, LIMIT)
            cpu = statistics.median(result.server_cpu_us) if result.server_cpu_us else None
            wire = median(result.reply_bytes)
            cells = [
                scenario.title,
                lib,
                fmt_rate(result.median, scenario)
                + (f", {wire:,.0f} B/reply" if wire is not None else "")
                + (f" ({len(result.errors)} failed)" if result.errors else ""),
                f"±{spread * 100:.1f}%" if spread is not None else "—",
                f"{vs_ref:.2f}x" if vs_ref is not None else "—",
                f"{vs_limit * 100:.0f}%" if vs_limit is not None else "—",
                f"{cpu:,.1f}" if cpu is not None else "—",
            ]
            rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def summary_table(
    scenarios: list[Scenario], results: dict[str, dict[str, Result]], libs: list[str]
) -> str:
    """One row per scenario: tether's median over each other server's."""
    others = [lib for lib in libs if lib != "tether"]
    rows = [
        "| scenario | tether | " + " | ".join(f"vs {lib}" for lib in others) + " |",
        "|---|---:|" + "---:|" * len(others),
    ]
    for scenario in scenarios:
        by_lib = results.get(scenario.key, {})
        mine = by_lib["tether"].median if "tether" in by_lib else None
        cells = [scenario.title, fmt_rate(mine, scenario)]
        for lib in others:
            value = ratio(by_lib, "tether", lib) if "tether" in by_lib else None
            cells.append(f"{value:.2f}x" if value is not None else "—")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def memory_table(
    scenarios: list[Scenario], results: dict[str, dict[str, MemResult]], libs: list[str]
) -> str:
    rows = [
        "| idle connections | server | no compression | deflate: after handshake "
        f"| deflate: after one {MEM_MESSAGE_SIZE // 1024} KiB message | server RSS at start |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        by_lib = results[scenario.key]
        for lib in libs:
            result = by_lib[lib]
            cells = [f"{scenario.connections:,}", lib]
            for case in MEM_CASES:
                value = median(getattr(result, case))
                if value is None:
                    cells.append("—" if not LIBS[lib].deflate and case != "plain" else "failed")
                    continue
                text = f"{value:,.1f} KiB"
                reference = (
                    median(getattr(by_lib[REFERENCE], case)) if REFERENCE in by_lib else None
                )
                if reference and lib != REFERENCE:
                    text += f" ({value / reference:.2f}x)"
                cells.append(text)
            starts = [float(sample["rss_before_kib"]) for sample in result.samples]
            start = median(starts)
            cells.append(f"{start / 1024:.1f} MiB" if start is not None else "—")
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
        default=DEFAULT_LIBS,
        help=f"comma-separated, from: {', '.join(LIBS)} (default: %(default)s; "
        "limit is added unless --no-limit)",
    )
    parser.add_argument("--no-limit", action="store_true", help="leave the limit row out")
    parser.add_argument(
        "--loop",
        default=None,
        help="event loop(s) of the servers, comma-separated: asyncio, uvloop; each loop is "
        "a separate table (default: asyncio,uvloop if uvloop is installed)",
    )
    parser.add_argument(
        "--loadgen-loop",
        choices=["asyncio", "uvloop"],
        default=loadgen.default_loop(),
        help="event loop of the load generator (default: uvloop if installed: the cheapest)",
    )
    parser.add_argument(
        "--scenarios",
        help="comma-separated subset of: "
        + ", ".join(s.key for s in SCENARIOS)
        + " (default: all; with --quick, all but "
        + ", ".join(s.key for s in SCENARIOS if not s.quick)
        + ")",
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
    if args.scenarios is None:
        args.scenarios = ",".join(s.key for s in SCENARIOS if s.quick or not args.quick)
    keys = [key.strip() for key in args.scenarios.split(",") if key.strip()]
    known = {s.key: s for s in SCENARIOS}
    if unknown := [key for key in keys if key not in known]:
        parser.error(f"unknown --scenarios {unknown}; choose from {list(known)}")
    args.scenario_list = [known[key] for key in keys]
    if args.pin and not (
        hasattr(os, "sched_getaffinity") and {SERVER_CPU, LOADGEN_CPU} <= os.sched_getaffinity(0)
    ):
        parser.error(f"--pin needs CPUs {SERVER_CPU} and {LOADGEN_CPU} (and Linux)")
    if args.loop is None:
        args.loop = "asyncio,uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    args.loops = list(dict.fromkeys(x.strip() for x in args.loop.split(",") if x.strip()))
    if bad := [x for x in args.loops if x not in ("asyncio", "uvloop")]:
        parser.error(f"unknown --loop {bad}; choose from asyncio, uvloop")
    for loop in {*args.loops, args.loadgen_loop} - {"asyncio"}:
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
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
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

    timed = [s for s in args.scenario_list if s.mode != "memory"]
    memory = [s for s in args.scenario_list if s.mode == "memory"]
    runs: list[dict[str, Any]] = []
    failed = bool(skipped)
    for loop in args.loops:
        args.loop = loop  # the servers' loop for this part of the run
        log(f"== servers on {loop}")
        run = run_one_loop(libs, timed, memory, args, out_dir, skipped)
        failed = failed or run["failed"]
        runs.append(run)
    args.loop = ",".join(args.loops)

    print(f"\n## tether benchmark — {meta['date']}\n")
    print(
        f"{meta['python']} on {meta['platform']}, {meta['cpu']}; servers on "
        f"{' and '.join(args.loops)} (one table each), load generator on {args.loadgen_loop}; "
        f"{args.rounds} round(s) of {args.duration} s (+{args.warmup} s warm-up) per figure; "
        f"revision {meta['revision']}; load average at start "
        f"{', '.join(str(x) for x in meta['load_average_at_start'])}; "
        + ", ".join(f"{lib} {versions[lib].split()[0]}" for lib in libs if LIBS[lib].dist != "-")
        + ".\n"
    )
    for run in runs:
        loop, results, mem_results = run["loop"], run["results"], run["mem_results"]
        if timed:
            print(f"\n### Servers on {loop}: tether's ratio to each peer\n")
            print(summary_table(timed, results, libs))
            print(
                "\nratio of tether's median to the peer's median in this run (> 1: tether "
                "faster); — where the peer does not apply (no permessage-deflate) or failed."
            )
            print(f"\n### Servers on {loop}: every figure\n")
            print(markdown_table(timed, results, libs))
            print(
                "\nmedian over rounds; spread = ±half the range (max - min) / median; "
                "vs websockets and vs limit = ratio of medians in this run; server CPU = the "
                "server process's user + system time per message or handshake. deflate rows: "
                "servers with their default permessage-deflate, the load generator sending "
                "pre-compressed JSON-like text (client_no_context_takeover), B/reply = "
                "compressed payload bytes per reply (the ratio each default buys); no limit "
                "row."
            )
        if memory:
            print(f"\n### Servers on {loop}: memory per idle connection\n")
            print(memory_table(memory, mem_results, libs))
            print(
                "\nincrease of the server process's RSS (VmRSS) per connection, from before "
                "opening them to when all are open and idle (a fresh server per measurement, "
                f"median over rounds); deflate: the browsers' offer, then one "
                f"{MEM_MESSAGE_SIZE} B compressed JSON-like message echoed on each "
                "connection; (x) = ratio to websockets."
            )
        for rs in mem_results.values():
            for r in rs.values():
                for error in dict.fromkeys(r.errors):
                    print(f"\n**memory measurement failed ({loop})**: {error}")
        if args.profile and timed:
            log(summarise_profiles(out_dir, run["started"]))
    for name, why in skipped.items():
        print(f"\n**{name} not measured**: {why}")

    if args.json:
        doc = {"meta": meta, "runs": [json_run(run, timed, memory) for run in runs]}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 1 if failed else 0


def run_one_loop(
    libs: list[str],
    timed: list[Scenario],
    memory: list[Scenario],
    args: argparse.Namespace,
    out_dir: Path,
    skipped: dict[str, str],
) -> dict[str, Any]:
    """Every scenario with the servers on ``args.loop``."""
    variants = list(
        dict.fromkeys((lib, s.deflate) for s in timed for lib in libs if applicable(s, lib))
    )
    results: dict[str, dict[str, Result]] = {}
    started: list[str] = []  # names of the server processes of the timed scenarios
    failed = False
    if timed:
        with servers_running(variants, args, out_dir, skipped) as servers:
            if not servers:
                log("!! no server started")
                failed = True
            started = [server.name for server in servers.values()]
            results = run_all(servers, libs, timed, args)
    mem_results: dict[str, dict[str, MemResult]] = {}
    if memory:
        if args.profile:
            log("memory scenarios: servers not profiled")
        mem_results = run_memory(libs, memory, args, out_dir)
    failed = (
        failed
        or any(r.errors for rs in results.values() for r in rs.values())
        or any(r.errors for rs in mem_results.values() for r in rs.values())
    )
    return {
        "loop": args.loop,
        "results": results,
        "mem_results": mem_results,
        "started": started,
        "failed": failed,
    }


def json_run(run: dict[str, Any], timed: list[Scenario], memory: list[Scenario]) -> Any:
    results, mem_results = run["results"], run["mem_results"]
    return {
        "server_loop": run["loop"],
        "scenarios": [
            {
                "key": s.key,
                "title": s.title,
                "unit": s.unit,
                "size": s.size,
                "connections": s.connections,
                "inflight": s.inflight,
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
                        "reply_bytes": r.reply_bytes,
                        "errors": r.errors,
                    }
                    for lib, r in results.get(s.key, {}).items()
                },
            }
            for s in timed
        ],
        "memory": [
            {
                "key": s.key,
                "title": s.title,
                "connections": s.connections,
                "message_size": MEM_MESSAGE_SIZE,
                "results": {
                    lib: {
                        "kib_per_conn": {case: getattr(r, case) for case in MEM_CASES},
                        "median_kib_per_conn": {
                            case: median(getattr(r, case)) for case in MEM_CASES
                        },
                        "samples": r.samples,
                        "errors": r.errors,
                    }
                    for lib, r in mem_results[s.key].items()
                },
            }
            for s in memory
        ],
    }


def summarise_profiles(out_dir: Path, names: list[str]) -> str:
    """Top 25 functions by own time of each server profiled in this run, to text files."""
    import io
    import pstats

    lines = []
    for name in names:
        path = out_dir / f"server-{name}.prof"
        if not path.exists():
            lines.append(f"{name}: no profile written")
            continue
        stream = io.StringIO()
        pstats.Stats(str(path), stream=stream).sort_stats("tottime").print_stats(25)
        text_path = out_dir / f"server-{name}.prof.txt"
        text_path.write_text(stream.getvalue())
        lines.append(f"{name}: profile in {path}, top 25 by own time in {text_path}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
