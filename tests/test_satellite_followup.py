"""The follow-up window (no wake word after a reply) opens on voice activity: real
kitchen noise in the window does not open a turn, Piper speech does. Real Silero VAD,
wake word, sockets and codecs; the server's assistant is test_server's small fake."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from test_server import FakeAssistant, _cfg, _satellite, _start

from hark.audio import read_audio, write_wav
from hark.config import Config
from hark.satellite.followup import FollowUpGate
from hark.vad.silero import load_vad

pytestmark = pytest.mark.timeout(120)

MODEL_FIXTURES = frozenset({"gate"})  # Silero VAD


def _levels(x: np.ndarray) -> np.ndarray:
    """dBFS of each 20 ms frame."""
    fr = x[: len(x) // 320 * 320].reshape(-1, 320).astype(np.float64)
    return 20 * np.log10(np.sqrt((fr ** 2).mean(1)) / 32768 + 1e-9)


def _loud_enough_for_an_energy_gate(x: np.ndarray, dbfs: float = -38.0) -> bool:
    """Would the old rule (3 frames in a row over -38 dBFS) have opened a turn?"""
    run = 0
    for level in _levels(x):
        run = run + 1 if level > dbfs else 0
        if run >= 3:
            return True
    return False


@pytest.fixture(scope="module")
def kitchen(testdata) -> np.ndarray:
    """4 s of the loudest stretch of real kitchen noise, brought to a -30 dBFS median
    (louder than a quiet voice: plenty to fool a loudness gate)."""
    path = testdata / "noise_kitchen.wav"
    if not path.exists():
        pytest.skip("noise_kitchen.wav is absent")
    x = read_audio(path).astype(np.float64)
    n = 4 * 16000
    c = np.concatenate([[0.0], np.cumsum(x ** 2)])
    starts = np.arange(0, len(x) - n, 1600)
    start = int(starts[np.argmax(c[starts + n] - c[starts])])
    seg = x[start:start + n]
    gain = 10 ** ((-30 - np.median(_levels(seg.astype(np.int16)))) / 20)
    return np.clip(seg * gain, -32768, 32767).astype(np.int16)


@pytest.fixture(scope="module")
def gate() -> FollowUpGate:
    return FollowUpGate(load_vad(Config()))


def _feed(gate: FollowUpGate, audio: np.ndarray) -> bool:
    gate.reset()
    return any(gate.heard(audio[i:i + 320]) for i in range(0, len(audio) - 319, 320))


def test_gate_ignores_kitchen_noise_and_hears_speech(gate, kitchen, speak):
    assert _loud_enough_for_an_energy_gate(kitchen)
    assert not _feed(gate, kitchen)
    assert gate.frames_heard > 100  # it did listen to all of it
    assert _feed(gate, speak("And in Paris?"))
    # speech mixed into the same noise still counts
    words = speak("What about tomorrow?")
    mixed = np.clip(kitchen[:len(words)].astype(np.int32) + words, -32768, 32767)
    assert _feed(gate, mixed.astype(np.int16))


@pytest.mark.parametrize("then", ["noise", "speech"])
def test_follow_up_window_opens_on_speech_not_noise(then, kitchen, speak, tmp_path):
    pad = np.zeros(8000, np.int16)
    after = kitchen if then == "noise" else speak("And in Paris?")
    # the 0.6 s reply ends at least 0.9 s after the question (0.3 s of quiet ends the
    # turn) and the barge-in listener hears the room for 0.5 s more: speech 1.5 s after
    # the question was a barge-in whenever a busy machine made the reply a little late;
    # 2.5 s is after all that, and within the 4 s follow-up window
    wav = write_wav(tmp_path / "talk.wav", np.concatenate([
        pad, speak("Alexa, what time is it?"), np.zeros(int(2.5 * 16000), np.int16),
        after, pad]), 16000)

    async def go():
        cfg = _cfg(shm="never")
        server, fake = await _start(cfg, FakeAssistant())
        sat = _satellite(cfg, wav, tmp_path / "out.wav")
        sat.cfg.wake.followup_s = 4.0
        try:
            await asyncio.wait_for(sat.run(), 60)
        finally:
            await server.stop()
        return sat, fake

    sat, fake = asyncio.run(go())
    assert sat.stats.wakes == 1
    assert sat._followup_gate is not None and sat._followup_gate.frames_heard > 0
    if then == "noise":
        assert sat.stats.followups == 0 and sat.stats.turns_done == 1
        assert len(fake.turn_speech) == 1
    else:
        assert sat.stats.followups == 1 and sat.stats.turns_done == 2
        assert fake.turn_speech[1] > 0.3 * 16000  # the follow-up's words reached the server


class _Room:
    """A loudspeaker beside the microphone, on one sample clock (one sound card): what
    the satellite plays goes into the speaker's buffer (``latency_ms`` deep when it
    starts from idle, then appended) and comes back into the microphone 6 dB down,
    mixed with the recording. Microphone frame ``k`` holds speaker samples
    ``[k*320, (k+1)*320)``. Like a sound card, it says when it ran dry (``underran``)."""

    def __init__(self, wav, latency_ms: int = 60, gain: float = 0.5, seconds: int = 60):
        import threading

        from hark.satellite.audio import FileSource

        self.mic = FileSource(wav, 320)
        self.ended, self.done = self.mic.ended, self.mic.done
        self.latency = latency_ms * 16
        self.gain = gain
        self.speaker = np.zeros(seconds * 16000, np.float32)  # what plays, by wall clock
        self.cursor = 0  # where queued speaker audio ends
        self.frames = 0  # microphone frames delivered
        self._lock = threading.Lock()
        self.echo_samples = 0  # reply samples that reached the microphone
        self.underran = False  # the last write found the speaker idle

    def _index(self) -> int:
        """The speaker sample now being captured by the microphone."""
        import time

        if self.mic.started_at is None:
            return 0
        return int((time.monotonic() - self.mic.started_at) * 16000)

    # the sink side
    def write(self, samples: np.ndarray, rate: int) -> None:
        from hark.audio import resample

        x = resample(np.asarray(samples, np.int16), rate, 16000).astype(np.float32)
        with self._lock:
            now = self._index()
            self.underran = self.cursor <= now
            at = self.cursor if self.cursor > now else now + self.latency
            x = x[: max(0, len(self.speaker) - at)]
            self.speaker[at:at + len(x)] = x * self.gain
            self.cursor = at + len(x)

    def stop(self) -> None:
        with self._lock:
            now = self._index()
            self.speaker[now:] = 0
            self.cursor = now

    def close(self) -> None:
        pass

    # the microphone side
    def __iter__(self):
        for frame in self.mic:
            a = min(self.frames * len(frame), len(self.speaker))
            self.frames += 1
            with self._lock:
                e = self.speaker[a:a + len(frame)]
            self.echo_samples += int(np.count_nonzero(e))
            mixed = frame.astype(np.float64)
            mixed[:len(e)] += e
            yield np.clip(mixed, -32768, 32767).astype(np.int16)


class _SpeakingAssistant(FakeAssistant):
    """Answers in Piper's voice (so its echo sounds like speech to a VAD)."""

    def __init__(self, reply: np.ndarray):
        super().__init__()
        from hark.audio import resample

        self.reply = resample(reply, 16000, self.tts_rate)

    def tone(self, seconds: float) -> np.ndarray:
        return self.reply


