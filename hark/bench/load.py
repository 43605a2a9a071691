"""``hark bench load``: N simulated satellites on loopback, each speaking M turns.

Each simulated satellite is a real client of the server's protocol: it connects over the
control channel (hello/welcome), says ``wake``, streams Piper-spoken audio as RTP packets
at real time (over the control connection, the path every network allows), keeps sending
silence until the server ends the turn, and times **end of speech to first reply audio**
on its own clock: from the moment the last voiced frame of the utterance was sent to the
moment the first reply audio packet arrived. Utterances are commands (answered by the
intent stage) and open questions (answered by the LLM), with random pauses between turns.

Outcomes per turn: ``completed`` (reply audio and a clean ``turn-end``), ``refused`` (the
server was at capacity and said "busy"), ``errors`` (``turn-end`` with an error, e.g. no
speech heard), ``lost`` (no ``turn-end`` within the timeout, or the connection dropped).

By default the bench starts the server in this process (models loaded and warmed first,
ports picked free); ``--server HOST:PORT`` measures a running ``hark serve`` instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hark.trace import Trace, percentile

if TYPE_CHECKING:  # numpy is imported where it is used, so `hark --help` stays instant
    import numpy as np

log = logging.getLogger(__name__)

COMMANDS = ["turn on the kitchen light", "what time is it", "turn off the bedroom light",
            "set a timer for two minutes", "what is the date today"]
QUESTIONS = ["why is the sky blue", "what is the capital of france",
             "how far away is the moon"]
RATE = 16000


@dataclass
class Utterance:
    text: str
    kind: str  # "command" | "question"
    audio: np.ndarray  # int16 mono 16 kHz
    speech_end_s: float  # offset of the end of the last voiced frame in ``audio``


def speech_end_offset(audio: np.ndarray, rate: int = RATE, frame_ms: int = 10) -> float:
    """Where speech ends: the end of the last 10 ms frame whose RMS is above 5% of the
    loudest frame's (Piper leaves a little silence after the last word)."""
    import numpy as np

    n = rate * frame_ms // 1000
    frames = len(audio) // n
    if frames == 0:
        return len(audio) / rate
    x = audio[: frames * n].astype(np.float32).reshape(frames, n)
    rms = np.sqrt((x * x).mean(axis=1))
    voiced = np.nonzero(rms > 0.05 * rms.max())[0]
    last = int(voiced[-1]) + 1 if len(voiced) else frames
    return last * n / rate


def make_utterances(speak: Callable[[str], np.ndarray]) -> list[Utterance]:
    """Every command and question, spoken by ``speak(text) -> int16 16 kHz``."""
    import numpy as np

    out = []
    for kind, texts in (("command", COMMANDS), ("question", QUESTIONS)):
        for text in texts:
            audio = np.asarray(speak(text), dtype=np.int16)
            out.append(Utterance(text, kind, audio, speech_end_offset(audio)))
    return out


def piper_speaker(cfg: Any) -> Callable[[str], np.ndarray]:
    """``speak(text)`` with the configured Piper voice, resampled to 16 kHz."""
    import numpy as np

    from hark.audio import resample
    from hark.tts.piper import load_tts

    tts = load_tts(cfg)

    def speak(text: str) -> np.ndarray:
        audio = np.concatenate([c.samples for c in tts.synthesize(text)])
        return resample(audio, tts.sample_rate, RATE)

    return speak


@dataclass
class TurnResult:
    satellite: str
    text: str
    kind: str
    outcome: str  # completed | refused | error | lost
    total_ms: float | None = None  # end of speech -> first reply audio (client clock);
    # for a refused turn: wake -> first audio of the spoken "busy"
    detail: str = ""
    transcript: str = ""
    reply: str = ""


def _local_token() -> str:
    """The token of a server on this machine with the default home (hark.auth)."""
    from hark.auth import read_server_token
    from hark.config import Config

    return read_server_token(Config()) or ""


