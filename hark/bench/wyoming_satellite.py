"""``hark bench wyoming-satellite``: spoken turns through a real ``wyoming-satellite``.

The satellite (PyPI ``wyoming-satellite``, run from its own virtualenv so that its pinned
``wyoming`` never meets hark's) runs on loopback as a subprocess, as on a Raspberry Pi:

- its ``--mic-command`` is a small Python script that plays queued clips in real time
  (one 1024-sample chunk when its last sample exists) and silence in between, and
  records the monotonic time of each clip's true end of speech;
- its ``--snd-command`` is a small Python script, started by the satellite for each
  ``audio-start`` .. ``audio-stop``, that writes the audio it is given to a file and
  records the monotonic time of the first bytes it reads;
- its local wake word service (``--wake-uri``) is hark's own Wyoming service
  (:mod:`hark.server.wyoming`), as a household would run wyoming-openwakeword;
- hark drives it through :mod:`hark.server.wyoming_satellite`, as Home Assistant would.

Each clip is "Alexa.", a pause, then the utterance. The measure is the time from the
utterance's true end of speech (the last sample above the noise floor) to the first
reply audio the snd command reads: everything a person waits through, including the
satellite's own chunking, the two TCP hops and the snd command's start. The corpus is
``hark bench latency``'s (Piper-spoken commands and questions, or ``--corpus DIR``), and
unless ``--no-compare`` each clip is also played straight into the pipeline as
``hark bench latency --mode streaming`` does (the two in alternating order), so the cost
of the satellite path is read clip by clip, under the same load.

:class:`SatelliteProcess` is the harness; the integration tests use it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hark.audio import resample
from hark.bench.tools import free_port, tool_python
from hark.errors import HarkError
from hark.trace import percentile

log = logging.getLogger(__name__)

SATELLITE_VERSION = "1.0.0"  # the wyoming-satellite release on PyPI
#: a Python with wyoming-satellite installed; unset: a virtualenv made on first use
PYTHON_ENV = "HARK_WYOMING_SATELLITE_PYTHON"
WAKE_TEXT = "Alexa."
WAKE_PAUSE_S = 0.8  # between the wake word and the command: the satellite streams after it
LEAD_S = 0.3

# Both scripts run with ``python -S`` (no site packages: standard library only, quick to
# start). The satellite reads the mic command's stdout in fixed-size chunks.
MIC_SCRIPT = r'''
import json, os, sys, time
spool, rate, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
width = 2 * int(sys.argv[4])  # bytes per frame
out = sys.stdout.buffer
silence = bytes(chunk * width)
start = time.monotonic()
sent = 0

def write(data):
    global sent, start
    due = start + (sent + 1) * chunk / rate  # a chunk exists once its last sample does
    delay = due - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    elif delay < -1.0:  # far behind (a stalled machine): do not burst to catch up
        start = time.monotonic() - (sent + 1) * chunk / rate
    out.write(data)
    out.flush()
    sent += 1
    return time.monotonic()

while True:
    clips = sorted(f for f in os.listdir(spool) if f.endswith(".raw"))
    if not clips:
        write(silence)
        continue
    name = clips[0][:-4]
    path = os.path.join(spool, clips[0])
    with open(os.path.join(spool, name + ".json")) as f:
        true_end = json.load(f)["true_end"]  # in frames
    with open(path, "rb") as f:
        data = f.read()
    os.remove(path)
    frames = len(data) // width
    end_t = None
    for i in range(0, frames, chunk):
        piece = data[i * width:(i + chunk) * width]
        piece += bytes(chunk * width - len(piece))
        t = write(piece)
        if end_t is None and i <= true_end < i + chunk:
            end_t = t - (i + chunk - true_end) / rate
    with open(os.path.join(spool, name + ".played.tmp"), "w") as f:
        json.dump({"true_end_t": end_t, "end_t": time.monotonic()}, f)
    os.rename(os.path.join(spool, name + ".played.tmp"), os.path.join(spool, name + ".played"))
'''

SND_SCRIPT = r'''
import json, os, sys, time
folder = sys.argv[1]
began = time.monotonic()
try:  # how long ago the satellite started this process (10 ms resolution; Linux)
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    startup = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
except (OSError, ValueError, IndexError, AttributeError):
    startup = None
name = "%d" % time.monotonic_ns()
first = None
size = 0
with open(os.path.join(folder, name + ".part"), "wb") as f:
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        if first is None:
            first = time.monotonic()
        f.write(data)
        f.flush()
        size += len(data)
os.rename(os.path.join(folder, name + ".part"), os.path.join(folder, name + ".raw"))
with open(os.path.join(folder, name + ".json"), "w") as f:
    json.dump({"first_t": first, "began_t": began, "startup_s": startup,
               "end_t": time.monotonic(), "bytes": size}, f)
'''


def satellite_python(cache_dir: Path) -> Path:
    """A Python with ``wyoming-satellite==SATELLITE_VERSION``: ``$HARK_WYOMING_SATELLITE_
    PYTHON``, else a virtualenv under ``cache_dir`` made with pip on first use (one
    process makes it; others wait for it). Raises :class:`HarkError` when it cannot be
    installed (no network, no PyPI)."""
    return tool_python(cache_dir, "wyoming-satellite", SATELLITE_VERSION, PYTHON_ENV)


@dataclass
class Reply:
    """One audio-start .. audio-stop the satellite played (its snd command's file)."""

    audio: np.ndarray  # int16 at ``rate``
    rate: int
    first_t: float | None  # monotonic time the snd command read its first bytes
    end_t: float
    startup_s: float | None = None  # the snd command's own start, before it could read


@dataclass
class SatelliteProcess:
    """A real wyoming-satellite on 127.0.0.1. ``wake_uri``: its local wake word service
    (it streams after a detection, run-pipeline from asr); None: it streams all the time
    (run-pipeline from wake: hark runs the wake word)."""

    python: Path
    workdir: Path
    wake_uri: str | None = None
    wake_word: str = "alexa"
    mic_rate: int = 16000
    mic_channels: int = 1
    samples_per_chunk: int = 1024
    snd_rate: int = 22050
    name: str = "hark bench satellite"
    port: int = 0
    proc: subprocess.Popen | None = None
    _clips: int = 0
    _seen: set[str] = field(default_factory=set)

    @property
    def uri(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "satellite.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def start(self, timeout_s: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for sub in ("mic", "snd"):
            (self.workdir / sub).mkdir(exist_ok=True)
        (self.workdir / "mic.py").write_text(MIC_SCRIPT)
        (self.workdir / "snd.py").write_text(SND_SCRIPT)
        me = shlex.quote(sys.executable)
        mic = (f"{me} -S -u {shlex.quote(str(self.workdir / 'mic.py'))} "
               f"{shlex.quote(str(self.workdir / 'mic'))} {self.mic_rate} "
               f"{self.samples_per_chunk} {self.mic_channels}")
        snd = (f"{me} -S {shlex.quote(str(self.workdir / 'snd.py'))} "
               f"{shlex.quote(str(self.workdir / 'snd'))}")
        self.port = self.port or free_port()
        cmd = [str(self.python), "-m", "wyoming_satellite", "--uri", self.uri,
               "--name", self.name, "--no-zeroconf", "--debug",
               "--mic-command", mic, "--mic-command-rate", str(self.mic_rate),
               "--mic-command-channels", str(self.mic_channels),
               "--mic-command-samples-per-chunk", str(self.samples_per_chunk),
               "--snd-command", snd, "--snd-command-rate", str(self.snd_rate)]
        if self.wake_uri:
            cmd += ["--wake-uri", self.wake_uri, "--wake-word-name", self.wake_word]
        logf = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it
        try:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            logf.close()
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise HarkError(f"wyoming-satellite exited ({self.proc.returncode}): "
                                f"{self.log_text()[-1500:]}")
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                return
            if time.monotonic() > deadline:
                raise HarkError(f"wyoming-satellite did not listen on {self.uri} within "
                                f"{timeout_s:.0f} s: {self.log_text()[-1500:]}")
            await asyncio.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)  # the satellite and its mic/snd commands
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait(10)

    def play(self, audio16k: np.ndarray, true_end: int | None = None) -> str:
        """Queue a 16 kHz mono clip for the mic (converted to the mic's format); returns
        its name for :meth:`played`. ``true_end``: the sample (16 kHz) where speech ends."""
        self._clips += 1
        name = f"{self._clips:05d}"
        audio = resample(audio16k.astype(np.int16), 16000, self.mic_rate)
        end = len(audio16k) if true_end is None else true_end
        end = int(round(end * self.mic_rate / 16000))
        if self.mic_channels == 2:
            audio = np.stack([audio, audio], axis=1).reshape(-1)
        spool = self.workdir / "mic"
        (spool / f"{name}.json").write_text(json.dumps({"true_end": end}))
        tmp = spool / f"{name}.tmp"
        tmp.write_bytes(audio.astype("<i2").tobytes())
        tmp.rename(spool / f"{name}.raw")
        return name

    async def played(self, name: str, timeout_s: float = 60.0) -> dict[str, float]:
        """When the clip's end of speech left the mic (``true_end_t``, monotonic)."""
        path = self.workdir / "mic" / f"{name}.played"
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the mic did not play clip {name} in {timeout_s:.0f} s")
            await asyncio.sleep(0.05)
        return json.loads(path.read_text())

    async def next_reply(self, timeout_s: float = 60.0) -> Reply:
        """The next reply not returned before, once it has been played whole."""
        deadline = time.monotonic() + timeout_s
        snd = self.workdir / "snd"
        while True:
            for meta in sorted(snd.glob("*.json"), key=lambda p: int(p.stem)):
                if meta.stem not in self._seen:
                    self._seen.add(meta.stem)
                    m = json.loads(meta.read_text())
                    audio = np.frombuffer((snd / f"{meta.stem}.raw").read_bytes(), "<i2")
                    return Reply(audio.astype(np.int16), self.snd_rate, m.get("first_t"),
                                 m["end_t"], m.get("startup_s"))
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply from the satellite in {timeout_s:.0f} s")
            await asyncio.sleep(0.05)

    async def wait_log(self, text: str, count: int = 1, timeout_s: float = 60.0) -> None:
        """Until the satellite's log holds ``text`` ``count`` times (it logs its states:
        "Connected to wake service", "Waiting for wake word", "Streaming audio")."""
        deadline = time.monotonic() + timeout_s
        while self.log_text().count(text) < count:
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the satellite did not log {text!r} x{count} in "
                                   f"{timeout_s:.0f} s: {self.log_text()[-1500:]}")
            await asyncio.sleep(0.05)

    def _check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise HarkError(f"wyoming-satellite exited ({self.proc.returncode}): "
                            f"{self.log_text()[-1500:]}")


