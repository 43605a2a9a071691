"""``hark listen`` (hark.pipeline.live) on a fake sound card around the real assistant.

The fake sounddevice module is a small room running in real time: its microphone thread
calls the input callback every 32 ms with a scripted 16 kHz signal (real Piper speech),
its speaker thread pulls 10 ms blocks from the output callback and records them, and what
the speaker plays can come back into the microphone (delayed, attenuated echo). The
assistant is the real one (VAD, Whisper, intents, LLM, Piper).
"""

from __future__ import annotations

import _thread
import copy
import threading
import time

import numpy as np
import pytest

from hark.pipeline.live import LiveTurn, run_live

RATE = 16000
OUT_RATE = 48000


class _NoStatus:
    def __bool__(self) -> bool:
        return False


class _Stream:
    """A started stream: a thread running ``loop(stop)`` between enter and exit."""

    def __init__(self, loop):
        self._loop = loop
        self._stop = threading.Event()
        self._thread = threading.Thread(target=loop, args=(self._stop,), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(2.0)


class FakeSoundDevice:
    """Stands in for the ``sounddevice`` module: one microphone, one speaker, one room.

    Positions are samples of a shared 16 kHz world clock that starts at construction.
    ``script`` is what the person says (16 kHz int16, from time 0); ``cue(n, after_s,
    audio)`` makes them say ``audio`` ``after_s`` seconds after the ``n``-th reply
    (0-based) started to sound. With ``echo_gain`` the microphone also hears the speaker,
    ``echo_delay_s`` late. Gives up after ``limit_s`` (KeyboardInterrupt, as Ctrl-C)."""

    def __init__(self, script: np.ndarray, *, echo_gain: float = 0.0,
                 echo_delay_s: float = 0.06, limit_s: float = 60.0):
        self.t0 = time.monotonic()
        self.limit_s = limit_s
        n = int((limit_s + 5) * RATE)
        self.voice = np.zeros(n)
        self.voice[:len(script)] = script[:n]
        self.speaker = np.zeros(n)  # what the speaker played, on the world clock at 16 kHz
        self.echo_gain = echo_gain
        self.echo_delay = int(echo_delay_s * RATE)
        self.blocks: list[tuple[float, np.ndarray]] = []  # (callback start, block at 48 kHz)
        self.onsets: list[int] = []  # world positions where a reply started to sound
        self._last_sound = -RATE
        self._cues: list[tuple[int, float, np.ndarray]] = []
        self._lock = threading.Lock()
        self.mic_echo_energy = 0.0

    def cue(self, reply: int, after_s: float, audio: np.ndarray) -> None:
        self._cues.append((reply, after_s, audio))

    # --- the sounddevice API used by hark.pipeline.live ----------------------------------

    def query_devices(self, device=None, kind=None):
        mic = {"name": "fake mic", "max_input_channels": 1, "max_output_channels": 0,
               "default_samplerate": RATE}
        spk = {"name": "fake speaker", "max_input_channels": 0, "max_output_channels": 1,
               "default_samplerate": OUT_RATE}
        if kind == "output":
            return spk
        if kind == "input":
            return mic
        return [mic, spk]

    def InputStream(self, *, samplerate, channels, dtype, blocksize, device, callback,
                    latency=None):
        assert (samplerate, channels, dtype) == (RATE, 1, "int16")
        return _Stream(lambda stop: self._mic(stop, blocksize, callback))

    def OutputStream(self, *, samplerate, channels, dtype, blocksize, device, callback,
                     latency=None):
        assert (samplerate, channels, dtype) == (OUT_RATE, 1, "int16")
        assert blocksize % 3 == 0
        return _Stream(lambda stop: self._speaker(stop, blocksize, callback))

    # --- the room ------------------------------------------------------------------------

    def _now(self) -> int:
        return int((time.monotonic() - self.t0) * RATE)

    def _mic(self, stop: threading.Event, n: int, callback) -> None:
        pos = self._now()
        interrupted = False
        while not stop.is_set():
            wait = self.t0 + (pos + n) / RATE - time.monotonic()
            if wait > 0 and stop.wait(wait):
                return
            if pos + n + self.echo_delay >= len(self.voice) - RATE:
                if not interrupted:  # the test has run too long: stop run_live like Ctrl-C
                    interrupted = True
                    _thread.interrupt_main()
                stop.wait(0.05)
                continue
            with self._lock:
                self._place_cues()
                frame = self.voice[pos:pos + n].copy()
                if self.echo_gain:
                    a = pos - self.echo_delay
                    if a >= 0:
                        echo = self.echo_gain * self.speaker[a:a + n]
                        frame += echo
                        self.mic_echo_energy += float(echo @ echo)
            frame = np.clip(frame, -32768, 32767).astype(np.int16)
            callback(frame.reshape(-1, 1), n, None, _NoStatus())
            pos += n

    def _place_cues(self) -> None:
        for cue in list(self._cues):
            reply, after_s, audio = cue
            if len(self.onsets) > reply:
                at = self.onsets[reply] + int(after_s * RATE)
                end = min(at + len(audio), len(self.voice))
                self.voice[at:end] += audio[:end - at]
                self._cues.remove(cue)

    def _speaker(self, stop: threading.Event, n: int, callback) -> None:
        pos = self._now() * 3  # at 48 kHz, on a whole 16 kHz sample
        # the sound reaching the microphone: low-passed (7 kHz, windowed sinc) and taken at
        # 16 kHz; the filter's 48-sample delay is one more millisecond of echo path
        k = np.arange(97) - 48
        taps = np.sinc(2 * 7000 / OUT_RATE * k) * np.hamming(97)
        taps /= taps.sum()
        history = np.zeros(96)
        while not stop.is_set():
            wait = self.t0 + pos / OUT_RATE - time.monotonic()
            if wait > 0 and stop.wait(wait):
                return
            out = np.zeros((n, 1), np.int16)
            t = time.monotonic()  # the block is filled after this moment
            callback(out, n, None, _NoStatus())
            block = out[:, 0].copy()
            self.blocks.append((t, block))
            x = np.concatenate([history, block])
            history = x[-96:]
            heard = np.convolve(x, taps, "valid")[::3]
            at = pos // 3
            if at + n // 3 <= len(self.speaker):
                with self._lock:
                    self.speaker[at:at + n // 3] = heard
                    if np.abs(block).max() > 200:
                        if at - self._last_sound > RATE // 2:
                            self.onsets.append(at)
                        self._last_sound = at
            pos += n

    # --- what the test reads -------------------------------------------------------------

    def first_sound(self, after: float = 0.0) -> float | None:
        """Callback time of the first block with sound handed over after ``after``."""
        return next((t for t, b in self.blocks if t > after and np.abs(b).max() > 0), None)

    def sound_between(self, start: float, end: float) -> int:
        """Samples with sound in the blocks handed over between two times."""
        return sum(int(np.count_nonzero(b)) for t, b in self.blocks if start < t < end)


def _pad(*parts: np.ndarray | float) -> np.ndarray:
    """Audio and silences (seconds) one after another."""
    return np.concatenate([np.zeros(int(p * RATE), np.int16) if isinstance(p, float) else p
                           for p in parts]).astype(np.float64)


def _live(cfg, assistant, sd: FakeSoundDevice, max_turns: int) -> list[LiveTurn]:
    turns: list[LiveTurn] = []
    assert run_live(cfg, assistant=assistant, sd=sd, max_turns=max_turns, record=turns) == 0
    assert len(turns) == max_turns, "the fake room gave up waiting (see the output)"
    return turns


def _kinds(turn: LiveTurn) -> list[str]:
    return [k for _, k in turn.events]


def test_reply_is_played_while_it_is_being_produced(cfg, assistant, speak):
    sd = FakeSoundDevice(_pad(0.5, speak("Why is the sky blue?")), limit_s=40.0)
    [turn] = _live(cfg, assistant, sd, 1)
    assert "sky" in turn.transcript.lower()
    kinds = _kinds(turn)
    assert kinds.count("ReplyText") >= 2 and kinds.count("ReplyAudio") >= 2  # streamed
    assert kinds[-1] == "TurnEnd" and turn.error is None and not turn.interrupted
    first = sd.first_sound()
    assert first is not None
    # the first words reached the speaker before the turn had finished producing its reply
    assert turn.first("SpeechEnded") < first < turn.first("TurnEnd")
    # ... and the whole reply was played
    assert turn.samples_played == turn.samples_queued > 0
    assert turn.generator.ag_frame is None  # the turn's generator is closed


def test_echo_of_the_reply_does_not_interrupt_it(cfg, assistant, speak):
    # the microphone hears only the person's question, then the reply's own echo
    sd = FakeSoundDevice(_pad(0.5, speak("What's the weather like today?")),
                         echo_gain=0.5, limit_s=30.0)
    [turn] = _live(cfg, assistant, sd, 1)
    assert turn.reply and not turn.interrupted
    assert turn.samples_played == turn.samples_queued > 0  # the whole reply played
    assert sd.mic_echo_energy > 0  # the echo was there to be ignored


def test_speaking_over_the_reply_interrupts_it_and_starts_the_next_turn(cfg, assistant, speak,
                                                                        capsys):
    sd = FakeSoundDevice(_pad(0.5, speak("Tell me a story about a dragon.")),
                         echo_gain=0.5, limit_s=40.0)
    sd.cue(0, 1.0, speak("What time is it?").astype(np.float64))  # one second into the story
    story, answer = _live(cfg, assistant, sd, 2)
    assert "dragon" in story.transcript.lower()
    assert story.interrupted and "(interrupted)" in capsys.readouterr().out
    # playback stopped early: the story was cut short, whether its audio was waiting in
    # the speaker's buffer (dropped) or still being made (its LLM and TTS work went with
    # the generator, closed; on a busy machine the speaker may have caught up with it)
    assert story.samples_played < story.samples_queued or story.first("TurnEnd") is None
    assert story.generator.ag_frame is None
    # nothing of the story is played after the interruption
    assert sd.sound_between(story.interrupted_at, answer.first("SpeechEnded")) == 0
    # the interrupting speech, first words included, is the next turn
    assert "what time" in answer.transcript.lower()
    assert answer.reply and answer.reply[0].startswith("It's")
    assert not answer.interrupted and answer.samples_played == answer.samples_queued > 0


def test_a_finished_timer_is_announced_and_its_echo_is_not_a_turn(cfg, assistant, speak,
                                                                   capsys):
    sd = FakeSoundDevice(_pad(0.5, speak("Set a timer for three seconds.")),
                         echo_gain=0.5, limit_s=40.0)
    # the person asks 3 s after the announcement (the room's second reply onset) began
    sd.cue(1, 3.0, speak("What time is it?").astype(np.float64))
    timer, asked = _live(cfg, assistant, sd, 2)
    out = capsys.readouterr().out
    assert timer.reply and "timer" in " ".join(timer.reply).lower(), (timer, out)
    said = [line for line in out.splitlines() if line.startswith("hark:")]
    announcement = next((line for line in said if "done" in line.lower()
                         or "up" in line.lower() or "been" in line.lower()), None)
    assert announcement is not None, out
    assert said.index(announcement) > 0  # after the timer's confirmation
    # the announcement was played between the two turns ...
    assert sd.sound_between(timer.first("TurnEnd"), asked.first("SpeechStarted")) > 0
    # ... and its echo did not become a turn: the next turn is the person's question
    assert "what time" in asked.transcript.lower(), (asked, out)
    assert asked.reply and asked.reply[0].startswith("It's"), (asked, out)


def test_speech_barge_in_can_be_switched_off(cfg, assistant, speak):
    off = copy.deepcopy(cfg)
    off.wake.barge_in_speech = False
    sd = FakeSoundDevice(_pad(0.5, speak("What's the weather like today?")),
                         echo_gain=0.5, limit_s=30.0)
    sd.cue(0, 0.8, speak("Stop. What time is it?").astype(np.float64))
    [turn] = _live(off, assistant, sd, 1)
    assert not turn.interrupted
    assert turn.samples_played == turn.samples_queued > 0


def test_no_microphone_is_a_clear_error(cfg):
    from hark.errors import AudioError

    class NoMic(FakeSoundDevice):
        def query_devices(self, device=None, kind=None):
            return [{"name": "fake speaker", "max_input_channels": 0, "max_output_channels": 1}]

    with pytest.raises(AudioError, match="no microphone"):
        run_live(cfg, sd=NoMic(np.zeros(0)), max_turns=1)


def test_no_usable_speaker_is_a_clear_error(cfg, assistant):
    from hark.errors import AudioError

    class NoSpeaker(FakeSoundDevice):
        def OutputStream(self, **kwargs):
            raise RuntimeError("Error opening OutputStream: Invalid number of channels")

    with pytest.raises(AudioError, match="cannot open the speaker") as err:
        run_live(cfg, assistant=assistant, sd=NoSpeaker(np.zeros(0), limit_s=5.0), max_turns=1)
    assert "output_device" in err.value.fix


@pytest.mark.parametrize("canceller", ["adaptive", "subtract"])
@pytest.mark.parametrize("block", [512, 320])
def test_speech_over_the_reply_is_handed_on_without_the_echo(cfg, speak, canceller, block):
    """What starts the next turn after a barge-in is the microphone with the reply's
    echo removed, gapless up to the last block heard, whatever the block size; the
    person here speaks from 0.2 s into the reply, while the echo delay is still being
    measured (no residual yet: those frames once went on raw, the reply's own voice
    leading the next turn)."""
    from hark.pipeline.live import _Listener
    from hark.vad.silero import load_vad

    reply = speak("It is three fifteen in the afternoon, and your timer has two minutes left.")
    person = speak("What time is it?").astype(float)
    rng = np.random.default_rng(0)
    quiet = rng.normal(0, 30, 2560)  # heard before the reply sounds
    echo = np.concatenate([np.zeros(976), reply])[:len(reply)] * 0.5  # 61 ms late
    alone = np.concatenate([quiet, rng.normal(0, 30, len(reply))])  # the room without echo
    alone[len(quiet) + 3200:][:len(person)] += person[:len(reply) - 3200]
    mic = np.clip(alone + np.concatenate([np.zeros(len(quiet)), echo]), -32768, 32767)
    lis = _Listener(load_vad(cfg), canceller)
    end = None
    for i in range(0, len(mic), block):
        if i == len(quiet):
            lis.played(reply, 16000)
        if lis.heard(mic[i:i + block].astype(np.int16)):
            end = i + block
            break
    assert end is not None and end > len(quiet) + 3200
    got = lis.speech(100.0)
    n = len(got.samples)
    assert n == min(end, 16000) and got.t == pytest.approx(100.0 - n / 16000)
    err = got.samples - alone[end - n:end]  # what is not the person
    heard_echo = mic[end - n:end] - alone[end - n:end]
    # the frames heard while the delay was measured (the first 12 of the reply)
    measured = slice(len(quiet) - (end - n), len(quiet) - (end - n) + 12 * 512)
    assert err[measured] @ err[measured] < 0.05 * (heard_echo[measured] @ heard_echo[measured])
    # and all of it, but for the last frame (still being cleaned): a little echo stays
    # where the person talks loudly over it
    assert err[:-512] @ err[:-512] < 0.25 * (heard_echo[:-512] @ heard_echo[:-512])


# --- the parts, with small fakes -------------------------------------------------------

def test_sample_clock_ignores_late_callbacks():
    from hark.audio import SampleClock

    clock = SampleClock(16000)
    # 512-sample blocks captured every 32 ms from t=100; the third callback runs 50 ms late
    delays = [0.001, 0.002, 0.050, 0.001, 0.003]
    stamps = [clock.stamp(512, 100 + 0.032 * (i + 1) + d, captured=True)
              for i, d in enumerate(delays)]
    assert stamps == pytest.approx([100.001 + 0.032 * i for i in range(5)], abs=1e-3)


def test_sample_clock_follows_a_slow_sound_card():
    from hark.audio import SampleClock

    clock = SampleClock(16000)
    slow = 1.0005  # the card delivers 16000 samples every 1.0005 s
    for i in range(600):  # 10 minutes in one-second blocks
        t = clock.stamp(16000, 50 + i * slow, captured=False)
    assert t == pytest.approx(50 + 599 * slow, abs=0.01)


def test_player_streams_flushes_and_reports_the_echo_reference():
    from hark.pipeline.live import Player

    player = Player(48000)
    tone = (8000 * np.sin(np.arange(22050) / 10)).astype(np.int16)  # 1 s at 22.05 kHz
    queued = player.write(tone, 22050)
    assert queued == player.pending() == pytest.approx(48000, abs=50)
    out = np.zeros((480, 1), np.int16)
    player.callback(out, 480, None, None)
    assert np.abs(out).max() > 0 and player.pending() == queued - 480
    assert len(player.played) == 1 and len(player.played[0][1]) == 160  # 10 ms at 16 kHz
    assert player.flush() == queued - 480
    player.callback(out, 480, None, None)
    assert not out.any()  # silence at once
    assert len(player.played) == 1  # no reply: no reference
    player.played.clear()

    # an underrun inside a reply is silence on the speaker and in the reference
    player.write(tone[:2205], 22050)  # 100 ms
    refs = []
    for _ in range(20):
        player.callback(out, 480, None, None)
        refs.append(player.played.pop()[1])
    assert sum(len(r) for r in refs) == 20 * 160  # the reference keeps the speaker's time
    assert not np.concatenate(refs)[1700:].any()  # silence after the 100 ms
    player.finish()
    player.callback(out, 480, None, None)
    assert not player.played
