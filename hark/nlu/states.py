"""State questions answered from the home: "is the front door locked?", "what is the
outside humidity?", "which lights are on in the kitchen?", "what's the temperature?".

:class:`StateAnswerer` answers ``HassGetState`` and ``HassClimateGetTemperature`` from
the states and raw attributes in :class:`hark.nlu.home.Home` (a ``[home]`` config with
``state``/``attributes``, a fixtures file, or a Home Assistant sync that keeps them
current). It finds the targets the way Home Assistant's intent handler does (name, area,
floor, domain, device class; ``name: all`` or no name means every match), then renders
Home Assistant's own English response template for the sentence that matched (the
``response`` key of the template block, from the home-assistant-intents package) with
Jinja2, so the answer carries the same information as Home Assistant's; units are then
said as words ("45 %" -> "45 percent").

Never an invented state: a target whose state is empty, ``unknown`` or ``unavailable``
gets "I don't know ..." (:attr:`Answer.known` is False), and a name the home lacks gets
Home Assistant's "Sorry, I am not aware of any device called ...".
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import SandboxedEnvironment

from hark.nlu.base import IntentResult
from hark.nlu.home import Entity, Home

log = logging.getLogger(__name__)

STATE_INTENTS = frozenset({"HassGetState", "HassClimateGetTemperature"})
UNKNOWN_STATES = frozenset({"", "unknown", "unavailable", "none"})

# Home Assistant's words for a binary sensor's on/off, by device class (its translations)
_BINARY_WORDS: dict[str, tuple[str, str]] = {
    "battery": ("low", "normal"), "battery_charging": ("charging", "not charging"),
    "cold": ("cold", "normal"), "connectivity": ("connected", "disconnected"),
    "door": ("open", "closed"), "garage_door": ("open", "closed"),
    "gas": ("detected", "clear"), "heat": ("hot", "normal"),
    "light": ("detected", "no light"), "lock": ("unlocked", "locked"),
    "moisture": ("wet", "dry"), "motion": ("detected", "clear"),
    "moving": ("moving", "not moving"), "occupancy": ("detected", "clear"),
    "opening": ("open", "closed"), "plug": ("plugged in", "unplugged"),
    "power": ("detected", "no power"), "presence": ("home", "away"),
    "problem": ("problem", "OK"), "running": ("running", "not running"),
    "safety": ("unsafe", "safe"), "smoke": ("detected", "clear"),
    "sound": ("detected", "clear"), "tamper": ("tampering detected", "clear"),
    "update": ("update available", "up-to-date"), "vibration": ("detected", "clear"),
    "window": ("open", "closed"),
}
# units said as words
_UNITS = {
    "%": "percent", "°C": "degrees Celsius", "°F": "degrees Fahrenheit", "K": "kelvin",
    "W": "watts", "kW": "kilowatts", "Wh": "watt hours", "kWh": "kilowatt hours",
    "V": "volts", "A": "amps", "lx": "lux", "ppm": "parts per million", "hPa":
    "hectopascals", "mbar": "millibars", "dB": "decibels", "km/h": "kilometers per hour",
    "m/s": "meters per second", "mph": "miles per hour", "mm": "millimeters",
    "cm": "centimeters", "m": "meters", "km": "kilometers", "L": "liters",
    "µg/m³": "micrograms per cubic meter", "s": "seconds", "min": "minutes", "h": "hours",
}
_STATE_WORDS = {"not_home": "away", "home": "home"}


@dataclass
class Answer:
    text: str
    known: bool = True  # False: a target's state is not known (nothing was invented)


@dataclass
class _State:
    """What Home Assistant's response templates see of one entity."""

    entity: Entity
    name: str
    state: str
    state_with_unit: str
    entity_id: str
    attributes: dict[str, Any]

    def __str__(self) -> str:
        return self.state


def _number(text: str) -> str:
    """A state as spoken: "20.0" -> "20"; other text unchanged."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return str(text)
    return str(int(value)) if value.is_integer() else str(value)


def state_words(entity: Entity, state: str | None = None) -> str:
    """The entity's state (or ``state``) in words: a binary sensor's "on" by its device
    class ("open", "low"), a number with its unit ("45 percent")."""
    state = entity.state if state is None else state
    device_class = str(entity.attributes.get("device_class") or "")
    if entity.domain == "binary_sensor" and state in ("on", "off"):
        words = _BINARY_WORDS.get(device_class)
        if words:
            return words[0] if state == "on" else words[1]
        return state
    unit = str(entity.attributes.get("unit_of_measurement") or "")
    if unit:
        return f"{_number(state)} {_UNITS.get(unit, unit)}"
    return _STATE_WORDS.get(state, state.replace("_", " "))


def _spoken(text: str) -> str:
    """A rendered template as one spoken sentence: whitespace folded, a full stop."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.!?])", r"\1", text)
    if text and text[-1] not in ".!?":
        text += "."
    return text[:1].upper() + text[1:]


