"""Echo client for the Autobahn Testsuite (``wstest -m fuzzingserver`` tests it).

Run: ``python tests/autobahn/echo_client.py --uri ws://127.0.0.1:9001 --agent tether
[--impl tether|websockets] [--layer asyncio|sync] [--compression none|deflate]``.

It asks the fuzzing server for the number of cases (``/getCaseCount``), runs every case
(``/runCase?case=N&agent=A``) echoing each message until the connection closes, then has the
server write its reports (``/updateReports?agent=A``). Each case has a timeout, so a hang
costs one case, never the whole run. Exit status 0 once the reports were requested, even if
cases failed: judging the cases is the reports' job (see run.py).

``--layer sync`` runs the same client on the threading layer (``tether.sync.connect``;
``websockets.sync`` with ``--impl websockets``): blocking calls, and a watchdog thread that
closes the connection when a case runs out of time, as ``asyncio.wait_for`` cancels it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

IMPLS = ("tether", "websockets")
LAYERS = ("asyncio", "sync")


def load_impl(
    impl: str, layer: str = "asyncio"
) -> tuple[Callable[..., Any], type[BaseException]]:
    """Return ``(connect, ConnectionClosed)`` of the selected WebSocket library and layer."""
    if layer not in LAYERS:
        raise ValueError(f"unknown layer {layer!r}: expected one of {', '.join(LAYERS)}")
    if impl == "tether":
        import tether

        if layer == "sync":
            from tether.sync import connect as sync_connect

            return sync_connect, tether.ConnectionClosed
        return tether.connect, tether.ConnectionClosed
    if impl == "websockets":
        # websockets caps a message at 4096 fragments by default; cases 9.3.*/9.4.* send
        # up to 4 Mi fragments (2**22).
        os.environ.setdefault("WEBSOCKETS_MAX_FRAGMENTS", str(2**23))
        from websockets.exceptions import ConnectionClosed

        if layer == "sync":
            from websockets.sync.client import connect as ws_sync_connect

            return ws_sync_connect, ConnectionClosed
        from websockets.asyncio.client import connect

        return connect, ConnectionClosed
    raise ValueError(f"unknown impl {impl!r}: expected one of {', '.join(IMPLS)}")


def describe(exc: BaseException) -> str:
    """``Type: message``, followed by its causes: what a failed case raised, and why."""
    parts = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return " <- caused by ".join(parts)


class BaseEchoClient:
    """What both layers' clients share: options, and the lines they print."""

    layer = "asyncio"

    def __init__(self, args: argparse.Namespace) -> None:
        self.uri = args.uri.rstrip("/")
        self.agent = quote(args.agent, safe="")
        self.case_timeout: float = args.case_timeout
        self.tracebacks: bool = args.tracebacks
        self.connect, self.closed = load_impl(args.impl, self.layer)
        self.options: dict[str, Any] = {
            "max_size": args.max_size,
            "compression": None if args.compression == "none" else args.compression,
            # No keepalive pings: they would add frames the fuzzer does not expect.
            "ping_interval": None,
        }

    def report_error(self, case: int, exc: BaseException) -> None:
        # A handshake refused or a connection failed by the peer: the report says
        # whether that was right; go on with the next case.
        print(f"echo_client: case #{case}: {describe(exc)}", flush=True)
        if self.tracebacks:
            traceback.print_exception(exc, file=sys.stdout)

    def report_timeout(self, case: int) -> None:
        print(f"echo_client: case #{case} timed out after {self.case_timeout} s", flush=True)

    def report_done(self, count: int, outcomes: list[str], started: float) -> None:
        errors, timeouts = outcomes.count("error"), outcomes.count("timeout")
        elapsed = time.monotonic() - started
        print(
            f"echo_client: ran {count} cases in {elapsed:.1f} s "
            f"({errors} raised, {timeouts} timed out); reports requested",
            flush=True,
        )


