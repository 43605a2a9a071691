"""The assistant: every stage loaded once, and turns run through them.

Two ways to run a turn, both in this one class so the benchmark compares them in the same
process on the same engines:

``streaming`` (hark's way)
    VAD runs on every frame; Whisper re-decodes the growing utterance while the person
    speaks; every partial transcript goes through the intent matcher, which moves the
    end-of-turn point (a complete command ends the turn after a short pause, an unfinished
    phrase waits longer). At the first short pause a *speculative* response starts: final
    decode, intent, LLM tokens into the chunker, TTS of the first clause. If the person
    goes on speaking it is thrown away; when the turn ends it is already under way, and
    its audio is released the moment the turn is committed. Intent handlers (which act
    on the world) only run once the turn is committed.

``baseline`` (a typical assistant)
    A fixed 700 ms silence ends the turn, then whole-utterance ASR, intent, the complete
    LLM reply, the complete TTS, then playback.

Both yield :mod:`hark.pipeline.events` and mark the turn's :class:`~hark.trace.Trace`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from cachetools import LRUCache

from hark.aio import StageExecutor
from hark.asr.base import Transcript
from hark.asr.streaming import StreamingTranscriber
from hark.audio import AudioChunk
from hark.config import Config
from hark.nlu.base import IntentResult, Reply
from hark.nlu.guard import Confirmations, Verdict, review
from hark.nlu.home import Home
from hark.asr.base import AsrEngine, AsrResult
from hark.llm.base import LlmResponder
from hark.nlu.base import IntentRecognizer, SpeechIntentRecognizer, TurnHandlers
from hark.pipeline.policy import (
    Action,
    BeginGrammar,
    CancelDecode,
    CancelResponse,
    Chunk,
    Commit,
    DecodeDone,
    FinishGrammar,
    GrammarFinal,
    GrammarGuess,
    HeardCommand,
    MatchTemplates,
    Pause,
    PeekGrammar,
    Prefill,
    Resume,
    SetEndOfTurn,
    ShowPartial,
    SpeechEnd,
    SpeechStart,
    StartDecode,
    StartResponse,
    TemplatesMatched,
    TurnPolicy,
    looks_complete,
    looks_unfinished,
)
from hark.pipeline.events import (
    IntentEvent,
    ReplyAudio,
    ReplyText,
    SpeechEnded,
    SpeechStarted,
    TranscriptEvent,
    TurnEnd,
    TurnEvent,
)
from hark.trace import Trace
from hark.tts.base import TtsEngine, trim_silence
from hark.vad.base import TurnEndpointer

__all__ = ["Assistant", "PURE_INTENTS", "looks_complete", "looks_unfinished"]

log = logging.getLogger(__name__)

NO_SPEECH = "no speech"
SAY_AGAIN = "Sorry, could you say that again?"
APOLOGY = "Sorry, something went wrong on my side."
# silence kept before a spoken phrase, and after one cut mid-sentence (Piper puts ~60 ms
# before and 100-250 ms after every phrase)
TTS_LEAD_MS = 15
TTS_TAIL_MS = 40

Notify = Callable[[str, str], Awaitable[None] | None]

# Intents whose handlers only read (no action on the world): safe to answer speculatively,
# before the turn is committed, so their reply audio is ready the moment the turn ends.
PURE_INTENTS = frozenset({
    "HassGetCurrentTime", "HassGetCurrentDate", "HassTimerStatus", "HassGetWeather",
    "HarkRepeat",
})


class _TtsCache:
    """LRU of synthesized phrases: confirmations and other frequent replies cost nothing."""

    def __init__(self, size: int = 256):
        self.size = size
        self._d: LRUCache[str, list[np.ndarray]] = LRUCache(size)

    def get(self, text: str) -> list[np.ndarray] | None:
        return self._d.get(text.strip().lower())

    def put(self, text: str, chunks: list[np.ndarray]) -> None:
        self._d[text.strip().lower()] = chunks


@dataclass
class _Response:
    """One (possibly speculative) response in flight; events queue up until commit."""

    task: asyncio.Task | None = None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    commit: asyncio.Event = field(default_factory=asyncio.Event)
    # the response's own marks: merged into the turn's trace only if it is committed, so
    # a discarded speculative response leaves no trace behind
    trace: Trace = field(default_factory=Trace)
    intent_matched: bool = False
    transcript: str | None = None  # known once its speech is transcribed


_END = object()


class _GrammarFeed:
    """One turn's use of the constrained recognizer: audio is fed on the grammar thread
    as it arrives, so at the end of speech only the last frames remain to be decoded."""

    def __init__(self, assistant: Assistant):
        self.a = assistant
        self.rec: SpeechIntentRecognizer | None = None
        self.failed = False

    async def begin(self, audio: np.ndarray) -> None:
        pool = self.a._grammar_pool
        self.rec = pool.pop() if pool else await self.a.grammar_exec.run(self.a._grammar_factory)
        self._submit(self.rec.start)
        self.feed(audio)

    def _submit(self, fn, *args) -> None:
        fut = asyncio.ensure_future(self.a.grammar_exec.run(fn, *args))
        fut.add_done_callback(self._check)

    def _check(self, fut: asyncio.Future) -> None:
        if not fut.cancelled() and fut.exception() is not None:
            if not self.failed:
                log.warning("speech-intent recognizer failed: %s", fut.exception())
            self.failed = True

    def feed(self, samples: np.ndarray) -> None:
        if self.rec is not None and not self.failed:
            self._submit(self.rec.feed, samples)

    async def peek(self) -> tuple[str, IntentResult] | None:
        """What the recognizer would answer if the speech ended now (checked against its
        phone loop like a final result, so a question does not pass for a command)."""
        if self.rec is None or self.failed:
            return None
        try:
            result = await self.a.grammar_exec.run(self.rec.peek)
        except Exception:  # noqa: BLE001 - a hint only
            return None
        if result is None:
            return None
        last = self.rec.peeked
        return (last.text if last is not None else "") or result.text, result

    async def finish(self) -> tuple[str, IntentResult] | None:
        if self.rec is None or self.failed:
            return None
        try:
            result = await self.a.grammar_exec.run(self.rec.finish)
        except Exception as exc:  # fall back to open transcription
            log.warning("speech-intent recognizer failed: %s", exc)
            return None
        if result is None:
            return None
        last = self.rec.last
        return (last.text if last is not None else "") or result.text, result

    def release(self) -> None:
        if self.rec is not None and not self.failed:
            self.a._grammar_pool.append(self.rec)
        self.rec = None


class Assistant:
    """Every stage, loaded once; :meth:`run_turn` runs a spoken turn through them.

    ``vad_factory`` makes one endpointer per turn; ``grammar_factory`` (optional) one
    speech-intent recognizer per concurrent turn; ``partial_asr`` (optional) a second
    Whisper for partial decodes (without it partials share ``asr``). ``sched``: stage
    threads get their real-time class and cores (``hark serve``)."""

    def __init__(self, cfg: Config, *, vad_factory: Callable[[], TurnEndpointer],
                 asr: AsrEngine, nlu: IntentRecognizer, handlers: TurnHandlers,
                 llm: LlmResponder, tts: TtsEngine,
                 grammar_factory: Callable[[], SpeechIntentRecognizer] | None = None,
                 sched: bool = False, partial_asr: AsrEngine | None = None,
                 home: Home | None = None):
        self.cfg = cfg
        # what the guard checks an intent's targets against, and its open questions
        self.home = home if home is not None else Home()
        self.confirmations = Confirmations()
        # the prompt a command that was not understood is decoded again with ("": never)
        self.rescue_prompt = ""
        # speech straight to intent: () -> SpeechIntentRecognizer, one per concurrent turn
        self._grammar_factory = grammar_factory
        self._grammar_pool: list[SpeechIntentRecognizer] = []
        self._turns = 0  # turns being listened to now (one per satellite speaking)
        # real-time class and pinned cores per stage thread (hark serve turns this on)
        self.sched_results: list = []
        self.grammar_exec = self._executor("grammar", sched)
        self._vad_factory = vad_factory  # () -> Endpointer (one per turn; VAD has state)
        self.asr = asr
        self.nlu = nlu
        self.handlers = handlers
        self.llm = llm
        self.tts = tts
        self.tts_rate: int = tts.sample_rate
        self.asr_exec = self._executor("asr", sched)
        # partial transcripts while the person speaks: a second engine (idle class, see
        # hark.asr.whisper.load_idle_asr) on its own thread, or the main one
        self.partial_asr = partial_asr or asr
        self.partial_exec = StageExecutor("asr-partial") if partial_asr else self.asr_exec
        self.nlu_exec = self._executor("nlu", sched)
        self.llm_exec = self._executor("llm", sched)
        self.tts_exec = self._executor("tts", sched)
        self.tts_cache = _TtsCache()
        self._notify: list[Notify] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        handlers.on_timer(self._timer_fired)

    # --- construction -------------------------------------------------------------------

    def _executor(self, stage: str, sched: bool) -> StageExecutor:
        if not sched:
            return StageExecutor(stage)
        from hark.sched import stage_initializer

        return StageExecutor(stage, on_start=stage_initializer(stage, self.cfg,
                                                               self.sched_results))

    @classmethod
    def load(cls, cfg: Config, warm: bool = True, sched: bool = False,
             home: Home | None = None) -> Assistant:
        """Load every model once (and warm each up, so the first turn is as fast as the
        tenth). ``home``: the home to match names against (one read from Home
        Assistant); default the config's ``[home]``. Raises
        :class:`hark.errors.ModelError` naming the fix when one is missing."""
        from hark.asr.whisper import load_asr, load_idle_asr
        from hark.llm.service import load_llm
        from hark.nlu.handlers import load_handlers
        from hark.nlu.recognizer import load_nlu
        from hark.tts.piper import load_tts
        from hark.vad.endpoint import Endpointer
        from hark.vad.silero import load_vad

        t0 = time.monotonic()
        asr = load_asr(cfg)
        partial_asr, partial_sched = None, None
        if cfg.asr.backend == "wyoming":
            # a remote service: partials are requests too, sent from their own thread so
            # one in flight never queues the final decode behind it here
            partial_asr = asr if cfg.asr.streaming else None
        elif cfg.asr.streaming and cfg.asr.idle_partials:
            partial_asr, partial_sched = load_idle_asr(cfg, warm=warm)
            if partial_asr is None:
                log.info("partial transcripts share the main Whisper instance: %s",
                         partial_sched)
        nlu = load_nlu(cfg, home=home)
        handlers = load_handlers(cfg, nlu)
        llm = load_llm(cfg)
        tts = load_tts(cfg)
        load_vad(cfg)  # fail early if the VAD model is missing

        def vad_factory():
            return Endpointer(load_vad(cfg), cfg.vad)

        grammar_factory = None
        if cfg.nlu.speech_intent:
            from hark.nlu.speech_intent import SpeechIntentRecognizer, load_domains

            domains = load_domains(cfg)
            if domains:
                grammar_factory = functools.partial(SpeechIntentRecognizer, domains)

        self = cls(cfg, vad_factory=vad_factory, asr=asr, nlu=nlu, handlers=handlers,
                   llm=llm, tts=tts, grammar_factory=grammar_factory, sched=sched,
                   partial_asr=partial_asr, home=nlu.home)
        if partial_sched is not None:
            self.sched_results.append(partial_sched)
        from hark.asr.whisper import home_prompt

        # a remote Wyoming ASR takes no prompt: no second decode with the home's words
        self.rescue_prompt = home_prompt(cfg, nlu.home) if cfg.asr.backend != "wyoming" else ""
        if grammar_factory is not None:
            self._grammar_pool.append(grammar_factory())
        log.info("models loaded in %.1f s", time.monotonic() - t0)
        if warm:
            self.warm_up()
        return self

    def set_home(self, home: Home) -> None:
        """Use ``home`` from now on (read again from Home Assistant): the intent stage
        matches its names, the guard checks targets against it, and a command not
        understood is decoded again with its names. Blocking (the intent stage builds
        its matchers): call it off the event loop."""
        set_nlu_home = getattr(self.nlu, "set_home", None)
        if set_nlu_home is not None:
            set_nlu_home(home)
        self.home = home
        if self.cfg.asr.home_prompt:
            from hark.asr.whisper import home_prompt

            self.rescue_prompt = home_prompt(self.cfg, home)

    def warm_up(self) -> None:
        """Warm every engine. A remote Wyoming engine whose service does not answer is
        logged and left cold: hark starts anyway, and each turn that needs it apologises
        (in words, and aloud when the TTS works) until the service answers."""
        from hark.wyoming_client import WyomingServiceError

        t0 = time.monotonic()
        for stage, engine in (("ASR", self.asr), ("TTS", self.tts)):
            try:
                engine.warm_up()  # load_llm already warmed the LLM
            except WyomingServiceError as exc:
                log.error("remote %s not ready, starting without it: %s", stage, exc)
        self.nlu.recognize("what time is it")
        self.prepare_phrases([APOLOGY])
        from hark.sched import freeze_startup_objects

        frozen = freeze_startup_objects()  # no full collection walks them mid-turn
        log.info("warm-up done in %.1f s (%d startup objects frozen)",
                 time.monotonic() - t0, frozen)

    def on_notify(self, callback: Notify) -> None:
        """``callback(session, text)`` when something must be said unprompted."""
        self._notify.append(callback)

    def _timer_fired(self, timer) -> None:  # a timer thread
        loop = self._loop
        if loop is None or loop.is_closed():
            log.warning("timer finished with no running assistant loop: %s", timer.label)
            return
        asyncio.run_coroutine_threadsafe(self.notify(timer.session, timer.done_message), loop)

    async def notify(self, session: str, text: str) -> None:
        for cb in self._notify:
            res = cb(session, text)
            if asyncio.iscoroutine(res):
                await res

    def close(self) -> None:
        for ex in {self.asr_exec, self.partial_exec, self.nlu_exec, self.llm_exec,
                   self.tts_exec, self.grammar_exec}:
            ex.shutdown()
        self.handlers.close()

    # --- TTS helpers --------------------------------------------------------------------

    def _synthesize_cached(self, text: str) -> list[np.ndarray]:
        hit = self.tts_cache.get(text)
        if hit is None:
            hit = [c.samples for c in self.tts.synthesize(text)]
            self.tts_cache.put(text, hit)
        return hit

    async def speak(self, text: str) -> AsyncIterator[AudioChunk]:
        """Synthesize arbitrary text, chunk by chunk (phrases said before come from the
        phrase cache: "busy", timer messages, apologies)."""
        async for chunk in self._tts_stream(text, Trace(), cache=True):
            yield chunk

    def prepare_phrases(self, phrases: list[str]) -> None:
        """Synthesize ahead what will be said often, so it costs nothing when needed. A
        remote TTS service that does not answer is logged; the phrase is then synthesized
        when first needed."""
        from hark.wyoming_client import WyomingServiceError

        for phrase in phrases:
            try:
                self._synthesize_cached(phrase)
            except WyomingServiceError as exc:
                log.error("%r not synthesized ahead: %s", phrase, exc)

    async def _tts_stream(self, text: str, trace: Trace, cache: bool) -> AsyncIterator[AudioChunk]:
        trace.mark("tts_start")
        hit = self.tts_cache.get(text) if cache else None
        if hit is not None:
            trace.info["tts_cache_hit"] = True
            for samples in hit:
                trace.mark("tts_first_audio")
                yield AudioChunk(samples, self.tts_rate, time.monotonic())
            return
        parts: list[np.ndarray] = []
        # A phrase cut mid-sentence flows into the next: its last piece loses the long
        # trailing silence (so that piece is held until the synthesis ends).
        mid_sentence = not text.rstrip("\"')]").endswith((".", "!", "?", "…"))
        held: AudioChunk | None = None
        async for chunk in self.tts_exec.iterate(lambda: self.tts.synthesize(text)):
            if not parts:  # the first word starts at once
                chunk = AudioChunk(trim_silence(chunk.samples, self.tts_rate, TTS_LEAD_MS, None),
                                   chunk.rate, chunk.t)
            if held is not None:
                trace.mark("tts_first_audio")
                yield held
            parts.append(chunk.samples)
            if mid_sentence:
                held = chunk
                continue
            trace.mark("tts_first_audio")
            yield chunk
        if held is not None:
            trace.mark("tts_first_audio")
            parts[-1] = trim_silence(held.samples, self.tts_rate, None, TTS_TAIL_MS)
            yield AudioChunk(parts[-1], held.rate, held.t)
        if cache:
            self.tts_cache.put(text, parts)

    # --- the response: transcript -> intent or LLM -> speech -----------------------------

    async def _respond(self, resp: _Response, session: str, *,
                       audio: np.ndarray | None = None, text: str | None = None,
                       intent: IntentResult | None = None, streaming: bool = True,
                       pending: asyncio.Future | None = None, area: str | None = None
                       ) -> None:
        """Fill ``resp.queue`` with events. Acting on the world (intent handlers) waits
        for ``resp.commit``; everything else runs ahead (speculatively). ``area``: the
        room of the satellite that heard it, the intent stage's context ("turn on the
        lights" there means its lights); None: the stage's ``home.default_area``."""
        context = {"area": area} if area else None
        q = resp.queue
        trace = resp.trace
        confidence: float | None = None  # the decode's average log-probability
        try:
            if text is None:
                if pending is not None:  # a partial decode that already covers the speech
                    heard = await pending
                    text, confidence = heard.text.strip(), heard.avg_logprob
                else:
                    assert audio is not None
                    trace.mark("asr_start")

                    def transcribe() -> AsrResult:  # on the ASR thread: when it begins
                        trace.mark("asr_begin")
                        return self.asr.decode(audio)

                    result = await self.asr_exec.run(transcribe)
                    text, confidence = result.text.strip(), result.avg_logprob
                trace.mark("asr_final")
                await q.put(TranscriptEvent(Transcript(text, text, True, time.monotonic())))
            trace.info["transcript"] = resp.transcript = text
            if not text:
                await resp.commit.wait()
                await q.put(TurnEnd(trace, "", "", error=NO_SPEECH))
                return
            trace.mark("intent_start")
            if intent is None:
                intent = await self.nlu_exec.run(self.nlu.recognize, text, context)
            verdict = review(text, intent, self.home)
            if verdict.kind in ("clarify", "confirm", "cant_check") and audio is not None \
                    and self.rescue_prompt and streaming:
                # a command not understood: decode again with the home's words in the
                # prompt (a question is never decoded with it: it biases toward them)
                again = (await self.asr_exec.run(self.asr.transcribe, audio,
                                                 self.rescue_prompt)).strip()
                second = (await self.nlu_exec.run(self.nlu.recognize, again, context)
                          if again else None)
                second_verdict = review(again, second, self.home)
                trace.info["asr_rescue"] = {"heard": again, "acts": second_verdict.kind == "act"}
                if second is not None and second_verdict.kind == "act":
                    text, intent, verdict = again, second, second_verdict
                    trace.info["transcript"] = resp.transcript = text
                    await q.put(TranscriptEvent(Transcript(text, text, True, time.monotonic())))
            if verdict.kind == "llm" and confidence is not None \
                    and confidence < self.cfg.asr.question_min_logprob:
                # heard too unsurely to be answered ("who painted the mowgah leader"): the
                # LLM would answer about a thing that does not exist
                verdict = Verdict("clarify", SAY_AGAIN,
                                  f"unsure what was heard (avg log-probability "
                                  f"{confidence:.2f})")
            answer, asked = self.confirmations.answer(session, text)
            if answer == "yes":  # the question hark asked last: "The kitchen light?"
                intent, verdict = asked, Verdict("act")
                trace.info["confirmed"] = True
            elif answer == "no":
                intent = IntentResult("HassNevermind", {}, text, source="confirm",
                                      domain="hark")
                verdict = Verdict("act")
            trace.mark("intent_done")
            if verdict.kind in ("clarify", "confirm", "cant_check"):
                # never a wrong action, and never a guess for the LLM to dress up: ask,
                # or say what hark did not catch or cannot check
                trace.info["intent"] = "clarify"
                trace.info["guard"] = {"verdict": verdict.kind, "reason": verdict.reason,
                                       "guessed": intent.name if intent else None}
                log.info("turn %s: %s (%s)", trace.turn_id, verdict.kind, verdict.reason)
                await q.put(IntentEvent(IntentResult("clarify", {"verdict": verdict.kind},
                                                     text, source="guard", domain="hark")))
                reply_text = verdict.say
                await self._say(q, trace, reply_text, "clarify", streaming)
                self.handlers.remember(session, reply_text)
            elif intent is not None:
                trace.info["intent"] = intent.name
                trace.info["slots"] = intent.slots
                resp.intent_matched = True
                await q.put(IntentEvent(intent))
                if intent.name not in PURE_INTENTS:
                    await resp.commit.wait()  # handlers act: never speculatively
                reply: Reply = await self.nlu_exec.run(self.handlers.handle, intent, session)
                reply_text = reply.text
                await self._say(q, trace, reply_text, "intent", streaming)
            else:
                trace.info["intent"] = "LLM"
                await q.put(IntentEvent(None))
                reply_text = await self._llm_reply(q, trace, text, session, streaming)
                if reply_text:
                    self.handlers.remember(session, reply_text)
            trace.info["reply"] = reply_text
            await resp.commit.wait()
            # the question this turn asked waits for a yes; any other turn answers the last
            self.confirmations.settle(session, intent if verdict.kind == "confirm" else None)
            await q.put(TurnEnd(trace, text, reply_text))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a crashed model must not take the turn down silently
            log.exception("turn %s failed", trace.turn_id)
            await q.put(ReplyText(APOLOGY, "error"))
            try:
                spoken = self._synthesize_cached(APOLOGY)
            except Exception as tts_exc:  # noqa: BLE001 - the TTS is what failed: words only
                log.error("turn %s: the apology cannot be spoken either: %s",
                          trace.turn_id, tts_exc)
                spoken = []
            for samples in spoken:
                await q.put(ReplyAudio(AudioChunk(samples, self.tts_rate, time.monotonic())))
            await resp.commit.wait()
            await q.put(TurnEnd(trace, text or "", APOLOGY, error=f"{type(exc).__name__}: {exc}"))
        finally:
            await q.put(_END)

    async def _say(self, q: asyncio.Queue, trace: Trace, text: str, source: str,
                   streaming: bool) -> None:
        """Speak a known reply: clause by clause from the phrase cache when streaming;
        the whole reply with no cache in the baseline (a typical assistant)."""
        parts = self._clauses(text) if streaming else [text]
        for part in filter(None, parts):
            await q.put(ReplyText(part, source))
            async for chunk in self._tts_stream(part, trace, cache=streaming):
                await q.put(ReplyAudio(chunk))
        trace.mark("tts_done")

    def _clauses(self, text: str) -> list[str]:
        from hark.tts.chunker import SpeechChunker

        chunker = SpeechChunker(self.cfg.tts.first_chunk_min_chars, self.cfg.tts.chunk_max_chars,
                                self.cfg.tts.first_chunk_max_words)
        return chunker.push(text + " ") + chunker.flush()

    async def _llm_reply(self, q: asyncio.Queue, trace: Trace, text: str, session: str,
                         streaming: bool) -> str:
        from hark.tts.chunker import SpeechChunker

        trace.mark("llm_start")
        source = "llm"
        pieces: list[str] = []
        if not streaming:  # baseline: whole reply, then whole TTS
            async for piece in self.llm_exec.iterate(lambda: self.llm.reply_stream(text, session, trace=trace)):
                trace.mark("llm_first_token")
                pieces.append(piece)
            trace.mark("llm_done")
            reply = "".join(pieces).strip()
            source = self.llm.last_source or "llm"
            trace.mark("llm_first_chunk")
            await q.put(ReplyText(reply, source))
            trace.mark("tts_start")
            audio = await self.tts_exec.run(lambda: [c.samples for c in self.tts.synthesize(reply)])
            trace.mark("tts_first_audio")
            trace.mark("tts_done")
            for samples in audio:
                await q.put(ReplyAudio(AudioChunk(samples, self.tts_rate, time.monotonic())))
            return reply

        chunker = SpeechChunker(self.cfg.tts.first_chunk_min_chars, self.cfg.tts.chunk_max_chars,
                                self.cfg.tts.first_chunk_max_words)
        # LLM -> chunks (this task) and chunks -> TTS (a second task) overlap.
        chunks: asyncio.Queue = asyncio.Queue()

        async def speak_chunks() -> None:
            # the LLM waits while the first phrase is synthesized: both want the CPU
            hold = self.llm.hold if self.cfg.llm.hold_for_first_phrase else None
            while (chunk := await chunks.get()) is not None:
                await q.put(ReplyText(chunk, source))
                if hold is not None:
                    hold(True)
                try:
                    async for audio in self._tts_stream(chunk, trace, cache=False):
                        await q.put(ReplyAudio(audio))
                finally:
                    if hold is not None:
                        hold(False)
                        hold = None  # the first phrase only
            trace.mark("tts_done")

        speaker = asyncio.create_task(speak_chunks())
        try:
            async for piece in self.llm_exec.iterate(lambda: self.llm.reply_stream(text, session, trace=trace)):
                trace.mark("llm_first_token")
                pieces.append(piece)
                for chunk in chunker.push(piece):
                    trace.mark("llm_first_chunk")
                    source = self.llm.last_source or "llm"
                    chunks.put_nowait(chunk)
            for chunk in chunker.flush():
                trace.mark("llm_first_chunk")
                chunks.put_nowait(chunk)
            trace.mark("llm_done")
            chunks.put_nowait(None)
            await speaker
        finally:
            if not speaker.done():
                speaker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await speaker
        return "".join(pieces).strip()

    async def _drain(self, resp: _Response, trace: Trace) -> AsyncIterator[TurnEvent]:
        """Release a committed response's events; the first audio marks ``first_audio_out``.
        The response's marks join the turn's trace before the final event."""
        while (ev := await resp.queue.get()) is not _END:
            if isinstance(ev, ReplyAudio):
                trace.mark("first_audio_out")
            if isinstance(ev, TurnEnd):
                for k, v in resp.trace.marks.items():
                    trace.mark(k, v)
                trace.info.update(resp.trace.info)
                ev.trace = trace
            yield ev

    # --- turns --------------------------------------------------------------------------

    async def run_text(self, text: str, *, session: str = "default",
                       area: str | None = None) -> AsyncIterator[TurnEvent]:
        """A turn from typed text (no microphone side); ``area`` as in :meth:`run_turn`."""
        self._loop = asyncio.get_running_loop()
        trace = Trace(info={"mode": "text", "session": session})
        trace.mark("speech_end")
        trace.mark("turn_end")
        resp = _Response()
        resp.commit.set()
        resp.task = asyncio.create_task(self._respond(resp, session, text=text, area=area))
        try:
            async for ev in self._drain(resp, trace):
                yield ev
        finally:
            await _cancel(resp.task)

    async def run_turn(self, audio: AsyncIterator[AudioChunk], *, session: str = "default",
                       mode: str = "streaming", area: str | None = None
                       ) -> AsyncIterator[TurnEvent]:
        """Listen to ``audio`` until the end of the turn, then answer. Closing this
        generator cancels every piece of work still running for the turn (barge-in).
        ``area`` is the room of the satellite that heard it (``satellite.area``, a
        Wyoming satellite's area): the intents' context, so "turn on the lights" means
        the lights there; None: ``home.default_area``.

        Every decision (when the turn ends, what starts ahead, what is dropped) is the
        :class:`~hark.pipeline.policy.TurnPolicy`'s; this method carries its actions out
        and feeds back what the endpointer, the recognizers and the response observe."""
        if mode not in ("streaming", "baseline"):
            raise ValueError(f"mode must be 'streaming' or 'baseline', not {mode!r}")
        streaming = mode == "streaming"
        self._loop = asyncio.get_running_loop()
        trace = Trace(info={"mode": mode, "session": session, "speculative_discarded": 0})
        ep = self._vad_factory()
        grammar = _GrammarFeed(self) if streaming and self._grammar_factory else None
        policy = TurnPolicy(self.cfg.vad, self.cfg.asr, streaming=streaming,
                            grammar=grammar is not None,
                            early_decode=self.partial_exec is not self.asr_exec)
        turn = _TurnWork(self, ep, grammar, session, streaming, area)
        self._turns += 1
        try:
            await turn.act(policy, policy.start())
            speech_end_t: float | None = None
            async for chunk in audio:
                for ev in ep.process(chunk):
                    if ev.kind == "speech_start":
                        trace.mark("speech_start", ev.t)
                        await turn.act(policy, policy.on(SpeechStart()))
                        yield SpeechStarted(ev.t)
                    elif ev.kind == "pause":
                        signal = Pause(ep.speech_samples, turn.early_began)
                        await turn.act(policy, policy.on(signal))
                    elif ev.kind == "speech_resume":
                        await turn.act(policy, policy.on(Resume()))
                    elif ev.kind == "speech_end":
                        speech_end_t = ev.t
                if speech_end_t is not None:
                    break
                if grammar and policy.started:
                    grammar.feed(chunk.samples)
                done = turn.take_decode()
                if done is not None:
                    await turn.act(policy, policy.on(done))
                resp = turn.resp
                signal = Chunk(len(ep.utterance()), ep.silence_ms, ep.spoken_ms,
                               alone=self._turns == 1,
                               response_transcript=resp.transcript if resp else None,
                               response_matched=resp.intent_matched if resp else False)
                for partial in await turn.act(policy, policy.on(signal)):
                    yield TranscriptEvent(partial)
            if not policy.started:
                trace.info["error"] = NO_SPEECH
                yield TurnEnd(trace, "", "", error=NO_SPEECH)
                return
            if speech_end_t is None:  # the audio stopped while the person was speaking
                speech_end_t = ep.speech_end_t or time.monotonic()
            trace.mark("speech_end", speech_end_t)
            trace.mark("turn_end")
            yield SpeechEnded(speech_end_t)
            for heard in await turn.act(policy, policy.on(SpeechEnd())):
                trace.mark("asr_final")  # the grammar recognizer's transcript
                yield TranscriptEvent(heard)
            trace.info.update(policy.info)
            async for ev in self._drain(turn.resp, trace):
                yield ev
        finally:
            self._turns -= 1
            await turn.close()

    def _start_response(self, session: str, audio: np.ndarray | None, streaming: bool = True,
                        **given) -> _Response:
        resp = _Response()
        resp.task = asyncio.create_task(
            self._respond(resp, session, audio=audio, streaming=streaming, **given))
        return resp

    @staticmethod
    def _partial(streamer: StreamingTranscriber, audio: np.ndarray) -> Transcript:
        t = streamer.update(audio)
        t.t = time.monotonic()
        return t


