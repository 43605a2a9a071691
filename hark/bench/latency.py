"""``hark bench latency``: streaming pipeline vs a typical sequential assistant, per stage.

Every utterance is played into the pipeline in real time (frames at their real duration,
silence before and after), once in ``baseline`` mode and once in ``streaming`` mode,
alternating so that machine noise hits both. The total is measured from the *true* end of
speech (the last sample of the utterance above the noise floor, known from the audio) to
the first reply audio frame leaving the pipeline.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hark.audio import AudioChunk, read_audio, resample
from hark.trace import percentile

log = logging.getLogger(__name__)

COMMANDS = [
    "What time is it?",
    "Set a timer for five minutes.",
    "Turn on the kitchen light.",
    "What's the date today?",
    "Turn off the bedroom light.",
    "Cancel the timer.",
]
QUESTIONS = [
    "Why is the sky blue?",
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "How far away is the moon?",
    "Tell me a fun fact about cats.",
]
QUICK = (COMMANDS[:3], QUESTIONS[:2])

# stage rows of the table: (label, span name in hark.trace.SPANS or "total")
ROWS = [
    ("end-of-turn wait", "end_of_turn"),
    ("ASR final (after end of speech)", "asr_final"),
    ("intent", "intent"),
    ("LLM first token", "llm_first_token"),
    ("LLM first spoken chunk", "llm_first_chunk"),
    ("TTS first audio", "tts_first_audio"),
    ("total: end of speech -> first audio", "total"),
]
MODES = ("baseline", "streaming")


@dataclass
class Utterance:
    name: str
    text: str
    kind: str  # "command" | "question"
    audio: np.ndarray  # int16 16 kHz
    voice: str = ""  # who or what spoke it, when the corpus says
    intent: str = ""  # the right intent ("LLM" for a question), when the corpus says


@dataclass
class TurnResult:
    utterance: str
    kind: str
    mode: str
    spans_ms: dict[str, float]
    marks_ms: dict[str, float]  # relative to the true end of speech
    transcript: str
    reply: str
    intent: str
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    voice: str = ""
    expected_intent: str = ""
    slots: dict[str, Any] = field(default_factory=dict)

    @property
    def right(self) -> bool | None:
        """Whether the intent was the expected one (None when the corpus gives none)."""
        return None if not self.expected_intent else self.intent == self.expected_intent


def speech_end_index(samples: np.ndarray, rate: int = 16000) -> int:
    """Index just after the last 10 ms window whose level is above the noise floor."""
    win = rate // 100
    n = len(samples) // win
    if n == 0:
        return len(samples)
    rms = np.sqrt(np.mean(samples[: n * win].astype(np.float64).reshape(n, win) ** 2, axis=1))
    floor = max(np.percentile(rms, 10) * 4, 60.0)
    loud = np.nonzero(rms > floor)[0]
    return int((loud[-1] + 1) * win) if len(loud) else len(samples)


def piper_corpus(cfg, quick: bool) -> list[Utterance]:
    from hark.tts.piper import load_tts

    tts = load_tts(cfg)
    commands, questions = QUICK if quick else (COMMANDS, QUESTIONS)
    out = []
    for kind, texts in (("command", commands), ("question", questions)):
        for i, text in enumerate(texts):
            audio = np.concatenate([c.samples for c in tts.synthesize(text)])
            out.append(Utterance(f"{kind}{i}", text, kind,
                                 resample(audio, tts.sample_rate, 16000)))
    return out


def dir_corpus(path: Path) -> list[Utterance]:
    """WAV files + transcripts.json: file name -> text, or -> {"text": ..., "kind":
    "command" | "question", "voice": ..., "intent": ...} ("voice" groups the results per
    voice; "intent" is the right intent's name, "LLM" for a question the LLM answers)."""
    meta = json.loads((path / "transcripts.json").read_text())
    out = []
    for name, v in meta.items():
        if isinstance(v, str):
            v = {"text": v}
        out.append(Utterance(name, v["text"], v.get("kind", "question"), read_audio(path / name),
                             voice=str(v.get("voice", "")), intent=str(v.get("intent", ""))))
    return out


async def _play_turn(assistant, utt: Utterance, mode: str, session: str,
                     frame_ms: int, lead_s: float = 0.4, max_tail_s: float = 4.0) -> TurnResult:
    from hark.pipeline.events import ReplyAudio, TurnEnd

    fs = frame_ms * 16
    end_idx = speech_end_index(utt.audio)
    audio = np.concatenate([np.zeros(int(lead_s * 16000), np.int16), utt.audio,
                            np.zeros(int(max_tail_s * 16000), np.int16)])
    true_end_sample = int(lead_s * 16000) + end_idx
    state: dict[str, float] = {}

    async def mic():
        start = time.monotonic()
        for i, pos in enumerate(range(0, len(audio) - fs + 1, fs)):
            due = start + (i + 1) * fs / 16000  # a frame exists once its last sample does
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t = time.monotonic() - fs / 16000
            if pos <= true_end_sample < pos + fs:
                state["true_end"] = t + (true_end_sample - pos) / 16000
            yield AudioChunk(audio[pos:pos + fs], 16000, t)

    end: TurnEnd | None = None
    first_audio = None
    async for ev in assistant.run_turn(mic(), session=session, mode=mode):
        if isinstance(ev, ReplyAudio) and first_audio is None:
            first_audio = time.monotonic()
        elif isinstance(ev, TurnEnd):
            end = ev
    assert end is not None
    tr = end.trace
    t_end = state.get("true_end", tr.marks.get("speech_end", 0.0))
    spans = tr.spans_ms()
    if first_audio is not None:
        spans["total"] = (first_audio - t_end) * 1000
    else:
        spans.pop("total", None)
    spans["vad_end_error"] = (tr.marks.get("speech_end", t_end) - t_end) * 1000
    marks = {k: (v - t_end) * 1000 for k, v in tr.marks.items()}
    policy = ("speculative_discarded", "speculative_used", "partial_reused", "speech_intent",
              "grammar_overruled")
    extra = {k: tr.info[k] for k in policy if k in tr.info}
    extra["tts_cache_hit"] = bool(tr.info.get("tts_cache_hit"))
    return TurnResult(utt.name, utt.kind, mode, spans, marks, end.transcript, end.reply,
                      str(tr.info.get("intent", "")), end.error, extra, voice=utt.voice,
                      expected_intent=utt.intent, slots=dict(tr.info.get("slots") or {}))


def summarize(turns: list[TurnResult]) -> dict[str, Any]:
    def stats(vals: list[float]) -> dict[str, float | None]:
        return {"p50": _r(percentile(vals, 50)), "p95": _r(percentile(vals, 95)), "n": len(vals)}

    modes: dict[str, Any] = {}
    for mode in MODES:
        if not any(t.mode == mode for t in turns):
            continue
        mt = [t for t in turns if t.mode == mode and not t.error]
        entry: dict[str, Any] = {"stages": {}, "by_kind": {}}
        for _, span in ROWS:
            entry["stages"][span] = stats([t.spans_ms[span] for t in mt if span in t.spans_ms])
        entry["total_ms"] = entry["stages"]["total"]
        for kind in ("command", "question"):
            kt = [t for t in mt if t.kind == kind]
            entry["by_kind"][kind] = {
                "total_ms": stats([t.spans_ms["total"] for t in kt if "total" in t.spans_ms]),
                "stages": {s: stats([t.spans_ms[s] for t in kt if s in t.spans_ms])
                           for _, s in ROWS},
            }
        entry["errors"] = sum(1 for t in turns if t.mode == mode and t.error)
        entry["by_voice"] = _by_voice([t for t in turns if t.mode == mode], stats)
        modes[mode] = entry
    b = modes.get("baseline", {}).get("total_ms", {}).get("p50")
    s = modes.get("streaming", {}).get("total_ms", {}).get("p50")
    return {"modes": modes, "speedup_p50": _r(b / s) if b and s else None,
            "turns": [{**t.__dict__, "right": t.right} for t in turns]}


def _by_voice(turns: list[TurnResult], stats) -> dict[str, Any]:
    """Per voice named by the corpus: totals per kind, and how many intents were right."""
    out: dict[str, Any] = {}
    for voice in sorted({t.voice for t in turns if t.voice}):
        vt = [t for t in turns if t.voice == voice]
        entry: dict[str, Any] = {"turns": len(vt), "errors": sum(1 for t in vt if t.error)}
        for kind in ("command", "question"):
            kt = [t for t in vt if t.kind == kind and not t.error]
            entry[kind] = {"total_ms": stats([t.spans_ms["total"] for t in kt
                                              if "total" in t.spans_ms]),
                           "right": sum(1 for t in kt if t.right),
                           "labelled": sum(1 for t in kt if t.right is not None)}
        out[voice] = entry
    return out


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def format_table(summary: dict[str, Any]) -> str:
    def cell(st: dict) -> str:
        if not st or st.get("p50") is None:
            return f"{'-':>17}"
        return f"{st['p50']:7.0f} / {st['p95']:7.0f}"

    m = summary["modes"]
    ran = [mode for mode in MODES if mode in m]
    lines = [f"{'stage (ms, p50 / p95)':40} " + "   ".join(f"{mode:>17}" for mode in ran),
             "-" * (40 + 20 * len(ran))]
    for label, span in ROWS:
        lines.append(f"{label:40} " + "   ".join(cell(m[mode]['stages'][span]) for mode in ran))
    for kind in ("command", "question"):
        lines.append(f"{'total, ' + kind + 's':40} "
                     + "   ".join(cell(m[mode]['by_kind'][kind]['total_ms']) for mode in ran))
    for mode in ran:
        voices = m[mode].get("by_voice") or {}
        if voices:
            lines += ["", f"{mode}, per voice: commands right, p50 / p95 ms; questions right, "
                          "p50 / p95 ms"]
        for voice, v in voices.items():
            c, q = v["command"], v["question"]
            lines.append(f"  {voice:28} {c['right']:>3}/{c['labelled']:<3} "
                         f"{cell(c['total_ms'])}   {q['right']:>3}/{q['labelled']:<3} "
                         f"{cell(q['total_ms'])}")
    if summary.get("speedup_p50"):
        lines.append(f"\nstreaming total p50 is {summary['speedup_p50']:.1f}x lower than baseline")
    errs = [t for t in summary["turns"] if t["error"]]
    if errs:
        lines.append(f"{len(errs)} turn(s) failed: " + "; ".join(
            f"{t['utterance']}/{t['mode']}: {t['error']}" for t in errs[:5]))
    return "\n".join(lines)


WATERFALL = [  # (label, start mark, end mark)
    ("end of turn", "speech_end", "turn_end"),
    ("ASR final", "speech_end", "asr_final"),
    ("intent", "intent_start", "intent_done"),
    ("LLM", "llm_start", "llm_done"),
    ("LLM to 1st chunk", "llm_start", "llm_first_chunk"),
    ("TTS", "tts_start", "tts_done"),
    ("first audio out", "speech_end", "first_audio_out"),
]


def plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = [t for t in summary["turns"] if not t["error"] and "total" in t["spans_ms"]]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    colors = {"baseline": "#c0504d", "streaming": "#4f81bd"}
    for ax, mode in zip(axes[:2], MODES):
        mt = sorted((t for t in turns if t["mode"] == mode and t["kind"] == "question"),
                    key=lambda t: t["spans_ms"]["total"]) or sorted(
            (t for t in turns if t["mode"] == mode), key=lambda t: t["spans_ms"]["total"])
        if not mt:
            continue
        t = mt[len(mt) // 2]  # the median turn
        marks = t["marks_ms"]
        for i, (label, a, b) in enumerate(WATERFALL):
            if a in marks and b in marks:
                ax.barh(i, marks[b] - marks[a], left=marks[a], color=colors[mode])
                ax.text(marks[b] + 15, i, f"{marks[b] - marks[a]:.0f} ms", va="center", fontsize=8)
        if "speech_start" in marks:
            ax.axvspan(marks["speech_start"], 0, color="#dddddd", label="person speaking")
        ax.axvline(0, color="k", lw=1)
        ax.set_yticks(range(len(WATERFALL)), [w[0] for w in WATERFALL])
        ax.invert_yaxis()
        ax.set_xlabel("ms relative to the true end of speech")
        ax.set_title(f"{mode}: median question turn\n\"{t['transcript'][:40]}\"", fontsize=10)
        ax.legend(loc="lower right", fontsize=8)
    ax = axes[2]
    data, labels = [], []
    for mode in MODES:
        for kind in ("command", "question"):
            vals = [t["spans_ms"]["total"] for t in turns if t["mode"] == mode and t["kind"] == kind]
            if vals:
                data.append(vals)
                labels.append(f"{mode}\n{kind}s")
    if data:
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
        for i, vals in enumerate(data, 1):
            ax.scatter(np.full(len(vals), i) + np.random.uniform(-0.08, 0.08, len(vals)), vals,
                       s=10, alpha=0.6, color="k")
    ax.set_ylabel("end of speech -> first reply audio (ms)")
    ax.set_title("distribution of totals")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle("hark bench latency: streaming pipeline vs sequential baseline (same process)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


async def run_bench(assistant, corpus: list[Utterance], repeat: int = 1,
                    progress=print, modes: tuple[str, ...] = MODES) -> list[TurnResult]:
    results: list[TurnResult] = []
    n = 0
    for r in range(repeat):
        for i, utt in enumerate(corpus):
            order = modes if (i + r) % 2 == 0 else modes[::-1]  # alternate who goes first
            for mode in order:
                n += 1
                # each turn starts from the system prefix alone: the same question asked
                # just before (by the other mode) must not leave its words in the cache
                for engine in (assistant.llm.engine, getattr(assistant.llm, "fallback", None)):
                    if hasattr(engine, "keep_prefix_only"):
                        engine.keep_prefix_only()
                res = await _play_turn(assistant, utt, mode, session=f"bench-{n}",
                                       frame_ms=assistant.cfg.audio.frame_ms)
                results.append(res)
                tot = res.spans_ms.get("total")
                progress(f"[{n:3d}] {mode:9} {utt.kind:8} {tot if tot is None else round(tot):>6} ms"
                         f"  '{res.transcript}' -> {res.intent}: '{res.reply[:60]}'"
                         + (f"  ERROR {res.error}" if res.error else ""))
    return results


def main(cfg, args) -> int:
    from hark.pipeline.assistant import Assistant

    # a typical assistant has no answer cache: neither mode may answer from one here
    cfg.llm.cache_ttl_s = 0.0
    corpus = dir_corpus(Path(args.corpus)) if args.corpus else piper_corpus(cfg, args.quick)
    print(f"corpus: {len(corpus)} utterances; loading models ...", flush=True)
    assistant = Assistant.load(cfg)
    try:
        t0 = time.monotonic()
        modes = MODES if getattr(args, "mode", "both") == "both" else (args.mode,)
        turns = asyncio.run(run_bench(assistant, corpus, args.repeat, modes=modes))
        print(f"ran {len(turns)} turns in {time.monotonic() - t0:.0f} s\n")
    finally:
        assistant.close()
    summary = summarize(turns)
    summary["config"] = {"llm_profile": cfg.llm.profile, "asr_model": cfg.asr.model,
                         "frame_ms": cfg.audio.frame_ms, "quick": args.quick,
                         "repeat": args.repeat}
    print(format_table(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
        print(f"\nJSON: {args.json}")
    if args.plot:
        print(f"plot: {plot(summary, Path(args.plot))}")
    return 0
