"""hark bench latency's report: per-turn records, per-voice breakdown, one mode alone."""

from __future__ import annotations

import json

from hark.bench.latency import TurnResult, dir_corpus, format_table, summarize
from hark.audio import write_wav

import numpy as np


def _turn(voice: str, kind: str, mode: str, total: float, intent: str, expected: str,
          error: str | None = None) -> TurnResult:
    return TurnResult(f"{voice}-{kind}", kind, mode, {"total": total}, {}, "heard", "said",
                      intent, error, {}, voice=voice, expected_intent=expected)


def test_per_voice_breakdown_counts_right_intents_and_keeps_each_turn():
    turns = [
        _turn("en-us", "command", "streaming", 250, "HassTurnOn", "HassTurnOn"),
        _turn("en-us", "command", "streaming", 300, "LLM", "HassTurnOff"),
        _turn("en-gb", "command", "streaming", 280, "HassTurnOff", "HassTurnOff"),
        _turn("en-gb", "question", "streaming", 900, "LLM", "LLM"),
        _turn("en-gb", "question", "streaming", 0, "", "LLM", error="no speech"),
    ]
    summary = summarize(turns)
    assert set(summary["modes"]) == {"streaming"} and summary["speedup_p50"] is None
    voices = summary["modes"]["streaming"]["by_voice"]
    assert voices["en-us"]["command"]["right"] == 1 and voices["en-us"]["command"]["labelled"] == 2
    assert voices["en-gb"]["command"]["right"] == 1
    assert voices["en-gb"]["question"]["right"] == 1 and voices["en-gb"]["errors"] == 1
    first = summary["turns"][1]
    assert (first["transcript"], first["intent"], first["reply"], first["right"]) == (
        "heard", "LLM", "said", False)
    assert first["spans_ms"] == {"total": 300}
    table = format_table(summary)
    assert "baseline" not in table.splitlines()[0] and "streaming" in table.splitlines()[0]
    assert "en-gb" in table and "en-us" in table
    json.dumps(summary, default=str)  # the JSON the command writes


def test_corpus_entries_name_voice_and_intent(tmp_path):
    write_wav(tmp_path / "a.wav", np.zeros(1600, np.int16), 16000)
    write_wav(tmp_path / "b.wav", np.zeros(1600, np.int16), 16000)
    (tmp_path / "transcripts.json").write_text(json.dumps({
        "a.wav": "why is the sky blue",
        "b.wav": {"text": "turn on the light", "kind": "command", "voice": "en-gb",
                  "intent": "HassTurnOn"},
    }))
    a, b = sorted(dir_corpus(tmp_path), key=lambda u: u.name)
    assert (a.kind, a.voice, a.intent) == ("question", "", "")
    assert (b.kind, b.voice, b.intent) == ("command", "en-gb", "HassTurnOn")
