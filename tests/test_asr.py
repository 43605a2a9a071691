"""Whisper (faster-whisper, tiny.en int8) and the LocalAgreement-2 streaming transcriber,
through the real model and the real Piper voice (plus a scripted engine for the pure
agreement rules)."""

from __future__ import annotations

import itertools
import os
import sys
import json
import re

import numpy as np
import pytest

from hark.asr.base import AsrEngine
from hark.asr.streaming import StreamingTranscriber, common_prefix, norm_word
from hark.asr.whisper import WhisperAsr, load_asr, load_idle_asr
from hark.audio import read_audio
from hark.config import Config
from hark.errors import AudioError, ModelError

RATE = 16000
NUMBERS = {"1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
           "7": "seven", "8": "eight", "9": "nine", "10": "ten", "12": "twelve"}


MODEL_FIXTURES = frozenset({"asr"})  # Whisper


def words(text: str) -> list[str]:
    """Case, punctuation and digit-insensitive words."""
    ws = re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()
    return [NUMBERS.get(w, w) for w in ws]


@pytest.fixture(scope="module")
def asr(cfg) -> WhisperAsr:
    engine = load_asr(cfg)
    engine.warm_up()
    return engine


def padded(audio: np.ndarray, before: float = 0.3, after: float = 0.5) -> np.ndarray:
    return np.concatenate([np.zeros(int(before * RATE), np.int16), audio,
                           np.zeros(int(after * RATE), np.int16)])


# --- whole-utterance decoding ------------------------------------------------------------


@pytest.mark.parametrize("sentence", ["What time is it?", "Set a timer for five minutes."])
def test_transcribes_spoken_commands(asr, speak, sentence):
    assert words(asr.transcribe(padded(speak(sentence)))) == words(sentence)


def test_float_audio_and_confidence(asr, speak):
    audio = padded(speak("Turn on the kitchen light."))
    result = asr.decode(audio.astype(np.float32) / 32768.0)
    assert words(result.text) == words("turn on the kitchen light")
    assert result.no_speech_prob < 0.5 and result.avg_logprob > -1.0
    assert result.audio_s == pytest.approx(len(audio) / RATE)


def test_engine_implements_the_protocol(asr):
    engine: AsrEngine = asr
    assert engine.transcribe(np.zeros(RATE, np.int16)) == ""


def test_empty_short_silent_and_noise_give_nothing(asr):
    rng = np.random.default_rng(3)
    assert asr.transcribe(np.zeros(0, np.int16)) == ""
    assert asr.transcribe(rng.normal(0, 2000, 400).astype(np.int16)) == ""  # 25 ms
    assert asr.transcribe(np.zeros(3 * RATE, np.int16)) == ""
    assert asr.transcribe(rng.normal(0, 300, 2 * RATE).astype(np.int16)) == ""  # hiss
    t = np.arange(2 * RATE) / RATE
    assert asr.transcribe((2000 * np.sin(2 * np.pi * 50 * t)).astype(np.int16)) == ""  # hum


def test_kitchen_noise_gives_nothing(asr, testdata):
    noise = read_audio(testdata / "noise_kitchen.wav")
    for start in (0, 40, 80):
        assert asr.transcribe(noise[start * RATE:(start + 3) * RATE]) == ""


def test_bad_audio_is_a_clear_error(asr):
    with pytest.raises(AudioError):
        asr.transcribe(np.zeros((2, RATE), np.int16))
    with pytest.raises(AudioError):
        asr.transcribe(np.zeros(RATE, np.int32))


def test_real_coffee_order(asr, testdata):
    """A real person's recorded order: the drink and its slot words come through."""
    labels = json.loads((testdata / "coffee" / "labels.json").read_text())
    name = "0c6a26aa-bc20-4c64-960a-9162b5f81925.wav"  # "drip coffee, a lot of milk, ..."
    heard = words(asr.transcribe(read_audio(testdata / "coffee" / name)))
    for value in labels[name]["slots"].values():
        assert " ".join(words(value)) in " ".join(heard)


