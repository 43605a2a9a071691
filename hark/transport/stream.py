"""Audio streams over any path: PCM in, RTP packets out, and back.

Every audio path carries the same RTP packets: a UDP datagram, the payload of an
``audio-chunk`` event on the TCP control channel (fallback), or a record in a shared
memory ring (same host). So one sender and one receiver serve all three.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import numpy as np

from hark.audio import resample
from hark.transport.codec import make_decoder, make_encoder, opus_rate
from hark.transport.jitter import JitterBuffer, PlayoutFrame
from hark.transport.rtp import PT_OPUS, PT_PCM, RtpPacket, seq_delta


def wire_rate(codec: str, rate: int) -> int:
    """The rate a stream at ``rate`` travels at (Opus only runs at a few rates)."""
    return opus_rate(rate) if codec == "opus" else rate


class RtpStreamSender:
    """Cuts PCM into frames, encodes them and wraps each in an RTP packet."""

    def __init__(self, codec: str, rate: int, frame_ms: int = 20, fec: bool = True,
                 ssrc: int | None = None):
        self.codec = codec
        self.rate = rate  # rate of the PCM handed to push()
        self.wire_rate = wire_rate(codec, rate)
        self.encoder = make_encoder(codec, self.wire_rate, frame_ms, fec)
        self.frame_samples = self.encoder.frame_samples
        self.pt = PT_OPUS if codec == "opus" else PT_PCM
        self.ssrc = ssrc if ssrc is not None else random.getrandbits(32)
        self.seq = random.getrandbits(16)
        self.timestamp = random.getrandbits(32)
        self._pending = np.zeros(0, np.int16)
        self._marker = True
        self.frames_sent = 0

    def push(self, samples: np.ndarray) -> list[RtpPacket]:
        """Packets for every whole frame now available."""
        if self.rate != self.wire_rate:
            samples = resample(samples, self.rate, self.wire_rate)
        self._pending = np.concatenate([self._pending, samples.astype(np.int16, copy=False)])
        out = []
        n = self.frame_samples
        while len(self._pending) >= n:
            frame, self._pending = self._pending[:n], self._pending[n:]
            out.append(self._packet(frame))
        return out

    def flush(self) -> list[RtpPacket]:
        """The last partial frame, zero-padded; the next packet starts a new talk spurt."""
        out = []
        if len(self._pending):
            frame = np.zeros(self.frame_samples, np.int16)
            frame[:len(self._pending)] = self._pending
            self._pending = np.zeros(0, np.int16)
            out.append(self._packet(frame))
        self._marker = True
        return out

    def _packet(self, frame: np.ndarray) -> RtpPacket:
        pkt = RtpPacket(self.seq, self.timestamp, self.ssrc, self.encoder.encode(frame),
                        self.pt, self._marker)
        self._marker = False
        self.seq = (self.seq + 1) & 0xFFFF
        self.timestamp = (self.timestamp + self.frame_samples) & 0xFFFFFFFF
        self.frames_sent += 1
        return pkt


class RtpStreamReceiver:
    """Jitter buffer + decoder: packets in, PCM frames out on the playout clock.

    Lost frames are rebuilt from the next packet's Opus FEC when it is already here,
    else concealed by libopus PLC (PCM: the last frame repeated, fading). Packets from a
    reliable, ordered path skip the jitter buffer (:meth:`push_ordered`)."""

    def __init__(self, codec: str, rate: int, frame_ms: int = 20,
                 jitter_min_ms: float = 10, jitter_max_ms: float = 120, max_gap: int = 50):
        self.codec = codec
        self.rate = rate  # wire rate: what decode() returns
        self.decoder = make_decoder(codec, rate, frame_ms)
        self.jitter = JitterBuffer(frame_ms, jitter_min_ms, jitter_max_ms)
        self.frame_ms = frame_ms
        self.concealed = 0
        self.fec_recovered = 0
        self.max_gap = max_gap
        self.last_seq: int | None = None  # newest seq decoded on the ordered path
        self._clock: tuple[int, float] | None = None  # (RTP timestamp, capture time)

    @property
    def highest_seq(self) -> int | None:
        """RTP seq of the newest packet received on either path (None: none yet)."""
        if self.last_seq is None:
            return self.jitter.highest_seq
        return self.last_seq

    def capture_time(self, timestamp: int, now: float) -> float:
        """When the frame with this RTP timestamp was captured, estimated from the
        fastest arrival seen so far (a burst of resent frames maps to their real times
        once a live frame has come)."""
        if self._clock is None:
            self._clock = (timestamp, now)
        ts0, t0 = self._clock
        offset = ((timestamp - ts0) & 0xFFFFFFFF) / self.rate
        if offset > 0x7FFFFFFF / self.rate:  # an older frame than the reference
            offset -= 0x100000000 / self.rate
        if now - offset < t0:
            self._clock = (ts0, now - offset)
            t0 = now - offset
        return t0 + offset

    def push_ordered(self, pkt: RtpPacket, now: float | None = None
                     ) -> list[tuple[float, np.ndarray]]:
        """A packet from an ordered, reliable path (TCP, shared memory): decoded at
        once, no jitter buffer. Returns (capture time, PCM) per frame: none for a
        duplicate or an old packet, concealed frames first for a gap of up to
        ``max_gap`` frames (a longer gap is skipped: the stream restarted)."""
        now = time.monotonic() if now is None else now
        out: list[tuple[float, np.ndarray]] = []
        if self.last_seq is None:
            # frames still in the jitter buffer (the path changed mid-stream) come first
            out.extend(self.drain())
        if self.last_seq is not None:
            gap = seq_delta(pkt.seq, self.last_seq) - 1
            if gap < 0:
                return out  # duplicate, or already played from the jitter buffer
            t = self.capture_time(pkt.timestamp, now)
            frame_s = self.frame_ms / 1000.0
            for i in range(gap if gap <= self.max_gap else 0, 0, -1):
                self.concealed += 1
                out.append((t - i * frame_s, self.decoder.conceal()))
        self.last_seq = pkt.seq
        out.append((self.capture_time(pkt.timestamp, now), self.decoder.decode(pkt.payload)))
        return out

    def drain(self) -> list[tuple[float, np.ndarray]]:
        """Everything the jitter buffer holds, decoded now (for a path change); the
        ordered path continues after the newest packet it held."""
        frames = self.jitter.drain()
        if frames:
            self.last_seq = self.jitter.highest_seq
        return [(f.due, self.decode(f)) for f in frames]

    def push(self, pkt: RtpPacket, now: float | None = None) -> str:
        return self.jitter.push(pkt, time.monotonic() if now is None else now)

    def decode(self, frame: PlayoutFrame) -> np.ndarray:
        if frame.payload is not None:
            return self.decoder.decode(frame.payload)
        if frame.fec is not None and self.codec == "opus":
            self.fec_recovered += 1
            return self.decoder.recover(frame.fec)
        self.concealed += 1
        return self.decoder.conceal()

    def pop(self, now: float | None = None) -> list[tuple[PlayoutFrame, np.ndarray]]:
        now = time.monotonic() if now is None else now
        return [(f, self.decode(f)) for f in self.jitter.pop(now)]


def paced_sender(send: Callable[[RtpPacket], None], frame_s: float,
                 lead_s: float = 0.06) -> Callable[[list[RtpPacket]], float]:
    """Returns ``schedule(packets)`` -> seconds to wait before sending the next batch,
    so that a burst (a whole TTS sentence) goes out at real time, ``lead_s`` ahead."""
    state = {"start": None, "sent": 0}

    def schedule(packets: list[RtpPacket]) -> float:
        if state["start"] is None:
            state["start"] = time.monotonic()
        for p in packets:
            send(p)
            state["sent"] += 1
        ahead = state["start"] + state["sent"] * frame_s - time.monotonic()
        return max(0.0, ahead - lead_s)

    return schedule
