"""Barge-in through the real Silero VAD: the reply's echo is ignored, a person is not."""

from __future__ import annotations

import numpy as np
import pytest

from hark.pipeline.bargein import BargeInDetector, echo_delay


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
    from hark.pipeline.bargein import PlaybackListener

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