class _TurnWork:
    """The work of one turn in flight, started and stopped on the policy's actions: the
    partial (or early) decode, the speculative response, the grammar recognizer."""

    def __init__(self, a: Assistant, ep: TurnEndpointer, grammar: _GrammarFeed | None,
                 session: str, streaming: bool, area: str | None = None):
        self.a = a
        self.area = area
        self.context = {"area": area} if area else None
        self.ep = ep
        self.grammar = grammar
        self.session = session
        self.streaming = streaming
        self.resp: _Response | None = None
        self.decode: asyncio.Task | None = None
        self.early_began = False  # the early decode in flight has begun on its engine
        self.last_decode: Transcript | None = None  # the last decode that finished
        self.streamer = StreamingTranscriber(a.partial_asr, a.cfg.asr)  # LocalAgreement

    def take_decode(self) -> DecodeDone | None:
        """The decode in flight, if it finished (it is then no longer in flight)."""
        task = self.decode
        if task is None or not task.done():
            return None
        self.decode = None
        done = None if task.cancelled() or task.exception() else task.result()
        self.last_decode = done
        return DecodeDone(done)

    async def act(self, policy: TurnPolicy, actions: list[Action]) -> list[Transcript]:
        """Carry out ``actions`` in order; an action that asks something feeds the answer
        back to ``policy`` and carries out what it says at once. Returns the transcripts
        to report."""
        a, ep = self.a, self.ep
        report: list[Transcript] = []
        todo = list(actions)
        while todo:
            act = todo.pop(0)
            follow: list[Action] = []
            if isinstance(act, SetEndOfTurn):
                ep.set_eot_ms(act.ms)
            elif isinstance(act, BeginGrammar):
                await self.grammar.begin(ep.utterance())
            elif isinstance(act, PeekGrammar):
                heard = await self.grammar.peek()
                follow = policy.on(GrammarGuess(*heard) if heard else GrammarGuess())
            elif isinstance(act, FinishGrammar):
                heard = await self.grammar.finish()
                follow = policy.on(GrammarFinal(*heard) if heard else GrammarFinal())
            elif isinstance(act, StartDecode):
                self._start_decode(act.early)
            elif isinstance(act, CancelDecode):
                await _cancel(self.decode)
                self.decode = None
            elif isinstance(act, ShowPartial):
                report.append(act.transcript)
            elif isinstance(act, MatchTemplates):
                # templates only: a paraphrase match on half a sentence must not cut the
                # person off
                intent = await a.nlu_exec.run(a.nlu.recognize, act.text, self.context, False)
                follow = policy.on(TemplatesMatched(act.text, intent is not None))
            elif isinstance(act, Prefill):
                fut = asyncio.ensure_future(a.llm_exec.run(a.llm.prefill, act.text,
                                                           self.session))
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            elif isinstance(act, StartResponse):
                self.resp = self._respond(act)
            elif isinstance(act, CancelResponse):
                if self.resp is not None:
                    await _cancel(self.resp.task)
                self.resp = None
            elif isinstance(act, HeardCommand):
                report.append(Transcript(act.text, act.text, True, time.monotonic()))
            elif isinstance(act, Commit):
                self.resp.commit.set()
            else:
                raise TypeError(f"not a turn action: {act!r}")
            todo[:0] = follow
        return report

    def _start_decode(self, early: bool) -> None:
        a = self.a
        snapshot = self.ep.utterance()
        if not early:
            self.decode = asyncio.create_task(
                a.partial_exec.run(a._partial, self.streamer, snapshot))
            return
        self.early_began = False

        def decode() -> Transcript:
            self.early_began = True  # on the engine's thread: it really began
            result = a.partial_asr.decode(snapshot)
            return Transcript(result.text.strip(), t=time.monotonic(),
                              avg_logprob=result.avg_logprob)

        self.decode = asyncio.create_task(a.partial_exec.run(decode))

    def _respond(self, act: StartResponse) -> _Response:
        a = self.a
        if act.source == "grammar":
            return a._start_response(self.session, None, text=act.text, intent=act.intent,
                                     area=self.area)
        if act.source == "decode":
            if act.text is None:  # the decode in flight becomes the transcript
                pending = asyncio.ensure_future(_heard(self.decode))
                self.decode = None
            else:
                pending = asyncio.get_running_loop().create_future()
                last = self.last_decode  # the decode that made the text, with its confidence
                pending.set_result(last if last is not None and last.text == act.text
                                   else Transcript(act.text))
            # the audio too: a command the decode did not understand is decoded again
            return a._start_response(self.session, self.ep.utterance(), pending=pending,
                                     area=self.area)
        return a._start_response(self.session, self.ep.utterance(), streaming=self.streaming,
                                 area=self.area)

    async def close(self) -> None:
        await _cancel(self.decode)
        if self.resp is not None:
            await _cancel(self.resp.task)
        if self.grammar:
            self.grammar.release()


async def _heard(task: asyncio.Task) -> Transcript:
    return await task


async def _cancel(task: asyncio.Future | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
