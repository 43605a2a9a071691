"""Barge-in: notice the person talking over the reply, but not the reply's own echo.

While a reply plays, the microphone hears the loudspeaker. We know exactly what is being
played, so each microphone frame is compared with the reply audio around the same moment:
the echo path's delay is found once by cross-correlation, then each frame's
echo is removed with a least-squares gain fitted against the delayed reference. What is
left (the residual) goes through the VAD; only speech in the residual is a barge-in.
"""

from __future__ import annotations

import numpy as np

from hark.vad.base import VadEngine


def echo_delay(mic: np.ndarray, ref: np.ndarray, max_delay: int) -> int:
    """Samples by which ``mic`` lags ``ref`` (0..max_delay): the peak of their
    cross-correlation, computed by FFT."""
    n = len(mic) + len(ref)
    nfft = 1 << (n - 1).bit_length()
    cross = np.fft.rfft(mic.astype(np.float64), nfft) * np.conj(np.fft.rfft(ref.astype(np.float64), nfft))
    cc = np.fft.irfft(cross, nfft)
    return int(np.argmax(cc[: max_delay + 1]))


class BargeInDetector:
    """Feed microphone frames during playback; ``process`` says when the person speaks.

    ``start(reply)`` with the reply audio at 16 kHz as it will be played (append more with
    ``extend``); microphone frame ``k`` is taken to be captured while reference sample
    ``k * frame`` plays, plus the echo delay estimated from the first frames.
    """

    def __init__(self, vad: VadEngine, threshold: float = 0.6, min_speech_ms: int = 96,
                 max_delay_ms: int = 200, rate: int = 16000):
        self.vad = vad
        self.threshold = threshold
        self.frame = vad.frame_samples
        self.need = max(1, int(min_speech_ms * rate / 1000) // self.frame)
        self.max_delay = int(max_delay_ms * rate / 1000)
        self.ref = np.zeros(0, np.float64)
        self.mic_seen: list[np.ndarray] = []
        self.pos = 0
        self.delay: int | None = None
        self.run = 0
        self.triggered = False

    def start(self, reply: np.ndarray) -> None:
        self.ref = reply.astype(np.float64)
        self.mic_seen.clear()
        self.pos = 0
        self.delay = None
        self.run = 0
        self.triggered = False
        self.vad.reset()

    def extend(self, more: np.ndarray) -> None:
        self.ref = np.concatenate([self.ref, more.astype(np.float64)])

    def _reference(self, start: int, n: int) -> np.ndarray:
        seg = np.zeros(n)
        a, b = max(start, 0), min(start + n, len(self.ref))
        if b > a:
            seg[a - start:b - start] = self.ref[a:b]
        return seg

    def residual(self, frame: np.ndarray) -> np.ndarray | None:
        """The frame with the reply's echo removed; None while the echo delay is still
        being measured (the first few frames of playback)."""
        x = frame.astype(np.float64)
        self.pos += len(x)
        if self.delay is None:
            self.mic_seen.append(x)
            seen = np.concatenate(self.mic_seen)
            ref = self._reference(0, len(seen))
            voiced = float(np.mean(np.abs(ref) > 500))  # share of the reference with sound
            if len(seen) < 8 * self.frame or (voiced < 0.3 and len(seen) < 24 * self.frame):
                return None  # not enough played yet to place the echo
            self.delay = echo_delay(seen, ref, self.max_delay) if voiced > 0.05 else 0
            self.mic_seen.clear()
        r = self._reference(self.pos - len(x) - self.delay, len(x))
        energy = float(r @ r)
        if energy < 1e-6:
            return x
        gain = max(0.0, float(x @ r) / energy)
        return x - gain * r

    def process(self, frame: np.ndarray) -> bool:
        """One microphone frame (``vad.frame_samples`` int16 samples). True once the
        person has spoken for ``min_speech_ms`` over the playback."""
        res = self.residual(frame)
        if res is None:
            return self.triggered
        p = self.vad.probability(np.clip(res, -32768, 32767).astype(np.int16))
        self.run = self.run + 1 if p >= self.threshold else 0
        if self.run >= self.need:
            self.triggered = True
        return self.triggered


class PlaybackListener:
    """The satellite's ear while a reply plays: microphone frames of any size in, True
    when the person talks over the reply (its echo removed with the audio being played).

    ``played(pcm, rate)`` for every piece of reply audio handed to the speaker,
    ``heard(frame)`` for every microphone frame (16 kHz int16), ``reset()`` when a reply
    is over."""

    def __init__(self, vad: VadEngine, **kwargs):
        self.detector = BargeInDetector(vad, **kwargs)
        self._pending = np.zeros(0, np.int16)
        self.active = False
        self.ignoring = False

    def reset(self) -> None:
        self.active = False
        self.ignoring = False
        self._pending = np.zeros(0, np.int16)

    def ignore_until_reset(self) -> None:
        """This playback may not be interrupted (e.g. a "busy" message)."""
        self.ignoring = True

    def played(self, pcm: np.ndarray, rate: int) -> None:
        from hark.audio import resample

        ref = resample(np.asarray(pcm, np.int16), rate, 16000)
        if not self.active:
            self.detector.start(ref)
            self.active = True
        else:
            self.detector.extend(ref)

    def heard(self, frame: np.ndarray) -> bool:
        if not self.active or self.ignoring:
            return False
        self._pending = np.concatenate([self._pending, np.asarray(frame, np.int16)])
        n = self.detector.frame
        triggered = False
        while len(self._pending) >= n:
            part, self._pending = self._pending[:n], self._pending[n:]
            triggered = self.detector.process(part) or triggered
        return triggered
