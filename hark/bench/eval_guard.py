"""``hark eval guard``: what the guard lets through, on labelled sentences.

A cases file (``hark/nlu/eval/guard_cases.yaml``) gives a home and sentences labelled
``act`` (a clear command: carried out), ``not_act`` (garbled, half, for a device the home
lacks, or a device's state: never acted on and never given to the LLM) or ``llm`` (a
question for the LLM). Each sentence goes through the intent stage and the guard as a
turn's transcript does. A read-only intent (a state question answered by its handler)
counts as right for an ``act`` (what time is it) and a ``not_act`` (is the tv on).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

from hark.nlu.guard import READ_ONLY, review


def evaluate(cases_file: Path, cfg) -> dict[str, Any]:
    from hark.nlu.recognizer import load_nlu

    data = yaml.safe_load(cases_file.read_text(encoding="utf-8"))
    if "home" in data:
        cfg.home.areas = list(data["home"]["areas"])
        cfg.home.entities = list(data["home"]["entities"])
    nlu = load_nlu(cfg)
    counts: Counter = Counter()
    rows = []
    for case in data["cases"]:
        text, expect = case["text"], case["expect"]
        intent = nlu.recognize(text)
        verdict = review(text, intent, nlu.home)
        if verdict.kind == "llm":
            got = "llm"
        elif verdict.kind == "act" and intent is not None and intent.name not in READ_ONLY:
            got = "act"
        elif verdict.kind == "act":
            got = "read"  # a read-only intent: its handler answers from the home's state
        else:
            got = "not_act"
        # a read-only intent is right for a request to read (the time) and honest for a
        # state question (its handler answers from the home's state, or says it can't)
        ok = got == expect or (expect in ("act", "not_act") and got == "read")
        counts[(expect, got)] += 1
        rows.append({"text": text, "expect": expect, "got": got, "ok": ok,
                     "verdict": verdict.kind, "say": verdict.say, "reason": verdict.reason,
                     "intent": intent.name if intent else None,
                     "slots": intent.slots if intent else {},
                     "source": intent.source if intent else None})
    by = {e: {"n": sum(v for (x, _), v in counts.items() if x == e),
              "right": sum(1 for r in rows if r["expect"] == e and r["ok"])}
          for e in ("act", "not_act", "llm")}
    return {"by_label": by,
            "wrong_actions": sum(1 for r in rows if r["got"] == "act" and r["expect"] != "act"),
            "not_act_to_llm": sum(1 for r in rows if r["expect"] == "not_act"
                                  and r["got"] == "llm"),
            "rows": rows}


def cmd_eval_guard(args) -> int:
    """``hark eval guard`` (options in :mod:`hark.bench.cli`)."""
    from hark.cli import load_cfg

    result = evaluate(Path(args.cases), load_cfg(args))
    for row in result["rows"]:
        if not row["ok"]:
            print(f"  {row['expect']:8} -> {row['got']:8} {row['text']!r}  "
                  f"({row['intent']} {row['slots']} {row['source']}; {row['reason']})")
    print(f"\n{'label':10} {'right':>9}")
    for label, v in result["by_label"].items():
        print(f"{label:10} {v['right']:>4}/{v['n']:<4}")
    print(f"wrong actions: {result['wrong_actions']}; not_act sent to the LLM: "
          f"{result['not_act_to_llm']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    return 0
