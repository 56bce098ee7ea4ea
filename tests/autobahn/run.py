"""Run the Autobahn Testsuite against tether's server and client, and judge the reports.

    python tests/autobahn/run.py [--side server|client|both] [--cases '*']
                                 [--exclude '12.*,13.*'] [--outdir .autobahn]
                                 [--impl tether|websockets] [--layer asyncio|sync|both]
                                 [--compression none|deflate] [--jobs 1]

Server side: starts echo_server.py on a free port and points ``wstest -m fuzzingclient`` at
it. Client side: starts ``wstest -m fuzzingserver -u 0`` on a free port and runs
echo_client.py against it. Then every expected case must be in ``index.json`` with
``behavior`` and ``behaviorClose`` both OK or INFORMATIONAL; anything else (NON-STRICT,
FAILED, UNIMPLEMENTED, missing) is a failure, listed with the case's description, what was
expected and what was observed. Exit status 0 only if every case of every side passed.
``--layer sync`` tests the threading layer (``tether.sync``) instead of the asyncio one: its
reports go to ``.autobahn/sync/`` (unless ``--outdir`` is given), under the agent name
``tether-sync``. ``--jobs N`` runs N of the selected runs (sides x layers) at a time.

Install wstest first: ``bash .ci/install-autobahn.sh``. Every subprocess runs in its own
process group and is killed on exit; every wait is bounded (``--timeout``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HOST = "127.0.0.1"
PASSING = frozenset({"OK", "INFORMATIONAL"})
SIDES = ("server", "client")
LAYERS = ("asyncio", "sync")
DEFAULT_EXCLUDE = ("12.*", "13.*")  # permessage-deflate: ~10 more minutes a side
DEFAULT_VENV = Path.home() / ".cache" / "tether" / "autobahn-py27"
STARTUP_TIMEOUT = 60.0  # seconds for a peer or wstest to listen
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
POLL = 0.5  # seconds between checks of the cancel flag while waiting for a subprocess
# Set by cancel_runs(): every run in progress stops waiting, and its subprocesses are killed.
_cancelled = threading.Event()


class HarnessError(Exception):
    """The run could not be carried out (as opposed to cases that failed)."""


# --------------------------------------------------------------------------------------
# Finding wstest and the cases


def find_wstest(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """Locate ``wstest``: the argument, $AUTOBAHN_WSTEST, $AUTOBAHN_VENV, the default venv
    of .ci/install-autobahn.sh, then $PATH. None if none is there."""
    candidates: list[str | os.PathLike[str] | None] = [explicit, os.environ.get("AUTOBAHN_WSTEST")]
    venv = os.environ.get("AUTOBAHN_VENV")
    if venv:
        candidates.append(Path(venv) / "bin" / "wstest")
    candidates += [DEFAULT_VENV / "bin" / "wstest", shutil.which("wstest")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return Path(candidate)
    return None


def wstest_python(wstest: Path) -> str:
    """The Python 2 interpreter wstest runs on (from its ``#!`` line)."""
    with wstest.open("rb") as f:
        first = f.readline().decode(errors="replace").strip()
    if first.startswith("#!"):
        interpreter = first[2:].strip().split()[0]
        if os.access(interpreter, os.X_OK):
            return interpreter
    beside = wstest.parent / "python"
    if os.access(beside, os.X_OK):
        return str(beside)
    raise HarnessError(f"cannot tell which Python runs {wstest}")


_LIST_CASES = """\
import json
from autobahntestsuite.case import Cases, CaseBasename
n = len(CaseBasename)
print(json.dumps(['.'.join(c.__name__[n:].split('_')) for c in Cases]))
"""


def all_case_ids(wstest: Path) -> list[str]:
    """Every case id wstest knows, in its order (517 for autobahntestsuite 25.10.1)."""
    proc = subprocess.run(
        [wstest_python(wstest), "-c", _LIST_CASES],
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise HarnessError(f"cannot list wstest's cases:\n{proc.stderr}")
    ids: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return ids


def _case_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def _matches(pattern: str, case_id: str) -> bool:
    # Exactly wstest's rule (caseset.py): with a '*', a regex matched at the start ('.' is
    # literal, '*' is '.*'); without, equality.
    if "*" in pattern:
        regex = pattern.replace(".", r"\.").replace("*", ".*")
        return re.match(regex, case_id) is not None
    return pattern == case_id


def select_cases(ids: Sequence[str], cases: Sequence[str], exclude: Sequence[str]) -> list[str]:
    """The case ids wstest will run for these ``cases`` / ``exclude-cases`` patterns."""
    chosen = {i for i in ids if any(_matches(p, i) for p in cases)}
    chosen -= {i for i in ids if any(_matches(p, i) for p in exclude)}
    return sorted(chosen, key=_case_key)


def split_patterns(value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        value = value.split(",")
    return [p.strip() for p in value if p.strip()]


# --------------------------------------------------------------------------------------
# Subprocesses


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    log_file: IO[bytes]

    def describe_exit(self) -> str:
        return (
            f"{self.name} exited with status {self.proc.returncode}; "
            f"last lines of {self.log}:\n{tail(self.log)}"
        )


class Children:
    """Subprocesses that are all killed, with their process groups, when the block exits."""

    def __init__(self) -> None:
        self.children: list[Child] = []

    def start(
        self, name: str, argv: Sequence[str], log: Path, cwd: Path, *, peer: bool = False
    ) -> Child:
        env = dict(os.environ)
        if peer:
            # Peers import tether from this work tree (src layout) without an install.
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO / "src"), env.get("PYTHONPATH")) if p
            )
        env["PYTHONUNBUFFERED"] = "1"
        log_file = log.open("wb")
        try:
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: Ctrl-C reaches us, we kill it
            )
        except BaseException:
            log_file.close()
            raise
        child = Child(name, proc, log, log_file)
        self.children.append(child)
        return child

    def stop(self, child: Child) -> None:
        proc = child.proc
        if proc.poll() is None:
            self._signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._signal(proc, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT)
        else:
            # The leader is gone; anything it left in its group goes too.
            self._signal(proc, signal.SIGKILL)
        child.log_file.close()

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
        try:
            os.killpg(proc.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def stop_all(self) -> None:
        while self.children:
            self.stop(self.children.pop())

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()


def wait_for_port(child: Child, port: int, timeout: float) -> None:
    """Poll until something accepts TCP connections on ``port``, or fail if ``child`` exits
    or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError:
            pass
        if _cancelled.is_set():
            raise HarnessError(f"{child.name}: the run was cancelled")
        if time.monotonic() >= deadline:
            raise HarnessError(
                f"{child.name} did not listen on {HOST}:{port} within {timeout:.0f} s; "
                f"last lines of {child.log}:\n{tail(child.log)}"
            )
        try:
            # Doubles as the poll interval: returns at once if the child died.
            child.proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
        raise HarnessError(f"{child.name} exited before listening: {child.describe_exit()}")


def wait_child(child: Child, deadline: float, what: str) -> int:
    """Wait for ``child`` to exit, until ``deadline`` or until :func:`cancel_runs`."""
    while True:
        left = deadline - time.monotonic()
        try:
            return child.proc.wait(timeout=max(0.0, min(left, POLL)))
        except subprocess.TimeoutExpired:
            pass
        if _cancelled.is_set():
            raise HarnessError(f"{what}: the run was cancelled")
        if left <= POLL:
            raise HarnessError(
                f"{what} did not finish within the overall timeout; "
                f"last lines of {child.log}:\n{tail(child.log)}"
            )


def cancel_runs() -> None:
    """Make every run in progress (in other threads) stop and kill its subprocesses."""
    _cancelled.set()


@contextmanager
def signals_as_exit() -> Iterator[None]:
    """SIGTERM/SIGHUP raise SystemExit, so that ``finally`` blocks kill the children."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------------------
# Reports


@dataclass
class CaseResult:
    case_id: str
    behavior: str
    behavior_close: str
    remote_close_code: int | None = None
    duration_ms: int | None = None
    description: str = ""
    expectation: str = ""
    result: str = ""
    result_close: str = ""
    wanted: str = ""  # the event lists that would give each behavior
    received: str = ""  # the events wstest saw
    remote_close_reason: str = ""

    @property
    def ok(self) -> bool:
        return self.behavior in PASSING and self.behavior_close in PASSING


@dataclass
class SideReport:
    side: str
    impl: str
    compression: str
    expected: list[str]
    results: dict[str, CaseResult] = field(default_factory=dict)
    elapsed: float = 0.0
    report_dir: Path | None = None
    error: str | None = None  # the harness itself failed (timeout, crash, no report)
    # Client side: exceptions the echo client's connect/recv/send raised, by case id. wstest
    # judges the wire only; an exception of the wrong kind shows here (not a failure).
    client_errors: dict[str, str] = field(default_factory=dict)
    layer: str = "asyncio"

    @property
    def failures(self) -> list[CaseResult]:
        return [self.results[c] for c in self.expected if not self.results[c].ok]

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failures

    def summary_line(self) -> str:
        n_ok = len(self.expected) - len(self.failures)
        extra = f", harness error: {self.error.splitlines()[0]}" if self.error else ""
        return (
            f"autobahn {self.side}: {len(self.expected)} cases, {n_ok} ok, "
            f"{len(self.failures)} failed (impl {self.impl}, layer {self.layer}, "
            f"compression {self.compression}, {self.elapsed:.1f} s){extra}"
        )

    def failure_table(self, width: int = 100) -> str:
        failures = [r for r in self.failures if r.behavior != "MISSING"]
        missing = [r.case_id for r in self.failures if r.behavior == "MISSING"]
        if not failures and not missing:
            return ""
        rows = []
        if missing:
            listed = shorten(", ".join(missing), 3 * width)
            rows.append(f"missing from the report ({len(missing)}): {listed}")
        if failures:
            rows.append(f"{'case':<9} {'behavior':<14} {'close':<14} {'code':<5} description")
        for r in failures:
            code = "" if r.remote_close_code is None else str(r.remote_close_code)
            rows.append(
                f"{r.case_id:<9} {r.behavior:<14} {r.behavior_close:<14} {code:<5} "
                f"{shorten(r.description, width)}"
            )
            pad = " " * 9
            if r.expectation:
                rows.append(f"{pad} expected: {shorten(r.expectation, 2 * width)}")
            if r.wanted:
                rows.append(f"{pad} wanted:   {shorten(r.wanted, width)}")
            if r.behavior != "MISSING":
                rows.append(f"{pad} received: {shorten(r.received or '[]', width)}")
                peer_close = (
                    "no close frame"
                    if r.remote_close_code is None
                    else f"{r.remote_close_code} {r.remote_close_reason!r}"
                )
                rows.append(f"{pad} peer's close: {shorten(peer_close, width - 4)}")
            if r.result or r.result_close:
                rows.append(f"{pad} verdict:  {shorten(r.result, width)}")
                rows.append(f"{pad} closing:  {shorten(r.result_close, width)}")
        title = f"autobahn {self.side}: {len(self.failures)} failing case(s)"
        return "\n".join([title, *("  " + row for row in rows)])

    def to_json(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "impl": self.impl,
            "layer": self.layer,
            "compression": self.compression,
            "elapsed": round(self.elapsed, 1),
            "error": self.error,
            "expected": len(self.expected),
            "failed": [r.case_id for r in self.failures],
            "client_errors": self.client_errors,
            "results": {c: asdict(self.results[c]) for c in self.expected},
        }


_TAG = re.compile(r"<[^>]*>")
_CLIENT_ERROR = re.compile(r"^echo_client: case #(\d+): (.*)$", re.MULTILINE)


def read_client_errors(report: SideReport, log: Path) -> None:
    """Collect the ``echo_client: case #N: ...`` lines; #N is the N-th expected case."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return
    for match in _CLIENT_ERROR.finditer(text):
        index = int(match.group(1)) - 1
        case_id = report.expected[index] if 0 <= index < len(report.expected) else match[1]
        report.client_errors[case_id] = match.group(2)


def clean_text(text: object) -> str:
    return " ".join(_TAG.sub(" ", str(text or "")).split())


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def summarize_events(events: object) -> str:
    """wstest's event lists (``[["message", payload, binary], ["pong", payload]]``) in short."""
    if not isinstance(events, list):
        return clean_text(events)
    parts = []
    for event in events:
        if isinstance(event, list) and event:
            kind = str(event[0])
            payload = str(event[1]) if len(event) > 1 else ""
            binary = " binary" if len(event) > 2 and event[2] else ""
            shown = payload if len(payload) <= 24 else f"{payload[:24]}...({len(payload)} chars)"
            parts.append(f"{kind}{binary} {shown!r}")
        else:
            parts.append(repr(event))
    return "[" + ", ".join(parts) + "]"


def read_reports(report: SideReport, report_dir: Path, agent: str) -> None:
    """Fill ``report.results`` from ``report_dir/index.json`` and the per-case reports."""
    index_path = report_dir / "index.json"
    index: dict[str, Any] = {}
    if index_path.is_file():
        index = json.loads(index_path.read_text()).get(agent, {})
    elif report.error is None:
        report.error = f"no report: {index_path} was not written"
    for case_id in report.expected:
        entry = index.get(case_id)
        if entry is None:
            report.results[case_id] = CaseResult(case_id, "MISSING", "MISSING")
            continue
        result = CaseResult(
            case_id,
            str(entry.get("behavior")),
            str(entry.get("behaviorClose")),
            entry.get("remoteCloseCode"),
            entry.get("duration"),
        )
        if not result.ok and entry.get("reportfile"):
            try:
                detail = json.loads((report_dir / entry["reportfile"]).read_text())
            except (OSError, ValueError):
                detail = {}
            result.description = clean_text(detail.get("description"))
            result.expectation = clean_text(detail.get("expectation"))
            result.result = clean_text(detail.get("result"))
            result.result_close = clean_text(detail.get("resultClose"))
            wanted = detail.get("expected")
            parts = []
            if isinstance(wanted, dict):
                parts = [f"{k}: {summarize_events(v)}" for k, v in sorted(wanted.items())]
            close = detail.get("expectedClose")
            if isinstance(close, dict) and close.get("closeCode"):
                parts.append(f"close code in {close['closeCode']}")
            result.wanted = "; ".join(parts)
            result.received = summarize_events(detail.get("received"))
            result.remote_close_reason = clean_text(detail.get("remoteCloseReason"))
        report.results[case_id] = result


# --------------------------------------------------------------------------------------
# Running one side


@dataclass
class Options:
    cases: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    outdir: Path | None = None  # None: .autobahn/ (asyncio) or .autobahn/sync/ (sync)
    impl: str = "tether"
    compression: str = "none"
    agent: str | None = None  # None: the impl ("tether"), "-sync" added for the sync layer
    layer: str = "asyncio"
    timeout: float | None = None  # per side; None: 600 s, or 2400 s with 12.*/13.*
    case_timeout: float = 60.0
    python: str = sys.executable
    wstest: str | None = None
    quiet: bool = False

    def side_timeout(self, expected: Sequence[str]) -> float:
        if self.timeout is not None:
            return self.timeout
        compression_cases = any(c.startswith(("12.", "13.")) for c in expected)
        return 2400.0 if compression_cases else 600.0

    def side_dir(self, side: str) -> Path:
        outdir = self.outdir
        if outdir is None:
            outdir = REPO / ".autobahn"
            if self.layer != "asyncio":
                outdir /= self.layer
        return (outdir / side).resolve()

    def agent_name(self) -> str:
        if self.agent:
            return self.agent
        return self.impl if self.layer == "asyncio" else f"{self.impl}-{self.layer}"


def _prepare(side: str, opts: Options) -> tuple[Path, Path, list[str], str]:
    wstest = find_wstest(opts.wstest)
    if wstest is None:
        raise HarnessError("wstest is not installed: run `bash .ci/install-autobahn.sh`")
    expected = select_cases(all_case_ids(wstest), opts.cases, opts.exclude)
    if not expected:
        raise HarnessError(f"no case matches cases={opts.cases} exclude={opts.exclude}")
    if opts.layer not in LAYERS:
        raise HarnessError(f"unknown layer {opts.layer!r}: expected one of {', '.join(LAYERS)}")
    side_dir = opts.side_dir(side)
    reports = side_dir / "reports"
    shutil.rmtree(reports, ignore_errors=True)  # never judge a stale report
    reports.mkdir(parents=True)
    return wstest, side_dir, expected, opts.agent_name()


def _write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.write_text(json.dumps(spec, indent=2) + "\n")
    return path


def run_server_side(opts: Options) -> SideReport:
    """wstest's fuzzingclient against our echo server."""
    started = time.monotonic()
    wstest, side_dir, expected, agent = _prepare("server", opts)
    report = SideReport(
        "server", opts.impl, opts.compression, expected, report_dir=side_dir, layer=opts.layer
    )
    deadline = started + opts.side_timeout(expected)
    port = free_port()
    spec = _write_spec(
        side_dir / "fuzzingclient.json",
        {
            "outdir": str(side_dir / "reports"),
            "servers": [{"agent": agent, "url": f"ws://{HOST}:{port}"}],
            "cases": opts.cases,
            "exclude-cases": opts.exclude,
            "exclude-agent-cases": {},
        },
    )
    server_argv = [
        opts.python, str(HERE / "echo_server.py"), "--host", HOST, "--port", str(port),
        "--impl", opts.impl, "--layer", opts.layer, "--compression", opts.compression,
    ]  # fmt: skip
    with Children() as children:
        try:
            server = children.start(
                "echo_server", server_argv, side_dir / "echo_server.log", REPO, peer=True
            )
            wait_for_port(server, port, STARTUP_TIMEOUT)
            fuzzer = children.start(
                "wstest fuzzingclient",
                [str(wstest), "-m", "fuzzingclient", "-s", str(spec)],
                side_dir / "wstest.log",
                side_dir,
            )
            status = wait_child(fuzzer, deadline, "wstest fuzzingclient")
            if status != 0:
                report.error = fuzzer.describe_exit()
            if server.proc.poll() is not None:
                report.error = f"the server died during the run: {server.describe_exit()}"
        except HarnessError as exc:
            report.error = str(exc)
    read_reports(report, side_dir / "reports", agent)
    report.elapsed = time.monotonic() - started
    return report


def run_client_side(opts: Options) -> SideReport:
    """Our echo client against wstest's fuzzingserver."""
    started = time.monotonic()
    wstest, side_dir, expected, agent = _prepare("client", opts)
    report = SideReport(
        "client", opts.impl, opts.compression, expected, report_dir=side_dir, layer=opts.layer
    )
    deadline = started + opts.side_timeout(expected)
    port = free_port()
    spec = _write_spec(
        side_dir / "fuzzingserver.json",
        {
            "url": f"ws://{HOST}:{port}",
            "outdir": str(side_dir / "reports"),
            "cases": opts.cases,
            "exclude-cases": opts.exclude,
            "exclude-agent-cases": {},
        },
    )
    client_argv = [
        opts.python, str(HERE / "echo_client.py"), "--uri", f"ws://{HOST}:{port}",
        "--agent", agent, "--impl", opts.impl, "--layer", opts.layer,
        "--compression", opts.compression,
        "--case-timeout", str(opts.case_timeout), "--tracebacks",
    ]  # fmt: skip
    with Children() as children:
        try:
            fuzzer = children.start(
                "wstest fuzzingserver",
                # -u 0: no web page on port 8080.
                [str(wstest), "-m", "fuzzingserver", "-u", "0", "-s", str(spec)],
                side_dir / "wstest.log",
                side_dir,
            )
            wait_for_port(fuzzer, port, STARTUP_TIMEOUT)
            client = children.start(
                "echo_client", client_argv, side_dir / "echo_client.log", REPO, peer=True
            )
            status = wait_child(client, deadline, "echo_client")
            if status != 0:
                report.error = client.describe_exit()
            if fuzzer.proc.poll() is not None:
                report.error = f"wstest died during the run: {fuzzer.describe_exit()}"
        except HarnessError as exc:
            report.error = str(exc)
    # The fuzzing server writes the reports before it answers /updateReports with a close,
    # and the client waits for that close: once the client exited, they are complete.
    read_reports(report, side_dir / "reports", agent)
    read_client_errors(report, side_dir / "echo_client.log")
    report.elapsed = time.monotonic() - started
    return report


def run_side(side: str, opts: Options) -> SideReport:
    """Run one side and return its report (also written to ``<outdir>/<side>/summary.json``).
    Raises HarnessError only if the run cannot start (no wstest, no case selected)."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {SIDES}, not {side!r}")
    report = run_server_side(opts) if side == "server" else run_client_side(opts)
    if report.report_dir is not None:
        (report.report_dir / "summary.json").write_text(
            json.dumps(report.to_json(), indent=2) + "\n"
        )
    return report


def run_concurrently(runs: Sequence[tuple[str, Options]], jobs: int) -> list[Future[SideReport]]:
    """Start ``runs`` (side, options) in background threads, ``jobs`` at a time, in order.

    wstest is a single-threaded Python 2 process that uses most of a core while the echo
    peer under test uses a fifth of one, so runs scale with the cores until there are
    about as many as cores. Each run has its own ports and output directory (give runs of
    the same side distinct ``outdir``). The futures give the reports; a run that could not
    start raises its :class:`HarnessError` from ``result()``. Call :func:`cancel_runs` to
    stop them early (their subprocesses are killed within about ``POLL`` seconds).
    """
    _cancelled.clear()
    pool = ThreadPoolExecutor(max(1, jobs), thread_name_prefix="autobahn")
    try:
        return [pool.submit(run_side, side, opts) for side, opts in runs]
    finally:
        pool.shutdown(wait=False)  # the threads end with their runs


def format_report(report: SideReport) -> str:
    parts = []
    if report.error:
        parts.append(f"autobahn {report.side}: harness error: {report.error}")
    if report.client_errors:
        lines = [
            f"autobahn {report.side}: the echo client raised in {len(report.client_errors)} "
            "case(s) (not counted as failures: wstest judges the wire; details in "
            "echo_client.log):"
        ]
        for case_id, error in report.client_errors.items():
            behavior = report.results[case_id].behavior if case_id in report.results else "?"
            lines.append(f"  {case_id:<9} {behavior:<14} {shorten(error, 120)}")
        parts.append("\n".join(lines))
    table = report.failure_table()
    if table:
        parts.append(table)
    if report.report_dir is not None and (report.report_dir / "reports" / "index.html").exists():
        parts.append(f"reports: {report.report_dir / 'reports' / 'index.html'}")
    parts.append(report.summary_line())
    return "\n".join(parts)


# --------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run the Autobahn Testsuite against tether and check every case.",
    )
    parser.add_argument("--side", choices=(*SIDES, "both"), default="both")
    parser.add_argument("--cases", default="*", help="comma-separated case patterns (wstest's)")
    parser.add_argument(
        "--exclude",
        default=",".join(DEFAULT_EXCLUDE),
        help="comma-separated case patterns to skip (default '12.*,13.*'; '' runs all)",
    )
    parser.add_argument(
        "--outdir",
        type=Path,
        help="where specs, logs, reports go (default .autobahn/, .autobahn/sync/ for sync)",
    )
    parser.add_argument("--impl", choices=("tether", "websockets"), default="tether")
    parser.add_argument(
        "--layer",
        choices=(*LAYERS, "both"),
        default="asyncio",
        help="the peers' layer: asyncio (default), sync (tether.sync, threads), or both",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs (sides x layers) at a time (default 1; about the number of cores helps)",
    )
    parser.add_argument("--compression", choices=("none", "deflate"), default="none")
    parser.add_argument(
        "--agent", help="agent name in the reports (default: --impl, '-sync' added for sync)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        help="hard limit in seconds per side (default 600, or 2400 with cases 12.*/13.*)",
    )
    parser.add_argument(
        "--case-timeout", type=float, default=60.0, help="client side: seconds per case"
    )
    parser.add_argument("--python", default=sys.executable, help="Python for the echo peers")
    parser.add_argument("--wstest", help="path of wstest (default: found as the README says)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sides = SIDES if args.side == "both" else (args.side,)
    layers = LAYERS if args.layer == "both" else (args.layer,)
    runs = []
    for layer in layers:
        outdir = args.outdir
        if outdir is not None and len(layers) > 1 and layer != "asyncio":
            outdir = outdir / layer
        opts = Options(
            cases=split_patterns(args.cases),
            exclude=split_patterns(args.exclude),
            outdir=outdir,
            impl=args.impl,
            compression=args.compression,
            agent=args.agent,
            layer=layer,
            timeout=args.timeout,
            case_timeout=args.case_timeout,
            python=args.python,
            wstest=args.wstest,
        )
        runs += [(side, opts) for side in sides]
    started = time.monotonic()
    reports: list[SideReport] = []
    with signals_as_exit():
        futures = run_concurrently(runs, args.jobs)
        try:
            for (side, _), future in zip(runs, futures, strict=True):
                try:
                    report = future.result()
                except HarnessError as exc:
                    print(f"autobahn {side}: {exc}", file=sys.stderr)
                    return 2
                print(format_report(report), flush=True)
                reports.append(report)
        finally:
            # Nothing is left to stop unless we are leaving early (an error, Ctrl-C).
            for future in futures:
                future.cancel()
            cancel_runs()
            wait(futures, timeout=STOP_TIMEOUT + STARTUP_TIMEOUT)
    if len(reports) > 1:
        print("\n".join(r.summary_line() for r in reports))
        print(f"autobahn: {len(reports)} runs, {args.jobs} at a time: "
              f"{time.monotonic() - started:.1f} s")
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
