"""Never a wrong action: the guard's verdict on what was heard and what it was taken for.

The intents below are what the recognizer returned for these texts (its source says how:
a template, a fuzzy-corrected name, the paraphrase fallback)."""

from __future__ import annotations

import pytest

from hark.nlu.base import IntentResult
from hark.nlu.guard import CANT_CHECK, DIDNT_CATCH, Confirmations, review
from hark.nlu.home import Area, Entity, Home

HOME = Home(
    areas=[Area("bedroom"), Area("kitchen"), Area("living room", aliases=["lounge"])],
    entities=[Entity("kitchen light", "light", "kitchen"),
              Entity("living room lamp", "light", "living room"),
              Entity("ceiling fan", "fan", "bedroom"),
              Entity("garage door", "cover", "garage"),
              Entity("bedroom blinds", "cover", "bedroom"),
              Entity("thermostat", "climate", "living room"),
              Entity("front door lock", "lock", "hallway")],
)


def I(intent: str, source: str = "hassil", **slots) -> IntentResult:  # noqa: E743
    return IntentResult(intent, slots, source=source)


CASES = [
    # templates matched the words: act
    ("turn on the kitchen light", I("HassTurnOn", name="kitchen light"), "act", ""),
    ("close the bedroom", I("HassTurnOff", area="bedroom", domain="cover"), "act", ""),
    ("what time is it", I("HassGetCurrentTime"), "act", ""),
    # read-only intents act whatever their source
    ("is the garage door open", I("HassGetState", "embedding", name="garage door"), "act", ""),
    # the paraphrase fallback filled a device class nobody said: never close the covers
    ("turn off my life in the bedroom",
     I("HassTurnOff", "embedding", area="bedroom", domain="cover"),
     "clarify", "Sorry, what should I turn off in the bedroom?"),
    ("turn off the bedroom", I("HassTurnOff", "embedding", area="bedroom", domain="cover"),
     "clarify", "Sorry, what should I turn off in the bedroom?"),
    # ... or a device or an area nobody said
    ("switch off the thing", I("HassTurnOff", "embedding", name="ceiling fan"),
     "clarify", DIDNT_CATCH),
    ("lights off please", I("HassTurnOff", "embedding", area="kitchen", domain="light"),
     "clarify", DIDNT_CATCH),
    # the paraphrase fallback, every slot in the words: act
    ("kill the lights in the kitchen",
     I("HassTurnOff", "embedding", area="kitchen", domain="light"), "act", ""),
    ("lounge lamp on", I("HassTurnOn", "embedding", area="living room", domain="light"),
     "act", ""),
    ("thermostat 70", I("HassClimateSetTemperature", "embedding", name="thermostat",
                        temperature=70), "act", ""),
    # every device of a class from a guess ("switch off the living room lamp" misheard)
    ("switch off and leaving room lamp", I("HassTurnOff", "embedding", domain="light"),
     "clarify", "Sorry, which light?"),
    ("lights off", I("HassTurnOff", domain="light"), "act", ""),  # a template: all of them
    # a name heard not quite right, and no word for the action: ask
    ("leaving room lamp", I("HassTurnOn", "fuzzy", name="living room lamp"),
     "confirm", "The living room lamp?"),
    ("ceiling fan", I("HassTurnOn", "embedding", name="ceiling fan"),
     "confirm", "The ceiling fan?"),
    # an area and a class with no such device in this home: nothing to act on
    ("turn on the lights in the garage", I("HassTurnOn", area="garage", domain="light"),
     "clarify", "There's no light in the garage."),
    ("open the kitchen curtains",
     I("HassTurnOn", area="kitchen", domain="cover", device_class="curtain"),
     "clarify", "There's no curtain in the kitchen."),
    # a device's class implied by the action's word ("unlock" the front door lock)
    ("unlock the front door", I("HassTurnOff", "fuzzy", name="front door lock"), "act", ""),
    # a sound-alike of a name: asked, not acted on
    ("open the garbage door", I("HassTurnOn", "fuzzy", name="garage door"),
     "confirm", "The garage door?"),
    ("turn off the living room lamb", I("HassTurnOff", "fuzzy", name="living room lamp"),
     "confirm", "The living room lamp?"),
    # a timer from the paraphrase fallback, but no word names a timer ("set a timer for
    # ten minutes" heard as "so time at 14 minutes")
    ("so time at 14 minutes", I("HassStartTimer", "embedding", minutes=14),
     "clarify", DIDNT_CATCH),
    ("timer 10 minutes", I("HassStartTimer", "embedding", minutes=10), "act", ""),
    # no intent, but a command's words: say so, never the LLM
    ("we chundely the room lamp", None, "clarify", DIDNT_CATCH),
    ("Turn off the T-ME", None, "clarify", DIDNT_CATCH),
    ("turn on the", None, "clarify", DIDNT_CATCH),
    ("Can't solve my timer", None, "clarify", DIDNT_CATCH),
    ("Center timer for 10 minutes", None, "clarify", DIDNT_CATCH),
    ("open the garage", None, "clarify", DIDNT_CATCH),
    ("um", None, "clarify", DIDNT_CATCH),
    (".", None, "clarify", DIDNT_CATCH),
    # a device's state the home cannot tell: not the LLM's to invent
    ("is the front door locked", None, "cant_check", CANT_CHECK),
    ("are the lights on in the lounge", None, "cant_check", CANT_CHECK),
    ("what's the temperature in the kitchen", None, "cant_check", CANT_CHECK),
    # questions and conversation, even with home words: the LLM
    ("why is the sky blue", None, "llm", ""),
    ("is it cheaper to leave the lights on all day", None, "llm", ""),
    ("what is a thermostat", None, "llm", ""),
    ("the kitchen is a mess after dinner", None, "llm", ""),
    ("how do you say kitchen in spanish", None, "llm", ""),
    ("cancel culture explained", None, "llm", ""),
    ("tell me a joke about lamps", None, "llm", ""),
    ("set the record straight about dinosaurs", None, "llm", ""),
    ("thanks for the help", None, "llm", ""),
    ("start the washing machine", None, "clarify", DIDNT_CATCH),
    ("can you turn off the", None, "clarify", DIDNT_CATCH),
    ("did i leave the garage open", None, "cant_check", CANT_CHECK),
]


