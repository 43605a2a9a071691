"""Voice activity: a probability of speech per frame, and the events built from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class VadEngine(Protocol):
    frame_samples: int  # samples per call at 16 kHz (512 for Silero)

    def probability(self, frame: np.ndarray) -> float:
        """Speech probability (0..1) of one int16 frame of ``frame_samples`` samples."""

    def reset(self) -> None:
        """Forget the recurrent state (start of a new stream)."""


@dataclass
class VadEvent:
    kind: str  # "speech_start" | "pause" (short silence) | "speech_resume" | "speech_end"
    t: float  # monotonic time of the audio position the event refers to
    silence_ms: float = 0.0
