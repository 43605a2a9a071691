"""An LLM behind any OpenAI-compatible HTTP server (streaming chat completions).

Works with llama.cpp's ``llama-server``, llama-cpp-python's ``python -m llama_cpp.server``,
vLLM, Ollama (``http://host:11434/v1``) and hosted services of that kind: the place to
run a bigger model on a GPU box while hark's audio stays local. Config: ``llm.backend =
"openai"``, ``llm.openai_url`` (the ``.../v1`` base), ``llm.openai_model``,
``llm.openai_api_key`` (sent as a Bearer token when set), ``llm.timeout_s``.

Server-sent events are read line by line with the standard library (no extra client
dependency); each ``data:`` line's ``choices[0].delta.content`` is yielded the moment it
arrives. Unreachable servers, HTTP errors and answers that are not chat-completion
events raise :class:`hark.llm.base.LlmError` naming the URL.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from hark.config import Config
from hark.llm.base import ChatMessage, LlmEngine, LlmError

log = logging.getLogger(__name__)


@dataclass
class HttpStats:
    first_token_s: float | None = None
    total_s: float = 0.0
    pieces: int = 0
    prompt_tokens: int | None = None  # from the server's usage report, when it sends one
    completion_tokens: int | None = None


class OpenAiEngine(LlmEngine):
    """Streaming chat completions from an OpenAI-compatible server."""

    def __init__(self, base_url: str, model: str = "default", api_key: str = "",
                 timeout_s: float = 20.0, temperature: float = 0.2, name: str = "openai"):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.temperature = temperature
        self.name = name
        self.last_stats = HttpStats()

    @classmethod
    def from_config(cls, cfg: Config) -> OpenAiEngine:
        c = cfg.llm
        return cls(c.openai_url, c.openai_model, c.openai_api_key, c.timeout_s,
                   c.temperature, name=f"openai:{c.openai_model}")

    def warm_up(self, system_prompt: str | None = None) -> None:
        """One tiny request so the server has loaded the model and cached the system
        prompt's prefix before the first real turn."""
        messages = [ChatMessage("system", system_prompt or ""), ChatMessage("user", "Hi")]
        for _ in self.stream(messages, 1):
            pass

    def stream(self, messages: list[ChatMessage], max_tokens: int) -> Iterator[str]:
        t0 = time.monotonic()
        stats = self.last_stats = HttpStats()
        body = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages
                         if m.content or m.role != "system"],
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "stream": True,
        }
        url = f"{self.base_url}/chat/completions"
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"),
                                     headers=headers, method="POST")
        try:
            resp = urllib.request.urlopen(req, timeout=self.timeout_s)
        except urllib.error.HTTPError as exc:
            detail = exc.read(300).decode("utf-8", "replace").strip()
            raise LlmError(f"LLM server {url} answered HTTP {exc.code}: {detail}",
                           fix="check llm.openai_model and llm.openai_api_key") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LlmError(f"cannot reach the LLM server at {url}: {reason}",
                           fix="start the server, or set llm.openai_url (or use "
                           "llm.backend = \"llama_cpp\")") from exc
        with resp:
            ctype = resp.headers.get("Content-Type", "")
            try:
                if "text/event-stream" in ctype:
                    yield from self._read_events(resp, url, stats, t0)
                else:  # a server that ignored "stream": one JSON answer
                    yield from self._read_whole(resp, url, stats, t0)
            except TimeoutError as exc:
                raise LlmError(f"LLM server {url} stopped answering for {self.timeout_s:.0f} s",
                               fix="check the server's load, or raise llm.timeout_s") from exc
            except (OSError, ValueError) as exc:
                if isinstance(exc, LlmError):
                    raise
                raise LlmError(f"connection to the LLM server {url} broke: {exc}") from exc
        stats.total_s = time.monotonic() - t0

    # --- internals ------------------------------------------------------------------------

    def _piece(self, stats: HttpStats, t0: float, text: str) -> str:
        if stats.first_token_s is None:
            stats.first_token_s = time.monotonic() - t0
        stats.pieces += 1
        return text

    def _read_events(self, resp, url: str, stats: HttpStats, t0: float) -> Iterator[str]:
        saw_event = False
        for raw in resp:
            line = raw.decode("utf-8", "replace").strip()
            if not line or line.startswith(":"):
                continue  # keep-alive or comment
            if not line.startswith("data:"):
                if line.startswith(("event:", "id:", "retry:")):
                    continue
                raise LlmError(f"LLM server {url} sent something that is not a server-sent "
                               f"event: {line[:120]!r}")
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                event = json.loads(data)
                if "error" in event:
                    raise LlmError(f"LLM server {url} reported an error: {event['error']}")
                choices = event.get("choices")
                if not isinstance(choices, list):
                    raise KeyError("choices")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise LlmError(f"LLM server {url} sent a malformed event: {data[:120]!r}") \
                    from exc
            saw_event = True
            usage = event.get("usage") or {}
            stats.prompt_tokens = usage.get("prompt_tokens", stats.prompt_tokens)
            stats.completion_tokens = usage.get("completion_tokens", stats.completion_tokens)
            if not choices:
                continue
            delta = choices[0].get("delta") or {}
            text = delta.get("content") or choices[0].get("text") or ""
            if text:
                yield self._piece(stats, t0, text)
        if not saw_event:
            raise LlmError(f"LLM server {url} closed the stream without an answer")

    def _read_whole(self, resp, url: str, stats: HttpStats, t0: float) -> Iterator[str]:
        raw = resp.read(1 << 20)
        try:
            answer = json.loads(raw)
            text = answer["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not text")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LlmError(f"LLM server {url} did not answer with a chat completion: "
                           f"{raw[:120]!r}",
                           fix="check that llm.openai_url points at an OpenAI-compatible "
                           "'/v1' endpoint") from exc
        if text:
            yield self._piece(stats, t0, text)
