"""Data augmentation of recordings for the wake word evaluation.

A few minutes of real speech cannot show a false-accept rate of 0.5 per hour. The
standard remedy (Kaldi's speed perturbation, SpecAugment-era recipes, the Picovoice and
openWakeWord benchmarks) is to turn each real recording into several realistic variants:

* **speed** perturbation: resample so the audio plays 0.9/0.95/1.05/1.1 times as fast
  (tempo and pitch change together, as in Kaldi's ``perturb_data_dir_speed.sh``);
* **tempo** change with pitch and formants kept (FFmpeg's ``atempo`` through PyAV);
* **gain** changes (a quiet talker across the room, a loud one close by, with clipping);
* **noise**: the kitchen recording mixed in at several signal-to-noise ratios.

:func:`concat_stream` then joins the variants into one continuous stream with short
gaps, so the detector hears running speech without a reset between files, as on a
device, and its refractory period and internal state carry over from file to file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction

import numpy as np

from hark.audio import SAMPLE_RATE, resample
from hark.errors import AudioError, ConfigError

SPEEDS = (0.9, 0.95, 1.05, 1.1)
TEMPOS = (0.9, 1.1)
GAINS_DB = (-20.0, -10.0, 6.0)
SNRS_DB = (20.0, 10.0, 5.0)
FAMILIES = ("speed", "tempo", "gain", "noise")


def speed_perturb(samples: np.ndarray, factor: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play ``samples`` ``factor`` times as fast (pitch moves with it), Kaldi-style:
    treat the audio as sampled at ``rate * factor`` and resample it back to ``rate``."""
    if factor <= 0:
        raise ConfigError(f"speed factor must be positive, got {factor}")
    if factor == 1.0:
        return samples
    return resample(samples.astype(np.int16), round(rate * factor), rate)