def test_reply_echo_neither_opens_a_turn_nor_interrupts(speak, tmp_path):
    """The satellite hears its own spoken reply through the room: no follow-up turn and
    no barge-in from the echo, yet the person's real follow-up is taken."""
    from hark.satellite.satellite import Satellite

    pad = np.zeros(8000, np.int16)
    ask = speak("Alexa, what time is it?")
    reply = speak("It is noon. Is there anything else I can do for you?")
    # the follow-up comes 2 s after the reply would end if it began at once: speech
    # while the listener still hears the room (0.5 s after the reply) is a barge-in, and
    # on a busy machine the reply begins late and stalls now and then
    wait_s = 2.0 + len(reply) / 16000
    wav = write_wav(tmp_path / "talk.wav", np.concatenate([
        pad, ask, np.zeros(int(wait_s * 16000), np.int16), speak("And in Paris?"), pad]),
        16000)
    follow_up_at = (len(pad) + len(ask)) / 16000 + wait_s  # seconds into the recording
    turn_starts: list[float] = []  # seconds into the recording

    async def go():
        cfg = _cfg(shm="never")
        server, fake = await _start(cfg, _SpeakingAssistant(reply))
        room = _Room(wav)
        c = Config()
        c.transport = cfg.transport
        c.satellite.server = cfg.satellite.server
        c.sched.realtime = False
        c.wake.followup_s = 4.0
        sat = Satellite(c, room, room, exit_when_done=True, realtime_thread=False)
        start_turn = sat._start_turn

        async def timed_start_turn(*args, **kwargs):
            turn_starts.append(time.monotonic() - room.mic.started_at)
            await start_turn(*args, **kwargs)

        sat._start_turn = timed_start_turn
        try:
            await asyncio.wait_for(sat.run(), 60)
        finally:
            await server.stop()
        return sat, fake, room

    sat, fake, room = asyncio.run(go())
    assert room.echo_samples > 0.8 * len(reply)  # the reply really was in the microphone
    assert sat.stats.wakes == 1 and sat.stats.barge_ins == 0
    assert sat.stats.followups == 1 and sat.stats.turns_done == 2
    assert len(fake.turn_speech) == 2 and fake.turn_speech[1] > 0.3 * 16000
    # the follow-up began with the person's words, not with the reply's echo before them
    assert len(turn_starts) == 2 and turn_starts[1] > follow_up_at, (turn_starts, follow_up_at)


