"""``hark eval intents``: typed sentences with expected intents, scored.

Text-case files have the shape of the home-assistant/intents repository's test files::

    language: en
    tests:
      - sentences: ["turn on the kitchen light", ...]
        intent:
          name: HassTurnOn
          slots: {name: kitchen light}
    rejects:            # hark's addition: sentences that must match nothing (-> LLM)
      - why is the sky blue

A sentence is right when the intent name and every slot are right (no slot missing, no
extra slot; values compared case-insensitively with surrounding spaces stripped, numbers
as numbers; a list of expected values means any of them; ``{value: X}`` is X; a mapping
is compared key by key). ``accuracy_exact_case`` also compares text with its capitals, as
Home Assistant's own test runner does.
``context`` (e.g. ``{area: Kitchen}``, the satellite's room) may sit under ``intent``
or beside it; ``metadata`` is ignored. ``name: all`` (Home Assistant's files: every
matching device) is right when hark's slots carry no name (or the name "all").

``response`` is what the spoken answer must carry: the answer of hark's handlers (state
questions answered from the fixtures' states; other commands by the dry run) is right
when it holds every word of ``response`` except filler words ("the", "is", "a", ...),
numbers compared as numbers (:func:`carries`). ``response_rate`` is the share of cases
with a ``response`` whose answer carries it.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hark.errors import ConfigError
from hark.nlu.base import IntentResult


@dataclass
class Case:
    sentence: str
    intent: str | None  # None: must be rejected
    slots: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    context: dict[str, Any] = field(default_factory=dict)  # e.g. {area: Kitchen}
    response: str | None = None  # what the spoken answer must say


def load_cases(path: str | Path) -> list[Case]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read text cases {path}: {exc}") from exc
    if not isinstance(data, dict) or not ("tests" in data or "rejects" in data):
        raise ConfigError(f"{path}: expected 'tests:' (and/or 'rejects:') at the top level",
                          fix="use the home-assistant/intents test file shape")
    cases: list[Case] = []
    for i, test in enumerate(data.get("tests") or []):
        intent = test.get("intent") or {}
        if not isinstance(intent, dict) or not intent.get("name") or not test.get("sentences"):
            raise ConfigError(f"{path}: test #{i + 1} needs 'sentences' and 'intent: {{name}}'")
        sentences = test["sentences"]
        if isinstance(sentences, str):
            sentences = [sentences]
        slots = intent.get("slots") or {}
        if not isinstance(slots, dict):
            raise ConfigError(f"{path}: test #{i + 1}: 'slots' must be a mapping, got {slots!r}")
        # The satellite's context (e.g. its area) sits under the intent or, in some
        # files, beside it; both are read (the intent's wins).
        context = {**dict(test.get("context") or {}), **dict(intent.get("context") or {})}
        response = test.get("response")
        if isinstance(response, bool):  # YAML's unquoted yes/no
            response = "yes" if response else "no"
        for sentence in sentences:
            cases.append(Case(str(sentence), intent["name"],
                              {k: _slot_value(v) for k, v in slots.items()},
                              path.name, context,
                              None if response is None else str(response)))
    for sentence in data.get("rejects") or []:
        cases.append(Case(str(sentence), None, {}, path.name))
    return cases


def _slot_value(value: Any) -> Any:
    """An expected slot value: ``{value: X}`` (older test files) is X; a list means
    any of its items. YAML reads an unquoted ``state: on`` as true: a true or false
    value is the state "on" or "off" (no intent slot is a boolean)."""
    if isinstance(value, dict) and "value" in value:
        return _slot_value(value["value"])
    if isinstance(value, list):
        return [_slot_value(v) for v in value]
    if isinstance(value, bool):
        return "on" if value else "off"
    return value


def _same(expected: Any, actual: Any, exact_case: bool = False) -> bool:
    """``actual`` is ``expected``: numbers as numbers, text with surrounding spaces
    stripped and (unless ``exact_case``) case-insensitively."""
    if isinstance(expected, dict):  # a fixed mapping the template sets, key by key
        if not isinstance(actual, dict) or set(map(str, expected)) != set(map(str, actual)):
            return False
        by_key = {str(k): v for k, v in actual.items()}
        return all(_same(v, by_key[str(k)], exact_case) for k, v in expected.items())
    if isinstance(expected, list):
        if isinstance(actual, list):  # both lists: the same values, any order
            return len(expected) == len(actual) and all(
                any(_same(e, a, exact_case) for a in actual) for e in expected)
        return any(_same(e, actual, exact_case) for e in expected)
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        try:
            return abs(float(actual) - float(expected)) < 1e-6
        except (TypeError, ValueError):
            return False
    if exact_case:
        return str(expected).strip() == str(actual).strip()
    return str(expected).strip().casefold() == str(actual).strip().casefold()


def is_right(case: Case, result: IntentResult | None, exact_case: bool = False) -> bool:
    """The right intent with every slot right, no slot missing and none extra (or, for
    a sentence that must be rejected, no intent)."""
    if case.intent is None:
        return result is None
    if result is None or result.name != case.intent:
        return False
    expected = dict(case.slots)
    if str(expected.get("name", "")).casefold() == "all" and "name" not in result.slots:
        del expected["name"]  # every matching device: no name
    if set(expected) != set(result.slots):
        return False
    return all(_same(v, result.slots[k], exact_case) for k, v in expected.items())


# words of an expected response that carry no information
_FILLER = {"the", "a", "an", "is", "are", "it", "its", "of", "in", "on the", "to", "and",
           "there", "be"}
_WORD = re.compile(r"-?\d+(?:\.\d+)?|[\w']+")


def _words(text: str) -> list[str]:
    out = []
    for word in _WORD.findall(text.casefold().replace("’", "'")):
        try:
            value = float(word)
            word = str(int(value)) if value.is_integer() else str(value)
        except ValueError:
            pass
        out.append(word)
    return out


def carries(expected: str, said: str) -> bool:
    """``said`` holds every word of ``expected`` but filler words (numbers as numbers,
    case and punctuation ignored): it carries the same information."""
    have = set(_words(said))
    return all(w in have for w in _words(expected) if w not in _FILLER)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def bare_match(stage: Any, case: Case) -> IntentResult | None:
    """``case`` matched by hassil alone against the installed home-assistant-intents
    templates (all of them) and the stage's home: none of hark's normalization, own
    sentences, fuzzy correction or paraphrases. What the templates themselves cover."""
    from hassil import Intents, recognize_best
    from home_assistant_intents import get_intents

    from hark.nlu.recognizer import _plain

    intents = getattr(stage, "_bare_intents", None)
    if intents is None:
        intents = Intents.from_dict(get_intents(stage.language))
        stage._bare_intents = intents
    found = recognize_best(case.sentence, intents, slot_lists=stage.home_lists,
                           intent_context=case.context or None, language=stage.language,
                           best_slot_name="name")
    if found is None:
        return None
    return IntentResult(name=found.intent.name, text=case.sentence, source="bare",
                        slots={e.name: _plain(e.value) for e in found.entities_list})


def coverage(stage: Any, cases: list[Case], report: dict[str, Any]) -> dict[str, Any]:
    """Split ``report``'s errors by cause: ``templates`` when bare hassil on the installed
    templates gets the case wrong too (a test for another intents version, an intent the
    package lacks), ``hark`` when the templates get it right and hark's own layers do
    not. Adds ``class`` and ``bare`` to each error; returns the counts."""
    commands = [c for c in cases if c.intent is not None]
    covered = [c for c in commands if is_right(c, bare_match(stage, c))]
    wrong = {(e["file"], e["sentence"], repr(e["expected"])) for e in report["errors"]}
    covered_right = sum((c.source, c.sentence, repr({"intent": c.intent, "slots": c.slots}))
                        not in wrong for c in covered)
    by_class = {"templates": 0, "hark": 0}
    lookup = {(c.source, c.sentence, repr({"intent": c.intent, "slots": c.slots})): c
              for c in commands}
    for err in report["errors"]:
        case = lookup.get((err["file"], err["sentence"], repr(err["expected"])))
        if case is None:  # a sentence that had to be rejected
            continue
        bare = bare_match(stage, case)
        err["class"] = "hark" if is_right(case, bare) else "templates"
        err["bare"] = None if bare is None else {"intent": bare.name, "slots": bare.slots}
        by_class[err["class"]] += 1
    return {"covered": len(covered),
            "accuracy_on_covered": covered_right / len(covered) if covered else None,
            "errors_by_class": by_class}


def evaluate(stage: Any, cases: list[Case], handlers: Any = None) -> dict[str, Any]:
    """Run every case through ``stage.match`` (uncached) and score it; with
    ``handlers`` (:class:`hark.nlu.handlers.IntentHandlers`), also whether the spoken
    answer carries each case's ``response``."""
    commands = [c for c in cases if c.intent is not None]
    rejects = [c for c in cases if c.intent is None]
    times: list[float] = []
    cpu_times: list[float] = []  # this thread's CPU time: what a busy machine can't inflate
    per_intent: dict[str, dict[str, Any]] = {}
    wrong: list[dict[str, Any]] = []
    right_commands = 0
    right_exact_case = 0  # also every text value with Home Assistant's exact capitals
    right_rejects = 0
    answered: list[bool] = []
    wrong_answers: list[dict[str, Any]] = []
    for case in cases:
        start, cpu_start = time.perf_counter(), time.thread_time()
        result = stage.match(case.sentence, context=case.context or None)
        times.append((time.perf_counter() - start) * 1000)
        cpu_times.append((time.thread_time() - cpu_start) * 1000)
        ok = is_right(case, result)
        if handlers is not None and case.response is not None:
            said = handlers.handle(result).text if result is not None else ""
            carried = carries(case.response, said)
            answered.append(carried)
            if not carried:
                wrong_answers.append({"sentence": case.sentence, "file": case.source,
                                      "expected": case.response, "said": said})
        key = case.intent or "(reject)"
        row = per_intent.setdefault(key, {"total": 0, "errors": 0})
        row["total"] += 1
        if ok:
            right_commands += case.intent is not None
            right_exact_case += case.intent is not None and is_right(case, result, True)
            right_rejects += case.intent is None
            continue
        row["errors"] += 1
        wrong.append({
            "sentence": case.sentence, "file": case.source, "context": case.context,
            "expected": {"intent": case.intent, "slots": case.slots},
            "got": None if result is None else {"intent": result.name, "slots": result.slots,
                                                "source": result.source},
        })
    # The paraphrase fallback alone, on every sentence that reached it (nothing matched
    # strictly or fuzzily): what each open question pays before it goes to the LLM.
    fallback_ms: list[float] = []
    fallback_cpu_ms: list[float] = []
    paraphrase = getattr(stage, "paraphrase", None)
    if paraphrase is not None:
        from hark.nlu.recognizer import normalize

        for case in cases:
            if stage.match(case.sentence, context=case.context or None,
                           paraphrase=False) is not None:
                continue
            text = normalize(case.sentence)
            start, cpu_start = time.perf_counter(), time.thread_time()
            paraphrase.recognize(text)
            fallback_ms.append((time.perf_counter() - start) * 1000)
            fallback_cpu_ms.append((time.thread_time() - cpu_start) * 1000)
    cache_times = []
    for case in commands[:50]:
        stage.recognize(case.sentence, context=case.context or None)
        start = time.perf_counter()
        stage.recognize(case.sentence, context=case.context or None)
        cache_times.append((time.perf_counter() - start) * 1000)
    return {
        "sentences": len(commands),
        "accuracy": right_commands / len(commands) if commands else None,
        "accuracy_exact_case": right_exact_case / len(commands) if commands else None,
        "responses": len(answered),
        "response_rate": sum(answered) / len(answered) if answered else None,
        "response_errors": wrong_answers,
        "rejects": len(rejects),
        "rejection_rate": right_rejects / len(rejects) if rejects else None,
        "ms_per_sentence": {
            "p50": round(_pct(times, 50), 3), "p95": round(_pct(times, 95), 3),
            "mean": round(statistics.fmean(times), 3) if times else 0.0,
            "max": round(max(times), 3) if times else 0.0,
        },
        "cpu_ms_per_sentence": {"p50": round(_pct(cpu_times, 50), 3),
                                "p95": round(_pct(cpu_times, 95), 3)},
        "cache_hit_ms": {"p50": round(_pct(cache_times, 50), 4),
                         "p95": round(_pct(cache_times, 95), 4)},
        "fallback": None if paraphrase is None else {
            "sentences": len(fallback_ms),
            "ms": {"p50": round(_pct(fallback_ms, 50), 3),
                   "p95": round(_pct(fallback_ms, 95), 3)},
            "cpu_ms": {"p50": round(_pct(fallback_cpu_ms, 50), 3),
                       "p95": round(_pct(fallback_cpu_ms, 95), 3)},
            "encoder": type(paraphrase.embedder).__name__,
        },
        "per_intent": dict(sorted(per_intent.items())),
        "errors": wrong,
    }


