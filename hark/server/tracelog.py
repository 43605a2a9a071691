"""Every turn's trace appended as one JSON line to ``server.trace_log``.

The log is for people and tools (``jq``, pandas) that want to know where the time went.
Writing it must never break a turn: a full disk, a read-only mount or a deleted folder is
logged once, counted in :attr:`TraceLog.errors` (exported on ``/metrics``), and the next
turn tries again, so the log resumes by itself once the disk has room.

Every line is whole: each is one ``write`` to a file opened for appending, a line the
disk had room for only part of is cut off again, and a file left ending mid-line (a
crash) gets a newline before the next record. Past ``server.trace_log_max_mb`` the file
is rotated (``traces.jsonl.1`` ... ``.<server.trace_log_keep>``, the oldest dropped) and
the finished file is fsynced.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

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

    def __init__(self, path: str | Path, max_bytes: int = 64 * 2**20, keep: int = 3):
        self.path = Path(path)
        self.max_bytes = max_bytes  # rotate past this size (0: never)
        self.keep = keep  # rotated files kept: <path>.1 (newest) .. <path>.<keep>
        self.written = 0
        self.errors = 0
        self.rotations = 0
        self.last_error: str | None = None
        self._fd: int | None = None
        self._size = 0
        self._failing = False
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: Any) -> TraceLog:
        sc = cfg.server
        return cls(trace_log_path(cfg),
                   max_bytes=int(getattr(sc, "trace_log_max_mb", 64) * 2**20),
                   keep=int(getattr(sc, "trace_log_keep", 3)))

    def __call__(self, trace: Trace) -> None:
        self.write(trace)

    def write(self, trace: Trace, **extra: Any) -> bool:
        """Append one line; True when it reached the file. Never raises."""
        try:
            line = json.dumps(trace_record(trace, **extra), default=str) + "\n"
        except Exception as exc:  # noqa: BLE001 - a bad trace must not break the turn
            return self._failed(f"could not encode trace {trace.turn_id}: {exc!r}")
        data = line.encode("utf-8", "replace")
        with self._lock:
            try:
                if self._fd is not None and self.max_bytes \
                        and self._size + len(data) > self.max_bytes and self._size:
                    self._rotate()
                if self._fd is None:
                    self._open()
                self._append(data)
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

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._fd = fd
        self._size = os.fstat(fd).st_size
        if self._size:  # a line left half-written (a crash): end it before the next one
            with open(self.path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    self._append(b"\n")

    def _append(self, data: bytes) -> None:
        """One write of a whole line; a partial one (a full disk) is cut off again."""
        assert self._fd is not None
        before = self._size
        try:
            n = os.write(self._fd, data)
        except OSError:
            self._cut(before)
            raise
        if n != len(data):
            self._cut(before)
            raise OSError(28, f"No space left on device (only {n} of {len(data)} bytes "
                          "of a line were written; removed)")
        self._size = before + n

    def _cut(self, size: int) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                pass

    def _rotate(self) -> None:
        """<path> -> <path>.1 -> ... -> <path>.<keep> (dropped beyond), fsynced first."""
        assert self._fd is not None
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        if self.keep < 1:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        log.info("trace log %s rotated (past %d bytes)", self.path, self.max_bytes)

    def _close_quietly(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass
            self._close_quietly()


def read_traces(path: str | Path) -> list[dict[str, Any]]:
    """Every record in a trace log (lines that are not JSON objects are skipped)."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # not JSON, a 5000-digit number, nesting
                continue
            if isinstance(record, dict):
                out.append(record)
    return out
