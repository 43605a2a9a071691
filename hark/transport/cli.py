"""``hark bench transport``: the network audio path under impairment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_TEXT = ("Alexa, set a timer for ten minutes. What is the weather like in Paris "
                "tomorrow? Turn on the kitchen light and play some music in the living room. "
                "I would like a large cappuccino with oat milk and two sugars, please.")


def _bench_transport(args: argparse.Namespace) -> int:
    import asyncio

    import numpy as np

    from hark.audio import read_audio, resample, write_wav
    from hark.cli import load_cfg
    from hark.transport.bench import Impairment, run_transport, word_error_rate

    cfg = load_cfg(args)
    if args.path == "shm":
        return _bench_shm(args)
    if args.input:
        speech = np.concatenate([read_audio(p) for p in args.input])
    else:
        from hark.tts.piper import load_tts

        tts = load_tts(cfg)
        speech = resample(np.concatenate([c.samples for c in tts.synthesize(DEFAULT_TEXT)]),
                          tts.sample_rate, 16000)
    imp = Impairment(args.loss, args.jitter_ms, args.reorder, args.duplicate, args.seed)
    res = asyncio.run(run_transport(speech, imp, args.codec or cfg.transport.codec,
                                    args.frame_ms or cfg.transport.frame_ms,
                                    cfg.transport.jitter_min_ms, cfg.transport.jitter_max_ms,
                                    cfg.transport.fec))
    received, rate = res.pop("_received"), res.pop("_rate")
    latencies = res.pop("_latencies")
    if args.save:
        write_wav(args.save, received, rate)
    if not args.no_wer:
        from hark.asr.whisper import load_asr

        transcribe = load_asr(cfg).transcribe
        sent_text = transcribe(speech)
        recv_text = transcribe(resample(received, rate, 16000))
        sent_text = getattr(sent_text, "text", sent_text)
        recv_text = getattr(recv_text, "text", recv_text)
        res["transcript_sent"] = sent_text
        res["transcript_received"] = recv_text
        res["wer_received_vs_sent"] = word_error_rate(sent_text, recv_text)
        if not args.input:
            res["wer_sent_vs_text"] = word_error_rate(DEFAULT_TEXT, sent_text)
            res["wer_received_vs_text"] = word_error_rate(DEFAULT_TEXT, recv_text)
    res["impairment_settings"] = {"loss": args.loss, "jitter_ms": args.jitter_ms,
                                  "reorder": args.reorder, "duplicate": args.duplicate}
    ow = res["one_way_ms"]
    print(f"one-way added latency: p50 {ow['p50']:.1f} ms, p95 {ow['p95']:.1f} ms "
          f"(jitter buffer target {res['jitter_target_ms']:.1f} ms)")
    print(f"frames {res['frames']}: lost {res['lost_frames']} (FEC-recovered "
          f"{res['fec_recovered_frames']}, PLC {res['plc_frames']}), late {res['late_frames']}, "
          f"duplicates dropped {res['duplicates_dropped']}")
    if "wer_received_vs_sent" in res:
        print(f"WER received vs sent transcription: {res['wer_received_vs_sent']:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    if args.plot:
        from hark.transport.bench import plot_transport

        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        print(f"plot: {plot_transport(res, latencies, args.plot)}")
    return 0


def _bench_shm(args: argparse.Namespace) -> int:
    """Same-host ring: a writer process -> this process, read on wake-up vs polled."""
    from hark.transport.bench import run_shm_latency

    results = {}
    for mode in ("poll", "wake"):
        r = run_shm_latency(mode, args.frames, args.frame_ms or 20)
        results[mode] = r
        ow = r["one_way_ms"]
        print(f"shm {mode:4s}: one-way p50 {ow['p50']:.3f} ms, p95 {ow['p95']:.3f} ms, "
              f"max {ow['max']:.3f} ms over {r['frames']} frames "
              f"(wake-ups {r['wakeups']}, wait timeouts {r['wait_timeouts']})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def register(cli) -> None:
    p = cli.add("bench transport", "speech over loopback RTP/UDP with loss, jitter, reordering "
                "and duplicates: one-way latency, lost/concealed frames, WER", _bench_transport)
    p.add_argument("--input", nargs="*", default=[], help="speech recordings (default: Piper "
                   "speaking a few sentences)")
    p.add_argument("--loss", type=float, default=0.05, help="fraction of packets dropped")
    p.add_argument("--jitter-ms", type=float, default=30.0, help="each packet delayed by a "
                   "uniform random 0..N ms")
    p.add_argument("--reorder", type=float, default=0.01, help="fraction held behind the next")
    p.add_argument("--duplicate", type=float, default=0.01, help="fraction sent twice")
    p.add_argument("--codec", default="", help="opus | pcm (default transport.codec)")
    p.add_argument("--frame-ms", type=int, default=0, help="10 or 20 (default transport.frame_ms)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-wer", action="store_true", help="skip the Whisper transcriptions")
    p.add_argument("--save", default="", help="write the received audio to this WAV")
    p.add_argument("--json", default="", help="write the results as JSON here")
    p.add_argument("--plot", default="", help="write a PNG here: latency per frame, its "
                   "distribution, lost/recovered/late frames")
    p.add_argument("--path", choices=["udp", "shm"], default="udp",
                   help="udp: impaired RTP over loopback (default); shm: the same-host "
                   "shared-memory ring from another process, read on wake-up vs polled")
    p.add_argument("--frames", type=int, default=500, help="frames for --path shm")
