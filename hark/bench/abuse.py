"""``hark bench abuse``: hostile clients against a live ``hark serve``.

Starts ``hark serve`` (this config, free ports), or attaches to a running one
(``--attach PID``, the ports of this config), then runs each probe and, after every
one, checks that ``/health`` answers 200 and that a real satellite turn (Piper saying
"what time is it" over the control connection) completes:

- **no token**: ``/``, ``/api/state`` and ``/metrics`` without a token, or with a wrong
  one, answer 401; a control ``hello`` without a token, with an empty or a wrong one, is
  refused (``auth``);
- **Wyoming payload bomb**: an event header that declares a 1 GB payload, then 8 MiB of
  it; the connection must be closed, and the server's RSS must grow by less than
  :data:`RSS_LIMIT_MB` (sampled every 20 ms during the probe);
- **Wyoming audio flood**: one transcription fed ten minutes of 48 kHz stereo audio in
  1 MiB chunks (buffering is capped at 30 s); RSS as above;
- **Wyoming odd rate**: ``audio-start`` and 1,000 chunks at 1 Hz (the converter would
  blow each 200 bytes up 15,840 times); each must be refused; RSS as above;
- **idle connections**: :data:`IDLE_CONNECTIONS` control connections that never say
  ``hello``; each must be closed within the handshake timeout, while a satellite turn
  runs at the same time and completes.

The table goes to stdout; ``--json PATH`` writes every number. The exit status is 0
only when every probe passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("hark.bench.abuse")

RSS_LIMIT_MB = 50.0
IDLE_CONNECTIONS = 200
PROBE_TEXT = "what time is it"


@dataclass
class Target:
    """A running server: where its listeners are, its token, and its process (for RSS;
    None: RSS is not measured)."""

    host: str
    control_port: int
    http_port: int
    wyoming_port: int
    token: str
    pid: int | None = None
    hello_timeout_s: float = 5.0  # the server's server.hello_timeout_s


@dataclass
class ProbeResult:
    probe: str
    expected: str
    observed: str
    ok: bool  # the probe's own check (RSS, status codes, closes) and what follows it
    rss_growth_mb: float | None = None
    health_after: int | None = None  # /health status after the probe
    turn_after: str = ""  # outcome of the satellite turn after the probe
    numbers: dict[str, Any] = field(default_factory=dict)


# --- measuring --------------------------------------------------------------------------
def rss_mb(pid: int) -> float | None:
    """The resident set of process ``pid`` in MB (Linux /proc), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class RssWatch:
    """Samples a process's RSS every 20 ms while in use: :attr:`growth_mb` is the peak
    seen minus the value at the start (None without a pid)."""

    def __init__(self, pid: int | None):
        self.pid = pid
        self.start: float | None = None
        self.peak: float | None = None
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> RssWatch:
        if self.pid is not None:
            self.start = self.peak = rss_mb(self.pid)
            self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            now = rss_mb(self.pid) if self.pid is not None else None
            if now is not None and self.peak is not None:
                self.peak = max(self.peak, now)

    async def __aexit__(self, *exc) -> None:
        await asyncio.sleep(0.1)  # what the last write made the server allocate
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    @property
    def growth_mb(self) -> float | None:
        if self.start is None or self.peak is None:
            return None
        return round(self.peak - self.start, 1)


