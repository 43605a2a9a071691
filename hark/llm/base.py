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


class LlmEngine(Protocol):
    name: str

    def stream(self, messages: list[ChatMessage], max_tokens: int) -> Iterator[str]:
        """Yield text pieces as the model writes them (blocking generator)."""
