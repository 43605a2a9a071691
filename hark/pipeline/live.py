"""Live microphone and speaker through sounddevice (PortAudio): ``hark listen``.

One turn after another on the local sound card:

1. microphone frames go to :meth:`Assistant.run_turn` until it says the speech ended;
2. the reply's audio is streamed to the speaker as it arrives (a callback-driven
   ``OutputStream`` reads from a buffer that can be emptied at once);
3. meanwhile the microphone goes to a :class:`~hark.bargein.detector.PlaybackListener`,
   which is given every piece of audio the speaker plays, removes that echo and listens
   for the person. If they speak over the reply, playback stops at once, the turn is
   closed (its LLM and TTS work cancelled) and their speech starts the next turn: the
   microphone's last second with the echo removed (from the first frames of the reply
   too, heard while the echo delay was still being measured), then the microphone as it
   comes.
   ``wake.barge_in_speech = false`` turns this off.
4. after a reply has played out, stale microphone audio is dropped and the next turn
   starts.

What hark says unprompted (a finished timer, through :meth:`Assistant.on_notify`) is
played between turns; the microphone is muted while it plays and for its echo, so hark
does not take its own announcement for the person's next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hark.audio import SAMPLE_RATE, AudioChunk, SampleClock, resample
from hark.bargein.detector import BargeInDetector, PlaybackListener
from hark.errors import AudioError, HarkError

log = logging.getLogger(__name__)

RING_S = 1.0  # echo-free microphone audio kept while a reply plays: the start of a barge-in
ECHO_TAIL_S = 0.3  # after the last reply sample is handed over, its echo may still come
OUTPUT_BLOCK_S = 0.01  # speaker callback period: how soon a flush is heard
DEFAULT_OUTPUT_RATE = 48000


def open_devices(cfg, sd: Any = None):
    """sounddevice (or the module given), checked: raises AudioError saying plainly when
    there is no device."""
    if sd is None:
        try:
            import sounddevice as sd
        except OSError as exc:  # PortAudio library missing
            raise AudioError(f"PortAudio is not available ({exc})",
                             fix="apt-get install libportaudio2, or use 'hark demo --input FILE'")
    try:
        devices = sd.query_devices()
    except Exception as exc:
        raise AudioError(f"cannot list audio devices: {exc}") from exc
    inputs = [d for d in devices if d.get("max_input_channels", 0) > 0]
    if not inputs:
        raise AudioError("this machine has no microphone (no audio input device found)",
                         fix="connect one, or use 'hark demo --input FILE.wav'")
    return sd


def _device(name: str) -> int | str | None:
    """``audio.input_device``/``output_device``: "" = default, digits = an index."""
    return int(name) if name.isdigit() else (name or None)


def output_rate(sd: Any, device: int | str | None) -> int:
    """The speaker's own rate (replies are resampled to it), 48 kHz when unknown."""
    try:
        rate = int(sd.query_devices(device, "output")["default_samplerate"])
    except Exception:  # noqa: BLE001 - any trouble: the common rate
        return DEFAULT_OUTPUT_RATE
    return rate if rate > 0 else DEFAULT_OUTPUT_RATE


