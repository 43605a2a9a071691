"""hark as a Wyoming service (the protocol Home Assistant's voice satellites and its
Wyoming integration speak), built on the ``wyoming`` package.

One TCP port (``server.wyoming_port``) offers every service hark has:

- ``describe`` -> ``info``: ASR (Whisper), TTS (Piper), intent recognition and
  handling, wake word detection (microWakeWord) and the whole pipeline;
- ASR: ``transcribe``, then ``audio-start``/``audio-chunk``/``audio-stop`` ->
  ``transcript``;
- TTS: ``synthesize`` -> ``audio-start``/``audio-chunk``.../``audio-stop``;
- intent: ``recognize`` -> ``intent`` or ``not-recognized``;
- handle: ``transcript`` -> ``handled`` (the assistant's answer as text);
- wake: ``detect``, then audio -> ``detection`` (or ``not-detected`` at ``audio-stop``);
- pipeline: ``run-pipeline`` (start at wake or asr, end at asr, handle or tts), then
  audio -> ``detection``, ``transcript``, ``handled`` and the spoken reply.

Audio in any format is converted to 16 kHz mono 16-bit; malformed events get an
``error`` event and never end the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk as WyChunk
from wyoming.audio import AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import Handled, NotHandled
from wyoming.info import (
    AsrModel,
    AsrProgram,
    Attribution,
    Describe,
    HandleModel,
    HandleProgram,
    Info,
    IntentModel,
    IntentProgram,
    TtsProgram,
    TtsVoice,
    WakeModel,
    WakeProgram,
)
from wyoming.intent import Entity, Intent, NotRecognized, Recognize
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.server import AsyncEventHandler, AsyncTcpServer
from wyoming.tts import Synthesize
from wyoming.wake import Detect, Detection, NotDetected

from hark.audio import SAMPLE_RATE, AudioChunk
from hark.pipeline.events import ReplyAudio, ReplyText, TranscriptEvent, TurnEnd

log = logging.getLogger(__name__)

HARK = Attribution(name="hark", url="https://github.com/")
CHUNK_SAMPLES = 1024


def describe(cfg, assistant: Any) -> Info:
    """What this server offers, in Wyoming's terms."""
    from hark.wake.detector import KEYWORDS

    lang = [cfg.asr.language or "en"]
    return Info(
        asr=[AsrProgram(name="hark-asr", description="Whisper (faster-whisper)",
                        attribution=HARK, installed=True, version="1",
                        models=[AsrModel(name=cfg.asr.model, description=cfg.asr.model,
                                         attribution=HARK, installed=True, languages=lang,
                                         version="1")])],
        tts=[TtsProgram(name="hark-tts", description="Piper", attribution=HARK,
                        installed=True, version="1",
                        voices=[TtsVoice(name=cfg.tts.voice, description=cfg.tts.voice,
                                         attribution=HARK, installed=True, languages=lang,
                                         version="1")])],
        intent=[IntentProgram(name="hark-intent", description="hassil intents",
                              attribution=HARK, installed=True, version="1",
                              models=[IntentModel(name="hark", description="hark intents",
                                                  attribution=HARK, installed=True,
                                                  languages=lang, version="1")])],
        handle=[HandleProgram(name="hark-handle", description="hark assistant (intents + LLM)",
                              attribution=HARK, installed=True, version="1",
                              models=[HandleModel(name="hark", description="hark assistant",
                                                  attribution=HARK, installed=True,
                                                  languages=lang, version="1")])],
        wake=[WakeProgram(name="hark-wake", description="microWakeWord", attribution=HARK,
                          installed=True, version="1",
                          models=[WakeModel(name=k, description=k.replace("_", " "),
                                            attribution=HARK, installed=True, languages=["en"],
                                            phrase=k.replace("_", " "), version="1")
                                  for k in KEYWORDS])],
    )


