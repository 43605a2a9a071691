"""The wake word's second stage: openWakeWord (the real model) checks what microWakeWord
(the real model) fired on, on Piper speech and on real recordings."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hark.audio import AudioChunk, read_audio
from hark.bench.augment import speed_perturb
from hark.config import Config
from hark.errors import ConfigError
from hark.wake.detector import WakeWordDetector, load_wake
from hark.wake.verifier import AudioHistory, OpenWakeWordVerifier, load_verifier

PAD = np.zeros(8000, np.int16)
#: the real coffee order ("I'd like a twelve ounce light roast...") that microWakeWord
#: false-accepts as "alexa" when it is played 10% slower
LOOKALIKE = "coffee/b30b89a8-2fc1-4adb-9e6e-74eac5c446e8.wav"


MODEL_FIXTURES = frozenset({"verifier"})  # the openWakeWord models


@pytest.fixture(scope="module")
def verifier() -> OpenWakeWordVerifier:
    return OpenWakeWordVerifier("alexa")


def _events(det: WakeWordDetector, audio: np.ndarray) -> list:
    det.reset()
    out = []
    for i in range(0, len(audio), 320):
        ev = det.process(AudioChunk(audio[i:i + 320], 16000, 50.0 + i / 16000))
        if ev is not None:
            out.append(ev)
    return out


def test_piper_alexa_is_confirmed_after_the_verifier_hears_the_word_end(verifier, speak):
    audio = np.concatenate([PAD, speak("Alexa, what time is it?"), PAD])
    det = WakeWordDetector("alexa", verifier=verifier)
    events = _events(det, audio)
    assert len(events) == 1, det.verifications
    (check,) = det.verifications
    assert check["accepted"] and check["verifier_score"] >= verifier.threshold
    # Piper's "Alexa" ends sharply: microWakeWord fires before openWakeWord has heard
    # enough, so the check listened on, and the event is reported when it agreed
    assert check["waited_s"] > 0
    assert events[0].stream_s == pytest.approx(check["stream_s"] + check["waited_s"], abs=0.03)
    assert events[0].t == pytest.approx(50.0 + events[0].stream_s, abs=0.03)
    assert events[0].late_s == pytest.approx(check["waited_s"], abs=0.001)


def test_verifier_scores_keyword_high_and_other_speech_low(verifier, speak):
    word = np.concatenate([PAD, speak("Alexa, stop."), PAD])
    assert verifier.score(word) >= 0.5
    assert verifier.score(np.concatenate([PAD, speak("I'd like a twelve ounce latte.")])) < 0.05


@pytest.mark.models
def test_a_rejected_candidate_is_checked_once_and_reported_never(speak):
    class Never:
        threshold, window_s, wait_s, last_ms = 0.5, 2.0, 0.2, 0.0

        def __init__(self):
            self.starts = 0
            self.fed = 0

        def start(self, audio):
            self.starts += 1
            assert 0 < len(audio) <= 2 * 16000
            return 0.0

        def feed(self, samples):
            self.fed += len(samples)
            return 0.1

    never = Never()
    det = WakeWordDetector("alexa", verifier=never)
    audio = np.concatenate([PAD, speak("Alexa."), PAD, PAD])
    assert _events(det, audio) == []
    assert never.starts == 1  # not again while the first stage stays above its threshold
    assert 0.2 * 16000 <= never.fed <= 0.3 * 16000  # listened on for wait_s, then gave up
    (check,) = det.verifications
    assert not check["accepted"] and check["verifier_score"] == pytest.approx(0.1)
    # without the second stage the same audio fires: the rejection was the verifier's
    assert len(_events(WakeWordDetector("alexa"), audio)) == 1


def test_real_keywords_pass_and_real_lookalike_is_rejected(verifier, testdata):
    det = WakeWordDetector("alexa", verifier=verifier)
    files = sorted((testdata / "wake" / "alexa").glob("*.flac"))[:8]
    found = sum(len(_events(det, np.concatenate([PAD, read_audio(f), PAD]))) == 1
                for f in files)
    assert found >= 7
    slower = np.concatenate([PAD, speed_perturb(read_audio(testdata / LOOKALIKE), 0.9), PAD])
    assert len(_events(WakeWordDetector("alexa"), slower)) == 1  # the first stage alone
    assert _events(det, slower) == []
    assert [v["accepted"] for v in det.verifications] == [False]


def test_audio_history_keeps_the_last_seconds():
    h = AudioHistory(1.0)
    assert len(h.get()) == 0
    for i in range(10):
        h.append(np.full(4000, i, np.int16))
    got = h.get()
    assert len(got) == 16000 and got[0] == 6 and got[-1] == 9
    h.clear()
    assert len(h.get()) == 0


@pytest.mark.models
def test_verifier_config(caplog):
    cfg = Config()
    assert cfg.wake.verifier == "openwakeword"
    det = load_wake(cfg)
    assert isinstance(det.verifier, OpenWakeWordVerifier)
    assert det.verifier.threshold == cfg.wake.verifier_threshold
    cfg.wake.verifier = "none"
    assert load_wake(cfg).verifier is None
    with pytest.raises(ConfigError, match="unknown wake.verifier"):
        load_verifier("whisper", "alexa")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        OpenWakeWordVerifier("alexa", threshold=1.5)
    with caplog.at_level(logging.WARNING):
        assert load_verifier("openwakeword", "/models/my_word.json") is None
    assert "no openWakeWord model" in caplog.text
