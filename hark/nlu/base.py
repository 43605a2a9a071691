"""Intents: what the person asked for, and what answering it says."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class IntentResult:
    name: str  # e.g. "HassGetCurrentTime", "HassStartTimer", "orderDrink"
    slots: dict[str, Any] = field(default_factory=dict)
    text: str = ""  # the text that matched
    source: str = "hassil"  # "hassil" | "cache" | "fuzzy" | "grammar" | "embedding" | ...
    domain: str = "homeassistant"
    confidence: float = 1.0


@dataclass
class Reply:
    text: str
    intent: IntentResult | None = None
    cacheable: bool = True  # False for answers that change (time, timers)
    end_conversation: bool = False


class IntentRecognizer(Protocol):
    def recognize(self, text: str) -> IntentResult | None:
        """The intent of ``text``, or None when it is outside every known sentence."""


class IntentHandler(Protocol):
    def can_handle(self, intent: IntentResult) -> bool: ...

    def handle(self, intent: IntentResult) -> Reply: ...
