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


class LlmEngine:
    """A model that writes the reply to a chat: what :class:`~hark.llm.service.LlmService`
    calls. Engines subclass it and implement :meth:`stream`; every other method has a
    default that is right for an engine without that ability (a server over HTTP caches
    prefixes itself and cannot be held)."""

    name: str = "llm"
    can_prefill: bool = False  # True: :meth:`prefill` really reads into a cache

    def stream(self, messages: list[ChatMessage], max_tokens: int) -> Iterator[str]:
        """Yield text pieces as the model writes them (blocking generator)."""
        raise NotImplementedError

    def warm_up(self, system_prompt: str | None = None) -> None:
        """Make the first real turn fast (load, evaluate the system prompt). Default: one
        token of a reply to "Hi"."""
        chat = [ChatMessage("system", system_prompt)] if system_prompt else []
        for _ in self.stream([*chat, ChatMessage("user", "Hi")], 1):
            pass

    def hold(self, on: bool) -> None:
        """Pause the generation in progress between two tokens (``on=True``) or let it go
        on; a hold ends by itself after :data:`HOLD_MAX_S`. Default: nothing to hold."""

    def prefill(self, messages: list[ChatMessage]) -> int:
        """Read ``messages`` into the model's cache ahead of :meth:`stream`; returns the
        tokens evaluated. Default: none (see :attr:`can_prefill`)."""
        return 0

    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` takes. Default: an estimate of 4 characters a token."""
        return len(text) // 4 + 1

    def forget(self) -> None:
        """Drop cached state after a failed generation. Default: nothing cached."""


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