def test_missing_model_path_names_pull_command(tmp_path):
    cfg = Config()
    cfg.asr.model = str(tmp_path / "no-such-model")
    with pytest.raises(ModelError) as err:
        load_asr(cfg)
    assert "hark models pull" in str(err.value)


def test_catalogue_model_not_pulled_names_pull_command(tmp_path):
    cfg = Config(home_dir=str(tmp_path))
    with pytest.raises(ModelError) as err:
        load_asr(cfg)
    assert "hark models pull whisper-tiny.en" in str(err.value)


def test_folder_that_is_not_a_model_is_a_model_error(tmp_path):
    cfg = Config()
    cfg.asr.model = str(tmp_path)
    with pytest.raises(ModelError) as err:
        load_asr(cfg)
    assert "hark models pull" in str(err.value)


# --- streaming -------------------------------------------------------------------------


def stream(st: StreamingTranscriber, audio: np.ndarray, step_s: float = 0.32,
           first_s: float = 0.6) -> list:
    """Feed growing prefixes like the pipeline does every partial_interval_ms."""
    out = []
    n = int(first_s * RATE)
    while n < len(audio):
        out.append(st.update(audio[:n]))
        n += int(step_s * RATE)
    return out


def test_streaming_commits_a_stable_prefix_and_finalizes(asr, cfg, speak):
    sentence = "Set a timer for five minutes."
    audio = padded(speak(sentence), after=0.3)
    st = StreamingTranscriber(asr, cfg.asr)
    partials = stream(st, audio)
    committed = [p.stable.split() for p in partials]
    for before, after in itertools.pairwise(committed):
        assert after[: len(before)] == before  # committed words never change
    for p in partials:
        assert not p.is_final and p.text.split()[: len(p.stable.split())] == p.stable.split()
    assert committed[-1], "nothing was committed before the end of the utterance"
    assert words(" ".join(committed[-1])) == words(sentence)[: len(committed[-1])]
    final = st.finalize(audio)
    assert final.is_final and final.stable == final.text
    assert words(final.text) == words(sentence)
    st.reset()
    assert st.text == "" and st.update(audio[:1000]).text == ""  # too short to decode


