"""hark drives Wyoming satellites (``wyoming-satellite``, Home Assistant's Raspberry Pi
satellites) as Home Assistant does.

A Wyoming satellite is itself the server: it listens on a TCP port and waits for a
voice assistant to connect. For each address in ``server.wyoming_satellites`` (and each
``hark serve --wyoming-satellite URI``) a :class:`SatelliteLink` connects as a client,
sends ``describe`` and reads ``info`` (which must describe a satellite), then sends
``run-satellite``. From then on the satellite leads:

- ``run-pipeline`` with start stage ``asr``: the satellite heard its wake word itself
  (its ``--wake-uri``/``--wake-word-name``) and streams the command;
- ``run-pipeline`` with start stage ``wake``: it streams all the time (no local wake
  word, or after its own VAD); hark runs its own wake word detector
  (:class:`hark.wake.detector.WakeWordDetector` with the configured second stage,
  ``wake.keyword`` unless the pipeline names one hark has) and answers ``detection``.
  After each turn it listens for the wake word again on the same stream, until the
  satellite sends ``audio-stop`` or a new ``run-pipeline``; a wake word heard while a
  reply is being sent interrupts that reply.

The satellite's ``audio-chunk`` events (any rate from 8 to 48 kHz, 16-bit, mono or
stereo; anything else is refused with one log line per format, an ``error`` event per
pipeline and, after the satellite's own wake word, a spoken apology) are converted
to 16 kHz mono and fed to :meth:`hark.pipeline.assistant.Assistant.run_turn`, so hark's
own end of turn decides when the command is over; ``audio-stop`` ends the audio too.
A turn also ends when no speech starts within :attr:`SatelliteLink.no_speech_s`, when
no audio arrives for :attr:`SatelliteLink.audio_gap_s` (a satellite that stops
streaming without ``audio-stop``), or at the deadline (``vad.max_utterance_s`` plus
``vad.eot_long_ms`` and a second after speech starts).

hark answers with the events the satellite expects (those Home Assistant sends):
``voice-started``/``voice-stopped``, then ``transcript`` as soon as the command is
transcribed, then the reply as ``audio-start``/``audio-chunk``.../``audio-stop`` at the
TTS voice's rate, streamed as it is synthesized (the satellite converts it for its
speaker). Every turn that runs to its end sends exactly one ``transcript`` (empty when
nothing was heard, after an ``error`` event): wyoming-satellite 1.0.0 goes back to
waiting for its wake word on ``transcript``, and on nothing else. ``ping`` is answered
with ``pong``; ``streaming-started``, ``played`` and the other notices a satellite may
send are logged at debug level.

Announcements (a timer ending; :meth:`Assistant.on_notify`) are spoken to the satellite
whose turn set them (its session is ``wyoming-satellite-HOST:PORT``, stable across
reconnections). A satellite that is down, refuses the connection, drops it (mid-turn
too) or does not answer ``describe`` is retried with exponential backoff
(:attr:`SatelliteLink.backoff_min_s` doubling up to :attr:`SatelliteLink.backoff_max_s`,
back to the minimum after a connection that held), and so is one that reads nothing for
:attr:`SatelliteLink.write_timeout_s` (its connection is dropped); each failure is one
log line. Several satellites are driven at once, each on its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from wyoming.asr import Transcript
from wyoming.audio import AudioChunk as WyChunk
from wyoming.audio import AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.satellite import RunSatellite
from wyoming.vad import VoiceStarted, VoiceStopped
from wyoming.wake import Detection

from hark.audio import SAMPLE_RATE, AudioChunk
from hark.config import Config, parse_uri
from hark.pipeline.assistant import NO_SPEECH
from hark.server.reconnect import Disconnected, ReconnectingLink
from hark.pipeline.events import (
    ReplyAudio,
    SpeechEnded,
    SpeechStarted,
    TranscriptEvent,
    TurnEnd,
)

log = logging.getLogger(__name__)

#: satellite audio hark takes (converted to 16 kHz mono 16-bit)
MIN_RATE, MAX_RATE = 8000, 48000
WIDTH = 2
CHANNELS = (1, 2)
CHUNK_SAMPLES = 1024  # reply audio samples per audio-chunk event
PRE_ROLL_S = 0.1  # audio before the wake word's detection point given to the turn
FORMAT_ERROR_TEXT = "Sorry, this satellite sends audio in a format I cannot use."


class AudioFormatError(ValueError):
    """Satellite audio hark does not take (its message says what and what would do)."""


def check_format(rate: Any, width: Any, channels: Any) -> None:
    """Raise :class:`AudioFormatError` unless hark takes audio of this format."""
    ok = (isinstance(rate, int) and MIN_RATE <= rate <= MAX_RATE and width == WIDTH
          and channels in CHANNELS)
    if not ok:
        raise AudioFormatError(
            f"audio at {rate} Hz, {width}-byte samples, {channels} channel(s) is not taken: "
            f"hark takes {MIN_RATE}-{MAX_RATE} Hz, 16-bit samples (width {WIDTH}), "
            "1 or 2 channels")


class SatelliteAudio:
    """One satellite's audio stream converted to ``rate`` (16 kHz by default) mono int16:
    stereo is mixed down, other rates are resampled by libswresample (PyAV), whose state
    carries over from chunk to chunk. A new format (or :meth:`reset`) starts a new
    stream. (A remote Wyoming TTS service's audio is converted by it too.)"""

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self.rate = rate
        self._format: tuple[int, int, int] | None = None
        self._resampler: Any = None

    def reset(self) -> None:
        self._format = None
        self._resampler = None

    def convert(self, chunk: WyChunk) -> np.ndarray:
        """The chunk's samples at ``rate``, mono. Raises :class:`AudioFormatError`."""
        check_format(chunk.rate, chunk.width, chunk.channels)
        frame_bytes = chunk.width * chunk.channels
        if len(chunk.audio) % frame_bytes:
            raise AudioFormatError(f"an audio chunk of {len(chunk.audio)} bytes is not whole "
                                   f"{chunk.channels}-channel 16-bit frames")
        fmt = (chunk.rate, chunk.width, chunk.channels)
        if fmt != self._format:
            self._format, self._resampler = fmt, None
        samples = np.frombuffer(chunk.audio, dtype="<i2").astype(np.int16)
        if chunk.rate == self.rate and chunk.channels == 1:
            return samples
        if not len(samples):
            return samples
        import av

        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self.rate)
        layout = "mono" if chunk.channels == 1 else "stereo"
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout=layout)
        frame.sample_rate = chunk.rate
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)


