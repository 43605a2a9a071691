"""The home_core grammar domain: common home commands heard straight from speech.

Real pocketsphinx on Piper speech, with the default config's home (kitchen light,
living room, ...) plus the coffee domain listening at the same time, as the Assistant
loads them (``SpeechIntentRecognizer(load_domains(cfg))``)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from hassil import Intents

from hark.asr.grammar import build_jsgf
from hark.config import Config
from hark.nlu.domain_files import BUILTIN_DOMAINS_DIR, load_domain
from hark.nlu.speech_intent import (
    Limits,
    SpeechIntentRecognizer,
    load_domains,
    result_domain,
)

HOME_CORE = BUILTIN_DOMAINS_DIR / "home_core.yaml"


MODEL_FIXTURES = frozenset({"recognizer"})  # pocketsphinx


@pytest.fixture(scope="module")
def domains():
    return load_domains(Config())


@pytest.fixture
def recognizer(domains):
    """A fresh recognizer per test (0.3 s to build): pocketsphinx adapts its cepstral
    mean across utterances, so a shared one would make results depend on test order."""
    return SpeechIntentRecognizer(domains)


def padded(audio: np.ndarray) -> np.ndarray:
    """Silence either side, as a microphone stream cut by a VAD would have."""
    return np.concatenate([np.zeros(4800, np.int16), audio, np.zeros(4800, np.int16)])


# --- loading ---------------------------------------------------------------------------

def test_default_domains_are_the_users_plus_home_core(domains):
    assert [d.name for d in domains] == ["coffee", "home_core"]
    home = domains[1]
    # the home's lists from cfg.home are filled in, so no slot_lists argument is needed
    names = {v.value_out for v in home.intents.slot_lists["name"].values}
    assert {"kitchen light", "ceiling fan", "tv"} <= names
    assert "living room" in {v.value_out for v in home.intents.slot_lists["area"].values}


def test_grammar_domains_are_configurable():
    cfg = Config()
    cfg.nlu.grammar_domains = []
    assert [d.name for d in load_domains(cfg)] == ["coffee"]
    cfg.nlu.builtin_domains = []
    cfg.nlu.grammar_domains = ["home_core", "no_such_domain"]  # logged, skipped
    assert [d.name for d in load_domains(cfg)] == ["home_core"]


@pytest.mark.models
def test_text_stage_does_not_load_home_core():
    """The intent stage answers these sentences from local.yaml / Home Assistant's
    sentences as before: home_core adds no second, conflicting match."""
    from hark.nlu.recognizer import load_nlu

    stage = load_nlu(Config())
    assert "home_core" not in [m.domain for m in stage.matchers]
    result = stage.recognize("turn on the kitchen light")
    assert result is not None and result.domain == "homeassistant"
    assert result.slots == {"name": "kitchen light"}


def test_home_core_intents_are_the_handlers_intents():
    domain = load_domain(HOME_CORE)
    assert set(domain.intent_names) == {
        "HassGetCurrentTime", "HassGetCurrentDate", "HassStartTimer", "HassCancelTimer",
        "HassCancelAllTimers", "HassTimerStatus", "HassTurnOn", "HassTurnOff",
        "HassNevermind", "HassSetVolume"}
    assert result_domain("HassTurnOn", "home_core") == "homeassistant"
    assert result_domain("HarkRepeat", "home_core") == "hark"
    assert result_domain("orderDrink", "coffee") == "coffee"


def test_word_internal_choices_become_whole_words():
    intents = Intents.from_dict({
        "language": "en",
        "intents": {"T": {"data": [{"sentences": ["set {n} minute[s] timer",
                                                  "start a {n}( |-)second timer"]}]}},
        "lists": {"n": {"range": {"from": 1, "to": 2}}},
    })
    jsgf = build_jsgf(intents).jsgf
    assert "set <list_n> ( minutes | minute ) timer" in jsgf
    assert "start a <list_n> second timer" in jsgf  # "( |-)" is nothing to say


# --- hearing commands --------------------------------------------------------------------

COMMANDS = [
    ("what time is it", "HassGetCurrentTime", {}),
    ("what's the date", "HassGetCurrentDate", {}),
    ("set a timer for five minutes", "HassStartTimer", {"minutes": 5}),
    ("set a timer for two hours and twenty minutes", "HassStartTimer",
     {"hours": 2, "minutes": 20}),
    ("cancel the timer", "HassCancelTimer", {}),
    ("how much time is left on my timer", "HassTimerStatus", {}),
    ("turn on the kitchen light", "HassTurnOn", {"name": "kitchen light"}),
    ("turn off the kitchen light", "HassTurnOff", {"name": "kitchen light"}),
    ("turn on the lights in the living room", "HassTurnOn",
     {"area": "living room", "domain": "light"}),
    ("stop", "HassNevermind", {}),
    ("never mind", "HassNevermind", {}),
    ("set the volume to 5", "HassSetVolume", {"volume": 5}),
]


@pytest.mark.parametrize("text,intent,slots", COMMANDS, ids=[c[0] for c in COMMANDS])
def test_hears_piper_commands(recognizer, speak, text, intent, slots):
    result = recognizer.recognize(padded(speak(text)))
    assert result is not None, recognizer.last
    assert (result.name, result.slots) == (intent, slots)
    assert result.source == "grammar"
    assert result.domain in ("homeassistant", "hark")  # answered by hark's own handlers
    assert recognizer.last.accepted


def test_heard_commands_reach_the_local_handlers(recognizer, speak):
    from hark.nlu.handlers import IntentHandlers

    handlers = IntentHandlers(Config(), now=lambda: datetime(2026, 11, 25, 15, 4))
    try:
        heard = recognizer.recognize(padded(speak("what time is it")))
        assert heard is not None
        assert handlers.handle(heard).text == "It's 3:04 PM."
        heard = recognizer.recognize(padded(speak("set a timer for five minutes")))
        assert heard is not None
        assert handlers.handle(heard).text == "Timer set for 5 minutes."
        assert len(handlers.timers.active()) == 1
    finally:
        handlers.close()


def test_names_come_from_the_configured_home(speak):
    cfg = Config()
    cfg.home.entities = [{"name": "porch light", "domain": "light", "area": "garden"}]
    cfg.home.areas = ["garden"]
    rec = SpeechIntentRecognizer(load_domains(cfg))
    assert "porch light" in rec.grammar.jsgf and "kitchen light" not in rec.grammar.jsgf
    result = rec.recognize(padded(speak("turn on the porch light")))
    assert result is not None, rec.last
    assert (result.name, result.slots) == ("HassTurnOn", {"name": "porch light"})


def test_streaming_in_network_frames(recognizer, speak):
    audio = padded(speak("set a timer for five minutes"))
    recognizer.start()
    for i in range(0, len(audio), 320):  # 20 ms frames, as a satellite sends them
        recognizer.feed(audio[i:i + 320])
    result = recognizer.finish()
    assert result is not None and result.slots == {"minutes": 5}
    assert recognizer.finish_ms > 0


# --- rejecting everything else ------------------------------------------------------------

QUESTIONS = [
    "why is the sky blue",
    "what is the capital of France",
    "who wrote Romeo and Juliet",
    "how far away is the moon",
    "tell me a fun fact about cats",
    "what time does the store close on sundays",
]


@pytest.mark.parametrize("text", QUESTIONS)
def test_rejects_open_questions(recognizer, speak, text):
    assert recognizer.recognize(padded(speak(text))) is None, recognizer.last
    assert not recognizer.last.accepted and recognizer.last.reason


def test_domain_limits_decide(domains, speak):
    """Limits are per domain: impossible ones for home_core reject its commands only."""
    strict = SpeechIntentRecognizer(domains, domain_limits={"home_core": Limits(ratio=9.0)})
    assert strict.recognize(padded(speak("what time is it"))) is None
    assert "fits the templates poorly" in strict.last.reason
    order = strict.recognize(padded(speak("may I have an espresso")))
    assert order is not None and order.domain == "coffee"
    assert order.slots == {"coffeeDrink": "espresso"}


def test_peek_at_a_pause_answers_like_finish(recognizer, speak):
    """peek() checks the searches so far without ending the utterance (the pipeline's
    guess at a pause); a question still does not pass for a command."""
    assert recognizer.peek() is None and recognizer.peeked is None  # nothing started
    for text, expected in [("turn on the kitchen light", ("HassTurnOn",
                                                          {"name": "kitchen light"})),
                           ("what is the capital of France", None)]:
        audio = padded(speak(text))
        recognizer.start()
        for i in range(0, len(audio), 512):
            recognizer.feed(audio[i:i + 512])
        peeked = recognizer.peek()
        assert recognizer.peeked is not None
        final = recognizer.finish()
        if expected is None:
            assert peeked is None and final is None
            assert recognizer.peeked.reason
        else:
            assert peeked is not None and final is not None
            assert (peeked.name, peeked.slots) == (final.name, final.slots) == expected


def test_spoken_timer_command_runs_when_it_fires_and_is_announced(assistant, speak):
    """A whole spoken turn through the real Assistant: "turn off the kitchen light in two
    seconds" sets a timer; when it fires, the command runs through the home
    handler (the dry run: no Home Assistant configured) and the notification says what
    was done."""
    import asyncio

    from hark.audio import frames, paced
    from hark.nlu.handlers import DryRunHomeHandler
    from hark.pipeline.events import IntentEvent, TranscriptEvent, TurnEnd

    home = assistant.handlers.home
    assert isinstance(home, DryRunHomeHandler)
    before = len(home.calls)
    said: list[str] = []
    assistant.on_notify(lambda session, text: said.append(text))

    async def run():
        # the delay last: Piper's sentence-initial "In" is sometimes heard as "and"
        # (the pause after such an opening is the test below's subject)
        audio = speak("Turn off the kitchen light in two seconds.")
        pad = np.zeros(8000, np.int16)
        mic = paced(frames(np.concatenate([pad, audio, np.zeros(24000, np.int16)]), 512),
                    realtime=True)
        events = [ev async for ev in assistant.run_turn(mic)]
        for _ in range(100):  # the timer fires 2 s after the reply started
            if said:
                break
            await asyncio.sleep(0.1)
        return events

    events = asyncio.run(run())
    assert isinstance(events[-1], TurnEnd) and events[-1].error is None, events[-1]
    intent = [e.intent for e in events if isinstance(e, IntentEvent)][-1]
    trace = events[-1].trace
    what = ([e.transcript.text for e in events if isinstance(e, TranscriptEvent)],
            trace.info, {k: round(v - trace.marks["speech_start"], 3)
                         for k, v in trace.marks.items()})
    assert intent is not None and intent.name == "HassStartTimer", (intent, what)
    assert intent.slots.get("seconds") == 2
    assert "kitchen light" in intent.slots.get("conversation_command", "")
    assert said == ["It's been 2 seconds. Turning off the kitchen light."]
    assert [(c.name, c.slots) for c in home.calls[before:]] == [
        ("HassTurnOff", {"name": "kitchen light"})]


def test_a_pause_after_the_opening_words_does_not_end_the_turn(assistant, speak):
    """"In two seconds, ... turn off the kitchen light" with a 0.4 s pause after
    the comma: the speculative transcript at the pause ("In two seconds.") is not a
    finished request, so the turn waits and the whole command is heard. (Its full stop
    once counted as a complete sentence and ended the turn 350 ms into the pause.)"""
    import asyncio

    from hark.audio import frames, paced
    from hark.pipeline.events import TranscriptEvent, TurnEnd

    async def run():
        pad = np.zeros(8000, np.int16)
        audio = np.concatenate([pad, speak("In two seconds,"), np.zeros(3200, np.int16),
                                speak("turn off the kitchen light."), np.zeros(24000, np.int16)])
        mic = paced(frames(audio, 512), realtime=True)
        return [ev async for ev in assistant.run_turn(mic)]

    events = asyncio.run(run())
    assistant.handlers.timers.cancel_all()  # not left to fire into other tests
    end = events[-1]
    assert isinstance(end, TurnEnd) and end.error is None, end
    # the work started at the pause was thrown away when the person went on
    assert end.trace.info.get("speculative_discarded", 0) >= 1, (end.trace.info, end.transcript, {k: round(v - end.trace.marks["speech_start"], 3) for k, v in end.trace.marks.items()})
    # and the turn's transcript is the whole sentence, not its opening words
    heard = [e.transcript.text for e in events if isinstance(e, TranscriptEvent)]
    assert "kitchen light" in end.transcript.lower(), (end.transcript, heard)
