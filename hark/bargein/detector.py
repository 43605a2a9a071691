"""Barge-in: notice the person talking over the reply, but not the reply's own echo.

While a reply plays, the microphone hears the loudspeaker. We know exactly what is being
played, so the echo is predicted from the reply audio and subtracted
(:mod:`hark.bargein.echo`); only speech in what is left (the residual) is a barge-in.
Two predictions, and each frame keeps the one that leaves less:

- one delayed gain: the echo path's delay is found by phase-weighted cross-correlation
  (:func:`~hark.bargein.echo.echo_delay`) at the start of each reply, and each frame's
  gain is fitted by least squares. Right for a direct echo and from the first frames on,
  but a room's reverberation smears the echo over hundreds of milliseconds, and that
  goes through.
- :class:`~hark.bargein.echo.EchoCanceller`: the room's response (reverberation
  included) learnt from the replies, as a convolutive transfer function in the
  short-time Fourier domain. It needs about a second of reply audio to learn the room,
  and keeps it for the next replies.

A frame whose residual is more than ``echo_margin_db`` below the predicted echo is
counted as leftover echo, whatever the VAD says of it.

Contract: :class:`PlaybackListener` takes the reply audio as it is handed to the
speaker (``played``, any rate) and microphone frames of any size (``heard``, 16 kHz
int16) and answers True once the person has spoken over the reply for
``min_speech_ms``; :class:`BargeInDetector` is the same on VAD-sized frames with the
reply given up front. Both need only a :class:`~hark.vad.base.VadEngine`.
"""

from __future__ import annotations

import numpy as np

from hark.bargein.echo import EchoCanceller, echo_delay
from hark.errors import ConfigError
from hark.vad.base import VadEngine


