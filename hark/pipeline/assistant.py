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
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from hark.aio import StageExecutor
from hark.asr.base import Transcript
from hark.asr.streaming import StreamingTranscriber
from hark.audio import AudioChunk
from hark.config import Config
from hark.nlu.base import IntentResult, Reply
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
from hark.tts.base import trim_silence

log = logging.getLogger(__name__)

NO_SPEECH = "no speech"
APOLOGY = "Sorry, something went wrong on my side."
# silence kept before a spoken phrase, and after one cut mid-sentence (Piper puts ~60 ms
# before and 100-250 ms after every phrase)
TTS_LEAD_MS = 15
TTS_TAIL_MS = 40
# a decode begun after asr.early_final_ms of silence has heard this much past the
# speech's end (a regular partial must have heard 1600 samples past it to count)
EARLY_MARGIN = 480

# A partial transcript ending in one of these words is probably unfinished ("turn on the").
_UNFINISHED = re.compile(
    r"\b(the|a|an|to|of|for|and|or|but|my|is|are|what|what's|who|how|why|when|where|"
    r"set|turn|switch|in|on|at|with|about|please|um|uh|like)\W*$",
    re.IGNORECASE,
)

Notify = Callable[[str, str], Awaitable[None] | None]

# Intents whose handlers only read (no action on the world): safe to answer speculatively,
# before the turn is committed, so their reply audio is ready the moment the turn ends.
PURE_INTENTS = frozenset({
    "HassGetCurrentTime", "HassGetCurrentDate", "HassTimerStatus", "HassGetWeather",
    "HarkRepeat",
})


def looks_unfinished(text: str) -> bool:
    return not text.strip() or bool(_UNFINISHED.search(text.strip()))


# A sentence opening as a question does. Whisper closes whatever it heard with a full
# stop when the audio stops, so a full stop alone says little: "In two seconds." (the
# first words of "In two seconds, turn off the light") is not a finished request.
_QUESTION_OPENING = re.compile(
    r"^(what|what's|whats|why|who|who's|whom|whose|how|how's|when|where|where's|which|"
    r"is|are|was|were|can|could|do|does|did|will|would|should|shall|has|have)\b",
    re.IGNORECASE,
)


def looks_complete(text: str) -> bool:
    """A finished question: Whisper closed it with a question mark, or with a full stop
    or an exclamation mark after a question's opening words, and it does not end
    mid-phrase. (A command is recognized as complete by the intent matcher instead.)"""
    t = text.strip()
    if not t.endswith(("?", ".", "!")) or looks_unfinished(t.rstrip("?.!")):
        return False
    return t.endswith("?") or bool(_QUESTION_OPENING.match(t))


class _TtsCache:
    """LRU of synthesized phrases: confirmations and other frequent replies cost nothing."""

    def __init__(self, size: int = 256):
        self.size = size
        self._d: OrderedDict[str, list[np.ndarray]] = OrderedDict()

    def get(self, text: str) -> list[np.ndarray] | None:
        key = text.strip().lower()
        hit = self._d.get(key)
        if hit is not None:
            self._d.move_to_end(key)
        return hit

    def put(self, text: str, chunks: list[np.ndarray]) -> None:
        key = text.strip().lower()
        self._d[key] = chunks
        self._d.move_to_end(key)
        while len(self._d) > self.size:
            self._d.popitem(last=False)


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
    eot_checked: bool = False
    grammar_intent: IntentResult | None = None  # started from the grammar's partial


_END = object()


class _GrammarFeed:
    """One turn's use of the constrained recognizer: audio is fed on the grammar thread
    as it arrives, so at the end of speech only the last frames remain to be decoded."""

    def __init__(self, assistant: Assistant):
        self.a = assistant
        self.rec = None
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
        if self.rec is None or self.failed or not hasattr(self.rec, "peek"):
            return None
        try:
            result = await self.a.grammar_exec.run(self.rec.peek)
        except Exception:  # noqa: BLE001 - a hint only
            return None
        if result is None:
            return None
        last = getattr(self.rec, "peeked", None)
        return (getattr(last, "text", "") or result.text), result

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
        last = getattr(self.rec, "last", None)
        return (getattr(last, "text", "") or result.text), result

    def release(self) -> None:
        if self.rec is not None and not self.failed:
            self.a._grammar_pool.append(self.rec)
        self.rec = None


