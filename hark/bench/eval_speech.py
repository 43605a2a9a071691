"""``hark eval speech-intents``: spoken commands through the real speech path, scored.

Each WAV file (optionally mixed with a noise file at given SNRs) goes through:

1. Silero VAD, frame by frame, to find where speech ends;
2. the constrained recognizer (:class:`hark.nlu.speech_intent.SpeechIntentRecognizer`),
   fed in 32 ms chunks up to the end-of-turn point, as a live stream would;
3. when it rejects the audio (``--mode combined``), Whisper on the utterance and the
   text intent stage (hassil + fuzzy slot correction) on its transcript.

Scores: command acceptance (intent and every slot value exactly right, compared
case-insensitively with surrounding spaces stripped; a rejection counts as wrong),
accuracy per slot, and latency from the end-of-turn point to the intent (the time
spent *after* the last audio arrived; the endpointer's silence wait is reported apart).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hark.errors import AudioError, ConfigError

log = logging.getLogger(__name__)

MODES = ("combined", "grammar", "whisper")


# --- scoring ------------------------------------------------------------------------------

def _norm(value: Any) -> str:
    return str(value).strip().lower()


def is_correct(expected: dict[str, Any], intent: str | None, slots: dict[str, Any]) -> bool:
    """Intent and every slot value right (no missing, no extra slots)."""
    if intent is None or intent != expected.get("intent"):
        return False
    want = {k: _norm(v) for k, v in (expected.get("slots") or {}).items()}
    got = {k: _norm(v) for k, v in slots.items()}
    return want == got


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def mix_noise(speech: np.ndarray, noise: np.ndarray, snr_db: float,
              offset: int = 0) -> np.ndarray:
    """``speech`` with ``noise`` (looped, starting at ``offset``) at ``snr_db`` dB SNR,
    power measured over the whole clip; int16 out."""
    if len(noise) == 0:
        raise AudioError("the noise file is empty")
    s = speech.astype(np.float64)
    idx = (np.arange(len(s)) + offset) % len(noise)
    n = noise[idx].astype(np.float64)
    ps, pn = float(np.mean(s ** 2)), float(np.mean(n ** 2))
    if pn == 0.0:
        raise AudioError("the noise file is silent")
    gain = np.sqrt(ps / (pn * 10 ** (snr_db / 10)))
    return np.clip(s + gain * n, -32768, 32767).astype(np.int16)


# --- the speech path ----------------------------------------------------------------------

@dataclass
class Outcome:
    file: str
    correct: bool
    intent: str | None
    slots: dict[str, Any]
    source: str  # "grammar" | "whisper" | "none"
    latency_ms: float  # end-of-turn point -> intent
    transcript: str = ""
    grammar_text: str = ""
    grammar_ratio: float | None = None
    feed_rtf: float = 0.0  # grammar decoding time / audio time while streaming


@dataclass
class SpeechPath:
    """VAD + constrained recognizer + (optional) Whisper and text intents."""

    cfg: Any
    domain: Any
    mode: str = "combined"
    threshold: float | None = None
    vad: Any = None
    extra: list = field(default_factory=list)  # more domains the grammar listens for
    grammar: Any = None
    asr: Any = None
    nlu: Any = None
    eot_ms: int = field(default=0)

    def load(self) -> SpeechPath:
        from hark.nlu.speech_intent import DEFAULT_THRESHOLD, SpeechIntentRecognizer
        from hark.vad.silero import load_vad

        self.vad = load_vad(self.cfg)
        self.eot_ms = self.cfg.vad.eot_short_ms
        if self.mode in ("combined", "grammar"):
            self.grammar = SpeechIntentRecognizer(
                [self.domain, *self.extra], threshold=DEFAULT_THRESHOLD if self.threshold is None
                else self.threshold)
        if self.mode in ("combined", "whisper"):
            from hark.asr.whisper import load_asr
            from hark.nlu.recognizer import IntentStage

            self.asr = load_asr(self.cfg)
            self.asr.warm_up()
            self.nlu = IntentStage(self.cfg, domain_files=[self.domain.path])
        return self

    def end_of_speech(self, audio: np.ndarray) -> int | None:
        """Sample index where the last speech frame ends (None: no speech)."""
        from hark.vad.silero import FRAME_SAMPLES

        self.vad.reset()
        last = None
        for i in range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES):
            if self.vad.probability(audio[i:i + FRAME_SAMPLES]) >= self.cfg.vad.threshold:
                last = i + FRAME_SAMPLES
        return last

    def run(self, name: str, audio: np.ndarray, expected: dict[str, Any]) -> Outcome:
        eos = self.end_of_speech(audio)
        if eos is None:
            return Outcome(name, False, None, {}, "none", 0.0)
        # The turn ends after a short pause; the recognizers have the audio up to there.
        stop = min(len(audio), eos + self.cfg.audio.sample_rate * self.eot_ms // 1000)
        utterance = audio[:stop]
        intent, slots, source, transcript = None, {}, "none", ""
        latency = 0.0
        g_text, g_ratio, rtf = "", None, 0.0
        if self.grammar is not None:
            self.grammar.start()
            t0 = time.perf_counter()
            for i in range(0, len(utterance), 512):
                self.grammar.feed(utterance[i:i + 512])
            rtf = (time.perf_counter() - t0) / (len(utterance) / self.cfg.audio.sample_rate)
            t_end = time.perf_counter()
            result = self.grammar.finish()
            latency = (time.perf_counter() - t_end) * 1000
            g_text, g_ratio = self.grammar.last.text, self.grammar.last.ratio
            if result is not None:
                intent, slots, source = result.name, dict(result.slots), "grammar"
        if intent is None and self.asr is not None:
            t_end = time.perf_counter()
            transcript = self.asr.transcribe(utterance)
            result = self.nlu.match(transcript) if transcript else None
            latency += (time.perf_counter() - t_end) * 1000
            if result is not None and result.domain == self.domain.name:
                intent, slots, source = result.name, dict(result.slots), "whisper"
        return Outcome(name, is_correct(expected, intent, slots), intent, slots, source,
                       round(latency, 2), transcript, g_text,
                       None if g_ratio is None or not np.isfinite(g_ratio)
                       else round(g_ratio, 3), round(rtf, 3))


def summarize(outcomes: list[Outcome], labels: dict[str, Any]) -> dict[str, Any]:
    n = len(outcomes)
    slot_right: dict[str, list[bool]] = {}
    for o in outcomes:
        for slot, value in (labels[o.file].get("slots") or {}).items():
            ok = o.intent is not None and _norm(o.slots.get(slot, "")) == _norm(value)
            slot_right.setdefault(slot, []).append(ok)
    lat = [o.latency_ms for o in outcomes if o.intent is not None]
    grammar_lat = [o.latency_ms for o in outcomes if o.source == "grammar"]
    return {
        "files": n,
        "command_acceptance": round(sum(o.correct for o in outcomes) / n, 4) if n else None,
        "slot_accuracy": {k: round(sum(v) / len(v), 4) for k, v in sorted(slot_right.items())},
        "rejected": sum(o.intent is None for o in outcomes),
        "served_by": {s: sum(o.source == s for o in outcomes)
                      for s in ("grammar", "whisper", "none")},
        "grammar_precision": (round(sum(o.correct for o in outcomes if o.source == "grammar")
                                    / max(1, sum(o.source == "grammar" for o in outcomes)), 4)),
        "latency_ms": {"p50": percentile(lat, 50), "p95": percentile(lat, 95)},
        "grammar_latency_ms": {"p50": percentile(grammar_lat, 50),
                               "p95": percentile(grammar_lat, 95)},
        "grammar_feed_rtf_p50": percentile([o.feed_rtf for o in outcomes], 50),
    }


def evaluate(cfg, domain_ref: str, data: Path, labels_path: Path, noise: Path | None = None,
             snrs: list[float] | None = None, mode: str = "combined",
             threshold: float | None = None, limit: int = 0,
             progress=lambda line: None, reject_data: Path | None = None,
             with_domains: list[str] | None = None) -> dict[str, Any]:
    """Run every labelled file through the speech path; the JSON-able report."""
    from hark.audio import read_audio
    from hark.nlu.speech_intent import load_domains

    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}", fix=f"use one of {', '.join(MODES)}")
    try:
        labels = json.loads(Path(labels_path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read labels {labels_path}: {exc}",
                          fix="labels.json maps file name -> {intent, slots}") from exc
    files = sorted(f for f in labels if (Path(data) / f).is_file())
    if not files:
        raise ConfigError(f"no labelled WAV file found in {data}",
                          fix="--data must be the folder holding the files labels.json names")
    if limit:
        files = files[:limit]
    if noise is not None and not snrs:
        raise ConfigError("--noise needs at least one --snr DB")
    domain = load_domains(cfg, [domain_ref], strict=True)[0]
    extra = load_domains(cfg, list(with_domains), strict=True) if with_domains else []
    path = SpeechPath(cfg, domain, mode, threshold, extra=extra).load()
    noise_audio = read_audio(noise) if noise is not None else None
    conditions: list[float | None] = [None] + list(snrs or [])
    report: dict[str, Any] = {"domain": str(domain.path or domain.name), "mode": mode,
                              "with_domains": [d.name for d in extra],
                              "threshold": path.grammar.threshold if path.grammar else None,
                              "endpoint_wait_ms": path.eot_ms}
    by_snr: dict[str, Any] = {}
    for snr in conditions:
        outcomes = []
        for k, f in enumerate(files):
            audio = read_audio(Path(data) / f)
            if snr is not None:
                audio = mix_noise(audio, noise_audio, snr, offset=k * 7919)
            o = path.run(f, audio, labels[f])
            outcomes.append(o)
            progress(f"{'clean' if snr is None else f'{snr:g} dB'} {f}: "
                     f"{'OK ' if o.correct else 'BAD'} {o.source:7s} {o.latency_ms:7.1f} ms "
                     f"grammar={o.grammar_text!r} ({o.grammar_ratio}) "
                     f"whisper={o.transcript!r} slots={o.slots}")
        summary = summarize(outcomes, labels)
        summary["outcomes"] = [o.__dict__ for o in outcomes]
        if snr is None:
            report.update(summary)
        else:
            by_snr[f"{snr:g}"] = summary
    if by_snr:
        report["by_snr"] = by_snr
    if reject_data is not None:
        report["ood_rejection"] = _ood(path, Path(reject_data), noise_audio, conditions,
                                       progress)
    return report


def _ood(path: SpeechPath, folder: Path, noise_audio, conditions, progress) -> dict:
    """Share of non-command recordings the fast path (grammar) and the whole path reject."""
    from hark.audio import read_audio

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".wav", ".flac"))
    if not files:
        raise ConfigError(f"no WAV or FLAC file in {folder}")
    out: dict[str, Any] = {}
    for snr in conditions:
        fast = full = 0
        for k, f in enumerate(files):
            audio = read_audio(f)
            if snr is not None:
                audio = mix_noise(audio, noise_audio, snr, offset=k * 7919)
            o = path.run(f.name, audio, {"intent": None})
            fast += o.source != "grammar"
            full += o.intent is None
            if o.intent is not None:
                progress(f"not a command, yet {o.source} heard {o.intent} {o.slots}: {f}")
        key = "clean" if snr is None else f"{snr:g}"
        out[key] = {"files": len(files), "fast_path_rejected": round(fast / len(files), 4),
                    "rejected": round(full / len(files), 4)}
    return out


def cmd_eval_speech_intents(args) -> int:
    """``hark eval speech-intents`` (options in :mod:`hark.bench.cli`)."""
    from hark.cli import load_cfg

    cfg = load_cfg(args)
    printer = print if args.verbose_files else (lambda line: None)
    report = evaluate(cfg, args.domain, Path(args.data), Path(args.labels),
                      Path(args.noise) if args.noise else None, args.snr, args.mode,
                      args.threshold, args.limit, progress=printer,
                      reject_data=Path(args.reject_data) if args.reject_data else None,
                      with_domains=args.with_domain)
    rows = [("clean", report)] + [(f"{k} dB", v) for k, v in report.get("by_snr", {}).items()]
    for label, s in rows:
        print(f"{label:>8}: command acceptance {s['command_acceptance']:.1%} "
              f"({s['files']} files; grammar {s['served_by']['grammar']}, "
              f"whisper {s['served_by']['whisper']}, rejected {s['rejected']}); "
              f"latency p50 {s['latency_ms']['p50']} ms p95 {s['latency_ms']['p95']} ms; "
              f"grammar-only p50 {s['grammar_latency_ms']['p50']} ms")
        print("          per slot: " + ", ".join(f"{k} {v:.0%}"
                                                for k, v in s["slot_accuracy"].items()))
    for cond, r in report.get("ood_rejection", {}).items():
        print(f"not commands ({cond}): fast path rejected {r['fast_path_rejected']:.1%}, "
              f"whole path rejected {r['rejected']:.1%} of {r['files']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0
