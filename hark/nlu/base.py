"""Intents: what the person asked for, and what answering it says."""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np


@dataclass
class IntentResult:
    name: str  # e.g. "HassGetCurrentTime", "HassStartTimer", "orderDrink"
    slots: dict[str, Any] = field(default_factory=dict)
    text: str = ""  # the text that matched
    source: str = "hassil"  # "hassil" | "cache" | "fuzzy" | "grammar" | "embedding" | ...
    domain: str = "homeassistant"
    confidence: float = 1.0
    # the response key of the Home Assistant template block that matched ("one_yesno",
    # "which", ...): which of Home Assistant's answers fits the question; "" when unknown
    response: str = ""


@dataclass
class Reply:
    text: str
    intent: IntentResult | None = None
    cacheable: bool = True  # False for answers that change (time, timers)
    end_conversation: bool = False


class IntentRecognizer(Protocol):
    def recognize(self, text: str, context: dict[str, Any] | None = None,
                  paraphrase: bool = True) -> IntentResult | None:
        """The intent of ``text``, or None when it is outside every known sentence.
        ``context``: the speaker's situation (e.g. its area); ``paraphrase=False``: exact
        templates only (no paraphrase fallback), for deciding on half a sentence."""


class IntentHandler(Protocol):
    def can_handle(self, intent: IntentResult) -> bool: ...

    def handle(self, intent: IntentResult) -> Reply: ...


class TurnHandlers(Protocol):
    """What a turn calls to answer an intent (:class:`hark.nlu.handlers.IntentHandlers`)."""

    def handle(self, intent: IntentResult, session: str = "default") -> Reply:
        """Carry out ``intent`` for ``session`` and say what was done."""

    def remember(self, session: str, reply: Reply | str) -> None:
        """The last thing said to ``session`` (for "repeat that")."""

    def on_timer(self, callback: Callable[[Any], None]) -> None:
        """``callback(timer)`` (on a timer thread) when one of its timers finishes."""

    def close(self) -> None: ...


class GrammarHeard(Protocol):
    text: str  # the sentence the grammar recognizer heard


class SpeechIntentRecognizer(Protocol):
    """Speech straight to intent for one turn at a time
    (:class:`hark.nlu.speech_intent.SpeechIntentRecognizer`): fed audio as it comes, it
    answers with a known command or None."""

    last: GrammarHeard | None  # what finish() heard
    peeked: GrammarHeard | None  # what peek() heard

    def start(self) -> None:
        """Begin a new utterance."""

    def feed(self, samples: np.ndarray) -> None:
        """Decode int16 16 kHz audio as it arrives."""

    def peek(self) -> IntentResult | None:
        """The command if the speech ended now (checked like a final result)."""

    def finish(self) -> IntentResult | None:
        """The command heard in the whole utterance, or None."""
