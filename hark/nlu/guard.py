"""Never a wrong action: what an intent may do, given the words that were really heard.

:func:`review` looks at the text a turn heard and the intent the recognizer made of it,
and says what the turn may do with it:

``act``
    Run the intent. A template (hassil, the cache, the grammar) matched the words, or the
    intent only reads (time, date, timers' state, the home's state through its handler).
``confirm``
    An acting intent whose target or action was guessed (a fuzzy-corrected name with no
    word for the action, "leaving room lamp"): ask one short question ("The living room
    lamp?"); a "yes" in the same session runs it (:class:`Confirmations`).
``clarify``
    Acting, but a slot the paraphrase fallback filled is not in the words (it named a
    device class, an area or a device nobody said: "turn off my life in the bedroom" is
    not "close the bedroom's covers"), or no intent but the words are a home command's
    ("turn off the T-ME", "cancel my timer" misheard): say so and act on nothing.
``cant_check``
    No intent, and the words ask for a device's state ("is the front door locked"): the
    LLM cannot know it, so it is not asked.
``llm``
    Everything else: a question or a conversation for the LLM.

The review is pure (text in, verdict out) so that its table is its test
(``tests/test_guard.py``).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from hark.nlu.base import IntentResult
from hark.nlu.home import Home

DIDNT_CATCH = "Sorry, I didn't catch that."
CANT_CHECK = "Sorry, I can't check that."

# Intents that only read or talk: they never change the home.
READ_ONLY = frozenset({
    "HassGetCurrentTime", "HassGetCurrentDate", "HassTimerStatus", "HassGetWeather",
    "HarkRepeat", "HassGetState", "HassClimateGetTemperature", "HassNevermind",
    "HassRespond",
})

# Sources whose slots come from the words themselves.
EXACT_SOURCES = frozenset({"hassil", "cache", "grammar"})

# Words that name a device class, per Home Assistant domain (singular and plural).
DOMAIN_WORDS: dict[str, tuple[str, ...]] = {
    "light": ("light", "lights", "lamp", "lamps", "bulb", "bulbs", "lighting"),
    "cover": ("cover", "covers", "blind", "blinds", "curtain", "curtains", "shade", "shades",
              "shutter", "shutters", "garage", "door", "doors", "window", "windows", "gate",
              "awning"),
    "fan": ("fan", "fans"),
    "switch": ("switch", "switches", "plug", "plugs", "outlet", "outlets", "socket"),
    "lock": ("lock", "locks", "door", "doors", "deadbolt"),
    "climate": ("thermostat", "heating", "heater", "heat", "ac", "air", "conditioning",
                "temperature", "climate", "cooling"),
    "media_player": ("tv", "television", "speaker", "speakers", "music", "radio", "volume",
                     "song", "media", "player", "stereo"),
    "vacuum": ("vacuum", "hoover", "robot"),
    "scene": ("scene", "scenes"),
    "script": ("script", "scripts"),
    "valve": ("valve", "valves", "water", "sprinkler", "sprinklers"),
    "humidifier": ("humidifier", "dehumidifier"),
}

# Words that say what to do (the first word of a command, after politeness).
ACTION_WORDS = frozenset({
    "turn", "switch", "set", "open", "close", "shut", "lock", "unlock", "start", "stop",
    "cancel", "pause", "resume", "unpause", "dim", "brighten", "raise", "lower", "play",
    "skip", "mute", "unmute", "activate", "deactivate", "enable", "disable", "increase",
    "decrease", "put", "add", "remove", "toggle", "run", "kill", "power", "change",
})
# Words after which the action is clear ("turn the light on", "lights off").
ACTION_CUES = ACTION_WORDS | {"on", "off", "up", "down", "louder", "quieter", "brighter",
                              "darker", "warmer", "cooler", "percent", "%", "make"}
# First words that make even a short sentence with no home word a command.
COMMAND_OPENINGS = frozenset({"turn", "switch", "set", "dim", "brighten", "lock", "unlock",
                              "mute", "unmute"})
# Words that make a sentence a statement or a question rather than a command.
_COPULAS = frozenset({"is", "are", "was", "were", "am", "i'm", "it's", "isn't", "aren't"})

HOME_NOUNS = frozenset({w for words in DOMAIN_WORDS.values() for w in words}
                       | {"timer", "timers", "alarm", "reminder", "shopping", "list"})

_QUESTION_OPENING = frozenset({
    "what", "what's", "whats", "why", "who", "who's", "whom", "whose", "how", "how's",
    "when", "where", "where's", "which", "is", "are", "was", "were", "can", "could", "do",
    "does", "did", "will", "would", "should", "shall", "has", "have", "tell", "explain",
    "describe", "give", "recommend", "write", "translate", "define",
})
# Openings of a statement or a greeting: conversation, unless a device of the home is named
_STATEMENT_OPENING = frozenset({"i", "i'm", "my", "we", "it", "it's", "that", "this", "you",
                                "your", "hi", "hello", "hey", "thanks", "thank"})
# Words the paraphrase fallback's match needs in the text before the intent may act: a
# timer is set or cancelled only when one is named.
_INTENT_WORDS: dict[str, frozenset[str]] = {
    name: frozenset({"timer", "timers", "countdown", "alarm", "remind", "reminder"})
    for name in ("HassStartTimer", "HassCancelTimer", "HassCancelAllTimers",
                 "HassPauseTimer", "HassUnpauseTimer", "HassIncreaseTimer",
                 "HassDecreaseTimer")
}
_STATE_WORDS = frozenset({"on", "off", "open", "opened", "closed", "shut", "locked",
                          "unlocked", "running", "playing", "left", "up", "down", "low",
                          "charging"})
_FILLERS = frozenset({"um", "uh", "hmm", "hm", "er", "erm", "ah", "oh", "mm", "mhm", "huh"})
_DETERMINERS = frozenset({"the", "my", "our", "your", "any", "all", "a"})
_STATE_OPENINGS = frozenset({"is", "are", "was", "were", "did", "have", "has"})
_READING = re.compile(r"^(what's|whats|what is|how) (the )?(temperature|humidity|battery|"
                      r"state|status|level)\b")
_POLITE = re.compile(r"^((please|hey|ok|okay|so|um|uh|and|alexa|hark|google|siri|jarvis|"
                     r"mycroft|nabu|computer|can you|could you|would you|will you|"
                     r"would you mind|would you please|can you please|could you please)\s+)+")
_YES = frozenset({"yes", "yeah", "yep", "yes please", "sure", "do it", "correct",
                  "that's right", "right", "please do", "ok", "okay", "yup"})
_NO = frozenset({"no", "nope", "no thanks", "no thank you", "cancel", "never mind",
                 "nevermind", "don't"})


@dataclass(frozen=True)
class Verdict:
    kind: Literal["act", "confirm", "clarify", "cant_check", "llm"]
    say: str = ""  # what to say instead of acting (confirm, clarify, cant_check)
    reason: str = ""  # why, for the trace and the logs


def _words(text: str) -> list[str]:
    text = _POLITE.sub("", re.sub(r"[^\w\s'%]", " ", text.casefold()).strip())
    return text.split()


def _stem(w: str) -> str:
    return w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w


def _said(phrase: str, words: list[str], implied: tuple[str, ...] = ()) -> bool:
    """Every word of ``phrase`` is among ``words`` (plurals aside), except words in
    ``implied`` (a device's class, when another word was said: "unlock the front door"
    names the "front door lock")."""
    have = {_stem(w) for w in words}
    need = [_stem(w) for w in re.sub(r"[^\w\s']", " ", phrase.casefold()).split()]
    missing = [w for w in need if w not in have]
    return bool(need) and len(missing) < len(need) and all(
        w in {_stem(i) for i in implied} and any(w in h for h in have) for w in missing)


def _names(home: Home) -> list[str]:
    out = []
    for e in home.entities:
        out += [e.name, *e.aliases]
    for a in home.areas:
        out += [a.name, *a.aliases]
    return [n for n in out if n]


def _grounded(intent: IntentResult, words: list[str], home: Home) -> str | None:
    """None when every target slot of ``intent`` is in the words; else which is not."""
    slots = intent.slots
    name = str(slots.get("name", "") or "")
    entity = home.find_entity(name) if name else None
    if name and name.casefold() != "all":
        spoken = [name] + (entity.aliases if entity else [])
        implied = DOMAIN_WORDS.get(entity.domain, ()) if entity else ()
        if not any(_said(n, words, implied) for n in spoken):
            return f"name {name!r}"
    area = str(slots.get("area", "") or "")
    if area:
        known = next((a for a in home.areas if a.name.casefold() == area.casefold()), None)
        if not any(_said(n, words) for n in [area] + (known.aliases if known else [])):
            return f"area {area!r}"
    domain = str(slots.get("domain", "") or "")
    if domain and not (entity is not None and entity.domain == domain):
        cue = DOMAIN_WORDS.get(domain, (domain,))
        if not any(_stem(w) in {_stem(c) for c in cue} for w in words):
            return f"device class {domain!r}"
    device_class = str(slots.get("device_class", "") or "")
    if device_class and not any(_stem(w) == _stem(device_class) for w in words):
        return f"device class {device_class!r}"
    return None


def _absent(intent: IntentResult, home: Home) -> str:
    """What to say when an area-and-class target names no device of this home ("turn on
    the hallway light" in a home with no light in the hallway); "" when it names some."""
    slots = intent.slots
    area, domain = str(slots.get("area", "") or ""), str(slots.get("domain", "") or "")
    if slots.get("name") or not area or not domain or not home.entities:
        return ""
    if any(e.domain == domain and e.area.casefold() == area.casefold() for e in home.entities):
        return ""
    noun = str(slots.get("device_class", "") or "") or DOMAIN_WORDS.get(domain, (domain,))[0]
    return f"There's no {noun.replace('_', ' ')} in the {area}."


def _target_phrase(intent: IntentResult) -> str:
    slots = intent.slots
    name = str(slots.get("name", "") or "")
    area = str(slots.get("area", "") or "")
    if name:
        return f"The {name}?"
    if area:
        return f"The {area}?"
    return DIDNT_CATCH


def review(text: str, intent: IntentResult | None, home: Home) -> Verdict:
    """What a turn may do with ``intent``, recognized in ``text`` (see the module)."""
    words = _words(text)
    if intent is not None:
        if intent.name in READ_ONLY:
            return Verdict("act")
        absent = _absent(intent, home)
        if absent:
            return Verdict("clarify", absent, "no such device in that area")
        if intent.source in EXACT_SOURCES:
            return Verdict("act")
        if intent.domain not in ("homeassistant", "hark"):
            return Verdict("act")  # the user's own domains (coffee orders): their templates
        need = _INTENT_WORDS.get(intent.name)
        if need and not any(w in need for w in words):
            return Verdict("clarify", DIDNT_CATCH, f"{intent.source}: no word names a timer")
        slots = intent.slots
        if slots.get("domain") and not slots.get("name") and not slots.get("area") \
                and intent.name in _BROAD:
            # every device of a class, from a guess ("switch off and leaving room lamp"
            # read as all the lights): too much to do on a guess
            noun = DOMAIN_WORDS.get(str(slots["domain"]), (str(slots["domain"]),))[0]
            return Verdict("clarify", f"Sorry, which {noun}?",
                           f"{intent.source} guessed every {slots['domain']}")
        missing = _grounded(intent, words, home)
        if missing is not None and intent.source == "fuzzy" and missing.startswith("name"):
            # a name heard not quite right ("leaving room lamp"): ask
            return Verdict("confirm", _target_phrase(intent), f"fuzzy guessed the {missing}")
        if missing is not None:
            area = str(intent.slots.get("area", "") or "")
            verb = _verb(intent)
            if area and _said(area, words) and verb:
                say = f"Sorry, what should I {verb} in the {area}?"
            else:
                say = DIDNT_CATCH
            return Verdict("clarify", say, f"{intent.source} guessed the {missing}")
        if not any(w in ACTION_CUES or w[:1].isdigit() for w in words):
            return Verdict("confirm", _target_phrase(intent),
                           f"{intent.source}: no word says what to do")
        return Verdict("act")
    if all(w in _FILLERS for w in words):
        return Verdict("clarify", DIDNT_CATCH, "no words")
    names = _names(home)
    about_home = any(w in HOME_NOUNS for w in words) or any(_said(n, words) for n in names)
    if (words[0] in _STATE_OPENINGS and len(words) > 2 and about_home and len(words) <= 8
            and (words[1] in _DETERMINERS or any(_said(n, words[1:4]) for n in names)
                 or words[1:3] in (["i", "leave"], ["we", "leave"], ["someone", "leave"]))
            and any(w in _STATE_WORDS for w in words[2:])):
        return Verdict("cant_check", CANT_CHECK, "asks for a device's state")
    if _READING.match(" ".join(words)) and any(_said(n, words) for n in names):
        return Verdict("cant_check", CANT_CHECK, "asks for a device's reading")
    if words[0] in ACTION_WORDS and (about_home or len(words) <= 5 and (
            words[0] in COMMAND_OPENINGS or words[1:2] in (["the"], ["my"], ["our"]))):
        return Verdict("clarify", DIDNT_CATCH, "a command no template knows")
    if (about_home and words[0] not in _QUESTION_OPENING and len(words) <= 8
            and not any(w in _COPULAS for w in words)
            and (words[0] not in _STATEMENT_OPENING or _names_device(words, home))):
        return Verdict("clarify", DIDNT_CATCH, "home words in no sentence hark knows")
    return Verdict("llm")


def _names_device(words: list[str], home: Home) -> bool:
    """A word for a class of device this home has ("lamp": it has lights)."""
    return any(_stem(w) in {_stem(c) for c in DOMAIN_WORDS.get(d, ())}
               for w in words for d in home.domains)


_BROAD = frozenset({"HassTurnOn", "HassTurnOff", "HassLightSet", "HassSetPosition",
                    "HassFanSetSpeed"})


def _verb(intent: IntentResult) -> str:
    return {"HassTurnOn": "turn on", "HassTurnOff": "turn off", "HassLightSet": "set",
            "HassOpen": "open", "HassClose": "close"}.get(intent.name, "")


def is_yes(text: str) -> bool:
    return " ".join(_words(text)) in _YES


def is_no(text: str) -> bool:
    return " ".join(_words(text)) in _NO


class Confirmations:
    """Intents waiting for a "yes", at most one per session, each for ``ttl_s`` seconds.

    A turn reads the answer with :meth:`answer` (no change: a speculative turn may be
    discarded) and, once committed, :meth:`settle` s the session: the question it asked,
    or none."""

    def __init__(self, ttl_s: float = 30.0, size: int = 256,
                 clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.size = size
        self.clock = clock
        self._pending: OrderedDict[str, tuple[float, IntentResult]] = OrderedDict()

    def answer(self, session: str, text: str) -> tuple[Literal["yes", "no"] | None,
                                                       IntentResult | None]:
        """``("yes", intent)`` when ``text`` says yes to the intent waiting in
        ``session``, ``("no", intent)`` when it says no, else ``(None, None)``."""
        item = self._pending.get(session)
        if item is None or self.clock() - item[0] > self.ttl_s:
            return None, None
        if is_yes(text):
            return "yes", item[1]
        if is_no(text):
            return "no", item[1]
        return None, None

    def settle(self, session: str, ask: IntentResult | None = None) -> None:
        """After a committed turn: ``ask`` waits for a yes, or nothing does."""
        self._pending.pop(session, None)
        if ask is not None:
            self._pending[session] = (self.clock(), ask)
            while len(self._pending) > self.size:
                self._pending.popitem(last=False)
