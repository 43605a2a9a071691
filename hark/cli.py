"""The ``hark`` command.

Each area of the code adds its own sub-commands through a ``register(cli)`` function in
its ``cli.py`` (listed in ``COMMAND_MODULES``); handlers import their heavy dependencies
lazily so ``hark --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from hark.errors import HarkError

COMMAND_MODULES = [
    "hark.config_cli",
    "hark.models.cli",
    "hark.pipeline.cli",
    "hark.nlu.cli",
    "hark.llm.cli",
    "hark.bench.cli",
    "hark.server.cli",
    "hark.server.doctor",
    "hark.satellite.cli",
    "hark.vad.cli",
    "hark.asr.cli",
]


# Import names of the packages only the server installs (pyproject's "server" extra).
SERVER_PACKAGES = frozenset({
    "faster_whisper", "ctranslate2", "llama_cpp", "piper", "hassil",
    "home_assistant_intents", "rapidfuzz", "pocketsphinx", "wyoming", "matplotlib",
    "aiohttp", "prometheus_client", "safetensors", "cachetools",
})


class CommandTree:
    """Sub-commands addressed by path: ``cli.add("bench latency", ...)`` creates the
    ``bench`` group on first use."""

    def __init__(self, parser: argparse.ArgumentParser):
        self._subs: dict[str, argparse._SubParsersAction] = {
            "": parser.add_subparsers(dest="command", metavar="COMMAND")
        }

    def add(self, path: str, help: str, func: Callable[[argparse.Namespace], int | None],
            description: str | None = None) -> argparse.ArgumentParser:
        words = path.split()
        group = ""
        for word in words[:-1]:
            key = f"{group} {word}".strip()
            if key not in self._subs:
                p = self._subs[group].add_parser(word, help=f"{word} commands")
                p.set_defaults(func=lambda a, p=p: (p.print_help(), 2)[1])
                self._subs[key] = p.add_subparsers(dest=f"cmd_{key.replace(' ', '_')}",
                                                   metavar="COMMAND")
            group = key
        p = self._subs[group].add_parser(words[-1], help=help,
                                         description=description or help)
        p.set_defaults(func=func)
        return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hark", description="hark: a fully local, low-latency voice assistant"
    )
    parser.add_argument("--config", help="TOML config file (default: $HARK_CONFIG, "
                        "./hark.toml, ~/.config/hark/hark.toml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable), e.g. --set llm.profile=quality")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.set_defaults(func=lambda a: (parser.print_help(), 2)[1])
    tree = CommandTree(parser)
    missing: dict[str, str] = {}
    for name in COMMAND_MODULES:
        try:
            importlib.import_module(name).register(tree)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # area not written yet
                continue
            if exc.name and exc.name.split(".")[0] in SERVER_PACKAGES:
                # a satellite-only install (HARK_ROLE=satellite scripts/setup.sh) has no
                # server packages: those commands are left out, the rest work
                missing[name] = exc.name
                continue
            raise
    if missing:
        parser.epilog = ("not installed here (satellite-only install): the commands of "
                         + ", ".join(sorted(missing)) + "; install the server packages "
                         "with 'bash scripts/setup.sh' (HARK_ROLE=server) to get them")
    return parser


def load_cfg(args: argparse.Namespace):
    """The effective config for a command: file, then ``--set`` overrides."""
    from hark.config import load_config, parse_override

    overrides: dict = {}
    for item in args.set:
        _deep_update(overrides, parse_override(item))
    return load_config(args.config, overrides)


def _deep_update(into: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _deep_update(into[k], v)
        else:
            into[k] = v


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        for noisy in ("faster_whisper", "httpx", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        rc = args.func(args)
    except HarkError as exc:
        print(f"hark: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)
