"""Every turn's trace appended as one JSON line to ``server.trace_log``.

The log is for people and tools (``jq``, pandas) that want to know where the time went.
Writing it must never break a turn: a full disk, a read-only mount or a deleted folder is
logged once, counted in :attr:`TraceLog.errors` (exported on ``/metrics``), and the next
turn tries again, so the log resumes by itself once the disk has room.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import IO, Any

from hark.trace import Trace

log = logging.getLogger("hark.tracelog")


def trace_log_path(cfg: Any) -> Path:
    """``server.trace_log``, or ``<home>/traces.jsonl`` when it is empty."""
    configured = cfg.server.trace_log
    return Path(configured).expanduser() if configured else cfg.home_path / "traces.jsonl"


def trace_record(trace: Trace, **extra: Any) -> dict[str, Any]:
    """The JSON object written for a trace: :meth:`Trace.to_json` plus the wall-clock
    time (``time``, Unix seconds) and any ``extra`` fields such as the satellite name."""
    record = json.loads(trace.to_json())
    record.setdefault("time", round(time.time(), 3))
    record.update(extra)
    return record


class TraceLog:
    """Append-only JSON-lines writer. Call it (or :meth:`write`) with each finished
    trace; it can be registered directly as a ``Server.turn_listeners`` callback."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.written = 0
        self.errors = 0
        self.last_error: str | None = None
        self._fh: IO[str] | None = None
        self._failing = False
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Any) -> TraceLog:
        return cls(trace_log_path(cfg))

    def __call__(self, trace: Trace) -> None:
        self.write(trace)

    def write(self, trace: Trace, **extra: Any) -> bool:
        """Append one line; True when it reached the file. Never raises."""
        try:
            line = json.dumps(trace_record(trace, **extra), default=str) + "\n"
        except Exception as exc:  # noqa: BLE001 - a bad trace must not break the turn
            return self._failed(f"could not encode trace {trace.turn_id}: {exc!r}")
        with self._lock:
            try:
                if self._fh is None:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                    self._fh = open(self.path, "a", encoding="utf-8")
                self._fh.write(line)
                self._fh.flush()
            except OSError as exc:
                self._close_quietly()
                return self._failed(f"cannot write trace log {self.path}: {exc}")
        if self._failing:
            self._failing = False
            log.info("trace log %s is writable again (%d write(s) failed)", self.path,
                     self.errors)
        self.written += 1
        return True

    def _failed(self, message: str) -> bool:
        self.errors += 1
        self.last_error = message
        if not self._failing:  # once per run of failures, not once per turn
            self._failing = True
            log.error("%s; turns go on without it (fix: free disk space or set "
                      "server.trace_log to a writable file)", message)
        return False

    def _close_quietly(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None

    def close(self) -> None:
        with self._lock:
            self._close_quietly()


def read_traces(path: str | Path) -> list[dict[str, Any]]:
    """Every record in a trace log (lines that are not JSON are skipped)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out
