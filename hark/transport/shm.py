"""Same-host audio path: a single-producer single-consumer ring buffer of frames in
``multiprocessing.shared_memory``.

Layout: 64-byte header (write position, read position as uint64 byte counters that
only grow; the writer's pid; a "writer closed" flag) then ``capacity`` bytes of data
holding records ``<u32 length><bytes>``. The producer writes the record, then publishes
the new write position; the consumer reads, then publishes the new read position, so
neither side ever waits on a lock. A full ring drops the frame (real-time audio: a late
frame is worth nothing). The other side is not trusted: positions that no writer could
have published (read ahead of write, or more than ``capacity`` apart) and record lengths
that do not fit make :meth:`ShmRing.read` drop what is pending and raise
:class:`~hark.errors.ProtocolError`, and :meth:`ShmRing.read_frames` takes at most
:data:`MAX_FRAMES_PER_WAKEUP` frames per call, so a hostile or broken writer can neither
hang nor monopolise the reader's event loop.

Wake-up: the reader binds a Unix datagram socket named after the ring (Linux: in the
abstract namespace, so nothing is left on disk); after publishing a frame the writer
sends it one byte. The reader sleeps in :meth:`ShmRing.wait` (or an event loop watches
:meth:`ShmRing.fileno`) and wakes as soon as a frame is there, instead of polling.
Its wait is bounded, so a writer that vanished is noticed (:meth:`writer_alive`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import struct
import sys
import tempfile
from multiprocessing import shared_memory

import numpy as np

from hark.errors import ProtocolError

log = logging.getLogger(__name__)

HEADER = 64
MAX_FRAMES_PER_WAKEUP = 256  # 5 s of 20 ms frames; more wait for the next call
_CREATED_HERE: set[str] = set()
_LEN = struct.Struct("<I")
_WRITER = struct.Struct("<II")  # at offset 16: writer pid, writer-closed flag


def wake_address(ring_name: str) -> str | bytes:
    """Where the reader of ``ring_name`` listens for wake-ups."""
    if sys.platform.startswith("linux"):
        return b"\0hark-shm-" + ring_name.lstrip("/").encode()
    return os.path.join(tempfile.gettempdir(), f"hark-shm-{ring_name.lstrip('/')}.sock")


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
            if name not in _CREATED_HERE and not _shares_parent_tracker():
                _unregister(self._shm)  # the creator owns (and unlinks) it
        self.name = self._shm.name
        self.capacity = self._shm.size - HEADER
        self._pos = np.ndarray((2,), dtype=np.uint64, buffer=self._shm.buf[:16])
        self._data = self._shm.buf[HEADER:HEADER + self.capacity]
        self.owner = create
        self.dropped = 0
        self.wakeups = 0  # wake-up datagrams received (reader side)
        self._wake_addr = wake_address(self.name)
        self._rx: socket.socket | None = None  # reader: bound wake-up socket
        self._tx: socket.socket | None = None  # writer: unbound, sends the wake-ups
        self._wrote = False

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
        if r > w or need > self.capacity - (w - r):  # full (or a reader gone wrong)
            self.dropped += 1
            return False
        if not self._wrote:
            self._wrote = True
            _WRITER.pack_into(self._shm.buf, 16, os.getpid(), 0)
        self._copy_in(w, _LEN.pack(len(frame)) + frame)
        # publish after the data is in place (a corrupt position near 2**64 wraps: the
        # reader then sees read > write, drops what is pending and goes on)
        self._pos[0] = (w + need) % 2 ** 64
        self._wake()
        return True

    # --- wake-ups -----------------------------------------------------------------------
    def _wake(self) -> None:
        """Tell the reader a frame is there (nothing happens when no reader listens, and
        a full socket queue means it has been told already)."""
        try:
            (self._tx or self._new_tx()).sendto(b"\x01", self._wake_addr)
        except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
            pass
        except OSError as exc:
            log.debug("shared memory ring %s: wake-up not sent: %s", self.name, exc)

    def _new_tx(self) -> socket.socket:
        self._tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._tx.setblocking(False)
        return self._tx

    def fileno(self) -> int:
        """The reader's wake-up socket (readable when frames may be waiting), for an
        event loop's ``add_reader``; binds it on first use. Call :meth:`clear` in the
        callback, then :meth:`read` until None."""
        if self._rx is None:
            rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            if isinstance(self._wake_addr, str):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._wake_addr)
            try:
                rx.bind(self._wake_addr)
            except OSError as exc:
                rx.close()
                raise ProtocolError(f"shared memory ring {self.name}: cannot listen for "
                                    f"wake-ups ({exc}); is another reader attached?") from exc
            rx.setblocking(False)
            self._rx = rx
        return self._rx.fileno()

    @property
    def listening(self) -> bool:
        """This side reads the ring and has bound its wake-up socket."""
        return self._rx is not None

    def clear(self) -> int:
        """Consume pending wake-ups (before reading the ring, so none is missed);
        returns how many there were."""
        self.fileno()
        assert self._rx is not None
        n = 0
        while True:
            try:
                self._rx.recv(64)
            except (BlockingIOError, InterruptedError):
                break
            n += 1
        self.wakeups += n
        return n

    def wait(self, timeout: float) -> bool:
        """Block until the writer signals a frame (True) or ``timeout`` seconds pass
        (False). Frames written before the call wake it at once."""
        fd = self.fileno()
        if self.clear():
            return True
        readable, _, _ = select.select([fd], [], [], timeout)
        return bool(readable) and self.clear() > 0

    def writer_alive(self) -> bool:
        """False once the writer closed the ring or its process is gone."""
        pid, closed = _WRITER.unpack_from(self._shm.buf, 16)
        if closed:
            return False
        if not pid:
            return True  # nothing written yet
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    def read(self) -> bytes | None:
        """The oldest frame, or None when the ring is empty. Raises
        :class:`ProtocolError` (after dropping every pending frame, so the ring works
        again from the writer's next frame) when the positions or a record length are
        impossible."""
        w, r = int(self._pos[0]), int(self._pos[1])
        if r > w or w - r > self.capacity:
            self._pos[1] = w
            raise ProtocolError(f"shared memory ring {self.name} is corrupt: write position "
                                f"{w}, read position {r}, capacity {self.capacity}")
        if w - r < _LEN.size:
            return None
        (n,) = _LEN.unpack(self._copy_out(r, _LEN.size))
        if w - r < _LEN.size + n:
            self._pos[1] = w
            raise ProtocolError(f"shared memory ring {self.name} is corrupt: a record of "
                                f"{n} bytes, {w - r - _LEN.size} written")
        frame = self._copy_out(r + _LEN.size, n)
        self._pos[1] = r + _LEN.size + n
        return frame

    def read_frames(self, limit: int = MAX_FRAMES_PER_WAKEUP) -> list[bytes]:
        """Up to ``limit`` frames, oldest first (see :meth:`read`, whose error it
        raises). When more are waiting, the reader wakes itself, so an event loop comes
        back for them after its other work."""
        frames = []
        while len(frames) < limit:
            frame = self.read()
            if frame is None:
                return frames
            frames.append(frame)
        if int(self._pos[0]) != int(self._pos[1]) and self._rx is not None:
            with contextlib.suppress(OSError):
                (self._tx or self._new_tx()).sendto(b"\x01", self._wake_addr)
        return frames

    def close(self) -> None:
        """Detach; the creating side also removes the segment. A writer marks the ring
        closed and wakes the reader so it notices at once."""
        if self._wrote and hasattr(self, "_pos"):
            with contextlib.suppress(ValueError, TypeError):
                _WRITER.pack_into(self._shm.buf, 16, os.getpid(), 1)
            self._wake()
        for sock in (self._tx, self._rx):
            if sock is not None:
                sock.close()
        if self._rx is not None and isinstance(self._wake_addr, str):
            with contextlib.suppress(OSError):
                os.unlink(self._wake_addr)
        self._tx = self._rx = None
        try:
            del self._pos
            self._data.release()
            self._shm.close()
            if self.owner:
                self._shm.unlink()
        except (FileNotFoundError, AttributeError, BufferError):
            pass


def _shares_parent_tracker() -> bool:
    """A multiprocessing child uses its parent's resource tracker: unregistering there
    would undo the creator's own registration."""
    import multiprocessing

    return multiprocessing.parent_process() is not None


def _unregister(shm: shared_memory.SharedMemory) -> None:
    """Python < 3.13 registers attached segments with the resource tracker, which then
    unlinks them when *this* process exits; only the creator should."""
    try:
        from multiprocessing import resource_tracker

        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    except Exception as exc:  # noqa: BLE001 - best effort
        log.debug("could not unregister %s from the resource tracker: %s", shm.name, exc)
