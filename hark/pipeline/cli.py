"""``hark demo`` (one turn from a file or text) and ``hark listen`` (live microphone)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np

DEMO_QUESTION = "What is the capital of France?"


def register(cli) -> None:
    p = cli.add("demo", "run one voice turn on the embedded default models", _demo,
                description="Run one full turn: audio (or text) in, spoken reply out, "
                "with a per-stage timing table.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", metavar="FILE", help="spoken question (WAV/FLAC, any rate)")
    src.add_argument("--text", help="skip the microphone side: answer this text")
    p.add_argument("--output", default="out/reply.wav", help="reply audio (default %(default)s)")
    p.add_argument("--mode", choices=["streaming", "baseline"], default="streaming")
    p.add_argument("--fast", action="store_true",
                   help="feed the file as fast as possible instead of in real time")
    p = cli.add("listen", "answer turn by turn from a live microphone", _listen,
                description="Answer turn after turn on the sound card: the reply is played "
                "as it is produced, and speaking over it interrupts it (its own echo is "
                "removed first; --set wake.barge_in_speech=false turns that off).")
    p.add_argument("--mode", choices=["streaming", "baseline"], default="streaming")
    p.add_argument("--turns", type=int, default=None, metavar="N",
                   help="stop after N turns (default: until Ctrl-C)")


def demo_question_wav(cfg) -> Path:
    """The embedded demo input: a question spoken by the Piper voice (made once)."""
    from hark.audio import resample, write_wav
    from hark.tts.piper import load_tts

    path = cfg.home_path / "demo" / "question.wav"
    if not path.is_file():
        tts = load_tts(cfg)
        audio = np.concatenate([c.samples for c in tts.synthesize(DEMO_QUESTION)])
        write_wav(path, resample(audio, tts.sample_rate, 16000), 16000)
    return path


def timing_rows(trace) -> list[tuple[str, float | None]]:
    s = trace.spans_ms()
    return [
        ("VAD / end of turn", s.get("end_of_turn")),
        ("ASR final (after end of speech)", s.get("asr_final")),
        ("intent", s.get("intent")),
        ("LLM first token", s.get("llm_first_token")),
        ("LLM first spoken chunk", s.get("llm_first_chunk")),
        ("LLM total", s.get("llm_total")),
        ("TTS first audio", s.get("tts_first_audio")),
        ("TTS total", s.get("tts_total")),
        ("end of speech -> first reply audio", s.get("total")),
    ]


def print_timing(trace, out=None) -> None:
    out = out or sys.stdout
    print(f"\n{'stage':38} {'ms':>8}", file=out)
    print("-" * 47, file=out)
    for name, ms in timing_rows(trace):
        print(f"{name:38} {('%8.0f' % ms) if ms is not None else '       -'}", file=out)


async def _collect(events, tts_rate: int) -> tuple[object, list[np.ndarray]]:
    from hark.pipeline.events import IntentEvent, ReplyAudio, ReplyText, TranscriptEvent, TurnEnd

    audio: list[np.ndarray] = []
    end = None
    async for ev in events:
        if isinstance(ev, TranscriptEvent) and ev.transcript.is_final:
            print(f"transcript: {ev.transcript.text}")
        elif isinstance(ev, IntentEvent):
            it = ev.intent
            print(f"intent:     {it.name} {it.slots if it.slots else ''}".rstrip()
                  if it else "intent:     none -> LLM")
        elif isinstance(ev, ReplyText):
            print(f"reply:      {ev.text}   [{ev.source}]")
        elif isinstance(ev, ReplyAudio):
            audio.append(ev.chunk.samples)
        elif isinstance(ev, TurnEnd):
            end = ev
    return end, audio


def _demo(args) -> int:
    from hark.audio import frames, paced, read_audio, write_wav
    from hark.cli import load_cfg
    from hark.pipeline.assistant import Assistant

    cfg = load_cfg(args)
    path = Path(args.input) if args.input else None
    if args.text is None and path is None:
        path = demo_question_wav(cfg)
    samples = read_audio(path) if path else None  # fail on bad audio before loading models
    print("loading and warming models ...", flush=True)
    assistant = Assistant.load(cfg)

    async def run():
        if args.text is not None:
            print(f"text:       {args.text}")
            return await _collect(assistant.run_text(args.text), assistant.tts_rate)
        print(f"input:      {path} ({len(samples) / 16000:.1f} s)")
        lead = np.zeros(int(0.3 * 16000), np.int16)
        tail = np.zeros(int(2.0 * 16000), np.int16)
        fs = cfg.audio.frame_ms * 16
        mic = paced(frames(np.concatenate([lead, samples, tail]), fs), realtime=not args.fast)
        return await _collect(assistant.run_turn(mic, mode=args.mode), assistant.tts_rate)

    try:
        end, audio = asyncio.run(run())
    finally:
        assistant.close()
    if end is None:
        print("hark: the turn ended without a result", file=sys.stderr)
        return 1
    if end.error:
        print(f"result:     {end.error}")
    print_timing(end.trace)
    if audio:
        out = write_wav(args.output, np.concatenate(audio), assistant.tts_rate)
        dur = sum(len(a) for a in audio) / assistant.tts_rate
        print(f"\nreply audio: {out} ({dur:.1f} s)")
    return 0 if not end.error or end.error == "no speech" else 1


def _listen(args) -> int:
    from hark.cli import load_cfg
    from hark.pipeline.live import run_live

    cfg = load_cfg(args)
    return run_live(cfg, args.mode, max_turns=args.turns)
