"""The Autobahn Testsuite against tether's server and client (see README.md here).

test_autobahn* test the asyncio layer (tether.serve / tether.connect), test_autobahn_sync*
the threading layer (tether.sync.serve / tether.sync.connect), with the same cases.

Marked ``autobahn``: ``pytest -m autobahn tests/autobahn``. Skipped when wstest is not
installed (``bash .ci/install-autobahn.sh``), unless TETHER_REQUIRE_AUTOBAHN=1, which makes
a missing wstest a failure.

Which cases run is set by the constants below, or for one run by the environment:
TETHER_AUTOBAHN_CASES, TETHER_AUTOBAHN_EXCLUDE (comma-separated wstest patterns; an empty
TETHER_AUTOBAHN_EXCLUDE runs the compression cases too), TETHER_AUTOBAHN_COMPRESSION
(none|deflate); they apply to test_autobahn and test_autobahn_sync alike.
TETHER_AUTOBAHN_DEFLATE_CASES does the same for the deflate tests (say, '12.1.1,13.1.1' to
check the harness in a few seconds).

The permessage-deflate runs (test_autobahn_deflate and test_autobahn_sync_deflate, both
sides: four runs of 7-12 minutes) start together when the first of them runs, in
background threads, TETHER_AUTOBAHN_JOBS at a time (default: the number of CPUs, at most
4); each test then waits for its own run's report. wstest is the bottleneck (a Python 2
process using most of a core, the peer under test a fifth of one), so on 2 cores two at a
time take about half as long as one after the other (timings in README.md).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from concurrent.futures import Future, wait
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent

CASES = ("*",)
# 12.* and 13.* are the permessage-deflate cases: ~10 more minutes a side, and they need
# compression="deflate" on both peers; test_autobahn_deflate runs them (CI runs both;
# TETHER_AUTOBAHN_SKIP_DEFLATE=1 skips them for a quick local run).
EXCLUDE = ("12.*", "13.*")
COMPRESSION = "none"
DEFLATE_CASES = ("12.*", "13.*")
# The deflate tests: name → (layer, the output directory under .autobahn/).
DEFLATE_TESTS = {
    "test_autobahn_deflate": ("asyncio", "pytest-deflate"),
    "test_autobahn_sync_deflate": ("sync", "pytest-sync-deflate"),
}
# Each deflate test waits at most this long for its run (which may start only once
# other runs are done): pytest's own limit for the test, a little above it.
DEFLATE_WAIT = 2 * 2400.0
skip_deflate = pytest.mark.skipif(
    os.environ.get("TETHER_AUTOBAHN_SKIP_DEFLATE") == "1",
    reason="TETHER_AUTOBAHN_SKIP_DEFLATE=1",
)


def _load_runner() -> ModuleType:
    # Loaded by path: "run" is too common a module name to put on sys.path.
    name = "tether_autobahn_run"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


runner = _load_runner()


def _patterns(variable: str, default: tuple[str, ...]) -> list[str]:
    value = os.environ.get(variable)
    return list(default) if value is None else runner.split_patterns(value)


def require_wstest() -> Path:
    path = runner.find_wstest()
    if path is None:
        reason = (
            "wstest (Autobahn Testsuite) is not installed: run `bash .ci/install-autobahn.sh` "
            "(or set AUTOBAHN_WSTEST to its path)"
        )
        if os.environ.get("TETHER_REQUIRE_AUTOBAHN") == "1":
            pytest.fail(f"TETHER_REQUIRE_AUTOBAHN=1 but {reason}")
        pytest.skip(reason)
    return Path(path)


@pytest.mark.autobahn
# Far above the ~1 minute a side takes without 12.*/13.*, and above the runner's own
# 2400 s limit for the full run with them, so that the runner reports what failed.
@pytest.mark.timeout(2700)
@pytest.mark.parametrize("side", ["server", "client"])
def test_autobahn(side: str) -> None:
    cases = _patterns("TETHER_AUTOBAHN_CASES", CASES)
    exclude = _patterns("TETHER_AUTOBAHN_EXCLUDE", EXCLUDE)
    compression = os.environ.get("TETHER_AUTOBAHN_COMPRESSION", COMPRESSION)
    _run(side, cases, exclude, compression, "pytest")


@pytest.fixture(scope="module")
def deflate_runs(request: pytest.FixtureRequest) -> Iterator[dict[tuple[str, str], Future[Any]]]:
    """Start every selected deflate run at once (see the module's docstring); yield the
    futures of their reports by (test name, side); stop what is left at the end."""
    wstest = require_wstest()
    runs = []
    for item in request.session.items:
        name = getattr(item, "originalname", None)
        if name in DEFLATE_TESTS:  # selected (-k, -m) and not skipped, as we are here
            side = item.callspec.params["side"]  # type: ignore[attr-defined]
            layer, out = DEFLATE_TESTS[name]
            cases = _patterns("TETHER_AUTOBAHN_DEFLATE_CASES", DEFLATE_CASES)
            opts = _options(cases, [], "deflate", out, layer, wstest)
            runs.append(((name, side), (side, opts)))
    # The threading layer's runs first: they were the slowest.
    runs.sort(key=lambda run: run[1][1].layer != "sync")
    jobs = int(os.environ.get("TETHER_AUTOBAHN_JOBS") or min(4, os.cpu_count() or 1))
    futures = runner.run_concurrently([run for _, run in runs], jobs)
    try:
        yield {key: future for (key, _), future in zip(runs, futures, strict=True)}
    finally:
        for future in futures:
            future.cancel()
        runner.cancel_runs()
        wait(futures, timeout=runner.STOP_TIMEOUT + runner.STARTUP_TIMEOUT)


@pytest.mark.autobahn
@pytest.mark.timeout(DEFLATE_WAIT + 60)
@skip_deflate
@pytest.mark.parametrize("side", ["server", "client"])
def test_autobahn_deflate(
    side: str, deflate_runs: dict[tuple[str, str], Future[Any]]
) -> None:
    """Cases 12.* and 13.*: permessage-deflate with every parameter combination."""
    _check(deflate_runs[("test_autobahn_deflate", side)])


@pytest.mark.autobahn
@pytest.mark.timeout(2700)
@pytest.mark.parametrize("side", ["server", "client"])
def test_autobahn_sync(side: str) -> None:
    """test_autobahn against tether.sync: the threading server and client."""
    cases = _patterns("TETHER_AUTOBAHN_CASES", CASES)
    exclude = _patterns("TETHER_AUTOBAHN_EXCLUDE", EXCLUDE)
    compression = os.environ.get("TETHER_AUTOBAHN_COMPRESSION", COMPRESSION)
    _run(side, cases, exclude, compression, "pytest-sync", layer="sync")


@pytest.mark.autobahn
@pytest.mark.timeout(DEFLATE_WAIT + 60)
@skip_deflate
@pytest.mark.parametrize("side", ["server", "client"])
def test_autobahn_sync_deflate(
    side: str, deflate_runs: dict[tuple[str, str], Future[Any]]
) -> None:
    """test_autobahn_deflate against tether.sync: cases 12.* and 13.*."""
    _check(deflate_runs[("test_autobahn_sync_deflate", side)])


def _check(future: Future[Any]) -> None:
    report = future.result(timeout=DEFLATE_WAIT)
    print(report.summary_line())
    assert report.ok, runner.format_report(report)


def _options(
    cases: list[str], exclude: list[str], compression: str, out: str, layer: str,
    wstest: Path,
) -> Any:
    return runner.Options(
        cases=cases,
        exclude=exclude,
        outdir=runner.REPO / ".autobahn" / out,
        impl="tether",
        layer=layer,
        # Distinct agents, so that a report never passes for another layer's.
        agent="tether" if layer == "asyncio" else f"tether-{layer}",
        compression=compression,
        # The runner's own limit (600 s, or 2400 s with 12.*/13.*) fires before pytest's.
        timeout=None,
        python=sys.executable,
        wstest=str(wstest),
    )


def _run(
    side: str,
    cases: list[str],
    exclude: list[str],
    compression: str,
    out: str,
    layer: str = "asyncio",
) -> None:
    opts = _options(cases, exclude, compression, out, layer, require_wstest())
    report = runner.run_side(side, opts)
    print(report.summary_line())
    assert report.ok, runner.format_report(report)
