"""``hark intents test | check`` and ``hark eval intents``."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

EVAL_DIR = Path(__file__).with_name("eval")


def register(cli) -> None:
    p = cli.add("intents test", "match sentences against the intents: intent, slots, time",
                _test)
    p.add_argument("sentences", nargs="+", help="one or more sentences (quote each)")
    p.add_argument("--reply", action="store_true",
                   help="also run the handler and print its reply (acts for real)")
    p = cli.add("intents check", "validate intent domain files; errors by file and line",
                _check)
    p.add_argument("files", nargs="*",
                   help="domain YAML files (default: the built-in domains in nlu.builtin_domains "
                        "and every file in nlu.domains_dir)")
    p = cli.add("eval intents", "accuracy and speed of typed commands (home-assistant/"
                "intents test-file shape)", _eval)
    p.add_argument("--text-cases", action="extend", nargs="+", required=True,
                   metavar="FILE.yaml", help="test sentences (one or more files, repeatable), "
                   f"e.g. {EVAL_DIR}/home_commands*.yaml")
    p.add_argument("--fixtures", metavar="FILE.yaml",
                   help="the home (areas, entities) in the shape of home-assistant/intents "
                        "tests/en/_fixtures.yaml, in place of [home] in the config")
    p.add_argument("--coverage", action="store_true",
                   help="also match each sentence with bare hassil against the installed "
                        "home-assistant-intents templates: accuracy on the sentences they "
                        "cover, and each error classed 'templates' or 'hark'")
    p.add_argument("--json", metavar="PATH", help="write the full report here")
    # The speech-to-intent evaluation lives beside the constrained recognizer.
    try:
        module = importlib.import_module("hark.nlu.speech_intent")
    except ModuleNotFoundError as exc:
        if exc.name != "hark.nlu.speech_intent":
            raise
        return
    if hasattr(module, "register_cli"):
        module.register_cli(cli)


def _test(args) -> int:
    import time

    from hark.cli import load_cfg
    from hark.nlu.recognizer import load_nlu

    cfg = load_cfg(args)
    stage = load_nlu(cfg)
    handlers = None
    if args.reply:
        from hark.nlu.handlers import load_handlers

        handlers = load_handlers(cfg, stage)
    for sentence in args.sentences:
        start = time.perf_counter()
        result = stage.recognize(sentence)
        ms = (time.perf_counter() - start) * 1000
        if result is None:
            print(f"{sentence!r}: no match (goes to the LLM)  [{ms:.2f} ms]")
            continue
        slots = ", ".join(f"{k}={v!r}" for k, v in result.slots.items()) or "-"
        print(f"{sentence!r}: {result.name} ({result.domain})  slots: {slots}  "
              f"source: {result.source}  [{ms:.2f} ms]")
        if handlers is not None:
            print(f"  reply: {handlers.handle(result).text!r}")
    if handlers is not None:
        handlers.close()
    return 0


def _check(args) -> int:
    from hark.cli import load_cfg
    from hark.nlu.domain_files import check_domain, domain_paths

    if args.files:
        paths = [Path(f) for f in args.files]
    else:
        cfg = load_cfg(args)
        paths = domain_paths(cfg.nlu.domains_dir, cfg.nlu.builtin_domains)
        if cfg.nlu.domains_dir and not Path(cfg.nlu.domains_dir).expanduser().exists():
            print(f"nlu.domains_dir {cfg.nlu.domains_dir} does not exist")
            return 1
    if not paths:
        print("no domain files configured (nlu.builtin_domains, nlu.domains_dir)")
        return 0
    bad = 0
    for path in paths:
        problems = check_domain(path)
        print(f"{path}: {'OK' if not problems else f'{len(problems)} error(s)'}")
        for problem in problems:
            print(f"  {problem}")
        bad += bool(problems)
    return 1 if bad else 0


def _eval(args) -> int:
    from hark.cli import load_cfg
    from hark.nlu.evaluate import coverage, evaluate, load_cases
    from hark.nlu.home import home_from_fixtures
    from hark.nlu.recognizer import load_nlu
    from hark.sched import freeze_startup_objects

    cfg = load_cfg(args)
    home = home_from_fixtures(args.fixtures) if args.fixtures else None
    stage = load_nlu(cfg, home=home)
    stage.warmup()
    freeze_startup_objects()  # as the server does after its warm-up
    cases = [case for path in args.text_cases for case in load_cases(path)]
    report = evaluate(stage, cases)
    if args.coverage:
        report["coverage"] = coverage(stage, cases, report)
    report["text_cases"] = [str(p) for p in args.text_cases]
    report["fixtures"] = args.fixtures or "(config [home])"
    if report["sentences"]:
        print(f"commands: {report['sentences']}  accuracy: {report['accuracy']:.1%}  "
              f"(with exact capitals: {report['accuracy_exact_case']:.1%})")
    cov = report.get("coverage")
    if cov and cov["covered"]:
        print(f"covered by the installed templates (bare hassil right): {cov['covered']}  "
              f"hark's accuracy on them: {cov['accuracy_on_covered']:.1%}  errors: "
              f"{cov['errors_by_class']['templates']} outside the templates, "
              f"{cov['errors_by_class']['hark']} hark's own")
    if report["rejects"]:
        print(f"open questions: {report['rejects']}  rejected: {report['rejection_rate']:.1%}")
    ms = report["ms_per_sentence"]
    print(f"ms per sentence: p50 {ms['p50']:.2f}  p95 {ms['p95']:.2f}  max {ms['max']:.2f}  "
          f"(cache hit p50 {report['cache_hit_ms']['p50']:.4f})")
    cpu = report["cpu_ms_per_sentence"]
    print(f"CPU ms per sentence: p50 {cpu['p50']:.2f}  p95 {cpu['p95']:.2f}")
    fb = report.get("fallback")
    if fb is None:
        print("paraphrase fallback: off")
    elif fb["sentences"]:
        print(f"paraphrase fallback ({fb['encoder']}) alone, on the {fb['sentences']} "
              f"sentences that reached it: ms p50 {fb['ms']['p50']:.2f}  p95 "
              f"{fb['ms']['p95']:.2f}; CPU ms p50 {fb['cpu_ms']['p50']:.2f}  p95 "
              f"{fb['cpu_ms']['p95']:.2f}")
    print(f"{'intent':32} {'total':>5} {'errors':>6}")
    for name, row in report["per_intent"].items():
        print(f"{name:32} {row['total']:5d} {row['errors']:6d}")
    for err in report["errors"]:
        tag = f"[{err['class']}] " if "class" in err else ""
        print(f"  wrong: {tag}{err['sentence']!r} expected {err['expected']} got {err['got']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0
