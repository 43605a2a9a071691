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


class TurnEndpointer(Protocol):
    """What a turn reads from its endpointer (:class:`hark.vad.endpoint.Endpointer`):
    events per chunk, the timeout it can move, and the audio heard so far."""

    speech_end_t: float | None  # monotonic end of the last speech frame

    def process(self, chunk) -> list[VadEvent]:
        """Feed one :class:`hark.audio.AudioChunk`; the events it caused, in order."""

    def set_eot_ms(self, ms: float) -> None:
        """The trailing silence that ends the turn, from the next frame on."""

    def utterance(self) -> np.ndarray:
        """int16 audio of the utterance so far (pre-roll included)."""

    @property
    def silence_ms(self) -> float:
        """Trailing silence so far."""

    @property
    def spoken_ms(self) -> float:
        """Time since the speech onset, pauses included (0 before speech)."""

    @property
    def speech_samples(self) -> int:
        """Samples of :meth:`utterance` up to the end of the last speech frame."""
