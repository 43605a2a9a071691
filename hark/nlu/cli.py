"""``hark intents test | check`` (``hark eval intents`` is in :mod:`hark.bench`)."""

from __future__ import annotations

from pathlib import Path


def register(cli) -> None:
    p = cli.add("intents test", "match sentences against the intents: intent, slots, time",
                _test)
    p.add_argument("sentences", nargs="+", help="one or more sentences (quote each)")
    p.add_argument("--reply", action="store_true",
                   help="also run the handler and print its reply (acts for real; state "
                   "questions are answered from the home's states)")
    p.add_argument("--area", default="",
                   help="the satellite's room, the intents' context: 'turn on the lights' "
                   "then means the lights there (default home.default_area)")
    p.add_argument("--fixtures", metavar="FILE.yaml",
                   help="the home (areas, entities with states) from a home-assistant/"
                   "intents _fixtures.yaml-shaped file, in place of [home]")
    p = cli.add("intents check", "validate intent domain files; errors by file and line",
                _check)
    p.add_argument("files", nargs="*",
                   help="domain YAML files (default: the built-in domains in nlu.builtin_domains "
                        "and every file in nlu.domains_dir)")


def _test(args) -> int:
    import time

    from hark.cli import load_cfg
    from hark.nlu.recognizer import load_nlu

    cfg = load_cfg(args)
    home = None
    if args.fixtures:
        from hark.nlu.home import home_from_fixtures

        home = home_from_fixtures(args.fixtures)
    stage = load_nlu(cfg, home=home)
    context = {"area": args.area} if args.area else None
    handlers = None
    if args.reply:
        from hark.nlu.handlers import load_handlers

        handlers = load_handlers(cfg, stage)
    for sentence in args.sentences:
        start = time.perf_counter()
        result = stage.recognize(sentence, context=context)
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