class BargeInDetector:
    """Feed microphone frames during playback; ``process`` says when the person speaks.

    ``start(reply)`` with the reply audio at 16 kHz as it will be played (append more with
    ``extend``); microphone frame ``k`` is taken to be captured while reference sample
    ``k * frame`` plays, plus the echo delay estimated from the first frames.
    ``canceller``: "adaptive" (the delayed gain and :class:`EchoCanceller`, the better of
    the two each frame) or "subtract" (the delayed gain alone). With "adaptive" the
    residual runs half a VAD frame (16 ms) behind the microphone (``lag`` samples).

    ``residual`` returns None for the first frames, while the echo delay is measured; the
    frame that completes the measurement leaves in ``backlog`` the residual of the frames
    before it (the delayed gain's), so that ``backlog`` and the residuals after it (less
    the first one's first ``lag`` samples, which ``backlog`` already covers) are one
    gapless stream of echo-free audio from the first microphone sample after ``start``.
    """

    def __init__(self, vad: VadEngine, threshold: float = 0.6, min_speech_ms: int = 96,
                 max_delay_ms: int = 200, rate: int = 16000, canceller: str = "adaptive",
                 echo_margin_db: float = 10.0):
        if canceller not in ("adaptive", "subtract"):
            raise ConfigError(f"wake.echo_canceller must be 'adaptive' or 'subtract', "
                              f"not {canceller!r}")
        self.vad = vad
        self.threshold = threshold
        self.frame = vad.frame_samples
        self.need = max(1, int(min_speech_ms * rate / 1000) // self.frame)
        self.max_delay = int(max_delay_ms * rate / 1000)
        self.echo_margin = 10 ** (-echo_margin_db / 10)
        self.aec = EchoCanceller(frame=self.frame, rate=rate) if canceller == "adaptive" \
            else None
        self.lag = self.aec.hop if self.aec is not None else 0
        self.backlog = np.zeros(0)
        self.ref = np.zeros(0, np.float64)
        self.mic_seen: list[np.ndarray] = []
        self.pos = 0
        self.delay: int | None = None
        self.run = 0
        self.triggered = False
        self.leftover = False  # the last residual was counted as leftover echo
        self._held = np.zeros(self.frame // 2)  # the newest half frame of mic and of
        self._held_res = np.zeros(self.frame // 2)  # the gain's residual, for lining up

    def start(self, reply: np.ndarray) -> None:
        self.ref = reply.astype(np.float64)
        self.mic_seen.clear()
        self.pos = 0
        self.delay = None
        self.run = 0
        self.triggered = False
        self.leftover = False
        self.backlog = np.zeros(0)
        self.vad.reset()
        if self.aec is not None:
            self.aec.restart()  # the room it learnt stays
        self._held = np.zeros(self.frame // 2)
        self._held_res = np.zeros(self.frame // 2)

    def extend(self, more: np.ndarray) -> None:
        self.ref = np.concatenate([self.ref, more.astype(np.float64)])

    def _reference(self, start: int, n: int) -> np.ndarray:
        seg = np.zeros(n)
        a, b = max(start, 0), min(start + n, len(self.ref))
        if b > a:
            seg[a - start:b - start] = self.ref[a:b]
        return seg

    def _gain_residual(self, x: np.ndarray, start: int) -> np.ndarray:
        """``x`` less the reference from ``start``, delayed, at its least-squares gain."""
        r = self._reference(start, len(x))
        energy = float(r @ r)
        gain = max(0.0, float(x @ r) / energy) if energy >= 1e-6 else 0.0
        return x - gain * r

    def residual(self, frame: np.ndarray) -> np.ndarray | None:
        """The frame with the reply's echo removed; None while the echo delay is still
        being measured (the first few frames of playback: see ``backlog``)."""
        x = frame.astype(np.float64)
        self.pos += len(x)
        if self.delay is None:
            self.mic_seen.append(x)
            seen = np.concatenate(self.mic_seen)
            ref = self._reference(0, len(seen))
            voiced = float(np.mean(np.abs(ref) > 500))  # share of the reference with sound
            # not enough played yet to place the echo: 12 frames (384 ms) at least, of
            # which the echo may miss the first max_delay (on 8 the delay sometimes came
            # out a pitch period off)
            if len(seen) < 12 * self.frame or (voiced < 0.3 and len(seen) < 24 * self.frame):
                return None
            self.delay = echo_delay(seen, ref, self.max_delay) if voiced > 0.05 else 0
            self.mic_seen.clear()
            before = len(seen) - len(x)  # the frames held back, now that the echo is placed
            self.backlog = np.concatenate([
                self._gain_residual(seen[i:i + len(x)], i - self.delay)
                for i in range(0, before, len(x))] or [np.zeros(0)])
            if self.aec is not None:  # the canceller hears the frames so far, to be in step
                h = self.aec.hop
                for i in range(0, before, h):
                    self.aec.process(seen[i:i + h], self._reference(i - self.delay + h, h))
                self._held = self._held_res = seen[before - h:before]
        start = self.pos - len(x) - self.delay
        res = self._gain_residual(x, start)
        self.leftover = False
        if self.aec is None:
            return res
        # the canceller's residual comes half a frame late: line the rest up with it
        h = self.aec.hop
        out = np.concatenate([self.aec.process(x[i:i + h], self._reference(start + h + i, h))
                              for i in range(0, len(x), h)])
        mic = np.concatenate([self._held, x[:-h]])
        late = np.concatenate([self._held_res, res[:-h]])
        self._held, self._held_res = x[-h:], res[-h:]
        best = out if float(out @ out) <= float(late @ late) else late
        echo = mic - best
        self.leftover = float(best @ best) < self.echo_margin * float(echo @ echo)
        return best

    def process(self, frame: np.ndarray) -> bool:
        """One microphone frame (``vad.frame_samples`` int16 samples). True once the
        person has spoken for ``min_speech_ms`` over the playback."""
        res = self.residual(frame)
        if res is None:
            return self.triggered
        p = self.vad.probability(np.clip(res, -32768, 32767).astype(np.int16))
        speech = p >= self.threshold and not self.leftover
        self.run = self.run + 1 if speech else 0
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
