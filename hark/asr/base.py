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
    avg_logprob: float | None = None  # the decoder's confidence, when one decode made it


@dataclass
class AsrResult:
    """One decode: the text and the decoder's confidence."""

    text: str
    no_speech_prob: float = 1.0  # Whisper's probability that the window holds no speech
    # mean log-probability per token of the text; None: the engine gives no confidence
    # (a remote Wyoming service)
    avg_logprob: float | None = 0.0
    audio_s: float = 0.0  # seconds of audio decoded
    decode_s: float = 0.0  # wall time of the decode


class AsrEngine(Protocol):
    def transcribe(self, samples: np.ndarray, prompt: str = "") -> str:
        """Decode int16 16 kHz mono audio to text (blocking)."""

    def decode(self, samples: np.ndarray, prompt: str = "", prefix: str = "") -> AsrResult:
        """Like :meth:`transcribe`, with the decoder's confidence."""

    def warm_up(self) -> None:
        """Run once on a dummy input so the first real decode is not the slow one."""
