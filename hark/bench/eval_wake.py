"""``hark eval wake``: detection rate, false accepts per hour, latency and CPU cost of
the satellite's wake word stage over real recordings.

Three parts:

* :func:`evaluate`: each positive and negative recording streamed on its own (the
  detector reset per file), as before;
* :func:`evaluate_streams`: the negatives augmented (see :mod:`hark.bench.augment`) and
  joined into continuous streams until ``hours_min`` hours of speech-without-keyword
  audio were heard, every false accept located (condition, file, time, score), with a
  Poisson upper confidence bound on the rate;
* :func:`cross_validate`: the threshold chosen on one half of the files and scored on
  the other, both ways, from the recorded score traces (the score does not depend on
  the threshold, so one pass serves every threshold);
* :func:`second_stage_report`: the same replay for second-stage rules (the score held
  above the threshold for k consecutive features), on all files and on each half.

The augmented hours are not independent evidence: the augmented copies of one
recording, and each loop of the noise recording, can trigger again and again, so the
report also tallies the distinct trigger sources (:func:`trigger_sources`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hark.audio import SAMPLE_RATE, read_audio
from hark.bench.augment import (
    SNRS_DB,
    SPEEDS,
    Condition,
    Segment,
    apply_gain,
    concat_stream,
    conditions,
    locate,
    loud_frames,
    mix_noise,
    mixed_condition,
    parse_families,
    perturb_clip,
    speech_seconds,
    speed_perturb,
)
from hark.errors import AudioError, ConfigError
from hark.trace import percentile
from hark.wake.detector import (
    DEFAULT_CONFIRM,
    DEFAULT_THRESHOLD,
    FEATURE_STEP_S,
    WakeWordDetector,
)
from hark.wake.verifier import load_verifier

__all__ = ["Rule", "StreamRun", "WakeEval", "audio_files", "cross_validate", "detections",
           "evaluate", "evaluate_noise_only", "evaluate_positive_robustness",
           "evaluate_streams", "keyword_end_s", "mix_noise", "operating_point", "poisson_upper",
           "second_stage_report", "split_halves", "stream_report", "threshold_sweep",
           "verifier_report"]

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
    """End of the last loud stretch (:func:`~hark.bench.augment.loud_frames`): the
    recordings hold one isolated keyword, so this is where the keyword ends."""
    loud = np.nonzero(loud_frames(samples, rate, floor_db))[0]
    return float((loud[-1] + 1) * (rate // 100) / rate) if len(loud) else 0.0


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
class StreamRun:
    """One continuous stream through the detector: a positive recording (padded), or
    the augmented negatives of one condition joined without resets."""

    condition: Condition
    segments: list[Segment]
    scores: np.ndarray  # the detector's score after every 10 ms feature
    events: list[dict]  # live detections: stream time, score, file, time in file
    audio_s: float  # the whole stream, gaps included
    negative_s: float  # the recordings only (gaps excluded): the hours FA/h divides by
    speech_s: float = 0.0  # of which frames hold speech by energy
    cpu_s: float = 0.0  # detector CPU time
    #: second-stage checks (the detector's ``verifications``, each with its ``file``)
    verifications: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        out = rate_summary(len(self.events), self.negative_s / 3600.0)
        out.update(speech_hours=self.speech_s / 3600.0, stream_hours=self.audio_s / 3600.0,
                   files=len(self.segments))
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
    #: each positive recording's score trace (for threshold and second-stage studies)
    positive_runs: list[StreamRun] = field(default_factory=list)
    #: second-stage checks on the negative recordings (each with its ``file``)
    negative_verifications: list[dict] = field(default_factory=list)
    verifier_ms: list[float] = field(default_factory=list)  # wall time of each check

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
            "verifier_ms": {"checks": len(self.verifier_ms),
                            "p50": percentile(self.verifier_ms, 50),
                            "p95": percentile(self.verifier_ms, 95)},
        }


def _stream(det: WakeWordDetector, samples: np.ndarray) -> list[tuple[float, float]]:
    """Feed audio in 20 ms chunks from a reset detector; (stream time s, score) of each
    detection."""
    det.reset()
    hits = []
    for i in range(0, len(samples), CHUNK):
        ev = det.process(samples[i:i + CHUNK])
        if ev is not None:
            hits.append((ev.stream_s, ev.probability))
    return hits


def _trace(det: WakeWordDetector, audio: np.ndarray) -> tuple[list[tuple[float, float]], np.ndarray]:
    """Stream audio from a reset detector; its detections and its score trace (its
    second-stage checks are left in ``det.verifications``)."""
    det.scores = []
    try:
        hits = _stream(det, audio)
        scores = np.asarray(det.scores, np.float32)
    finally:
        det.scores = None
    return hits, scores


def _located(verifications: list[dict], segments: list[Segment]) -> list[dict]:
    out = []
    for v in verifications:
        file, t_file = locate(segments, v["stream_s"])
        out.append({**v, "file": file, "time_in_file_s": round(t_file, 2)})
    return out


def _events(hits: list[tuple[float, float]], scores: np.ndarray, segments: list[Segment],
            label: str) -> list[dict]:
    out = []
    for t, score in hits:
        file, t_file = locate(segments, t)
        i = round(t / FEATURE_STEP_S) - 1
        half = int(0.5 / FEATURE_STEP_S)  # the episode's peak, within 0.5 s either side
        peak = float(scores[max(0, i - half):i + half].max()) if len(scores) else score
        out.append({"augmentation": label, "file": file, "time_in_file_s": round(t_file, 2),
                    "time_in_stream_s": round(t, 2), "score": round(score, 4),
                    "peak_score": round(peak, 4)})
    return out


def evaluate(det: WakeWordDetector, positives: list[Path], negatives: list[Path],
             noise: np.ndarray | None = None, snr_db: float = 10.0) -> WakeEval:
    """Each recording on its own (detector reset, 0.5 s of silence around it); the
    positives' score traces are kept for threshold and second-stage studies."""
    res = WakeEval()
    pad = np.zeros(int(PAD_S * SAMPLE_RATE), np.int16)
    cpu0 = det.cpu_s
    for kind, files in (("pos", positives), ("neg", negatives)):
        for path in files:
            clean = read_audio(path)
            audio = np.concatenate([pad, clean, pad])
            if noise is not None:
                audio = mix_noise(audio, noise, snr_db, offset=_stable_int(path.name) % len(noise))
            hits, scores = _trace(det, audio)
            res.audio_s += len(audio) / SAMPLE_RATE
            if kind == "pos":
                res.positives += 1
                res.positive_peaks[path.name] = float(scores.max()) if len(scores) else 0.0
                seg = [Segment(path.name, PAD_S, PAD_S + len(clean) / SAMPLE_RATE)]
                run = StreamRun(Condition("positive"), seg, scores,
                                _events(hits, scores, seg, "positive"), len(audio) / SAMPLE_RATE,
                                0.0, verifications=_located(det.verifications, seg))
                res.positive_runs.append(run)
                res.verifier_ms += [v["ms"] for v in det.verifications]
                if hits:
                    res.detected += 1
                    end = PAD_S + keyword_end_s(clean)
                    # a detection is reported once the second stage has agreed
                    checked = [v["ms"] for v in det.verifications if v["accepted"]][:1]
                    res.latencies_ms.append((hits[0][0] - end) * 1000.0 + sum(checked))
                else:
                    res.missed.append(path.name)
            else:
                seg = [Segment(path.name, PAD_S, PAD_S + len(clean) / SAMPLE_RATE)]
                res.negative_verifications += _located(det.verifications, seg)
                res.verifier_ms += [v["ms"] for v in det.verifications]
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
    offset = None
    if cond.snr_db is not None:
        if noise is None:
            raise AudioError(f"condition {cond.name} needs a noise recording")
        offset = int(rng.integers(len(noise)))
        stream = mix_noise(stream, noise, cond.snr_db, offset=offset)
    cpu0 = det.cpu_s
    hits, scores = _trace(det, stream)
    cpu = det.cpu_s - cpu0
    neg_s = sum(s.end_s - s.start_s for s in segments)
    speech = sum(speech_seconds(stream[int(s.start_s * SAMPLE_RATE):int(s.end_s * SAMPLE_RATE)])
                 for s in segments)
    events = _events(hits, scores, segments, cond.name)
    if offset is not None and noise is not None:
        for e in events:  # where in the noise recording the detection fell
            pos = (round(e["time_in_stream_s"] * SAMPLE_RATE) + offset) % len(noise)
            e["noise_at_s"] = round(pos / SAMPLE_RATE, 2)
    run = StreamRun(cond, segments, scores, events, len(stream) / SAMPLE_RATE, neg_s, speech, cpu,
                    verifications=_located(det.verifications, segments))
    return run


