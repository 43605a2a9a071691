"""``hark bench esphome``: spoken turns from an emulated ESPHome voice satellite.

The device is :class:`hark.bench.esphome_emulator.EsphomeDevice` on loopback (the ESPHome
native API with aioesphomeapi's own messages, Noise-encrypted with a key), driven by
:mod:`hark.server.esphome_satellite` through aioesphomeapi as Home Assistant drives a
real one, with replies served by hark's own HTTP server. Each utterance (``hark bench
latency``'s Piper-spoken commands and questions, or ``--corpus DIR``) is "heard" by the
device after its wake word and streamed in real time (512-sample messages, each sent
once its last sample exists), then silence until hark's end of turn. It runs once per
reply path:

- ``url``: a media-player device (Voice PE): the reply streamed from the URL named at
  ``RUN_START``, fetched at ``INTENT_PROGRESS tts_start_streaming=1``;
- ``api``: a speaker device: the reply as ``VoiceAssistantAudio`` messages.

The measure is the time from the utterance's true end of speech (the last sample above
the noise floor, as the device recorded it) to the first reply audio byte at the
device: hark's end of turn, its answer, and the API/HTTP hops. Each reply is
synthesized afresh (the phrase cache is emptied before each turn), so that the path run
second does not find the first one's reply cached. What a real device adds
(Wi-Fi, its audio decoder and speaker buffer) is not in it: there is no device here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hark.trace import percentile

MODES = ("url", "api")


@dataclass
class EspTurn:
    utterance: str
    kind: str
    mode: str
    total_ms: float | None  # true end of speech -> first reply audio byte at the device
    reply_s: float = 0.0  # seconds of reply audio the device got
    transcript: str = ""
    intent: str = ""
    reply: str = ""
    error: str | None = None
    spans_ms: dict[str, float] = field(default_factory=dict)  # hark's own trace


async def run_bench(cfg, assistant, corpus: list[Any], repeat: int = 1,
                    modes: tuple[str, ...] = MODES, progress=print) -> list[EspTurn]:
    from hark.bench.esphome_emulator import MEDIA_PLAYER_FLAGS, SPEAKER_FLAGS, EsphomeDevice
    from hark.bench.latency import speech_end_index
    from hark.bench.wyoming_satellite import _fresh
    from hark.server.esphome_satellite import EsphomeSatellites
    from hark.server.http import Loading, start_http

    key = base64.b64encode(secrets.token_bytes(32)).decode()
    http = await start_http(Loading(), cfg, port=0, host="127.0.0.1",
                            token=secrets.token_urlsafe(24))
    devices = {"url": await EsphomeDevice(name="bench-media-player", key=key,
                                          flags=MEDIA_PLAYER_FLAGS).start(),
               "api": await EsphomeDevice(name="bench-speaker", key=key,
                                          flags=SPEAKER_FLAGS).start()}
    devices = {m: d for m, d in devices.items() if m in modes}
    uris = [d.uri for d in devices.values()]
    cfg.server.esphome_satellites = uris
    cfg.server.esphome_keys = {u.split("://", 1)[1]: key for u in uris}
    traces: list[Any] = []
    sats = EsphomeSatellites(cfg, assistant, uris, replies=http.replies,
                             reply_base=http.url, turn_listeners=[traces.append])
    await sats.start()
    turns: list[EspTurn] = []
    try:
        for d in devices.values():
            await asyncio.wait_for(d.subscribed.wait(), 60)
        n = 0
        for _ in range(repeat):
            for utt in corpus:
                for mode, dev in devices.items():
                    n += 1
                    link = next(lnk for lnk in sats.links if lnk.uri == dev.uri)
                    _fresh(assistant, link.session)
                    # every reply synthesized afresh: the path run second would find
                    # the first one's reply in the phrase cache
                    assistant.tts_cache = type(assistant.tts_cache)(assistant.tts_cache.size)
                    before = len(traces)
                    true_end = speech_end_index(utt.audio)
                    turn = EspTurn(utt.name, utt.kind, mode, None)
                    dt = await dev.run_turn(utt.audio, pace=True, tail_s=4.0,
                                            timeout_s=60 + len(utt.audio) / 16000)
                    if dt.first_reply_t is not None:
                        turn.total_ms = (dt.first_reply_t
                                         - (dt.started + true_end / 16000)) * 1000
                        turn.reply_s = len(dt.reply) / 2 / (dt.reply_rate or 16000)
                    else:
                        turn.error = "no reply audio reached the device"
                    if len(traces) > before:
                        tr = traces[-1]
                        turn.transcript = str(tr.info.get("transcript", ""))
                        turn.intent = str(tr.info.get("intent", ""))
                        turn.reply = str(tr.info.get("reply", ""))
                        turn.spans_ms = {k: round(v, 1) for k, v in tr.spans_ms().items()}
                    elif turn.error is None:
                        turn.error = "hark ran no turn"
                    turns.append(turn)
                    tot = "-" if turn.total_ms is None else f"{turn.total_ms:.0f}"
                    progress(f"[{n:3d}] {mode:3} {utt.kind:8} {tot:>6} ms  "
                             f"'{turn.transcript}' -> {turn.intent}: '{turn.reply[:60]}'"
                             + (f"  ERROR {turn.error}" if turn.error else ""))
    finally:
        await sats.stop()
        for d in devices.values():
            await d.close()
        await http.close()
    return turns


def _stats(vals: list[float]) -> dict[str, Any]:
    r = (lambda v: None if v is None else round(v, 1))
    return {"p50": r(percentile(vals, 50)), "p95": r(percentile(vals, 95)), "n": len(vals)}


#: table rows: (label, value of a turn in ms)
ROWS: list[tuple[str, Any]] = [
    ("total: end of speech -> first reply byte", lambda t: t.total_ms),
    ("  inside hark: its end of speech -> audio", lambda t: t.spans_ms.get("total")),
    ("  hark's end-of-turn wait", lambda t: t.spans_ms.get("end_of_turn")),
    ("  the rest (API, HTTP, device; total - inside)", lambda t: None
     if "total" not in t.spans_ms else t.total_ms - t.spans_ms["total"]),
]


def summarize(turns: list[EspTurn]) -> dict[str, Any]:
    ok = [t for t in turns if t.total_ms is not None]
    rows: dict[str, Any] = {}
    for label, pick in ROWS:
        rows[label] = {}
        for mode in MODES:
            for kind in ("all", "command", "question"):
                rows[label][f"{mode}/{kind}"] = _stats(
                    [v for t in ok if t.mode == mode and (kind == "all" or t.kind == kind)
                     and (v := pick(t)) is not None])
    return {"rows": rows, "errors": sum(1 for t in turns if t.error),
            "turns": [t.__dict__ for t in turns]}


def format_table(summary: dict[str, Any]) -> str:
    cols = [f"{m}/{k}" for m in MODES for k in ("all", "command", "question")]

    def cell(st: dict) -> str:
        return f"{'-':>13}" if not st or st.get("p50") is None else \
            f"{st['p50']:5.0f} / {st['p95']:5.0f}"

    lines = [f"{'ms, p50 / p95':42} " + " ".join(f"{c:>13}" for c in cols), "-" * 130]
    for label, row in summary["rows"].items():
        lines.append(f"{label:42} " + " ".join(cell(row[c]) for c in cols))
    first = summary["rows"][ROWS[0][0]]
    lines.append(f"{'turns':42} " + " ".join(f"{first[c]['n']:>13}" for c in cols))
    errs = [t for t in summary["turns"] if t["error"]]
    if errs:
        lines.append(f"{len(errs)} turn(s) failed: " + "; ".join(
            f"{t['utterance']} ({t['mode']}): {t['error']}" for t in errs[:5]))
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = summary["turns"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    data, labels = [], []
    for mode in MODES:
        for kind in ("command", "question"):
            vals = [t["total_ms"] for t in turns if t["mode"] == mode and t["kind"] == kind
                    and t["total_ms"] is not None]
            if vals:
                data.append(vals)
                labels.append(f"{mode}\n{kind}s (n={len(vals)})")
    if data:
        ax.boxplot(data, showfliers=True)
        ax.set_xticks(range(1, len(labels) + 1), labels)
    ax.set_ylabel("end of speech -> first reply byte at the device (ms)")
    ax.set_title("hark bench esphome (emulated ESPHome satellite, loopback)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(cfg, args) -> int:
    from hark.bench.latency import dir_corpus, piper_corpus
    from hark.pipeline.assistant import Assistant

    cfg.llm.cache_ttl_s = 0.0  # as bench latency: no answer from a cache
    corpus = dir_corpus(Path(args.corpus)) if args.corpus else piper_corpus(cfg, args.quick)
    modes = MODES if args.mode == "both" else (args.mode,)
    print(f"corpus: {len(corpus)} utterances, reply paths: {', '.join(modes)}; "
          "loading models ...", flush=True)
    assistant = Assistant.load(cfg)
    try:
        t0 = time.monotonic()
        turns = asyncio.run(run_bench(cfg, assistant, corpus, args.repeat, modes))
        print(f"ran {len(turns)} turns in {time.monotonic() - t0:.0f} s\n")
    finally:
        assistant.close()
    summary = summarize(turns)
    summary["config"] = {"llm_profile": cfg.llm.profile, "asr_model": cfg.asr.model,
                         "quick": args.quick, "repeat": args.repeat, "modes": list(modes),
                         "device": "hark.bench.esphome_emulator (loopback, Noise)"}
    print(format_table(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
        print(f"\nJSON: {args.json}")
    if args.plot:
        print(f"PNG: {plot(summary, Path(args.plot))}")
    return 0 if not summary["errors"] else 1
