"""The shared-memory ring against a writer that cannot be trusted: impossible positions
and record lengths are refused (and the ring recovers), and one call never takes more
than MAX_FRAMES_PER_WAKEUP frames (a corrupt ring used to make the reader spin)."""

from __future__ import annotations

import select
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hark.errors import ProtocolError
from hark.transport.shm import MAX_FRAMES_PER_WAKEUP, ShmRing

pytestmark = pytest.mark.timeout(60)


@pytest.fixture()
def ring():
    r = ShmRing(capacity=4096)
    yield r
    r.close()


def _set_positions(ring: ShmRing, w: int, r: int) -> None:
    pos = np.ndarray((2,), dtype=np.uint64, buffer=ring._shm.buf[:16])
    pos[0], pos[1] = w, r


@pytest.mark.parametrize("w, r", [
    (10 ** 12, 0),  # far more than the ring holds: zero-length records "forever"
    (4097, 0),  # one byte more than the capacity
    (0, 100),  # read ahead of write
    (2 ** 64 - 1, 5),
])
def test_impossible_positions_are_refused_and_the_ring_recovers(ring, w, r):
    _set_positions(ring, w, r)
    with pytest.raises(ProtocolError, match="corrupt"):
        ring.read_frames()
    assert ring.read() is None  # pending data dropped: read caught up with write
    if w > 2 ** 64 - 16:  # the writer's counter wraps: that one frame is refused too
        assert ring.write(b"lost")
        with pytest.raises(ProtocolError):
            ring.read_frames()
    assert ring.write(b"after") and ring.read_frames() == [b"after"]


def test_a_record_longer_than_what_was_written_is_refused(ring):
    ring.write(b"abc")
    ring._data[0:4] = struct.pack("<I", 4000)  # the length field of the first record
    with pytest.raises(ProtocolError, match="a record of 4000 bytes"):
        ring.read()
    assert ring.write(b"next") and ring.read() == b"next"


def test_a_full_batch_leaves_the_rest_for_the_next_wakeup():
    ring = ShmRing(capacity=64 * 1024)
    try:
        fd = ring.fileno()
        n = MAX_FRAMES_PER_WAKEUP + 44
        for i in range(n):
            assert ring.write(i.to_bytes(2, "big"))
        ring.clear()
        first = ring.read_frames()
        assert len(first) == MAX_FRAMES_PER_WAKEUP
        # the reader woke itself: the event loop calls back for the rest
        assert select.select([fd], [], [], 0)[0] == [fd]
        ring.clear()
        rest = ring.read_frames()
        assert [int.from_bytes(f, "big") for f in first + rest] == list(range(n))
        assert ring.read_frames() == [] and select.select([fd], [], [], 0)[0] == []
    finally:
        ring.close()


def test_a_reader_gone_wrong_makes_the_writer_drop_not_overwrite(ring):
    ring.write(b"kept")
    w = int(ring._pos[0])
    _set_positions(ring, w, w + 10)  # read position ahead of the write position
    assert not ring.write(b"x") and ring.dropped == 1


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(w=st.integers(0, 2 ** 64 - 1), r=st.integers(0, 2 ** 64 - 1),
       data=st.binary(max_size=4096))
def test_any_ring_contents_read_or_refused(ring, w, r, data):
    ring._data[:len(data)] = data
    _set_positions(ring, w, r)
    for _ in range(3):
        try:
            frames = ring.read_frames()
        except ProtocolError:
            continue
        assert len(frames) <= MAX_FRAMES_PER_WAKEUP
        assert all(isinstance(f, bytes) and len(f) <= ring.capacity for f in frames)