def stream_report(runs: list[StreamRun], hours_min: float) -> dict:
    """The JSON block for the augmented negatives."""
    events = [e for r in runs for e in r.events]
    hours = sum(r.negative_s for r in runs) / 3600.0
    audio_s = sum(r.audio_s for r in runs)
    out = rate_summary(len(events), hours)
    speech_h = sum(r.speech_s for r in runs) / 3600.0
    out.update(
        hours_min=hours_min,
        speech_hours=speech_h,
        # the same events over the frames that hold speech (pauses and silence excluded)
        per_speech_hour=len(events) / speech_h if speech_h else None,
        per_speech_hour_upper95=poisson_upper(len(events)) / speech_h if speech_h else None,
        stream_hours=audio_s / 3600.0,
        continuous=True,
        target_per_hour=TARGET_FA_PER_HOUR,
        target_met=bool(out["per_hour"] is not None and out["per_hour"] <= TARGET_FA_PER_HOUR),
        target_met_at_upper95=bool(out["per_hour_upper95"] is not None
                                   and out["per_hour_upper95"] <= TARGET_FA_PER_HOUR),
        cpu_per_audio_s=sum(r.cpu_s for r in runs) / audio_s if audio_s else None,
        per_augmentation={r.condition.name: r.summary() for r in runs},
        events=events,
        sources=trigger_sources(events),
    )
    return out