class SimSatellite:
    """One simulated satellite: a control connection and RTP audio over it."""

    def __init__(self, name: str, token: str | None = None, codec: str = "pcm"):
        self.name = name
        self.token = token
        self.codec = codec
        self.conn = None
        self.events: asyncio.Queue = asyncio.Queue()
        self._reader: asyncio.Task | None = None
        self.welcome: dict[str, Any] = {}

    async def connect(self, host: str, port: int, timeout: float = 10.0) -> None:
        from hark.errors import ProtocolError
        from hark.transport.control import PROTOCOL_VERSION, Connection

        self.conn = await Connection.open(host, port, timeout)
        hello = {"version": PROTOCOL_VERSION, "name": self.name, "codecs": [self.codec],
                 "capabilities": [], "token": self.token or _local_token()}
        await self.conn.send("hello", hello)
        ev = await asyncio.wait_for(self.conn.recv(), timeout)
        if ev is None or ev.type != "welcome":
            msg = ev.data.get("message") if ev is not None else "connection closed"
            raise ProtocolError(f"satellite {self.name}: server refused: {msg}")
        self.welcome = ev.data
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while (ev := await self.conn.recv()) is not None:
                await self.events.put((time.monotonic(), ev))
        except Exception as exc:  # noqa: BLE001 - reported as a lost connection
            await self.events.put((time.monotonic(), exc))
            return
        await self.events.put((time.monotonic(), None))

    async def turn(self, utt: Utterance, timeout_s: float = 30.0,
                   tail_s: float = 3.0) -> TurnResult:
        """Speak ``utt`` and wait for the server to finish the turn."""
        import numpy as np

        from hark.transport.stream import RtpStreamSender

        res = TurnResult(self.name, utt.text, utt.kind, "lost")
        while not self.events.empty():  # leftovers of the previous turn
            self.events.get_nowait()
        frame_ms = int(self.welcome.get("frame_ms", 20))
        # like hark's satellite: a new RTP sender (random sequence start) for each turn
        sender = RtpStreamSender(self.welcome.get("codec", self.codec), RATE, frame_ms,
                                 ssrc=int(self.welcome["ssrc"]))
        stop_sending = asyncio.Event()
        t0 = time.monotonic()
        t_eos = t0 + utt.speech_end_s  # refined to the real send time below

        async def send() -> None:
            nonlocal t_eos
            frame_s = frame_ms / 1000
            silence = np.zeros(int(RATE * tail_s), np.int16)
            pkts = sender.push(np.concatenate([utt.audio, silence])) + sender.flush()
            eos_frame = int(utt.speech_end_s / frame_s)
            start = time.monotonic()
            for i, pkt in enumerate(pkts):
                if stop_sending.is_set():
                    break
                delay = start + i * frame_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.conn.send("audio-chunk", {}, pkt.pack())
                if i == eos_frame:
                    t_eos = time.monotonic()
            await self.conn.send("audio-stop", {})

        await self.conn.send("wake", {})
        await self.conn.send("audio-start", {"rate": RATE, "codec": sender.codec})
        sending = asyncio.create_task(send())
        first_audio: float | None = None
        busy = False
        deadline = t0 + utt.speech_end_s + timeout_s
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    res.detail = f"no turn-end within {timeout_s:.0f} s after speech"
                    break
                try:
                    t, ev = await asyncio.wait_for(self.events.get(), left)
                except asyncio.TimeoutError:
                    continue
                if ev is None or isinstance(ev, Exception):
                    res.detail = f"connection lost: {ev!r}"
                    break
                if ev.type in ("speech-end", "busy"):
                    stop_sending.set()
                    busy = busy or ev.type == "busy"
                elif ev.type == "audio-chunk" and first_audio is None:
                    first_audio = t
                    stop_sending.set()
                elif ev.type == "error":
                    res.detail = str(ev.data.get("message", ev.data))
                elif ev.type == "turn-end":
                    res.transcript = ev.data.get("transcript") or ""
                    res.reply = ev.data.get("reply") or ""
                    err = ev.data.get("error")
                    if busy or err == "busy":
                        res.outcome = "refused"
                    elif err:
                        res.outcome, res.detail = "error", str(err)
                    elif first_audio is None:
                        res.outcome, res.detail = "error", "turn ended without reply audio"
                    else:
                        res.outcome = "completed"
                    break
        finally:
            stop_sending.set()
            try:
                await sending
            except Exception as exc:  # noqa: BLE001 - a dead connection is reported above
                if res.outcome == "completed":
                    res.detail = f"send failed: {exc!r}"
        if first_audio is not None and res.outcome == "completed":
            res.total_ms = round((first_audio - t_eos) * 1000, 1)
        elif first_audio is not None and res.outcome == "refused":
            # refused at once (on wake): time from wake to the spoken "busy"
            res.total_ms = round((first_audio - t0) * 1000, 1)
        return res

    async def close(self) -> None:
        if self.conn is not None:
            try:
                await self.conn.send("session-end", {})
            except (OSError, ConnectionError, RuntimeError):
                pass
            await self.conn.close()
        if self._reader is not None:
            self._reader.cancel()


def _pcts(values: list[float]) -> dict[str, float | None]:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    return {"p50": None if p50 is None else round(p50, 1),
            "p95": None if p95 is None else round(p95, 1), "n": len(values)}


