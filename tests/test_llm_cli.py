"""``hark llm ask`` and ``hark bench llm`` end to end on the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hark.bench.llm import QUESTIONS, is_correct


def hark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hark", "--set", "llm.profile=tiny",
                           "--set", "llm.n_threads=1", *args],
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.models
def test_ask_answers_templates_and_questions() -> None:
    r = hark("llm", "ask", "hello", "What is the capital of France?")
    assert r.returncode == 0, r.stderr
    assert "[template" in r.stdout and "[llm tiny" in r.stdout


@pytest.mark.models
def test_bench_writes_json_and_plot(tmp_path) -> None:
    out, png = tmp_path / "llm.json", tmp_path / "llm.png"
    r = hark("bench", "llm", "--profiles", "tiny,missing", "--quick", "--limit", "3",
             "--json", str(out), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    tiny = data["profiles"]["tiny"]
    for key in ("ttft_ms", "ttft_cold_ms", "first_chunk_ms"):
        assert tiny[key]["p50"] is not None and tiny[key]["p95"] >= tiny[key]["p50"]
    assert tiny["tokens_per_s"] > 0
    assert 0.0 <= tiny["accuracy"] <= 1.0 and tiny["questions"] == 3
    assert "skipped" in data["profiles"]["missing"]  # a missing profile is reported, not fatal
    assert png.stat().st_size > 1000
    assert "skipped" in r.stdout


def test_benchmark_questions_and_scoring() -> None:
    assert len(QUESTIONS) == 30
    assert is_correct("The British pound.", ("pound",))
    assert is_correct("It is AU.", ("au",)) and not is_correct("Because.", ("au",))
    assert not is_correct("There are 70 of them.", ("7",))
