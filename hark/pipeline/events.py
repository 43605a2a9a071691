"""What a turn emits, in order, as soon as each thing exists.

The server forwards these to the satellite (control events + reply audio); ``hark demo``
prints them; the benchmark reads the trace in :class:`TurnEnd`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hark.asr.base import Transcript
from hark.audio import AudioChunk
from hark.nlu.base import IntentResult
from hark.trace import Trace


@dataclass
class SpeechStarted:
    t: float


@dataclass
class SpeechEnded:
    t: float  # monotonic time of the end of speech in the audio


@dataclass
class TranscriptEvent:
    transcript: Transcript  # partial (is_final False) or final


@dataclass
class IntentEvent:
    intent: IntentResult | None  # None: no intent matched, the LLM answers


@dataclass
class ReplyText:
    text: str  # a speakable piece of the reply (a clause or sentence)
    source: str  # "intent" | "template" | "cache" | "llm" | "error"


@dataclass
class ReplyAudio:
    chunk: AudioChunk  # reply audio at the TTS voice's rate


@dataclass
class TurnEnd:
    trace: Trace
    transcript: str
    reply: str
    error: str | None = None  # "no speech", or what failed


TurnEvent = (SpeechStarted | SpeechEnded | TranscriptEvent | IntentEvent | ReplyText
             | ReplyAudio | TurnEnd)