# --- the benchmark ----------------------------------------------------------------------
@dataclass
class SatTurn:
    utterance: str
    kind: str
    total_ms: float | None  # true end of speech -> first reply audio read by the snd command
    snd_start_ms: float | None = None  # of which the snd command's own start
    #: the same clip played straight into the pipeline (bench latency, streaming mode)
    alone_ms: float | None = None
    transcript: str = ""
    intent: str = ""
    reply: str = ""
    error: str | None = None
    spans_ms: dict[str, float] = field(default_factory=dict)  # hark's own trace


def wake_clip(utt_audio: np.ndarray, wake: np.ndarray) -> tuple[np.ndarray, int]:
    """"Alexa.", a pause, the utterance; and where its speech ends (16 kHz samples)."""
    from hark.bench.latency import speech_end_index

    lead = np.zeros(int(LEAD_S * 16000), np.int16)
    pause = np.zeros(int(WAKE_PAUSE_S * 16000), np.int16)
    clip = np.concatenate([lead, wake, pause, utt_audio])
    return clip, len(lead) + len(wake) + len(pause) + speech_end_index(utt_audio)


async def run_bench(cfg, assistant, corpus: list[Any], sat_python: Path, workdir: Path,
                    repeat: int = 1, progress=print, compare: bool = True) -> list[SatTurn]:
    """Each utterance through the satellite; with ``compare``, also played straight into
    the pipeline as ``hark bench latency --mode streaming`` does, the two in alternating
    order so that the machine's load falls on both alike."""
    from hark.server.wyoming import start_wyoming
    from hark.server.wyoming_satellite import WyomingSatellites

    wake = _speak(assistant, WAKE_TEXT)
    service = await start_wyoming(cfg, assistant, port=0)
    sat = SatelliteProcess(sat_python, workdir, wake_uri=f"tcp://127.0.0.1:{service.port}")
    traces: list[Any] = []
    group = None
    turns: list[SatTurn] = []
    try:
        await sat.start()
        group = WyomingSatellites(cfg, assistant, [sat.uri], turn_listeners=[traces.append])
        await group.start()
        link = group.links[0]
        await asyncio.wait_for(link.connected.wait(), 60)
        n = 0
        for _ in range(repeat):
            for utt in corpus:
                n += 1
                alone = None
                if compare and n % 2:
                    alone = await _alone(cfg, assistant, utt, n)
                _fresh(assistant, link.session)
                before = len(traces)
                clip, true_end = wake_clip(utt.audio, wake)
                name = sat.play(clip, true_end)
                turn = SatTurn(utt.name, utt.kind, None)
                try:
                    reply = await sat.next_reply(timeout_s=60 + len(clip) / 16000)
                    played = await sat.played(name)
                    if reply.first_t is not None and played.get("true_end_t") is not None:
                        turn.total_ms = (reply.first_t - played["true_end_t"]) * 1000
                    if reply.startup_s is not None:
                        turn.snd_start_ms = reply.startup_s * 1000
                except TimeoutError as exc:
                    turn.error = str(exc)
                await asyncio.sleep(0.5)  # the satellite back to its wake word
                if len(traces) > before:
                    tr = traces[-1]
                    turn.transcript = str(tr.info.get("transcript", ""))
                    turn.intent = str(tr.info.get("intent", ""))
                    turn.reply = str(tr.info.get("reply", ""))
                    turn.spans_ms = {k: round(v, 1) for k, v in tr.spans_ms().items()}
                elif turn.error is None:
                    turn.error = "hark ran no turn"
                if compare and alone is None:
                    alone = await _alone(cfg, assistant, utt, n)
                turn.alone_ms = alone
                turns.append(turn)
                tot = "-" if turn.total_ms is None else f"{turn.total_ms:.0f}"
                ref = "" if alone is None else f" (alone {alone:.0f} ms)"
                progress(f"[{n:3d}] {utt.kind:8} {tot:>6} ms{ref}  '{turn.transcript}' -> "
                         f"{turn.intent}: '{turn.reply[:60]}'"
                         + (f"  ERROR {turn.error}" if turn.error else ""))
    finally:
        if group is not None:
            await group.stop()
        sat.stop()
        await service.stop()
    return turns


