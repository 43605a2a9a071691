"""``hark eval wake``: the satellite's wake word stage over recordings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hark.errors import ConfigError

DEFAULT_THRESHOLD = 0.87  # keep equal to hark.wake.detector.DEFAULT_THRESHOLD
DEFAULT_CONFIRM = 8  # keep equal to hark.wake.detector.DEFAULT_CONFIRM
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


def _eval_wake(args: argparse.Namespace) -> int:
    from hark.audio import read_audio
    from hark.cli import load_cfg
    from hark.wake.augment import parse_families
    from hark.wake.detector import WakeWordDetector
    from hark.wake.evaluate import (
        Rule,
        audio_files,
        cross_validate,
        evaluate,
        evaluate_noise_only,
        evaluate_positive_robustness,
        evaluate_streams,
        load_clips,
        second_stage_report,
        stream_report,
        threshold_sweep,
        verifier_report,
    )

    cfg = load_cfg(args)
    families = parse_families(args.augment)
    snrs = _floats(args.augment_snrs)
    if args.hours_min < 0:
        raise ConfigError("--hours-min must be at least 0")
    from hark.wake.verifier import load_verifier

    keyword = args.keyword or cfg.wake.keyword
    vthreshold = (args.verifier_threshold if args.verifier_threshold is not None
                  else cfg.wake.verifier_threshold)
    verifier = load_verifier(args.verifier or cfg.wake.verifier, keyword, vthreshold,
                             cfg.wake.verifier_wait_s)
    det = WakeWordDetector(keyword, threshold=args.threshold,
                           refractory_s=cfg.wake.refractory_s, confirm=args.confirm,
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
    p.add_argument("--augment", default="",
                   help="augment the negatives into continuous streams: comma list of "
                   "speed,tempo,gain,noise, or all")
    p.add_argument("--hours-min", type=float, default=1.0,
                   help="with --augment: add randomly augmented passes until this many hours "
                   "of negatives were heard")
    p.add_argument("--augment-noise", default="",
                   help="noise recording for the noise augmentation (default: --noise)")
    p.add_argument("--augment-snrs", default="20,10,5", help="SNRs (dB) of the noise augmentation")
    p.add_argument("--seed", type=int, default=0, help="random seed of the augmentation")
    p.add_argument("--cv", action="store_true",
                   help="cross-validate the threshold: choose on half the files, test on the rest")
    p.add_argument("--confirm", type=int, default=DEFAULT_CONFIRM,
                   help="consecutive 10 ms features the score must stay above the threshold")
    p.add_argument("--second-stage", action="store_true",
                   help="compare second-stage checks (confirm counts) per half")
    p.add_argument("--verifier", default="", choices=["", "openwakeword", "none"],
                   help="second stage (default: wake.verifier)")
    p.add_argument("--verifier-threshold", type=float, default=None,
                   help="least second-stage score accepted (default: wake.verifier_threshold)")
    p.add_argument("--json", default="", help="write the results as JSON here")
