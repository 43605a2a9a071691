"""``hark eval wake``: detection rate, false accepts per hour, latency and CPU cost of
the satellite's wake word stage over real recordings.

Three parts:

* :func:`evaluate`: each positive and negative recording streamed on its own (the
  detector reset per file), as before;
* :func:`evaluate_streams`: the negatives augmented (see :mod:`hark.wake.augment`) and
  joined into continuous streams until ``hours_min`` hours of speech-without-keyword
  audio were heard, every false accept located (condition, file, time, score), with a
  Poisson upper confidence bound on the rate;
* :func:`cross_validate`: the threshold chosen on one half of the files and scored on
  the other, both ways, from the recorded score traces (the score does not depend on
  the threshold, so one pass serves every threshold).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hark.audio import SAMPLE_RATE, read_audio
from hark.errors import AudioError
from hark.trace import percentile
from hark.wake.augment import (SNRS_DB, SPEEDS, Condition, Segment, concat_stream, conditions,
                               locate, mix_noise, mixed_condition, perturb_clip,
                               speech_seconds, speed_perturb)
from hark.wake.detector import FEATURE_STEP_S, WakeWordDetector

__all__ = ["audio_files", "keyword_end_s", "mix_noise", "evaluate", "evaluate_streams",
           "evaluate_positive_robustness", "cross_validate", "detections", "poisson_upper",
           "split_halves", "WakeEval", "StreamRun"]

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3"}
CHUNK = 320  # 20 ms, what a satellite feeds
PAD_S = 0.5  # silence streamed around each recording, as a microphone would
TARGET_FA_PER_HOUR = 0.5
THRESHOLD_GRID = tuple(round(0.50 + 0.01 * i, 2) for i in range(50))  # 0.50 .. 0.99


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


def poisson_upper(k: int, conf: float = 0.95) -> float:
    """One-sided upper confidence bound on a Poisson mean after ``k`` events (exact,
    Garwood): the mean at which seeing ``k`` or fewer has probability ``1 - conf``.
    ``k = 0`` gives -ln(0.05) = 3.0, the "rule of three"."""
    alpha = 1.0 - conf

    def cdf(lam: float) -> float:  # P(X <= k | lam)
        term = total = math.exp(-lam)
        for i in range(1, k + 1):
            term *= lam / i
            total += term
        return total

    lo, hi = 0.0, max(10.0, 4.0 * (k + 1) + 10.0)
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > alpha else (lo, mid)
    return (lo + hi) / 2


def rate_summary(events: int, hours: float) -> dict:
    """Count, hours, rate per hour and its 95 % upper bound."""
    return {
        "hours": hours,
        "false_accepts": events,
        "per_hour": events / hours if hours else None,
        "per_hour_upper95": poisson_upper(events) / hours if hours else None,
    }


def detections(scores: np.ndarray, threshold: float, refractory_s: float,
               confirm: int = 1) -> list[int]:
    """Indexes (0-based feature numbers) where a detector with this threshold and
    refractory period fires on a recorded score trace: the same rule as
    :class:`WakeWordDetector` (``confirm`` > 1: the score must have stayed at or above
    the threshold for that many consecutive 10 ms features)."""
    above = np.asarray(scores) >= threshold
    idx = np.nonzero(above)[0]
    if confirm > 1 and len(idx):
        n = np.arange(len(above))
        last_below = np.maximum.accumulate(np.where(above, -1, n))
        idx = idx[(n - last_below)[idx] >= confirm]  # length of the run above, so far
    out: list[int] = []
    blocked_until = -1.0
    for i in idx:
        t = (i + 1) * FEATURE_STEP_S  # the detector's stream_s after feature i
        if t >= blocked_until:
            out.append(int(i))
            blocked_until = t + refractory_s
    return out


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
    #: highest score each positive recording reached (for threshold studies)
    positive_peaks: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        fa = rate_summary(self.false_accepts, self.negative_s / 3600.0)
        return {
            "detection_rate": self.detected / self.positives if self.positives else None,
            "false_accepts_per_hour": fa["per_hour"],
            "false_accepts_per_hour_upper95": fa["per_hour_upper95"],
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


def _stream(det: WakeWordDetector, samples: np.ndarray, reset: bool = True) -> list[tuple[float, float]]:
    """Feed audio in 20 ms chunks; (stream time s, score) of each detection."""
    if reset:
        det.reset()
    hits = []
    for i in range(0, len(samples), CHUNK):
        ev = det.process(samples[i:i + CHUNK])
        if ev is not None:
            hits.append((ev.stream_s, ev.probability))
    return hits


def _peak_run(det: WakeWordDetector, audio: np.ndarray) -> tuple[list[tuple[float, float]], float]:
    """Stream one clip from a reset detector; its detections and its peak score."""
    det.scores = []
    try:
        hits = _stream(det, audio)
        peak = max(det.scores, default=0.0)
    finally:
        det.scores = None
    return hits, peak


def evaluate(det: WakeWordDetector, positives: list[Path], negatives: list[Path],
             noise: np.ndarray | None = None, snr_db: float = 10.0) -> WakeEval:
    """Each recording on its own (detector reset, 0.5 s of silence around it)."""
    res = WakeEval()
    pad = np.zeros(int(PAD_S * SAMPLE_RATE), np.int16)
    cpu0 = det.cpu_s
    for kind, files in (("pos", positives), ("neg", negatives)):
        for path in files:
            clean = read_audio(path)
            audio = np.concatenate([pad, clean, pad])
            if noise is not None:
                audio = mix_noise(audio, noise, snr_db, offset=_stable_int(path.name) % len(noise))
            hits, peak = _peak_run(det, audio)
            res.audio_s += len(audio) / SAMPLE_RATE
            if kind == "pos":
                res.positives += 1
                res.positive_peaks[path.name] = peak
                if hits:
                    res.detected += 1
                    end = PAD_S + keyword_end_s(clean)
                    res.latencies_ms.append((hits[0][0] - end) * 1000.0)
                else:
                    res.missed.append(path.name)
            else:
                res.negative_s += len(clean) / SAMPLE_RATE
                if hits:
                    res.false_accepts += len(hits)
                    res.false_accept_files.append(path.name)
    res.cpu_s = det.cpu_s - cpu0
    return res


def _stable_int(name: str) -> int:
    """A hash of a name that is the same in every run (``hash()`` is salted)."""
    return int.from_bytes(hashlib.sha1(name.encode()).digest()[:8], "big")


# -- augmented negatives as continuous streams ---------------------------------------

@dataclass
class StreamRun:
    """One continuous stream of augmented negatives through the detector."""

    condition: Condition
    segments: list[Segment]
    scores: np.ndarray  # the detector's score after every 10 ms feature
    events: list[dict]  # live detections: stream time, score, file, time in file
    audio_s: float  # the whole stream, gaps included
    negative_s: float  # the recordings only (gaps excluded): the hours FA/h divides by
    speech_s: float  # of which frames hold speech by energy
    cpu_s: float  # detector CPU time

    def summary(self) -> dict:
        out = rate_summary(len(self.events), self.negative_s / 3600.0)
        out.update(speech_hours=self.speech_s / 3600.0, stream_hours=self.audio_s / 3600.0,
                   files=len(self.segments))
        return out


def evaluate_streams(det: WakeWordDetector, clips: list[tuple[str, np.ndarray]],
                     families: tuple[str, ...] = (), noise: np.ndarray | None = None,
                     snrs: tuple[float, ...] = SNRS_DB, hours_min: float = 0.0,
                     seed: int = 0, gap_s: tuple[float, float] = (0.1, 0.8),
                     max_passes: int = 200) -> list[StreamRun]:
    """Run the negatives as continuous streams, one per augmentation condition.

    Every condition shuffles the clips, perturbs each, joins them with short silent
    gaps, mixes noise over the whole stream when the condition has an SNR, and streams
    the result through ``det`` without a reset between files. While fewer than
    ``hours_min`` hours of negatives were heard (and some family is enabled), extra
    passes draw a random speed/tempo/gain per clip.
    """
    if not clips:
        raise AudioError("no negative recordings to evaluate")
    if "noise" in families and noise is None:
        raise AudioError("the noise augmentation needs a noise recording",
                         fix="pass --augment-noise FILE (or --noise FILE)")
    rng = np.random.default_rng(seed)
    todo = conditions(families, snrs)
    runs: list[StreamRun] = []
    k = 0
    while todo:
        cond = todo.pop(0)
        runs.append(run_condition(det, clips, cond, rng, noise, gap_s))
        heard_h = sum(r.negative_s for r in runs) / 3600.0
        if not todo and families and heard_h < hours_min and k < max_passes:
            k += 1
            todo.append(mixed_condition(k, families, snrs))
    return runs


def run_condition(det: WakeWordDetector, clips: list[tuple[str, np.ndarray]], cond: Condition,
                  rng: np.random.Generator, noise: np.ndarray | None = None,
                  gap_s: tuple[float, float] = (0.1, 0.8)) -> StreamRun:
    """One condition's continuous stream through the detector (reset once, at start)."""
    order = rng.permutation(len(clips))
    perturbed = []
    for i in order:
        name, audio = clips[i]
        y, scale = perturb_clip(audio, cond, rng)
        perturbed.append((name, y, scale))
    stream, segments = concat_stream(perturbed, rng, gap_s)
    if cond.snr_db is not None:
        if noise is None:
            raise AudioError(f"condition {cond.name} needs a noise recording")
        stream = mix_noise(stream, noise, cond.snr_db, offset=int(rng.integers(len(noise))))
    cpu0 = det.cpu_s
    det.scores = []
    try:
        hits = _stream(det, stream)
        scores = np.asarray(det.scores, np.float32)
    finally:
        det.scores = None
    events = []
    for t, score in hits:
        file, t_file = locate(segments, t)
        i = int(round(t / FEATURE_STEP_S)) - 1
        peak = float(scores[i:i + int(0.5 / FEATURE_STEP_S)].max()) if len(scores) else score
        events.append({"augmentation": cond.name, "file": file, "time_in_file_s": round(t_file, 2),
                       "time_in_stream_s": round(t, 2), "score": round(score, 4),
                       "peak_score": round(peak, 4)})
    neg_s = sum(s.end_s - s.start_s for s in segments)
    speech = sum(speech_seconds(stream[int(s.start_s * SAMPLE_RATE):int(s.end_s * SAMPLE_RATE)])
                 for s in segments)
    return StreamRun(cond, segments, scores, events, len(stream) / SAMPLE_RATE, neg_s, speech,
                     det.cpu_s - cpu0)


