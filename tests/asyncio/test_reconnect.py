"""``async for ws in tether.connect(uri)``: reconnection, backoff, what is retried.

Real servers on 127.0.0.1, stopped and started again. No test waits for a backoff
delay: the iterator's seams (``_sleep``, ``_clock``, ``_random``) are replaced by a
:class:`FakeTime` that records each delay asked for and moves a fake clock instead,
and the jitter is pinned to its ceiling so that the delays are exact. One test keeps
the real ``asyncio.sleep`` with a base of milliseconds and synchronises on the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import tether
from tether.asyncio.client import Backoff, process_exception

from .conftest import TIMEOUT, RawServer, Run, TLSFiles, echo, uri


class Stop(Exception):
    """Raised by a fake sleep to end a test's reconnection loop."""


class FakeTime:
    """A clock that only moves when told to, and a sleep that moves it."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.stop_after = stop_after
        #: called (and awaited) with the number of sleeps so far, after each one
        self.on_sleep: Callable[[int], Any] | None = None

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        if self.on_sleep is not None:
            await self.on_sleep(len(self.sleeps))
        if self.stop_after is not None and len(self.sleeps) >= self.stop_after:
            raise Stop
        await asyncio.sleep(0)


def reconnecting(
    target: str, fake: FakeTime, *, jitter: float = 1.0, **options: Any
) -> tether.connect:
    """``tether.connect(target, **options)`` on fake time, jitter pinned at ``jitter``."""
    iterator = tether.connect(target, **options)
    iterator._sleep = fake.sleep
    iterator._clock = fake.clock
    iterator._random = lambda: jitter
    return iterator


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections: bound, not listening, kept."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def statuses(*answers: tuple[int, dict[str, str]]) -> Callable[..., Any]:
    """A process_request answering the given (status, headers) in turn, then accepting."""
    queue = list(answers)

    def process_request(
        connection: tether.ServerConnection, request: tether.Request
    ) -> tether.Response | None:
        if not queue:
            return None
        status, headers = queue.pop(0)
        response = connection.respond(status, f"{status}\n")
        for name, value in headers.items():
            response.headers[name] = value
        return response

    return process_request


async def greeter(ws: tether.ServerConnection) -> None:
    """Say hello, then wait for the client to go."""
    await ws.send("hello")
    await ws.wait_closed()


# --------------------------------------------------------------------------- Backoff


def test_backoff_grows_by_factor_and_is_capped() -> None:
    backoff = Backoff(1.0, 2.0, 10.0, random=lambda: 1.0)
    assert [next(backoff) for _ in range(7)] == [1, 2, 4, 8, 10, 10, 10]
    assert iter(backoff) is backoff
    backoff.reset()
    assert next(backoff) == 1


def test_backoff_has_full_jitter() -> None:
    backoff = Backoff(1.0, 1.618, 60.0, random=lambda: 0.25)
    assert next(backoff) == 0.25
    assert next(backoff) == pytest.approx(0.25 * 1.618)
    # With the real random source: every delay between 0 and its ceiling.
    real = Backoff(1.0, 2.0, 8.0)
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8]
    for ceiling in ceilings:
        assert 0 <= next(real) <= ceiling


def test_default_backoff_first_retry_within_a_second_capped_at_a_minute() -> None:
    connect = tether.connect("ws://127.0.0.1:1/")
    backoff = Backoff(connect.backoff_initial, connect.backoff_factor, connect.backoff_max,
                      random=lambda: 1.0)
    delays = [next(backoff) for _ in range(20)]
    assert delays[0] == 1.0
    assert delays == sorted(delays)
    assert max(delays) == 60.0
    assert connect.backoff_reset_after == 10.0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backoff_initial": -1}, "backoff_initial must be >= 0"),
        ({"backoff_factor": 0.5}, "backoff_factor must be >= 1"),
        ({"backoff_initial": 5, "backoff_max": 1}, "backoff_max must be >= backoff_initial"),
        ({"backoff_max": float("nan")}, "backoff_max"),
        ({"backoff_reset_after": -1}, "backoff_reset_after must be >= 0"),
    ],
)
def test_bad_backoff_options(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tether.connect("ws://127.0.0.1:1/", **options)  # type: ignore[arg-type]


# -------------------------------------------------------------------- reconnecting


def test_reconnects_after_the_server_restarts(run: Run) -> None:
    """Stop the server: the client retries with growing delays until it is back."""
    fake = FakeTime()

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(tether.serve(greeter, "127.0.0.1", 0))
            port = server.port

            async def restart_on_third_sleep(n: int) -> None:
                if n == 3:
                    await stack.enter_async_context(tether.serve(greeter, "127.0.0.1", port))

            fake.on_sleep = restart_on_third_sleep
            connections = 0
            async for ws in reconnecting(uri(server), fake):
                connections += 1
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hello"
                if connections == 2:
                    await ws.close()
                    break
                server.close()  # closes the connection with 1001 going away
                await asyncio.wait_for(server.wait_closed(), TIMEOUT)
                with pytest.raises(tether.ConnectionClosedOK):
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
                assert ws.close_code == 1001

        # Closed after 0 s: no reset. Then two refusals while the server is down.
        assert fake.sleeps == [1.0, pytest.approx(1.618), pytest.approx(1.618**2)]

    run(main())


def test_backoff_delays_grow_and_are_capped(run: Run) -> None:
    async def main() -> None:
        fake = FakeTime(stop_after=8)
        with refused_port() as port, pytest.raises(Stop):
            async for _ws in reconnecting(
                f"ws://127.0.0.1:{port}/", fake,
                backoff_initial=0.5, backoff_factor=2, backoff_max=10,
            ):
                pytest.fail("nothing listens there")  # pragma: no cover
        assert fake.sleeps == [0.5, 1, 2, 4, 8, 10, 10, 10]

    run(main())


def test_jittered_delays_stay_under_their_ceilings(run: Run) -> None:
    async def main() -> None:
        fake = FakeTime(stop_after=6)
        with refused_port() as port, pytest.raises(Stop):
            iterator = tether.connect(f"ws://127.0.0.1:{port}/", backoff_initial=1,
                                      backoff_factor=2, backoff_max=4)
            iterator._sleep = fake.sleep
            async for _ws in iterator:
                pytest.fail("nothing listens there")  # pragma: no cover
        for delay, ceiling in zip(fake.sleeps, [1, 2, 4, 4, 4, 4], strict=True):
            assert 0 <= delay <= ceiling

    run(main())


def test_backoff_resets_after_a_connection_that_stayed_up(run: Run) -> None:
    """Connections that close at once keep the delays growing; one that lasted resets
    them. The server closes when the client says so; the fake clock says how long."""

    async def closer(ws: tether.ServerConnection) -> None:
        await ws.recv()
        await ws.close(1011, "going down")

    async def main() -> None:
        fake = FakeTime(stop_after=5)
        lifetimes = iter([0.0, 3.0, 10.0, 0.0, 9.9])
        async with tether.serve(closer, "127.0.0.1", 0) as server:
            with pytest.raises(Stop):
                async for ws in reconnecting(
                    uri(server), fake, backoff_initial=1, backoff_factor=2,
                    backoff_max=100, backoff_reset_after=10,
                ):
                    fake.now += next(lifetimes)
                    await ws.send("close, please")
                    with pytest.raises(tether.ConnectionClosedError):
                        await asyncio.wait_for(ws.recv(), TIMEOUT)
                    # The fake clock moves on after the connection was lost: the
                    # connection's life ended when it was lost, not now.
                    fake.now += 50
        assert fake.sleeps == [1, 2, 1, 2, 4]

    run(main())


def test_moving_on_closes_the_previous_connection(run: Run) -> None:
    async def main() -> None:
        fake = FakeTime()
        seen: list[tether.ClientConnection] = []
        async with tether.serve(greeter, "127.0.0.1", 0) as server:
            async for ws in reconnecting(uri(server), fake):
                seen.append(ws)
                if len(seen) == 2:
                    await ws.close()
                    break
        assert seen[0].close_code == 1000
        assert seen[0] is not seen[1]
        assert len(fake.sleeps) == 1

    run(main())


# ------------------------------------------------------------- what is retried


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_5xx_and_429_are_retried(run: Run, status: int) -> None:
    async def main() -> None:
        fake = FakeTime()
        process_request = statuses((status, {}), (status, {}))
        async with tether.serve(echo, "127.0.0.1", 0, process_request=process_request) as server:
            async for ws in reconnecting(uri(server), fake):
                await ws.close()
                break
        assert fake.sleeps == [1.0, pytest.approx(1.618)]

    run(main())


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        ("7", 7.0),  # longer than the backoff's 1 s
        ("0", 1.0),  # shorter: the backoff's delay stands
        ("3600", 60.0),  # capped at backoff_max
        ("soon", 1.0),  # not a number nor a date: ignored
    ],
)
@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_seconds(run: Run, status: int, retry_after: str, expected: float) -> None:
    async def main() -> None:
        fake = FakeTime()
        process_request = statuses((status, {"Retry-After": retry_after}))
        async with tether.serve(echo, "127.0.0.1", 0, process_request=process_request) as server:
            async for ws in reconnecting(uri(server), fake):
                await ws.close()
                break
        assert fake.sleeps == [expected]

    run(main())


def test_retry_after_http_date(run: Run) -> None:
    async def main() -> None:
        fake = FakeTime()
        when = email.utils.formatdate(time.time() + 30, usegmt=True)
        process_request = statuses((503, {"Retry-After": when}))
        async with tether.serve(echo, "127.0.0.1", 0, process_request=process_request) as server:
            async for ws in reconnecting(uri(server), fake, jitter=0.0):
                await ws.close()
                break
        [delay] = fake.sleeps
        assert 27 < delay <= 30

    run(main())


def test_404_stops(run: Run) -> None:
    async def main() -> None:
        fake = FakeTime()
        process_request = statuses((404, {}))
        async with tether.serve(echo, "127.0.0.1", 0, process_request=process_request) as server:
            with pytest.raises(tether.InvalidStatus) as info:
                async for _ws in reconnecting(uri(server), fake):
                    pytest.fail("the server said 404")  # pragma: no cover
        assert info.value.response.status == 404
        assert fake.sleeps == []

    run(main())


@pytest.mark.parametrize("server_hostname", [None, "wrong.example"])
def test_tls_verification_failure_stops(
    run_any: Run, tls_files: TLSFiles, server_hostname: str | None
) -> None:
    """An unknown CA (the system's trust store doesn't know the test's) or a name that
    doesn't match the certificate: retrying can't fix either."""

    async def main() -> None:
        fake = FakeTime()
        context = tls_files.client_context() if server_hostname else None
        async with tether.serve(echo, "127.0.0.1", 0, ssl=tls_files.server_context()) as server:
            with pytest.raises(ssl.SSLCertVerificationError):
                async for _ws in reconnecting(
                    f"wss://127.0.0.1:{server.port}/", fake, ssl=context,
                    server_hostname=server_hostname,
                ):
                    pytest.fail("the certificate should not verify")  # pragma: no cover
        assert fake.sleeps == []

    run_any(main())


def test_bad_uri_stops() -> None:
    with pytest.raises(tether.InvalidURI):
        tether.connect("http://127.0.0.1/")


def test_negotiation_error_stops(run: Run) -> None:
    async def main() -> None:
        fake = FakeTime()
        async with RawServer(subprotocol="unasked") as server:
            with pytest.raises(tether.NegotiationError):
                async for _ws in reconnecting(f"ws://127.0.0.1:{server.port}/", fake):
                    pytest.fail("the subprotocol was not offered")  # pragma: no cover
        assert fake.sleeps == []

    run(main())


def test_open_timeout_is_retried(run: Run) -> None:
    async def main() -> None:
        fake = FakeTime(stop_after=2)
        async with RawServer(handshake=False) as server:
            with pytest.raises(Stop):
                async for _ws in reconnecting(f"ws://127.0.0.1:{server.port}/", fake,
                                              open_timeout=0.05):
                    pytest.fail("the server never answers")  # pragma: no cover
        assert len(fake.sleeps) == 2

    run(main())


def test_default_process_exception() -> None:
    refused = ConnectionRefusedError(111, "refused")
    assert process_exception(refused) is None
    assert process_exception(TimeoutError()) is None
    assert process_exception(tether.InvalidMessage("closed during the handshake")) is None
    for status in (500, 503, 429):
        assert process_exception(tether.InvalidStatus(tether.Response(status))) is None
    for status in (400, 401, 403, 404, 302):
        error = tether.InvalidStatus(tether.Response(status))
        assert process_exception(error) is error
    bad_cert = ssl.SSLCertVerificationError("certificate verify failed")
    assert process_exception(bad_cert) is bad_cert
    negotiation = tether.NegotiationError("no subprotocol")
    assert process_exception(negotiation) is negotiation


# ------------------------------------------------------------------ process_exception


def test_process_exception_retries_what_it_returns_none_for(run: Run) -> None:
    """A 404 retried twice, then raised as an exception of the user's choosing."""
    seen: list[Exception] = []

    class GiveUp(Exception):
        pass

    def decide(exc: Exception) -> Exception | None:
        seen.append(exc)
        return None if len(seen) < 3 else GiveUp("enough")

    async def main() -> None:
        fake = FakeTime()
        process_request = statuses(*[(404, {})] * 5)
        async with tether.serve(echo, "127.0.0.1", 0, process_request=process_request) as server:
            with pytest.raises(GiveUp) as info:
                async for _ws in reconnecting(uri(server), fake, process_exception=decide):
                    pytest.fail("the server said 404")  # pragma: no cover
        assert isinstance(info.value.__cause__, tether.InvalidStatus)
        assert len(fake.sleeps) == 2
        assert all(isinstance(exc, tether.InvalidStatus) for exc in seen)

    run(main())


def test_process_exception_can_stop_what_would_be_retried(run: Run) -> None:
    def no_retry(exc: Exception) -> Exception | None:
        return exc

    async def main() -> None:
        fake = FakeTime()
        with refused_port() as port, pytest.raises(ConnectionRefusedError):
            async for _ws in reconnecting(f"ws://127.0.0.1:{port}/", fake,
                                          process_exception=no_retry):
                pytest.fail("nothing listens there")  # pragma: no cover
        assert fake.sleeps == []

    run(main())


def test_process_exception_that_raises(run: Run) -> None:
    def broken(exc: Exception) -> Exception | None:
        raise KeyError("oops")

    async def main() -> None:
        with refused_port() as port, pytest.raises(KeyError):
            async for _ws in reconnecting(f"ws://127.0.0.1:{port}/", FakeTime(),
                                          process_exception=broken):
                pytest.fail("nothing listens there")  # pragma: no cover

    run(main())


# -------------------------------------------------------------------------- logging


def test_each_reconnection_is_logged_at_info(run: Run, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tether.client")

    async def main() -> None:
        fake = FakeTime()
        process_request = statuses((503, {"Retry-After": "2"}))
        async with tether.serve(greeter, "127.0.0.1", 0, process_request=process_request
                                ) as server:
            async for ws in reconnecting(uri(server), fake, jitter=0.5):
                if len(fake.sleeps) == 1:
                    await ws.close()
                    continue
                await ws.close()
                break

    run(main())
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(messages) == 2
    assert messages[0].startswith("connecting to ws://127.0.0.1:")
    assert "failed: InvalidStatus: " in messages[0]
    assert "503" in messages[0]
    assert messages[0].endswith("; retrying in 2.0 s")
    assert "closed after 0.0 s (sent close frame with code 1000" in messages[1]
    assert messages[1].endswith("reconnecting in 0.8 s")  # 0.5 x 1.618


def test_real_sleeps_with_a_small_base(run: Run) -> None:
    """The real asyncio.sleep, milliseconds apart: the test waits for the log to show
    two failed attempts, then starts the server; the waiting iterator connects."""
    records: list[logging.LogRecord] = []
    failed_twice = asyncio.Event()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)
            if sum("failed" in r.getMessage() for r in records) >= 2:
                failed_twice.set()

    logger = logging.getLogger("tether.test_reconnect")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = Handler()
    logger.addHandler(handler)

    async def main() -> None:
        with refused_port() as port:
            iterator = tether.connect(f"ws://127.0.0.1:{port}/", logger=logger,
                                      backoff_initial=0.01, backoff_max=0.05)

            async def first() -> str | bytes:
                async for ws in iterator:
                    message = await asyncio.wait_for(ws.recv(), TIMEOUT)
                    await ws.close()
                    return message
                raise AssertionError("unreachable")  # pragma: no cover

            task = asyncio.ensure_future(first())
            await asyncio.wait_for(failed_twice.wait(), TIMEOUT)
        # The port is free now: serve on it.
        async with tether.serve(greeter, "127.0.0.1", port):
            assert await asyncio.wait_for(task, TIMEOUT) == "hello"

    try:
        run(main())
    finally:
        logger.removeHandler(handler)

