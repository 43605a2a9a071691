"""``hark bench llm``: the LLM stage measured, per profile.

``hark bench llm`` measures, per profile (and backend): load time, time to first token
cold (empty KV cache) and with the system prompt cached (p50/p95), tokens per second,
time to the first speakable chunk (through the speech cleaner and chunker, as the
pipeline does it), and accuracy on 30 short factual questions with known answers.

:func:`bench_isolation` measures what the supervised child process of
:mod:`hark.llm.worker` (``llm.isolation = "process"``) adds to a turn.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hark.trace import percentile

if TYPE_CHECKING:
    from hark.config import Config

log = logging.getLogger(__name__)

# (question, accepted answers): an answer is right when it contains one of them as a
# whole word, case-insensitive.
QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("Who wrote Romeo and Juliet?", ("shakespeare",)),
    ("Which planet is known as the Red Planet?", ("mars",)),
    ("How many days are in a week?", ("seven", "7")),
    ("What is the largest ocean on Earth?", ("pacific",)),
    ("What gas do plants take in from the air to make food?", ("carbon dioxide", "co2")),
    ("At what temperature in Celsius does water boil at sea level?", ("100", "one hundred")),
    ("Who painted the Mona Lisa?", ("leonardo", "da vinci")),
    ("What is the chemical symbol for gold?", ("au",)),
    ("How many continents are there?", ("seven", "7")),
    ("What is the largest planet in our solar system?", ("jupiter",)),
    ("At what temperature in Fahrenheit does water freeze?", ("32", "thirty-two")),
    ("Who was the first president of the United States?", ("washington",)),
    ("What language is mostly spoken in Brazil?", ("portuguese",)),
    ("What is the square root of 64?", ("eight", "8")),
    ("How many legs does a spider have?", ("eight", "8")),
    ("What is the capital of Italy?", ("rome",)),
    ("Which animal is called the king of the jungle?", ("lion",)),
    ("What is the common name for H2O?", ("water",)),
    ("What is the tallest mountain in the world?", ("everest",)),
    ("What is the currency of the United Kingdom?", ("pound", "sterling")),
    ("Who developed the theory of relativity?", ("einstein",)),
    ("What is the longest river in Africa?", ("nile",)),
    ("How many minutes are in an hour?", ("sixty", "60")),
    ("What is the capital of Germany?", ("berlin",)),
    ("What color do you get when you mix blue and yellow?", ("green",)),
    ("What is the hardest natural substance?", ("diamond", "diamonds")),
    ("In which country are the pyramids of Giza?", ("egypt",)),
    ("How many sides does a triangle have?", ("three", "3")),
]

TARGETS = {"fast": {"ttft_ms_p50": 150.0, "first_chunk_ms_p50": 350.0},
           "quality": {"accuracy": 0.8}}


def is_correct(answer: str, accepted: tuple[str, ...]) -> bool:
    text = answer.lower()
    return any(re.search(rf"(?<![a-z0-9]){re.escape(a)}(?:s|es)?(?![a-z0-9])", text)
               for a in accepted)  # "pound" also matches "pounds"


@dataclass
class ProfileResult:
    profile: str
    backend: str
    model: str = ""
    load_s: float = 0.0
    warm_up_s: float = 0.0
    ttft_cold_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    first_chunk_s: list[float] = field(default_factory=list)
    ttft_prefilled_s: list[float] = field(default_factory=list)
    first_chunk_prefilled_s: list[float] = field(default_factory=list)
    gen_tokens: int = 0
    gen_s: float = 0.0
    right: int = 0
    asked: int = 0
    answers: list[dict[str, Any]] = field(default_factory=list)
    skipped: str | None = None
    load_avg: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after

    def summary(self) -> dict[str, Any]:
        def stats(xs: list[float]) -> dict[str, float | None]:
            def r(v):
                return None if v is None else round(v * 1000, 1)
            return {"p50": r(percentile(xs, 50)), "p95": r(percentile(xs, 95)), "n": len(xs)}

        if self.skipped:
            return {"backend": self.backend, "skipped": self.skipped}
        return {
            "backend": self.backend,
            "model": self.model,
            "load_s": round(self.load_s, 3),
            "warm_up_s": round(self.warm_up_s, 3),
            "ttft_cold_ms": stats(self.ttft_cold_s),
            "ttft_ms": stats(self.ttft_s),
            "first_chunk_ms": stats(self.first_chunk_s),
            "ttft_prefilled_ms": stats(self.ttft_prefilled_s),
            "first_chunk_prefilled_ms": stats(self.first_chunk_prefilled_s),
            "tokens_per_s": round(self.gen_tokens / self.gen_s, 1) if self.gen_s else None,
            "accuracy": round(self.right / self.asked, 3) if self.asked else None,
            "questions": self.asked,
            # other work on the machine skews every figure: the 1-minute load average
            # before and after this profile's run (2 = both cores busy on a 2-core box)
            "load_avg_1m": [round(x, 2) for x in self.load_avg],
            "answers": self.answers,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(model_path: str, cfg) -> tuple[subprocess.Popen, str]:
    """Serve one GGUF with ``python -m llama_cpp.server`` on a free local port."""
    port = _free_port()
    c = cfg.llm
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", model_path, "--host",
         "127.0.0.1", "--port", str(port), "--n_ctx", str(c.n_ctx), "--n_threads",
         str(c.n_threads), "--n_batch", str(c.n_batch), "--n_gpu_layers",
         str(c.n_gpu_layers), "--verbose", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            from hark.errors import HarkError

            raise HarkError(f"llama_cpp.server exited: {proc.stderr.read().decode()[-500:]}",
                            fix="pip install 'llama-cpp-python[server]==0.3.36'")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise TimeoutError("llama_cpp.server did not start in 180 s")


def _ask(service, engine, question: str, session: str, cfg) -> tuple[str, float | None,
                                                                     float | None, int, float]:
    """One question through the service, timed: (answer, ttft_s, first_chunk_s,
    generated tokens, generation seconds)."""
    from hark.tts.chunker import SpeechChunker

    # the same chunker settings as the pipeline's, so this is the chunk TTS would get
    chunker = SpeechChunker(cfg.tts.first_chunk_min_chars, cfg.tts.chunk_max_chars,
                            cfg.tts.first_chunk_max_words)
    t0 = time.monotonic()
    first_chunk = None
    pieces = []
    for piece in service.reply_stream(question, session=session, cacheable=False):
        pieces.append(piece)
        if first_chunk is None and chunker.push(piece):
            first_chunk = time.monotonic() - t0
    if first_chunk is None and chunker.flush():
        first_chunk = time.monotonic() - t0
    stats = engine.last_stats
    ttft = stats.first_token_s
    n = getattr(stats, "generated_tokens", None) or getattr(stats, "pieces", 0)
    gen_s = max(0.0, stats.total_s - (ttft or 0.0))
    return "".join(pieces).strip(), ttft, first_chunk, n, gen_s


def bench_profile(cfg, profile: str, backend: str, questions, n_cold: int,
                  n_prefill: int = 10, echo=print) -> ProfileResult:
    from hark.errors import HarkError
    from hark.llm.service import LlmService
    from hark.models.store import resolve

    res = ProfileResult(profile, backend)
    try:
        path = resolve(cfg.llm.profiles[profile], cfg.models_dir, kind="llm")
    except KeyError:
        res.skipped = f"no profile '{profile}' in llm.profiles"
        return res
    except HarkError as exc:
        res.skipped = str(exc).replace("\n", " ")
        return res
    res.model = Path(path).name
    server = None
    try:
        t0 = time.monotonic()
        if backend == "openai":
            from hark.llm.openai_http import OpenAiEngine

            server, url = _start_server(path, cfg)
            engine = OpenAiEngine(url, timeout_s=max(cfg.llm.timeout_s, 60.0),
                                  temperature=cfg.llm.temperature, name=profile)
        else:
            from hark.llm.llama import engine_for_profile

            engine = engine_for_profile(cfg, profile)
        res.load_s = time.monotonic() - t0
        service = LlmService(cfg, engine)
        echo(f"  {profile}: loaded {res.model} in {res.load_s:.2f} s")
        # cold: nothing of the prompt in the KV cache; only the first token is needed
        from hark.llm.base import ChatMessage

        for i in range(n_cold):
            q = questions[i % len(questions)][0]
            if backend == "openai":
                if i > 0:
                    break  # a server's cache cannot be emptied from here: first call only
            else:
                engine.forget_all()
            t_cold = time.monotonic()
            stream = engine.stream([ChatMessage("system", cfg.llm.system_prompt),
                                    ChatMessage("user", q)], cfg.llm.max_tokens)
            for _ in stream:
                res.ttft_cold_s.append(time.monotonic() - t_cold)
                break
            stream.close()
        t1 = time.monotonic()
        service.warm_up()
        res.warm_up_s = time.monotonic() - t1
        for i, (q, accepted) in enumerate(questions):
            answer, ttft, first_chunk, n, gen_s = _ask(service, engine, q, f"q{i}", cfg)
            ok = service.last_source == "llm" and is_correct(answer, accepted)
            res.asked += 1
            res.right += ok
            if ttft is not None:
                res.ttft_s.append(ttft)
            if first_chunk is not None:
                res.first_chunk_s.append(first_chunk)
            if n > 1 and gen_s > 0:
                res.gen_tokens += n - 1
                res.gen_s += gen_s
            res.answers.append({"q": q, "answer": answer, "correct": ok,
                                "ttft_ms": None if ttft is None else round(ttft * 1000, 1)})
            echo(f"    [{'ok' if ok else '--'}] {q} -> {answer[:90]}")
        if hasattr(engine, "prefill"):
            # speculative prefill: the words heard before the person stopped talking are
            # read while they finish; only the last two words wait for the end of turn
            for i, (q, _) in enumerate(questions[:n_prefill]):
                words = q.split()
                service.prefill(" ".join(words[:-2]), session=f"p{i}")
                _, ttft, first_chunk, *_ = _ask(service, engine, q, f"p{i}", cfg)
                if ttft is not None:
                    res.ttft_prefilled_s.append(ttft)
                if first_chunk is not None:
                    res.first_chunk_prefilled_s.append(first_chunk)
        close = getattr(engine, "close", None)
        if close:
            close()
    except HarkError as exc:
        res.skipped = str(exc).replace("\n", " ")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
    return res


def _table(results: dict[str, dict[str, Any]]) -> str:
    head = (f"{'profile':<10} {'backend':<9} {'load s':>7} {'cold p50':>9} {'ttft p50':>9} "
            f"{'ttft p95':>9} {'chunk p50':>10} {'pf ttft':>8} {'pf chunk':>9} {'tok/s':>6} "
            f"{'accuracy':>9}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        if r.get("skipped"):
            lines.append(f"{name:<10} {r['backend']:<9} skipped: {r['skipped']}")
            continue

        def ms(d):
            return "-" if d.get("p50") is None else f"{d['p50']:.0f}"

        acc = "-" if r["accuracy"] is None else f"{r['accuracy'] * 100:.0f}%"
        lines.append(
            f"{name:<10} {r['backend']:<9} {r['load_s']:>7.2f} {ms(r['ttft_cold_ms']):>9} "
            f"{ms(r['ttft_ms']):>9} "
            f"{'-' if r['ttft_ms']['p95'] is None else format(r['ttft_ms']['p95'], '.0f'):>9} "
            f"{ms(r['first_chunk_ms']):>10} {ms(r['ttft_prefilled_ms']):>8} "
            f"{ms(r['first_chunk_prefilled_ms']):>9} {r['tokens_per_s'] or 0:>6.1f} {acc:>9}")
    lines.append("(ms, p50 unless noted; cold = empty KV cache; ttft = system prompt cached; "
                 "pf = speculative prefill of all but the last two words)")
    return "\n".join(lines)


def _plot(results: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, r in results.items() if not r.get("skipped")]
    if not names:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.25
    xs = range(len(names))
    series = [("first token, cold", "ttft_cold_ms"), ("first token, cached prefix", "ttft_ms"),
              ("first speakable chunk", "first_chunk_ms")]
    for k, (label, key) in enumerate(series):
        vals = [results[n][key]["p50"] or 0 for n in names]
        ax1.bar([x + (k - 1) * width for x in xs], vals, width, label=label)
    ax1.axhline(150, color="gray", ls="--", lw=1)
    ax1.axhline(350, color="gray", ls=":", lw=1)
    ax1.set_xticks(list(xs), names)
    ax1.set_ylabel("ms (p50)")
    ax1.set_title("LLM latency (dashed: 150 ms, dotted: 350 ms targets)")
    ax1.legend(fontsize=8)
    acc = [(results[n]["accuracy"] or 0) * 100 for n in names]
    tps = [results[n]["tokens_per_s"] or 0 for n in names]
    ax2.bar([x - 0.2 for x in xs], acc, 0.4, label="accuracy %")
    ax2.bar([x + 0.2 for x in xs], tps, 0.4, label="tokens/s")
    ax2.axhline(80, color="gray", ls="--", lw=1)
    ax2.set_xticks(list(xs), names)
    ax2.set_title("accuracy on 30 questions (dashed: 80%) and speed")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cmd_bench_llm(args: argparse.Namespace) -> int:
    """``hark bench llm`` (options in :mod:`hark.bench.cli`)."""
    from hark.cli import load_cfg

    cfg = load_cfg(args)
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    backend = args.backend or cfg.llm.backend  # both checked: argparse choices, config
    questions = QUESTIONS[:8] if args.quick else QUESTIONS
    if args.limit:
        questions = questions[: args.limit]
    n_cold = 2 if args.quick else 5
    logging.getLogger("hark.llm").setLevel(logging.WARNING)
    results: dict[str, dict[str, Any]] = {}
    for profile in profiles:
        print(f"benchmarking profile '{profile}' on {backend} ({len(questions)} questions)")
        load_before = os.getloadavg()[0]
        res = bench_profile(cfg, profile, backend, questions, n_cold,
                            n_prefill=4 if args.quick else 10)
        res.load_avg = (load_before, os.getloadavg()[0])
        if res.skipped:
            print(f"  {profile}: skipped: {res.skipped}")
        results[profile] = res.summary()
    print()
    print(_table(results))
    for name, goals in TARGETS.items():
        r = results.get(name)
        if not r or r.get("skipped"):
            continue
        checks = []
        if "ttft_ms_p50" in goals and r["ttft_ms"]["p50"] is not None:
            checks.append(f"first token p50 {r['ttft_ms']['p50']:.0f} ms "
                          f"(target <= {goals['ttft_ms_p50']:.0f})")
        if "first_chunk_ms_p50" in goals and r["first_chunk_ms"]["p50"] is not None:
            checks.append(f"first chunk p50 {r['first_chunk_ms']['p50']:.0f} ms "
                          f"(target <= {goals['first_chunk_ms_p50']:.0f})")
        if "accuracy" in goals and r["accuracy"] is not None:
            checks.append(f"accuracy {r['accuracy'] * 100:.0f}% "
                          f"(target >= {goals['accuracy'] * 100:.0f}%)")
        if checks:
            print(f"{name}: " + "; ".join(checks))
    print("(load average while measuring: " + ", ".join(
        f"{n} {r['load_avg_1m'][0]:.1f}->{r['load_avg_1m'][1]:.1f}"
        for n, r in results.items() if not r.get("skipped")) + f" on {os.cpu_count()} CPUs)")
    out = {"backend": backend, "n_threads": cfg.llm.n_threads, "n_batch": cfg.llm.n_batch,
           "cpus": os.cpu_count(),
           "max_tokens": cfg.llm.max_tokens, "quick": bool(args.quick),
           "profiles": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        _plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


def bench_isolation(cfg: Config, profile: str, repeats: int = 20,
                    n_gen: int = 24) -> dict[str, dict[str, float]]:
    """What the process costs per turn: the same questions to an in-process engine and
    to a worker, interleaved (the order alternates each round), each call after
    ``forget()`` (a new conversation on the saved system prefix), ``n_gen`` tokens with
    end-of-turn banned. Returns, per isolation, medians in ms: ``ttft`` (call to first
    piece as the caller sees it), ``total`` (all ``n_gen`` tokens) and ``pipe`` (the
    caller's first-token time minus the engine's own: what the pipe adds).

    ``python -c "from hark.config import Config; from hark.bench.llm import *;
    print(bench_isolation(Config(), 'fast'))"``"""
    from hark.llm.base import ChatMessage
    from hark.llm.llama import engine_for_profile
    from hark.llm.worker import worker_for_profile

    questions = ["Why is the sky blue?", "Who wrote Hamlet?", "How far away is the moon?",
                 "What is the tallest mountain?", "Why do cats purr?",
                 "What is a black hole?"]
    engines: dict[str, Any] = {"thread": engine_for_profile(cfg, profile),
                               "process": worker_for_profile(cfg, profile)}
    rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in engines}

    def one(engine: Any, question: str, n: int) -> tuple[float, float, float]:
        engine.forget()
        messages = [ChatMessage("system", cfg.llm.system_prompt),
                    ChatMessage("user", question)]
        t0 = time.perf_counter()
        pieces = engine.stream(messages, n, ignore_eos=True)
        next(pieces)
        ttft = time.perf_counter() - t0
        for _ in pieces:
            pass
        inner = engine.last_stats.first_token_s or ttft
        return ttft * 1000, (time.perf_counter() - t0) * 1000, (ttft - inner) * 1000

    try:
        for engine in engines.values():
            engine.warm_up(cfg.llm.system_prompt)
            one(engine, "Hello there", 4)
        for i in range(repeats):
            order = list(engines) if i % 2 == 0 else list(engines)[::-1]
            for kind in order:
                rows[kind].append(one(engines[kind], questions[i % len(questions)], n_gen))
    finally:
        for engine in engines.values():
            engine.close()
    return {kind: {"ttft": statistics.median(r[0] for r in rs),
                   "total": statistics.median(r[1] for r in rs),
                   "pipe": statistics.median(r[2] for r in rs)}
            for kind, rs in rows.items()}