def trigger_sources(events: list[dict]) -> dict:
    """How many *distinct* things triggered: augmented copies of one recording, or one
    spot of a looped noise recording, trigger again and again, so the events are not
    independent and the Poisson bound over augmented hours is optimistic about them.
    Tallies by recording and second, and (noise conditions) by second of the noise."""
    by_rec: dict[str, int] = {}
    by_noise: dict[str, int] = {}
    for e in events:
        key = f"{e['file']}@{round(e['time_in_file_s'])}s"
        by_rec[key] = by_rec.get(key, 0) + 1
        if "noise_at_s" in e:
            nkey = f"noise@{round(e['noise_at_s'])}s"
            by_noise[nkey] = by_noise.get(nkey, 0) + 1
    return {"by_recording": dict(sorted(by_rec.items(), key=lambda kv: -kv[1])),
            "by_noise_position": dict(sorted(by_noise.items(), key=lambda kv: -kv[1]))}


def evaluate_noise_only(det: WakeWordDetector, noise: np.ndarray,
                        gains_db: tuple[float, ...] = (0.0, 6.0)) -> dict:
    """False accepts on the noise recording alone (nobody speaking), at its recorded
    level and louder, each as one stream."""
    out = {}
    for g in gains_db:
        audio = apply_gain(noise, g)
        hits, scores = _trace(det, audio)
        seg = [Segment("noise", 0.0, len(audio) / SAMPLE_RATE)]
        r = rate_summary(len(hits), len(audio) / SAMPLE_RATE / 3600.0)
        r["events"] = _events(hits, scores, seg, f"noise_only_{g:+g}dB")
        out[f"gain_{g:+g}dB"] = r
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


