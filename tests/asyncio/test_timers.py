"""The coarse timers behind open_timeout, keepalive and close_timeout
(tether.asyncio._timers), on the default loop and uvloop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import tether
from tether.asyncio import _timers

from .conftest import OP_PING, TIMEOUT, Run, echo, raw_client


@pytest.fixture
def coarse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every delay takes the coarse path, so the tests stay short."""
    monkeypatch.setattr(_timers, "PRECISE_BELOW", 0.0)


def test_a_coarse_timer_fires_at_its_deadline_or_one_slot_later(
    run_any: Run, coarse: None
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = _timers.timers_for(loop)
        fired: list[tuple[str, float]] = []
        done = loop.create_future()

        def fire(name: str) -> None:
            fired.append((name, loop.time()))
            if len(fired) == 2:
                done.set_result(None)

        start = loop.time()
        timers.call_later(loop, 0.3, fire, "late")
        timers.call_later(loop, 0.05, fire, "early")
        assert len(timers) == 2
        await asyncio.wait_for(done, TIMEOUT)
        assert [name for name, _ in fired] == ["early", "late"]
        early, late = fired[0][1] - start, fired[1][1] - start
        # Never before the deadline; at most one slot (plus scheduling) after it.
        assert 0.05 <= early < 0.05 + _timers.RESOLUTION + 0.1
        assert 0.3 <= late < 0.3 + _timers.RESOLUTION + 0.1
        assert len(timers) == 0

    run_any(main())


def test_a_cancelled_timer_never_fires(run_any: Run, coarse: None) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = _timers.timers_for(loop)
        fired: list[str] = []
        done = loop.create_future()
        cancelled = timers.call_later(loop, 0.05, fired.append, "cancelled")
        # Same slot, so the slot still fires: the cancelled timer must be skipped.
        timers.call_later(loop, 0.05, lambda: done.set_result(None))
        cancelled.cancel()
        cancelled.cancel()  # twice is harmless
        await asyncio.wait_for(done, TIMEOUT)
        assert fired == []

    run_any(main())


def test_a_timer_cancelled_by_an_earlier_callback_of_its_slot_does_not_fire(
    run_any: Run, coarse: None
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = _timers.timers_for(loop)
        fired: list[str] = []
        done = loop.create_future()
        handles: list[_timers.Cancellable] = []

        def first() -> None:
            fired.append("first")
            for handle in handles:
                handle.cancel()
            loop.call_later(0.2, done.set_result, None)

        # Both cancel each other: whichever runs first, the other must not run.
        handles.append(timers.call_later(loop, 0.05, first))
        handles.append(timers.call_later(loop, 0.05, first))
        await asyncio.wait_for(done, TIMEOUT)
        assert fired == ["first"]

    run_any(main())


def test_an_exception_in_a_callback_goes_to_the_loop_and_others_still_fire(
    run_any: Run, coarse: None
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        timers = _timers.timers_for(loop)
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        done = loop.create_future()

        def boom() -> None:
            raise ValueError("boom")

        timers.call_later(loop, 0.05, boom)
        timers.call_later(loop, 0.05, lambda: done.set_result(None))
        await asyncio.wait_for(done, TIMEOUT)
        assert len(reported) == 1
        assert isinstance(reported[0]["exception"], ValueError)

    run_any(main())


def test_short_delays_use_the_loop_timer() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        handle = _timers.timers_for(loop).call_later(loop, 0.01, lambda: None)
        assert isinstance(handle, asyncio.TimerHandle)
        handle.cancel()

    asyncio.run(main())


def test_one_timers_object_per_loop() -> None:
    loops = [asyncio.new_event_loop() for _ in range(2)]
    try:
        first, second = (_timers.timers_for(loop) for loop in loops)
        assert first is not second
        assert _timers.timers_for(loops[0]) is first
    finally:
        for loop in loops:
            loop.close()


def test_open_timeout_of_a_second_or_more_is_coarse_and_still_enforced(run_any: Run) -> None:
    """open_timeout=1: a client that sends nothing is dropped after 1 s, not before."""

    async def main() -> None:
        async with tether.serve(echo, "127.0.0.1", 0, open_timeout=1.0) as server:
            loop = asyncio.get_running_loop()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            start = loop.time()
            try:
                data = await asyncio.wait_for(reader.read(), TIMEOUT)
            except ConnectionResetError:
                data = b""
            elapsed = loop.time() - start
            writer.close()
            assert data == b""
            assert 1.0 <= elapsed < 1.0 + _timers.RESOLUTION + 0.5

    run_any(main())


def test_keepalive_of_a_second_is_coarse_and_still_pings(run_any: Run) -> None:
    """ping_interval=1: the server's keepalive ping comes after 1 s, not before."""

    async def main() -> None:
        async with tether.serve(echo, "127.0.0.1", 0, ping_interval=1.0) as server:
            loop = asyncio.get_running_loop()
            peer = await raw_client(server.port)
            start = loop.time()
            frame = await peer.recv_frame()
            elapsed = loop.time() - start
            assert frame.opcode == OP_PING
            assert 1.0 - 0.05 <= elapsed < 1.0 + _timers.RESOLUTION + 0.5
            await peer.close()

    run_any(main())


def test_a_loop_without_weak_references_still_gets_timers() -> None:
    class Loop:
        __slots__ = ()  # no __weakref__

        def __hash__(self) -> int:
            return 1

    loop: Any = Loop()
    assert isinstance(_timers.timers_for(loop), _timers.Timers)
