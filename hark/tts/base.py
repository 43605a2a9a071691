"""Text-to-speech: text in, audio chunks out as soon as each is synthesized."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from hark.audio import AudioChunk


class TtsEngine(Protocol):
    sample_rate: int

    def synthesize(self, text: str) -> Iterator[AudioChunk]:
        """Yield audio for ``text`` piece by piece (blocking generator)."""

    def warm_up(self) -> None:
        """Run once on a dummy input so the first real phrase is not the slow one."""


def trim_silence(samples, rate: int, lead_ms: float | None, tail_ms: float | None,
                 level: int = 300):
    """``samples`` (int16) without the silence a voice puts around a phrase: at most
    ``lead_ms`` of it kept before the first sample louder than ``level`` and ``tail_ms``
    after the last (None: that end untouched). All-quiet audio comes back unchanged.

    Piper pads every phrase with silence, more at its end than at its start, which is
    right between sentences but makes a reply cut mid-sentence ("Romeo and Juliet" |
    "were written by ...") stop and start, and delays the first word the person hears."""
    import numpy as np

    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > level)
    if loud.size == 0:
        return samples
    start, end = 0, len(samples)
    if lead_ms is not None:
        start = max(0, int(loud[0]) - int(rate * lead_ms / 1000))
    if tail_ms is not None:
        end = min(len(samples), int(loud[-1]) + 1 + int(rate * tail_ms / 1000))
    return samples[start:end]
