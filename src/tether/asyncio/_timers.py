"""Coarse timers for the long timeouts every connection arms.

Each connection arms an opening-handshake timeout, a keepalive timer, a close timeout:
seconds long, nearly always cancelled before they fire. ``loop.call_later`` costs a
``TimerHandle`` and a push on the loop's heap each (with Python-level comparisons on
the default loop), and cancelled handles stay on the heap until they surface. Here
timers of one loop are grouped by deadline in slots of :data:`RESOLUTION` seconds: one
loop timer per occupied slot, and arming or cancelling a timer is a set operation.

A coarse timer fires at its deadline or up to :data:`RESOLUTION` later, never earlier.
Delays under :data:`PRECISE_BELOW` seconds use ``loop.call_later`` itself.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["PRECISE_BELOW", "RESOLUTION", "Cancellable", "Timers", "timers_for"]

#: width of a slot, in seconds: how late a coarse timer may fire
RESOLUTION = 0.1
#: delays shorter than this go to ``loop.call_later``
PRECISE_BELOW = 1.0


class Cancellable(Protocol):
    """What :meth:`Timers.call_later` returns: something with ``cancel()``."""

    def cancel(self) -> None:
        """Stop the timer from firing; harmless once it has fired."""


class Timer:
    """A coarse timer (see :class:`Timers`)."""

    __slots__ = ("_args", "_callback", "_slot")

    def __init__(
        self, slot: set[Timer], callback: Callable[..., object], args: tuple[Any, ...]
    ) -> None:
        self._slot: set[Timer] | None = slot
        self._callback = callback
        self._args = args

    def cancel(self) -> None:
        """Stop the timer from firing; harmless once it has fired."""
        slot = self._slot
        if slot is not None:
            slot.discard(self)
            self._slot = None

    def cancelled(self) -> bool:
        """Whether the timer will not fire any more (cancelled or fired)."""
        return self._slot is None


class Timers:
    """The coarse timers of one event loop."""

    # No reference to the loop: the loop is the key of a weak mapping to this object.
    __slots__ = ("__weakref__", "_slots")

    def __init__(self) -> None:
        self._slots: dict[int, set[Timer]] = {}

    def call_later(
        self, loop: asyncio.AbstractEventLoop, delay: float,
        callback: Callable[..., object], *args: Any,
    ) -> Cancellable:
        """Call ``callback(*args)`` after ``delay`` seconds on ``loop`` (this object's
        loop), up to :data:`RESOLUTION` later when the delay is long."""
        if delay < PRECISE_BELOW:
            return loop.call_later(delay, callback, *args)
        key = math.ceil((loop.time() + delay) / RESOLUTION)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = set()
            loop.call_at(key * RESOLUTION, self._fire, key, loop)
        timer = Timer(slot, callback, args)
        slot.add(timer)
        return timer

    def _fire(self, key: int, loop: asyncio.AbstractEventLoop) -> None:
        slot = self._slots.pop(key, None)
        if not slot:
            return
        for timer in list(slot):
            if timer._slot is None:  # cancelled by a callback of this slot
                continue
            timer._slot = None
            try:
                timer._callback(*timer._args)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:
                loop.call_exception_handler({
                    "message": f"Exception in timer callback {timer._callback!r}",
                    "exception": exc,
                })

    def __len__(self) -> int:
        """How many coarse timers are armed."""
        return sum(len(slot) for slot in self._slots.values())


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Timers] = (
    weakref.WeakKeyDictionary()
)


def timers_for(loop: asyncio.AbstractEventLoop) -> Timers:
    """The :class:`Timers` of ``loop`` (one per loop, created on first use)."""
    try:
        timers = _by_loop.get(loop)
        if timers is None:
            timers = _by_loop[loop] = Timers()
    except TypeError:  # a loop class without weak references: timers of its own
        timers = Timers()
    return timers