def summarize(n: int, turns: int, results: list[TurnResult], traces: list[Trace],
              wall_s: float) -> dict[str, Any]:
    """One run's JSON: counts, end-of-speech -> first audio p50/p95 (all, per kind) and
    the server's own per-stage spans when its traces were collected."""
    def count(outcome: str) -> int:
        return sum(r.outcome == outcome for r in results)

    done = [r for r in results if r.outcome == "completed" and r.total_ms is not None]
    by_kind = {kind: _pcts([r.total_ms for r in done if r.kind == kind])
               for kind in ("command", "question")}
    spans: dict[str, list[float]] = {}
    for tr in traces:
        for k, v in tr.spans_ms().items():
            spans.setdefault(k, []).append(v)
    return {
        "satellites": n,
        "turns_per_satellite": turns,
        "attempted": len(results),
        "completed": count("completed"),
        "lost": count("lost"),
        "errors": count("error"),
        "refused": count("refused"),
        "total_ms": _pcts([r.total_ms for r in done]),
        # wake -> spoken "busy" of refused turns: capacity is enforced by refusing at
        # once, not by everyone waiting longer
        "refused_ms": _pcts([r.total_ms for r in results
                             if r.outcome == "refused" and r.total_ms is not None]),
        "total_ms_by_kind": by_kind,
        "server_spans_ms": {k: _pcts(v) for k, v in spans.items()},
        "wall_s": round(wall_s, 1),
        "turns": [asdict(r) for r in results],
    }


async def run_load(host: str, port: int, utterances: list[Utterance], satellites: int,
                   turns: int, *, seed: int = 0, tokens: dict[str, str] | None = None,
                   server_token: str | None = None,
                   pause_s: tuple[float, float] = (0.3, 2.0), timeout_s: float = 30.0,
                   traces: list[Trace] | None = None, codec: str = "pcm") -> dict[str, Any]:
    """``satellites`` clients, each speaking ``turns`` random utterances with random
    pauses; returns :func:`summarize`'s dict. Each presents its entry in ``tokens``,
    else ``server_token``, else the token of a server on this machine."""
    rng = random.Random(seed)
    traces = traces if traces is not None else []
    first_trace = len(traces)
    results: list[TurnResult] = []

    async def one(i: int, plan: list[Utterance], pauses: list[float]) -> None:
        name = f"loadsat{i}"
        sat = SimSatellite(name, (tokens or {}).get(name) or server_token, codec)
        try:
            await sat.connect(host, port)
        except Exception as exc:  # noqa: BLE001 - counted: every planned turn is lost
            results.extend(TurnResult(name, u.text, u.kind, "lost", detail=f"connect: {exc}")
                           for u in plan)
            return
        try:
            for utt, pause in zip(plan, pauses, strict=True):
                await asyncio.sleep(pause)
                results.append(await sat.turn(utt, timeout_s))
        finally:
            await sat.close()

    plans = [[rng.choice(utterances) for _ in range(turns)] for _ in range(satellites)]
    pauses = [[rng.uniform(*pause_s) for _ in range(turns)] for _ in range(satellites)]
    t0 = time.monotonic()
    await asyncio.gather(*(one(i, plans[i], pauses[i]) for i in range(satellites)))
    return summarize(satellites, turns, results, traces[first_trace:], time.monotonic() - t0)


async def _in_process(cfg: Any, counts: list[int], turns: int, seed: int, timeout_s: float,
                      http: bool) -> dict[str, Any]:
    from hark.pipeline.assistant import Assistant
    from hark.server.server import Server

    from hark.sched import apply_loop_sched

    cfg.server.control_port = 0
    cfg.server.rtp_port = 0
    # the server as 'hark serve' runs it: the LLM in its worker process, and the same
    # scheduling for the event loop, every stage thread and the worker (a real-time LLM
    # worker beside normal-priority stage threads would starve them)
    if cfg.llm.isolation == "auto":
        cfg.llm.isolation = "process"
    if cfg.sched.realtime:
        apply_loop_sched(cfg)
    log.info("loading and warming models...")
    assistant = Assistant.load(cfg, sched=cfg.sched.realtime)
    speak = piper_speaker(cfg)
    utterances = make_utterances(speak)
    server = Server(cfg, assistant)
    traces: list[Trace] = []
    server.turn_listeners.append(traces.append)
    await server.start()
    web = None
    if http:
        from hark.server.http import start_http

        web = await start_http(server, cfg)
    try:
        runs = []
        for n in counts:
            log.info("load: %d satellite(s) x %d turn(s)", n, turns)
            runs.append(await run_load(cfg.server.host, server.control_port, utterances, n,
                                       turns, seed=seed + n, tokens=cfg.server.tokens,
                                       server_token=server.token,
                                       timeout_s=timeout_s, traces=traces,
                                       codec=cfg.transport.codec))
            await asyncio.sleep(1.0)  # let the last turns' playback drain
        return {"server": "in-process", "runs": runs}
    finally:
        if web is not None:
            await web.close()
        await server.stop()
        assistant.close()


