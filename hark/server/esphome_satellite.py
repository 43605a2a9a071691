"""hark drives ESPHome voice satellites (Home Assistant Voice PE, ESP32-S3-Box, ...) as
Home Assistant does: through their native API with ``aioesphomeapi``, the library Home
Assistant uses.

For each address in ``server.esphome_satellites`` (and each ``hark serve --esphome URI``)
an :class:`EsphomeLink` connects as an API client (``esphome://HOST:PORT``; with the
device's encryption key from ``server.esphome_keys["HOST:PORT"]`` the connection is
Noise-encrypted, as ESPHome's ``api: encryption:`` asks), reads ``device_info`` and its
voice-assistant feature flags, and subscribes to voice assistant requests with API audio.
From then on the device leads:

- ``VoiceAssistantRequest(start=True)`` (its own wake word, or its button): hark answers
  port 0 (audio over the API) and sends ``RUN_START`` (with the reply's URL) and
  ``STT_START``; the device's ``VoiceAssistantAudio`` (16 kHz 16-bit mono PCM) is fed to
  :meth:`hark.pipeline.assistant.Assistant.run_turn`, so hark's own end of turn decides
  when the command is over (``STT_VAD_START``/``STT_VAD_END``; the device stops its
  microphone on the latter). ``VoiceAssistantAudio(end=True)`` ends the audio too;
  ``VoiceAssistantRequest(start=False)`` aborts the turn. A turn also ends when no speech
  starts within :attr:`EsphomeLink.no_speech_s`, no audio arrives for
  :attr:`EsphomeLink.audio_gap_s`, or at the deadline (``vad.max_utterance_s`` plus
  ``vad.eot_long_ms`` and a second after speech starts). At most
  :attr:`EsphomeLink.max_queued_s` of audio waits for the pipeline; audio outside a
  turn, or beyond that, is dropped (one log line a turn), so memory stays bounded
  whatever the device sends.
- Then ``STT_END`` (``text``) and ``INTENT_START``, and the reply as the feature flags
  allow. A device with ``SPEAKER`` and ``API_AUDIO`` gets ``INTENT_END``,
  ``TTS_START`` (``text``), ``TTS_END`` (``url``), ``TTS_STREAM_START``, the reply as
  ``VoiceAssistantAudio`` (16 kHz mono, 512 samples a message, at most
  :attr:`EsphomeLink.api_audio_lead_s` ahead of real time), ``TTS_STREAM_END``. Any other
  device plays a URL with its media player: ``RUN_START`` carried the URL of a
  :class:`hark.server.replies.ReplyStream` on hark's HTTP server and, at the first reply
  audio, ``INTENT_PROGRESS`` with ``tts_start_streaming=1`` tells the device to fetch it
  (the audio streams into the response as it is synthesized); then ``INTENT_END``,
  ``TTS_START``, ``TTS_END`` (``url``). Every turn ends with ``RUN_END``; one that heard
  nothing sends ``ERROR`` (``stt-no-text-recognized``) first, one that failed without a
  spoken apology ``ERROR`` (``hark-error``).

Announcements (a timer ending; :meth:`Assistant.on_notify`) go to the device whose turn
set them (session ``esphome-HOST:PORT``, stable across reconnections) as
``VoiceAssistantAnnounceRequest`` with a reply URL, when it has the ``ANNOUNCE`` feature;
else one log line says it cannot be told. A device that is down, refuses, has another
key, or drops the connection (mid-turn too) is retried with exponential backoff
(:attr:`EsphomeLink.backoff_min_s` doubling up to :attr:`EsphomeLink.backoff_max_s`,
back to the minimum after a connection that held); each failure is one log line naming
the device, never its key. A device that dropped mid-turn and is back within
:attr:`EsphomeLink.apology_window_s` is told so (an announcement), if it can announce.
Several devices are driven at once, each on its own task.

Not supported: devices without the ``API_AUDIO`` feature (older firmware that streams its
microphone over UDP) and pipelines that ask the server for the wake word
(``USE_WAKE_WORD``): each gets a clear log line and an error answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aioesphomeapi import (
    APIClient,
    APIConnectionError,
    EncryptionPlaintextAPIError,
    InvalidEncryptionKeyAPIError,
    RequiresEncryptionAPIError,
    VoiceAssistantCommandFlag,
    VoiceAssistantEventType,
    VoiceAssistantFeature,
)

from hark.audio import SAMPLE_RATE, AudioChunk
from hark.config import Config, parse_uri
from hark.pipeline.assistant import NO_SPEECH
from hark.server.reconnect import Disconnected, ReconnectingLink
from hark.pipeline.events import (
    ReplyAudio,
    ReplyText,
    SpeechEnded,
    SpeechStarted,
    TranscriptEvent,
    TurnEnd,
)

log = logging.getLogger(__name__)

ET = VoiceAssistantEventType
API_CHUNK_SAMPLES = 512  # reply samples per VoiceAssistantAudio (as Home Assistant sends)
DROPPED_TEXT = "Sorry, I lost the connection to you. Please say that again."
DEFAULT_PORT = 6053


@dataclass
class LinkStats:
    """What happened on one device link (for logs, tests and the benchmark)."""

    connects: int = 0
    failures: int = 0  # failed connection attempts and dropped connections
    turns: int = 0
    dropped_audio: int = 0  # audio messages outside a turn or beyond the queue bound
    bad_audio: int = 0  # audio messages that are not whole 16-bit samples
    announcements: int = 0


@dataclass
class _Turn:
    conversation_id: str
    reply: Any = None  # ReplyStream, or None without an HTTP store
    audio: asyncio.Queue = field(default_factory=asyncio.Queue)  # AudioChunk, None = end
    queued: int = 0  # samples waiting in ``audio``
    listening: bool = True
    speech: bool = False
    deadline: float = 0.0
    reply_text: list[str] = field(default_factory=list)
    reply_started: bool = False
    stream_started: bool = False  # TTS_STREAM_START sent (API audio)
    stream_t0: float = 0.0
    stream_samples: int = 0
    resampler: Any = None
    dropped_logged: bool = False
    ended: bool = False  # RUN_END sent
    task: asyncio.Task | None = None


class To16k:
    """Reply audio at any rate to 16 kHz mono int16 (libswresample through PyAV, its state
    kept across chunks), as ESPHome's speaker stream takes it."""

    def __init__(self) -> None:
        self._rate: int | None = None
        self._resampler: Any = None

    def convert(self, samples: np.ndarray, rate: int) -> np.ndarray:
        if rate == SAMPLE_RATE:
            return samples.astype(np.int16, copy=False)
        import av

        if self._resampler is None or rate != self._rate:
            self._rate = rate
            self._resampler = av.AudioResampler(format="s16", layout="mono",
                                                rate=SAMPLE_RATE)
        frame = av.AudioFrame.from_ndarray(samples.astype(np.int16).reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = rate
        out = [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)


class EsphomeLink(ReconnectingLink):
    """Drives one ESPHome voice satellite at ``uri`` (``esphome://HOST:PORT``) until
    :meth:`stop`. ``key``: its API encryption key (base64) or None; ``replies``: the
    :class:`~hark.server.replies.ReplyStore` of hark's HTTP server and ``reply_base`` the
    ``http://host:port`` the device reaches it at (needed for devices that play URLs and
    for announcements); ``turn_listeners`` get each finished turn's trace."""

    kind = "esphome satellite"
    backoff_max_s = 60.0
    retry_errors = (*ReconnectingLink.retry_errors, APIConnectionError)
    connect_timeout_s = 10.0
    no_speech_s = 8.0
    audio_gap_s = 2.0
    max_queued_s = 10.0  # audio waiting for the pipeline beyond this is dropped
    api_audio_lead_s = 0.5  # API reply audio sent at most this far ahead of real time
    apology_window_s = 30.0
    announce_timeout_s = 120.0
    keepalive_s = 20.0

    def __init__(self, uri: str, cfg: Config, assistant: Any, *, key: str | None = None,
                 replies: Any = None, reply_base: str = "",
                 turn_listeners: list[Callable[[Any], Any]] | None = None):
        super().__init__()
        self.uri = uri
        self.host, self.port = parse_uri(uri, ("esphome",), "esphome satellite")
        self.cfg = cfg
        self.assistant = assistant
        self._key = key or None
        self.replies = replies
        self.reply_base = reply_base.rstrip("/")
        self.session = f"esphome-{self.host}:{self.port}"
        self.key_name = f"{self.host}:{self.port}"
        self.name = uri
        self.area = ""  # the device's own area (ESPHome's area: / suggested_area)
        self.flags = 0
        self.stats = LinkStats()
        self.turn_listeners = turn_listeners if turn_listeners is not None else []
        self.connected = asyncio.Event()
        self._client: APIClient | None = None
        self._turn: _Turn | None = None
        self._tasks: set[asyncio.Task] = set()
        self._dropped_mid_turn_at: float | None = None
        self._speaker = asyncio.Lock()  # one reply or announcement at a time

    def __repr__(self) -> str:  # never the key
        return f"EsphomeLink({self.uri!r})"

    @property
    def api_audio_out(self) -> bool:
        """Whether replies go over the API (its speaker) rather than as a URL."""
        f = VoiceAssistantFeature
        return bool(self.flags & f.SPEAKER) and bool(self.flags & f.API_AUDIO)

    def _reason(self, exc: BaseException) -> str:
        where = f"server.esphome_keys[\"{self.key_name}\"]"
        if isinstance(exc, InvalidEncryptionKeyAPIError):
            return f"wrong encryption key (the device does not accept {where})"
        if isinstance(exc, RequiresEncryptionAPIError):
            return f"the device uses encryption: set its key in {where}"
        if isinstance(exc, EncryptionPlaintextAPIError):
            return f"the device does not use encryption, but {where} is set"
        if isinstance(exc, ConnectionRefusedError):
            return "connection refused (is the device's API on that port?)"
        return super()._reason(exc)

    async def _connect_and_serve(self) -> str:
        stopped = asyncio.Event()

        async def on_stop(expected: bool) -> None:
            stopped.set()

        client = APIClient(self.host, self.port, None, noise_psk=self._key,
                           client_info="hark", keepalive=self.keepalive_s)
        self._client = client
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await client.connect(on_stop=on_stop, login=False, log_errors=False)
                info = await client.device_info()
        except TimeoutError as exc:
            raise TimeoutError(f"no connection within {self.connect_timeout_s:g} s") from exc
        self.name = info.friendly_name or info.name or self.uri
        # the room set in the device's YAML is the context of what it hears
        self.area = (info.area.name if info.area is not None else "") or info.suggested_area
        self.flags = info.voice_assistant_feature_flags_compat(client.api_version)
        f = VoiceAssistantFeature
        if not self.flags & f.VOICE_ASSISTANT:
            raise Disconnected("has no voice assistant (its YAML needs voice_assistant:)")
        if not self.flags & f.API_AUDIO:
            raise Disconnected("streams its microphone over UDP (no API_AUDIO feature: "
                                "ESPHome older than 2024.x); hark takes audio over the API "
                                "only: update its firmware")
        if not self.api_audio_out and self.replies is None:
            log.error("esphome satellite %s plays replies from a URL, but hark's HTTP "
                      "server is not serving replies: it will hear nothing", self.label)
        client.subscribe_voice_assistant(
            handle_start=self._handle_start, handle_stop=self._handle_stop,
            handle_audio=self._handle_audio,
            handle_announcement_finished=self._handle_announcement_finished)
        self.stats.connects += 1
        self.connected.set()
        features = [n for n in ("SPEAKER", "API_AUDIO", "TIMERS", "ANNOUNCE")
                    if self.flags & getattr(f, n)]
        log.info("esphome satellite %s connected (%s; replies %s)", self.label,
                 ", ".join(features), "over the API" if self.api_audio_out else "as a URL")
        dropped = self._dropped_mid_turn_at
        self._dropped_mid_turn_at = None
        if dropped is not None and time.monotonic() - dropped <= self.apology_window_s:
            self._spawn(self.announce(DROPPED_TEXT))
        await stopped.wait()
        if self._turn is not None and not self._turn.ended:
            self._dropped_mid_turn_at = time.monotonic()
            return "disconnected mid-turn"
        return "disconnected"

    async def _teardown(self) -> None:
        self.connected.clear()
        if self._turn is not None:
            await self._cancel_turn()
        for task in list(self._tasks):
            task.cancel()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect(force=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _event(self, etype: ET, data: dict[str, str] | None = None) -> None:
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        try:
            client.send_voice_assistant_event(etype, data or {})
        except APIConnectionError as exc:
            raise ConnectionError(str(exc) or "not connected") from exc

    def _url(self, reply: Any) -> str:
        return f"{self.reply_base}{reply.path}"

    # --- requests from the device ---------------------------------------------------------
    async def _handle_start(self, conversation_id: str, flags: int, audio_settings: Any,
                            wake_word_phrase: str | None) -> int | None:
        if self._turn is not None:  # the device starts over
            await self._cancel_turn()
        if flags & VoiceAssistantCommandFlag.USE_WAKE_WORD:
            log.warning("esphome satellite %s asks hark to listen for its wake word; hark "
                        "takes turns from the device's own wake word (micro_wake_word) "
                        "only", self.label)
            with contextlib.suppress(ConnectionError):
                self._event(ET.VOICE_ASSISTANT_ERROR, {
                    "code": "wake-provider-missing",
                    "message": "hark runs no wake word for this device"})
            return None
        reply = self.replies.publish(None) if self.replies is not None else None
        turn = _Turn(conversation_id, reply, deadline=time.monotonic() + self.no_speech_s)
        self._turn = turn
        self.stats.turns += 1
        log.info("esphome satellite %s: turn started%s", self.label,
                 f" (wake word '{wake_word_phrase}')" if wake_word_phrase else "")
        try:
            self._event(ET.VOICE_ASSISTANT_RUN_START,
                        {"url": self._url(reply)} if reply is not None else {})
            self._event(ET.VOICE_ASSISTANT_STT_START)
        except ConnectionError:
            self._turn = None
            return None
        turn.task = asyncio.create_task(self._run_turn(turn))
        return 0  # audio over the API

    async def _handle_audio(self, data: bytes, data2: bytes | None = None) -> None:
        # no await before the queue: chunks keep the order they arrived in
        turn = self._turn
        if turn is None or not turn.listening:
            self.stats.dropped_audio += 1
            return
        if len(data) % 2:
            self.stats.bad_audio += 1
            if self.stats.bad_audio == 1:
                log.warning("esphome satellite %s: an audio message of %d bytes is not "
                            "whole 16-bit samples; dropped", self.label, len(data))
            return
        n = len(data) // 2
        if turn.queued + n > self.max_queued_s * SAMPLE_RATE:
            self.stats.dropped_audio += 1
            if not turn.dropped_logged:
                turn.dropped_logged = True
                log.warning("esphome satellite %s: more than %g s of audio waiting; "
                            "dropping what comes", self.label, self.max_queued_s)
            return
        samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
        turn.queued += n
        turn.audio.put_nowait(AudioChunk(samples, SAMPLE_RATE,
                                         time.monotonic() - n / SAMPLE_RATE))

    async def _handle_stop(self, abort: bool) -> None:
        turn = self._turn
        if turn is None:
            return
        if abort:
            log.info("esphome satellite %s stopped the turn", self.label)
            await self._cancel_turn()
        elif turn.listening:
            turn.audio.put_nowait(None)  # after the audio still queued

    async def _handle_announcement_finished(self, msg: Any) -> None:
        log.debug("esphome satellite %s: playback finished", self.label)

    # --- turns ----------------------------------------------------------------------------
    async def _cancel_turn(self) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        if turn.task is not None and not turn.task.done():
            turn.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await turn.task

    async def _listen(self, turn: _Turn) -> AsyncIterator[AudioChunk]:
        try:
            while turn.listening:
                left = turn.deadline - time.monotonic()
                if left <= 0:
                    if turn.speech:
                        log.warning("esphome satellite %s: no end of turn by the turn's "
                                    "deadline; ending it", self.label)
                    else:
                        log.info("esphome satellite %s: no speech within %.1f s",
                                 self.label, self.no_speech_s)
                    return
                try:
                    async with asyncio.timeout(min(self.audio_gap_s, left)):
                        chunk = await turn.audio.get()
                except TimeoutError:
                    if time.monotonic() < turn.deadline:
                        log.warning("esphome satellite %s: no audio for %.1f s mid-turn; "
                                    "ending the turn", self.label, self.audio_gap_s)
                        return
                    continue
                if chunk is None:
                    return
                turn.queued -= len(chunk.samples)
                yield chunk
        finally:
            self._stop_listening(turn)

    def _stop_listening(self, turn: _Turn) -> None:
        if not turn.listening:
            return
        turn.listening = False
        while not turn.audio.empty():  # what the device sent after the end: dropped
            turn.audio.get_nowait()
        turn.queued = 0

    async def _run_turn(self, turn: _Turn) -> None:
        where = {"area": self.area} if self.area else {}
        gen = self.assistant.run_turn(self._listen(turn), session=self.session, **where)
        try:
            async for ev in gen:
                if isinstance(ev, SpeechStarted):
                    turn.speech = True
                    vad = self.cfg.vad
                    turn.deadline = (time.monotonic() + vad.max_utterance_s
                                     + vad.eot_long_ms / 1000 + 1.0)
                    self._event(ET.VOICE_ASSISTANT_STT_VAD_START)
                elif isinstance(ev, SpeechEnded):
                    self._stop_listening(turn)
                    self._event(ET.VOICE_ASSISTANT_STT_VAD_END)
                elif isinstance(ev, TranscriptEvent) and ev.transcript.is_final:
                    if ev.transcript.text:
                        self._event(ET.VOICE_ASSISTANT_STT_END, {"text": ev.transcript.text})
                        self._event(ET.VOICE_ASSISTANT_INTENT_START)
                elif isinstance(ev, ReplyText):
                    turn.reply_text.append(ev.text)
                elif isinstance(ev, ReplyAudio):
                    await self._reply_audio(turn, ev.chunk)
                elif isinstance(ev, TurnEnd):
                    await self._turn_end(turn, ev)
        except (ConnectionError, OSError) as exc:
            log.info("esphome satellite %s: turn dropped, connection lost (%s)", self.label,
                     exc)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the device must not be left waiting
            log.exception("esphome satellite %s: turn failed", self.label)
            with contextlib.suppress(ConnectionError):
                if not turn.ended:
                    self._event(ET.VOICE_ASSISTANT_ERROR, {"code": "hark-error",
                                                           "message": "the turn failed"})
                    turn.ended = True
                    self._event(ET.VOICE_ASSISTANT_RUN_END)
        finally:
            self._stop_listening(turn)
            await gen.aclose()
            if turn.reply is not None and not turn.reply.done:
                turn.reply.abort()
            if turn.stream_started and not turn.ended:
                with contextlib.suppress(ConnectionError):
                    self._event(ET.VOICE_ASSISTANT_TTS_STREAM_END)
            if self._turn is turn:
                self._turn = None

    def _text_so_far(self, turn: _Turn) -> str:
        return " ".join(t.strip() for t in turn.reply_text if t.strip()) or "..."

    async def _reply_audio(self, turn: _Turn, chunk: AudioChunk) -> None:
        if not turn.reply_started:
            turn.reply_started = True
            if self.api_audio_out:
                self._intent_end(turn)
                self._event(ET.VOICE_ASSISTANT_TTS_START, {"text": self._text_so_far(turn)})
                self._event(ET.VOICE_ASSISTANT_TTS_END, {"url": self._url(turn.reply)}
                            if turn.reply is not None else {})
                self._event(ET.VOICE_ASSISTANT_TTS_STREAM_START)
                turn.stream_started = True
                turn.stream_t0 = time.monotonic()
                turn.resampler = To16k()
            else:
                self._event(ET.VOICE_ASSISTANT_INTENT_PROGRESS, {"tts_start_streaming": "1"})
        if turn.reply is not None:  # TTS_END's URL plays the reply in both paths
            if turn.reply.rate is None:
                turn.reply.set_rate(chunk.rate)
            turn.reply.write(chunk.samples)
        if self.api_audio_out:
            await self._send_api_audio(turn, turn.resampler.convert(chunk.samples, chunk.rate))

    async def _send_api_audio(self, turn: _Turn, samples: np.ndarray) -> None:
        client = self._client
        if client is None:
            raise ConnectionError("not connected")
        data = samples.astype("<i2", copy=False)
        for i in range(0, len(data), API_CHUNK_SAMPLES):
            ahead = (turn.stream_samples / SAMPLE_RATE
                     - (time.monotonic() - turn.stream_t0))
            if ahead > self.api_audio_lead_s:  # the device's buffer is small: pace it
                await asyncio.sleep(ahead - self.api_audio_lead_s)
            part = data[i:i + API_CHUNK_SAMPLES]
            try:
                client.send_voice_assistant_audio(part.tobytes())
            except APIConnectionError as exc:
                raise ConnectionError(str(exc) or "not connected") from exc
            turn.stream_samples += len(part)

    def _intent_end(self, turn: _Turn) -> None:
        self._event(ET.VOICE_ASSISTANT_INTENT_END, {
            "conversation_id": turn.conversation_id or self.session,
            "continue_conversation": "0"})

    async def _turn_end(self, turn: _Turn, ev: TurnEnd) -> None:
        if not ev.error:
            log.info("esphome satellite %s: heard %r, answered %r", self.label,
                     ev.transcript, ev.reply)
        if ev.error == NO_SPEECH:
            log.info("esphome satellite %s: no speech heard", self.label)
            self._event(ET.VOICE_ASSISTANT_ERROR, {"code": "stt-no-text-recognized",
                                                   "message": "No text recognized"})
        elif ev.error:
            log.warning("esphome satellite %s: the turn failed: %s", self.label, ev.error)
            if not turn.reply_started:  # else its spoken apology says so
                self._event(ET.VOICE_ASSISTANT_ERROR, {"code": "hark-error",
                                                       "message": ev.error[:200]})
        if turn.reply_started:
            if turn.reply is not None:
                turn.reply.finish()
            if self.api_audio_out:
                self._event(ET.VOICE_ASSISTANT_TTS_STREAM_END)
                turn.stream_started = False
            else:
                self._intent_end(turn)
                self._event(ET.VOICE_ASSISTANT_TTS_START,
                            {"text": ev.reply or self._text_so_far(turn)})
                self._event(ET.VOICE_ASSISTANT_TTS_END, {"url": self._url(turn.reply)}
                            if turn.reply is not None else {})
        elif not ev.error:
            self._intent_end(turn)  # done, nothing to say
        turn.ended = True
        self._event(ET.VOICE_ASSISTANT_RUN_END)
        trace = ev.trace
        if trace is not None:
            trace.info.setdefault("satellite", self.name)
            trace.info.setdefault("frontend", "esphome")
            for cb in self.turn_listeners:
                try:
                    cb(trace)
                except Exception:
                    log.exception("turn listener failed")

    # --- announcements ------------------------------------------------------------------
    async def announce(self, text: str) -> bool:
        """Speak ``text`` on the device (a ``VoiceAssistantAnnounceRequest`` with a reply
        URL). False, with a log line, when it is not connected, cannot announce, or the
        announcement fails."""
        client = self._client
        if not self.connected.is_set() or client is None:
            log.warning("esphome satellite %s is not connected; cannot say: %s", self.label,
                        text)
            return False
        if not self.flags & VoiceAssistantFeature.ANNOUNCE or self.replies is None:
            why = ("it has no ANNOUNCE feature" if self.replies is not None
                   else "hark's HTTP server is not serving replies")
            log.warning("esphome satellite %s cannot be told (%s): %s", self.label, why, text)
            return False
        log.info("esphome satellite %s: announcing: %s", self.label, text)
        reply = self.replies.publish(None)

        async def synthesize() -> None:
            try:
                async for chunk in self.assistant.speak(text):
                    if reply.rate is None:
                        reply.set_rate(chunk.rate)
                    reply.write(chunk.samples)
            finally:
                reply.finish()

        async with self._speaker:
            synth = asyncio.create_task(synthesize())
            try:
                await client.send_voice_assistant_announcement_await_response(
                    self._url(reply), self.announce_timeout_s, text)
            except (APIConnectionError, TimeoutError, ConnectionError) as exc:
                log.warning("esphome satellite %s: announcement lost (%s): %s", self.label,
                            exc, text)
                return False
            finally:
                if not synth.done():
                    synth.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await synth
        self.stats.announcements += 1
        return True


class EsphomeSatellites:
    """Every configured device, each driven by its own :class:`EsphomeLink`.
    ``await start()`` then ``await stop()``."""

    def __init__(self, cfg: Config, assistant: Any, uris: list[str], *,
                 replies: Any = None, reply_base: str = "",
                 turn_listeners: list[Callable[[Any], Any]] | None = None):
        keys = cfg.server.esphome_keys
        self.links = []
        for u in uris:
            host, port = parse_uri(u, ("esphome",), "esphome satellite")
            self.links.append(EsphomeLink(u, cfg, assistant, key=keys.get(f"{host}:{port}"),
                                          replies=replies, reply_base=reply_base,
                                          turn_listeners=turn_listeners))
        self._by_session = {link.session: link for link in self.links}
        self.assistant = assistant
        self._stopped = False

    def owns(self, session: str) -> bool:
        return session in self._by_session

    async def start(self) -> None:
        self.assistant.on_notify(self._on_notify)
        for link in self.links:
            if link._key is None:
                log.warning("esphome satellite %s: no key in server.esphome_keys; its API "
                            "connection is not encrypted", link.uri)
            link.start()
        log.info("driving %d ESPHome satellite(s): %s", len(self.links),
                 ", ".join(link.uri for link in self.links))

    async def stop(self) -> None:
        self._stopped = True
        await asyncio.gather(*(link.stop() for link in self.links))

    async def _on_notify(self, session: str, text: str) -> None:
        link = self._by_session.get(session)
        if link is None or self._stopped:
            return
        await link.announce(text)


def reply_base_for(cfg: Config, http: Any) -> str:
    """Where devices fetch replies: ``server.esphome_reply_base``, else hark's HTTP
    server's own address (a loopback one is logged: a device cannot reach it)."""
    base = cfg.server.esphome_reply_base
    if base:
        return base.rstrip("/")
    from hark.server.http import base_url

    host = http.host
    if host in ("127.0.0.1", "::1", "localhost"):
        log.warning("ESPHome satellites fetch replies from hark's HTTP server, which "
                    "listens on %s only: set server.host (e.g. 0.0.0.0) or "
                    "server.esphome_reply_base to an address they reach", host)
    return base_url(host, http.port)


async def start_esphome_satellites(cfg: Config, assistant: Any, uris: list[str] | None = None,
                                   *, http: Any = None, **kw: Any) -> EsphomeSatellites | None:
    """Drive ``uris`` (default ``server.esphome_satellites``); None when there are none.
    ``http``: the running :class:`hark.server.http.HttpServer` replies are served from."""
    uris = list(cfg.server.esphome_satellites if uris is None else uris)
    if not uris:
        return None
    if http is not None:
        kw.setdefault("replies", http.replies)
        kw.setdefault("reply_base", reply_base_for(cfg, http))
    sats = EsphomeSatellites(cfg, assistant, uris, **kw)
    await sats.start()
    return sats