@pytest.mark.parametrize("text,intent,kind,say", CASES, ids=[c[0] for c in CASES])
def test_review(text, intent, kind, say):
    verdict = review(text, intent, HOME)
    assert (verdict.kind, verdict.say) == (kind, say), verdict.reason


def test_user_domains_act_on_their_own_templates():
    order = IntentResult("orderDrink", {"drink": "latte"}, source="embedding", domain="coffee")
    assert review("a latte please", order, HOME).kind == "act"


def test_a_yes_answers_the_question_asked_and_only_once_settled():
    clock = [0.0]
    c = Confirmations(ttl_s=30, clock=lambda: clock[0])
    lamp = IntentResult("HassTurnOn", {"name": "living room lamp"}, source="fuzzy")
    assert c.answer("kitchen", "yes") == (None, None)  # nothing asked
    c.settle("kitchen", lamp)
    assert c.answer("bedroom", "yes") == (None, None)  # another satellite's question
    assert c.answer("kitchen", "what time is it") == (None, None)
    assert c.answer("kitchen", "Yes please.") == ("yes", lamp)
    assert c.answer("kitchen", "yes") == ("yes", lamp)  # a read changes nothing
    assert c.answer("kitchen", "no thanks") == ("no", lamp)
    c.settle("kitchen")  # the turn that answered was committed
    assert c.answer("kitchen", "yes") == (None, None)
    c.settle("kitchen", lamp)
    clock[0] = 31.0
    assert c.answer("kitchen", "yes") == (None, None)  # too late


def test_questions_waiting_are_bounded():
    c = Confirmations(size=3)
    for i in range(10):
        c.settle(f"s{i}", IntentResult("HassTurnOn", {"name": "x"}))
    assert [c.answer(f"s{i}", "yes")[0] for i in range(10)] == [None] * 7 + ["yes"] * 3


@pytest.mark.models
def test_the_blind_cases_keep_their_results():
    """hark/nlu/eval/guard_cases.yaml through the real intent stage and the guard: the
    one wrong action left is 'turn up the volume on the speaker' (hark's own volume),
    the one sent to the LLM 'said a time for ten minutes'."""
    from pathlib import Path

    from hark.bench.eval_guard import evaluate
    from hark.config import Config

    cases = Path(__file__).parents[1] / "hark" / "nlu" / "eval" / "guard_cases.yaml"
    result = evaluate(cases, Config())
    assert result["wrong_actions"] <= 1 and result["not_act_to_llm"] <= 1
    assert result["by_label"]["act"]["right"] >= 49
    assert result["by_label"]["llm"]["right"] >= 49
