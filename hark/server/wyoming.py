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

Audio of 8-48 kHz, 16-bit, mono or stereo is converted to 16 kHz mono; other formats,
and malformed events, get an ``error`` event and never end the service.

Wyoming carries no credential, so the port is guarded by where it listens and who may
connect (``hark.auth`` covers the token-carrying listeners):

- it listens on ``server.wyoming_host`` (127.0.0.1 by default); any other address
  needs ``server.wyoming_allow``, the peers (addresses or networks) let in besides this
  machine. Any other peer is closed before a byte of it is read;
- at most ``server.wyoming_max_connections`` at once (more are closed at once), and a
  connection that sends nothing for ``server.wyoming_idle_s`` is closed;
- an event's header line, data and payload are capped (:data:`MAX_HEADER`,
  :data:`MAX_DATA`, :data:`MAX_PAYLOAD`): a bigger one, or a malformed one, ends that
  connection with an ``error`` event; audio buffered for one request is capped at
  :data:`MAX_BUFFERED_S` (the rest is dropped, and logged); texts at :data:`MAX_TEXT`;
- a write that the client does not take within :data:`WRITE_TIMEOUT_S` ends the
  connection; when a client leaves, its running turn is cancelled and its conversation
  forgotten. Each connection is its own conversation (a fresh session id).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk as WyChunk
from wyoming.audio import AudioChunkConverter, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
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
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize
from wyoming.wake import Detect, Detection, NotDetected

from hark.audio import SAMPLE_RATE, AudioChunk
from hark.errors import ConfigError, ProtocolError
from hark.pipeline.events import ReplyAudio, ReplyText, TranscriptEvent, TurnEnd

log = logging.getLogger(__name__)

HARK = Attribution(name="hark", url="https://github.com/")
CHUNK_SAMPLES = 1024