# -- threshold cross-validation and second-stage checks ------------------------------

@dataclass(frozen=True)
class Rule:
    """A detection rule replayed on score traces: threshold plus second-stage options."""

    threshold: float
    refractory_s: float
    confirm: int = 1  # consecutive 10 ms features at or above the threshold

    def fires(self, run: StreamRun) -> list[int]:
        return detections(run.scores, self.threshold, self.refractory_s, self.confirm)

    def at(self, threshold: float) -> Rule:
        return Rule(threshold, self.refractory_s, self.confirm)


def split_halves(names: list[str]) -> tuple[set[str], set[str]]:
    """Two halves of the file names, by a stable hash order, alternating (no speaker
    labels exist in the data, so the split is by file)."""
    order = sorted(names, key=_stable_int)
    return set(order[0::2]), set(order[1::2])


def false_accepts_at(runs: list[StreamRun], rule: Rule,
                     files: set[str] | None = None) -> tuple[int, float]:
    """(false accepts, hours) over the streams under ``rule``, counting only events in
    (and hours of) ``files`` when given."""
    n, seconds = 0, 0.0
    for r in runs:
        seconds += sum(s.end_s - s.start_s for s in r.segments if files is None or s.file in files)
        for i in rule.fires(r):
            file, _ = locate(r.segments, (i + 1) * FEATURE_STEP_S)
            if files is None or file in files:
                n += 1
    return n, seconds / 3600.0


def operating_point(pos_runs: list[StreamRun], neg_runs: list[StreamRun], rule: Rule,
                    pos: set[str] | None = None, neg: set[str] | None = None) -> dict:
    """Detection on the positives and false accepts on the negatives under ``rule``."""
    chosen = [r for r in pos_runs if pos is None or r.segments[0].file in pos]
    det = sum(bool(rule.fires(r)) for r in chosen)
    fa, hours = false_accepts_at(neg_runs, rule, neg)
    out = {"threshold": rule.threshold, "positives": len(chosen), "detected": int(det),
           "detection_rate": det / len(chosen) if chosen else None}
    out.update(rate_summary(fa, hours))
    return out


def choose_threshold(pos_runs: list[StreamRun], neg_runs: list[StreamRun], rule: Rule,
                     neg: set[str] | None = None, target: float = TARGET_FA_PER_HOUR,
                     grid: tuple[float, ...] = THRESHOLD_GRID) -> float:
    """The lowest threshold on ``grid`` whose false-accept rate on these negatives is at
    most ``target`` per hour: the most sensitive setting the data allows."""
    for t in grid:
        fa, hours = false_accepts_at(neg_runs, rule.at(t), neg)
        if hours and fa / hours <= target:
            return t
    return grid[-1]


def cross_validate(pos_runs: list[StreamRun], neg_runs: list[StreamRun], rule: Rule,
                   target: float = TARGET_FA_PER_HOUR) -> dict:
    """Choose the threshold on one half of the positives and negatives (split by file),
    score it on the other half, and the other way round; also score ``rule``'s own
    (configured) threshold on each held-out half."""
    pos_a, pos_b = split_halves([r.segments[0].file for r in pos_runs])
    neg_a, neg_b = split_halves(sorted({s.file for r in neg_runs for s in r.segments}))
    folds = []
    for name, (tp, tn), (hp, hn) in (("A->B", (pos_a, neg_a), (pos_b, neg_b)),
                                     ("B->A", (pos_b, neg_b), (pos_a, neg_a))):
        chosen = choose_threshold(pos_runs, neg_runs, rule, tn, target)
        folds.append({
            "fold": name,
            "train_files": {"positives": sorted(tp), "negatives": len(tn)},
            "chosen_threshold": chosen,
            "train": operating_point(pos_runs, neg_runs, rule.at(chosen), tp, tn),
            "held_out": operating_point(pos_runs, neg_runs, rule.at(chosen), hp, hn),
            "held_out_at_configured": operating_point(pos_runs, neg_runs, rule, hp, hn),
        })
    return {
        "rule": f"lowest threshold in {THRESHOLD_GRID[0]}..{THRESHOLD_GRID[-1]} with at most "
                f"{target} false accepts/hour on the training half's augmented negatives",
        "split": "by file (stable hash order, alternating); no speaker labels in the data",
        "configured_threshold": rule.threshold,
        "confirm": rule.confirm,
        "folds": folds,
    }


