"""``hark eval wake``: detection rate, false accepts per hour, latency and CPU cost of
the satellite's wake word stage over real recordings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hark.audio import SAMPLE_RATE, read_audio
from hark.errors import AudioError
from hark.trace import percentile
from hark.wake.detector import WakeWordDetector

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
CHUNK = 320  # 20 ms, what a satellite feeds
PAD_S = 0.5  # silence streamed around each recording, as a microphone would


def audio_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise AudioError(f"{folder}: not a folder of recordings")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise AudioError(f"{folder}: no .wav/.flac recordings in it")
    return files


def keyword_end_s(samples: np.ndarray, rate: int = SAMPLE_RATE, floor_db: float = 30.0) -> float:
    """End of the last loud stretch: the last 10 ms frame whose energy is within
    ``floor_db`` of the loudest frame and above the noise floor by 10 dB (the recordings
    hold one isolated keyword, so this is where the keyword ends)."""
    hop = rate // 100
    n = len(samples) // hop
    if n == 0:
        return 0.0
    x = samples[: n * hop].astype(np.float32).reshape(n, hop)
    db = 10 * np.log10((x ** 2).mean(axis=1) + 1e-3)
    noise = np.percentile(db, 10)
    thresh = max(db.max() - floor_db, noise + 10.0)
    loud = np.nonzero(db > thresh)[0]
    return float((loud[-1] + 1) * hop / rate) if len(loud) else 0.0


def mix_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float, offset: int = 0) -> np.ndarray:
    """Add ``noise`` (looped from ``offset``) to ``speech`` at ``snr_db`` relative to the
    speech's active-frame power."""
    if len(noise) == 0:
        raise AudioError("the noise file holds no audio")
    idx = (np.arange(len(speech)) + offset) % len(noise)
    n = noise[idx].astype(np.float32)
    s = speech.astype(np.float32)
    frames = s[: len(s) // 160 * 160].reshape(-1, 160)
    power = (frames ** 2).mean(axis=1)
    active = power[power > power.max() * 1e-3] if len(power) else power
    p_s = float(active.mean()) if len(active) else 1.0
    p_n = float((n ** 2).mean()) or 1.0
    gain = np.sqrt(p_s / (p_n * 10 ** (snr_db / 10)))
    return np.clip(s + gain * n, -32768, 32767).astype(np.int16)


@dataclass
class WakeEval:
    positives: int = 0
    detected: int = 0
    negative_s: float = 0.0
    false_accepts: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    audio_s: float = 0.0
    cpu_s: float = 0.0
    missed: list[str] = field(default_factory=list)
    false_accept_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "detection_rate": self.detected / self.positives if self.positives else None,
            "false_accepts_per_hour": (self.false_accepts / (self.negative_s / 3600.0)
                                       if self.negative_s else None),
            "latency_ms": {"p50": percentile(self.latencies_ms, 50),
                           "p95": percentile(self.latencies_ms, 95)},
            "cpu_per_audio_s": self.cpu_s / self.audio_s if self.audio_s else None,
            "positives": self.positives,
            "detected": self.detected,
            "false_accepts": self.false_accepts,
            "negative_hours": self.negative_s / 3600.0,
            "missed": self.missed,
            "false_accept_files": self.false_accept_files,
        }


def _stream(det: WakeWordDetector, samples: np.ndarray) -> list[float]:
    """Feed a clip in 20 ms chunks; the stream times (s) of each detection."""
    det.reset()
    hits = []
    for i in range(0, len(samples), CHUNK):
        ev = det.process(samples[i:i + CHUNK])
        if ev is not None:
            hits.append(ev.stream_s)
    return hits


def evaluate(det: WakeWordDetector, positives: list[Path], negatives: list[Path],
             noise: np.ndarray | None = None, snr_db: float = 10.0) -> WakeEval:
    res = WakeEval()
    pad = np.zeros(int(PAD_S * SAMPLE_RATE), np.int16)
    wall_cpu0 = time.process_time()
    for kind, files in (("pos", positives), ("neg", negatives)):
        for path in files:
            clean = read_audio(path)
            audio = np.concatenate([pad, clean, pad])
            if noise is not None:
                audio = mix_noise(audio, noise, snr_db, offset=hash(path.name) % len(noise))
            hits = _stream(det, audio)
            res.audio_s += len(audio) / SAMPLE_RATE
            if kind == "pos":
                res.positives += 1
                if hits:
                    res.detected += 1
                    end = PAD_S + keyword_end_s(clean)
                    res.latencies_ms.append((hits[0] - end) * 1000.0)
                else:
                    res.missed.append(path.name)
            else:
                res.negative_s += len(clean) / SAMPLE_RATE
                if hits:
                    res.false_accepts += len(hits)
                    res.false_accept_files.append(path.name)
    res.cpu_s = time.process_time() - wall_cpu0
    return res
