"""Silero VAD engine and the end-of-turn endpointer, through the real ONNX model and the
real Piper voice (plus a scripted fake VAD for the pure state-machine rules)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hark.audio import AudioChunk, frames, read_audio
from hark.config import Config
from hark.errors import AudioError, ModelError
from hark.vad.endpoint import Endpointer
from hark.vad.silero import FRAME_SAMPLES, SileroVad, load_vad

RATE = 16000
FRAME_S = FRAME_SAMPLES / RATE
T0 = 100.0  # monotonic time of the first sample fed
LEAD_S = 1.0  # silence before the speech


MODEL_FIXTURES = frozenset({"vad"})  # Silero VAD


@pytest.fixture(scope="module")
def vad(cfg) -> SileroVad:
    return load_vad(cfg)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * RATE), np.int16)


def speech_edges(audio: np.ndarray, rel: float = 0.01) -> tuple[float, float]:
    """Start and end (s) of the speech in a clean clip: first/last 10 ms window whose RMS
    is within 40 dB of the loudest window."""
    win = RATE // 100
    n = len(audio) // win
    rms = np.sqrt((audio[: n * win].astype(np.float64).reshape(n, win) ** 2).mean(axis=1))
    on = np.nonzero(rms > rms.max() * rel)[0]
    return on[0] * win / RATE, (on[-1] + 1) * win / RATE


def run(ep: Endpointer, audio: np.ndarray, chunk: int = 320, t0: float = T0):
    """Feed audio in chunks like a microphone; returns [(event, audio time when emitted)]."""
    out = []
    for c in frames(audio, chunk, RATE, t0):
        for e in ep.process(c):
            out.append((e, c.t + c.duration))
    return out


def kinds(events) -> list[str]:
    return [e.kind for e, _ in events]


# --- the engine ------------------------------------------------------------------------


def test_streaming_probabilities_match_faster_whisper_batch(vad, speak):
    """Frame-by-frame feeding (64-sample context + h/c state) gives exactly what
    faster-whisper's batched Silero call gives on the same audio."""
    from faster_whisper.vad import get_vad_model

    audio = np.concatenate([silence(0.5), speak("Set a timer for five minutes."), silence(0.5)])
    vad.reset()
    ours = vad.probabilities(audio)
    padded = np.zeros(len(ours) * FRAME_SAMPLES, np.float32)
    padded[: len(audio)] = audio / 32768.0
    ref = get_vad_model()(padded).reshape(-1)
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert ours[: int(0.4 / FRAME_S)].max() < 0.1  # leading silence
    assert np.median(ours[int(0.6 / FRAME_S): int(1.8 / FRAME_S)]) > 0.8  # speech


def test_reset_restores_initial_state(vad, speak):
    audio = speak("What time is it?")[:FRAME_SAMPLES * 10]
    vad.reset()
    first = vad.probabilities(audio)
    vad.reset()
    again = vad.probabilities(audio)
    np.testing.assert_array_equal(first, again)


def test_wrong_frame_size_is_a_clear_error(vad):
    with pytest.raises(AudioError, match="512"):
        vad.probability(np.zeros(480, np.int16))


def test_missing_vad_model_names_pull_command(tmp_path):
    cfg = Config()
    cfg.vad.model = str(tmp_path / "nope" / "silero.onnx")
    with pytest.raises(ModelError) as err:
        load_vad(cfg)
    assert "hark models pull" in str(err.value)


# --- the endpointer on real speech -------------------------------------------------------