def _fresh(assistant, session: str) -> None:
    """Each turn from the system prefix alone, as in bench latency."""
    assistant.llm.reset(session)
    for engine in (assistant.llm.engine, getattr(assistant.llm, "fallback", None)):
        if hasattr(engine, "keep_prefix_only"):
            engine.keep_prefix_only()


async def _alone(cfg, assistant, utt, n: int) -> float | None:
    from hark.bench.latency import _play_turn

    _fresh(assistant, f"bench-alone-{n}")
    res = await _play_turn(assistant, utt, "streaming", session=f"bench-alone-{n}",
                           frame_ms=cfg.audio.frame_ms)
    return None if res.error else res.spans_ms.get("total")


def _speak(assistant, text: str) -> np.ndarray:
    audio = np.concatenate([c.samples for c in assistant.tts.synthesize(text)])
    return resample(audio, assistant.tts_rate, 16000)


def summarize(turns: list[SatTurn]) -> dict[str, Any]:
    def stats(vals: list[float]) -> dict[str, Any]:
        return {"p50": _r(percentile(vals, 50)), "p95": _r(percentile(vals, 95)),
                "n": len(vals)}

    ok = [t for t in turns if t.total_ms is not None]
    rows: dict[str, Any] = {}
    for label, pick in ROWS:
        rows[label] = {"all": stats([v for t in ok if (v := pick(t)) is not None])}
        for kind in ("command", "question"):
            rows[label][kind] = stats([v for t in ok if t.kind == kind
                                       and (v := pick(t)) is not None])
    return {
        "total_ms": rows[ROWS[0][0]]["all"],
        "by_kind": {k: rows[ROWS[0][0]][k] for k in ("command", "question")},
        "rows": rows,
        "errors": sum(1 for t in turns if t.error),
        "turns": [t.__dict__ for t in turns],
    }