def tempo_change(samples: np.ndarray, factor: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Play ``samples`` ``factor`` times as fast with pitch and formants kept (FFmpeg's
    WSOLA ``atempo`` filter through PyAV; factors 0.5-2.0)."""
    if not 0.5 <= factor <= 2.0:
        raise ConfigError(f"tempo factor must be within 0.5-2.0, got {factor}")
    if factor == 1.0 or len(samples) == 0:
        return samples
    import av
    from av.filter import Graph

    graph = Graph()
    src = graph.add_abuffer(format="s16", sample_rate=rate, layout="mono")
    atempo = graph.add("atempo", str(factor))
    sink = graph.add("abuffersink")
    src.link_to(atempo)
    atempo.link_to(sink)
    graph.configure()
    out: list[np.ndarray] = []

    def drain() -> None:
        while True:
            try:
                out.append(graph.pull().to_ndarray().reshape(-1))
            except (av.BlockingIOError, av.EOFError):
                return

    block = 4096
    x = samples.astype(np.int16)
    for i in range(0, len(x), block):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x[i:i + block]).reshape(1, -1),
                                           format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = i
        frame.time_base = Fraction(1, rate)
        graph.push(frame)
        drain()
    graph.push(None)
    drain()
    return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)


def apply_gain(samples: np.ndarray, gain_db: float) -> np.ndarray:
    """Scale by ``gain_db`` decibels, clipping to 16 bits as a real ADC would."""
    if gain_db == 0.0:
        return samples
    y = samples.astype(np.float32) * (10.0 ** (gain_db / 20.0))
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def active_power(samples: np.ndarray, frame: int = 160) -> float:
    """Mean power of the 10 ms frames within 30 dB of the loudest (speech, not pauses)."""
    s = samples.astype(np.float32)
    frames = s[: len(s) // frame * frame].reshape(-1, frame)
    power = (frames ** 2).mean(axis=1)
    active = power[power > power.max() * 1e-3] if len(power) else power
    return float(active.mean()) if len(active) and active.mean() > 0 else 1.0


def mix_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float, offset: int = 0) -> np.ndarray:
    """Add ``noise`` (looped from ``offset``) to ``speech`` at ``snr_db`` relative to the
    speech's active-frame power."""
    if len(noise) == 0:
        raise AudioError("the noise file holds no audio")
    idx = (np.arange(len(speech)) + offset) % len(noise)
    n = noise[idx].astype(np.float32)
    s = speech.astype(np.float32)
    p_n = float((n ** 2).mean()) or 1.0
    gain = np.sqrt(active_power(speech) / (p_n * 10 ** (snr_db / 10)))
    return np.clip(s + gain * n, -32768, 32767).astype(np.int16)


def loud_frames(samples: np.ndarray, rate: int = SAMPLE_RATE, floor_db: float = 30.0
                ) -> np.ndarray:
    """Mask of the 10 ms frames whose energy is within ``floor_db`` of the loudest frame
    and 10 dB above the recording's noise floor (a rough, model-free VAD)."""
    hop = rate // 100
    n = len(samples) // hop
    if n == 0:
        return np.zeros(0, bool)
    x = samples[: n * hop].astype(np.float32).reshape(n, hop)
    db = 10 * np.log10((x ** 2).mean(axis=1) + 1e-3)
    return db > max(db.max() - floor_db, np.percentile(db, 10) + 10.0)


def speech_seconds(samples: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """Seconds of 10 ms frames that hold speech by energy (:func:`loud_frames`)."""
    return float(loud_frames(samples, rate).sum() * (rate // 100) / rate)


@dataclass(frozen=True)
class Condition:
    """One augmentation of the negatives: per-clip speed/tempo/gain, then noise mixed
    into the whole stream. ``randomize``: every clip draws its own speed, tempo and gain
    from the enabled families instead (the extra passes that fill ``--hours-min``)."""

    name: str
    speed: float = 1.0
    tempo: float = 1.0
    gain_db: float = 0.0
    snr_db: float | None = None
    randomize: tuple[str, ...] = ()

    @property
    def time_scale(self) -> float:
        """Seconds of original audio per second of augmented audio."""
        return self.speed * self.tempo


def parse_families(text: str) -> tuple[str, ...]:
    """``"speed,gain,noise"`` -> the families; ``"all"`` -> every family."""
    if not text or text == "none":
        return ()
    if text == "all":
        return FAMILIES
    names = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [n for n in names if n not in FAMILIES]
    if bad:
        raise ConfigError(f"unknown augmentation {', '.join(bad)}",
                          fix=f"use a comma list of {', '.join(FAMILIES)}, or all")
    return names


def conditions(families: tuple[str, ...], snrs: tuple[float, ...] = SNRS_DB) -> list[Condition]:
    """The clean condition, then one condition per value of each enabled family."""
    out = [Condition("clean")]
    if "speed" in families:
        out += [Condition(f"speed_{f:g}", speed=f) for f in SPEEDS]
    if "tempo" in families:
        out += [Condition(f"tempo_{f:g}", tempo=f) for f in TEMPOS]
    if "gain" in families:
        out += [Condition(f"gain_{g:+g}dB", gain_db=g) for g in GAINS_DB]
    if "noise" in families:
        out += [Condition(f"noise_{s:g}dB", snr_db=s) for s in snrs]
    return out


def mixed_condition(k: int, families: tuple[str, ...], snrs: tuple[float, ...]) -> Condition:
    """Extra pass ``k`` (1, 2, ...): random per-clip speed/tempo/gain, noise at the
    ``k``-th SNR in turn (when noise is enabled)."""
    snr = snrs[(k - 1) % len(snrs)] if "noise" in families and snrs else None
    rand = tuple(f for f in families if f != "noise")
    return Condition(f"mixed_{k}", snr_db=snr, randomize=rand)


def perturb_clip(samples: np.ndarray, cond: Condition,
                 rng: np.random.Generator | None = None) -> tuple[np.ndarray, float]:
    """Apply a condition's per-clip speed, tempo and gain; (audio, its time scale)."""
    if cond.randomize:
        rng = rng or np.random.default_rng(0)
        pick = {
            "speed": float(rng.choice((1.0,) + SPEEDS)) if "speed" in cond.randomize else 1.0,
            "tempo": float(rng.choice((1.0,) + TEMPOS)) if "tempo" in cond.randomize else 1.0,
            "gain_db": float(rng.choice((0.0,) + GAINS_DB)) if "gain" in cond.randomize else 0.0,
        }
        cond = replace(cond, randomize=(), **pick)
    y = speed_perturb(samples, cond.speed)
    y = tempo_change(y, cond.tempo)
    y = apply_gain(y, cond.gain_db)
    return y, cond.time_scale


@dataclass
class Segment:
    """Where one recording lies in a concatenated stream."""

    file: str
    start_s: float
    end_s: float
    time_scale: float = 1.0  # original seconds per stream second inside this segment


def concat_stream(clips: list[tuple[str, np.ndarray, float]], rng: np.random.Generator,
                  gap_s: tuple[float, float] = (0.1, 0.8),
                  rate: int = SAMPLE_RATE) -> tuple[np.ndarray, list[Segment]]:
    """Join ``(name, audio, time_scale)`` clips into one stream with a random silent gap
    (uniform in ``gap_s``) before each clip; the stream and where each clip lies."""
    parts: list[np.ndarray] = []
    segments: list[Segment] = []
    pos = 0
    for name, audio, scale in clips:
        gap = int(rng.uniform(*gap_s) * rate)
        parts += [np.zeros(gap, np.int16), audio.astype(np.int16)]
        pos += gap
        segments.append(Segment(name, pos / rate, (pos + len(audio)) / rate, scale))
        pos += len(audio)
    stream = np.concatenate(parts) if parts else np.zeros(0, np.int16)
    return stream, segments


def locate(segments: list[Segment], t: float) -> tuple[str, float]:
    """The recording at stream time ``t`` and the time inside it in the *original*
    recording's seconds; a time in a gap belongs to the recording before it."""
    best = segments[0] if segments else None
    for seg in segments:
        if seg.start_s <= t:
            best = seg
        else:
            break
    if best is None:
        return "", t
    inside = min(max(t - best.start_s, 0.0), best.end_s - best.start_s)
    return best.file, inside * best.time_scale
