"""Wake word stage: the real microWakeWord model on Piper speech and real recordings."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hark.audio import AudioChunk, read_audio
from hark.bench import augment
from hark.bench import eval_wake as ev
from hark.bench.eval_wake import keyword_end_s, mix_noise
from hark.errors import AudioError, ConfigError
from hark.wake.detector import DEFAULT_CONFIRM, WakeWordDetector


MODEL_FIXTURES = frozenset({"det"})  # the microWakeWord model


@pytest.fixture(scope="module")
def det() -> WakeWordDetector:
    return WakeWordDetector("alexa", refractory_s=1.0)


def _hits(det: WakeWordDetector, audio: np.ndarray, chunk: int = 320) -> list[float]:
    det.reset()
    out = []
    for i in range(0, len(audio), chunk):
        ev = det.process(AudioChunk(audio[i:i + chunk], 16000, 100.0 + i / 16000))
        if ev:
            assert ev.t > 100.0 and ev.keyword == "alexa"
            out.append(ev.stream_s)
    return out


def test_detects_piper_alexa_and_not_other_speech(det, speak):
    pad = np.zeros(8000, np.int16)
    said = np.concatenate([pad, speak("Alexa, what time is it?")])
    hits = _hits(det, said)
    assert len(hits) == 1
    # detected after the keyword began and before the question ended
    assert 0.5 < hits[0] < len(said) / 16000
    assert _hits(det, np.concatenate([pad, speak("What time is it in Paris?")])) == []


def test_chunk_size_does_not_change_detection(det, speak):
    said = np.concatenate([np.zeros(4000, np.int16), speak("Alexa."), np.zeros(8000, np.int16)])
    a = _hits(det, said, 160)
    b = _hits(det, said, 1024)
    assert len(a) == len(b) == 1
    assert abs(a[0] - b[0]) < 0.07


def test_refractory_period_blocks_repeat(det, speak):
    word = speak("Alexa.")
    gap = np.zeros(1600, np.int16)
    close = np.concatenate([gap, word, gap, word, gap])  # repeats within 1 s
    det.refractory_s = 10.0
    try:
        assert len(_hits(det, close)) == 1
    finally:
        det.refractory_s = 1.0
    tail = np.zeros(8000, np.int16)  # the microphone keeps streaming after the keyword
    far = np.concatenate([gap, word, np.zeros(24000, np.int16), word, tail])
    assert len(_hits(det, far)) == 2


def test_silence_and_noise_do_not_trigger(det):
    rng = np.random.default_rng(0)
    noise = (rng.normal(0, 2000, 16000 * 3)).astype(np.int16)
    assert _hits(det, np.zeros(16000 * 2, np.int16)) == []
    assert _hits(det, noise) == []


def test_bad_input_gets_clear_errors(det):
    with pytest.raises(AudioError, match="16 kHz"):
        det.process(AudioChunk(np.zeros(441, np.int16), 44100))
    with pytest.raises(ConfigError, match="unknown wake word"):
        WakeWordDetector("hey_siri")
    with pytest.raises(ConfigError):
        WakeWordDetector("alexa", threshold=1.5)


def test_real_recordings_detected(det, testdata):
    files = sorted((testdata / "wake" / "alexa").glob("*.flac"))[:8]
    found = sum(bool(_hits(det, np.concatenate([np.zeros(8000, np.int16), read_audio(f)])))
                for f in files)
    assert found >= 7


def test_keyword_end_and_noise_mixing(speak):
    word = speak("Alexa.")
    audio = np.concatenate([np.zeros(8000, np.int16), word, np.zeros(8000, np.int16)])
    end = keyword_end_s(audio)
    assert 0.5 < end <= 0.5 + len(word) / 16000 + 0.01
    noise = np.random.default_rng(1).normal(0, 1000, 16000).astype(np.int16)
    mixed = mix_noise(audio, noise, 10.0)
    s = audio.astype(np.float64)
    n = mixed.astype(np.float64) - s
    active = s[s != 0]
    assert n.std() > 0 and 5 < 10 * np.log10((active ** 2).mean() / (n ** 2).mean()) < 15


def test_eval_cli_json(tmp_path, speak):
    from hark.audio import write_wav
    from hark.cli import main

    pos, neg = tmp_path / "pos", tmp_path / "neg"
    write_wav(pos / "a.wav", np.concatenate([np.zeros(8000, np.int16), speak("Alexa.")]), 16000)
    write_wav(neg / "b.wav", speak("I would like a large coffee."), 16000)
    out = tmp_path / "r.json"
    assert main(["eval", "wake", "--positives", str(pos), "--negatives", str(neg),
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["detection_rate"] == 1.0 and res["false_accepts_per_hour"] == 0.0
    assert set(res["latency_ms"]) == {"p50", "p95"} and res["cpu_per_audio_s"] > 0


# -- augmentation, continuous streams, reports ----------------------------------------


def _tone(freq: float, seconds: float = 1.0, amp: float = 8000.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def _peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / 16000)[spec.argmax()])


def test_speed_perturbation_changes_length_and_pitch():
    x = _tone(500.0)
    for f in augment.SPEEDS:
        y = augment.speed_perturb(x, f)
        assert y.dtype == np.int16
        assert abs(len(y) - len(x) / f) < 50
        assert abs(_peak_hz(y) - 500.0 * f) < 5
    assert augment.speed_perturb(x, 1.0) is x
    with pytest.raises(ConfigError):
        augment.speed_perturb(x, 0.0)


def test_tempo_change_keeps_pitch():
    x = _tone(500.0, 2.0)
    for f in augment.TEMPOS:
        y = augment.tempo_change(x, f)
        assert y.dtype == np.int16
        assert abs(len(y) - len(x) / f) < 0.02 * len(x)
        assert abs(_peak_hz(y) - 500.0) < 5  # pitch kept, unlike speed perturbation
    with pytest.raises(ConfigError):
        augment.tempo_change(x, 3.0)


def test_gain_scales_and_clips():
    x = _tone(300.0, 0.2, 10000.0)
    quiet = augment.apply_gain(x, -20.0)
    assert abs(np.abs(quiet).max() - 1000) <= 2
    loud = augment.apply_gain(x, 12.0)
    assert loud.max() == 32767 and loud.min() == -32768


def test_parse_families_and_conditions():
    assert augment.parse_families("all") == augment.FAMILIES
    assert augment.parse_families("") == ()
    assert augment.parse_families("speed, noise,speed") == ("speed", "noise")
    with pytest.raises(ConfigError, match="unknown augmentation reverb"):
        augment.parse_families("speed,reverb")
    names = [c.name for c in augment.conditions(("speed", "noise"), (10.0,))]
    assert names == ["clean", "speed_0.9", "speed_0.95", "speed_1.05", "speed_1.1", "noise_10dB"]
    mixed = augment.mixed_condition(2, ("speed", "gain", "noise"), (20.0, 10.0))
    assert mixed.snr_db == 10.0 and mixed.randomize == ("speed", "gain")
    y, scale = augment.perturb_clip(_tone(400.0), mixed, np.random.default_rng(3))
    assert y.dtype == np.int16 and scale in (1.0,) + augment.SPEEDS


def test_concat_stream_and_locate():
    rng = np.random.default_rng(0)
    clips = [("a", np.ones(16000, np.int16), 1.0), ("b", np.ones(8000, np.int16), 1.1)]
    stream, segs = augment.concat_stream(clips, rng, gap_s=(0.1, 0.2))
    assert [s.file for s in segs] == ["a", "b"]
    assert 0.1 <= segs[0].start_s <= 0.2 and segs[0].end_s - segs[0].start_s == 1.0
    assert segs[1].start_s - segs[0].end_s >= 0.1
    assert len(stream) / 16000 == pytest.approx(segs[1].end_s)
    assert not stream[: int(segs[0].start_s * 16000)].any()  # a silent gap
    assert augment.locate(segs, segs[0].start_s + 0.5) == ("a", pytest.approx(0.5))
    # time inside a sped-up clip maps back to the original recording's seconds
    assert augment.locate(segs, segs[1].start_s + 0.2) == ("b", pytest.approx(0.22))
    # a time in the gap after a clip belongs to that clip (its end)
    assert augment.locate(segs, segs[0].end_s + 0.05) == ("a", pytest.approx(1.0))


def test_poisson_upper_bound():
    assert ev.poisson_upper(0) == pytest.approx(2.9957, abs=1e-3)  # the "rule of three"
    assert ev.poisson_upper(1) == pytest.approx(4.7439, abs=1e-3)
    assert ev.poisson_upper(5) == pytest.approx(10.5130, abs=1e-3)
    s = ev.rate_summary(0, 2.0)
    assert s["per_hour"] == 0.0 and s["per_hour_upper95"] == pytest.approx(1.498, abs=1e-3)


def test_trigger_sources_group_repeats():
    events = [{"file": "a.wav", "time_in_file_s": 2.9, "noise_at_s": 44.4},
              {"file": "a.wav", "time_in_file_s": 3.1},
              {"file": "b.wav", "time_in_file_s": 0.2, "noise_at_s": 44.36}]
    src = ev.trigger_sources(events)
    assert src["by_recording"] == {"a.wav@3s": 2, "b.wav@0s": 1}
    assert src["by_noise_position"] == {"noise@44s": 2}


def test_detections_on_a_trace_rule():
    scores = np.zeros(600, np.float32)
    scores[100:103] = 0.9  # 3 features above
    scores[150:160] = 0.95  # within the refractory period of the first
    scores[400:420] = 0.9
    assert ev.detections(scores, 0.87, 1.0) == [100, 400]
    assert ev.detections(scores, 0.87, 0.6) == [100, 400]  # blocked until feature 160
    assert ev.detections(scores, 0.87, 0.2) == [100, 150, 400]
    assert ev.detections(scores, 0.87, 0.1) == [100, 150, 400, 410]  # refires in a long run
    # confirm: the score must stay above for that many features
    assert ev.detections(scores, 0.87, 1.0, confirm=5) == [154, 404]
    assert ev.detections(scores, 0.92, 1.0, confirm=10) == [159]
    assert ev.detections(scores, 0.99, 1.0) == []


@pytest.fixture(scope="module")
def stream_clips(speak) -> list[tuple[str, np.ndarray]]:
    return [("coffee.wav", speak("I would like a large latte with two sugars, please.")),
            ("alexa.wav", speak("Alexa.")),
            ("weather.wav", speak("What is the weather like tomorrow in Paris?")),
            ("alexa2.wav", speak("Alexa, turn on the lights."))]


def test_continuous_stream_locates_detections_and_matches_trace(det, stream_clips):
    """One stream, no reset between files: the real detector's live detections land in
    the keyword files, and replaying its recorded score trace gives the same detections."""
    cond = augment.Condition("clean")
    run = ev.run_condition(det, stream_clips, cond, np.random.default_rng(1))
    assert det.scores is None  # recording switched off again
    # one score per 10 ms feature over the whole stream: the detector was never reset
    assert abs(len(run.scores) - run.audio_s / 0.01) <= 3
    files = sorted(e["file"] for e in run.events)
    assert files == ["alexa.wav", "alexa2.wav"]
    for e in run.events:
        assert 0.0 < e["time_in_file_s"] < 1.5 and e["score"] >= det.threshold
        assert e["peak_score"] >= e["score"]
    replay = ev.detections(run.scores, det.threshold, det.refractory_s, det.confirm)
    assert [round((i + 1) * 0.01, 2) for i in replay] == [e["time_in_stream_s"] for e in run.events]
    assert run.negative_s == pytest.approx(sum(len(a) for _, a in stream_clips) / 16000, abs=0.01)
    assert 0 < run.speech_s <= run.negative_s


def test_evaluate_streams_reaches_hours_min_with_noise(det, stream_clips):
    negatives = [c for c in stream_clips if "alexa" not in c[0]]
    noise = np.random.default_rng(2).normal(0, 3000, 16000 * 3).astype(np.int16)
    with pytest.raises(AudioError, match="noise"):
        ev.evaluate_streams(det, negatives, ("noise",), None)
    hours_min = 120 / 3600  # the base conditions hold ~70 s: random passes must fill the rest
    runs = ev.evaluate_streams(det, negatives, ("speed", "gain", "noise"), noise, (10.0,),
                               hours_min, seed=5)
    names = [r.condition.name for r in runs]
    assert names[:9] == ["clean", "speed_0.9", "speed_0.95", "speed_1.05", "speed_1.1",
                         "gain_-20dB", "gain_-10dB", "gain_+6dB", "noise_10dB"]
    assert names[9:] and all(n.startswith("mixed_") for n in names[9:])
    rep = ev.stream_report(runs, hours_min)
    assert rep["hours"] >= hours_min
    assert rep["hours"] == pytest.approx(sum(r["hours"] for r in rep["per_augmentation"].values()))
    assert rep["false_accepts"] == len(rep["events"]) == 0
    assert rep["per_hour"] == 0.0
    assert rep["per_hour_upper95"] == pytest.approx(2.9957 / rep["hours"], rel=1e-3)
    assert rep["continuous"] is True and rep["cpu_per_audio_s"] > 0
    assert 0 < rep["speech_hours"] < rep["hours"]
    assert rep["per_speech_hour_upper95"] == pytest.approx(2.9957 / rep["speech_hours"], rel=1e-3)
    # speed perturbation changes the duration heard; gain does not
    per = rep["per_augmentation"]
    assert per["speed_0.9"]["hours"] > per["clean"]["hours"] > per["speed_1.1"]["hours"]
    assert per["gain_-20dB"]["hours"] == pytest.approx(per["clean"]["hours"])


def _pos_run(name: str, peak: float) -> ev.StreamRun:
    scores = np.zeros(300, np.float32)
    scores[100:130] = peak  # a 300 ms plateau, like a spoken keyword
    return ev.StreamRun(augment.Condition("positive"), [augment.Segment(name, 0.5, 2.5)],
                        scores, [], 3.0, 0.0)


def test_cross_validation_and_sweep_fields(det, stream_clips):
    runs = [ev.run_condition(det, stream_clips, augment.Condition("clean"),
                             np.random.default_rng(0))]
    pos = [_pos_run("p1", 0.99), _pos_run("p2", 0.95), _pos_run("p3", 0.80), _pos_run("p4", 0.91)]
    rule = ev.Rule(0.87, det.refractory_s)
    cv = ev.cross_validate(pos, runs, rule)
    assert len(cv["folds"]) == 2 and cv["configured_threshold"] == 0.87
    for f in cv["folds"]:
        assert f["chosen_threshold"] in ev.THRESHOLD_GRID
        for part in ("train", "held_out", "held_out_at_configured"):
            assert {"threshold", "detection_rate", "false_accepts", "per_hour",
                    "per_hour_upper95", "hours"} <= set(f[part])
        # the two halves partition the files
        assert f["train"]["positives"] + f["held_out"]["positives"] == 4
        assert f["train"]["hours"] + f["held_out"]["hours"] == pytest.approx(
            runs[0].negative_s / 3600)
    a, b = ev.split_halves([r.segments[0].file for r in pos])
    assert a | b == {"p1", "p2", "p3", "p4"} and not a & b and len(a) == len(b) == 2
    sweep = ev.threshold_sweep(pos, runs, rule, (0.5, 0.9, 0.99))
    assert [s["detected"] for s in sweep] == [4, 3, 1]
    # the keyword files inside this "negative" stream count as false accepts
    assert sweep[0]["false_accepts"] >= 2 >= sweep[2]["false_accepts"]
    # confirm: the 300 ms plateaus survive 10 features, not 40
    assert ev.operating_point(pos, runs, ev.Rule(0.87, 1.0, confirm=10))["detected"] == 3
    assert ev.operating_point(pos, runs, ev.Rule(0.87, 1.0, confirm=40))["detected"] == 0


def test_positive_robustness_with_speed(det, speak):
    clips = [("a.wav", speak("Alexa."))]
    rob = ev.evaluate_positive_robustness(det, clips, speeds=(0.9, 1.1))
    assert set(rob) == {"speed_0.9", "speed_1.1"}
    assert all(r["positives"] == 1 and r["detected"] + len(r["missed"]) == 1
               for r in rob.values())


def test_eval_cli_augmented_json(tmp_path, speak, capsys):
    from hark.audio import write_wav
    from hark.cli import main

    pos, neg = tmp_path / "pos", tmp_path / "neg"
    write_wav(pos / "a.wav", np.concatenate([np.zeros(8000, np.int16), speak("Alexa.")]), 16000)
    write_wav(pos / "a2.wav", speak("Alexa, stop."), 16000)
    write_wav(neg / "b.wav", speak("I would like a large coffee."), 16000)
    write_wav(neg / "c.wav", speak("Could you play some jazz music?"), 16000)
    noise = tmp_path / "noise.wav"
    write_wav(noise, np.random.default_rng(0).normal(0, 2000, 32000).astype(np.int16), 16000)
    out = tmp_path / "r.json"
    assert main(["eval", "wake", "--positives", str(pos), "--negatives", str(neg),
                 "--augment", "speed,gain,noise", "--augment-noise", str(noise),
                 "--augment-snrs", "10", "--hours-min", "0.01", "--cv",
                 "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["positives"] == 2 and res["detection_rate"] == 1.0  # the plain evaluation
    aug = res["augmented_negatives"]
    assert aug["hours"] >= 0.01 and aug["hours_min"] == 0.01
    assert {"clean", "speed_1.1", "gain_+6dB", "noise_10dB"} <= set(aug["per_augmentation"])
    assert aug["false_accepts"] == len(aug["events"])
    assert aug["per_hour_upper95"] >= 2.99 / aug["hours"] - 1e-6
    assert set(res["positives_robustness"]) == {"speed_0.9", "speed_0.95", "speed_1.05",
                                                "speed_1.1", "noise_10dB"}
    assert len(res["cross_validation"]["folds"]) == 2
    assert len(res["threshold_sweep"]) > 3
    assert set(aug["sources"]) == {"by_recording", "by_noise_position"}
    assert sum(aug["sources"]["by_recording"].values()) == aug["false_accepts"]
    alone = res["noise_only"]
    assert set(alone) == {"gain_+0dB", "gain_+6dB"}
    assert all(v["hours"] == pytest.approx(2 / 3600) for v in alone.values())
    assert res["confirm"] == DEFAULT_CONFIRM
    capsys.readouterr()
    assert main(["eval", "wake", "--positives", str(pos), "--negatives", str(neg),
                 "--augment", "echo"]) == 1
    assert "unknown augmentation echo" in capsys.readouterr().err


def test_real_negatives_augmented_stream(det, testdata):
    """A short continuous stream of real coffee orders mixed with the real kitchen noise."""
    files = sorted((testdata / "coffee").glob("*.wav"))[:4]
    clips = ev.load_clips(files)
    noise = read_audio(testdata / "noise_kitchen.wav")
    runs = ev.evaluate_streams(det, clips, ("tempo", "noise"), noise, (10.0,), 0.0)
    assert [r.condition.name for r in runs] == ["clean", "tempo_0.9", "tempo_1.1", "noise_10dB"]
    rep = ev.stream_report(runs, 0.0)
    assert rep["hours"] > 0 and rep["speech_hours"] > 0
    for e in rep["events"]:  # any false accept is located in one of the files
        assert e["file"] in {f.name for f in files} and e["score"] >= det.threshold


def test_confirm_count_live_matches_replay(det, stream_clips):
    """A detector that needs the score held for k features fires exactly where the
    replay of its score trace says, for several k, and a long k suppresses keywords."""
    audio = np.concatenate([a for _, a in stream_clips])
    fired = {}
    try:
        for k in (1, 8, 60):
            det.confirm = k
            det.reset()
            det.scores = []
            live = [e.stream_s for i in range(0, len(audio), 320)
                    if (e := det.process(audio[i:i + 320])) is not None]
            fired[k] = live
            replay = ev.detections(np.array(det.scores), det.threshold, det.refractory_s, k)
            assert live == pytest.approx([(i + 1) * 0.01 for i in replay])
    finally:
        det.confirm, det.scores = DEFAULT_CONFIRM, None
    assert len(fired[1]) == len(fired[8]) == 2  # both spoken keywords survive 80 ms
    assert all(b - a == pytest.approx(0.07) for a, b in zip(fired[1], fired[8], strict=True))
    assert fired[60] == []  # nobody holds the score for 600 ms
    with pytest.raises(ConfigError, match="confirm"):
        WakeWordDetector("alexa", confirm=0)


def test_confirm_count_rejects_kitchen_transient(det, testdata):
    """The real kitchen noise alone (nobody speaking) holds a transient the model scores
    above the threshold for a few features: it false-accepts without the confirm count
    and not with the default one."""
    noise = read_audio(testdata / "noise_kitchen.wav")[: 16000 * 50]  # the first, at ~44 s
    assert det.confirm == DEFAULT_CONFIRM
    assert _hits(det, noise) == []
    det.confirm = 1
    try:
        assert _hits(det, noise)
    finally:
        det.confirm = DEFAULT_CONFIRM