def threshold_sweep(pos_runs: list[StreamRun], neg_runs: list[StreamRun], rule: Rule,
                    thresholds: tuple[float, ...]) -> list[dict]:
    """Detection and false accepts over all the data at each threshold."""
    return [operating_point(pos_runs, neg_runs, rule.at(t)) for t in thresholds]


def second_stage_report(pos_runs: list[StreamRun], neg_runs: list[StreamRun],
                        threshold: float, refractory_s: float, confirms: tuple[int, ...],
) -> dict:
    """Each second-stage option at the configured threshold, on all files and on each
    half, with its own threshold cross-validation."""
    pos_a, pos_b = split_halves([r.segments[0].file for r in pos_runs])
    neg_a, neg_b = split_halves(sorted({s.file for r in neg_runs for s in r.segments}))
    options = {"none": Rule(threshold, refractory_s)}
    options.update({f"confirm_{k}": Rule(threshold, refractory_s, confirm=k) for k in confirms})
    out: dict = {}
    for name, rule in options.items():
        out[name] = {
            "all": operating_point(pos_runs, neg_runs, rule),
            "half_A": operating_point(pos_runs, neg_runs, rule, pos_a, neg_a),
            "half_B": operating_point(pos_runs, neg_runs, rule, pos_b, neg_b),
            "cross_validation": cross_validate(pos_runs, neg_runs, rule),
        }
    out["confirm_choice"] = choose_confirm_cv(pos_runs, neg_runs, threshold, refractory_s,
                                              (1, *confirms))
    return out


def choose_confirm_cv(pos_runs: list[StreamRun], neg_runs: list[StreamRun], threshold: float,
                      refractory_s: float, confirms: tuple[int, ...],
                      target: float = TARGET_FA_PER_HOUR) -> list[dict]:
    """Choose the confirm count on one half and test it on the other, both ways. Rule:
    the smallest count whose training false-accept rate is at most ``target`` without
    losing a training detection (else the one with the fewest false accepts that loses
    none)."""
    pos_a, pos_b = split_halves([r.segments[0].file for r in pos_runs])
    neg_a, neg_b = split_halves(sorted({s.file for r in neg_runs for s in r.segments}))
    folds = []
    for name, (tp, tn), (hp, hn) in (("A->B", (pos_a, neg_a), (pos_b, neg_b)),
                                     ("B->A", (pos_b, neg_b), (pos_a, neg_a))):
        train = {k: operating_point(pos_runs, neg_runs, Rule(threshold, refractory_s, k), tp, tn)
                 for k in confirms}
        base = train[confirms[0]]["detected"]
        keep = [k for k in confirms if train[k]["detected"] >= base]
        ok = [k for k in keep if (train[k]["per_hour"] or 0.0) <= target]
        chosen = ok[0] if ok else min(keep, key=lambda k: (train[k]["false_accepts"], k))
        folds.append({
            "fold": name, "chosen_confirm": chosen, "train": train[chosen],
            "held_out": operating_point(pos_runs, neg_runs,
                                        Rule(threshold, refractory_s, chosen), hp, hn),
            "held_out_without": operating_point(pos_runs, neg_runs,
                                                Rule(threshold, refractory_s, confirms[0]), hp, hn),
        })
    return folds