class EchoClient(BaseEchoClient):
    """The asyncio client: ``tether.connect`` (or websockets.asyncio)."""

    async def case_count(self) -> int:
        async with self.connect(f"{self.uri}/getCaseCount", **self.options) as ws:
            message = await asyncio.wait_for(ws.recv(), self.case_timeout)
        return int(message)

    async def echo_case(self, case: int) -> None:
        uri = f"{self.uri}/runCase?case={case}&agent={self.agent}"
        async with self.connect(uri, **self.options) as ws:
            try:
                async for message in ws:
                    await ws.send(message)
            except self.closed:
                pass  # many cases end with a failed connection on purpose

    async def update_reports(self) -> None:
        uri = f"{self.uri}/updateReports?agent={self.agent}"
        async with self.connect(uri, **self.options) as ws:
            # The server writes the reports, then closes: wait for its close.
            try:
                async for _ in ws:
                    pass
            except self.closed:
                pass

    async def run_case(self, case: int) -> str:
        """Run one case; return "ok", "timeout" or "error"."""
        try:
            await asyncio.wait_for(self.echo_case(case), self.case_timeout)
        except asyncio.TimeoutError:
            self.report_timeout(case)
            return "timeout"
        except Exception as exc:
            self.report_error(case, exc)
            return "error"
        return "ok"

    async def run(self) -> int:
        started = time.monotonic()
        count = await self.case_count()
        print(f"echo_client: {count} cases to run", flush=True)
        outcomes = [await self.run_case(case) for case in range(1, count + 1)]
        await asyncio.wait_for(self.update_reports(), self.case_timeout)
        self.report_done(count, outcomes, started)
        return 0


class SyncEchoClient(BaseEchoClient):
    """The same client on a threading layer: ``tether.sync.connect`` (or websockets.sync).

    A case's time limit covers connecting (``open_timeout``) and echoing: a watchdog
    thread closes the connection when the time is up, which ends a ``recv`` or a
    ``send`` blocked in this thread (``close()`` may be called from any thread), as
    ``asyncio.wait_for`` cancels the asyncio client's case and closes its connection.
    """

    layer = "sync"

    def case_count(self) -> int:
        uri = f"{self.uri}/getCaseCount"
        with self.connect(uri, open_timeout=self.case_timeout, **self.options) as ws:
            message = ws.recv(timeout=self.case_timeout)
        return int(message)

    def echo_case(self, ws: Any) -> None:
        try:
            for message in ws:
                ws.send(message)
        except self.closed:
            pass  # many cases end with a failed connection on purpose

    def update_reports(self) -> None:
        uri = f"{self.uri}/updateReports?agent={self.agent}"
        deadline = time.monotonic() + self.case_timeout
        with self.connect(uri, open_timeout=self.case_timeout, **self.options) as ws:
            # The server writes the reports, then closes: wait for its close.
            try:
                while True:
                    ws.recv(timeout=max(0.0, deadline - time.monotonic()))
            except self.closed:
                pass

    def run_case(self, case: int) -> str:
        """Run one case; return "ok", "timeout" or "error"."""
        uri = f"{self.uri}/runCase?case={case}&agent={self.agent}"
        deadline = time.monotonic() + self.case_timeout
        timed_out = threading.Event()
        try:
            ws = self.connect(uri, open_timeout=self.case_timeout, **self.options)

            def expire() -> None:
                timed_out.set()
                ws.close()

            watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), expire)
            watchdog.daemon = True
            watchdog.start()
            try:
                with ws:
                    self.echo_case(ws)
            finally:
                watchdog.cancel()
        except TimeoutError:  # the opening handshake took the whole case's time
            self.report_timeout(case)
            return "timeout"
        except Exception as exc:
            if timed_out.is_set():
                self.report_timeout(case)
                return "timeout"
            self.report_error(case, exc)
            return "error"
        if timed_out.is_set():
            self.report_timeout(case)
            return "timeout"
        return "ok"

    def run(self) -> int:
        started = time.monotonic()
        count = self.case_count()
        print(f"echo_client: {count} cases to run", flush=True)
        outcomes = [self.run_case(case) for case in range(1, count + 1)]
        self.update_reports()
        self.report_done(count, outcomes, started)
        return 0


def parse_max_size(value: str) -> int | None:
    size = int(value)
    if size < 0:
        raise argparse.ArgumentTypeError("--max-size must be >= 0 (0 means no limit)")
    return size or None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", default="ws://127.0.0.1:9001", help="the fuzzing server")
    parser.add_argument("--agent", default="tether", help="name of the client in the reports")
    parser.add_argument("--impl", choices=IMPLS, default="tether")
    parser.add_argument(
        "--layer", choices=LAYERS, default="asyncio", help="asyncio (default) or sync (threads)"
    )
    parser.add_argument("--compression", choices=("none", "deflate"), default="none")
    parser.add_argument(
        "--max-size",
        type=parse_max_size,
        default=None,
        help="largest message in bytes; 0 (the default) means no limit: cases 9.* send 16 MiB",
    )
    parser.add_argument(
        "--case-timeout", type=float, default=60.0, help="seconds allowed per case (default 60)"
    )
    parser.add_argument(
        "--tracebacks", action="store_true", help="print the traceback of each case that raised"
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.layer == "sync":
        return SyncEchoClient(args).run()
    return asyncio.run(EchoClient(args).run())


if __name__ == "__main__":
    sys.exit(main())
