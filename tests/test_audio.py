"""Audio input: rates, channels, formats, damaged files."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from hark.audio import read_audio, resample, write_wav
from hark.errors import AudioError


def _tone(rate: int, secs: float = 0.5, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * secs)) / rate
    return (np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16)


def test_other_rate_is_resampled(tmp_path):
    p = write_wav(tmp_path / "a.wav", _tone(44100), 44100)
    out = read_audio(p)
    assert abs(len(out) - 8000) <= 64
    spectrum = np.abs(np.fft.rfft(out.astype(float)))
    assert abs(np.argmax(spectrum) * 16000 / len(out) - 440) < 10  # pitch preserved


def test_stereo_is_mixed_down(tmp_path):
    left = _tone(16000)
    p = tmp_path / "s.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.stack([left, left], axis=1).astype("<i2").tobytes())
    out = read_audio(p)
    assert len(out) == len(left) and np.allclose(out, left, atol=1)


def test_empty_missing_and_corrupt_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        read_audio(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match="no such file"):
        read_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF\x00\x00junk" * 10)
    with pytest.raises(AudioError, match="junk.wav"):
        read_audio(tmp_path / "junk.wav")


def test_truncated_wav_keeps_what_is_there(tmp_path):
    p = write_wav(tmp_path / "t.wav", _tone(16000, 1.0), 16000)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2 + 1])  # cut mid-sample
    out = read_audio(p)
    assert 7000 < len(out) < 8100


def test_resample_identity_and_empty():
    x = _tone(16000)
    assert resample(x, 16000, 16000) is x
    assert len(resample(np.zeros(0, np.int16), 22050, 16000)) == 0