def verifier_report(pos_runs: list[StreamRun], neg_verifications: list[dict],
                    threshold: float) -> dict:
    """The second stage on its own: the scores it gave every first-stage candidate (the
    best per positive recording; each candidate in speech without the keyword), and its
    threshold chosen on one half of the files and tested on the other, both ways.

    Choice rule: the geometric mean of the training half's highest negative score and
    lowest positive score when they separate, else the lowest positive score."""
    pos = {}
    for r in pos_runs:
        scores = [v["verifier_score"] for v in r.verifications]
        if scores:
            pos[r.segments[0].file] = max(scores)
    neg = [(v["file"], v["verifier_score"]) for v in neg_verifications]
    pos_a, pos_b = split_halves(sorted(pos))
    neg_a, neg_b = split_halves(sorted({f for f, _ in neg}))

    def point(t: float, pf: set[str], nf: set[str]) -> dict:
        p = [s for f, s in pos.items() if f in pf]
        n = [s for f, s in neg if f in nf]
        return {"threshold": round(t, 4), "candidates_kept": sum(s >= t for s in p),
                "candidates": len(p), "false_accepts_kept": sum(s >= t for s in n),
                "negative_candidates": len(n)}

    folds = []
    for name, (tp, tn), (hp, hn) in (("A->B", (pos_a, neg_a), (pos_b, neg_b)),
                                     ("B->A", (pos_b, neg_b), (pos_a, neg_a))):
        p = [s for f, s in pos.items() if f in tp]
        n = [s for f, s in neg if f in tn]
        lo, hi = (min(p) if p else 1.0), (max(n) if n else 0.0)
        chosen = math.sqrt(max(hi, 1e-4) * lo) if hi < lo else lo
        folds.append({"fold": name, "chosen_threshold": round(chosen, 4),
                      "train": point(chosen, tp, tn), "held_out": point(chosen, hp, hn),
                      "held_out_at_configured": point(threshold, hp, hn)})
    return {
        "threshold": threshold,
        "positive_scores": {"min": min(pos.values()) if pos else None,
                            "p05": percentile(list(pos.values()), 5),
                            "median": percentile(list(pos.values()), 50), "n": len(pos)},
        "negative_scores": {"max": max((s for _, s in neg), default=None),
                            "p95": percentile([s for _, s in neg], 95), "n": len(neg)},
        "negative_top": sorted(({"file": f, "score": s} for f, s in neg),
                               key=lambda d: -d["score"])[:10],
        "folds": folds,
    }


def load_clips(files: list[Path]) -> list[tuple[str, np.ndarray]]:
    """(name, audio) for each file; names made unique by their folder when they clash."""
    seen: dict[str, int] = {}
    for f in files:
        seen[f.name] = seen.get(f.name, 0) + 1
    return [((f"{f.parent.name}/{f.name}" if seen[f.name] > 1 else f.name), read_audio(f))
            for f in files]


# --- the command ---------------------------------------------------------------------

