"""Kitchen timers that really run: start, cancel, pause, resume, add time, ask what's left.

Each running timer is a ``threading.Timer``; when one finishes, every callback registered
with :meth:`TimerManager.on_fire` is called (from the timer's thread, in the order they
were registered) with the :class:`Timer`, whose ``done_message`` is what the assistant
should say. An asyncio pipeline hands it to its loop with ``loop.call_soon_threadsafe``.

A timer may carry a command ("in 5 minutes turn off the kitchen lights"): ``action`` is
the intent to run when it fires. :class:`hark.nlu.handlers.IntentHandlers` registers the
first callback, which runs it and sets ``outcome`` (what was done), so ``done_message``
already says it by the time later callbacks (the pipeline's notification) read it.

Nothing is lost on a restart when the timers are kept in a file (:meth:`TimerManager.
persist`; ``hark serve`` keeps them in ``server.timers_file``): every change rewrites it
atomically (a temporary file, fsynced, renamed over the old one), a new server restores
them with the time that went by while it was down, and one that ended meanwhile fires at
once (its command runs, its announcement is said). At most :data:`MAX_TIMERS` run at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_TIMERS = 100


def timers_path(cfg: Any) -> Path:
    """``server.timers_file``, or ``<home>/timers.json`` when it is empty."""
    configured = getattr(cfg.server, "timers_file", "")
    return Path(configured).expanduser() if configured else cfg.home_path / "timers.json"


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
        self._store: Path | None = None
        self._store_failing = False

    def on_fire(self, callback: Callable[[Timer], None]) -> None:
        """Call ``callback(timer)`` whenever a timer finishes."""
        self._callbacks.append(callback)

    def start(self, seconds: float, name: str = "", command: str = "",
              session: str = "default", action: Any = None) -> Timer:
        if seconds <= 0:
            raise ValueError(f"a timer needs a positive duration, got {seconds}")
        with self._lock:
            if len(self._timers) >= MAX_TIMERS:
                raise ValueError(f"{MAX_TIMERS} timers are running already")
            timer = Timer(id=next(self._ids), duration_s=float(seconds), name=name.strip(),
                          command=command, session=session, action=action)
            self._timers[timer.id] = timer
            self._arm(timer, seconds)
            self._save()
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
            if timer is not None:
                self._save()
        if timer is None:  # cancelled just before it fired
            return
        self._announce(timer)

    def _announce(self, timer: Timer) -> None:
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
            gone = self._timers.pop(timer.id, None) is not None
            self._save()
            return gone

    def cancel_all(self) -> int:
        with self._lock:
            n = len(self._timers)
            for timer_id in list(self._timers):
                self._disarm(timer_id)
            self._timers.clear()
            self._save()
        return n

    def pause(self, timer: Timer) -> bool:
        with self._lock:
            if timer.id not in self._timers or timer.paused:
                return False
            timer.remaining_when_paused = timer.remaining_s
            self._disarm(timer.id)
            self._save()
            return True

    def resume(self, timer: Timer) -> bool:
        with self._lock:
            if timer.id not in self._timers or not timer.paused:
                return False
            remaining = timer.remaining_when_paused or 0.0
            timer.remaining_when_paused = None
            self._arm(timer, remaining)
            self._save()
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
            self._save()
            return True

    def close(self) -> None:
        """Stop every timer without firing it (a persisted one stays in its file, for
        the next start)."""
        with self._lock:
            for timer_id in list(self._timers):
                self._disarm(timer_id)
            self._timers.clear()

    # --- persistence --------------------------------------------------------------------
    def persist(self, path: str | Path) -> list[Timer]:
        """Keep the timers in ``path`` from now on. First restore the ones it holds: a
        running one with the time left after the time the server was down, a paused one
        as it was, and one that ended meanwhile fires now (register the callbacks
        first). Returns the restored timers. A file that cannot be read is set aside
        (``<path>.corrupt``) with a warning."""
        path = Path(path)
        records = self._load(path)
        overdue: list[Timer] = []
        restored: list[Timer] = []
        now_wall = time.time()
        with self._lock:
            self._store = path
            for rec in records:
                try:
                    timer = _from_record(rec)
                except (KeyError, TypeError, ValueError) as exc:
                    log.warning("%s: skipping a timer that cannot be restored: %s", path, exc)
                    continue
                if len(self._timers) >= MAX_TIMERS:
                    break
                self._timers[timer.id] = timer
                restored.append(timer)
                if timer.paused:
                    continue
                left = float(rec.get("ends_at_wall", now_wall)) - now_wall
                if left > 0:
                    self._arm(timer, left)
                else:
                    overdue.append(timer)
            for timer in overdue:
                self._timers.pop(timer.id, None)
            top = max((t.id for t in restored), default=0)
            self._ids = itertools.count(max(top + 1, next(self._ids)))
            self._save()
        if restored:
            log.info("restored %d timer(s) from %s (%d ended while the server was down)",
                     len(restored), path, len(overdue))
        for timer in overdue:
            self._announce(timer)
        return restored

    def _load(self, path: Path) -> list[dict[str, Any]]:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("timers"), list):
                raise ValueError("not a timers file")
            return [r for r in data["timers"] if isinstance(r, dict)]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, RecursionError) as exc:
            log.warning("%s cannot be read (%s): set aside as %s.corrupt; no timers "
                        "restored", path, exc, path.name)
            with contextlib.suppress(OSError):
                os.replace(path, path.with_name(path.name + ".corrupt"))
            return []

    def _save(self) -> None:
        """Write every timer to the store, atomically (the caller holds the lock)."""
        if self._store is None:
            return
        now_mono, now_wall = time.monotonic(), time.time()
        records = [_record(t, now_mono, now_wall) for t in self._timers.values()]
        path = self._store
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "timers": records}, f, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            with contextlib.suppress(OSError):  # the rename itself, on disk
                dirfd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dirfd)
                finally:
                    os.close(dirfd)
            if self._store_failing:
                self._store_failing = False
                log.info("timers are saved to %s again", path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not self._store_failing:
                self._store_failing = True
                log.error("cannot save timers to %s (%s): they run, but a restart would "
                          "lose them", path, exc)


def _record(t: Timer, now_mono: float, now_wall: float) -> dict[str, Any]:
    action = dataclasses.asdict(t.action) if dataclasses.is_dataclass(t.action) else None
    rec: dict[str, Any] = {
        "id": t.id, "duration_s": t.duration_s, "name": t.name, "command": t.command,
        "session": t.session, "action": action,
        "started_wall": round(now_wall - (now_mono - t.started_at), 3),
    }
    if t.paused:
        rec["remaining_when_paused"] = t.remaining_when_paused
    else:
        rec["ends_at_wall"] = round(now_wall + t.remaining_s, 3)
    return rec


def _from_record(rec: dict[str, Any]) -> Timer:
    from hark.nlu.base import IntentResult

    action = rec.get("action")
    if isinstance(action, dict):
        action = IntentResult(**action)
    elif action is not None:
        raise ValueError(f"bad action {action!r}")
    paused = rec.get("remaining_when_paused")
    timer = Timer(id=int(rec["id"]), duration_s=float(rec["duration_s"]),
                  name=str(rec.get("name", "")), command=str(rec.get("command", "")),
                  action=action, session=str(rec.get("session", "default")),
                  remaining_when_paused=None if paused is None else float(paused))
    if timer.duration_s <= 0:
        raise ValueError(f"duration {timer.duration_s}")
    started = rec.get("started_wall")
    if isinstance(started, (int, float)):  # the order of "active" survives the restart
        timer.started_at = time.monotonic() - (time.time() - float(started))
    return timer