@pytest.mark.parametrize("chunk", [320, 512, 1000])
def test_speech_start_and_end_at_the_speech_edges(vad, cfg, speak, chunk):
    """speech_end.t is the end of the speech in the audio (within two VAD frames), not
    the moment the silence timeout ran out; chunk size does not matter."""
    said = speak("What time is it?")
    start, end = speech_edges(said)
    ep = Endpointer(vad, cfg.vad)
    events = run(ep, np.concatenate([silence(LEAD_S), said, silence(1.5)]), chunk)
    assert kinds(events) == ["speech_start", "pause", "speech_end"]
    (ev_start, _), (ev_pause, _), (ev_end, at) = events
    assert abs(ev_start.t - (T0 + LEAD_S + start)) <= 2 * FRAME_S
    assert abs(ev_end.t - (T0 + LEAD_S + end)) <= 2 * FRAME_S
    assert ev_pause.t == ev_end.t
    # it fired once the silence after the speech reached the timeout (700 ms default)
    assert ev_end.silence_ms >= cfg.vad.eot_silence_ms
    assert at - ev_end.t == pytest.approx(cfg.vad.eot_silence_ms / 1000,
                                          abs=FRAME_S + chunk / RATE)
    assert ep.ended and run(ep, said) == []  # nothing more until reset


def test_utterance_holds_pre_roll_and_speech(vad, cfg, speak):
    said = speak("Set a timer for five minutes.")
    ep = Endpointer(vad, cfg.vad)
    events = run(ep, np.concatenate([silence(LEAD_S), said, silence(1.5)]))
    assert kinds(events)[-1] == "speech_end"
    utt = ep.utterance()
    onset_frame = round((events[0][0].t - T0) / FRAME_S)
    pre_frames = int(np.ceil(cfg.vad.pre_roll_ms / (FRAME_S * 1000)))
    lead = (onset_frame - pre_frames) * FRAME_SAMPLES
    # the utterance is the real audio from pre_roll before the onset: the whole sentence,
    # then the trailing silence up to where the endpointer stopped listening
    fed = np.concatenate([silence(LEAD_S), said])
    assert len(utt) >= len(fed) - lead
    np.testing.assert_array_equal(utt[: len(fed) - lead], fed[lead:])
    assert len(utt) - (len(fed) - lead) <= (cfg.vad.eot_silence_ms / 1000 + FRAME_S) * RATE
    # where the speech ends inside the utterance
    _, end = speech_edges(said)
    assert abs(ep.speech_samples - ((LEAD_S + end) * RATE - lead)) <= 2 * FRAME_SAMPLES



def test_spoken_ms_counts_from_the_onset_not_the_pre_roll(vad, cfg, speak):
    """The pipeline's 'speech long enough for partial decodes' rule reads spoken_ms: time
    since the speech onset, without the pre-roll the utterance also holds."""
    said = speak("Set a timer for five minutes.")
    ep = Endpointer(vad, cfg.vad)
    assert ep.spoken_ms == 0.0
    seen = []
    for c in frames(np.concatenate([silence(LEAD_S), said]), 320, RATE, T0):
        started = any(e.kind == "speech_start" for e in ep.process(c))
        if started:
            onset_s = ep.speech_start_t - T0
        if ep.spoken_ms:
            seen.append((c.t + c.duration - T0, ep.spoken_ms, len(ep.utterance())))
    at, spoken, utt_len = seen[-1]
    # measured from the onset, to the whole VAD frames processed so far
    assert abs(spoken / 1000 - (at - onset_s)) <= 2 * FRAME_S
    # shorter than the utterance by the pre-roll
    assert utt_len / RATE - spoken / 1000 == pytest.approx(cfg.vad.pre_roll_ms / 1000,
                                                           abs=2 * FRAME_S)
    # it never goes down while the person speaks
    assert all(b[1] >= a[1] for a, b in zip(seen, seen[1:]))

def test_silence_and_noise_give_no_speech(vad, cfg):
    rng = np.random.default_rng(7)
    ep = Endpointer(vad, cfg.vad)
    assert run(ep, silence(3.0)) == []
    hiss = rng.normal(0, 600, 3 * RATE).astype(np.int16)  # steady noise, about -35 dBFS
    assert run(ep, hiss) == []
    assert not ep.in_speech and len(ep.utterance()) == 0
    assert ep.silence_ms >= 5900