CONFIRMS = (2, 3, 5, 8, 10, 12, 15)  # second-stage study: consecutive 10 ms features above the threshold
SWEEP = (0.70, 0.75, 0.80, 0.83, 0.85, 0.87, 0.89, 0.91, 0.93, 0.95)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise ConfigError(f"not a comma list of numbers: {text!r}",
                          fix="e.g. --augment-snrs 20,10,5") from exc


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def cmd_eval_wake(args: argparse.Namespace) -> int:
    """``hark eval wake`` (options in :mod:`hark.bench.cli`)."""
    from hark.cli import load_cfg

    cfg = load_cfg(args)
    families = parse_families(args.augment)
    snrs = _floats(args.augment_snrs)
    if args.hours_min < 0:
        raise ConfigError("--hours-min must be at least 0")
    keyword = args.keyword or cfg.wake.keyword
    vthreshold = (args.verifier_threshold if args.verifier_threshold is not None
                  else cfg.wake.verifier_threshold)
    verifier = load_verifier(args.verifier or cfg.wake.verifier, keyword, vthreshold,
                             cfg.wake.verifier_wait_s)
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    confirm = DEFAULT_CONFIRM if args.confirm is None else args.confirm
    det = WakeWordDetector(keyword, threshold=threshold,
                           refractory_s=cfg.wake.refractory_s, confirm=confirm,
                           verifier=verifier)
    noise = read_audio(args.noise) if args.noise else None
    aug_noise_path = args.augment_noise or args.noise
    aug_noise = read_audio(aug_noise_path) if aug_noise_path else None
    positives = [f for d in args.positives for f in audio_files(d)]
    negatives = [f for d in args.negatives for f in audio_files(d)]

    res = evaluate(det, positives, negatives, noise, args.snr)
    out = res.to_dict()
    out.update(keyword=det.keyword, threshold=det.threshold, refractory_s=det.refractory_s,
               confirm=det.confirm,
               verifier=("openwakeword" if verifier is not None else "none"),
               verifier_threshold=verifier.threshold if verifier is not None else None,
               noise=args.noise, snr_db=args.snr if args.noise else None)
    lat = out["latency_ms"]
    print(f"keyword {det.keyword} (threshold {det.threshold}, confirm {det.confirm}): detected {res.detected}/{res.positives} "
          f"({_pct(out['detection_rate'])}), false accepts {res.false_accepts} in "
          f"{res.negative_s / 60:.1f} min = {out['false_accepts_per_hour']:.2f}/hour "
          f"(95% upper bound {out['false_accepts_per_hour_upper95']:.1f}/hour)")
    if lat["p50"] is not None:
        print(f"latency after keyword end: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms")
    print(f"CPU {out['cpu_per_audio_s']:.4f} s per audio second (both stages)")
    if verifier is not None:
        vm = out["verifier_ms"]
        print(f"second stage (openWakeWord, threshold {verifier.threshold}): {vm['checks']} checks"
              + (f", {vm['p50']:.0f} ms p50 / {vm['p95']:.0f} ms p95 each (in the latency above)"
                 if vm["checks"] else ""))
    if res.missed:
        print("missed:", ", ".join(res.missed))
    if res.false_accept_files:
        print("false accepts in:", ", ".join(res.false_accept_files))

    if families or args.cv or args.second_stage:
        runs = evaluate_streams(det, load_clips(negatives), families, aug_noise, snrs,
                                args.hours_min, seed=args.seed)
        aug = stream_report(runs, args.hours_min)
        out["augmented_negatives"] = aug
        print(f"augmented negatives ({', '.join(families) or 'none'}), continuous streams: "
              f"{aug['false_accepts']} false accepts in {aug['hours']:.2f} h "
              f"({aug['speech_hours']:.2f} h of it speech) = {aug['per_hour']:.2f}/hour, "
              f"95% upper bound {aug['per_hour_upper95']:.2f}/hour "
              f"(target {aug['target_per_hour']}/hour); per hour of speech frames "
              f"{_num(aug['per_speech_hour'])}, upper bound {_num(aug['per_speech_hour_upper95'])}; "
              f"detector CPU "
              f"{aug['cpu_per_audio_s']:.4f} s per audio second")
        for name, r in aug["per_augmentation"].items():
            print(f"  {name:<14} {r['hours'] * 60:6.1f} min  {r['false_accepts']} FA")
        for e in aug["events"]:
            print(f"  false accept: {e['augmentation']} {e['file']} at {e['time_in_file_s']:.2f} s "
                  f"score {e['score']:.3f} (peak {e['peak_score']:.3f})")
        pos_clips = load_clips(positives)
        rob = evaluate_positive_robustness(det, pos_clips, noise=aug_noise,
                                           snrs=snrs if "noise" in families else ())
        out["positives_robustness"] = rob
        print("positives, robustness: " + ", ".join(
            f"{k} {_pct(v['detection_rate'])}" for k, v in rob.items()))
        rule = Rule(det.threshold, det.refractory_s, det.confirm)
        if aug_noise is not None:
            alone = evaluate_noise_only(det, aug_noise)
            out["noise_only"] = alone
            print("noise alone (nobody speaking): " + ", ".join(
                f"{k} {v['false_accepts']} FA in {v['hours'] * 60:.1f} min"
                for k, v in alone.items()))
        print("distinct triggers: " + ", ".join(
            f"{k} x{n}" for k, n in {**aug["sources"]["by_recording"],
                                     **aug["sources"]["by_noise_position"]}.items()))
        if verifier is not None:
            neg_v = res.negative_verifications + [v for r in runs for v in r.verifications]
            vr = verifier_report(res.positive_runs, neg_v, verifier.threshold)
            out["verifier"] = vr
            ps, ns = vr["positive_scores"], vr["negative_scores"]
            print(f"second stage scores: keyword recordings min {_num(ps['min'])} "
                  f"(median {_num(ps['median'])}, n {ps['n']}); first-stage candidates without "
                  f"the keyword max {_num(ns['max'])} (n {ns['n']})")
            for f in vr["folds"]:
                h, c = f["held_out"], f["held_out_at_configured"]
                print(f"  verifier threshold chosen {f['fold']}: {f['chosen_threshold']:.3f}; held "
                      f"out keeps {h['candidates_kept']}/{h['candidates']} keywords and "
                      f"{h['false_accepts_kept']}/{h['negative_candidates']} non-keyword "
                      f"candidates (at {vr['threshold']}: {c['candidates_kept']}/{c['candidates']},"
                      f" {c['false_accepts_kept']}/{c['negative_candidates']})")
        # the replayed studies below are of the first stage's score alone
        out["threshold_sweep"] = threshold_sweep(res.positive_runs, runs, rule, SWEEP)
        if args.cv:
            cv = cross_validate(res.positive_runs, runs, rule)
            out["cross_validation"] = cv
            _print_cv("cross-validation", cv)
        if args.second_stage:
            ss = second_stage_report(res.positive_runs, runs, det.threshold, det.refractory_s,
                                     CONFIRMS)
            out["second_stage"] = ss
            for f in ss["confirm_choice"]:
                h, w = f["held_out"], f["held_out_without"]
                print(f"confirm count chosen {f['fold']}: {f['chosen_confirm']}; held out "
                      f"detection {_pct(h['detection_rate'])} (without {_pct(w['detection_rate'])}),"
                      f" FA {h['false_accepts']} (without {w['false_accepts']}) in {h['hours']:.2f} h")
            for name, r in ss.items():
                if name == "confirm_choice":
                    continue
                a, ha, hb = r["all"], r["half_A"], r["half_B"]
                print(f"second stage {name:<12} detection {_pct(a['detection_rate'])} "
                      f"(A {_pct(ha['detection_rate'])}, B {_pct(hb['detection_rate'])}), "
                      f"FA {a['false_accepts']} (A {ha['false_accepts']}, B {hb['false_accepts']}) "
                      f"in {a['hours']:.2f} h")
                _print_cv(f"  {name} cross-validation", r["cross_validation"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def _print_cv(label: str, cv: dict) -> None:
    for f in cv["folds"]:
        h, c = f["held_out"], f["held_out_at_configured"]
        print(f"{label} {f['fold']}: chose {f['chosen_threshold']:.2f}; held out: detection "
              f"{_pct(h['detection_rate'])}, {h['false_accepts']} FA in {h['hours']:.2f} h; at "
              f"{cv['configured_threshold']}: detection {_pct(c['detection_rate'])}, "
              f"{c['false_accepts']} FA")