class StateAnswerer:
    """Answers state questions from ``home`` with Home Assistant's response templates
    (``responses`` by intent, then by response key; default: the installed
    home-assistant-intents package's for ``language``). ``home`` may be a function that
    returns the current home (one kept current from Home Assistant is swapped whole)."""

    def __init__(self, home: Home | Callable[[], Home], language: str = "en",
                 responses: dict[str, dict[str, str]] | None = None):
        self._home = home if callable(home) else (lambda: home)
        if responses is None:
            from home_assistant_intents import get_intents

            data = get_intents(language) or {}
            responses = (data.get("responses") or {}).get("intents") or {}
        self.responses = responses
        self.env = SandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self._compiled: dict[tuple[str, str], Any] = {}

    @property
    def home(self) -> Home:
        return self._home()

    # -- targets --------------------------------------------------------------------

    def _floor_areas(self, floor: str) -> set[str]:
        key = floor.casefold()
        return {a.name.casefold() for a in self.home.areas if a.floor.casefold() == key
                or (a.floor and self._floor_name(a.floor).casefold() == key)}

    def _floor_name(self, floor_id: str) -> str:
        for name in self.home.floors:
            if name.casefold() == floor_id.casefold() or \
                    "_".join(name.casefold().split()) == floor_id.casefold():
                return name
        return floor_id

    def targets(self, slots: dict[str, Any], domains: set[str] | None = None
                ) -> list[Entity]:
        """The home's entities the slots point at (name, area, floor, domain,
        device class); a name "all" (or none) means every one that fits the rest."""
        name = str(slots.get("name") or "")
        area = str(slots.get("area") or "").casefold()
        floor = str(slots.get("floor") or "")
        domain = slots.get("domain")
        wanted = {domain} if isinstance(domain, str) else set(domain or [])
        device_class = slots.get("device_class")
        classes = {device_class} if isinstance(device_class, str) else set(device_class or [])
        areas = self._floor_areas(floor) if floor else None
        found: list[Entity] = []
        seen: set[str] = set()
        for entity in self.home.entities:
            if entity.entity_id in seen:  # a fixtures entity named several ways
                continue
            if name and name.casefold() != "all":
                names = {entity.name.casefold(), *(a.casefold() for a in entity.aliases)}
                if name.casefold() not in names:
                    continue
            if area and entity.area.casefold() != area:
                continue
            if areas is not None and entity.area.casefold() not in areas:
                continue
            if wanted and entity.domain not in wanted:
                continue
            if domains and entity.domain not in domains:
                continue
            if classes and entity.attributes.get("device_class") not in classes:
                continue
            seen.add(entity.entity_id)
            found.append(entity)
        return found

    def _state(self, entity: Entity, name: str = "") -> _State:
        return _State(entity, name or entity.name, entity.state, state_words(entity),
                      entity.entity_id, dict(entity.attributes))

    # -- answers --------------------------------------------------------------------

    def answer(self, intent: IntentResult) -> Answer | None:
        """The spoken answer to a state question; ``None`` for another intent."""
        if intent.name == "HassGetState":
            return self._get_state(intent)
        if intent.name == "HassClimateGetTemperature":
            return self._temperature(intent)
        return None

    def _not_found(self, slots: dict[str, Any]) -> Answer:
        name, area, floor = slots.get("name"), slots.get("area"), slots.get("floor")
        if name and str(name).casefold() != "all":
            where = (f" in the {area} area" if area else
                     f" in the {floor} floor" if floor else "")
            return Answer(_spoken(f"Sorry, I am not aware of any device called {name}{where}"),
                          known=False)
        what = slots.get("device_class") or str(slots.get("domain") or "device")
        what = str(what).replace("_", " ")
        where = f" in the {area} area" if area else f" on the {floor} floor" if floor else ""
        return Answer(_spoken(f"Sorry, I am not aware of any {what}{where}"), known=False)

    def _render(self, intent: str, key: str, context: dict[str, Any]) -> str | None:
        template = (self.responses.get(intent) or {}).get(key)
        if not template:
            return None
        compiled = self._compiled.get((intent, key))
        if compiled is None:
            compiled = self._compiled[(intent, key)] = self.env.from_string(template)
        try:
            return _spoken(compiled.render(**context))
        except TemplateError:
            log.exception("response template %s/%s failed", intent, key)
            return None

    def _get_state(self, intent: IntentResult) -> Answer:
        slots = intent.slots
        targets = self.targets(slots)
        if not targets:
            return self._not_found(slots)
        key = intent.response or _response_key(slots)
        unknown = [e for e in targets if e.state.casefold() in UNKNOWN_STATES]
        wanted = slots.get("state")
        if key in ("one", "one_yesno", "default") or (slots.get("name") and len(targets) == 1
                                                        and key not in ("any", "all")):
            entity = targets[0]
            if len(targets) > 1:
                names = sorted({e.name for e in targets})
                return Answer(_spoken(f"Sorry, there are multiple devices called "
                                      f"{slots.get('name') or ' and '.join(names)}"),
                              known=False)
            if entity in unknown:
                return Answer(_spoken(f"I don't know the state of the {entity.name}"),
                              known=False)
            state = self._state(entity, str(slots.get("name") or entity.name))
            query = {"matched": [state] if wanted is None or entity.state == wanted else [],
                     "unmatched": [] if wanted is None or entity.state == wanted else [state]}
            key = "one_yesno" if wanted is not None else "one"
            text = self._render("HassGetState", key, {
                "slots": {**slots, "name": state.name}, "state": state, "query": query})
            return Answer(text or _spoken(f"{state.name} is {state.state_with_unit}"))
        known = [e for e in targets if e not in unknown]
        if not known:
            return Answer(_spoken("I don't know the state of "
                                  + _join([f"the {e.name}" for e in unknown])), known=False)
        matched = [self._state(e) for e in known if wanted is None or e.state == wanted]
        unmatched = [self._state(e) for e in known if not (wanted is None or e.state == wanted)]
        state_word = str(wanted or "")
        if wanted is not None and known[0].domain == "binary_sensor":
            state_word = state_words(known[0], str(wanted))
        text = self._render("HassGetState", key, {
            "slots": {**slots, "state": state_word},
            "state": matched[0] if matched else None,
            "query": {"matched": matched, "unmatched": unmatched}})
        if text is None:
            text = _spoken(_join([s.name for s in matched]) or "None")
        if unknown:  # what is known is said; what is not is said to be unknown
            text += " " + _spoken("I don't know about " + _join([e.name for e in unknown]))
        return Answer(text, known=not unknown)

    def _temperature(self, intent: IntentResult) -> Answer:
        slots = intent.slots
        targets = self.targets(slots, domains={"climate"})
        if not targets and not slots.get("name"):
            # no thermostat there: a temperature sensor of that area answers
            targets = [e for e in self.targets(slots, domains={"sensor"})
                       if e.attributes.get("device_class") == "temperature"]
            if not (slots.get("area") or slots.get("floor")):
                targets = []
        if not targets:
            if not (slots.get("name") or slots.get("area") or slots.get("floor")):
                return Answer("Which thermostat do you mean?", known=False)
            return self._not_found({**slots, "domain": "climate"})
        if len(targets) > 1:
            if slots.get("area") or slots.get("floor") or slots.get("name"):
                pass  # Home Assistant takes the first of several in one place
            else:
                names = _join([f"the {e.name}" for e in targets], "or")
                return Answer(_spoken(f"Which one: {names}?"), known=False)
        entity = targets[0]
        if entity.domain == "sensor":
            reading = entity.state
        else:
            reading = entity.attributes.get("current_temperature")
        if reading is None or str(reading).casefold() in UNKNOWN_STATES or \
                not _is_number(reading):
            return Answer(_spoken(f"I don't know the temperature of the {entity.name}"),
                          known=False)
        state = self._state(entity)
        text = self._render("HassClimateGetTemperature", intent.response or "default", {
            "slots": slots, "state": state,
            "state_attr": lambda _eid, attr: (float(reading) if attr == "current_temperature"
                                              else entity.attributes.get(attr))})
        if text is None:
            text = _spoken(f"{_number(str(reading))} degrees")
        return Answer(re.sub(r"\b(-?\d+)\.0\b", r"\1", text))


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _join(items: list[str], last: str = "and") -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {last} " + items[-1]


def _response_key(slots: dict[str, Any]) -> str:
    """The response of a state question whose template block is not known (a guessed
    intent): one device by name, else the list of those in the asked state."""
    if slots.get("name") and str(slots["name"]).casefold() != "all":
        return "one_yesno" if "state" in slots else "one"
    return "which"