def stream_report(runs: list[StreamRun], hours_min: float) -> dict:
    """The JSON block for the augmented negatives."""
    events = [e for r in runs for e in r.events]
    hours = sum(r.negative_s for r in runs) / 3600.0
    audio_s = sum(r.audio_s for r in runs)
    out = rate_summary(len(events), hours)
    out.update(
        hours_min=hours_min,
        speech_hours=sum(r.speech_s for r in runs) / 3600.0,
        stream_hours=audio_s / 3600.0,
        continuous=True,
        target_per_hour=TARGET_FA_PER_HOUR,
        target_met=bool(out["per_hour"] is not None and out["per_hour"] <= TARGET_FA_PER_HOUR),
        target_met_at_upper95=bool(out["per_hour_upper95"] is not None
                                   and out["per_hour_upper95"] <= TARGET_FA_PER_HOUR),
        cpu_per_audio_s=sum(r.cpu_s for r in runs) / audio_s if audio_s else None,
        per_augmentation={r.condition.name: r.summary() for r in runs},
        events=events,
    )
    return out


# -- robustness of detection to speed perturbation and noise -------------------------

def evaluate_positive_robustness(det: WakeWordDetector, clips: list[tuple[str, np.ndarray]],
                                 speeds: tuple[float, ...] = SPEEDS,
                                 noise: np.ndarray | None = None,
                                 snrs: tuple[float, ...] = ()) -> dict:
    """Detection rate on speed-perturbed (and, with ``noise``, noise-mixed) positives,
    each clip on its own as in :func:`evaluate`: a robustness figure, reported apart."""
    pad = np.zeros(int(PAD_S * SAMPLE_RATE), np.int16)
    variants: list[tuple[str, float, float | None]] = [(f"speed_{f:g}", f, None) for f in speeds]
    if noise is not None:
        variants += [(f"noise_{s:g}dB", 1.0, s) for s in snrs]
    out = {}
    for label, speed, snr in variants:
        detected, missed = 0, []
        for name, clean in clips:
            audio = np.concatenate([pad, speed_perturb(clean, speed), pad])
            if snr is not None and noise is not None:
                audio = mix_noise(audio, noise, snr, offset=_stable_int(name) % len(noise))
            if _stream(det, audio):
                detected += 1
            else:
                missed.append(name)
        out[label] = {"positives": len(clips), "detected": detected,
                      "detection_rate": detected / len(clips) if clips else None,
                      "missed": missed}
    return out