def test_kitchen_noise_gives_no_speech(vad, cfg, testdata):
    noise = read_audio(testdata / "noise_kitchen.wav")[: 20 * RATE]
    ep = Endpointer(vad, cfg.vad)
    assert [e.kind for e, _ in run(ep, noise, 640) if e.kind == "speech_start"] == []


def test_pause_then_resume(vad, cfg, speak):
    a, b = speak("Turn on the kitchen light."), speak("And the fan.")
    _, a_end = speech_edges(a)
    b_start, _ = speech_edges(b)
    gap = 0.45  # longer than speculative_ms, shorter than the end-of-turn timeout
    audio = np.concatenate([silence(LEAD_S), a, silence(gap), b, silence(1.2)])
    ep = Endpointer(vad, cfg.vad)
    events = run(ep, audio)
    assert kinds(events) == ["speech_start", "pause", "speech_resume", "pause", "speech_end"]
    pause, resume = events[1][0], events[2][0]
    assert abs(pause.t - (T0 + LEAD_S + a_end)) <= 2 * FRAME_S
    assert pause.silence_ms >= cfg.vad.speculative_ms
    assert abs(resume.t - (T0 + LEAD_S + len(a) / RATE + gap + b_start)) <= 2 * FRAME_S


def test_set_eot_ms_changes_when_the_turn_ends(vad, cfg, speak):
    a, b = speak("Turn on the kitchen light."), speak("And the fan.")
    _, a_end = speech_edges(a)
    audio = np.concatenate([silence(LEAD_S), a, silence(0.45), b, silence(1.2)])

    ep = Endpointer(vad, cfg.vad)  # default 700 ms: the 450 ms gap does not end the turn
    assert kinds(run(ep, audio)).count("speech_end") == 1
    assert ep.eot_ms == cfg.vad.eot_silence_ms

    ep.reset()
    events = []
    for c in frames(audio, 320, RATE, T0):
        for e in ep.process(c):
            events.append((e, c.t + c.duration))
            if e.kind == "speech_start":
                ep.set_eot_ms(cfg.vad.eot_short_ms)  # "the command looks complete"
    assert kinds(events) == ["speech_start", "pause", "speech_end"]
    end, at = events[-1]
    assert abs(end.t - (T0 + LEAD_S + a_end)) <= 2 * FRAME_S  # ended at the first gap
    assert at - end.t == pytest.approx(cfg.vad.eot_short_ms / 1000, abs=2 * FRAME_S)
    ep.reset()
    assert ep.eot_ms == cfg.vad.eot_silence_ms
    with pytest.raises(ValueError):
        ep.set_eot_ms(0)


def test_max_utterance_forces_the_end(vad, cfg, speak):
    short = dataclasses.replace(cfg.vad, max_utterance_s=1.0)
    said = speak("Please turn on the kitchen light and tell me what the weather will be "
                 "like tomorrow morning.")
    ep = Endpointer(vad, short)
    events = run(ep, np.concatenate([silence(LEAD_S), said, silence(1.0)]))
    assert kinds(events)[0] == "speech_start" and kinds(events)[-1] == "speech_end"
    _, at = events[-1]
    assert at - events[0][0].t == pytest.approx(1.0, abs=2 * FRAME_S)


def test_unknown_chunk_times_count_from_stream_start(vad, cfg, speak):
    said = speak("What time is it?")
    start, end = speech_edges(said)
    ep = Endpointer(vad, cfg.vad)
    events = []
    for c in frames(np.concatenate([silence(LEAD_S), said, silence(1.0)]), 480, RATE, 0.0):
        c.t = 0.0  # a source that does not know capture times
        events += ep.process(c)
    assert [e.kind for e in events] == ["speech_start", "pause", "speech_end"]
    assert abs(events[0].t - (LEAD_S + start)) <= 2 * FRAME_S
    assert abs(events[-1].t - (LEAD_S + end)) <= 2 * FRAME_S


