"""Language models: chat in, a stream of text pieces out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from hark.errors import HarkError


class LlmError(HarkError):
    """The model or server failed mid-answer (crashed, unreachable, garbage, too long)."""


@dataclass
class ChatMessage:
    role: str  # "system" | "user" | "assistant"
    content: str


# The longest a generation waits on a hold (see LlmService.hold) before it goes on anyway.
HOLD_MAX_S = 1.0


class LlmEngine(Protocol):
    """Engines may also have ``hold(on: bool)``: pause the generation in progress
    between two tokens (``on=True``) or let it go on; a hold ends by itself after
    :data:`HOLD_MAX_S`."""

    name: str

    def stream(self, messages: list[ChatMessage], max_tokens: int) -> Iterator[str]:
        """Yield text pieces as the model writes them (blocking generator)."""