class Player:
    """Reply audio to the speaker: :meth:`callback` is the ``sd.OutputStream`` callback,
    fed from a buffer that :meth:`write` appends to and :meth:`flush` empties at once.

    While a reply is under way (from its first :meth:`write` to :meth:`finish` or
    :meth:`flush`) every block handed to the speaker, silence of an underrun included, is
    also put on ``played`` as ``(monotonic time, the same audio at 16 kHz)``: the echo
    reference, on the speaker's own timeline, for the barge-in listener.
    """

    def __init__(self, rate: int):
        self.rate = rate
        self._lock = threading.Lock()
        self._chunks: deque[list] = deque()  # [device-rate samples, 16 kHz samples, position]
        self._pending = 0  # device-rate samples not yet played
        self._active = False
        self._zero_frac = 0.0
        self.clock = SampleClock(rate)
        self.played: deque[tuple[float, np.ndarray]] = deque()
        self.samples_played = 0  # reply samples (device rate) handed to the speaker

    def write(self, samples: np.ndarray, rate: int) -> int:
        """Queue reply audio (any rate); returns the samples queued at the device rate."""
        dev = resample(np.asarray(samples, np.int16), rate, self.rate)
        ref = resample(np.asarray(samples, np.int16), rate, SAMPLE_RATE)
        if len(dev) == 0:
            return 0
        with self._lock:
            self._chunks.append([dev, ref, 0])
            self._pending += len(dev)
            self._active = True
        return len(dev)

    def pending(self) -> int:
        """Reply samples (device rate) still waiting to be played."""
        return self._pending

    def flush(self) -> int:
        """Stop the reply now: drop what has not been played; returns how many samples."""
        with self._lock:
            dropped = self._pending
            self._chunks.clear()
            self._pending = 0
            self._active = False
            self._zero_frac = 0.0
        return dropped

    def finish(self) -> None:
        """The reply is over (played out): stop reporting silence as reference."""
        with self._lock:
            self._active = False
            self._zero_frac = 0.0

    def callback(self, outdata, frames: int, time_info, status) -> None:  # PortAudio thread
        t = self.clock.stamp(frames, time.monotonic(), captured=False)
        out = outdata[:, 0]
        refs: list[np.ndarray] = []
        with self._lock:
            filled = 0
            while filled < frames and self._chunks:
                c = self._chunks[0]
                dev, ref, pos = c
                n = min(frames - filled, len(dev) - pos)
                out[filled:filled + n] = dev[pos:pos + n]
                # the same stretch of the 16 kHz copy (exact at the chunk's end)
                refs.append(ref[pos * len(ref) // len(dev):(pos + n) * len(ref) // len(dev)])
                c[2] = pos = pos + n
                filled += n
                if pos == len(dev):
                    self._chunks.popleft()
            out[filled:] = 0
            self._pending -= filled
            self.samples_played += filled
            if self._active:
                if filled < frames:  # underrun: the speaker plays silence, so does the reference
                    z = (frames - filled) * SAMPLE_RATE / self.rate + self._zero_frac
                    refs.append(np.zeros(int(z), np.int16))
                    self._zero_frac = z - int(z)
                self.played.append((t, np.concatenate(refs) if refs else np.zeros(0, np.int16)))


class _EchoFreeDetector(BargeInDetector):
    """A :class:`BargeInDetector` that keeps the last ``keep`` samples of the echo-free
    microphone audio it computes (the frames held back while the echo delay was measured
    included, once it is), so a barge-in's first words reach the next turn without the
    reply mixed in."""

    def __init__(self, vad, keep: int, **kwargs):
        super().__init__(vad, **kwargs)
        self.keep = keep
        self.clean = np.zeros(0, np.int16)  # ends ``lag`` samples before ``pos``

    def start(self, reply: np.ndarray) -> None:
        super().start(reply)
        self.clean = np.zeros(0, np.int16)

    def residual(self, frame: np.ndarray) -> np.ndarray | None:
        res = super().residual(frame)
        if res is not None:
            new = res
            if len(self.backlog):  # the delay was just measured: the frames held back
                new = np.concatenate([self.backlog, res[self.lag:]])
                self.backlog = np.zeros(0)
            self.clean = np.concatenate([
                self.clean[-self.keep:],
                np.clip(new, -32768, 32767).astype(np.int16)])
        return res

    def uncleaned(self) -> np.ndarray:
        """The last ``lag`` microphone samples heard, not yet in ``clean``."""
        return self._held if self.lag else np.zeros(0)


class _Listener(PlaybackListener):
    """The barge-in listener of ``hark listen``, which also keeps what the person may be
    saying: the echo-free audio of the last ``RING_S`` seconds (before the reply began to
    sound, the microphone as it came: no echo yet)."""

    def __init__(self, vad, canceller: str = "adaptive"):
        super().__init__(vad, canceller=canceller)
        self.keep = int(RING_S * SAMPLE_RATE)
        self.detector = _EchoFreeDetector(vad, self.keep, canceller=canceller)
        self._before = np.zeros(0, np.int16)  # heard before the reply began to sound

    def reset(self) -> None:
        super().reset()
        self._before = np.zeros(0, np.int16)

    def heard(self, frame: np.ndarray) -> bool:
        if not self.active:
            self._before = np.concatenate([self._before, frame])[-self.keep:]
        return super().heard(frame)

    def speech(self, end: float) -> AudioChunk:
        """The microphone's last ``RING_S`` seconds up to ``end`` (the end of the last
        frame heard, a monotonic time), echo-free, as one chunk: what was heard before the
        reply sounded, the echo-free audio kept, then the few samples the detector has not
        cleaned yet (its ``lag`` and a part frame) as they came."""
        det = self.detector
        cleaned_from = det.pos - det.lag - len(det.clean)  # sample count since start()
        before = [self._before] if cleaned_from == 0 else []
        audio = np.concatenate([*before, det.clean, det.uncleaned(), self._pending])
        audio = audio[-self.keep:].astype(np.int16)
        return AudioChunk(audio, SAMPLE_RATE, end - len(audio) / SAMPLE_RATE)


@dataclass
class LiveTurn:
    """What happened in one live turn (monotonic times), for the log and for tests."""

    transcript: str = ""
    reply: list[str] = field(default_factory=list)  # the ReplyText pieces
    events: list[tuple[float, str]] = field(default_factory=list)  # (time, event class)
    audio_received_s: float = 0.0  # reply audio the turn produced (before any stop)
    samples_queued: int = 0  # reply samples (device rate) given to the speaker's buffer
    samples_played: int = 0  # ... and those the speaker played (fewer when interrupted)
    played_out: bool = False  # the whole reply reached the speaker
    interrupted: bool = False  # the person spoke over the reply
    interrupted_at: float | None = None
    error: str | None = None
    generator: Any = None  # the turn's run_turn generator (closed when the turn is over)

    def first(self, kind: str) -> float | None:
        return next((t for t, k in self.events if k == kind), None)


class LiveLoop:
    """Turn after turn on a microphone and a speaker (see the module docstring)."""

    def __init__(self, cfg, sd: Any, assistant, mode: str = "streaming",
                 max_turns: int | None = None):
        self.cfg = cfg
        self.sd = sd
        self.assistant = assistant
        self.mode = mode
        self.max_turns = max_turns
        self.turns: list[LiveTurn] = []
        self.announcements: list[str] = []  # what was said unprompted, in order
        self.frame = cfg.audio.frame_ms * SAMPLE_RATE // 1000
        self.device_in = _device(cfg.audio.input_device)
        self.device_out = _device(cfg.audio.output_device)
        self.player = Player(output_rate(sd, self.device_out))
        self.listener = self._make_listener() if cfg.wake.barge_in_speech else None
        self._barge: AudioChunk | None = None  # the speech that interrupted the reply
        self.mic: asyncio.Queue[AudioChunk] | None = None
        self._running = False
        self._in_reply = False
        self._mute_until = 0.0  # microphone frames captured before this are not a turn's
        assistant.on_notify(self._announce)

    def _make_listener(self) -> _Listener | None:
        from hark.vad.silero import load_vad

        try:
            return _Listener(load_vad(self.cfg), self.cfg.wake.echo_canceller)
        except HarkError as exc:
            log.warning("speech barge-in off: %s", exc)
            return None

    # --- the loop -----------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        mic: asyncio.Queue[AudioChunk] = asyncio.Queue()
        self.mic = mic

        clock = SampleClock(SAMPLE_RATE)

        def on_audio(indata, frames, t, status):  # PortAudio thread
            start = clock.stamp(frames, time.monotonic(), captured=True)
            chunk = AudioChunk(indata[:, 0].copy(), SAMPLE_RATE, start)
            with contextlib.suppress(RuntimeError):  # the loop has closed: we are stopping
                loop.call_soon_threadsafe(mic.put_nowait, chunk)

        rate = self.player.rate
        with contextlib.ExitStack() as streams:
            self._open(streams, "microphone", self.sd.InputStream, samplerate=SAMPLE_RATE,
                       blocksize=self.frame, device=self.device_in, callback=on_audio)
            self._open(streams, "speaker", self.sd.OutputStream, samplerate=rate,
                       blocksize=int(rate * OUTPUT_BLOCK_S), device=self.device_out,
                       callback=self.player.callback)
            print("listening (Ctrl-C to stop) ...", flush=True)
            start: list[AudioChunk] = []
            self._running = True
            try:
                while self.max_turns is None or len(self.turns) < self.max_turns:
                    turn = LiveTurn()
                    self.turns.append(turn)
                    start = await self._turn(turn, start)
            finally:
                self._running = False

    async def _announce(self, session: str, text: str) -> None:
        """Say ``text`` unprompted (a finished timer), muting the microphone meanwhile."""
        if not self._running:
            return  # this loop has ended (the assistant may outlive it)
        print(f"hark: {text}", flush=True)
        self.announcements.append(text)
        self._mute_until = float("inf")
        try:
            async for chunk in self.assistant.speak(text):
                self.player.write(chunk.samples, chunk.rate)
            while self.player.pending() > 0:
                await asyncio.sleep(OUTPUT_BLOCK_S)
        finally:
            if not self._in_reply:  # a reply's echo reference must go on
                self.player.finish()
                self.player.played.clear()
            self._mute_until = time.monotonic() + ECHO_TAIL_S

    @staticmethod
    def _open(streams: contextlib.ExitStack, what: str, kind, **kwargs) -> None:
        """Open and start a PortAudio stream, or say plainly which device failed."""
        try:
            streams.enter_context(kind(channels=1, dtype="int16", latency="low", **kwargs))
        except Exception as exc:
            setting = "input_device" if what == "microphone" else "output_device"
            raise AudioError(f"cannot open the {what}: {exc}",
                             fix=f"set audio.{setting} (python -m sounddevice lists the "
                             "devices)") from exc

    async def _mic_stream(self, start: list[AudioChunk]) -> AsyncIterator[AudioChunk]:
        for chunk in start:
            yield chunk
        assert self.mic is not None
        while True:
            chunk = await self.mic.get()
            if chunk.t < self._mute_until:
                continue  # an announcement or its echo, not the person
            yield chunk

    def _note(self, turn: LiveTurn, ev) -> None:
        from hark.pipeline.events import ReplyAudio, ReplyText, TranscriptEvent, TurnEnd

        turn.events.append((time.monotonic(), type(ev).__name__))
        if isinstance(ev, TranscriptEvent) and ev.transcript.is_final:
            turn.transcript = ev.transcript.text
            print(f"you:  {ev.transcript.text}", flush=True)
        elif isinstance(ev, ReplyText):
            turn.reply.append(ev.text)
            print(f"hark: {ev.text}", flush=True)
        elif isinstance(ev, ReplyAudio):
            turn.audio_received_s += ev.chunk.duration
        elif isinstance(ev, TurnEnd):
            turn.error = ev.error

    async def _turn(self, turn: LiveTurn, start: list[AudioChunk]) -> list[AudioChunk]:
        """One turn; returns the audio that starts the next one (a barge-in's speech)."""
        from hark.pipeline.events import SpeechEnded, TurnEnd

        gen = self.assistant.run_turn(self._mic_stream(start), mode=self.mode)
        turn.generator = gen
        ended = False
        async for ev in gen:  # listening: the microphone feeds the turn
            self._note(turn, ev)
            if isinstance(ev, TurnEnd):
                ended = True
                break
            if isinstance(ev, SpeechEnded):
                break
        if ended:
            await gen.aclose()
            return []
        # answering: the reply plays while the listener hears the room
        self._in_reply = True
        self._barge = None
        played_before = self.player.samples_played
        reply = asyncio.create_task(self._play_reply(gen, turn))
        watch = asyncio.create_task(self._watch())
        barge = False
        try:
            await asyncio.wait({reply, watch}, return_when=asyncio.FIRST_COMPLETED)
            barge = watch.done() and watch.result()
            if barge and not turn.played_out:  # the person spoke over the reply: stop it now
                self.player.flush()
                turn.interrupted = True
                turn.interrupted_at = time.monotonic()
                log.info("barge-in: speech over the reply")
                print("(interrupted)", flush=True)
        finally:
            for task in (reply, watch):
                task.cancel()
            results = await asyncio.gather(reply, watch, return_exceptions=True)
            await gen.aclose()  # cancels whatever the turn still had running
            self.player.finish()
            self.player.played.clear()
            turn.samples_played = self.player.samples_played - played_before
            if self.listener is not None:
                self.listener.reset()
            self._in_reply = False
        for result in results:
            if isinstance(result, Exception):  # the turn itself failed
                raise result
        next_start = [self._barge] if barge and self._barge is not None else []
        self._barge = None
        if not barge:  # don't answer our own voice: what the microphone heard is stale
            while not self.mic.empty():
                self.mic.get_nowait()
        return next_start

    async def _play_reply(self, gen, turn: LiveTurn) -> None:
        """The rest of the turn's events; reply audio to the speaker as it comes. Returns
        once the reply has played out (and its echo died away)."""
        from hark.pipeline.events import ReplyAudio

        async for ev in gen:
            self._note(turn, ev)
            if isinstance(ev, ReplyAudio):
                turn.samples_queued += self.player.write(ev.chunk.samples, ev.chunk.rate)
        while self.player.pending() > 0:
            await asyncio.sleep(OUTPUT_BLOCK_S)
        turn.played_out = True
        if turn.samples_queued:  # its echo: speech now starts the next turn, no barge-in
            await asyncio.sleep(ECHO_TAIL_S)

    async def _watch(self) -> bool:
        """The microphone while the reply is produced and played: True when the person
        speaks over it (never returns otherwise), their speech then in ``_barge``."""
        assert self.mic is not None
        lis = self.listener
        played = self.player.played
        while True:
            chunk = await self.mic.get()
            if lis is None:
                continue
            end = chunk.t + chunk.duration
            # the speaker's output up to the end of this frame, in order: the echo reference
            while played and played[0][0] <= end:
                lis.played(played.popleft()[1], SAMPLE_RATE)
            if lis.heard(chunk.samples):
                self._barge = lis.speech(end)
                return True


def run_live(cfg, mode: str = "streaming", *, assistant=None, sd: Any = None,
             max_turns: int | None = None, record: list[LiveTurn] | None = None) -> int:
    """``hark listen``: answer turn after turn on the microphone until Ctrl-C (or
    ``max_turns``). ``sd`` stands in for the sounddevice module and ``assistant`` for a
    loaded :class:`~hark.pipeline.assistant.Assistant` (tests); ``record`` receives a
    :class:`LiveTurn` per turn."""
    sd = open_devices(cfg, sd)
    own = assistant is None
    if own:
        from hark.pipeline.assistant import Assistant

        assistant = Assistant.load(cfg)
    live = LiveLoop(cfg, sd, assistant, mode, max_turns)
    try:
        asyncio.run(live.run())
    except KeyboardInterrupt:
        pass
    finally:
        if own:
            assistant.close()
        if record is not None:
            record.extend(live.turns)
    return 0
