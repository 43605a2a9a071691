"""The network path under impairment, over real loopback UDP (hark bench transport)."""

from __future__ import annotations

import asyncio
import json

import numpy as np

from hark.bench.transport import Impairment, run_transport, word_error_rate


def test_word_error_rate():
    assert word_error_rate("turn on the light", "Turn on the light.") == 0.0
    assert word_error_rate("turn on the light", "turn the lights") == 0.5
    assert word_error_rate("", "") == 0.0


def test_impaired_stream_is_reordered_deduplicated_and_concealed(speak):
    speech = speak("Turn on the kitchen light and set a timer for ten minutes.")
    imp = Impairment(loss=0.1, jitter_ms=30, reorder=0.05, duplicate=0.05, seed=3)
    res = asyncio.run(run_transport(speech, imp))
    got = res["_received"]
    assert res["impairment"]["dropped"] > 0 and res["duplicates_dropped"] > 0
    # every dropped packet is accounted for as a lost (concealed or FEC-rebuilt) frame
    assert res["lost_frames"] >= res["impairment"]["dropped"]
    assert res["concealed_frames"] >= res["impairment"]["dropped"]
    assert res["reordered_in_time"] > 0
    assert res["one_way_ms"]["p50"] is not None
    # the speech survives: level and length of the received audio match the sent audio
    assert len(got) >= len(speech) * 0.95
    rms = lambda x: float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert 0.6 < rms(got) / rms(speech) < 1.4


def test_clean_pcm_stream_is_bit_exact(speak):
    speech = speak("Hello there.")
    # This checks that the PCM path is lossless; timing is the bench's job. Sender and
    # player share one event loop: a stall longer than the playout delay (100 ms failed
    # once on a loaded 2-core box) lets the player run first and count a frame late.
    res = asyncio.run(run_transport(speech, Impairment(), codec="pcm", frame_ms=10,
                                    jitter_min_ms=500, jitter_max_ms=1000))
    n = len(speech) // 160 * 160
    assert res["lost_frames"] == 0 and res["late_frames"] == 0
    assert np.array_equal(res["_received"][:n], speech[:n])


def test_bench_cli_json(tmp_path, speak):
    from hark.audio import write_wav
    from hark.cli import main

    wav = write_wav(tmp_path / "s.wav", speak("What time is it?"), 16000)
    out = tmp_path / "r.json"
    png = tmp_path / "r.png"
    assert main(["bench", "transport", "--input", str(wav), "--no-wer", "--loss", "0.05",
                 "--jitter-ms", "20", "--json", str(out), "--plot", str(png)]) == 0
    res = json.loads(out.read_text())
    assert set(res["one_way_ms"]) >= {"p50", "p95"}
    assert {"lost_frames", "concealed_frames", "late_frames"} <= set(res)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_shm_bench_reads_every_frame_from_another_process():
    from hark.bench.transport import run_shm_latency

    woken = run_shm_latency("wake", frames=50, frame_ms=5)
    assert woken["frames"] == 50
    assert woken["wakeups"] >= 1 and woken["wait_timeouts"] == 0  # only wake-ups woke it
    polled = run_shm_latency("poll", frames=50, frame_ms=5)
    assert polled["frames"] == 50 and polled["wakeups"] == 0
    assert woken["one_way_ms"]["p50"] is not None and polled["one_way_ms"]["p50"] is not None