@dataclass
class LinkStats:
    """What happened on one satellite link (for logs, tests and the benchmark)."""

    connects: int = 0
    failures: int = 0  # failed connection attempts and dropped connections
    turns: int = 0
    wakes: int = 0  # wake words hark detected on an always-streaming satellite
    refused_chunks: int = 0  # audio chunks in a format hark does not take
    announcements: int = 0


@dataclass
class _Turn:
    """One turn in flight on a satellite."""

    run: RunPipeline
    audio: asyncio.Queue = field(default_factory=asyncio.Queue)  # AudioChunk, None = end
    listening: bool = True  # the turn still takes audio
    speech: bool = False  # speech has started
    deadline: float = 0.0  # monotonic time its listening ends at the latest
    transcript_sent: bool = False
    audio_started: bool = False
    task: asyncio.Task | None = None


class SatelliteLink(ReconnectingLink):
    """Drives one wyoming-satellite at ``uri`` (``tcp://HOST:PORT``) until :meth:`stop`.

    ``wake_factory()`` makes the wake word detector used for satellites that stream all
    the time (default: ``wake.keyword`` with its second stage, as the Wyoming service
    does); ``turn_listeners`` are called with each finished turn's
    :class:`~hark.trace.Trace` (``Server.turn_listeners``: traces, metrics)."""

    kind = "wyoming satellite"
    backoff_max_s = 30.0
    connect_timeout_s = 5.0
    describe_timeout_s = 5.0
    no_speech_s = 8.0  # after the start of a turn, no speech this long ends it
    audio_gap_s = 2.0  # no audio this long while a turn listens ends its audio
    write_timeout_s = 10.0  # a satellite that reads nothing this long is dropped

    def __init__(self, uri: str, cfg: Config, assistant: Any, *,
                 wake_factory: Callable[[str | None], Any] | None = None,
                 turn_listeners: list[Callable[[Any], Any]] | None = None):
        super().__init__()
        self.uri = uri
        self.host, self.port = parse_uri(uri, ("tcp",), "wyoming satellite")
        self.cfg = cfg
        self.assistant = assistant
        self.session = f"wyoming-satellite-{self.host}:{self.port}"
        self.name = uri  # the satellite's own name once its info is read
        self.area: str | None = None
        self.stats = LinkStats()
        self.turn_listeners = turn_listeners if turn_listeners is not None else []
        self.connected = asyncio.Event()  # set while run-satellite has been sent
        self._wake_factory = wake_factory or self._default_wake
        self._client: AsyncTcpClient | None = None
        self._write_lock = asyncio.Lock()
        self._speaker = asyncio.Lock()  # one audio-start..audio-stop at a time
        self._audio = SatelliteAudio()
        self._pipeline: RunPipeline | None = None
        self._detector: Any = None  # listening for the wake word (always-streaming)
        self._detectors: dict[str | None, Any] = {}  # keyword -> detector, made once
        self._tasks: set[asyncio.Task] = set()
        self._wake_exec: Any = None
        self._turn: _Turn | None = None
        self._pre_roll: deque[np.ndarray] = deque()
        self._pre_roll_n = 0
        self._refused: set[tuple[Any, ...]] = set()
        self._format_error_sent = False

    # --- lifecycle ----------------------------------------------------------------------
    async def stop(self) -> None:
        await super().stop()
        if self._wake_exec is not None:
            self._wake_exec.shutdown()
            self._wake_exec = None

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused (is wyoming-satellite running there?)"
        return super()._reason(exc)

    async def _connect_and_serve(self) -> str:
        """One connection, until it ends; returns why it ended."""
        client = AsyncTcpClient(self.host, self.port)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await client.connect()
        except TimeoutError as exc:
            raise TimeoutError(f"no connection within {self.connect_timeout_s:g} s") from exc
        self._client = client
        await self._send(Describe().event())
        info = await self._read_info()
        sat = info.satellite
        if sat is None:
            offers = [k for k in ("asr", "tts", "wake", "handle", "intent", "mic", "snd")
                      if getattr(info, k, None)]
            raise Disconnected(
                "is not a satellite: its info describes no satellite"
                + (f" (it offers {', '.join(offers)})" if offers else "")
                + "; server.wyoming_satellites must list wyoming-satellite addresses")
        self.name, self.area = sat.name or self.uri, sat.area
        await self._send(RunSatellite().event())
        self.stats.connects += 1
        self.connected.set()
        log.info("wyoming satellite %s connected%s: running it", self.label,
                 f" (area {self.area})" if self.area else "")
        got_any = False
        while True:
            event = await client.read_event()
            if event is None:
                if not got_any:
                    return ("closed the connection after run-satellite (is another server, "
                            "such as Home Assistant, driving it?)")
                return "disconnected" + (" mid-turn" if self._turn is not None else "")
            got_any = True
            await self._on_event(event)

    async def _read_info(self) -> Info:
        assert self._client is not None
        deadline = time.monotonic() + self.describe_timeout_s
        while True:
            left = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(left, 0.0)):
                    event = await self._client.read_event()
            except TimeoutError as exc:
                raise TimeoutError(f"no answer to describe within "
                                   f"{self.describe_timeout_s:g} s") from exc
            if event is None:
                raise Disconnected("closed the connection before answering describe")
            if Info.is_type(event.type):
                try:
                    return Info.from_event(event)
                except (AttributeError, KeyError, TypeError, ValueError) as exc:
                    raise Disconnected(f"sent an info event hark cannot read ({exc!r})") from exc
            log.debug("wyoming satellite %s: %s before info, ignored", self.label, event.type)

    async def _teardown(self) -> None:
        self.connected.clear()
        if self._turn is not None:
            await self._cancel_turn()
        for task in list(self._tasks):
            task.cancel()
        self._pipeline = None
        self._detector = None
        self._audio.reset()
        self._refused.clear()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()

    # --- events from the satellite --------------------------------------------------------
    async def _send(self, event: Event) -> None:
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        async with self._write_lock:
            try:
                async with asyncio.timeout(self.write_timeout_s):
                    await client.write_event(event)
            except TimeoutError:
                # it stopped reading: drop the connection (the reader sees it end and
                # reconnects) rather than wait on it forever
                writer = getattr(client, "_writer", None)
                if writer is not None:
                    writer.transport.abort()
                raise ConnectionError(f"the satellite read nothing for "
                                      f"{self.write_timeout_s:g} s") from None

    async def _on_event(self, event: Event) -> None:
        etype = event.type
        if WyChunk.is_type(etype):
            await self._on_audio(event)
            return
        try:
            if RunPipeline.is_type(etype):
                await self._run_pipeline(RunPipeline.from_event(event))
            elif AudioStart.is_type(etype):
                self._audio.reset()
            elif AudioStop.is_type(etype):
                await self._audio_stop()
            elif Ping.is_type(etype):
                await self._send(Pong(text=Ping.from_event(event).text).event())
            elif Error.is_type(etype):
                log.warning("wyoming satellite %s reports an error: %s", self.label,
                            Error.from_event(event).text)
            else:  # streaming-started/stopped, played, voice-started, ...: notices only
                log.debug("wyoming satellite %s: %s", self.label, etype)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            # a malformed event is answered and dropped; the connection serves on
            log.warning("wyoming satellite %s: malformed %s event %r: %r", self.label,
                        etype[:64], event.data, exc)
            await self._send(Error(text=f"malformed {etype[:64]} event: {exc}",
                                   code="hark-bad-event").event())

    async def _run_pipeline(self, run: RunPipeline) -> None:
        if self._turn is not None:  # the satellite starts over (its wake word again)
            await self._cancel_turn()
        if run.start_stage not in (PipelineStage.WAKE, PipelineStage.ASR):
            log.warning("wyoming satellite %s asks for a pipeline from %s; hark runs them "
                        "from wake or asr", self.label, run.start_stage.value)
            await self._send(Error(text=f"pipelines start at wake or asr, not "
                                   f"{run.start_stage.value}", code="hark-pipeline").event())
            self._pipeline = None
            return
        self._pipeline = run
        self._format_error_sent = False
        log.info("wyoming satellite %s: pipeline %s -> %s", self.label, run.start_stage.value,
                 run.end_stage.value)
        if run.start_stage == PipelineStage.ASR:
            self._detector = None
            self._start_turn([])
        else:
            names = run.wake_word_names or ([run.wake_word_name] if run.wake_word_name
                                            else None)
            if self._wake_exec is None:
                from hark.aio import StageExecutor

                self._wake_exec = StageExecutor("wyoming-wake")
            keyword = _pick_keyword(names)
            detector = self._detectors.get(keyword)
            if detector is None:  # made once per keyword: loading takes a while
                detector = await self._wake_exec.run(self._wake_factory, keyword)
                self._detectors[keyword] = detector
            else:
                detector.reset()
            self._detector = detector
            keep_s = PRE_ROLL_S + (getattr(getattr(self._detector, "verifier", None),
                                           "wait_s", 0.0) or 0.0)
            self._pre_roll = deque()
            self._pre_roll_n = int(keep_s * SAMPLE_RATE)

    async def _audio_stop(self) -> None:
        """The satellite's stream ended: the turn has all its audio; no wake word now."""
        if self._turn is not None and self._turn.listening:
            self._turn.audio.put_nowait(None)  # after the audio still queued
        if self._pipeline is not None and self._pipeline.start_stage == PipelineStage.WAKE:
            self._pipeline = None
        self._detector = None
        self._audio.reset()

    async def _on_audio(self, event: Event) -> None:
        try:
            chunk = WyChunk.from_event(event)
            samples = self._audio.convert(chunk)
        except AudioFormatError as exc:
            await self._refuse_audio(event, str(exc))
            return
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            await self._refuse_audio(event, f"a malformed audio-chunk ({exc!r})")
            return
        if not len(samples):
            return
        t = time.monotonic() - len(samples) / SAMPLE_RATE
        turn = self._turn
        if turn is not None and turn.listening:
            turn.audio.put_nowait(AudioChunk(samples, SAMPLE_RATE, t))
            return
        if self._detector is None:
            return  # no pipeline asked for this audio
        self._pre_roll.append(samples)
        held = sum(len(s) for s in self._pre_roll)
        while self._pre_roll and held - len(self._pre_roll[0]) >= self._pre_roll_n:
            held -= len(self._pre_roll.popleft())
        detector = self._detector
        wake = await self._wake_exec.run(detector.process, AudioChunk(samples, SAMPLE_RATE, t))
        if wake is None or detector is not self._detector:
            return
        self.stats.wakes += 1
        late_s = float(getattr(wake, "late_s", 0.0) or 0.0)
        log.info("wyoming satellite %s: wake word '%s' (%.2f)", self.label, wake.keyword,
                 getattr(wake, "probability", 0.0))
        if self._turn is not None:  # a wake word over the reply: barge-in
            await self._cancel_turn()
        await self._send(Detection(name=wake.keyword,
                                   timestamp=int(wake.stream_s * 1000)).event())
        run = self._pipeline
        if run is None or run.end_stage == PipelineStage.WAKE:
            return
        keep = int((PRE_ROLL_S + late_s) * SAMPLE_RATE)
        audio = np.concatenate(list(self._pre_roll)) if self._pre_roll else np.zeros(0, np.int16)
        self._pre_roll.clear()
        self._start_turn([audio[-keep:]] if keep else [])

    async def _refuse_audio(self, event: Event, why: str) -> None:
        self.stats.refused_chunks += 1
        d = event.data or {}
        key = (d.get("rate"), d.get("width"), d.get("channels"), why)
        if key not in self._refused:
            self._refused.add(key)
            log.warning("wyoming satellite %s: refusing its audio: %s", self.label, why)
        run = self._pipeline
        if run is None or self._format_error_sent:
            return
        self._format_error_sent = True  # once per pipeline run
        if self._turn is not None:
            await self._cancel_turn()
        await self._send(Error(text=why, code="hark-audio-format").event())
        if run.start_stage == PipelineStage.ASR:
            # someone said the wake word and is listening: say why nothing happens, then
            # let the satellite go back to waiting for its wake word
            self._pipeline = None
            task = asyncio.create_task(self._say_format_error(run))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _say_format_error(self, run: RunPipeline) -> None:
        try:
            if run.end_stage == PipelineStage.TTS:
                await self._speak(FORMAT_ERROR_TEXT)
            await self._send(Transcript(text="").event())
        except (ConnectionError, OSError) as exc:
            log.info("wyoming satellite %s: could not report the audio format: %s",
                     self.label, exc)

    # --- turns ----------------------------------------------------------------------------
    def _start_turn(self, pre_roll: list[np.ndarray]) -> None:
        assert self._pipeline is not None
        turn = _Turn(self._pipeline, deadline=time.monotonic() + self.no_speech_s)
        t = time.monotonic()
        for samples in pre_roll:
            if len(samples):
                turn.audio.put_nowait(AudioChunk(samples, SAMPLE_RATE,
                                                 t - len(samples) / SAMPLE_RATE))
        self._turn = turn
        self.stats.turns += 1
        turn.task = asyncio.create_task(self._run_turn(turn))

    async def _cancel_turn(self) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        if turn.task is not None and not turn.task.done():
            turn.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await turn.task

    async def _listen(self, turn: _Turn) -> AsyncIterator[AudioChunk]:
        """The turn's audio, until the satellite's audio-stop, a gap in the audio or the
        turn's deadline. (``asyncio.timeout``, not ``wait_for``: on Python 3.11 a turn
        cancelled while ``wait_for`` waited on the queue went on until the timeout.)"""
        try:
            while turn.listening:
                left = turn.deadline - time.monotonic()
                if left <= 0:
                    if turn.speech:
                        log.warning("wyoming satellite %s: no end of turn by the turn's "
                                    "deadline; ending it", self.label)
                    else:
                        log.info("wyoming satellite %s: no speech within %.1f s; ending the "
                                 "turn", self.label, self.no_speech_s)
                    return
                try:
                    async with asyncio.timeout(min(self.audio_gap_s, left)):
                        chunk = await turn.audio.get()
                except TimeoutError:
                    if time.monotonic() < turn.deadline:
                        log.warning("wyoming satellite %s: no audio for %.1f s mid-turn and no "
                                    "audio-stop; ending the turn", self.label, self.audio_gap_s)
                        return
                    continue  # the deadline: logged at the top of the loop
                if chunk is None:
                    return
                yield chunk
        finally:
            self._stop_listening(turn)

    async def _run_turn(self, turn: _Turn) -> None:
        """One turn through the Assistant, reported in the events the satellite expects."""
        end = turn.run.end_stage
        # the satellite's area (its info) is the context of what it heard
        where = {"area": self.area} if self.area else {}
        gen = self.assistant.run_turn(self._listen(turn), session=self.session, **where)
        try:
            async for ev in gen:
                if isinstance(ev, SpeechStarted):
                    turn.speech = True
                    vad = self.cfg.vad
                    turn.deadline = (time.monotonic() + vad.max_utterance_s
                                     + vad.eot_long_ms / 1000 + 1.0)
                    await self._send(VoiceStarted().event())
                elif isinstance(ev, SpeechEnded):
                    self._stop_listening(turn)
                    await self._send(VoiceStopped().event())
                elif isinstance(ev, TranscriptEvent) and ev.transcript.is_final:
                    if not turn.transcript_sent:
                        await self._send_transcript(turn, ev.transcript.text)
                    if end == PipelineStage.ASR:
                        return
                elif isinstance(ev, ReplyAudio) and end == PipelineStage.TTS:
                    await self._reply_audio(turn, ev.chunk)
                elif isinstance(ev, TurnEnd):
                    await self._turn_end(turn, ev)
        except (ConnectionError, OSError) as exc:  # the reader logs the connection's end
            log.info("wyoming satellite %s: turn dropped, connection lost (%s)", self.label,
                     exc)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the satellite must not be left streaming
            log.exception("wyoming satellite %s: turn failed", self.label)
            with contextlib.suppress(ConnectionError, OSError):
                await self._send(Error(text="the turn failed", code="hark-error").event())
                if not turn.transcript_sent:
                    await self._send_transcript(turn, "")
        finally:
            self._stop_listening(turn)
            await gen.aclose()
            if turn.audio_started:  # cut short (barge-in, a new pipeline): close it
                turn.audio_started = False
                self._speaker.release()
                with contextlib.suppress(ConnectionError, OSError):
                    await self._send(AudioStop().event())
            if self._turn is turn:
                self._turn = None
                if turn.run.start_stage == PipelineStage.ASR and self._pipeline is turn.run:
                    self._pipeline = None

    def _stop_listening(self, turn: _Turn) -> None:
        """The turn takes no more audio. On an always-streaming satellite the wake word
        detector listens again from here: a fresh stream, as the turn's audio went
        past it."""
        if not turn.listening:
            return
        turn.listening = False
        if self._detector is not None:
            self._detector.reset()
        self._pre_roll.clear()

    async def _send_transcript(self, turn: _Turn, text: str) -> None:
        turn.transcript_sent = True
        await self._send(Transcript(text=text).event())

    async def _reply_audio(self, turn: _Turn, chunk: AudioChunk) -> None:
        rate = chunk.rate
        if not turn.audio_started:
            await self._speaker.acquire()
            turn.audio_started = True
            await self._send(AudioStart(rate=rate, width=2, channels=1).event())
        await self._send_samples(chunk.samples, rate)

    async def _send_samples(self, samples: np.ndarray, rate: int) -> None:
        data = samples.astype("<i2", copy=False)
        for i in range(0, len(data), CHUNK_SAMPLES):
            await self._send(WyChunk(rate=rate, width=2, channels=1,
                                     audio=data[i:i + CHUNK_SAMPLES].tobytes()).event())

    async def _turn_end(self, turn: _Turn, ev: TurnEnd) -> None:
        if not ev.error:
            log.info("wyoming satellite %s: heard %r, answered %r", self.label, ev.transcript,
                     ev.reply)
        if ev.error == NO_SPEECH:
            log.info("wyoming satellite %s: no speech heard", self.label)
            await self._send(Error(text="no speech was heard",
                                   code="stt-no-text-recognized").event())
        elif ev.error:
            log.warning("wyoming satellite %s: the turn failed: %s", self.label, ev.error)
        if not turn.transcript_sent:
            await self._send_transcript(turn, ev.transcript or "")
        if turn.audio_started:
            turn.audio_started = False
            self._speaker.release()
            await self._send(AudioStop().event())
        if ev.error and ev.error != NO_SPEECH:
            await self._send(Error(text=ev.error, code="hark-error").event())
        trace = ev.trace
        if trace is not None:
            trace.info.setdefault("satellite", self.name)
            trace.info.setdefault("frontend", "wyoming-satellite")
            for cb in self.turn_listeners:
                try:
                    cb(trace)
                except Exception:
                    log.exception("turn listener failed")

    # --- announcements ------------------------------------------------------------------
    async def announce(self, text: str) -> bool:
        """Speak ``text`` on the satellite (after any reply being sent). False, with a
        log line, when it is not connected or the connection fails."""
        if not self.connected.is_set():
            log.warning("wyoming satellite %s is not connected; cannot say: %s",
                        self.label, text)
            return False
        log.info("wyoming satellite %s: announcing: %s", self.label, text)
        try:
            await self._speak(text)
        except (ConnectionError, OSError) as exc:
            log.warning("wyoming satellite %s: announcement lost (%s): %s", self.label,
                        exc, text)
            return False
        self.stats.announcements += 1
        return True

    async def _speak(self, text: str) -> None:
        async with self._speaker:
            started = False
            try:
                async for chunk in self.assistant.speak(text):
                    if not started:
                        await self._send(AudioStart(rate=chunk.rate, width=2,
                                                    channels=1).event())
                        started = True
                    await self._send_samples(chunk.samples, chunk.rate)
            finally:
                if started:
                    with contextlib.suppress(ConnectionError, OSError):
                        await self._send(AudioStop().event())

    # --- defaults -----------------------------------------------------------------------
    def _default_wake(self, keyword: str | None) -> Any:
        from hark.wake.detector import WakeWordDetector
        from hark.wake.verifier import load_verifier

        w = self.cfg.wake
        name = keyword or w.keyword
        verifier = load_verifier(w.verifier, name, w.verifier_threshold, w.verifier_wait_s)
        return WakeWordDetector(name, refractory_s=w.refractory_s, verifier=verifier)


