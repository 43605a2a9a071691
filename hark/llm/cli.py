"""``hark llm ask``: the LLM stage from the command line (``hark bench llm`` is in
:mod:`hark.bench`)."""

from __future__ import annotations

import argparse
import time


def cmd_ask(args: argparse.Namespace) -> int:
    from hark.cli import load_cfg
    from hark.llm.service import load_llm

    cfg = load_cfg(args)
    service = load_llm(cfg)
    for question in args.question:
        t0 = time.monotonic()
        first = None
        print(f"> {question}")
        for piece in service.reply_stream(question):
            if first is None:
                first = time.monotonic() - t0
            print(piece, end="", flush=True)
        total = time.monotonic() - t0
        print(f"\n  [{service.last_source}{' ' + service.last_profile if service.last_profile else ''}"
              f", first text {1000 * (first or 0):.0f} ms, total {1000 * total:.0f} ms]")
    return 0


def register(cli) -> None:
    p = cli.add("llm ask", "ask the LLM stage questions (a conversation, streamed)", cmd_ask)
    p.add_argument("question", nargs="+", help="one or more questions, asked in turn")
