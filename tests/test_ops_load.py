"""The real stack under load: the Assistant (real models), the Server, the HTTP side and
simulated satellites speaking Piper audio over loopback. Checks what the load bench
reports, what the observability pieces recorded, that a full disk under the trace log
and a satellite dying mid-turn disturb no one, and the live page in headless chromium
showing a real turn."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hark.bench.load import SimSatellite, make_utterances, run_load, speech_end_offset
from hark.config import Config
from hark.server.tracelog import TraceLog, read_traces

pytestmark = pytest.mark.timeout(600)

MODEL_FIXTURES = frozenset({"stack"})  # an Assistant (every model)


class Stack:
    """Assistant + Server + HTTP on a background event loop (so sync clients such as
    Playwright can watch while turns run)."""

    def __init__(self, cfg: Config):
        from hark.pipeline.assistant import Assistant
        from hark.server.http import start_http
        from hark.server.server import Server

        self.cfg = cfg
        self.assistant = Assistant.load(cfg)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def up():
            server = Server(cfg, self.assistant)
            await server.start()
            http = await start_http(server, cfg, port=0)
            return server, http

        self.server, self.http = self.call(up())
        self.traces: list = []
        self.server.turn_listeners.append(self.traces.append)

    def call(self, coro, timeout: float = 300):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def get(self, path: str) -> str:
        req = urllib.request.Request(self.http.url + path,
                                     headers={"Authorization": f"Bearer {self.http.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode()

    def close(self) -> None:
        async def down():
            await self.http.close()
            await self.server.stop()

        self.call(down())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.assistant.close()


@pytest.fixture(scope="module")
def stack():
    home = tempfile.mkdtemp(prefix="hark-load-")
    cfg = Config()
    cfg.llm.profile = "tiny"
    cfg.server.control_port = 0
    cfg.server.rtp_port = 0
    cfg.server.trace_log = f"{home}/traces.jsonl"
    cfg.sched.realtime = False  # a shared 2-core test machine: no RT threads here
    try:
        s = Stack(cfg)
    except Exception as exc:  # noqa: BLE001
        from hark.errors import ModelError

        if isinstance(exc, ModelError):
            pytest.skip(f"models missing: {exc}")
        raise
    yield s
    s.close()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def utterances(speak):
    return {u.text: u for u in make_utterances(speak)}


def test_speech_end_offset_finds_the_last_word(speak):
    import numpy as np

    audio = speak("turn on the kitchen light")
    padded = np.concatenate([audio, np.zeros(16000, np.int16)])
    end = speech_end_offset(padded)
    assert end == pytest.approx(speech_end_offset(audio), abs=0.011)
    assert 0.5 < end <= len(audio) / 16000
    def rms(x):
        return float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))

    voiced, after = padded[: int(end * 16000)], padded[int(end * 16000):]
    assert rms(after) < 0.05 * rms(voiced)  # what follows the end is (near) silence


def test_two_satellites_two_turns_each(stack, utterances, tmp_path):
    commands = [u for u in utterances.values() if u.kind == "command"]
    before = len(stack.traces)
    res = stack.call(run_load("127.0.0.1", stack.server.control_port, commands, 2, 2,
                              seed=1, traces=stack.traces, codec="opus"))
    assert res["attempted"] == 4
    assert res["completed"] + res["errors"] + res["refused"] + res["lost"] == 4
    assert res["lost"] == 0, res["turns"]
    assert res["completed"] >= 3, res["turns"]
    for t in res["turns"]:
        if t["outcome"] == "completed":
            assert t["total_ms"] > 0 and t["reply"] and t["transcript"]
    assert res["total_ms"]["n"] == res["completed"]
    from hark.bench.load import plot_load  # the PNG drawn from these very turns

    png = plot_load({"runs": [res]}, str(tmp_path / "load.png"))
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    new = stack.traces[before:]
    assert len(new) == 4 - res["refused"]
    assert res["server_spans_ms"]["total"]["n"] == sum("total" in t.spans_ms() for t in new)

    # what the observability side recorded about the same turns
    state = json.loads(stack.get("/api/state"))
    ids = {t["turn_id"] for t in state["turns"]}
    assert {t.turn_id for t in new} <= ids
    shown = next(t for t in state["turns"] if t["turn_id"] == new[-1].turn_id)
    assert shown["satellite"].startswith("loadsat") and shown["transcript"]
    assert {b["stage"] for b in shown["bars"]} >= {"asr_final", "total"}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(stack.get("/metrics"))
               for s in f.samples}
    assert samples[("hark_turns_total", ())] >= len(new)
    assert samples[("hark_stage_latency_seconds_count", (("stage", "asr_final"),))] >= 1
    assert samples[("hark_server_turns_total", ())] >= 4
    logged = read_traces(stack.cfg.server.trace_log)
    assert {t.turn_id for t in new} <= {r["turn_id"] for r in logged}
    assert json.loads(stack.get("/health")) == {"status": "ready"}


def test_disk_full_trace_log_never_breaks_a_turn(stack, utterances):
    obs = stack.http.obs
    saved = obs.trace_log
    obs.trace_log = TraceLog("/dev/full")
    try:
        res = stack.call(run_load("127.0.0.1", stack.server.control_port,
                                  [utterances["what time is it"]], 1, 1, seed=3))
    finally:
        obs.trace_log = saved
    assert res["completed"] == 1, res["turns"]
    assert res["turns"][0]["reply"]
    samples = {s.name: s.value for f in text_string_to_metric_families(stack.get("/metrics"))
               for s in f.samples}
    assert samples["hark_trace_log_errors_total"] >= 1


def test_satellite_killed_mid_turn_disturbs_no_one(stack, utterances):
    utt = utterances["turn on the kitchen light"]

    async def scenario():
        victim = SimSatellite("victim", codec="opus")
        await victim.connect("127.0.0.1", stack.server.control_port)
        sessions_with_victim = len(stack.server.sessions)
        from hark.transport.stream import RtpStreamSender

        sender = RtpStreamSender("opus", 16000, 20, ssrc=int(victim.welcome["ssrc"]))
        await victim.conn.send("wake", {})
        for pkt in sender.push(utt.audio[: len(utt.audio) // 2]):
            await victim.conn.send("audio-chunk", {}, pkt.pack())
            await asyncio.sleep(0.02)
        victim.conn.writer.transport.abort()  # killed: no goodbye, socket gone
        other = await run_load("127.0.0.1", stack.server.control_port, [utt], 1, 1, seed=5)
        for _ in range(100):
            if not any(s.name == "victim" for s in stack.server.sessions.values()):
                break
            await asyncio.sleep(0.05)
        return sessions_with_victim, other

    with_victim, other = stack.call(scenario())
    assert with_victim >= 1
    assert other["completed"] == 1 and other["lost"] == 0, other["turns"]
    assert not any(s.name == "victim" for s in stack.server.sessions.values())


def test_past_capacity_turns_are_refused_with_a_spoken_busy(stack, utterances):
    """A second Server on the same Assistant allowing one turn at a time; three
    satellites speak at once: the extra turns hear "busy" at once, none is lost."""
    import copy

    from hark.server.server import Server

    cfg = copy.deepcopy(stack.cfg)
    cfg.server.max_concurrent_turns = 1

    async def scenario():
        small = Server(cfg, stack.assistant)
        await small.start()
        try:
            return await run_load("127.0.0.1", small.control_port,
                                  [utterances["turn on the kitchen light"]], 3, 1, seed=9,
                                  pause_s=(0.0, 0.05))
        finally:
            await small.stop()

    res = stack.call(scenario())
    assert res["lost"] == 0 and res["errors"] == 0, res["turns"]
    assert res["refused"] >= 1 and res["completed"] >= 1, res["turns"]
    assert res["refused_ms"]["n"] == res["refused"]  # each refused turn heard the busy reply
    assert all(t["total_ms"] > 0 for t in res["turns"] if t["outcome"] == "refused")


def test_summary_counts_each_outcome():
    from hark.bench.load import TurnResult, summarize

    rs = [TurnResult("a", "x", "command", "completed", 500.0),
          TurnResult("a", "y", "question", "completed", 900.0),
          TurnResult("b", "x", "command", "refused", 300.0),
          TurnResult("b", "y", "question", "error", detail="no speech"),
          TurnResult("c", "x", "command", "lost")]
    d = summarize(3, 2, rs, [], 2.0)
    assert (d["completed"], d["refused"], d["errors"], d["lost"]) == (2, 1, 1, 1)
    assert d["total_ms"] == {"p50": 700.0, "p95": 880.0, "n": 2}
    assert d["total_ms_by_kind"]["command"]["p50"] == 500.0
    assert d["refused_ms"]["p50"] == 300.0
    assert json.dumps(d)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                    "(HARK_WITH_BROWSER=1 bash scripts/setup.sh installs it)")
def test_live_page_shows_a_real_turn(stack, utterances):
    sync_api = pytest.importorskip("playwright.sync_api")
    utt = utterances["what time is it"]
    with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--disable-sync"])
        page = ctx.new_page()
        page.goto(stack.http.login_url("/?poll=250"))
        sync_api.expect(page.locator("#status")).to_have_text("ready")
        before = len(stack.traces)
        res = stack.call(run_load("127.0.0.1", stack.server.control_port, [utt], 1, 1,
                                  seed=7))
        assert res["completed"] == 1, res["turns"]
        trace = stack.traces[before]
        turn = page.locator(f'.turn[data-turn-id="{trace.turn_id}"]')
        sync_api.expect(turn).to_contain_text(res["turns"][0]["reply"], timeout=10_000)
        sync_api.expect(turn).to_contain_text(trace.info["transcript"])
        sync_api.expect(turn.locator("svg rect[data-stage=asr_final]")).to_have_count(1)
        sync_api.expect(page.locator("#percentiles tr[data-stage=asr_final] .p50")) \
            .not_to_have_text("–")
        ctx.close()


def test_bench_load_cli_rejects_bad_counts():
    import subprocess
    import sys

    for bad in ("2,x", "0"):
        proc = subprocess.run([sys.executable, "-m", "hark", "bench", "load", "--satellites",
                               bad], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and "--satellites" in proc.stderr
