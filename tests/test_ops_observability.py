"""Trace log (JSON lines, disk-full safe) and Prometheus metrics from real Trace objects."""

from __future__ import annotations

import json
import logging
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hark.config import Config
from hark.server.metrics import Metrics
from hark.server.tracelog import TraceLog, read_traces, trace_log_path
from hark.trace import SPANS, Trace


def make_trace(total_ms: float = 420.0, **info) -> Trace:
    """A trace marked the way the pipeline marks a question turn."""
    t = Trace()
    t0 = time.monotonic()
    steps = [("speech_start", -1.2), ("speech_end", 0.0), ("turn_end", 0.2),
             ("asr_final", 0.25), ("intent_start", 0.25), ("intent_done", 0.252),
             ("llm_start", 0.253), ("llm_first_token", 0.31), ("llm_first_chunk", 0.33),
             ("tts_start", 0.33), ("tts_first_audio", total_ms / 1000 - 0.01),
             ("first_audio_out", total_ms / 1000), ("llm_done", 0.6), ("tts_done", 0.8)]
    for name, dt in steps:
        t.mark(name, t0 + dt)
    t.info.update({"transcript": "what is the capital of france",
                   "reply": "Paris is the capital of France.", "intent": "LLM"})
    t.info.update(info)
    return t


def test_trace_log_default_path_and_lines(tmp_path):
    cfg = Config(home_dir=str(tmp_path))
    assert trace_log_path(cfg) == tmp_path / "traces.jsonl"
    cfg.server.trace_log = str(tmp_path / "sub" / "t.jsonl")
    tl = TraceLog.from_config(cfg)
    traces = [make_trace(400), make_trace(500)]
    for tr in traces:
        assert tl.write(tr, satellite="kitchen")
    tl.close()
    recs = read_traces(tmp_path / "sub" / "t.jsonl")
    assert [r["turn_id"] for r in recs] == [t.turn_id for t in traces]
    assert recs[0]["satellite"] == "kitchen"
    assert recs[0]["spans_ms"]["total"] == pytest.approx(400, abs=0.01)
    assert recs[0]["marks_ms"]["speech_start"] == 0.0
    assert recs[1]["info"]["transcript"] == "what is the capital of france"
    assert abs(recs[0]["time"] - time.time()) < 60
    assert tl.written == 2 and tl.errors == 0


def test_disk_full_is_logged_once_counted_and_never_raises(caplog):
    tl = TraceLog("/dev/full")  # every write fails with ENOSPC
    with caplog.at_level(logging.ERROR, logger="hark.tracelog"):
        for _ in range(3):
            assert tl.write(make_trace()) is False
    assert tl.errors == 3 and tl.written == 0
    assert "No space left on device" in tl.last_error
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "server.trace_log" in errors[0].getMessage()


def test_unwritable_location_is_counted(tmp_path):
    """/proc refuses new files even to root: the same path as a read-only mount."""
    tl = TraceLog("/proc/hark-traces/t.jsonl")
    assert tl.write(make_trace()) is False and tl.write(make_trace()) is False
    assert tl.errors == 2 and "/proc/hark-traces" in tl.last_error


def test_trace_log_recovers_when_the_path_becomes_writable(tmp_path, caplog):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    tl = TraceLog(blocker / "t.jsonl")  # parent is a file: NotADirectoryError
    assert tl.write(make_trace()) is False
    blocker.unlink()
    with caplog.at_level(logging.INFO, logger="hark.tracelog"):
        assert tl.write(make_trace()) is True
    assert "writable again" in caplog.text
    assert len(read_traces(blocker / "t.jsonl")) == 1


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_exposition_parses_and_counts():
    m = Metrics(window=50)
    m.observe(make_trace(300))
    m.observe(make_trace(500, tts_cache_hit=True))
    m.observe(make_trace(700, barge_in=True))
    nospeech = Trace()
    nospeech.info["error"] = "no speech"
    m.observe(nospeech)
    failed = make_trace(900, error="RuntimeError: boom")
    m.observe(failed)
    fams = _families(m.exposition().decode())
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in fams.values() for s in f.samples}
    assert samples[("hark_turns_total", ())] == 5
    assert samples[("hark_turn_errors_total", (("kind", "no_speech"),))] == 1
    assert samples[("hark_turn_errors_total", (("kind", "failure"),))] == 1
    assert samples[("hark_barge_ins_total", ())] == 1
    assert samples[("hark_cache_hits_total", (("cache", "tts"),))] == 1
    assert fams["hark_stage_latency_seconds"].type == "histogram"
    assert samples[("hark_stage_latency_seconds_count", (("stage", "total"),))] == 4
    assert samples[("hark_stage_latency_seconds_sum", (("stage", "total"),))] == \
        pytest.approx(2.4, abs=1e-6)
    # the 0.5 s bucket holds the 300 and 500 ms turns, not 700/900
    assert samples[("hark_stage_latency_seconds_bucket",
                    (("le", "0.5"), ("stage", "total")))] == 2
    for stage in ("asr_final", "llm_first_token", "tts_first_audio", "end_of_turn"):
        assert samples[("hark_stage_latency_seconds_count", (("stage", stage),))] == 4


def test_percentiles_over_recent_window():
    m = Metrics(window=10)
    for ms in range(100, 2100, 100):  # 20 turns; the window keeps the last 10
        m.observe(make_trace(ms))
    p = m.percentiles()
    assert set(p) == set(SPANS)
    assert p["total"]["n"] == 10
    assert p["total"]["p50"] == pytest.approx(1550, abs=0.1)
    assert p["total"]["p95"] == pytest.approx(1955, abs=0.1)
    assert p["asr_final"]["p50"] == pytest.approx(250, abs=0.1)
    empty = Metrics().percentiles()
    assert empty["total"] == {"p50": None, "p95": None, "n": 0}


def test_metrics_instances_do_not_share_state():
    a, b = Metrics(), Metrics()
    a.observe(make_trace())
    assert Metrics.counter_value(a.turns) == 1
    assert Metrics.counter_value(b.turns) == 0
    assert json.dumps(b.percentiles())  # serialisable for /api/state