def _pick_keyword(names: list[str] | None) -> str | None:
    """The first wake word the pipeline names that hark has (None: ``wake.keyword``)."""
    from hark.wake.detector import KEYWORDS

    return next((n for n in (names or []) if n in KEYWORDS), None)


class WyomingSatellites:
    """Every configured satellite, each driven by its own :class:`SatelliteLink`.
    ``await start()`` then ``await stop()``."""

    def __init__(self, cfg: Config, assistant: Any, uris: list[str], *,
                 turn_listeners: list[Callable[[Any], Any]] | None = None,
                 wake_factory: Callable[[str | None], Any] | None = None):
        self.links = [SatelliteLink(u, cfg, assistant, turn_listeners=turn_listeners,
                                    wake_factory=wake_factory) for u in uris]
        self._by_session = {link.session: link for link in self.links}
        self.assistant = assistant
        self._stopped = False

    def owns(self, session: str) -> bool:
        """Whether ``session`` is one of these satellites' (their turns and timers)."""
        return session in self._by_session

    async def start(self) -> None:
        self.assistant.on_notify(self._on_notify)
        for link in self.links:
            link.start()
        log.info("driving %d Wyoming satellite(s): %s", len(self.links),
                 ", ".join(link.uri for link in self.links))

    async def stop(self) -> None:
        self._stopped = True
        await asyncio.gather(*(link.stop() for link in self.links))

    async def _on_notify(self, session: str, text: str) -> None:
        link = self._by_session.get(session)
        if link is None or self._stopped:
            return
        await link.announce(text)


async def start_wyoming_satellites(cfg: Config, assistant: Any, uris: list[str] | None = None,
                                   **kw: Any) -> WyomingSatellites | None:
    """Drive ``uris`` (default ``server.wyoming_satellites``); None when there are none."""
    uris = list(cfg.server.wyoming_satellites if uris is None else uris)
    if not uris:
        return None
    sats = WyomingSatellites(cfg, assistant, uris, **kw)
    await sats.start()
    return sats
