"""``hark bench ...`` and ``hark eval ...`` commands that live in hark/bench."""

from __future__ import annotations


MODES_CHOICES = ("streaming", "baseline")


def register(cli) -> None:
    p = cli.add("bench latency", "per-stage latency: streaming pipeline vs sequential baseline",
                _latency)
    p.add_argument("--corpus", metavar="DIR",
                   help="WAV files + transcripts.json (default: Piper-spoken commands/questions)")
    p.add_argument("--quick", action="store_true", help="small corpus, under a minute")
    p.add_argument("--repeat", type=int, default=1, help="passes over the corpus")
    p.add_argument("--mode", choices=["both", *MODES_CHOICES], default="both",
                   help="run each utterance in both modes (default), or in one")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG: waterfalls + distributions")
    p = cli.add("bench corpus", "write a spoken corpus in voices hark was not built with "
                "(espeak-ng, Piper, sox)", _corpus)
    p.add_argument("--voices", choices=["tune", "heldout"], default="heldout",
                   help="the voice set: 'tune' to calibrate on, 'heldout' only to score")
    p.add_argument("--out", metavar="DIR", required=True, help="where to write it")
    from hark.bench.eval_guard import register_eval as register_guard

    register_guard(cli)
    from hark.bench.abuse import register as register_abuse

    register_abuse(cli)
    p = cli.add("bench wyoming-satellite", "turns through a real wyoming-satellite (PyPI): end "
                "of speech to the first reply audio its snd command reads", _wyoming_satellite)
    p.add_argument("--corpus", metavar="DIR",
                   help="WAV files + transcripts.json (default: bench latency's Piper-spoken "
                   "commands and questions)")
    p.add_argument("--quick", action="store_true", help="bench latency --quick's corpus")
    p.add_argument("--repeat", type=int, default=1, help="passes over the corpus")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--no-compare", action="store_true",
                   help="do not also play each clip straight into the pipeline (as bench "
                   "latency --mode streaming does)")
    p.add_argument("--keep", action="store_true",
                   help="keep the satellite's log and its mic and snd files")
    try:
        from hark.bench.eval_speech import register_eval
    except ImportError:
        pass
    else:
        register_eval(cli)


def _latency(args) -> int:
    from hark.bench.latency import main
    from hark.cli import load_cfg

    return main(load_cfg(args), args)


def _corpus(args) -> int:
    from pathlib import Path

    from hark.bench.corpus import make_corpus
    from hark.cli import load_cfg

    meta = make_corpus(Path(args.out), args.voices, load_cfg(args))
    voices = sorted({m["voice"] for m in meta.values()})
    print(f"{len(meta)} utterances in {len(voices)} voices ({', '.join(voices)}) -> {args.out}")
    return 0


def _wyoming_satellite(args) -> int:
    from hark.bench.wyoming_satellite import main
    from hark.cli import load_cfg

    return main(load_cfg(args), args)
