"""The wake-word-free follow-up window: after a reply, the person may simply go on
talking. Sound alone must not open a turn (a kettle, a door, the reply's own tail), so
the window opens on *voice activity*: a Silero VAD (the same engine the server's
endpointer uses) must call a run of frames speech.

While the reply is still playing, the satellite's
:class:`~hark.bargein.detector.PlaybackListener` decides instead (it removes the reply's
echo before its VAD listens); this gate only hears the room once playback is over.
"""

from __future__ import annotations

import numpy as np

from hark.vad.base import VadEngine


class FollowUpGate:
    """Microphone frames of any size (16 kHz int16) in; True once the person has spoken
    for ``min_speech_ms`` (consecutive VAD frames at or over ``threshold``)."""

    def __init__(self, vad: VadEngine, threshold: float = 0.5, min_speech_ms: int = 160):
        self.vad = vad
        self.threshold = threshold
        self.frame = vad.frame_samples
        self.need = max(1, round(min_speech_ms * 16 / self.frame))
        self.run = 0
        self.frames_heard = 0  # VAD frames evaluated, in all
        self._pending = np.zeros(0, np.int16)

    def reset(self) -> None:
        """Forget what was heard (a new window, or the reply started playing again)."""
        self.vad.reset()
        self.run = 0
        self._pending = np.zeros(0, np.int16)

    def heard(self, frame: np.ndarray) -> bool:
        """Feed one microphone frame; True when speech has lasted long enough."""
        self._pending = np.concatenate([self._pending, np.asarray(frame, np.int16)])
        n = self.frame
        triggered = False
        while len(self._pending) >= n:
            part, self._pending = self._pending[:n], self._pending[n:]
            self.frames_heard += 1
            p = self.vad.probability(part)
            self.run = self.run + 1 if p >= self.threshold else 0
            triggered = triggered or self.run >= self.need
        return triggered
