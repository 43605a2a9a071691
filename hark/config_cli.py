"""``hark config show``."""

from __future__ import annotations


def register(cli) -> None:
    p = cli.add("config show", "print the effective configuration as TOML (secrets redacted)",
                _show)
    p.add_argument("--defaults", action="store_true", help="print the built-in defaults")
    p.add_argument("--output", metavar="PATH",
                   help="write it to PATH instead, secrets included (atomically, mode 0600; "
                   "an existing file keeps its mode, at most 0640)")


def _show(args) -> int:
    from hark.cli import load_cfg
    from hark.config import Config, dump_toml, write_config

    cfg = Config() if args.defaults else load_cfg(args)
    if args.output:
        print(f"wrote {write_config(cfg, args.output)}")
    else:
        print(dump_toml(cfg), end="")
    return 0
