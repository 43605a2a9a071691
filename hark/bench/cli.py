"""Every ``hark bench ...`` and ``hark eval ...`` command: the options here, the work in
the module each handler names (imported only when the command runs, so ``hark --help``
stays instant and a satellite-only install lists them too)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

# the intent evaluation's sentence files ship with the intent stage (hark/nlu/eval/)
INTENT_CASES_DIR = Path(__file__).resolve().parents[1] / "nlu" / "eval"
MODES_CHOICES = ("streaming", "baseline")  # hark bench latency --mode


def _run(module: str, function: str) -> Callable[..., int]:
    """A handler that imports ``hark.bench.<module>`` and calls ``function(args)``."""

    def handler(args) -> int:
        return getattr(importlib.import_module(f"hark.bench.{module}"), function)(args)

    return handler


def register(cli) -> None:
    _bench_latency(cli)
    _bench_corpus(cli)
    _bench_llm(cli)
    _bench_transport(cli)
    _bench_load(cli)
    _bench_wyoming_satellite(cli)
    _bench_esphome(cli)
    _bench_engines(cli)
    _bench_abuse(cli)
    _eval_intents(cli)
    _eval_guard(cli)
    _eval_speech_intents(cli)
    _eval_wake(cli)


def _latency(args) -> int:
    from hark.bench.latency import main
    from hark.cli import load_cfg

    return main(load_cfg(args), args)


def _bench_latency(cli) -> None:
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


def _engines(args) -> int:
    from hark.bench.engines import main
    from hark.cli import load_cfg

    return main(load_cfg(args), args)


def _bench_engines(cli) -> None:
    p = cli.add("bench engines", "what the Wyoming hop costs: local Whisper/Piper against "
                "wyoming-faster-whisper/wyoming-piper (ASR final decode, TTS first audio)",
                _engines)
    p.add_argument("--asr-uri", metavar="tcp://HOST:PORT",
                   help="a running Wyoming ASR service (default: start wyoming-faster-whisper "
                   "here on loopback, with asr.model)")
    p.add_argument("--tts-uri", metavar="tcp://HOST:PORT",
                   help="a running Wyoming TTS service (default: start wyoming-piper here, "
                   "with tts.voice)")
    p.add_argument("--quick", action="store_true", help="6 texts instead of 12")
    p.add_argument("--repeat", type=int, default=1, help="passes over the texts")
    p.add_argument("--workdir", metavar="DIR", help="the services' logs (default: "
                   "<home>/bench-engines)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the distributions")


def _bench_corpus(cli) -> None:
    p = cli.add("bench corpus", "write a spoken corpus in voices hark was not built with "
                "(espeak-ng, Piper, sox)", _run("corpus", "cmd_bench_corpus"))
    p.add_argument("--voices", choices=["tune", "heldout"], default="heldout",
                   help="the voice set: 'tune' to calibrate on, 'heldout' only to score")
    p.add_argument("--out", metavar="DIR", required=True, help="where to write it")


def _bench_wyoming_satellite(cli) -> None:
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


def _wyoming_satellite(args) -> int:
    from hark.bench.wyoming_satellite import main
    from hark.cli import load_cfg

    return main(load_cfg(args), args)


def _bench_esphome(cli) -> None:
    p = cli.add("bench esphome", "turns from an emulated ESPHome voice satellite (native "
                "API, encrypted): end of speech to the first reply byte at the device, "
                "reply by URL and over the API", _esphome)
    p.add_argument("--corpus", metavar="DIR",
                   help="WAV files + transcripts.json (default: bench latency's Piper-spoken "
                   "commands and questions)")
    p.add_argument("--quick", action="store_true", help="bench latency --quick's corpus")
    p.add_argument("--repeat", type=int, default=1, help="passes over the corpus")
    p.add_argument("--mode", choices=["both", "url", "api"], default="both",
                   help="the reply path: a URL the device fetches (media player), audio "
                   "over the API (speaker), or both (default)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG of the distributions")


def _esphome(args) -> int:
    from hark.bench.esphome import main
    from hark.cli import load_cfg

    return main(load_cfg(args), args)


def _bench_llm(cli) -> None:
    p = cli.add("bench llm", "LLM first-token time, speed and accuracy per profile",
                _run("llm", "cmd_bench_llm"))
    p.add_argument("--profiles", default="fast,quality",
                   help="comma-separated profiles from llm.profiles (default: fast,quality)")
    p.add_argument("--backend", choices=["llama_cpp", "openai"], default=None,
                   help="llama_cpp: in-process; openai: through a local llama_cpp.server "
                   "started per profile (default: llm.backend)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG chart")
    p.add_argument("--quick", action="store_true", help="8 questions, 2 cold starts")
    p.add_argument("--limit", type=int, default=0, metavar="N",
                   help="ask only the first N questions")


def _bench_transport(cli) -> None:
    p = cli.add("bench transport", "speech over loopback RTP/UDP with loss, jitter, reordering "
                "and duplicates: one-way latency, lost/concealed frames, WER",
                _run("transport", "cmd_bench_transport"))
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


def _bench_load(cli) -> None:
    p = cli.add("bench load", "N simulated satellites on loopback, M spoken turns each: "
                "completed/lost/errors and end-of-speech -> first audio p50/p95",
                _run("load", "cmd_bench_load"))
    p.add_argument("--satellites", default="4", help="how many at once; a list such as "
                   "1,2,4,8 runs one round per count (default 4)")
    p.add_argument("--turns", type=int, default=5, help="turns per satellite (default 5)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a PNG: latency per turn and "
                   "outcomes per satellite count")
    p.add_argument("--server", metavar="HOST:PORT",
                   help="a running 'hark serve' (control port); default: start one here")
    p.add_argument("--seed", type=int, default=0, help="utterance and pause choice")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds after speech before a turn counts as lost (default 30)")
    p.add_argument("--http", action="store_true",
                   help="also serve the live page and /metrics while the bench runs")


def _bench_abuse(cli) -> None:
    from hark.bench.abuse import IDLE_CONNECTIONS  # the standard library only

    p = cli.add("bench abuse", "hostile clients against a live hark serve: no token, "
                "Wyoming memory bombs, idle connections; /health and a turn after each",
                _run("abuse", "main"))
    p.add_argument("--attach", type=int, metavar="PID", default=0,
                   help="probe the running 'hark serve' with this pid (the ports of this "
                   "config) instead of starting one")
    p.add_argument("--idle", type=int, default=IDLE_CONNECTIONS,
                   help=f"idle control connections to open (default {IDLE_CONNECTIONS})")
    p.add_argument("--flood-minutes", type=float, default=10.0,
                   help="minutes of audio in the Wyoming flood (default 10)")
    p.add_argument("--turns", type=int, default=0, metavar="N",
                   help="then N turns (Wyoming text turns, 1 in 50 a satellite's) with the "
                   "server's RSS sampled: it must stay flat (default 0: skipped)")
    p.add_argument("--ready-timeout", type=float, default=300.0,
                   help="seconds to wait for the server's /health (default 300)")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")


def _eval_intents(cli) -> None:
    p = cli.add("eval intents", "accuracy and speed of typed commands (home-assistant/"
                "intents test-file shape)", _run("eval_intents", "cmd_eval_intents"))
    p.add_argument("--text-cases", action="extend", nargs="+", required=True,
                   metavar="FILE.yaml", help="test sentences (one or more files or folders "
                   "of them, repeatable), e.g. "
                   f"{INTENT_CASES_DIR}/home_commands*.yaml or {INTENT_CASES_DIR}/ha_style")
    p.add_argument("--fixtures", metavar="FILE.yaml",
                   help="the home (areas, entities) in the shape of home-assistant/intents "
                        "tests/en/_fixtures.yaml, in place of [home] in the config")
    p.add_argument("--coverage", action="store_true",
                   help="also match each sentence with bare hassil against the installed "
                        "home-assistant-intents templates: accuracy on the sentences they "
                        "cover, and each error classed 'templates' or 'hark'")
    p.add_argument("--json", metavar="PATH", help="write the full report here")


def _eval_guard(cli) -> None:
    p = cli.add("eval guard", "never a wrong action: the guard on labelled sentences",
                _run("eval_guard", "cmd_eval_guard"))
    p.add_argument("--cases", default=str(INTENT_CASES_DIR / "guard_cases.yaml"),
                   metavar="FILE")
    p.add_argument("--json", metavar="PATH", help="write every case and the counts as JSON")


def _eval_speech_intents(cli) -> None:
    from hark.bench.eval_speech import MODES  # numpy and hark.errors only

    p = cli.add("eval speech-intents",
                "spoken commands -> intent: command acceptance, per-slot accuracy, latency",
                _run("eval_speech", "cmd_eval_speech_intents"))
    p.add_argument("--domain", required=True, metavar="PATH",
                   help="domain file (hassil YAML) or built-in domain name, e.g. coffee")
    p.add_argument("--data", required=True, metavar="DIR", help="folder of WAV files")
    p.add_argument("--with-domain", action="append", default=[], metavar="PATH",
                   help="another domain the grammar also listens for (repeatable), e.g. "
                        "home_core: its sentences compete with --domain's")
    p.add_argument("--labels", required=True, metavar="FILE",
                   help="labels.json: {file: {intent, slots}}")
    p.add_argument("--noise", metavar="FILE", help="noise WAV mixed into every file")
    p.add_argument("--snr", type=float, nargs="+", action="extend", default=None,
                   metavar="DB", help="SNR(s) in dB for --noise (repeatable)")
    p.add_argument("--mode", choices=MODES, default="combined",
                   help="combined: grammar, then Whisper + text intents when it rejects; "
                        "grammar / whisper: one recognizer alone")
    p.add_argument("--threshold", type=float, default=None,
                   help="grammar rejection threshold (default: the recognizer's)")
    p.add_argument("--reject-data", metavar="DIR",
                   help="WAV files that are NOT commands (questions, chatter): reports how "
                        "many the fast path rejects (ood_rejection)")
    p.add_argument("--limit", type=int, default=0, help="only the first N files")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON")
    p.add_argument("--verbose-files", action="store_true", help="print every file's result")


def _eval_wake(cli) -> None:
    p = cli.add("eval wake", "wake word detection rate, false accepts/hour, latency, CPU",
                _run("eval_wake", "cmd_eval_wake"))
    p.add_argument("--keyword", default="", help="alexa | hey_jarvis | hey_mycroft | okay_nabu "
                   "(default: wake.keyword)")
    p.add_argument("--positives", required=True, nargs="+",
                   help="folder(s) of recordings of the keyword")
    p.add_argument("--negatives", required=True, nargs="+",
                   help="folder(s) of speech without the keyword")
    p.add_argument("--noise", default="", help="noise recording mixed into every clip")
    p.add_argument("--snr", type=float, default=10.0, help="SNR in dB for --noise")
    p.add_argument("--threshold", type=float, default=None,
                   help="detection threshold on the phase-mean score (default: the "
                   "detector's, hark.wake.detector.DEFAULT_THRESHOLD)")
    p.add_argument("--augment", default="",
                   help="augment the negatives into continuous streams: comma list of "
                   "speed,tempo,gain,noise, or all")
    p.add_argument("--hours-min", type=float, default=1.0,
                   help="with --augment: add randomly augmented passes until this many hours "
                   "of negatives were heard")
    p.add_argument("--augment-noise", default="",
                   help="noise recording for the noise augmentation (default: --noise)")
    p.add_argument("--augment-snrs", default="20,10,5", help="SNRs (dB) of the noise augmentation")
    p.add_argument("--seed", type=int, default=0, help="random seed of the augmentation")
    p.add_argument("--cv", action="store_true",
                   help="cross-validate the threshold: choose on half the files, test on the rest")
    p.add_argument("--confirm", type=int, default=None,
                   help="consecutive 10 ms features the score must stay above the threshold "
                   "(default: the detector's, hark.wake.detector.DEFAULT_CONFIRM)")
    p.add_argument("--second-stage", action="store_true",
                   help="compare second-stage checks (confirm counts) per half")
    p.add_argument("--verifier", default="", choices=["", "openwakeword", "none"],
                   help="second stage (default: wake.verifier)")
    p.add_argument("--verifier-threshold", type=float, default=None,
                   help="least second-stage score accepted (default: wake.verifier_threshold)")
    p.add_argument("--json", default="", help="write the results as JSON here")
