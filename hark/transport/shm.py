"""Same-host audio path: a single-producer single-consumer ring buffer of frames in
``multiprocessing.shared_memory``.

Layout: 64-byte header (write position, read position as uint64 byte counters that
only grow) then ``capacity`` bytes of data holding records ``<u32 length><bytes>``.
The producer writes the record, then publishes the new write position; the consumer
reads, then publishes the new read position, so neither side ever waits on a lock.
A full ring drops the frame (real-time audio: a late frame is worth nothing).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from multiprocessing import shared_memory

import numpy as np

from hark.errors import ProtocolError

log = logging.getLogger(__name__)

HEADER = 64
_CREATED_HERE: set[str] = set()
_LEN = struct.Struct("<I")


def host_id() -> str:
    """Identifies this machine (and boot): equal on both ends means shared memory works."""
    for path in ("/proc/sys/kernel/random/boot_id", "/etc/machine-id"):
        try:
            with open(path) as f:
                return f"{socket.gethostname()}:{f.read().strip()}"
        except OSError:
            continue
    return f"{socket.gethostname()}:{os.getpid()}"


class ShmRing:
    """A ring of variable-size frames in shared memory (one writer, one reader)."""

    def __init__(self, name: str | None = None, capacity: int = 256 * 1024,
                 create: bool = True):
        if create:
            self._shm = shared_memory.SharedMemory(name=name, create=True,
                                                   size=HEADER + capacity)
            self._shm.buf[:HEADER] = bytes(HEADER)
            _CREATED_HERE.add(self._shm.name)
        else:
            try:
                self._shm = shared_memory.SharedMemory(name=name, create=False)
            except FileNotFoundError as exc:
                raise ProtocolError(f"shared memory ring {name} does not exist") from exc
            if name not in _CREATED_HERE:
                _unregister(self._shm)  # the creator owns (and unlinks) it
        self.name = self._shm.name
        self.capacity = self._shm.size - HEADER
        self._pos = np.ndarray((2,), dtype=np.uint64, buffer=self._shm.buf[:16])
        self._data = self._shm.buf[HEADER:HEADER + self.capacity]
        self.owner = create
        self.dropped = 0

    def _copy_in(self, at: int, data: bytes) -> None:
        i = at % self.capacity
        first = min(len(data), self.capacity - i)
        self._data[i:i + first] = data[:first]
        if first < len(data):
            self._data[0:len(data) - first] = data[first:]

    def _copy_out(self, at: int, n: int) -> bytes:
        i = at % self.capacity
        first = min(n, self.capacity - i)
        out = bytes(self._data[i:i + first])
        if first < n:
            out += bytes(self._data[0:n - first])
        return out

    def write(self, frame: bytes) -> bool:
        """Append a frame; False (and counted in ``dropped``) when the ring is full."""
        need = _LEN.size + len(frame)
        w, r = int(self._pos[0]), int(self._pos[1])
        if need > self.capacity - (w - r):
            self.dropped += 1
            return False
        self._copy_in(w, _LEN.pack(len(frame)) + frame)
        self._pos[0] = w + need  # publish after the data is in place
        return True

    def read(self) -> bytes | None:
        """The oldest frame, or None when the ring is empty."""
        w, r = int(self._pos[0]), int(self._pos[1])
        if w - r < _LEN.size:
            return None
        (n,) = _LEN.unpack(self._copy_out(r, _LEN.size))
        if n > self.capacity or w - r < _LEN.size + n:
            raise ProtocolError(f"shared memory ring {self.name} is corrupt")
        frame = self._copy_out(r + _LEN.size, n)
        self._pos[1] = r + _LEN.size + n
        return frame

    def close(self) -> None:
        """Detach; the creating side also removes the segment."""
        try:
            del self._pos
            self._data.release()
            self._shm.close()
            if self.owner:
                self._shm.unlink()
        except (FileNotFoundError, AttributeError, BufferError):
            pass


def _unregister(shm: shared_memory.SharedMemory) -> None:
    """Python < 3.13 registers attached segments with the resource tracker, which then
    unlinks them when *this* process exits; only the creator should."""
    try:
        from multiprocessing import resource_tracker

        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - best effort
        log.debug("could not unregister %s from the resource tracker: %s", shm.name, exc)