# -- threshold cross-validation ------------------------------------------------------

def split_halves(names: list[str]) -> tuple[set[str], set[str]]:
    """Two halves of the file names, by a stable hash order, alternating (no speaker
    labels exist in the data, so the split is by file)."""
    order = sorted(names, key=_stable_int)
    return set(order[0::2]), set(order[1::2])


def false_accepts_at(runs: list[StreamRun], threshold: float, refractory_s: float,
                     files: set[str] | None = None, confirm: int = 1) -> tuple[int, float]:
    """(false accepts, hours) over the streams at this threshold, counting only events in
    (and hours of) ``files`` when given."""
    n, seconds = 0, 0.0
    for r in runs:
        seconds += sum(s.end_s - s.start_s for s in r.segments if files is None or s.file in files)
        for i in detections(r.scores, threshold, refractory_s, confirm):
            file, _ = locate(r.segments, (i + 1) * FEATURE_STEP_S)
            if files is None or file in files:
                n += 1
    return n, seconds / 3600.0


def _operating_point(pos_peaks: dict[str, float], runs: list[StreamRun], threshold: float,
                     refractory_s: float, pos: set[str] | None, neg: set[str] | None,
                     confirm: int = 1) -> dict:
    peaks = [p for n, p in pos_peaks.items() if pos is None or n in pos]
    det = sum(p >= threshold for p in peaks)
    fa, hours = false_accepts_at(runs, threshold, refractory_s, neg, confirm)
    out = {"threshold": threshold, "positives": len(peaks), "detected": int(det),
           "detection_rate": det / len(peaks) if peaks else None}
    out.update(rate_summary(fa, hours))
    return out


