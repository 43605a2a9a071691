"""Per-turn traces: monotonic timestamps of every event, taken where they happen.

A :class:`Trace` travels with a turn through every stage. Stages call ``trace.mark(name)``
the moment something happens (``speech_end``, ``asr_final``, ``llm_first_token``,
``tts_first_audio``, ...); latency is then the difference between two marks, so it is
measured where the work happens rather than guessed afterwards. Marks are
``time.monotonic()`` seconds; the first mark of a name wins (``mark`` is idempotent),
``mark(..., overwrite=True)`` replaces it.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count(1)

# The stage spans reported everywhere (tables, benchmark JSON, /metrics):
# name -> (start mark, end mark). A span is reported only when both marks exist.
SPANS: dict[str, tuple[str, str]] = {
    "end_of_turn": ("speech_end", "turn_end"),
    "asr_final": ("speech_end", "asr_final"),
    "intent": ("intent_start", "intent_done"),
    "llm_first_token": ("llm_start", "llm_first_token"),
    "llm_first_chunk": ("llm_start", "llm_first_chunk"),
    "llm_total": ("llm_start", "llm_done"),
    "tts_first_audio": ("tts_start", "tts_first_audio"),
    "tts_total": ("tts_start", "tts_done"),
    "total": ("speech_end", "first_audio_out"),
}


@dataclass
class Trace:
    turn_id: int = field(default_factory=lambda: next(_ids))
    marks: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # transcript, intent, reply, mode...

    def mark(self, name: str, t: float | None = None, overwrite: bool = False) -> float:
        if overwrite or name not in self.marks:
            self.marks[name] = time.monotonic() if t is None else t
        return self.marks[name]

    def has(self, name: str) -> bool:
        return name in self.marks

    def span_ms(self, start: str, end: str) -> float | None:
        if start in self.marks and end in self.marks:
            return (self.marks[end] - self.marks[start]) * 1000.0
        return None

    def spans_ms(self) -> dict[str, float]:
        out = {}
        for name, (a, b) in SPANS.items():
            v = self.span_ms(a, b)
            if v is not None:
                out[name] = v
        return out

    def to_json(self) -> str:
        t0 = min(self.marks.values()) if self.marks else 0.0
        return json.dumps(
            {
                "turn_id": self.turn_id,
                "marks_ms": {k: round((v - t0) * 1000, 2) for k, v in sorted(
                    self.marks.items(), key=lambda kv: kv[1])},
                "spans_ms": {k: round(v, 2) for k, v in self.spans_ms().items()},
                "info": self.info,
            },
            default=str,
        )


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