def test_final_reuses_a_partial_pass_that_heard_all_the_speech(asr, cfg, speak):
    said = speak("What time is it?")
    audio = padded(said, before=0.3, after=0.6)
    speech_end = int(0.3 * RATE) + len(said)
    st = StreamingTranscriber(asr, cfg.asr)
    stream(st, audio)  # the last pass covers the speech plus >= 0.1 s of silence
    passes = st.passes
    final = st.finalize(audio, speech_samples=speech_end)
    assert st.reused_final and st.passes == passes  # no second decode
    assert words(final.text) == words("what time is it")
    # a pass that stopped before the end of speech is not reused
    st.reset()
    stream(st, audio[: speech_end - RATE // 4])
    passes = st.passes
    final = st.finalize(audio, speech_samples=speech_end)
    assert not st.reused_final and st.passes == passes + 1
    assert words(final.text) == words("what time is it")


def test_streaming_silence_gives_empty_final(asr, cfg):
    st = StreamingTranscriber(asr, cfg.asr)
    quiet = np.zeros(2 * RATE, np.int16)
    assert all(p.text == "" for p in stream(st, quiet))
    assert st.finalize(quiet).text == ""
    assert st.finalize(np.zeros(0, np.int16)).text == ""


class ScriptedAsr:
    """Returns the given hypotheses in turn."""

    def __init__(self, hypotheses: list[str]):
        self.hypotheses = list(hypotheses)

    def transcribe(self, samples: np.ndarray, prompt: str = "") -> str:
        return self.hypotheses.pop(0)


def run_scripted(hypotheses: list[str]) -> tuple[StreamingTranscriber, list[str]]:
    st = StreamingTranscriber(ScriptedAsr(hypotheses))
    audio = np.zeros(RATE, np.int16)
    return st, [st.update(audio).stable for _ in hypotheses]


def test_local_agreement_commits_the_common_prefix():
    st, stables = run_scripted([
        "turn",
        "turn on the",
        "Turn on the kitch",
        "turn on the kitchen",
        "turn on the kitchen",
        "turn on the kitchen light.",
    ])
    # a word is committed once two consecutive passes agree on it, unless it is the
    # newest pass's last word (the audio may have cut it off: "kitch") and Whisper did
    # not end the sentence there
    assert stables == ["", "turn", "turn on the", "turn on the", "turn on the",
                       "turn on the kitchen"]
    assert st.text == "turn on the kitchen light."
    st.engine.hypotheses.append("Turn on the kitchen lights.")
    final = st.finalize(np.zeros(RATE, np.int16))  # one fresh whole-utterance decode
    assert final.is_final and final.text == final.stable == "Turn on the kitchen lights."


def test_sentence_end_commits_the_last_word():
    _, stables = run_scripted(["what time is it?", "What time is it?"])
    assert stables == ["", "What time is it?"]
    # trailing off is not an end
    _, stables = run_scripted(["a lot of...", "a lot of..."])
    assert stables == ["", "a lot"]


def test_a_revised_committed_word_does_not_shift_the_rest():
    st, stables = run_scripted([
        "set a timer for",
        "set a timer for five",
        "set the timer for five minutes",  # re-hears "a" as "the"
        "set the timer for five minutes.",
    ])
    assert stables[1] == "set a timer for"
    assert stables[-1] == "set a timer for five minutes."
    assert st.text == "set a timer for five minutes."


def test_word_helpers():
    assert norm_word("Light.") == "light" and norm_word("what's") == "what's"
    assert common_prefix(["Turn", "on", "the"], ["turn", "on,", "a"]) == 2


def test_cli_asr_transcribe(speak, tmp_path, capsys):
    from hark.audio import write_wav
    from hark.cli import main

    wav = write_wav(tmp_path / "cmd.wav", padded(speak("What time is it?")), RATE)
    assert main(["asr", "transcribe", str(wav)]) == 0
    out = capsys.readouterr().out
    assert "what time is it" in out.lower() and "decode median" in out


@pytest.mark.parametrize(("text", "no_speech", "logprob", "kept"), [
    ("Thank you.", 0.45, -0.3, False),  # classic filler on near-silence: dropped
    (" you", 0.05, -0.9, False),
    ("Thank you.", 0.02, -0.15, True),  # said clearly: kept
    ("Turn on the light.", 0.45, -0.3, True),  # not a filler: kept
])
def test_filler_hallucinations_dropped_only_when_unsure(asr, monkeypatch, text, no_speech,
                                                        logprob, kept):
    from types import SimpleNamespace

    seg = SimpleNamespace(text=text, no_speech_prob=no_speech, avg_logprob=logprob)
    monkeypatch.setattr(asr.model, "transcribe", lambda audio, **kw: ([seg], None))
    audio = np.random.default_rng(0).normal(0, 1000, RATE).astype(np.int16)
    assert asr.transcribe(audio) == (text.strip() if kept else "")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_idle_engine_computes_in_the_idle_class_and_transcribes(cfg, speak):
    """The partial-transcript engine's CTranslate2 threads (its worker and the OpenMP
    team it starts) are all in SCHED_IDLE, and it hears what the main engine hears."""
    said = speak("What time is it?")  # Piper's own threads start before the snapshot
    before = set(os.listdir("/proc/self/task"))
    engine, res = load_idle_asr(cfg)
    assert res.ok, res
    assert engine is not None
    text = engine.transcribe(said)
    assert words(text) == ["what", "time", "is", "it"]
    policies = {}
    for tid in set(os.listdir("/proc/self/task")) - before:
        try:
            policies[tid] = os.sched_getscheduler(int(tid))
        except ProcessLookupError:  # the short-lived thread that built it has exited
            pass
    assert policies  # at least the model's worker thread
    assert set(policies.values()) == {os.SCHED_IDLE}, policies
    # the thread that built it came back unchanged: this one is still ordinary
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