def _print(run: dict[str, Any]) -> None:
    t, k = run["total_ms"], run["total_ms_by_kind"]
    print(f"{run['satellites']:>3} satellite(s) x {run['turns_per_satellite']} turn(s): "
          f"{run['completed']} completed, {run['refused']} refused (busy), "
          f"{run['errors']} errors, {run['lost']} lost in {run['wall_s']} s")
    if run["refused"]:
        r = run["refused_ms"]
        print(f"    'busy' heard {r['p50']} ms (p50) / {r['p95']} ms (p95) after wake")
    print(f"    end of speech -> first audio: p50 {t['p50']} ms, p95 {t['p95']} ms "
          f"(commands p50 {k['command']['p50']} / p95 {k['command']['p95']} ms; questions "
          f"p50 {k['question']['p50']} / p95 {k['question']['p95']} ms)")


def plot_load(out: dict[str, Any], path: str) -> str:
    """PNG: end of speech to first audio of every turn per satellite count (commands and
    questions apart, with the 1 s command target), and what became of the turns."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = out["runs"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    colors = {"command": "#1f77b4", "question": "#ff7f0e"}
    labelled: set[str] = set()
    for i, run in enumerate(runs):
        for j, kind in enumerate(("command", "question")):
            vals = [t["total_ms"] for t in run["turns"]
                    if t["kind"] == kind and t["outcome"] == "completed" and t["total_ms"]]
            if not vals:
                continue
            x = i + (j - 0.5) * 0.3
            ax1.boxplot([vals], positions=[x], widths=0.25, showfliers=False)
            jitter = np.linspace(-0.06, 0.06, len(vals))
            ax1.plot(np.full(len(vals), x) + jitter, vals, "o", ms=4, alpha=0.7,
                     color=colors[kind], label=None if kind in labelled else kind + "s")
            labelled.add(kind)
    ax1.axhline(1000, ls=":", color="#d62728", lw=1, label="command target p95 1 s")
    ax1.set_xticks(range(len(runs)), [f"{r['satellites']} satellite(s)" for r in runs])
    ax1.set_ylabel("end of speech -> first reply audio (ms)")
    ax1.set_title("completed turns", fontsize=10)
    ax1.legend(fontsize=8)
    labels = [str(r["satellites"]) for r in runs]
    bottom = np.zeros(len(runs))
    for key, color in (("completed", "#2ca02c"), ("refused", "#ff7f0e"),
                       ("errors", "#9467bd"), ("lost", "#d62728")):
        vals = np.array([r[key] for r in runs], float)
        ax2.bar(labels, vals, bottom=bottom, color=color, label=key)
        bottom += vals
    ax2.set_xlabel("satellites at once")
    ax2.set_ylabel("turns")
    ax2.set_title("outcomes (refused = spoken 'busy')", fontsize=10)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cmd_bench_load(args) -> int:
    """``hark bench load`` (options in :mod:`hark.bench.cli`)."""
    from hark.cli import load_cfg
    from hark.errors import ConfigError

    cfg = load_cfg(args)
    try:
        counts = [int(x) for x in str(args.satellites).split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"--satellites expects numbers like 4 or 1,2,4,8, got "
                          f"{args.satellites!r}") from exc
    if not counts or min(counts) < 1 or args.turns < 1:
        raise ConfigError("--satellites and --turns must be at least 1")
    if args.server:
        from hark.auth import read_server_token

        host, _, port = args.server.rpartition(":")
        speak = piper_speaker(cfg)
        utts = make_utterances(speak)

        async def external() -> dict[str, Any]:
            runs = [await run_load(host or "127.0.0.1", int(port), utts, n, args.turns,
                                   seed=args.seed + n, tokens=cfg.server.tokens,
                                   server_token=read_server_token(cfg),
                                   timeout_s=args.timeout, codec=cfg.transport.codec)
                    for n in counts]
            return {"server": args.server, "runs": runs}

        out = asyncio.run(external())
    else:
        out = asyncio.run(_in_process(cfg, counts, args.turns, args.seed, args.timeout,
                                      args.http))
    for run in out["runs"]:
        _print(run)
    if len(out["runs"]) == 1:  # one N: its fields at the top level too
        out.update({k: v for k, v in out["runs"][0].items()})
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2))
        print(f"wrote {path}")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        print(f"plot: {plot_load(out, args.plot)}")
    return 0 if all(r["lost"] == 0 for r in out["runs"]) else 1

