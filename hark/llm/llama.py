"""The local LLM backend: llama.cpp through llama-cpp-python, tuned for first-token time.

What makes the first token fast here:

- The chat is rendered with the model's own chat template into one token list, and the
  system prompt comes first and never changes, so consecutive turns share a long token
  prefix. llama-cpp-python keeps the KV cache of the last evaluation and only evaluates
  the tokens after the longest common prefix: a follow-up question costs its own tokens,
  not the whole conversation.
- The system prefix's KV state is saved once (``save_state``) at warm-up and restored
  (``load_state``) whenever something else evicted it, so even a conversation that
  shares nothing with the last one starts from a ready system prompt.
- Every call records how many prompt tokens were really evaluated
  (:attr:`LlamaCppEngine.last_stats`), which is how tests prove the reuse.

Settings (``[llm]`` in hark.toml): ``n_threads`` (2 on the 2-core default box: one per
core; llama.cpp's threads spin-wait for each other, so more threads than *free* cores
makes it many times slower, not faster: on a box busy with other work, or to leave a
core to Piper while the reply streams, use 1 for generation and keep 2 for the prompt
via ``n_threads_batch`` when the config offers it),
``n_batch`` (prompt tokens per evaluation step; a turn's new prompt is usually under 50
tokens, so 256 covers it in one step), ``n_ctx`` (2048 holds the system prompt, the
pruned history and the reply with room to spare).

GPU (a machine with an RTX-class card): build llama-cpp-python with CUDA,
``CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir
llama-cpp-python==0.3.36``, then set ``n_gpu_layers = -1`` (every layer on the GPU; a
1.5B Q4 model needs about 1.5 GB of VRAM, a 7B Q4 about 5 GB) and ``flash_attn = true``
(less memory and faster attention on Ampere or newer). With the whole model on the GPU,
``n_threads`` only drives sampling: 2 to 4 is plenty. Bigger models than fit one box are
served by vLLM or llama.cpp's server and reached through ``backend = "openai"``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hark.config import Config
from hark.errors import ModelError
from hark.llm.base import HOLD_MAX_S, ChatMessage, LlmEngine, LlmError

log = logging.getLogger(__name__)

_SENTINEL = "\x00HARK-USER\x00"


def _defuse(text: str) -> str:
    """Keep message text from forming control tokens ("<|im_end|>") when the prompt is
    tokenized with special tokens on: what a person says cannot end their turn early."""
    return text.replace("<|", "<\u200b|").replace("|>", "|\u200b>")


@dataclass
class GenerationStats:
    """What one :meth:`LlamaCppEngine.stream` call did (filled in as it runs)."""

    prompt_tokens: int = 0  # length of the whole rendered prompt
    evaluated_tokens: int = 0  # prompt tokens actually run through the model
    reused_tokens: int = 0  # prompt tokens served from the KV cache
    restored_prefix: bool = False  # the saved system-prefix state was loaded first
    generated_tokens: int = 0
    first_token_s: float | None = None  # seconds from the call to the first text piece
    total_s: float = 0.0
    stopped_by_limit: bool = False  # hit max_tokens


class _ChatMlTemplate:
    """Fallback when a GGUF has no chat template: ChatML (Qwen, SmolLM and many more)."""

    def __call__(self, messages: list[dict[str, str]]) -> str:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + "<|im_start|>assistant\n"


class LlamaCppEngine(LlmEngine):
    """A GGUF chat model in one ``llama_cpp.Llama``. Not re-entrant: calls are serialised
    with a lock (the pipeline runs it on one stage thread anyway)."""

    can_prefill = True

    def __init__(self, model_path: str, *, n_ctx: int = 2048, n_threads: int = 2,
                 n_batch: int = 256, n_gpu_layers: int = 0, flash_attn: bool = False,
                 temperature: float = 0.2, system_prompt: str = "", name: str = "",
                 n_threads_batch: int | None = None):
        path = Path(model_path)
        if not path.is_file():
            raise ModelError(f"LLM model file {path} does not exist",
                             fix="run 'hark models pull' (or set llm.profiles to a GGUF path)")
        with open(path, "rb") as fh:
            magic = fh.read(4)
        if magic != b"GGUF":
            raise ModelError(f"{path} is not a GGUF model file (corrupt or wrong format)",
                             fix="delete it and run 'hark models pull', or point llm.profiles "
                             "at a .gguf file")
        try:
            import llama_cpp
        except ImportError as exc:  # pragma: no cover - installation problem
            raise ModelError("llama-cpp-python is not installed",
                             fix="run 'make setup' (pip install llama-cpp-python==0.3.36)") from exc
        t0 = time.monotonic()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path), n_ctx=n_ctx, n_threads=n_threads,
                n_threads_batch=n_threads_batch or n_threads, n_batch=n_batch,
                n_gpu_layers=n_gpu_layers, flash_attn=flash_attn, verbose=False,
            )
        except Exception as exc:  # llama.cpp says ValueError("Failed to load model ...")
            raise ModelError(f"could not load LLM model {path}: {exc}",
                             fix="the file is probably damaged: delete it and run "
                             "'hark models pull' (or 'hark models verify')") from exc
        self.load_s = time.monotonic() - t0
        self.name = name or path.stem
        self.path = str(path)
        self.temperature = temperature
        self.n_ctx = n_ctx
        self.system_prompt = system_prompt
        self._lock = threading.Lock()
        self._go = threading.Event()  # cleared by hold(True): generation waits
        self._go.set()
        self._template = self._make_template()
        self._eval_sizes: list[int] = []
        self._orig_eval = self._llm.eval
        self._llm.eval = self._counting_eval  # type: ignore[method-assign]
        self._prefix_tokens: list[int] = []
        self._prefix_state: Any = None
        self.last_stats = GenerationStats()
        self.total_evaluated_tokens = 0  # over the engine's life

    # --- public ---------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def render(self, messages: list[ChatMessage]) -> list[int]:
        """The chat as the token list the model sees (generation prompt appended)."""
        text = self._template([{"role": m.role, "content": _defuse(m.content)}
                               for m in messages])
        return self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def warm_up(self, system_prompt: str | None = None) -> None:
        """Evaluate the system prompt and keep its KV state for every later turn."""
        if system_prompt is not None:
            self.system_prompt = system_prompt
        with self._lock:
            self._prefix_tokens = self._system_prefix_tokens()
            self._llm.reset()
            self._eval_sizes.clear()
            self._orig_eval(self._prefix_tokens)
            self._llm.n_tokens = len(self._prefix_tokens)
            self._prefix_state = self._llm.save_state()
            log.info("%s: system prefix of %d tokens evaluated and saved", self.name,
                     len(self._prefix_tokens))

    def prefill(self, messages: list[ChatMessage]) -> int:
        """Evaluate the prompt of a turn that is not finished yet (the last message is
        the partial transcript of a user still speaking) so that the final call only
        reads the words that came after. Returns the number of tokens evaluated."""
        if not messages or messages[-1].role != "user":
            return 0
        *head, last = messages
        rendered = self._template(
            [{"role": m.role, "content": _defuse(m.content)} for m in head]
            + [{"role": "user", "content": _defuse(last.content) + _SENTINEL}])
        text = rendered.split(_SENTINEL, 1)[0]
        tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        tokens = tokens[:-2]  # the last word may still grow and tokenize differently
        with self._lock:
            prefix = self._prefix_tokens
            if (self._prefix_state is not None and tokens[: len(prefix)] == prefix
                    and self._cached_prefix_len(tokens) < len(prefix)):
                self._llm.load_state(self._prefix_state)
            common = self._cached_prefix_len(tokens)
            todo = tokens[common:]
            if todo and len(tokens) < self.n_ctx // 2:
                self._llm.n_tokens = common
                self._orig_eval(todo)
            return len(todo)

    def forget(self) -> None:
        """Drop the KV cache (the next call starts cold, apart from the saved prefix)."""
        with self._lock:
            self._llm.reset()

    def keep_prefix_only(self) -> None:
        """Drop everything after the system prefix from the KV cache, as if the last turn
        had been another conversation (benchmarks: no turn reuses an earlier one's words)."""
        with self._lock:
            self._llm.n_tokens = min(self._llm.n_tokens,
                                     self._cached_prefix_len(self._prefix_tokens))

    def forget_all(self) -> None:
        """Drop the KV cache and the saved prefix: the next call is fully cold."""
        with self._lock:
            self._llm.reset()
            self._prefix_state = None

    def stream(self, messages: list[ChatMessage], max_tokens: int,
               ignore_eos: bool = False) -> Iterator[str]:
        """Yield text pieces as the model writes them; stops at ``max_tokens`` tokens.
        ``ignore_eos`` bans the end-of-turn tokens (fixed-length runs for benchmarks, and
        a model that never stops, for tests)."""
        with self._lock:
            yield from self._stream_locked(messages, max_tokens, ignore_eos)

    def hold(self, on: bool) -> None:
        """Pause the generation in progress between two tokens (at most HOLD_MAX_S)."""
        if on:
            self._go.clear()
        else:
            self._go.set()

    def close(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()

    # --- internals --------------------------------------------------------------------

    def _counting_eval(self, tokens) -> None:
        self._eval_sizes.append(len(tokens))
        self._orig_eval(tokens)

    def _make_template(self):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        meta = self._llm.metadata
        template = meta.get("tokenizer.chat_template")
        if not template:
            return _ChatMlTemplate()
        model = self._llm._model

        def text_of(tok: int) -> str:
            return model.token_get_text(tok) if tok >= 0 else ""

        formatter = Jinja2ChatFormatter(template=template, eos_token=text_of(
            self._llm.token_eos()), bos_token=text_of(self._llm.token_bos()))
        return lambda messages: formatter(messages=messages).prompt

    def _system_prefix_tokens(self) -> list[int]:
        """Tokens shared by every conversation: the system turn and the user turn's
        opening, cut where the first user message would start."""
        full = self.render([ChatMessage("system", self.system_prompt),
                            ChatMessage("user", _SENTINEL)])
        text = self._template([{"role": "system", "content": self.system_prompt},
                               {"role": "user", "content": _SENTINEL}])
        head = text.split(_SENTINEL, 1)[0]
        tokens = self._llm.tokenize(head.encode("utf-8"), add_bos=True, special=True)
        # keep only what the full rendering really starts with
        n = 0
        for a, b in zip(tokens, full):
            if a != b:
                break
            n += 1
        return tokens[:n]

    def _cached_prefix_len(self, tokens: list[int]) -> int:
        ids = self._llm.input_ids[: self._llm.n_tokens]
        n = 0
        for a, b in zip(ids, tokens):
            if a != b:
                break
            n += 1
        return n

    def _end_tokens(self) -> list[int]:
        ends = {self._llm.token_eos()}
        for text in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"):
            toks = self._llm.tokenize(text.encode(), add_bos=False, special=True)
            if len(toks) == 1:
                ends.add(toks[0])
        return [t for t in ends if t >= 0]

    def _stream_locked(self, messages: list[ChatMessage], max_tokens: int,
                       ignore_eos: bool = False) -> Iterator[str]:
        t0 = time.monotonic()
        self._go.set()  # a new answer starts unheld, whatever a caller forgot
        stats = self.last_stats = GenerationStats()
        tokens = self.render(messages)
        stats.prompt_tokens = len(tokens)
        if len(tokens) + max_tokens > self.n_ctx:
            raise LlmError(f"prompt of {len(tokens)} tokens + {max_tokens} to generate does "
                           f"not fit the context of {self.n_ctx}",
                           fix="raise llm.n_ctx or lower llm.history_token_budget")
        prefix = self._prefix_tokens
        if (self._prefix_state is not None and tokens[: len(prefix)] == prefix
                and self._cached_prefix_len(tokens) < len(prefix)):
            self._llm.load_state(self._prefix_state)
            stats.restored_prefix = True
        self._eval_sizes.clear()
        try:
            chunks = self._llm.create_completion(
                prompt=tokens, max_tokens=max_tokens, temperature=self.temperature,
                top_k=40, top_p=0.95, repeat_penalty=1.1, stream=True,
                logit_bias={t: -1e9 for t in self._end_tokens()} if ignore_eos else None,
            )
            for chunk in chunks:
                if stats.evaluated_tokens == 0 and self._eval_sizes:
                    stats.evaluated_tokens = self._eval_sizes[0]
                    stats.reused_tokens = stats.prompt_tokens - stats.evaluated_tokens
                choice = chunk["choices"][0]
                text = choice.get("text") or ""
                if choice.get("finish_reason") == "length":
                    stats.stopped_by_limit = True
                if text:
                    if stats.first_token_s is None:
                        stats.first_token_s = time.monotonic() - t0
                    yield text
                if not self._go.is_set():  # held: the next token waits
                    self._go.wait(HOLD_MAX_S)
        except LlmError:
            raise
        except Exception as exc:
            raise LlmError(f"{self.name}: generation failed: {exc}") from exc
        finally:
            if stats.evaluated_tokens == 0 and self._eval_sizes:
                stats.evaluated_tokens = self._eval_sizes[0]
                stats.reused_tokens = stats.prompt_tokens - stats.evaluated_tokens
            # one eval for the prompt, then one per sampled token but the last
            stats.generated_tokens = len(self._eval_sizes)
            self.total_evaluated_tokens += stats.evaluated_tokens
            stats.total_s = time.monotonic() - t0


def engine_for_profile(cfg: Config, profile: str) -> LlamaCppEngine:
    """Load the GGUF that ``cfg.llm.profiles[profile]`` names, with ``cfg.llm`` settings."""
    from hark.models.store import resolve

    profiles = cfg.llm.profiles
    if profile not in profiles:
        from hark.errors import ConfigError

        raise ConfigError(f"unknown LLM profile '{profile}'",
                          fix=f"use one of: {', '.join(profiles)} (llm.profiles in the config)")
    path = resolve(profiles[profile], cfg.models_dir, kind="llm")
    c = cfg.llm
    return LlamaCppEngine(path, n_ctx=c.n_ctx, n_threads=c.n_threads, n_batch=c.n_batch,
                          n_gpu_layers=c.n_gpu_layers, flash_attn=c.flash_attn,
                          temperature=c.temperature, system_prompt=c.system_prompt,
                          name=profile,
                          # prompt threads apart from generation threads, when configured
                          n_threads_batch=int(getattr(c, "n_threads_batch", 0)) or None)
