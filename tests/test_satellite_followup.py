"""The follow-up window (no wake word after a reply) opens on voice activity: real
kitchen noise in the window does not open a turn, Piper speech does. Real Silero VAD,
wake word, sockets and codecs; the server's assistant is test_server's small fake."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from test_server import FakeAssistant, _cfg, _satellite, _start

from hark.audio import read_audio, write_wav
from hark.config import Config
from hark.satellite.followup import FollowUpGate
from hark.vad.silero import load_vad

pytestmark = pytest.mark.timeout(120)


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
    wav = write_wav(tmp_path / "talk.wav", np.concatenate([
        pad, speak("Alexa, what time is it?"), np.zeros(int(1.5 * 16000), np.int16),
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
