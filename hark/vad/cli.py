"""``hark vad events``: the end-of-turn endpointer over audio files."""

from __future__ import annotations

import argparse
import time


def _events(args: argparse.Namespace) -> int:
    import numpy as np

    from hark.audio import frames, read_audio
    from hark.cli import load_cfg
    from hark.vad.endpoint import Endpointer
    from hark.vad.silero import load_vad

    cfg = load_cfg(args)
    ep = Endpointer(load_vad(cfg), cfg.vad)
    for path in args.files:
        audio = np.concatenate([read_audio(path), np.zeros(int(args.tail_s * 16000), np.int16)])
        ep.reset()
        t0 = time.perf_counter()
        print(f"{path}: {len(audio) / 16000:.2f} s (with {args.tail_s} s of silence added)")
        for chunk in frames(audio, 320):  # 20 ms microphone chunks; t = position in file
            for e in ep.process(chunk):
                extra = f" silence {e.silence_ms:.0f} ms" if e.silence_ms else ""
                print(f"  {e.t:6.3f} s  {e.kind}{extra}")
            if ep.ended:
                print(f"  utterance: {len(ep.utterance()) / 16000:.2f} s")
                ep.reset()
        elapsed = time.perf_counter() - t0
        per_frame = elapsed / (len(audio) / ep.frame_samples) * 1000
        print(f"  {per_frame:.3f} ms per {ep.frame_ms:.0f} ms frame")
    return 0


def register(cli) -> None:
    p = cli.add("vad events", "speech start / pause / end events for audio files", _events)
    p.add_argument("files", nargs="+", help="audio files (WAV, FLAC, ...)")
    p.add_argument("--tail-s", type=float, default=1.0,
                   help="seconds of silence appended so the last turn can end")