MAX_HEADER = 64 * 1024  # an event's JSON header line, bytes
MAX_DATA = 64 * 1024  # its data_length
MAX_PAYLOAD = 1024 * 1024  # its payload_length (5.4 s of 48 kHz stereo audio)
MAX_TEXT = 2000  # characters of a text to speak, recognize or handle
MAX_BUFFERED_S = 30.0  # audio held for one request (ASR) or queued for one turn
MIN_RATE, MAX_RATE = 8000, 48000
WRITE_TIMEOUT_S = 10.0
LOGGED_FAILURES = 5  # refused events logged per connection; the rest only counted


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad UTF-8/JSON, huge ints, deep nesting
        raise ProtocolError(f"wyoming event {what} is not valid JSON: "
                            f"{str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"wyoming event {what} must be a JSON object")
    return obj


def _length(header: dict[str, Any], key: str, limit: int) -> int:
    n = header.get(key)
    if n is None:
        return 0
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= limit:
        raise ProtocolError(f"wyoming event {key} {str(n)[:40]} is not a length from 0 "
                            f"to {limit}")
    return n


async def read_event(reader: asyncio.StreamReader, max_data: int = MAX_DATA) -> Event | None:
    """The next Wyoming event (the ``wyoming`` package's wire format), or None at a
    clean end of stream between events. Unlike the package's reader it never buffers
    more than :data:`MAX_HEADER` + ``max_data`` (:data:`MAX_DATA`) + :data:`MAX_PAYLOAD`
    bytes: an oversized, malformed or truncated event raises :class:`ProtocolError` (and
    only that). ``reader`` must have been made with ``limit=MAX_HEADER``."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("wyoming connection closed in the middle of an event") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError(f"wyoming event header longer than {MAX_HEADER} bytes") from None
    if len(line) > MAX_HEADER:
        raise ProtocolError(f"wyoming event header longer than {MAX_HEADER} bytes")
    header = _json_object(line, "header")
    etype = header.get("type")
    if not isinstance(etype, str) or not etype or len(etype) > 128:
        raise ProtocolError("wyoming event header has no valid 'type'")
    data = header.get("data")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ProtocolError(f"wyoming event '{etype[:64]}': 'data' must be an object")
    data_length = _length(header, "data_length", max_data)
    payload_length = _length(header, "payload_length", MAX_PAYLOAD)
    try:
        if data_length:
            data.update(_json_object(await reader.readexactly(data_length), "data"))
        payload = await reader.readexactly(payload_length) if payload_length else None
    except asyncio.IncompleteReadError:
        raise ProtocolError("wyoming connection closed in the middle of an event") from None
    return Event(type=etype, data=data, payload=payload)


def audio_format(data: dict[str, Any]) -> tuple[int, int, int]:
    """(rate, width, channels) of an ``audio-start``/``audio-chunk`` event, checked:
    8-48 kHz, 16-bit, one or two channels (else ``ValueError``)."""
    rate, width, channels = data.get("rate"), data.get("width"), data.get("channels")
    for v in (rate, width, channels):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"audio format needs integer rate, width and channels, got "
                             f"{str(rate)[:20]}/{str(width)[:20]}/{str(channels)[:20]}")
    if not MIN_RATE <= rate <= MAX_RATE or width != 2 or channels not in (1, 2):
        raise ValueError(f"unsupported audio format {rate} Hz, {width * 8}-bit, {channels} "
                         f"channel(s): hark takes {MIN_RATE}-{MAX_RATE} Hz, 16-bit, mono "
                         "or stereo")
    return rate, width, channels


def _text(text: object) -> str:
    if not isinstance(text, str):
        raise ValueError("text must be a string")
    if len(text) > MAX_TEXT:
        raise ValueError(f"text of {len(text)} characters is longer than {MAX_TEXT}")
    return text


class _ClientGone(ConnectionError):
    """The client stopped taking what is written to it."""


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
    """One Wyoming connection: :meth:`run` reads events (bounded, with an idle timeout)
    until the client leaves, then cancels what it started."""

    def __init__(self, cfg, assistant: Any, *args, session: str | None = None,
                 turn_slots: asyncio.Semaphore | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cfg = cfg
        self.assistant = assistant
        # the server's server.max_concurrent_turns: Wyoming's work takes a slot too
        self.turn_slots = turn_slots or contextlib.nullcontext()
        self.mode: str | None = None  # "asr" | "wake" | "pipeline"
        self.converter = AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)
        self.audio: list[np.ndarray] = []
        self.audio_samples = 0  # in self.audio
        self.dropped_s = 0.0  # audio over MAX_BUFFERED_S dropped in this connection
        self.detector = None
        self.pipeline: RunPipeline | None = None
        self.turn_audio: asyncio.Queue | None = None
        self.queued_samples = 0  # in turn_audio
        self.turn_task: asyncio.Task | None = None
        # unique per connection (never reused): each client is its own conversation
        self.session = session or f"wyoming-{uuid.uuid4().hex[:12]}"
        self.failed_events = 0  # refused events; past LOGGED_FAILURES, counted not logged

    async def run(self) -> None:
        idle = float(getattr(self.cfg.server, "wyoming_idle_s", 120.0))
        try:
            while True:
                try:
                    event = await asyncio.wait_for(read_event(self.reader), idle)
                except TimeoutError:
                    log.info("wyoming %s: nothing for %.0f s: closing", self.session, idle)
                    return
                except ProtocolError as exc:
                    log.info("wyoming %s: closing: %s", self.session, exc)
                    with contextlib.suppress(Exception):
                        await self.write_event(Error(text=str(exc), code="protocol").event())
                    return
                if event is None or not await self.handle_event(event):
                    return
        except (ConnectionError, OSError):
            return
        finally:
            if self.failed_events > LOGGED_FAILURES:
                log.info("wyoming %s: %d refused events in all (%d more not logged)",
                         self.session, self.failed_events,
                         self.failed_events - LOGGED_FAILURES)
            await self.disconnect()
            self.writer.close()

    async def disconnect(self) -> None:
        """The client left: cancel its turn and forget its conversation."""
        task, self.turn_task = self.turn_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self.audio, self.audio_samples = [], 0
        reset = getattr(getattr(self.assistant, "llm", None), "reset", None)
        if callable(reset):
            with contextlib.suppress(Exception):
                reset(self.session)

    async def write_event(self, event: Event) -> None:
        try:
            await asyncio.wait_for(async_write_event(event, self.writer), WRITE_TIMEOUT_S)
        except TimeoutError:
            raise _ClientGone(f"client took nothing for {WRITE_TIMEOUT_S:.0f} s") from None

    async def handle_event(self, event: Event) -> bool:
        try:
            await self._handle(event)
        except (ConnectionError, OSError):
            raise  # the client is gone: run() ends the connection
        except Exception as exc:  # noqa: BLE001 - a bad event never ends the service
            self.failed_events += 1
            if self.failed_events <= LOGGED_FAILURES:  # a hostile peer cannot flood the log
                log.info("wyoming %s: %s failed: %s", self.session, event.type[:64], exc)
            await self.write_event(Error(text=f"{event.type[:64]}: {str(exc)[:500]}",
                                         code="hark-error").event())
        return True

    async def _handle(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.write_event(describe(self.cfg, self.assistant).event())
        elif Transcribe.is_type(event.type):
            self.mode, self.audio, self.audio_samples = "asr", [], 0
        elif Detect.is_type(event.type):
            self._start_wake(Detect.from_event(event).names)
            self.mode = "wake"
        elif RunPipeline.is_type(event.type):
            await self._start_pipeline(RunPipeline.from_event(event))
        elif AudioStart.is_type(event.type):
            audio_format(event.data)
            self.converter = AudioChunkConverter(rate=SAMPLE_RATE, width=2, channels=1)
        elif WyChunk.is_type(event.type):
            _rate, width, channels = audio_format(event.data)
            if len(event.payload or b"") % (width * channels):
                raise ValueError("audio chunk is not a whole number of sample frames")
            await self._audio(WyChunk.from_event(event))
        elif AudioStop.is_type(event.type):
            await self._audio_stop()
        elif Synthesize.is_type(event.type):
            await self._speak(_text(event.data.get("text")))
        elif Recognize.is_type(event.type):
            await self._recognize(_text(event.data.get("text")))
        elif Transcript.is_type(event.type):
            await self._handle_text(_text(event.data.get("text")))
        else:
            await self.write_event(Error(text=f"unsupported event type '{event.type[:64]}'",
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

    def _room(self, held: int, n: int) -> bool:
        """Whether ``n`` more samples fit beside ``held`` under MAX_BUFFERED_S (the
        first refusal of a connection is logged)."""
        if held + n <= MAX_BUFFERED_S * SAMPLE_RATE:
            return True
        if not self.dropped_s:
            log.warning("wyoming %s: more than %.0f s of audio buffered: dropping the rest",
                        self.session, MAX_BUFFERED_S)
        self.dropped_s += n / SAMPLE_RATE
        return False

    async def _audio(self, chunk: WyChunk) -> None:
        if self.mode is None:
            return  # no request wants audio
        if self.mode == "asr" and self.audio_samples >= MAX_BUFFERED_S * SAMPLE_RATE:
            self._room(self.audio_samples, 1)  # full: not even converted
            return
        c = self.converter.convert(chunk)
        samples = np.frombuffer(c.audio, dtype="<i2").astype(np.int16)
        if self.mode == "asr":
            if self._room(self.audio_samples, len(samples)):
                self.audio.append(samples)
                self.audio_samples += len(samples)
        elif self.mode == "wake" and self.detector is not None:
            ev = self.detector.process(samples)
            if ev is not None:
                await self.write_event(Detection(name=ev.keyword,
                                                 timestamp=int(ev.stream_s * 1000)).event())
                if self.pipeline is not None:  # pipeline: the turn starts now
                    self.mode = "pipeline"
                    self._start_turn()
        elif self.mode == "pipeline" and self.turn_audio is not None:
            if self._room(self.queued_samples, len(samples)):
                self.queued_samples += len(samples)
                self.turn_audio.put_nowait(AudioChunk(samples, SAMPLE_RATE))

    async def _audio_stop(self) -> None:
        if self.mode == "asr":
            audio = np.concatenate(self.audio) if self.audio else np.zeros(0, np.int16)
            self.audio, self.audio_samples = [], 0
            async with self.turn_slots:
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
        async with self.turn_slots:
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
        async with self.turn_slots:
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
        self.queued_samples = 0
        self.turn_task = asyncio.create_task(self._turn(self.turn_audio))

    async def _turn(self, q: asyncio.Queue) -> None:
        """One pipeline turn through the Assistant, reported in Wyoming events, in one of
        the server's turn slots."""
        async with self.turn_slots:
            await self._pipeline_turn(q)

    async def _pipeline_turn(self, q: asyncio.Queue) -> None:
        assert self.pipeline is not None
        end = self.pipeline.end_stage

        async def audio() -> AsyncIterator[AudioChunk]:
            while (item := await q.get()) is not None:
                self.queued_samples -= len(item.samples)
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


def check_wyoming_access(host: str, allow: list[str]
                         ) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The networks of ``allow`` (``server.wyoming_allow``). Raises :class:`ConfigError`
    for an entry that is no address or network, or for a listen ``host`` beyond this
    machine with an empty allow-list (Wyoming carries no token)."""
    nets = []
    for entry in allow or []:
        try:
            nets.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError as exc:
            raise ConfigError(f"server.wyoming_allow: {entry!r} is not an address or network",
                              fix='e.g. wyoming_allow = ["192.168.1.20", "10.0.0.0/24"]'
                              ) from exc
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not nets:
        raise ConfigError(
            f"server.wyoming_host = {host!r} would open the Wyoming port beyond this "
            "machine, and Wyoming carries no token",
            fix="list the clients that may connect (e.g. Home Assistant's address) in "
                "server.wyoming_allow, or keep wyoming_host = \"127.0.0.1\"")
    return nets


class WyomingService:
    """The running Wyoming server (``await stop()`` to end it): every connection is
    checked against the allow-list and the connection cap before anything is read."""

    def __init__(self, cfg, assistant: Any, host: str,
                 turn_slots: asyncio.Semaphore | None = None):
        self.cfg = cfg
        self.assistant = assistant
        self.turn_slots = turn_slots
        self.allowed = check_wyoming_access(host, cfg.server.wyoming_allow)
        self.max_connections = int(getattr(cfg.server, "wyoming_max_connections", 16))
        self.handlers: dict[asyncio.Task, HarkWyomingHandler] = {}
        self.refused = 0  # connections closed unread (not allowed, or over the cap)
        self._server: asyncio.base_events.Server | None = None

    def peer_allowed(self, host: str | None) -> bool:
        """This machine, or an address in ``server.wyoming_allow``."""
        try:
            addr = ipaddress.ip_address((host or "").split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return addr.is_loopback or any(addr in net for net in self.allowed)

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._on_connect, host, port,
                                                  limit=MAX_HEADER)

    async def _on_connect(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        host = peer[0] if peer else None
        if not self.peer_allowed(host):
            self.refused += 1
            log.warning("wyoming: refused %s (not in server.wyoming_allow)", host)
            writer.transport.abort()
            return
        if len(self.handlers) >= self.max_connections:
            self.refused += 1
            log.warning("wyoming: refused %s: %d connections open "
                        "(server.wyoming_max_connections)", host, len(self.handlers))
            writer.transport.abort()
            return
        handler = HarkWyomingHandler(self.cfg, self.assistant, reader, writer,
                                     turn_slots=self.turn_slots)
        task = asyncio.current_task()
        assert task is not None
        self.handlers[task] = handler
        try:
            await handler.run()
        except Exception:  # noqa: BLE001 - one connection never ends the service
            log.exception("wyoming connection from %s failed", host)
        finally:
            self.handlers.pop(task, None)

    @property
    def port(self) -> int:
        srv = self._server
        return srv.sockets[0].getsockname()[1] if srv and srv.sockets else 0

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self.handlers):
            task.cancel()
        for task in list(self.handlers):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 2.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)


async def start_wyoming(cfg, assistant: Any, port: int | None = None,
                        host: str | None = None,
                        turn_slots: asyncio.Semaphore | None = None) -> WyomingService:
    """Serve Wyoming on ``server.wyoming_host``:``server.wyoming_port`` (``host``/``port``
    override; port 0 = any free port). Raises :class:`ConfigError` for a listen address
    beyond this machine without ``server.wyoming_allow``, or a taken port."""
    host = cfg.server.wyoming_host if host is None else host
    svc = WyomingService(cfg, assistant, host, turn_slots)
    try:
        await svc.start(host, cfg.server.wyoming_port if port is None else port)
    except OSError as exc:
        raise ConfigError(f"cannot serve Wyoming on {host}: {exc.strerror or exc}",
                          fix="stop what uses the port or set server.wyoming_port") from exc
    log.info("Wyoming service on %s:%d", host, svc.port)
    return svc
