"""``hark models list | pull | verify``."""

from __future__ import annotations


def register(cli) -> None:
    cli.add("models list", "list the model catalogue and what is assembled", _list)
    p = cli.add("models pull", "download, assemble and sha256-verify models", _pull)
    p.add_argument("names", nargs="*", help="catalogue names (default: every default model)")
    p.add_argument("--all", action="store_true", help="also the optional (large) models")
    p.add_argument("--force", action="store_true", help="re-assemble even if present")
    p = cli.add("models verify", "re-hash assembled models against the catalogue", _verify)
    p.add_argument("names", nargs="*")


def _list(args) -> int:
    from hark.cli import load_cfg
    from hark.models.catalogue import CATALOGUE
    from hark.models.store import is_pulled

    cfg = load_cfg(args)
    print(f"models folder: {cfg.models_dir}")
    print(f"{'name':32} {'kind':5} {'state':9} {'default':7} description")
    for spec in CATALOGUE.values():
        state = "ready" if is_pulled(cfg.models_dir, spec) else "-"
        print(f"{spec.name:32} {spec.kind:5} {state:9} {'yes' if spec.default else 'no':7} "
              f"{spec.description}")
    return 0


def _pull(args) -> int:
    from hark.cli import load_cfg
    from hark.models.store import iter_specs, pull, tqdm_progress

    cfg = load_cfg(args)
    progress = tqdm_progress()
    for spec in iter_specs(args.names, include_optional=args.all):
        pull(spec, cfg.models_dir, progress=progress, force=args.force)
    return 0


def _verify(args) -> int:
    from hark.cli import load_cfg
    from hark.models.store import is_pulled, iter_specs, verify

    cfg = load_cfg(args)
    bad = 0
    for spec in iter_specs(args.names, include_optional=True):
        if not args.names and not is_pulled(cfg.models_dir, spec):
            continue
        problems = verify(spec, cfg.models_dir)
        print(f"{spec.name}: {'OK' if not problems else 'FAILED'}")
        for p in problems:
            print(f"  {p}")
        bad += bool(problems)
    return 1 if bad else 0
