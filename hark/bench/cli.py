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
    from hark.bench.abuse import register as register_abuse

    register_abuse(cli)
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
