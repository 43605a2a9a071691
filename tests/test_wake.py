"""Wake word stage: the real microWakeWord model on Piper speech and real recordings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hark.audio import AudioChunk, read_audio
from hark.errors import AudioError, ConfigError
from hark.wake.detector import WakeWordDetector
from hark.wake.evaluate import keyword_end_s, mix_noise


@pytest.fixture(scope="module")
def det() -> WakeWordDetector:
    return WakeWordDetector("alexa", refractory_s=1.0)


def _hits(det: WakeWordDetector, audio: np.ndarray, chunk: int = 320) -> list[float]:
    det.reset()
    out = []
    for i in range(0, len(audio), chunk):
        ev = det.process(AudioChunk(audio[i:i + chunk], 16000, 100.0 + i / 16000))
        if ev:
            assert ev.t > 100.0 and ev.keyword == "alexa"
            out.append(ev.stream_s)
    return out


def test_detects_piper_alexa_and_not_other_speech(det, speak):
    pad = np.zeros(8000, np.int16)
    said = np.concatenate([pad, speak("Alexa, what time is it?")])
    hits = _hits(det, said)
    assert len(hits) == 1
    # detected after the keyword began and before the question ended
    assert 0.5 < hits[0] < len(said) / 16000
    assert _hits(det, np.concatenate([pad, speak("What time is it in Paris?")])) == []


def test_chunk_size_does_not_change_detection(det, speak):
    said = np.concatenate([np.zeros(4000, np.int16), speak("Alexa."), np.zeros(8000, np.int16)])
    a = _hits(det, said, 160)
    b = _hits(det, said, 1024)
    assert len(a) == len(b) == 1
    assert abs(a[0] - b[0]) < 0.07


def test_refractory_period_blocks_repeat(det, speak):
    word = speak("Alexa.")
    gap = np.zeros(1600, np.int16)
    close = np.concatenate([gap, word, gap, word, gap])  # repeats within 1 s
    det.refractory_s = 10.0
    try:
        assert len(_hits(det, close)) == 1
    finally:
        det.refractory_s = 1.0
    far = np.concatenate([gap, word, np.zeros(24000, np.int16), word, gap])
    assert len(_hits(det, far)) == 2


def test_silence_and_noise_do_not_trigger(det):
    rng = np.random.default_rng(0)
    noise = (rng.normal(0, 2000, 16000 * 3)).astype(np.int16)
    assert _hits(det, np.zeros(16000 * 2, np.int16)) == []
    assert _hits(det, noise) == []


def test_bad_input_gets_clear_errors(det):
    with pytest.raises(AudioError, match="16 kHz"):
        det.process(AudioChunk(np.zeros(441, np.int16), 44100))
    with pytest.raises(ConfigError, match="unknown wake word"):
        WakeWordDetector("hey_siri")
    with pytest.raises(ConfigError):
        WakeWordDetector("alexa", threshold=1.5)


def test_real_recordings_detected(det, testdata):
    files = sorted((testdata / "wake" / "alexa").glob("*.flac"))[:8]
    found = sum(bool(_hits(det, np.concatenate([np.zeros(8000, np.int16), read_audio(f)])))
                for f in files)
    assert found >= 7


def test_keyword_end_and_noise_mixing(speak):
    word = speak("Alexa.")
    audio = np.concatenate([np.zeros(8000, np.int16), word, np.zeros(8000, np.int16)])
    end = keyword_end_s(audio)
    assert 0.5 < end <= 0.5 + len(word) / 16000 + 0.01
    noise = np.random.default_rng(1).normal(0, 1000, 16000).astype(np.int16)
    mixed = mix_noise(audio, noise, 10.0)
    s = audio.astype(np.float64)
    n = mixed.astype(np.float64) - s
    active = s[s != 0]
    assert n.std() > 0 and 5 < 10 * np.log10((active ** 2).mean() / (n ** 2).mean()) < 15


def test_eval_cli_json(tmp_path, speak):
    from hark.audio import write_wav
    from hark.cli import main

    pos, neg = tmp_path / "pos", tmp_path / "neg"
    write_wav(pos / "a.wav", np.concatenate([np.zeros(8000, np.int16), speak("Alexa.")]), 16000)
    write_wav(neg / "b.wav", speak("I would like a large coffee."), 16000)
    out = tmp_path / "r.json"
    assert main(["eval", "wake", "--positives", str(pos), "--negatives", str(neg),
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["detection_rate"] == 1.0 and res["false_accepts_per_hour"] == 0.0
    assert set(res["latency_ms"]) == {"p50", "p95"} and res["cpu_per_audio_s"] > 0
