"""Text-to-speech: text in, audio chunks out as soon as each is synthesized."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from hark.audio import AudioChunk


class TtsEngine(Protocol):
    sample_rate: int

    def synthesize(self, text: str) -> Iterator[AudioChunk]:
        """Yield audio for ``text`` piece by piece (blocking generator)."""