#: table rows: (label, value of a turn in ms)
ROWS: list[tuple[str, Any]] = [
    ("total: end of speech -> snd command reads", lambda t: t.total_ms),
    ("  inside hark: its end of speech -> audio", lambda t: t.spans_ms.get("total")),
    ("  hark's end-of-turn wait", lambda t: t.spans_ms.get("end_of_turn")),
    ("  the snd command's own start", lambda t: t.snd_start_ms),
    ("  total less the snd command's start", lambda t: None if t.snd_start_ms is None
     else t.total_ms - t.snd_start_ms),
    ("same clip, hark alone (bench latency)", lambda t: t.alone_ms),
    ("satellite minus alone, clip by clip", lambda t: None if t.alone_ms is None
     else t.total_ms - t.alone_ms),
]


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def format_table(summary: dict[str, Any]) -> str:
    def cell(st: dict) -> str:
        if not st or st.get("p50") is None:
            return f"{'-':>15}"
        return f"{st['p50']:6.0f} / {st['p95']:6.0f}"

    cols = ("all", "command", "question")
    lines = [f"{'ms, p50 / p95':42} " + "  ".join(f"{c + 's' if c != 'all' else c:>15}"
                                                  for c in cols),
             "-" * 93]
    for label, row in summary["rows"].items():
        lines.append(f"{label:42} " + "  ".join(cell(row[c]) for c in cols))
    n = {c: summary["rows"][ROWS[0][0]][c]["n"] for c in cols}
    lines.append(f"{'turns':42} " + "  ".join(f"{n[c]:>15}" for c in cols))
    errs = [t for t in summary["turns"] if t["error"]]
    if errs:
        lines.append(f"{len(errs)} turn(s) failed: " + "; ".join(
            f"{t['utterance']}: {t['error']}" for t in errs[:5]))
    return "\n".join(lines)


