"""Speech-to-text: whole-utterance decoding, and the streaming transcript built on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Transcript:
    text: str  # committed + tentative words, for display and intent matching
    stable: str = ""  # words agreed by consecutive passes (LocalAgreement); never change
    is_final: bool = False
    t: float = 0.0  # monotonic time the transcript became available


class AsrEngine(Protocol):
    def transcribe(self, samples: np.ndarray, prompt: str = "") -> str:
        """Decode int16 16 kHz mono audio to text (blocking)."""

    def warm_up(self) -> None:
        """Run once on a dummy input so the first real decode is not the slow one."""
