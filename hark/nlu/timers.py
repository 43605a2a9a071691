"""Kitchen timers that really run: start, cancel, pause, resume, add time, ask what's left.

Each running timer is a ``threading.Timer``; when one finishes, every callback registered
with :meth:`TimerManager.on_fire` is called (from the timer's thread, in the order they
were registered) with the :class:`Timer`, whose ``done_message`` is what the assistant
should say. An asyncio pipeline hands it to its loop with ``loop.call_soon_threadsafe``.

A timer may carry a command ("in 5 minutes turn off the kitchen lights"): ``action`` is
the intent to run when it fires. :class:`hark.nlu.handlers.IntentHandlers` registers the
first callback, which runs it and sets ``outcome`` (what was done), so ``done_message``
already says it by the time later callbacks (the pipeline's notification) read it.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


def say_duration(seconds: float) -> str:
    """3725 -> "1 hour, 2 minutes and 5 seconds" (rounded to whole seconds)."""
    total = max(0, int(round(seconds)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n} {unit}{'' if n == 1 else 's'}"
             for n, unit in ((hours, "hour"), (minutes, "minute"), (secs, "second")) if n]
    if not parts:
        return "0 seconds"
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _label(seconds: float) -> str:
    """The adjective form: 300 -> "5 minute", 90 -> "1 minute 30 second"."""
    total = int(round(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n} {unit}" for n, unit in ((hours, "hour"), (minutes, "minute"),
                                           (secs, "second")) if n]
    return " ".join(parts) or "0 second"


@dataclass
class Timer:
    id: int
    duration_s: float  # what it was set for (grows with "add 2 minutes")
    name: str = ""
    command: str = ""  # "in 5 minutes turn off the lights": what to do when it fires
    action: Any = None  # the command's intent (hark.nlu.base.IntentResult), run on firing
    outcome: str = ""  # set when the action ran: what was done, to be said
    session: str = "default"
    started_at: float = field(default_factory=time.monotonic)
    ends_at: float = 0.0  # monotonic deadline while running
    remaining_when_paused: float | None = None

    @property
    def paused(self) -> bool:
        return self.remaining_when_paused is not None

    @property
    def remaining_s(self) -> float:
        if self.remaining_when_paused is not None:
            return self.remaining_when_paused
        return max(0.0, self.ends_at - time.monotonic())

    @property
    def label(self) -> str:
        """How to refer to it: "pizza timer" or "5 minute timer"."""
        return f"{self.name} timer" if self.name else f"{_label(self.duration_s)} timer"

    @property
    def done_message(self) -> str:
        return self.outcome or f"Your {self.label} is done."


class TimerManager:
    """All running timers; thread-safe."""

    def __init__(self) -> None:
        self._timers: dict[int, Timer] = {}
        self._threads: dict[int, threading.Timer] = {}
        self._callbacks: list[Callable[[Timer], None]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def on_fire(self, callback: Callable[[Timer], None]) -> None:
        """Call ``callback(timer)`` whenever a timer finishes."""
        self._callbacks.append(callback)

    def start(self, seconds: float, name: str = "", command: str = "",
              session: str = "default", action: Any = None) -> Timer:
        if seconds <= 0:
            raise ValueError(f"a timer needs a positive duration, got {seconds}")
        with self._lock:
            timer = Timer(id=next(self._ids), duration_s=float(seconds), name=name.strip(),
                          command=command, session=session, action=action)
            self._timers[timer.id] = timer
            self._arm(timer, seconds)
        return timer

    def _arm(self, timer: Timer, seconds: float) -> None:
        timer.ends_at = time.monotonic() + seconds
        thread = threading.Timer(seconds, self._fire, args=(timer.id,))
        thread.daemon = True
        self._threads[timer.id] = thread
        thread.start()

    def _disarm(self, timer_id: int) -> None:
        thread = self._threads.pop(timer_id, None)
        if thread is not None:
            thread.cancel()

    def _fire(self, timer_id: int) -> None:
        with self._lock:
            timer = self._timers.pop(timer_id, None)
            self._threads.pop(timer_id, None)
        if timer is None:  # cancelled just before it fired
            return
        log.info("timer finished: %s", timer.label)
        for callback in list(self._callbacks):
            try:
                callback(timer)
            except Exception:
                log.exception("timer callback failed for %s", timer.label)

    def active(self, session: str | None = None) -> list[Timer]:
        """Timers not yet finished, oldest first."""
        with self._lock:
            timers = sorted(self._timers.values(), key=lambda t: t.started_at)
        return [t for t in timers if session is None or t.session == session]

    def find(self, name: str = "", duration_s: float | None = None) -> list[Timer]:
        """Timers matching a name and/or the duration they were set for."""
        found = self.active()
        if name:
            key = name.strip().casefold()
            found = [t for t in found if t.name.casefold() == key]
        if duration_s is not None:
            found = [t for t in found if abs(t.duration_s - duration_s) < 1]
        return found

    def cancel(self, timer: Timer) -> bool:
        with self._lock:
            self._disarm(timer.id)
            return self._timers.pop(timer.id, None) is not None

    def cancel_all(self) -> int:
        with self._lock:
            n = len(self._timers)
            for timer_id in list(self._timers):
                self._disarm(timer_id)
            self._timers.clear()
        return n

    def pause(self, timer: Timer) -> bool:
        with self._lock:
            if timer.id not in self._timers or timer.paused:
                return False
            timer.remaining_when_paused = timer.remaining_s
            self._disarm(timer.id)
            return True

    def resume(self, timer: Timer) -> bool:
        with self._lock:
            if timer.id not in self._timers or not timer.paused:
                return False
            remaining = timer.remaining_when_paused or 0.0
            timer.remaining_when_paused = None
            self._arm(timer, remaining)
            return True

    def add_time(self, timer: Timer, seconds: float) -> bool:
        """Lengthen (or with a negative value, shorten) a timer."""
        with self._lock:
            if timer.id not in self._timers:
                return False
            remaining = max(0.5, timer.remaining_s + seconds)
            if timer.paused:
                timer.remaining_when_paused = remaining
            else:
                self._disarm(timer.id)
                self._arm(timer, remaining)
            return True

    def close(self) -> None:
        """Stop every timer without firing it."""
        self.cancel_all()
