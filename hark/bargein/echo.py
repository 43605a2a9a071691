"""Echo removal: a known reference's echo taken out of microphone audio.

Whoever plays audio and records at the same time (the satellite during a reply,
``hark listen`` on the local sound card) knows the reference exactly; these two pieces
find it in the microphone signal. Plain numpy, no model and no state shared between
instances.

- :func:`echo_delay`: how many samples the microphone lags the reference (the peak of
  their phase-weighted cross-correlation).
- :class:`EchoCanceller`: the room's response to the reference (reverberation included)
  learnt as it plays and subtracted. ``process(mic_hop, ref_hop)`` takes a hop of
  microphone audio (exactly ``frame // 2`` samples) and the reference a
  hop ahead of it, and returns the residual of the hop before: the output is one hop
  late. What it learnt of the room is kept across :meth:`EchoCanceller.restart`.
"""

from __future__ import annotations

import numpy as np


def echo_delay(mic: np.ndarray, ref: np.ndarray, max_delay: int) -> int:
    """Samples by which ``mic`` lags ``ref`` (0..max_delay): the peak of their
    cross-correlation computed by FFT, its spectrum mostly whitened (the phase
    transform, GCC-PHAT, at weight 0.8), so that a voiced reply's pitch period, which
    repeats in the plain cross-correlation, is not taken for the delay."""
    n = len(mic) + len(ref)
    nfft = 1 << (n - 1).bit_length()
    cross = np.fft.rfft(mic.astype(np.float64), nfft) * np.conj(np.fft.rfft(ref.astype(np.float64), nfft))
    cross /= np.maximum(np.abs(cross), 1e-12) ** 0.8
    cc = np.fft.irfft(cross, nfft)
    return int(np.argmax(cc[: max_delay + 1]))


class EchoCanceller:
    """Removes a known reference's echo from microphone audio: a convolutive transfer
    function (``taps`` frames per frequency bin, short-time Fourier transform with
    ``frame``-sample sqrt-Hann windows at 50% overlap) fitted by exponentially weighted
    least squares (time constant ``forget_s``), solved every ``solve_every`` hops.

    The person's speech does not correlate with the reply, so it does not bias the fit:
    no double-talk detector is needed, and what is learnt of the room is kept from one
    reply to the next (:meth:`restart` only clears the audio buffers). ``process`` takes
    a hop of microphone audio and the reference a hop ahead of it, and returns the
    residual of the hop before (the window's overlap delays the output by one hop).
    """

    def __init__(self, taps: int = 16, frame: int = 512, forget_s: float = 4.0,
                 solve_every: int = 8, rate: int = 16000):
        self.frame, self.hop, self.taps = frame, frame // 2, taps
        self.rate = rate
        self.win = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(frame) / frame))
        bins = frame // 2 + 1
        self.R = np.zeros((bins, taps, taps), np.complex128)  # sum of conj(x) x^T
        self.r = np.zeros((bins, taps), np.complex128)  # sum of conj(x) y
        self.H = np.zeros((bins, taps), np.complex128)
        self.lam = float(np.exp(-self.hop / (forget_s * rate)))
        self.solve_every = solve_every
        self.learnt_s = 0.0  # seconds of sounding reference the fit has seen
        self._updates = 0
        self.restart()

    def restart(self) -> None:
        """A new stream (the next reply): clear the buffers, keep the room."""
        bins = self.frame // 2 + 1
        self.X = np.zeros((bins, self.taps), np.complex128)  # newest reference frame first
        self._mic = np.zeros(self.frame)
        self._ref = np.zeros(self.frame)
        self._tail = np.zeros(self.frame - self.hop)

    def process(self, mic: np.ndarray, ref: np.ndarray) -> np.ndarray:
        h = self.hop
        self._mic = np.concatenate([self._mic[h:], mic])
        self._ref = np.concatenate([self._ref[h:], ref])
        Y = np.fft.rfft(self.win * self._mic)
        self.X = np.concatenate([np.fft.rfft(self.win * self._ref)[:, None], self.X[:, :-1]],
                                axis=1)
        E = Y - np.einsum("bk,bk->b", self.H, self.X)
        if float(np.dot(ref, ref)) > 1e3 * len(ref):  # learn while the reply makes a sound
            xc = np.conj(self.X)
            self.R = self.lam * self.R + xc[:, :, None] * self.X[:, None, :]
            self.r = self.lam * self.r + xc * Y[:, None]
            self.learnt_s += h / self.rate
            self._updates += 1
            if self._updates % self.solve_every == 0:
                d = np.real(np.einsum("bkk->b", self.R)) / self.taps
                ridge = (1e-2 * d + 1e-6 * (d.mean() + 1.0))[:, None, None] * np.eye(self.taps)
                self.H = np.linalg.solve(self.R + ridge, self.r[:, :, None])[:, :, 0]
        e = np.fft.irfft(E, self.frame) * self.win
        out = self._tail[:h] + e[:h]
        self._tail = np.concatenate([self._tail[h:], np.zeros(h)]) + e[h:]
        return out
