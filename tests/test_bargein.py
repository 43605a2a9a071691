"""Barge-in through the real Silero VAD: the reply's echo is ignored, a person is not."""

from __future__ import annotations

import numpy as np
import pytest

from hark.bargein.detector import BargeInDetector
from hark.bargein.echo import echo_delay


MODEL_FIXTURES = frozenset({"vad"})  # Silero VAD


@pytest.fixture(scope="module")
def vad(cfg):
    from hark.vad.silero import load_vad

    return load_vad(cfg)


def _echo(reply: np.ndarray, delay: int, gain: float) -> np.ndarray:
    out = np.concatenate([np.zeros(delay), reply.astype(float)])[: len(reply)] * gain
    rng = np.random.default_rng(0)
    return out + rng.normal(0, 30, len(out))  # a little room noise


def _run(det: BargeInDetector, mic: np.ndarray) -> int | None:
    f = det.frame
    for i in range(0, len(mic) - f + 1, f):
        if det.process(np.clip(mic[i:i + f], -32768, 32767).astype(np.int16)):
            return i
    return None


def test_echo_delay_is_found(speak):
    ref = speak("The weather today is sunny and warm.").astype(float)
    assert echo_delay(_echo(ref, 1234, 0.5), ref, 3200) == 1234


class _FramesOnly:
    """Stands in for the VAD where only its frame size is used (``residual``)."""

    frame_samples = 512

    def reset(self) -> None:
        pass


def test_echo_delay_is_measured_right_wherever_the_reply_starts(speak):
    """The delay is measured afresh at every reply and after every stall of the speaker,
    so from any point of a reply; a voiced reply repeats every pitch period, and a delay
    one period off leaves the echo in the residual (a barge-in by the reply itself)."""
    reply = speak("It is noon. Is there anything else I can do for you? "
                  "It is three fifteen in the afternoon.").astype(float)
    rng = np.random.default_rng(0)
    wrong = []
    for start in range(0, len(reply) - 24 * 512, 160):
        delay = int(rng.integers(700, 1300))  # a sound card's latency and the room
        det = BargeInDetector(_FramesOnly(), canceller="subtract")
        det.start(reply[start:])
        mic = _echo(reply[start:], delay, 0.5)
        for i in range(0, 24 * 512, 512):
            if det.residual(mic[i:i + 512]) is not None:
                break
        if det.delay != delay:
            wrong.append((start, delay, det.delay))
    assert not wrong


def test_own_voice_echo_does_not_trigger(vad, speak):
    reply = speak("It is three fifteen in the afternoon, and your timer has two minutes left.")
    det = BargeInDetector(vad)
    det.start(reply)
    assert _run(det, _echo(reply, 800, 0.6)) is None
    # the same echo fed to the VAD alone *would* look like speech: the check matters
    plain = BargeInDetector(vad)
    plain.start(np.zeros_like(reply))
    assert _run(plain, _echo(reply, 800, 0.6)) is not None


def test_person_speaking_over_the_reply_triggers(vad, speak):
    reply = speak("It is three fifteen in the afternoon, and your timer has two minutes left.")
    person = speak("Stop. Turn on the kitchen light.").astype(float)
    mic = _echo(reply, 800, 0.6)
    start = 16000  # the person starts one second into the reply
    mic[start:start + len(person)] += person[: len(mic) - start]
    det = BargeInDetector(vad)
    det.start(reply)
    at = _run(det, mic)
    assert at is not None and at >= start


def test_playback_listener_with_satellite_frames(vad, speak):
    """The satellite's use: 20 ms microphone frames, reply audio at the voice's 22.05 kHz."""
    from hark.audio import resample
    from hark.bargein.detector import PlaybackListener

    reply16 = speak("Here is a long answer about the weather, which is sunny and warm today.")
    reply22 = resample(reply16, 16000, 22050)

    def run(mic: np.ndarray) -> int | None:
        lis = PlaybackListener(vad)
        assert lis.heard(np.zeros(320, np.int16)) is False  # nothing playing: never
        for i in range(0, len(reply22), 2205):  # the reply reaches the speaker in pieces
            lis.played(reply22[i:i + 2205], 22050)
        for i in range(0, len(mic) - 320 + 1, 320):
            if lis.heard(np.clip(mic[i:i + 320], -32768, 32767).astype(np.int16)):
                return i
        return None

    echo = _echo(reply16, 640, 0.5)
    assert run(echo) is None
    person = speak("Stop, that's enough.").astype(float)
    mic = echo.copy()
    mic[20000:20000 + len(person)] += person[: len(mic) - 20000]
    at = run(mic)
    assert at is not None and at >= 20000


