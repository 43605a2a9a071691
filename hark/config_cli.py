"""``hark config show``."""

from __future__ import annotations


def register(cli) -> None:
    p = cli.add("config show", "print the effective configuration as TOML", _show)
    p.add_argument("--defaults", action="store_true", help="print the built-in defaults")
    p.add_argument("--secrets", action="store_true",
                   help="print tokens and API keys too (redacted by default)")


def _show(args) -> int:
    from hark.cli import load_cfg
    from hark.config import Config, dump_toml

    from hark.auth import redacted

    cfg = Config() if args.defaults else load_cfg(args)
    print(dump_toml(cfg if args.secrets else redacted(cfg)), end="")
    return 0