def _url(t: Target, path: str) -> str:
    host = "127.0.0.1" if t.host in ("0.0.0.0", "") else ("::1" if t.host == "::" else t.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{t.http_port}{path}"


def _connect_host(t: Target) -> str:
    return "127.0.0.1" if t.host in ("0.0.0.0", "") else ("::1" if t.host == "::" else t.host)


async def http_status(t: Target, path: str, token: str | None = None) -> int:
    """The status of GET ``path`` (with ``Authorization: Bearer token`` when given)."""

    def get() -> int:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        req = urllib.request.Request(_url(t, path), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return 0

    return await asyncio.to_thread(get)


# --- probes -----------------------------------------------------------------------------
async def probe_http_without_token(t: Target) -> ProbeResult:
    got = {}
    for path in ("/", "/api/state", "/metrics"):
        got[f"{path} no token"] = await http_status(t, path)
        got[f"{path} wrong token"] = await http_status(t, path, "x" * 43)
    ok = all(v == 401 for v in got.values())
    observed = ", ".join(sorted({str(v) for v in got.values()}))
    return ProbeResult("HTTP without token", "401 on /, /api/state, /metrics", observed, ok,
                       numbers=got)


async def _hello(t: Target, token: object) -> str:
    from hark.transport.control import PROTOCOL_VERSION, Connection

    conn = await Connection.open(_connect_host(t), t.control_port)
    try:
        hello: dict[str, Any] = {"version": PROTOCOL_VERSION, "name": "abuse",
                                 "capabilities": []}
        if token is not None:
            hello["token"] = token
        await conn.send("hello", hello)
        ev = await asyncio.wait_for(conn.recv(), 10)
        if ev is None:
            return "closed"
        return ev.type if ev.type != "error" else f"error:{ev.data.get('code')}"
    finally:
        await conn.close()


async def probe_control_without_token(t: Target) -> ProbeResult:
    got = {"none": await _hello(t, None), "empty": await _hello(t, ""),
           "wrong": await _hello(t, "w" * 43)}
    ok = all(v == "error:auth" for v in got.values())
    return ProbeResult("control without token", "refused (auth)",
                       ", ".join(f"{k}: {v}" for k, v in got.items()), ok, numbers=got)


async def _wyoming_open(t: Target):
    return await asyncio.wait_for(asyncio.open_connection(_connect_host(t), t.wyoming_port), 10)


async def _drain_replies(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:
    out = b""
    with contextlib.suppress(TimeoutError, ConnectionError, OSError):
        while chunk := await asyncio.wait_for(reader.read(65536), timeout):
            out += chunk
    return out


async def probe_wyoming_payload_bomb(t: Target) -> ProbeResult:
    async with RssWatch(t.pid) as rss:
        reader, writer = await _wyoming_open(t)
        header = {"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1},
                  "payload_length": 10 ** 9}
        sent = 0
        block = bytes(65536)
        try:
            writer.write(json.dumps(header).encode() + b"\n")
            for _ in range(128):  # 8 MiB of the declared gigabyte
                writer.write(block)
                await asyncio.wait_for(writer.drain(), 5)
                sent += len(block)
        except (ConnectionError, OSError, TimeoutError):
            pass
        replies = await _drain_replies(reader, 5.0)
        writer.close()
    closed = reader.at_eof() or sent < 128 * len(block)
    # the error event may be lost: a socket closed with unread input resets the
    # connection, and the reset can overtake it (the close is what counts)
    refused = b'"error"' in replies
    growth = rss.growth_mb
    ok = closed and (growth is None or growth < RSS_LIMIT_MB)
    return ProbeResult("Wyoming payload bomb (1 GB declared)",
                       f"closed, RSS +<{RSS_LIMIT_MB:.0f} MB",
                       f"{'closed' if closed else 'open'} after {sent / 2**20:.1f} MiB"
                       f"{' with an error event' if refused else ''}, RSS +{growth} MB",
                       ok, growth, numbers={"sent_mib": round(sent / 2**20, 1)})


async def probe_wyoming_audio_flood(t: Target, minutes: float = 10.0) -> ProbeResult:
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient

    rate, chunk = 48000, bytes(1024 * 1024)  # 1 MiB: 5.5 s of 48 kHz stereo
    n = int(minutes * 60 * rate * 4 / len(chunk))
    text = None
    async with RssWatch(t.pid) as rss:
        async with AsyncTcpClient(_connect_host(t), t.wyoming_port) as client:
            await client.write_event(Transcribe().event())
            await client.write_event(AudioStart(rate=rate, width=2, channels=2).event())
            for _ in range(n):
                await client.write_event(AudioChunk(rate=rate, width=2, channels=2,
                                                    audio=chunk).event())
            await client.write_event(AudioStop().event())
            while True:
                ev = await asyncio.wait_for(client.read_event(), 120)
                if ev is None or Transcript.is_type(ev.type):
                    text = None if ev is None else Transcript.from_event(ev).text
                    break
    growth = rss.growth_mb
    ok = text is not None and (growth is None or growth < RSS_LIMIT_MB)
    return ProbeResult(f"Wyoming audio flood ({minutes:.0f} min in one request)",
                       f"transcript, RSS +<{RSS_LIMIT_MB:.0f} MB",
                       f"{'transcript' if text is not None else 'no transcript'}, "
                       f"RSS +{growth} MB", ok, growth, numbers={"chunks": n})


async def probe_wyoming_odd_rate(t: Target, chunks: int = 1000) -> ProbeResult:
    from wyoming.asr import Transcribe, Transcript
    from wyoming.audio import AudioChunk, AudioStart, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.error import Error

    replies: list[str] = []  # one for audio-start, each chunk and audio-stop
    async with RssWatch(t.pid) as rss:
        async with AsyncTcpClient(_connect_host(t), t.wyoming_port) as client:
            await client.write_event(Transcribe().event())
            await client.write_event(AudioStart(rate=1, width=2, channels=1).event())

            async def read() -> None:
                while len(replies) < chunks + 2 and (ev := await client.read_event()):
                    replies.append("error" if Error.is_type(ev.type) else
                                   "transcript" if Transcript.is_type(ev.type) else ev.type)

            reading = asyncio.create_task(read())
            for _ in range(chunks):
                await client.write_event(AudioChunk(rate=1, width=2, channels=1,
                                                    audio=bytes(200)).event())
            await client.write_event(AudioStop().event())
            try:
                await asyncio.wait_for(reading, 60)
            except TimeoutError:
                reading.cancel()
    growth = rss.growth_mb
    refused = replies[:chunks + 1].count("error")
    ok = refused == chunks + 1 and (growth is None or growth < RSS_LIMIT_MB)
    return ProbeResult(f"Wyoming odd rate (1 Hz, {chunks} chunks)",
                       f"each refused, RSS +<{RSS_LIMIT_MB:.0f} MB",
                       f"{refused}/{chunks + 1} refused, RSS +{growth} MB", ok, growth,
                       numbers={"refused": refused, "replies": len(replies)})


async def probe_idle_connections(t: Target, turn, n: int = IDLE_CONNECTIONS
                                 ) -> ProbeResult:
    """``n`` control connections that never say hello, and ``turn()`` meanwhile."""
    HELLO_TIMEOUT_S = t.hello_timeout_s  # noqa: N806

    host = _connect_host(t)
    opened: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []
    for _ in range(n):
        r, w = await asyncio.open_connection(host, t.control_port)
        opened.append((time.monotonic(), r, w))

    async def closed_after(t0: float, r: asyncio.StreamReader) -> float | None:
        try:
            await asyncio.wait_for(r.read(), HELLO_TIMEOUT_S + 30)
        except (ConnectionError, OSError):
            pass
        except TimeoutError:
            return None
        return time.monotonic() - t0

    async with RssWatch(t.pid) as rss:
        waits = asyncio.gather(*(closed_after(t0, r) for t0, r, _ in opened))
        outcome = await turn()
        times = await waits
    for _, _, w in opened:
        w.close()
    done = [x for x in times if x is not None]
    worst = max(done) if done else None
    ok = len(done) == n and worst is not None and worst <= HELLO_TIMEOUT_S + 1.0 \
        and outcome == "completed"
    return ProbeResult(f"{n} idle control connections",
                       f"all closed within {HELLO_TIMEOUT_S:.0f} s; a turn completes",
                       f"{len(done)}/{n} closed, the last after "
                       f"{'-' if worst is None else f'{worst:.1f}'} s; turn {outcome}",
                       ok, rss.growth_mb,
                       numbers={"closed": len(done), "worst_s": worst, "turn": outcome,
                                "handshake_timeout_s": HELLO_TIMEOUT_S})


# --- the run ----------------------------------------------------------------------------
def probe_utterance(cfg: Any):
    """Piper saying :data:`PROBE_TEXT`, as the load bench's satellites speak it."""
    from hark.bench.load import Utterance, piper_speaker, speech_end_offset

    audio = piper_speaker(cfg)(PROBE_TEXT)
    return Utterance(PROBE_TEXT, "command", audio, speech_end_offset(audio))


async def satellite_turn(t: Target, utt: Any) -> str:
    """One turn of a simulated satellite: its outcome ("completed", or why not)."""
    from hark.bench.load import SimSatellite

    sat = SimSatellite("abuse-check", t.token, "pcm")
    try:
        await sat.connect(_connect_host(t), t.control_port)
        res = await sat.turn(utt, 30.0)
        return res.outcome if res.outcome == "completed" else f"{res.outcome} ({res.detail})"
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return f"failed ({exc})"
    finally:
        await sat.close()


RSS_FLAT_MB = 20.0  # growth allowed over the turns of the steady-state probe


async def _wyoming_text_turn(t: Target, text: str) -> bool:
    """One turn over Wyoming's handle service: a transcript in, the answer's event out."""
    reader, writer = await _wyoming_open(t)
    try:
        body = json.dumps({"type": "transcript", "data": {"text": text}}).encode() + b"\n"
        writer.write(body)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
        return b'"handled"' in line or b'"not-handled"' in line
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def probe_rss_over_turns(t: Target, utt: Any, turns: int) -> ProbeResult:
    """The server's RSS after a warm-up, then after ``turns`` turns (Wyoming text turns,
    and one satellite turn in 50): it stays within :data:`RSS_FLAT_MB`."""
    texts = ["what time is it", "turn on the kitchen light", "turn off the kitchen light",
             "set a timer for 5 minutes", "cancel the timer", "what's the date today"]
    for text in texts:  # warm: every path taken once
        await _wyoming_text_turn(t, text)
    await satellite_turn(t, utt)
    first = round(rss_mb(t.pid), 1) if t.pid is not None else None
    ok_turns = 0
    samples = []
    for i in range(turns):
        if i % 50 == 49:
            ok_turns += await satellite_turn(t, utt) == "completed"
        else:
            ok_turns += await _wyoming_text_turn(t, texts[i % len(texts)])
        if i % 100 == 99 and t.pid is not None:
            samples.append(round(rss_mb(t.pid), 1))
    last = round(rss_mb(t.pid), 1) if t.pid is not None else None
    growth = None if first is None or last is None else round(last - first, 1)
    ok = ok_turns == turns and (growth is None or growth < RSS_FLAT_MB)
    return ProbeResult(f"{turns} turns (1 in 50 a satellite's)",
                       f"all answered, RSS +<{RSS_FLAT_MB:.0f} MB",
                       f"{ok_turns}/{turns} answered, RSS {first} -> {last} MB",
                       ok, growth, numbers={"rss_every_100": samples})


async def run_abuse(t: Target, utt: Any, *, idle: int = IDLE_CONNECTIONS,
                    flood_minutes: float = 10.0, turns: int = 0) -> dict[str, Any]:
    """Every probe, each followed by a /health check and a satellite turn."""
    probes = [
        ("HTTP without token", lambda: probe_http_without_token(t)),
        ("control without token", lambda: probe_control_without_token(t)),
        ("Wyoming payload bomb", lambda: probe_wyoming_payload_bomb(t)),
        ("Wyoming odd rate", lambda: probe_wyoming_odd_rate(t)),
        ("Wyoming audio flood", lambda: probe_wyoming_audio_flood(t, flood_minutes)),
        ("idle connections",
         lambda: probe_idle_connections(t, lambda: satellite_turn(t, utt), idle)),
    ]
    if turns:
        probes.append(("RSS over turns", lambda: probe_rss_over_turns(t, utt, turns)))
    results = []
    start_rss = rss_mb(t.pid) if t.pid is not None else None
    for name, probe in probes:
        try:
            res = await probe()
        except Exception as exc:  # noqa: BLE001 - a probe that breaks is a failure
            res = ProbeResult(name, "-", f"raised {exc!r}"[:200], False)
        res.health_after = await http_status(t, "/health")
        res.turn_after = await satellite_turn(t, utt)
        res.ok = res.ok and res.health_after == 200 and res.turn_after == "completed"
        log.info("%s: %s (%s)", res.probe, "ok" if res.ok else "FAILED", res.observed)
        results.append(res)
    end_rss = rss_mb(t.pid) if t.pid is not None else None
    return {"probes": [asdict(r) for r in results],
            "rss_mb": {"start": start_rss, "end": end_rss},
            "passed": all(r.ok for r in results)}


def format_table(out: dict[str, Any]) -> str:
    rows = [("probe", "expected", "observed", "/health", "next turn", "ok")]
    for p in out["probes"]:
        rows.append((p["probe"], p["expected"], p["observed"], str(p["health_after"]),
                     p["turn_after"], "yes" if p["ok"] else "NO"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    rss = out.get("rss_mb") or {}
    if rss.get("start") is not None:
        lines.append(f"server RSS {rss['start']:.0f} MB before the probes, "
                     f"{rss['end']:.0f} MB after")
    return "\n".join(lines)


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_server(args: Any, cfg: Any) -> tuple[subprocess.Popen, Target, Path]:
    """``hark serve`` with this command's config and free ports on 127.0.0.1."""
    from hark.auth import ensure_server_token

    ports = {"control_port": _free_port(), "rtp_port": _free_port(socket.SOCK_DGRAM),
             "http_port": _free_port(), "wyoming_port": _free_port()}
    cmd = [sys.executable, "-m", "hark"]
    if args.config:
        cmd += ["--config", args.config]
    for item in args.set:
        cmd += ["--set", item]
    cmd += ["--set", 'server.host="127.0.0.1"', "--set", 'server.wyoming_host="127.0.0.1"']
    for key, port in ports.items():
        cmd += ["--set", f"server.{key}={port}"]
    cmd.append("serve")
    log_path = Path(tempfile.mkstemp(prefix="hark-abuse-serve-", suffix=".log")[1])
    token = ensure_server_token(cfg)  # made here first so both sides agree
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    target = Target("127.0.0.1", ports["control_port"], ports["http_port"],
                    ports["wyoming_port"], token, proc.pid, cfg.server.hello_timeout_s)
    return proc, target, log_path


def _wait_ready(t: Target, proc: subprocess.Popen | None, timeout_s: float) -> None:
    from hark.errors import HarkError

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise HarkError(f"hark serve exited with status {proc.returncode}")
        if asyncio.run(http_status(t, "/health")) == 200:
            return
        time.sleep(0.5)
    raise HarkError(f"hark serve was not ready within {timeout_s:.0f} s")


def main(args: Any) -> int:
    from hark.auth import read_server_token
    from hark.cli import load_cfg
    from hark.errors import HarkError

    cfg = load_cfg(args)
    utt = probe_utterance(cfg)
    proc, log_path = None, None
    if args.attach:
        token = read_server_token(cfg)
        if token is None:
            raise HarkError("no server token to read in this machine's hark home",
                            fix="run as the user 'hark serve' runs as, with its config")
        sc = cfg.server
        target = Target(sc.host, sc.control_port, sc.http_port, sc.wyoming_port, token,
                        args.attach, sc.hello_timeout_s)
    else:
        proc, target, log_path = _spawn_server(args, cfg)
        print(f"started hark serve (pid {proc.pid}, log {log_path}); waiting for it...",
              flush=True)
    try:
        _wait_ready(target, proc, args.ready_timeout)
        out = asyncio.run(run_abuse(target, utt, idle=args.idle,
                                    flood_minutes=args.flood_minutes,
                                    turns=getattr(args, "turns", 0)))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(format_table(out))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2, default=str))
        print(f"wrote {path}")
    if log_path is not None and out["passed"]:
        os.unlink(log_path)
    return 0 if out["passed"] else 1
