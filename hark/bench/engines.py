"""``hark bench engines``: what the Wyoming hop costs, local engines against remote ones.

The remote engines are the real PyPI services, ``wyoming-faster-whisper`` and
``wyoming-piper``, each run from its own virtualenv (``hark.bench.tools``) on loopback,
loading hark's own model files (``asr.model``, ``tts.voice``; they never download one),
with hark's decode settings where the service has the option (int8, beam 1,
``asr.threads`` threads). On the same machine, the difference to the local engine is the
hop: the protocol, the audio over TCP, the service's own handling (its decode options
are its own: e.g. it asks Whisper for timestamps), not a faster GPU.

Measured, alternating local and remote on the same inputs so machine noise hits both:

- ASR: the final decode of each Piper-spoken command and question (bench latency's
  texts), from the call to the text, through ``WhisperAsr.decode`` and
  ``WyomingAsr.decode``;
- TTS: time to the first audio chunk and to the last, for the same texts, through
  ``PiperTts.synthesize`` and ``WyomingTts.synthesize``;
- the connection itself: opening and closing one TCP connection to each service.

:class:`ServiceProcess` is the harness; the integration tests use it too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hark.audio import resample
from hark.bench.tools import free_port, tool_python
from hark.errors import HarkError
from hark.trace import percentile

log = logging.getLogger(__name__)

WHISPER_PACKAGE, WHISPER_VERSION = "wyoming-faster-whisper", "3.8.1"
PIPER_PACKAGE, PIPER_VERSION = "wyoming-piper", "2.5.2"
WHISPER_ENV = "HARK_WYOMING_FASTER_WHISPER_PYTHON"  # a Python with it installed
PIPER_ENV = "HARK_WYOMING_PIPER_PYTHON"


def whisper_python(cache_dir: Path) -> Path:
    """A Python with ``wyoming-faster-whisper==WHISPER_VERSION`` (made on first use)."""
    return tool_python(cache_dir, WHISPER_PACKAGE, WHISPER_VERSION, WHISPER_ENV)


def piper_python(cache_dir: Path) -> Path:
    """A Python with ``wyoming-piper==PIPER_VERSION`` (made on first use)."""
    return tool_python(cache_dir, PIPER_PACKAGE, PIPER_VERSION, PIPER_ENV)


@dataclass
class ServiceProcess:
    """A real Wyoming service on 127.0.0.1 (``args`` after ``python -m``), its output in
    ``log_path``. :meth:`start` returns once it answers ``describe``."""

    python: Path
    args: list[str]
    log_path: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout_s: float = 120.0) -> ServiceProcess:
        from hark.wyoming_client import WyomingPeer, WyomingServiceError

        self.port = self.port or free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [str(self.python), "-m", *self.args, "--uri", self.uri]
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
        peer = WyomingPeer(self.uri, self.args[0], timeout_s=10, connect_timeout_s=2)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise HarkError(f"{self.args[0]} exited ({self.proc.returncode}): "
                                f"{self.log_text()[-1500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2):
                    pass  # listening: now it must answer describe
                peer.info()
                return self
            except (OSError, WyomingServiceError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise HarkError(f"{self.args[0]} did not answer describe on {self.uri} "
                                    f"within {timeout_s:.0f} s: {self.log_text()[-1500:]}")
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait(10)


def whisper_service(cfg, python: Path, log_path: Path, port: int = 0) -> ServiceProcess:
    """wyoming-faster-whisper serving hark's ``asr.model`` folder (never a download:
    ``--local-files-only``), int8, beam 1, ``asr.threads`` CPU threads."""
    from hark.asr.whisper import resolve_asr_model

    model = resolve_asr_model(cfg.asr, cfg.models_dir)
    if not Path(model).is_dir():
        raise HarkError(f"asr.model {cfg.asr.model!r} is not a local folder ({model})",
                        fix="hark models pull whisper-tiny.en")
    return ServiceProcess(python, [
        "wyoming_faster_whisper", "--model", model, "--data-dir", str(Path(model).parent),
        "--local-files-only", "--language", cfg.asr.language or "en", "--compute-type",
        "int8", "--beam-size", "1", "--cpu-threads", str(cfg.asr.threads),
        "--stt-library", "faster-whisper"], log_path, port)


def piper_service(cfg, python: Path, log_path: Path, port: int = 0) -> ServiceProcess:
    """wyoming-piper serving hark's ``tts.voice`` (its folder as ``--data-dir``, where
    the service finds ``NAME.onnx`` and ``NAME.onnx.json`` and downloads nothing)."""
    from hark.models.store import resolve

    onnx = Path(resolve(cfg.tts.voice, cfg.models_dir, kind="tts"))
    if not onnx.is_file() or not Path(f"{onnx}.json").is_file():
        raise HarkError(f"tts.voice {cfg.tts.voice!r}: {onnx} (and its .json) not found",
                        fix="hark models pull")
    return ServiceProcess(python, [
        "wyoming_piper", "--voice", onnx.name[:-len(".onnx")], "--data-dir",
        str(onnx.parent), "--length-scale", str(cfg.tts.length_scale)], log_path, port)


# --- the benchmark -------------------------------------------------------------------------

def _stats(vals: list[float]) -> dict[str, Any]:
    return {"n": len(vals), "p50": _r(percentile(vals, 50)), "p95": _r(percentile(vals, 95)),
            "mean": _r(float(np.mean(vals))) if vals else None}


def _stats_exact(vals: list[float]) -> dict[str, Any]:
    return {"n": len(vals), "p50": percentile(vals, 50), "p95": percentile(vals, 95)}


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def _tts_times(tts, text: str) -> tuple[float, float, np.ndarray]:
    t0 = time.perf_counter()
    first = None
    parts = []
    for chunk in tts.synthesize(text):
        if first is None:
            first = time.perf_counter() - t0
        parts.append(chunk.samples)
    total = time.perf_counter() - t0
    return (first or total) * 1000, total * 1000, np.concatenate(parts)


def _connect_ms(uri: str, n: int) -> list[float]:
    from hark.config import parse_uri

    host, port = parse_uri(uri)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        with socket.create_connection((host, port), timeout=5):
            pass
        out.append((time.perf_counter() - t0) * 1000)
    return out


def run_bench(cfg, asr_uri: str, tts_uri: str, texts: list[str], repeat: int = 1
              ) -> dict[str, Any]:
    """Local vs remote on ``texts``; the services must be running at the two addresses."""
    from hark.asr.whisper import WhisperAsr, resolve_asr_model
    from hark.asr.wyoming import WyomingAsr
    from hark.tts.piper import load_tts
    from hark.tts.wyoming import WyomingTts

    local_tts = load_tts(cfg)
    remote_tts = WyomingTts(tts_uri, sample_rate=local_tts.sample_rate)
    a = cfg.asr
    local_asr = WhisperAsr(resolve_asr_model(a, cfg.models_dir), compute_type="int8",
                           beam_size=1, threads=a.threads, language=a.language)
    remote_asr = WyomingAsr(asr_uri, language=a.language)
    for engine in (local_tts, remote_tts, local_asr, remote_asr):
        engine.warm_up()
    rows: dict[str, list[float]] = {k: [] for k in (
        "asr_local_ms", "asr_wyoming_ms", "tts_first_local_ms", "tts_first_wyoming_ms",
        "tts_total_local_ms", "tts_total_wyoming_ms")}
    items = []
    for rep in range(repeat):
        for i, text in enumerate(texts):
            # the same clip for both ASR engines: the local voice saying the text
            _f, _t, audio = _tts_times(local_tts, text)
            clip = resample(audio, local_tts.sample_rate, 16000)
            order = ("local", "wyoming") if (i + rep) % 2 == 0 else ("wyoming", "local")
            heard = {}
            for side in order:
                tts = local_tts if side == "local" else remote_tts
                first, total, _audio = _tts_times(tts, text)
                rows[f"tts_first_{side}_ms"].append(first)
                rows[f"tts_total_{side}_ms"].append(total)
                asr = local_asr if side == "local" else remote_asr
                t0 = time.perf_counter()
                heard[side] = asr.transcribe(clip)
                rows[f"asr_{side}_ms"].append((time.perf_counter() - t0) * 1000)
            items.append({"text": text, "heard_local": heard["local"],
                          "heard_wyoming": heard["wyoming"],
                          "audio_s": round(len(clip) / 16000, 2)})
            log.info("%-40s local %r | wyoming %r", text, heard["local"], heard["wyoming"])
    connect = {k: {s: (round(v, 3) if isinstance(v, float) else v)
                   for s, v in _stats_exact(_connect_ms(uri, 50)).items()}
               for k, uri in (("asr", asr_uri), ("tts", tts_uri))}
    summary = {k: _stats(v) for k, v in rows.items()}
    hop = {}
    for what in ("asr", "tts_first", "tts_total"):
        d = [w - lo for lo, w in zip(rows[f"{what}_local_ms"], rows[f"{what}_wyoming_ms"])]
        hop[what] = _stats(d)
    return {"stats": summary, "hop_ms": hop, "connect_ms": connect, "items": items,
            "raw": {k: [round(x, 2) for x in v] for k, v in rows.items()},
            "services": {"asr": f"{WHISPER_PACKAGE} {WHISPER_VERSION}",
                         "tts": f"{PIPER_PACKAGE} {PIPER_VERSION}"},
            "same_text": sum(_norm(i["heard_local"]) == _norm(i["heard_wyoming"])
                             for i in items), "n_items": len(items)}


def _norm(text: str) -> str:
    import re

    return " ".join(re.findall(r"[\w']+", text.lower()))


def format_table(res: dict[str, Any]) -> str:
    s, hop = res["stats"], res["hop_ms"]
    lines = [f"{'stage (ms)':<22}{'local p50':>11}{'p95':>8}{'wyoming p50':>13}{'p95':>8}"
             f"{'hop p50':>9}{'p95':>8}"]
    for label, key, hk in (("ASR final decode", "asr", "asr"),
                           ("TTS first audio", "tts_first", "tts_first"),
                           ("TTS whole phrase", "tts_total", "tts_total")):
        lo, wy, h = s[f"{key}_local_ms"], s[f"{key}_wyoming_ms"], hop[hk]
        lines.append(f"{label:<22}{lo['p50']:>11}{lo['p95']:>8}{wy['p50']:>13}{wy['p95']:>8}"
                     f"{h['p50']:>9}{h['p95']:>8}")
    c = res["connect_ms"]
    lines.append(f"TCP connect+close: ASR service p50 {c['asr']['p50']} ms (p95 "
                 f"{c['asr']['p95']}), TTS service p50 {c['tts']['p50']} ms (p95 "
                 f"{c['tts']['p95']})")
    lines.append(f"same transcript local and remote: {res['same_text']}/{res['n_items']}")
    return "\n".join(lines)


def plot(res: dict[str, Any], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = res["raw"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, key, title in zip(axes, ("asr", "tts_first", "tts_total"),
                              ("ASR final decode", "TTS time to first audio",
                               "TTS whole phrase")):
        data = [raw[f"{key}_local_ms"], raw[f"{key}_wyoming_ms"]]
        ax.boxplot(data, showfliers=True)
        ax.set_xticks([1, 2], ["local", "wyoming"])
        ax.set_title(title)
        ax.set_ylabel("ms")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"hark bench engines: local vs {res['services']['asr']} / "
                 f"{res['services']['tts']} (same machine, loopback)")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(cfg, args) -> int:
    from hark.bench.latency import COMMANDS, QUESTIONS

    texts = COMMANDS[:3] + QUESTIONS[:3] if args.quick else COMMANDS + QUESTIONS
    tools = cfg.home_path / "tools"
    work = Path(args.workdir) if args.workdir else cfg.home_path / "bench-engines"
    services = []
    try:
        asr_uri, tts_uri = args.asr_uri, args.tts_uri
        if not asr_uri:
            services.append(whisper_service(cfg, whisper_python(tools),
                                            work / "faster-whisper.log").start())
            asr_uri = services[-1].uri
        if not tts_uri:
            services.append(piper_service(cfg, piper_python(tools), work / "piper.log").start())
            tts_uri = services[-1].uri
        res = run_bench(cfg, asr_uri, tts_uri, texts, args.repeat)
    finally:
        for s in services:
            s.stop()
    print(format_table(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"JSON: {args.json}")
    if args.plot:
        print(f"plot: {plot(res, args.plot)}")
    return 0