def test_microphone_frames_are_stamped_with_their_capture_time():
    """A wake thread that fell behind reads a backlog of frames at once: each is stamped
    with when it was captured, counted from the frames before it, not with when it was
    read (the reply's echo is lined up by it); after the source dropped audio the count
    starts afresh."""
    from hark.satellite.satellite import Satellite

    class Source:
        overflowed = False

        def __iter__(self):
            for _ in range(5):  # on time
                time.sleep(0.02)
                yield np.zeros(320, np.int16)
            time.sleep(0.2)  # the reader stalls: ten frames wait for it
            for _ in range(10):
                yield np.zeros(320, np.int16)
            time.sleep(0.2)
            self.overflowed = True  # ... and ten more were dropped
            yield np.zeros(320, np.int16)

    class NoWake:
        keyword = "alexa"

        def process(self, chunk):
            return None

    class NoSpeaker:
        def write(self, pcm, rate) -> None:
            pass

    c = Config()
    c.wake.barge_in_speech = False
    c.wake.followup_s = 0
    sat = Satellite(c, Source(), NoSpeaker(), detector=NoWake(), realtime_thread=False)

    async def go():
        q: asyncio.Queue = asyncio.Queue()
        read: list[float] = []
        original = q.put_nowait

        def put(item):
            read.append(time.monotonic())
            original(item)

        q.put_nowait = put
        await asyncio.to_thread(sat._wake_thread, asyncio.get_running_loop(), q)
        items = [q.get_nowait() for _ in range(q.qsize())]
        return [item[2] for item in items if item is not None], read

    stamps, read = asyncio.run(go())
    assert len(stamps) == 16
    assert np.diff(stamps[5:15]) == pytest.approx([0.02] * 9, abs=1e-4)  # as captured
    assert read[5] - stamps[5] > 0.15  # the first of them read well after its capture
    assert read[15] - stamps[15] < 0.1  # after the drop: counted from its own reading