def _room(reply: np.ndarray, rt60: float, drr_db: float, delay: int = 640,
          seed: int = 1) -> np.ndarray:
    """The reply as a microphone hears it in a reverberant room: a direct path after
    ``delay`` samples plus an exponentially decaying diffuse tail (reverberation time
    ``rt60`` s) ``drr_db`` below it, at half the level, with a little room noise
    (``seed``: the noise; the room is the same for every seed)."""
    n = int(rt60 * 16000)
    t = np.arange(n) / 16000
    tail = np.random.default_rng(1).normal(0, 1, n) * np.exp(-6.9 * t / rt60)
    tail[:80] = 0.0  # 5 ms before the first reflections
    h = np.zeros(delay + n)
    h[delay] = 1.0
    h[delay:] += tail * np.sqrt(10 ** (-drr_db / 10) / np.sum(tail ** 2))
    noise = np.random.default_rng(seed).normal(0, 30, len(reply))
    return np.convolve(reply.astype(float), h)[: len(reply)] * 0.5 + noise


REPLY = ("It is three fifteen in the afternoon, and your timer has two minutes left. "
         "The weather is sunny.")


@pytest.mark.parametrize("rt60, drr_db", [(0.2, 6), (0.4, 0), (0.6, 6), (0.6, 0)])
def test_reverberant_echo_needs_the_adaptive_canceller(vad, speak, rt60, drr_db):
    """A room's echo is the reply smeared by reverberation: one delayed gain leaves most
    of it and the VAD hears the assistant's own voice; the adaptive canceller removes
    it from the first reply on, and the next reply in the same room too."""
    reply = speak(REPLY)
    mic = _room(reply, rt60, drr_db)
    sub = BargeInDetector(vad, canceller="subtract")
    sub.start(reply)
    assert _run(sub, mic) is not None
    det = BargeInDetector(vad)  # adaptive by default
    det.start(reply)
    assert _run(det, mic) is None
    learnt = det.aec.learnt_s
    second = speak("Your timer is done.")
    det.start(second)
    assert det.aec.learnt_s == learnt  # the room it learnt is kept
    assert _run(det, _room(second, rt60, drr_db, seed=2)) is None


@pytest.mark.parametrize("start, level", [(8000, 1.0), (32000, 1.0), (32000, 0.25)])
def test_person_over_a_reverberant_echo_is_heard(vad, speak, start, level):
    """Heard within a quarter of a second: half a second into the first reply (the
    canceller still learning), or two seconds in, even 12 dB under the echo's level."""
    reply = speak(REPLY)
    person = speak("Stop. Turn on the kitchen light.").astype(float) * level
    mic = _room(reply, 0.4, 0)
    mic[start:start + len(person)] += person[: len(mic) - start]
    det = BargeInDetector(vad)
    det.start(reply)
    at = _run(det, mic)
    assert at is not None and start <= at < start + 4000


def test_canceller_removes_a_known_echo_path():
    """EchoCanceller alone, on noise through a reverberant path: after a second of
    learning the residual is well below the echo (and the output is one hop late)."""
    from hark.bargein.echo import EchoCanceller

    rng = np.random.default_rng(3)
    ref = rng.normal(0, 3000, 48000)
    path = np.zeros(2400)
    path[300] = 0.6
    path[300:] += rng.normal(0, 0.05, 2100) * np.exp(-np.arange(2100) / 800)
    mic = np.convolve(ref, path)[: len(ref)]
    aec = EchoCanceller()
    h = aec.hop
    lead = np.concatenate([ref[h:], np.zeros(h)])  # the reference a hop ahead
    out = np.concatenate([aec.process(mic[i:i + h], lead[i:i + h])
                          for i in range(0, len(ref) - h + 1, h)])
    late = mic[: len(out) - h]  # output i*h .. is microphone i*h - h ..
    tail = slice(16000 + h, len(out))
    erle_db = 10 * np.log10(np.sum(late[16000:len(out) - h] ** 2) / np.sum(out[tail] ** 2))
    assert erle_db > 15, erle_db  # ~20 dB measured


def test_unknown_canceller_is_a_clear_error(vad):
    from hark.errors import ConfigError

    with pytest.raises(ConfigError, match="wake.echo_canceller"):
        BargeInDetector(vad, canceller="magic")