def text_case_files(path: str | Path) -> list[Case]:
    """The cases of one file, or of every ``*.yaml`` in a folder (not its subfolders,
    and not ``_fixtures.yaml`` or other files starting with ``_``)."""
    path = Path(path)
    if path.is_dir():
        return [case for p in sorted(path.glob("*.yaml")) if not p.name.startswith("_")
                for case in load_cases(p)]
    return load_cases(path)


def eval_handlers(cfg: Any, stage: Any) -> Any:
    """Handlers that answer without acting: the dry run for commands (no Home
    Assistant is called), the stage's home for state questions."""
    from hark.nlu.handlers import DryRunHomeHandler, IntentHandlers
    from hark.nlu.states import StateAnswerer

    return IntentHandlers(cfg, home=DryRunHomeHandler(stage.home), recognizer=stage,
                          states=StateAnswerer(stage.home, stage.language),
                          responses=stage.responses)


def cmd_eval_intents(args) -> int:
    """``hark eval intents`` (options in :mod:`hark.bench.cli`)."""
    from hark.cli import load_cfg
    from hark.nlu.home import home_from_fixtures
    from hark.nlu.recognizer import load_nlu
    from hark.sched import freeze_startup_objects

    cfg = load_cfg(args)
    home = home_from_fixtures(args.fixtures) if args.fixtures else None
    stage = load_nlu(cfg, home=home)
    stage.warmup()
    freeze_startup_objects()  # as the server does after its warm-up
    cases = [case for path in args.text_cases for case in text_case_files(path)]
    handlers = eval_handlers(cfg, stage)
    try:
        report = evaluate(stage, cases, handlers=handlers)
    finally:
        handlers.close()
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
    if report["responses"]:
        print(f"answers carrying the expected information: {report['response_rate']:.1%} "
              f"of {report['responses']}")
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
    for err in report["response_errors"]:
        print(f"  answer: {err['sentence']!r} said {err['said']!r}, expected {err['expected']!r}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    return 0