def choose_threshold(pos_peaks: dict[str, float], runs: list[StreamRun], refractory_s: float,
                     pos: set[str] | None = None, neg: set[str] | None = None,
                     target: float = TARGET_FA_PER_HOUR,
                     grid: tuple[float, ...] = THRESHOLD_GRID) -> float:
    """The lowest threshold on ``grid`` whose false-accept rate on these negatives is at
    most ``target`` per hour: the most sensitive setting the data allows."""
    for t in grid:
        fa, hours = false_accepts_at(runs, t, refractory_s, neg)
        if hours and fa / hours <= target:
            return t
    return grid[-1]


def cross_validate(pos_peaks: dict[str, float], runs: list[StreamRun], refractory_s: float,
                   configured: float, target: float = TARGET_FA_PER_HOUR) -> dict:
    """Choose the threshold on one half of the positives and negatives (split by file),
    score it on the other half, and the other way round; also score the configured
    threshold on each held-out half."""
    pos_a, pos_b = split_halves(list(pos_peaks))
    neg_a, neg_b = split_halves(sorted({s.file for r in runs for s in r.segments}))
    folds = []
    for name, (tp, tn), (hp, hn) in (("A->B", (pos_a, neg_a), (pos_b, neg_b)),
                                     ("B->A", (pos_b, neg_b), (pos_a, neg_a))):
        chosen = choose_threshold(pos_peaks, runs, refractory_s, tp, tn, target)
        folds.append({
            "fold": name,
            "train_files": {"positives": sorted(tp), "negatives": len(tn)},
            "chosen_threshold": chosen,
            "train": _operating_point(pos_peaks, runs, chosen, refractory_s, tp, tn),
            "held_out": _operating_point(pos_peaks, runs, chosen, refractory_s, hp, hn),
            "held_out_at_configured": _operating_point(pos_peaks, runs, configured,
                                                       refractory_s, hp, hn),
        })
    return {
        "rule": f"lowest threshold in {THRESHOLD_GRID[0]}..{THRESHOLD_GRID[-1]} with at most "
                f"{target} false accepts/hour on the training half's augmented negatives",
        "split": "by file (stable hash order, alternating); no speaker labels in the data",
        "configured_threshold": configured,
        "folds": folds,
    }


def threshold_sweep(pos_peaks: dict[str, float], runs: list[StreamRun], refractory_s: float,
                    thresholds: tuple[float, ...], confirm: int = 1) -> list[dict]:
    """Detection and false accepts over all the data at each threshold."""
    return [_operating_point(pos_peaks, runs, t, refractory_s, None, None, confirm)
            for t in thresholds]


def load_clips(files: list[Path]) -> list[tuple[str, np.ndarray]]:
    """(name, audio) for each file; names made unique by their folder when they clash."""
    seen: dict[str, int] = {}
    for f in files:
        seen[f.name] = seen.get(f.name, 0) + 1
    return [((f"{f.parent.name}/{f.name}" if seen[f.name] > 1 else f.name), read_audio(f))
            for f in files]


def timed(fn, *args, **kwargs):
    """(result, wall seconds) of a call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