def test_bad_audio_is_a_clear_error(vad, cfg):
    ep = Endpointer(vad, cfg.vad)
    with pytest.raises(AudioError, match="16000"):
        ep.process(AudioChunk(np.zeros(441, np.int16), rate=44100))
    assert ep.process(AudioChunk(np.zeros(0, np.int16))) == []


def test_real_recording_is_one_turn(vad, cfg, testdata):
    """A person's coffee order: one turn, ending before the recording's trailing quiet."""
    path = min((testdata / "coffee").glob("*.wav"))
    audio = read_audio(path)
    ep = Endpointer(vad, cfg.vad)
    events = run(ep, np.concatenate([audio, silence(1.5)]))
    assert kinds(events)[0] == "speech_start"
    assert "speech_end" in kinds(events)
    end = next(e for e, _ in events if e.kind == "speech_end")
    assert T0 < end.t <= T0 + len(audio) / RATE + FRAME_S


# --- state-machine rules with a scripted VAD ----------------------------------------------


class ScriptedVad:
    """Returns the given probabilities, one per frame (then 0)."""

    frame_samples = FRAME_SAMPLES

    def __init__(self, probs: list[float]):
        self.probs = list(probs)
        self.i = 0

    def probability(self, frame: np.ndarray) -> float:
        p = self.probs[self.i] if self.i < len(self.probs) else 0.0
        self.i += 1
        return p

    def reset(self) -> None:
        self.i = 0


def scripted_events(probs: list[float], cfg: Config):
    ep = Endpointer(ScriptedVad(probs), cfg.vad)
    n = len(probs) * FRAME_SAMPLES
    return ep, [(e.kind, round((e.t - T0) / FRAME_S)) for e in
                ep.process(AudioChunk(np.zeros(n, np.int16), RATE, T0))]


def test_hysteresis_keeps_speech_between_thresholds(cfg):
    # 0.4 is between neg_threshold (0.35) and threshold (0.5): it continues speech that
    # has started but does not start it
    probs = [0.4] * 5 + [0.9] * 4 + [0.4] * 10 + [0.1] * 30
    _, events = scripted_events(probs, cfg)
    # speech starts at frame 5 once min_speech_ms (96 ms = 3 frames) has passed; the 0.4
    # frames count as speech, so speech ends at the end of frame 18
    assert events == [("speech_start", 5), ("pause", 19), ("speech_end", 19)]


def test_short_blips_are_not_speech(cfg):
    probs = [0.9, 0.9, 0.1, 0.1, 0.9, 0.1] + [0.0] * 40  # 64 ms < min_speech_ms
    ep, events = scripted_events(probs, cfg)
    assert events == [] and len(ep.utterance()) == 0


def test_pre_roll_is_bounded_while_idle(cfg):
    probs = [0.0] * 200 + [0.9] * 5 + [0.0] * 40
    ep, events = scripted_events(probs, cfg)
    assert events[0] == ("speech_start", 200)
    frame_ms = FRAME_S * 1000
    pre = int(np.ceil(cfg.vad.pre_roll_ms / frame_ms))
    tail = int(np.ceil(cfg.vad.eot_silence_ms / frame_ms))  # listened until speech_end
    assert len(ep.utterance()) == (pre + 5 + tail) * FRAME_SAMPLES


def test_cli_vad_events(speak, tmp_path, capsys):
    from hark.audio import write_wav
    from hark.cli import main

    wav = write_wav(tmp_path / "cmd.wav", np.concatenate([silence(0.5), speak("Stop.")]), RATE)
    assert main(["vad", "events", str(wav)]) == 0
    out = capsys.readouterr().out
    assert "speech_start" in out and "speech_end" in out and "ms per 32 ms frame" in out