def main(cfg, args) -> int:
    from hark.bench.latency import dir_corpus, piper_corpus
    from hark.pipeline.assistant import Assistant

    cfg.llm.cache_ttl_s = 0.0  # as bench latency: no answer from a cache
    python = satellite_python(cfg.home_path / "tools")
    corpus = dir_corpus(Path(args.corpus)) if args.corpus else piper_corpus(cfg, args.quick)
    print(f"corpus: {len(corpus)} utterances; wyoming-satellite {SATELLITE_VERSION} from "
          f"{python}; loading models ...", flush=True)
    assistant = Assistant.load(cfg)
    workdir = Path(tempfile.mkdtemp(prefix="hark-wyoming-sat-"))
    try:
        t0 = time.monotonic()
        turns = asyncio.run(run_bench(cfg, assistant, corpus, python, workdir, args.repeat,
                                      compare=not args.no_compare))
        print(f"ran {len(turns)} turns in {time.monotonic() - t0:.0f} s\n")
    finally:
        assistant.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"satellite files kept in {workdir}")
    summary = summarize(turns)
    summary["config"] = {"llm_profile": cfg.llm.profile, "asr_model": cfg.asr.model,
                         "quick": args.quick, "repeat": args.repeat,
                         "wyoming_satellite": SATELLITE_VERSION, "mic_chunk_samples": 1024}
    print(format_table(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
        print(f"\nJSON: {args.json}")
    return 0 if not summary["errors"] else 1
