"""The LLM stage as the pipeline sees it: a question in, speakable text pieces out.

:class:`LlmService` wraps one or two engines (the configured profile, plus the ``fast``
profile as a load-aware fallback) and adds what a voice assistant needs around them:

- template replies for greetings, thanks, "how are you", "what can you do", "who are
  you": answered at once, without the model;
- a response cache: the same normalized question within ``llm.cache_ttl_s`` returns the
  earlier answer; the caller says when a question must not be cached (time, timers);
  questions that lean on the conversation ("when was he born") or on the moment ("what's
  the weather today") are never cached;
- conversation memory per session, pruned oldest-first to ``llm.history_token_budget``
  tokens and reset after ``llm.idle_reset_s`` of silence;
- spoken style: the stream goes through :class:`hark.tts.cleaner.SpeechCleaner` and stops
  after two sentences, ``llm.max_tokens`` tokens or ``llm.timeout_s`` seconds;
- failures (model crashed, server unreachable, garbage) become a short spoken apology
  and a logged error; the conversation is left as it was, so the next turn works.

After each reply :attr:`LlmService.last_source` says who answered: ``"template"``,
``"cache"``, ``"llm"`` or ``"error"``, and :attr:`LlmService.last_profile` which model.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cachetools import LRUCache

from hark.config import Config
from hark.errors import HarkError, ModelError
from hark.llm.base import ChatMessage, LlmEngine, LlmError
from hark.trace import Trace
from hark.tts.chunker import sentence_ends
from hark.tts.cleaner import SpeechCleaner

log = logging.getLogger(__name__)

APOLOGY = "Sorry, I couldn't answer that right now."
MAX_SENTENCES = 2
MAX_REPLY_CHARS = 400
PRUNE_LOW_WATER = 0.6  # pruning drops history down to this share of the budget  # a spoken reply longer than this is cut whatever the model does

# --- template replies -----------------------------------------------------------------

TEMPLATES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(?:hi|hello|hey|hiya|howdy|good (?:morning|afternoon|evening)|greetings)"
                r"(?: there)?(?: hark)?$"), "Hello! What can I do for you?"),
    (re.compile(r"^(?:thanks?|thank you|thank you (?:very|so) much|thanks a lot|cheers|"
                r"much appreciated)(?: hark)?$"), "You're welcome."),
    (re.compile(r"^(?:how are you(?: doing)?(?: today)?|how's it going|how are things)$"),
     "I'm doing well, thanks for asking. How can I help?"),
    (re.compile(r"^(?:what can you do|what do you do|what are you able to do|"
                r"how can you help(?: me)?|help|what can i ask you)$"),
     ("I can answer questions, tell you the time and date, set timers, and control "
      "your lights and devices. Just ask.")),
    (re.compile(r"^(?:who are you|what are you|what is your name|what's your name|"
                r"who am i talking to)$"),
     "I'm hark, a voice assistant that runs entirely on this machine."),
    (re.compile(r"^(?:good ?bye|bye|see you|good night)(?: hark)?$"), "Goodbye!"),
]

# Words that make a question depend on earlier turns: never cached.
_CONTEXT_WORDS = re.compile(
    r"\b(?:he|she|it|they|him|her|his|hers|its|them|their|theirs|that|those|this|these|"
    r"there|then|again|more|another|else|also|too|previous|last|same)\b")


# Words of questions whose answer changes with time: never cached either.
_VOLATILE_WORDS = re.compile(
    r"\b(?:now|today|tonight|tomorrow|yesterday|current|currently|latest|recent|news|"
    r"time|date|day|weather|forecast|temperature|timer|timers|alarm|reminder|score|"
    r"price|stock|left|remaining|random|joke)\b")


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: the cache and template key."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"[^\w\s']", " ", text)
    return " ".join(text.split())


def template_reply(text: str) -> str | None:
    key = normalize(text).removeprefix("hark ").strip()
    key = re.sub(r"^(?:ok|okay|so|well|um|uh|please)\s+", "", key)
    key = re.sub(r"\s+please$", "", key)
    for pattern, reply in TEMPLATES:
        if pattern.match(key):
            return reply
    return None


# --- conversation memory ----------------------------------------------------------------


@dataclass
class _Turn:
    user: str
    assistant: str
    tokens: int  # both messages, counted with the engine's tokenizer


@dataclass
class _Session:
    turns: list[_Turn] = field(default_factory=list)
    last_active: float = 0.0


@dataclass
class _ProfileLoad:
    """Recent first-token times of a profile, to decide when it is too slow."""

    ttft_ema_s: float | None = None
    skipped: int = 0  # turns handed to the fallback since the last try

    def observe(self, ttft_s: float) -> None:
        a = 0.4
        self.ttft_ema_s = ttft_s if self.ttft_ema_s is None else (
            a * ttft_s + (1 - a) * self.ttft_ema_s)


MAX_SESSIONS = 256  # conversations kept at once


class LlmService:
    """The LLM stage. ``reply_stream`` is a blocking generator: run it on a stage thread
    (``StageExecutor.iterate``). Calls are serialised by a lock."""

    def __init__(self, cfg: Config, engine: LlmEngine, fallback: LlmEngine | None = None,
                 clock: Callable[[], float] = time.monotonic, ttft_budget_s: float = 0.6,
                 retry_every: int = 5):
        self.cfg = cfg
        self.engine = engine
        self.fallback = fallback
        self.clock = clock
        self.ttft_budget_s = ttft_budget_s
        self.retry_every = retry_every  # after this many skipped turns, try the slow one again
        self.system_prompt = cfg.llm.system_prompt
        # one conversation per session, the least recently used dropped past MAX_SESSIONS
        # (a satellite that reconnects a million times does not keep a million histories)
        self._sessions: LRUCache[str, _Session] = LRUCache(maxsize=MAX_SESSIONS)
        self._cache: dict[str, tuple[float, str]] = {}
        self._load: dict[str, _ProfileLoad] = {}
        # a plain Lock (not RLock): a generator abandoned by its consumer may be closed,
        # and so release the lock, from another thread
        self._lock = threading.Lock()
        self.last_source: str = ""
        self.last_profile: str = ""
        self.last_error: str | None = None
        self.last_prompt_tokens: int = 0  # history + question tokens sent last turn

    # --- public API ---------------------------------------------------------------------

    def warm_up(self) -> None:
        """Evaluate and save the system prompt of every engine (once, at start-up)."""
        for engine in filter(None, (self.engine, self.fallback)):
            try:
                engine.warm_up(self.system_prompt)
            except HarkError as exc:
                log.error("LLM warm-up of %s failed: %s", engine.name, exc)

    def hold(self, on: bool) -> None:
        """Pause the answer being written between two tokens, or let it go on (a hold
        ends by itself after ``HOLD_MAX_S``). The pipeline holds it while the first
        phrase is synthesized: on a machine with few cores the two compete, and the words
        after that phrase are not needed before it has been spoken."""
        for engine in filter(None, (self.engine, self.fallback)):
            try:
                engine.hold(on)
            except Exception as exc:  # noqa: BLE001 - a hint only
                log.debug("LLM hold: %s", exc)

    def reply_stream(self, user_text: str, session: str = "default", cacheable: bool = True,
                     trace: Trace | None = None) -> Iterator[str]:
        """Yield the spoken reply to ``user_text`` in cleaned pieces as they are ready.

        ``cacheable=False`` for questions whose answer changes (time, timers, weather).
        After the generator ends, :attr:`last_source` tells who answered. With a
        ``trace``, marks ``llm_start``, ``llm_first_token`` and ``llm_done``."""
        with self._lock:
            if trace:
                trace.mark("llm_start")
            try:
                yield from self._reply(user_text, session, cacheable, trace)
            finally:
                if trace:
                    trace.mark("llm_done")
                    trace.info["llm_source"] = self.last_source
                    if self.last_profile:
                        trace.info["llm_profile"] = self.last_profile

    def prefill(self, partial_text: str, session: str = "default") -> None:
        """Speculative work while the person is still talking: read the conversation and
        the words heard so far into the model's cache, so the reply's first token only
        waits for the last few words. Safe to call repeatedly and to skip; a no-op for
        templates and engines that cannot (``can_prefill``: HTTP servers cache prefixes
        themselves).
        """
        text = partial_text.strip()
        if not self.engine.can_prefill or not text or template_reply(text) is not None:
            return
        if not self._lock.acquire(blocking=False):
            return  # a reply is being generated: never delay it
        try:
            s = self._sessions.get(session)
            if s is not None and s.turns and \
                    self.clock() - s.last_active > self.cfg.llm.idle_reset_s:
                return  # the conversation will restart: the history is not needed
            if s is not None:  # prune now as the turn will, so the prefix stays valid
                self._prune(s, self._count(self.engine, text) + 4)
            messages = [ChatMessage("system", self.system_prompt), *self.history(session),
                        ChatMessage("user", text)]
            try:
                self.engine.prefill(messages)
            except Exception as exc:  # noqa: BLE001 - speculative: never fails a turn
                log.debug("LLM prefill failed: %s", exc)
        finally:
            self._lock.release()

    def reply(self, user_text: str, session: str = "default", cacheable: bool = True) -> str:
        """The whole reply as one string (convenience for the CLI and tests)."""
        return "".join(self.reply_stream(user_text, session, cacheable)).strip()

    def history(self, session: str = "default") -> list[ChatMessage]:
        s = self._sessions.get(session)
        out: list[ChatMessage] = []
        for t in s.turns if s else []:
            out += [ChatMessage("user", t.user), ChatMessage("assistant", t.assistant)]
        return out

    def reset(self, session: str | None = None) -> None:
        """Forget one conversation (or all of them)."""
        if session is None:
            self._sessions.clear()
        else:
            self._sessions.pop(session, None)

    def clear_cache(self) -> None:
        self._cache.clear()

    # --- internals ------------------------------------------------------------------------

    def _session(self, name: str) -> _Session:
        now = self.clock()
        s = self._sessions.get(name)
        if s is None or (s.turns and now - s.last_active > self.cfg.llm.idle_reset_s):
            if s is not None:
                log.info("session %s idle for %.0f s: starting a fresh conversation", name,
                         now - s.last_active)
            s = self._sessions[name] = _Session()
        s.last_active = now
        return s

    def _count(self, engine: LlmEngine, text: str) -> int:
        try:
            return int(engine.count_tokens(text))
        except Exception as exc:  # noqa: BLE001 - fall back to an estimate
            log.debug("token count failed (%s); estimating", exc)
            return LlmEngine.count_tokens(engine, text)

    def _prune(self, s: _Session, question_tokens: int) -> None:
        """Drop the oldest turns once history + question pass the token budget. It drops
        down to ``PRUNE_LOW_WATER`` of the budget, not just under it: every drop changes
        the prompt's start and costs one full re-read of the history, so dropping several
        turns at once keeps the following turns on the cached prefix."""
        budget = self.cfg.llm.history_token_budget
        if sum(t.tokens for t in s.turns) + question_tokens <= budget:
            return
        while s.turns and sum(t.tokens for t in s.turns) + question_tokens > \
                budget * PRUNE_LOW_WATER:
            s.turns.pop(0)

    def _cache_key(self, text: str, cacheable: bool) -> str | None:
        key = normalize(text)
        if not cacheable or not key or _CONTEXT_WORDS.search(key) or \
                _VOLATILE_WORDS.search(key):
            return None
        return key

    def _choose(self) -> tuple[LlmEngine, str]:
        """The configured profile, unless its recent first-token time is over budget and
        a fallback exists; every ``retry_every`` turns the slow one is tried again."""
        engine = self.engine
        name = engine.name or self.cfg.llm.profile
        if self.fallback is None:
            return engine, name
        load = self._load.setdefault(name, _ProfileLoad())
        if load.ttft_ema_s is not None and load.ttft_ema_s > self.ttft_budget_s:
            if load.skipped < self.retry_every:
                load.skipped += 1
                fb_name = self.fallback.name
                log.warning("LLM profile %s: first token %.0f ms is over the %.0f ms budget; "
                            "answering this turn with %s", name, load.ttft_ema_s * 1000,
                            self.ttft_budget_s * 1000, fb_name)
                return self.fallback, fb_name
            load.skipped = 0
        return engine, name

    def _reply(self, user_text: str, session: str, cacheable: bool,
               trace: Trace | None) -> Iterator[str]:
        self.last_error = None
        self.last_profile = ""
        text = user_text.strip()
        s = self._session(session)
        canned = template_reply(text) if text else "Sorry, I didn't catch that."
        if canned is not None:
            self.last_source = "template"
            if trace:
                trace.mark("llm_first_token")
            yield canned
            return
        key = self._cache_key(text, cacheable)
        now = self.clock()
        hit = self._cache.get(key) if key else None
        if hit is not None and now - hit[0] <= self.cfg.llm.cache_ttl_s:
            self.last_source = "cache"
            if trace:
                trace.mark("llm_first_token")
            yield hit[1]
            self._remember(s, self.engine, text, hit[1])
            return
        if hit is not None:
            del self._cache[key]

        engine, profile = self._choose()
        self.last_profile = profile
        self.last_source = "llm"
        q_tokens = self._count(engine, text)
        self._prune(s, q_tokens)
        messages = [ChatMessage("system", self.system_prompt), *self.history(session),
                    ChatMessage("user", text)]
        self.last_prompt_tokens = sum(t.tokens for t in s.turns) + q_tokens
        raw: list[str] = []
        spoken: list[str] = []
        try:
            for piece in self._generate(engine, profile, messages, trace):
                raw.append(piece[0])
                if piece[1]:
                    spoken.append(piece[1])
                    yield piece[1]
        except Exception as exc:  # noqa: BLE001 - every failure becomes an apology
            self.last_source = "error"
            self.last_error = str(exc)
            log.error("LLM (%s) failed: %s", profile, exc)
            try:
                engine.forget()  # a crashed eval may leave bad KV
            except Exception as forget_exc:  # noqa: BLE001
                log.debug("could not reset the KV cache: %s", forget_exc)
            yield (" " if spoken else "") + APOLOGY
            return
        answer = "".join(spoken).strip()
        if not answer:
            self.last_source = "error"
            self.last_error = "the model returned no speakable text"
            log.error("LLM (%s) returned no speakable text: %r", profile, "".join(raw))
            yield APOLOGY
            return
        self._remember(s, engine, text, answer)
        if key:
            self._cache[key] = (self.clock(), answer)

    def _generate(self, engine: LlmEngine, profile: str, messages: list[ChatMessage],
                  trace: Trace | None) -> Iterator[tuple[str, str]]:
        """(raw piece, cleaned piece) pairs, stopped after two sentences, the token limit,
        ``MAX_REPLY_CHARS`` or ``llm.timeout_s``."""
        cleaner = SpeechCleaner()
        said = ""
        t0 = time.monotonic()
        first = True
        stream = engine.stream(messages, self.cfg.llm.max_tokens)
        try:
            for raw in stream:
                if first:
                    first = False
                    self._load.setdefault(profile, _ProfileLoad()).observe(
                        time.monotonic() - t0)
                    if trace:
                        trace.mark("llm_first_token")
                clean = cleaner.push(raw)
                said += clean
                ends = sentence_ends(said + " ")
                if len(ends) >= MAX_SENTENCES:
                    keep = ends[MAX_SENTENCES - 1] - (len(said) - len(clean))
                    yield raw, clean[: max(0, keep)]
                    return
                yield raw, clean
                if len(said) > MAX_REPLY_CHARS:
                    log.warning("LLM reply passed %d characters: cut", MAX_REPLY_CHARS)
                    yield "", cleaner.flush()  # the words held back so far
                    return
                if time.monotonic() - t0 > self.cfg.llm.timeout_s:
                    log.warning("LLM reply took over %.0f s: cut", self.cfg.llm.timeout_s)
                    yield "", cleaner.flush()
                    return
            rest = cleaner.flush()
            ends = sentence_ends(said + rest + " ")
            if len(ends) >= MAX_SENTENCES:
                rest = rest[: max(0, ends[MAX_SENTENCES - 1] - len(said))]
            yield "", rest
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()

    def _remember(self, s: _Session, engine: LlmEngine, user: str, answer: str) -> None:
        tokens = self._count(engine, user) + self._count(engine, answer)
        s.turns.append(_Turn(user, answer, tokens))
        s.last_active = self.clock()


class RetryingEngine(LlmEngine):
    """Stands in for a model that could not be loaded: every turn tries to load it again
    (at most every ``retry_s`` seconds) and, while it still fails, raises the load error
    so the service apologises. Once the file is fixed (``hark models pull``) the next
    turn works without a restart. Once loaded, every call goes to the real engine."""

    def __init__(self, factory: Callable[[], LlmEngine], error: Exception, name: str,
                 retry_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.factory = factory
        self.error = error
        self.name = name
        self.retry_s = retry_s
        self.clock = clock
        self.engine: LlmEngine | None = None
        self._last_try = clock()

    def _get(self) -> LlmEngine:
        if self.engine is None and self.clock() - self._last_try >= self.retry_s:
            self._last_try = self.clock()
            try:
                engine = self.factory()
                engine.warm_up()
                self.engine = engine
                log.info("LLM %s loaded on retry", self.name)
            except HarkError as exc:
                self.error = exc
        if self.engine is None:
            raise LlmError(f"the language model is not available: {self.error}")
        return self.engine

    @property
    def can_prefill(self) -> bool:  # type: ignore[override]
        return self.engine is not None and self.engine.can_prefill

    def warm_up(self, system_prompt: str | None = None) -> None:
        if self.engine is not None:
            self.engine.warm_up(system_prompt)

    def stream(self, messages: list[ChatMessage], max_tokens: int) -> Iterator[str]:
        yield from self._get().stream(messages, max_tokens)

    def hold(self, on: bool) -> None:
        if self.engine is not None:
            self.engine.hold(on)

    def prefill(self, messages: list[ChatMessage]) -> int:
        return self.engine.prefill(messages) if self.engine is not None else 0

    def count_tokens(self, text: str) -> int:
        if self.engine is None:
            return super().count_tokens(text)
        return self.engine.count_tokens(text)

    def forget(self) -> None:
        if self.engine is not None:
            self.engine.forget()


def _engine_builder(isolation: str) -> Callable[[Config, str], LlmEngine]:
    """``engine_for_profile`` of ``llm.isolation``: in this process ("thread", and "auto"
    outside ``hark serve``) or in a supervised child process ("process")."""
    if isolation in ("thread", "auto"):
        from hark.llm.llama import engine_for_profile

        return engine_for_profile
    if isolation == "process":
        from hark.llm.worker import worker_for_profile

        return worker_for_profile
    from hark.errors import ConfigError

    raise ConfigError(f"unknown llm.isolation '{isolation}'",
                      fix='use "process" (crash-safe child process), "thread" or "auto"')


def load_llm(cfg: Config, warm: bool = True, strict: bool = True) -> LlmService:
    """Build the LLM stage from ``cfg.llm``: the configured backend and profile, plus the
    ``fast`` profile as load-aware fallback when another local profile is chosen.
    ``llm.isolation = "process"`` runs each llama.cpp model in a supervised child
    process (:mod:`hark.llm.worker`) that is restarted when it crashes.

    ``strict`` (the default): a model that cannot be loaded raises :class:`ModelError`
    naming the fix, so start-up fails clearly. ``strict=False``: the error is logged and
    the stage answers LLM turns with a spoken apology, retrying the load each turn, while
    everything else (intents, timers) keeps working."""
    c = cfg.llm
    fallback = None
    if c.backend == "openai":
        from hark.llm.openai_http import OpenAiEngine

        engine: LlmEngine = OpenAiEngine.from_config(cfg)
    elif c.backend == "llama_cpp":
        engine_for_profile = _engine_builder(c.isolation)
        try:
            engine = engine_for_profile(cfg, c.profile)
        except ModelError as exc:
            if strict:
                raise
            log.error("LLM profile %s could not be loaded: %s", c.profile, exc)
            engine = RetryingEngine(lambda: engine_for_profile(cfg, c.profile), exc,
                                    c.profile)
        if c.profile != "fast" and "fast" in c.profiles and c.profile != "tiny":
            try:
                fallback = engine_for_profile(cfg, "fast")
            except ModelError as exc:
                log.warning("no fast fallback for the %s profile: %s", c.profile, exc)
    else:
        from hark.errors import ConfigError

        raise ConfigError(f"unknown llm.backend '{c.backend}'",
                          fix='use "llama_cpp" (local GGUF) or "openai" (HTTP server)')
    # first-token budget of the chosen profile before a turn falls back to ``fast``;
    # ``llm.ttft_budget_ms`` when the config has it, else 600 ms
    budget_ms = float(getattr(c, "ttft_budget_ms", 600.0))
    service = LlmService(cfg, engine, fallback, ttft_budget_s=budget_ms / 1000.0)
    if warm:
        service.warm_up()
    return service
