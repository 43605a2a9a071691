"""Adaptive jitter buffer: packets in (any order, any time), frames out on a playout clock.

Times are passed in explicitly (``now``, monotonic seconds), so the buffer is a plain
data structure a test can script packet by packet.

How it works:

- every packet gets an *extended* sequence number (16-bit RTP numbers unwrapped);
- its *transit* is ``arrival - ext_seq * frame_s``: the one-way delay up to an unknown
  constant. Over the last ``window`` packets, the minimum transit is the fastest path
  and ``quantile(transit) - min`` the jitter;
- frame ``k`` plays at ``due(k) = k * frame_s + offset`` with
  ``offset = min_transit + target`` and ``target = clamp(jitter + margin,
  jitter_min_ms, jitter_max_ms)``: the least delay that still catches ``quantile`` of
  the packets. The offset grows at once when jitter grows (a late packet costs a
  concealed frame) and shrinks by at most ``shrink_ms`` per frame when it falls;
- :meth:`pop` returns every frame whose time has come: the packet's payload, or a
  *lost* frame to conceal (carrying the next packet's payload, if it is here, for Opus
  FEC). Duplicates and packets that arrive after their frame played are dropped and
  counted. After ``idle_after`` concealed frames with nothing newer the stream is idle,
  and the next packet re-anchors the clock (a new talk spurt).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hark.transport.rtp import RtpPacket, seq_delta


@dataclass
class PlayoutFrame:
    ext_seq: int
    due: float  # when this frame should start playing (monotonic s)
    payload: bytes | None  # None: lost, conceal it
    fec: bytes | None = None  # for a lost frame: the next packet's payload (Opus FEC)
    timestamp: int = 0  # RTP timestamp of the packet (0 for lost frames)

    @property
    def lost(self) -> bool:
        return self.payload is None


@dataclass
class JitterStats:
    received: int = 0
    played: int = 0
    duplicates: int = 0
    late: int = 0  # arrived after their frame had been played or concealed
    lost: int = 0  # frames concealed because the packet was not there in time
    reordered: int = 0  # arrived after a newer packet (but still in time)
    dropped: int = 0  # too far ahead of the playout point
    target_ms: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class JitterBuffer:
    frame_ms: int = 20
    jitter_min_ms: float = 10.0
    jitter_max_ms: float = 120.0
    quantile: float = 0.97
    margin_ms: float = 1.0
    shrink_ms: float = 0.5
    window: int = 200
    idle_after: int = 5
    max_ahead: int = 250  # frames a packet may be ahead of the playout point
    stats: JitterStats = field(default_factory=JitterStats)

    def __post_init__(self) -> None:
        self.frame_s = self.frame_ms / 1000.0
        self._packets: dict[int, RtpPacket] = {}
        self._transits: deque[float] = deque(maxlen=self.window)
        self._ref_seq: int | None = None  # last RTP seq seen, for unwrapping
        self._ref_ext = 0
        self._highest = -1
        self.highest_seq: int | None = None  # RTP seq of the newest packet received
        self._next: int | None = None  # ext seq of the next frame to play
        self._offset: float | None = None
        self._played: deque[int] = deque(maxlen=256)
        self._tail_concealed = 0  # concealed frames newer than any packet received
        self._last_ext, self._last_arrival = 0, 0.0
        self._idle = True
        self.stats.target_ms = float(self.jitter_min_ms)

    # -- input ---------------------------------------------------------------------------
    def _extend(self, seq: int) -> int:
        if self._ref_seq is None:
            self._ref_seq, self._ref_ext = seq, 1 << 20
            return self._ref_ext
        ext = self._ref_ext + seq_delta(seq, self._ref_seq)
        if ext > self._ref_ext:
            self._ref_seq, self._ref_ext = seq, ext
        return ext

    def push(self, pkt: RtpPacket, now: float) -> str:
        """Add an arrived packet: "ok", or why it was dropped: "duplicate", "late",
        "dropped" (too far ahead)."""
        ext = self._extend(pkt.seq)
        if self._idle and self._next is not None and (
                pkt.marker or not -64 <= ext - self._next <= self.max_ahead
                # the stream goes on after a stall that the buffer played through (its
                # frames concealed, then idle): newer than anything received, so not late
                or self._highest < ext < self._next):
            ext = self._reanchor(pkt.seq, now)  # a new stream after a pause
        if ext in self._packets or ext in self._played:
            self.stats.duplicates += 1
            return "duplicate"
        if self._next is not None and ext < self._next:
            self.stats.late += 1
            self._transits.append(now - ext * self.frame_s)  # late ones teach the most
            self._adapt()
            return "late"
        if self._next is not None and not self._idle and ext - self._next > self.max_ahead:
            self.stats.dropped += 1  # absurdly far ahead: a broken or hostile sender
            return "dropped"
        self.stats.received += 1
        self._transits.append(now - ext * self.frame_s)
        self._adapt()
        if ext < self._highest:
            self.stats.reordered += 1
        if ext > self._highest and self._tail_concealed:
            # frames concealed past the newest packet were real losses after all
            self.stats.lost += self._tail_concealed
            self._tail_concealed = 0
        if ext > self._highest:
            self.highest_seq = pkt.seq
        self._highest = max(self._highest, ext)
        self._packets[ext] = pkt
        self._last_ext, self._last_arrival = ext, now
        if self._idle:  # first packet, or a new talk spurt: start the clock here
            self._next = ext
            self._idle = False
            self._tail_concealed = 0
        return "ok"

    def _reanchor(self, seq: int, now: float) -> int:
        """Number a new stream (new talk spurt, or a sender that restarted with other
        sequence numbers) so that it continues the old one's clock: the pause in real
        time becomes a gap in extended numbers, and the measured transits stay valid."""
        gap = max(1, round((now - self._last_arrival) / self.frame_s))
        ext = max(self._last_ext + gap, self._next or 0)
        self._ref_seq, self._ref_ext = seq, ext
        return ext

    def _adapt(self) -> None:
        xs = sorted(self._transits)
        base = xs[0]
        jitter = xs[int(self.quantile * (len(xs) - 1))] - base
        target = min(max(jitter * 1000 + self.margin_ms, self.jitter_min_ms), self.jitter_max_ms)
        self.stats.target_ms = target
        want = base + target / 1000.0
        if self._offset is None or want > self._offset:
            self._offset = want
        else:
            self._offset = max(want, self._offset - self.shrink_ms / 1000.0)

    # -- output --------------------------------------------------------------------------
    @property
    def target_ms(self) -> float:
        return self.stats.target_ms

    def due(self, ext: int) -> float:
        assert self._offset is not None
        return ext * self.frame_s + self._offset

    def next_due(self) -> float | None:
        """When :meth:`pop` will next have a frame (None while idle)."""
        if self._idle or self._next is None or self._offset is None:
            return None
        return self.due(self._next)

    def _take(self, k: int) -> PlayoutFrame:
        """Frame ``k`` from its packet (counted as played), or a frame to conceal (no
        payload; the next packet's, when it is here, for FEC)."""
        pkt = self._packets.pop(k, None)
        if pkt is not None:
            self.stats.played += 1
            self._played.append(k)
            return PlayoutFrame(k, self.due(k), pkt.payload, timestamp=pkt.timestamp)
        nxt = self._packets.get(k + 1)
        return PlayoutFrame(k, self.due(k), None, nxt.payload if nxt else None)

    def pop(self, now: float) -> list[PlayoutFrame]:
        """Every frame whose playout time has come, in order."""
        out: list[PlayoutFrame] = []
        while not self._idle and self._next is not None and self.due(self._next) <= now:
            k = self._next
            frame = self._take(k)
            out.append(frame)
            if frame.lost:
                if self._highest > k:
                    self.stats.lost += 1
                else:
                    self._tail_concealed += 1
                    if self._tail_concealed >= self.idle_after:
                        self._idle = True  # nothing newer: the stream paused or ended
                        self._tail_concealed = 0
            self._next = k + 1
        return out

    def drain(self) -> list[PlayoutFrame]:
        """Every frame up to the newest packet received, now, whatever their due times
        (gaps come out as lost frames): for handing the stream over to another path.
        Leaves the buffer idle."""
        out: list[PlayoutFrame] = []
        if self._idle or self._next is None or self._offset is None:
            return out
        while self._next <= self._highest:
            frame = self._take(self._next)
            out.append(frame)
            if frame.lost:
                self.stats.lost += 1
            self._next += 1
        self._packets.clear()
        self._idle = True
        self._tail_concealed = 0
        return out

    def __len__(self) -> int:
        return len(self._packets)
