"""``hark eval wake``: the satellite's wake word stage over recordings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_THRESHOLD = 0.87  # keep equal to hark.wake.detector.DEFAULT_THRESHOLD


def _eval_wake(args: argparse.Namespace) -> int:
    from hark.audio import read_audio
    from hark.cli import load_cfg
    from hark.wake.detector import WakeWordDetector
    from hark.wake.evaluate import audio_files, evaluate

    cfg = load_cfg(args)
    det = WakeWordDetector(args.keyword or cfg.wake.keyword, threshold=args.threshold,
                           refractory_s=cfg.wake.refractory_s)
    noise = read_audio(args.noise) if args.noise else None
    positives = [f for d in args.positives for f in audio_files(d)]
    negatives = [f for d in args.negatives for f in audio_files(d)]
    res = evaluate(det, positives, negatives, noise, args.snr)
    out = res.to_dict()
    out.update(keyword=det.keyword, threshold=det.threshold,
               noise=args.noise, snr_db=args.snr if args.noise else None)
    lat = out["latency_ms"]
    print(f"keyword {det.keyword}: detected {res.detected}/{res.positives} "
          f"({out['detection_rate']:.1%}), false accepts {res.false_accepts} in "
          f"{res.negative_s / 60:.1f} min = {out['false_accepts_per_hour']:.2f}/hour")
    if lat["p50"] is not None:
        print(f"latency after keyword end: p50 {lat['p50']:.0f} ms, p95 {lat['p95']:.0f} ms")
    print(f"CPU {out['cpu_per_audio_s']:.4f} s per audio second")
    if res.missed:
        print("missed:", ", ".join(res.missed))
    if res.false_accept_files:
        print("false accepts in:", ", ".join(res.false_accept_files))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


def register(cli) -> None:
    p = cli.add("eval wake", "wake word detection rate, false accepts/hour, latency, CPU",
                _eval_wake)
    p.add_argument("--keyword", default="", help="alexa | hey_jarvis | hey_mycroft | okay_nabu "
                   "(default: wake.keyword)")
    p.add_argument("--positives", required=True, nargs="+",
                   help="folder(s) of recordings of the keyword")
    p.add_argument("--negatives", required=True, nargs="+",
                   help="folder(s) of speech without the keyword")
    p.add_argument("--noise", default="", help="noise recording mixed into every clip")
    p.add_argument("--snr", type=float, default=10.0, help="SNR in dB for --noise")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="detection threshold on the phase-mean score")
    p.add_argument("--json", default="", help="write the results as JSON here")
