"""``hark config show``."""

from __future__ import annotations


def register(cli) -> None:
    p = cli.add("config show", "print the effective configuration as TOML", _show)
    p.add_argument("--defaults", action="store_true", help="print the built-in defaults")


def _show(args) -> int:
    from hark.cli import load_cfg
    from hark.config import Config, dump_toml

    cfg = Config() if args.defaults else load_cfg(args)
    print(dump_toml(cfg), end="")
    return 0
