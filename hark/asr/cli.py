"""``hark asr transcribe``: Whisper on audio files, with decode times (and streaming
partials with ``--stream``)."""

from __future__ import annotations

import argparse
import statistics
import time


def _transcribe(args: argparse.Namespace) -> int:
    from hark.asr.streaming import StreamingTranscriber
    from hark.asr.whisper import load_asr
    from hark.audio import read_audio
    from hark.cli import load_cfg

    cfg = load_cfg(args)
    asr = load_asr(cfg)
    asr.warm_up()
    for path in args.files:
        audio = read_audio(path)
        times = []
        for _ in range(max(1, args.repeat)):
            result = asr.decode(audio)
            times.append(result.decode_s * 1000)
        print(f"{path}: {len(audio) / 16000:.2f} s audio, decode median "
              f"{statistics.median(times):.0f} ms (min {min(times):.0f}, n={len(times)}), "
              f"no_speech {result.no_speech_prob:.2f}, logprob "
              + ("n/a" if result.avg_logprob is None else f"{result.avg_logprob:.2f}"))
        print(f"  {result.text!r}")
        if args.stream:
            st = StreamingTranscriber(asr, cfg.asr)
            step = int(cfg.asr.partial_interval_ms * 16)
            for n in range(step, len(audio), step):
                t0 = time.perf_counter()
                tr = st.update(audio[:n])
                print(f"  {n / 16000:5.2f} s  {(time.perf_counter() - t0) * 1000:4.0f} ms  "
                      f"stable={tr.stable!r}  text={tr.text!r}")
            print(f"  final: {st.finalize(audio).text!r}")
    return 0


def register(cli) -> None:
    p = cli.add("asr transcribe", "transcribe audio files with the configured Whisper model",
                _transcribe)
    p.add_argument("files", nargs="+", help="audio files (WAV, FLAC, ...)")
    p.add_argument("--repeat", type=int, default=1, help="decode each file N times (timing)")
    p.add_argument("--stream", action="store_true",
                   help="also show LocalAgreement partials every asr.partial_interval_ms")