class HarkWyomingHandler(AsyncEventHandler):
    """One Wyoming connection."""

    def __init__(self, cfg, assistant: Any, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg = cfg
        self.assistant = assistant
        self.mode: str | None = None  # "asr" | "wake" | "pipeline"
        self.converter = AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)
        self.audio: list[np.ndarray] = []
        self.detector = None
        self.pipeline: RunPipeline | None = None
        self.turn_audio: asyncio.Queue | None = None
        self.turn_task: asyncio.Task | None = None
        self.session = f"wyoming-{id(self):x}"

    async def handle_event(self, event: Event) -> bool:
        try:
            await self._handle(event)
        except Exception as exc:  # noqa: BLE001 - a bad event never ends the service
            log.info("wyoming: %s failed: %s", event.type, exc)
            await self.write_event(Error(text=f"{event.type}: {exc}", code="hark-error").event())
        return True

    async def _handle(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.write_event(describe(self.cfg, self.assistant).event())
        elif Transcribe.is_type(event.type):
            self.mode, self.audio = "asr", []
        elif Detect.is_type(event.type):
            self._start_wake(Detect.from_event(event).names)
            self.mode = "wake"
        elif RunPipeline.is_type(event.type):
            await self._start_pipeline(RunPipeline.from_event(event))
        elif AudioStart.is_type(event.type):
            self.converter = AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)
        elif WyChunk.is_type(event.type):
            await self._audio(WyChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            await self._audio_stop()
        elif Synthesize.is_type(event.type):
            await self._speak(Synthesize.from_event(event).text)
        elif Recognize.is_type(event.type):
            await self._recognize(Recognize.from_event(event).text)
        elif Transcript.is_type(event.type):
            await self._handle_text(Transcript.from_event(event).text)
        else:
            await self.write_event(Error(text=f"unsupported event type '{event.type}'",
                                         code="unsupported").event())

    # --- audio --------------------------------------------------------------------------
    def _start_wake(self, names: list[str] | None) -> None:
        from hark.wake.detector import KEYWORDS, WakeWordDetector
        from hark.wake.verifier import load_verifier

        name = next((n for n in (names or []) if n in KEYWORDS), self.cfg.wake.keyword)
        verifier = load_verifier(self.cfg.wake.verifier, name, self.cfg.wake.verifier_threshold,
                                 self.cfg.wake.verifier_wait_s)
        self.detector = WakeWordDetector(name, refractory_s=self.cfg.wake.refractory_s,
                                         verifier=verifier)

    async def _audio(self, chunk: WyChunk) -> None:
        c = self.converter.convert(chunk)
        samples = np.frombuffer(c.audio, dtype="<i2").astype(np.int16)
        if self.mode == "asr":
            self.audio.append(samples)
        elif self.mode == "wake" and self.detector is not None:
            ev = self.detector.process(samples)
            if ev is not None:
                await self.write_event(Detection(name=ev.keyword,
                                                 timestamp=int(ev.stream_s * 1000)).event())
                if self.pipeline is not None:  # pipeline: the turn starts now
                    self.mode = "pipeline"
                    self._start_turn()
        elif self.mode == "pipeline" and self.turn_audio is not None:
            self.turn_audio.put_nowait(AudioChunk(samples, SAMPLE_RATE))

    async def _audio_stop(self) -> None:
        if self.mode == "asr":
            audio = np.concatenate(self.audio) if self.audio else np.zeros(0, np.int16)
            self.audio = []
            text = await self.assistant.asr_exec.run(self.assistant.asr.transcribe, audio)
            await self.write_event(Transcript(text=text).event())
        elif self.mode == "wake":
            await self.write_event(NotDetected().event())
        elif self.mode == "pipeline" and self.turn_audio is not None:
            self.turn_audio.put_nowait(None)
            if self.turn_task is not None:
                await self.turn_task
        self.mode = None

    # --- services -----------------------------------------------------------------------
    async def _send_audio(self, chunks: AsyncIterator[AudioChunk]) -> None:
        started = False
        rate = self.assistant.tts_rate
        async for chunk in chunks:
            if not started:
                await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
                started = True
            data = chunk.samples
            for i in range(0, len(data), CHUNK_SAMPLES):
                await self.write_event(WyChunk(rate=rate, width=2, channels=1,
                                               audio=data[i:i + CHUNK_SAMPLES].tobytes()).event())
        if not started:
            await self.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        await self.write_event(AudioStop().event())

    async def _speak(self, text: str) -> None:
        await self._send_audio(self.assistant.speak(text))

    async def _recognize(self, text: str) -> None:
        result = await self.assistant.nlu_exec.run(self.assistant.nlu.recognize, text)
        if result is None:
            await self.write_event(NotRecognized(text=text).event())
            return
        entities = [Entity(name=k, value=v) for k, v in (result.slots or {}).items()]
        await self.write_event(Intent(name=result.name, entities=entities, text=text).event())

    async def _handle_text(self, text: str) -> None:
        reply, error = [], None
        async for ev in self.assistant.run_text(text, session=self.session):
            if isinstance(ev, ReplyText):
                reply.append(ev.text)
            elif isinstance(ev, TurnEnd):
                error = ev.error
        if reply and not error:
            await self.write_event(Handled(text=" ".join(reply)).event())
        else:
            await self.write_event(NotHandled(text=" ".join(reply) or error).event())

    async def _start_pipeline(self, run: RunPipeline) -> None:
        if run.start_stage not in (PipelineStage.WAKE, PipelineStage.ASR, PipelineStage.TTS):
            raise ValueError(f"pipelines start at wake, asr or tts, not {run.start_stage.value}")
        self.pipeline = run
        if run.start_stage == PipelineStage.TTS:
            await self._speak(run.announce_text or "")
            self.pipeline = None
        elif run.start_stage == PipelineStage.WAKE:
            self._start_wake(run.wake_word_names or ([run.wake_word_name]
                                                     if run.wake_word_name else None))
            self.mode = "wake"
        else:
            self.mode = "pipeline"
            self._start_turn()

    def _start_turn(self) -> None:
        self.turn_audio = asyncio.Queue()
        self.turn_task = asyncio.create_task(self._turn(self.turn_audio))

    async def _turn(self, q: asyncio.Queue) -> None:
        """One pipeline turn through the Assistant, reported in Wyoming events."""
        assert self.pipeline is not None
        end = self.pipeline.end_stage

        async def audio() -> AsyncIterator[AudioChunk]:
            while (item := await q.get()) is not None:
                yield item

        reply: list[str] = []
        said_transcript = False
        gen = self.assistant.run_turn(audio(), session=self.session)
        audio_q: asyncio.Queue | None = None
        player: asyncio.Task | None = None
        try:
            async for ev in gen:
                if isinstance(ev, TranscriptEvent) and ev.transcript.is_final:
                    said_transcript = True
                    await self.write_event(Transcript(text=ev.transcript.text).event())
                    if end == PipelineStage.ASR:
                        return
                elif isinstance(ev, ReplyText):
                    reply.append(ev.text)
                elif isinstance(ev, ReplyAudio) and end == PipelineStage.TTS:
                    if audio_q is None:
                        audio_q = asyncio.Queue()
                        player = asyncio.create_task(self._send_audio(_drain(audio_q)))
                    await audio_q.put(ev.chunk)
                elif isinstance(ev, TurnEnd):
                    if ev.error == "no speech":
                        await self.write_event(Error(text="no speech",
                                                     code="stt-no-text-recognized").event())
                        return
                    if not said_transcript:
                        await self.write_event(Transcript(text=ev.transcript).event())
                    if end == PipelineStage.ASR:
                        return
                    if audio_q is not None and player is not None:
                        await audio_q.put(None)
                        await player  # the spoken reply first, then the text
                    await self.write_event(Handled(text=ev.reply or " ".join(reply)).event())
        finally:
            await gen.aclose()
            if player is not None and not player.done():
                player.cancel()
            self.pipeline = None
            self.mode = None


async def _drain(q: asyncio.Queue) -> AsyncIterator[AudioChunk]:
    while (item := await q.get()) is not None:
        yield item


class WyomingService:
    """The running Wyoming server (``await stop()`` to end it)."""

    def __init__(self, server: AsyncTcpServer):
        self.server = server

    @property
    def port(self) -> int:
        srv = self.server._server
        return srv.sockets[0].getsockname()[1] if srv and srv.sockets else 0

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.server.stop()
        if self.server._server is not None:
            self.server._server.close()


async def start_wyoming(cfg, assistant: Any, port: int | None = None) -> WyomingService:
    """Serve Wyoming on ``server.host``:``server.wyoming_port`` (0 = any free port)."""
    server = AsyncTcpServer(cfg.server.host, cfg.server.wyoming_port if port is None else port)
    await server.start(lambda r, w: HarkWyomingHandler(cfg, assistant, r, w))
    svc = WyomingService(server)
    log.info("Wyoming service on %s:%d", cfg.server.host, svc.port)
    return svc