class Assistant:
    def __init__(self, cfg: Config, *, vad_factory, asr, nlu, handlers, llm, tts,
                 grammar_factory=None, sched: bool = False, partial_asr=None):
        self.cfg = cfg
        # speech straight to intent: () -> SpeechIntentRecognizer, one per concurrent turn
        self._grammar_factory = grammar_factory
        self._grammar_pool: list = []
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
        timers = getattr(handlers, "timers", None)
        if timers is not None:
            timers.on_fire(self._timer_fired)

    # --- construction -------------------------------------------------------------------

    def _executor(self, stage: str, sched: bool) -> StageExecutor:
        if not sched:
            return StageExecutor(stage)
        from hark.sched import stage_initializer

        return StageExecutor(stage, on_start=stage_initializer(stage, self.cfg,
                                                               self.sched_results))

    @classmethod
    def load(cls, cfg: Config, warm: bool = True, sched: bool = False) -> Assistant:
        """Load every model once (and warm each up, so the first turn is as fast as the
        tenth). Raises :class:`hark.errors.ModelError` naming the fix when one is missing."""
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
        if cfg.asr.streaming and cfg.asr.idle_partials:
            partial_asr, partial_sched = load_idle_asr(cfg, warm=warm)
            if partial_asr is None:
                log.info("partial transcripts share the main Whisper instance: %s",
                         partial_sched)
        nlu = load_nlu(cfg)
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
                   partial_asr=partial_asr)
        if partial_sched is not None:
            self.sched_results.append(partial_sched)
        if grammar_factory is not None:
            self._grammar_pool.append(grammar_factory())
        log.info("models loaded in %.1f s", time.monotonic() - t0)
        if warm:
            self.warm_up()
        return self

    def warm_up(self) -> None:
        t0 = time.monotonic()
        for engine in (self.asr, self.tts):  # load_llm already warmed the LLM
            fn = getattr(engine, "warm_up", None)
            if fn:
                fn()
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
        closer = getattr(self.handlers, "close", None)
        if closer:
            closer()

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
        """Synthesize ahead what will be said often, so it costs nothing when needed."""
        for phrase in phrases:
            self._synthesize_cached(phrase)

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
                       pending: asyncio.Task | None = None) -> None:
        """Fill ``resp.queue`` with events. Acting on the world (intent handlers) waits
        for ``resp.commit``; everything else runs ahead (speculatively)."""
        q = resp.queue
        trace = resp.trace
        try:
            if text is None:
                if pending is not None:  # a partial decode that already covers the speech
                    text = (await pending).strip()
                else:
                    assert audio is not None
                    trace.mark("asr_start")

                    def transcribe() -> str:  # on the ASR thread: when it really begins
                        trace.mark("asr_begin")
                        return self.asr.transcribe(audio)

                    text = (await self.asr_exec.run(transcribe)).strip()
                trace.mark("asr_final")
                await q.put(TranscriptEvent(Transcript(text, text, True, time.monotonic())))
            trace.info["transcript"] = resp.transcript = text
            if not text:
                await resp.commit.wait()
                await q.put(TurnEnd(trace, "", "", error=NO_SPEECH))
                return
            trace.mark("intent_start")
            if intent is None:
                intent = await self.nlu_exec.run(self.nlu.recognize, text)
            trace.mark("intent_done")
            trace.info["intent"] = intent.name if intent else "LLM"
            if intent is not None:
                trace.info["slots"] = intent.slots
                resp.intent_matched = True
            await q.put(IntentEvent(intent))
            if intent is not None:
                if intent.name not in PURE_INTENTS:
                    await resp.commit.wait()  # handlers act: never speculatively
                reply: Reply = await self.nlu_exec.run(self.handlers.handle, intent, session)
                reply_text = reply.text
                # streaming: spoken clause by clause, frequent replies from the phrase
                # cache; baseline (a typical assistant): the whole reply, no cache
                parts = self._clauses(reply_text) if streaming else [reply_text]
                for part in filter(None, parts):
                    await q.put(ReplyText(part, "intent"))
                    async for chunk in self._tts_stream(part, trace, cache=streaming):
                        await q.put(ReplyAudio(chunk))
                trace.mark("tts_done")
            else:
                reply_text = await self._llm_reply(q, trace, text, session, streaming)
                remember = getattr(self.handlers, "remember", None)
                if remember and reply_text:
                    remember(session, reply_text)
            trace.info["reply"] = reply_text
            await resp.commit.wait()
            await q.put(TurnEnd(trace, text, reply_text))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a crashed model must not take the turn down silently
            log.exception("turn %s failed", trace.turn_id)
            await q.put(ReplyText(APOLOGY, "error"))
            for samples in self._synthesize_cached(APOLOGY):
                await q.put(ReplyAudio(AudioChunk(samples, self.tts_rate, time.monotonic())))
            await resp.commit.wait()
            await q.put(TurnEnd(trace, text or "", APOLOGY, error=f"{type(exc).__name__}: {exc}"))
        finally:
            await q.put(_END)

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
            source = getattr(self.llm, "last_source", "llm")
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
            hold = getattr(self.llm, "hold", None) if self.cfg.llm.hold_for_first_phrase \
                else None
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
                    source = getattr(self.llm, "last_source", "llm")
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

    async def run_text(self, text: str, *, session: str = "default") -> AsyncIterator[TurnEvent]:
        """A turn from typed text (no microphone side)."""
        self._loop = asyncio.get_running_loop()
        trace = Trace(info={"mode": "text", "session": session})
        trace.mark("speech_end")
        trace.mark("turn_end")
        resp = _Response()
        resp.commit.set()
        resp.task = asyncio.create_task(self._respond(resp, session, text=text))
        try:
            async for ev in self._drain(resp, trace):
                yield ev
        finally:
            await _cancel(resp.task)

    async def run_turn(self, audio: AsyncIterator[AudioChunk], *, session: str = "default",
                       mode: str = "streaming") -> AsyncIterator[TurnEvent]:
        """Listen to ``audio`` until the end of the turn, then answer. Closing this
        generator cancels every piece of work still running for the turn (barge-in)."""
        if mode not in ("streaming", "baseline"):
            raise ValueError(f"mode must be 'streaming' or 'baseline', not {mode!r}")
        streaming = mode == "streaming"
        self._loop = asyncio.get_running_loop()
        trace = Trace(info={"mode": mode, "session": session, "speculative_discarded": 0})
        vcfg = self.cfg.vad
        ep = self._vad_factory()
        ep.set_eot_ms(self._eot_default() if streaming else vcfg.eot_silence_ms)
        resp: _Response | None = None  # the (speculative) response in flight
        partial_task: asyncio.Task | None = None
        last_partial_len = partial_done_len = 0
        partial_every = int(self.cfg.asr.partial_interval_ms * 16)
        speech_end_t: float | None = None
        partial_len, partial_text = 0, ""  # the latest partial decode: its audio, its words
        heard_words = ""  # the words of the latest partial decode that had any
        streamer = StreamingTranscriber(self.partial_asr, self.cfg.asr)  # LocalAgreement
        # a decode after a short silence, on the idle-class engine (never on the main one:
        # a wasted decode there would hold up the next)
        early_ms = self.cfg.asr.early_final_ms if self.partial_exec is not self.asr_exec else 0
        early_decode = False  # partial_task is that decode
        early_began = False  # ... and it has begun (not queued behind another turn's)
        started = False
        grammar = _GrammarFeed(self) if streaming and self._grammar_factory else None
        self._turns += 1
        try:
            async for chunk in audio:
                for ev in ep.process(chunk):
                    if ev.kind == "speech_start":
                        started = True
                        trace.mark("speech_start", ev.t)
                        if grammar:
                            await grammar.begin(ep.utterance())
                        yield SpeechStarted(ev.t)
                    elif ev.kind == "pause" and streaming:
                        # speculative response on the utterance so far; a partial decode
                        # whose audio already covers all the speech is its transcript
                        await _cancel(resp.task if resp else None)
                        covers = getattr(ep, "speech_samples", None)
                        margin = EARLY_MARGIN if early_decode else 1600
                        covered = covers is not None and partial_len >= covers + margin
                        if early_decode and not early_began:
                            covered = False  # still queued: the main engine is sooner
                        heard = await grammar.peek() if grammar else None
                        heard = _unless_said_more(heard, heard_words, trace)
                        if heard is not None:
                            # the constrained recognizer already hears a known command:
                            # end the turn after a short pause, prepare the answer now
                            ep.set_eot_ms(vcfg.eot_short_ms)
                            resp = self._start_response(session, None, text=heard[0],
                                                        intent=heard[1])
                            resp.grammar_intent = heard[1]
                        elif covered and partial_task is not None:
                            resp = self._start_response(
                                session, None, pending=asyncio.ensure_future(_text_of(partial_task)))
                            partial_task = None
                            trace.info["partial_reused"] = True
                        elif covered and partial_text:
                            done = asyncio.get_running_loop().create_future()
                            done.set_result(partial_text)
                            resp = self._start_response(session, None, pending=done)
                            trace.info["partial_reused"] = True
                        else:
                            resp = self._start_response(session, ep.utterance())
                    elif ev.kind == "speech_resume" and streaming:
                        if resp is not None:
                            await _cancel(resp.task)
                            resp = None
                            trace.info["speculative_discarded"] += 1
                    elif ev.kind == "speech_end":
                        speech_end_t = ev.t
                if speech_end_t is not None:
                    break
                if grammar and started:
                    grammar.feed(chunk.samples)
                if resp is not None and resp.intent_matched:
                    ep.set_eot_ms(vcfg.eot_short_ms)  # the speculative answer is a command
                elif resp is not None and resp.transcript and not resp.eot_checked:
                    # what was said up to the pause reads as a whole question: a shorter
                    # wait than for an unknown ending; a sentence that does not end
                    # mid-phrase no longer needs the long wait an earlier partial's
                    # ending ("... about") asked for
                    resp.eot_checked = True
                    if looks_complete(resp.transcript):
                        ep.set_eot_ms(vcfg.eot_complete_ms)
                    elif not looks_unfinished(resp.transcript.rstrip("?.!")):
                        ep.set_eot_ms(self._eot_default())
                # partial transcripts while speaking
                if (streaming and started and resp is None and partial_task is None
                        and 0 < early_ms <= ep.silence_ms and not early_decode
                        and self._turns == 1):  # idle-class work needs an idle machine
                    # a short silence: decode what was said on the idle-class engine now;
                    # it is the transcript if the pause follows a moment later (else it
                    # is one more partial)
                    snapshot = ep.utterance()
                    partial_len, partial_text, early_decode = len(snapshot), "", True
                    early_began = False

                    def early(audio: np.ndarray = snapshot) -> Transcript:
                        nonlocal early_began
                        early_began = True  # on the engine's thread: it really began
                        return Transcript(self.partial_asr.transcribe(audio).strip(),
                                          t=time.monotonic())

                    partial_task = asyncio.create_task(self.partial_exec.run(early))
                if ep.silence_ms == 0:  # speaking again: once that decode is done (it is
                    # then one more partial), the next silence may start another
                    early_decode = early_decode and partial_task is not None
                if streaming and started and self.cfg.asr.streaming and resp is None:
                    if partial_task is not None and partial_task.done():
                        part = None if partial_task.exception() else partial_task.result()
                        partial_task = None
                        partial_done_len = len(ep.utterance())
                        text = partial_text = part.text if part else ""
                        if text:
                            heard_words = text
                            yield TranscriptEvent(part)
                            eot = await self._eot_for(text)
                            ep.set_eot_ms(eot)
                            if eot != vcfg.eot_short_ms:  # likely a question: read it ahead
                                self._prefill(text, session)
                    n = len(ep.utterance())
                    # A decode in flight at the pause delays the final one (one ASR
                    # thread), so partials run only on longer speech (counted from the
                    # onset: the utterance also holds the pre-roll), leave the thread
                    # idle between passes, and never start in a silence that may be the end.
                    spoken = getattr(ep, "spoken_ms", n / 16)
                    if (partial_task is None and spoken >= self.cfg.asr.partial_min_ms
                            and n - last_partial_len >= partial_every
                            and n - partial_done_len >= partial_every
                            and ep.silence_ms == 0):
                        last_partial_len = n
                        snapshot = ep.utterance()
                        partial_len, partial_text = len(snapshot), ""
                        partial_task = asyncio.create_task(
                            self.partial_exec.run(self._partial, streamer, snapshot))
            if not started:
                trace.info["error"] = NO_SPEECH
                yield TurnEnd(trace, "", "", error=NO_SPEECH)
                return
            if speech_end_t is None:  # the audio stopped while the person was speaking
                speech_end_t = ep.speech_end_t or time.monotonic()
            trace.mark("speech_end", speech_end_t)
            trace.mark("turn_end")
            yield SpeechEnded(speech_end_t)
            await _cancel(partial_task)
            heard = await grammar.finish() if grammar else None
            heard = _unless_said_more(heard, heard_words, trace)
            if heard is not None:  # a known command, heard straight from the speech
                text, intent = heard
                trace.info["speech_intent"] = True
                trace.mark("asr_final")  # the constrained recognizer's transcript
                if resp is not None and _same_intent(resp.grammar_intent, intent):
                    trace.info["speculative_used"] = True
                else:
                    if resp is not None:
                        await _cancel(resp.task)
                    resp = _Response()
                    resp.task = asyncio.create_task(
                        self._respond(resp, session, text=text, intent=intent))
                yield TranscriptEvent(Transcript(text, text, True, time.monotonic()))
            elif resp is not None and resp.grammar_intent is not None:
                # the grammar's guess did not hold up: open transcription decides
                await _cancel(resp.task)
                resp = self._start_response(session, ep.utterance(), streaming=streaming)
            elif resp is None:
                resp = self._start_response(session, ep.utterance(), streaming=streaming)
            else:
                trace.info["speculative_used"] = True
            resp.commit.set()
            async for ev in self._drain(resp, trace):
                yield ev
        finally:
            self._turns -= 1
            await _cancel(partial_task)
            if resp is not None:
                await _cancel(resp.task)
            if grammar:
                grammar.release()

    def _start_response(self, session: str, audio: np.ndarray | None, streaming: bool = True,
                        **given) -> _Response:
        resp = _Response()
        resp.task = asyncio.create_task(
            self._respond(resp, session, audio=audio, streaming=streaming, **given))
        return resp

    @staticmethod
    def _partial(streamer, audio: np.ndarray) -> Transcript:
        t = streamer.update(audio)
        t.t = time.monotonic()
        return t

    def _prefill(self, partial: str, session: str) -> None:
        """Read a partial question into the LLM's cache while the person still speaks."""
        prefill = getattr(self.llm, "prefill", None)
        if prefill is None:
            return
        fut = asyncio.ensure_future(self.llm_exec.run(prefill, partial, session))
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())

    def _eot_default(self) -> int:
        v = self.cfg.vad
        return (v.eot_short_ms + v.eot_long_ms) // 2

    async def _eot_for(self, partial: str) -> int:
        """End-of-turn timeout for what has been said so far."""
        v = self.cfg.vad
        if looks_unfinished(partial):
            return v.eot_long_ms
        # templates only: a paraphrase match on half a sentence must not cut the person off
        intent = await self.nlu_exec.run(self.nlu.recognize, partial, None, False)
        return v.eot_short_ms if intent is not None else self._eot_default()


async def _text_of(task: asyncio.Task) -> str:
    return (await task).text


def _stem(word: str) -> str:
    w = re.sub(r"[^a-z0-9']", "", word.lower())
    return w[:-1] if len(w) > 3 and w.endswith("s") else w


def _unless_said_more(heard, partial: str, trace) -> tuple | None:
    """The grammar recognizer's (text, intent), unless open transcription has already
    heard at least two words that its sentence lacks ("turn off the kitchen light in
    two" against the grammar's "turn off the kitchen lights": a command with more to
    it than the templates know, which Whisper then reads in full)."""
    if heard is None or not partial:
        return heard
    said = {_stem(w) for w in heard[0].split()}
    extra = {_stem(w) for w in partial.split()} - said - {""}
    if len(extra) >= 2:
        trace.info["grammar_overruled"] = trace.info.get("grammar_overruled", 0) + 1
        return None
    return heard


def _same_intent(a: IntentResult | None, b: IntentResult | None) -> bool:
    if a is None or b is None or a.name != b.name:
        return False
    norm = lambda slots: {k: str(v).strip().lower() for k, v in slots.items()}  # noqa: E731
    return norm(a.slots) == norm(b.slots)


async def _cancel(task: asyncio.Task | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
