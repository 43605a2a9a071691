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


class LlmResponder(Protocol):
    """What a turn calls for an answer (:class:`hark.llm.service.LlmService`): the reply
    to what a person said, in the context of their session."""

    last_source: str  # who answered the last reply: "llm", "cache", "template", "error"

    def reply_stream(self, user_text: str, session: str = "default", cacheable: bool = True,
                     trace=None) -> Iterator[str]:
        """Yield the reply's text pieces as they are written (blocking generator)."""

    def prefill(self, partial_text: str, session: str = "default") -> None:
        """Read a partial question into the model's cache while the person speaks."""

    def hold(self, on: bool) -> None:
        """Pause the generation in progress between two tokens, or let it go on (a hold
        ends by itself after :data:`HOLD_MAX_S`)."""
