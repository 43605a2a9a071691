"""What answering an intent does and says.

:class:`IntentHandlers` dispatches an :class:`IntentResult` to:

- local handlers that act themselves: time, date, timers (:mod:`hark.nlu.timers`),
  stop / nevermind, the assistant's volume, "repeat that", weather (none configured);
- state questions ("is the front door locked?", "what is the outside humidity?") answered
  from the home's states (:mod:`hark.nlu.states`, Home Assistant's response templates)
  when the home knows them; an unknown state goes to Home Assistant when one is
  connected, else hark says it doesn't know;
- a home handler for home-automation intents (lights, climate, covers, media, lists...):
  :class:`HomeAssistantHandler` calls a real Home Assistant over its REST API when
  ``home.home_assistant_url`` is set, otherwise :class:`DryRunHomeHandler` says what it
  would have done;
- :class:`DomainHandler` for the user's own domains (``orderDrink``...), which confirms
  with the slots using the domain file's ``responses:`` template or a plain default.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol

from cachetools import LRUCache

from hark.config import Config
from hark.nlu.base import IntentResult, Reply
from hark.nlu.home import Home
from hark.nlu.states import STATE_INTENTS, StateAnswerer
from hark.nlu.timers import Timer, TimerManager, say_duration

log = logging.getLogger(__name__)

TIMER_INTENTS = {
    "HassStartTimer", "HassCancelTimer", "HassCancelAllTimers", "HassTimerStatus",
    "HassPauseTimer", "HassUnpauseTimer", "HassIncreaseTimer", "HassDecreaseTimer",
}
LOCAL_INTENTS = TIMER_INTENTS | {
    "HassGetCurrentTime", "HassGetCurrentDate", "HassNevermind", "HarkRepeat",
    "HarkVolumeStep", "HassRespond",
}
VOLUME_STEP = 10  # percent per "louder"


class Recognizer(Protocol):
    def recognize(self, text: str) -> IntentResult | None: ...


class HomeHandler(Protocol):
    """Acts on home-automation intents (a Home Assistant, or a dry run)."""

    def handle(self, intent: IntentResult) -> Reply: ...


# -- describing targets ---------------------------------------------------------------

_PLURAL = {"light": "lights", "fan": "fans", "cover": "covers", "switch": "switches",
           "media_player": "speakers", "climate": "thermostats", "lock": "locks",
           "vacuum": "vacuums", "scene": "scenes", "script": "scripts"}


def describe_target(slots: dict[str, Any]) -> str:
    """Words for what an intent acts on: "the kitchen light", "the lights in the
    bedroom", "everything in the garage"."""
    if slots.get("name"):
        return f"the {slots['name']}"
    what = slots.get("device_class") or slots.get("domain")
    things = _PLURAL.get(str(what), f"{what}s") if what else ""
    place = slots.get("area") or (f"{slots['floor']} floor" if slots.get("floor") else "")
    if things and place:
        return f"the {things} in the {place}"
    if things:
        return f"all the {things}"
    if place:
        return f"everything in the {place}"
    return "that"


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


class DryRunHomeHandler:
    """No home-automation system configured: say what would have been done.

    Shopping and to-do lists are kept in memory so "add milk to my shopping list"
    really adds something that a later "what's on..." could read back.
    """

    def __init__(self, home: Home | None = None) -> None:
        self.lists: dict[str, list[str]] = {}
        self.calls: list[IntentResult] = []
        self.home = home  # to say "Locking the back door", not "Turning on"

    def _domain(self, slots: dict[str, Any]) -> str:
        """The domain the intent acts on: its slot, else the named entity's."""
        if slots.get("domain"):
            return str(slots["domain"])
        entity = self.home.find_entity(str(slots["name"])) if (
            self.home is not None and slots.get("name")) else None
        return entity.domain if entity is not None else ""

    def handle(self, intent: IntentResult) -> Reply:
        self.calls.append(intent)
        s = intent.slots
        target = describe_target(s)
        name = intent.name
        text: str
        if name in ("HassTurnOn", "HassTurnOff"):
            domain = self._domain(s)
            on = name == "HassTurnOn"
            if domain == "lock":
                verb = "Locking" if on else "Unlocking"
            elif domain in ("cover", "valve") or (not domain and "door" in target.casefold()):
                verb = "Opening" if on else "Closing"
            else:
                verb = "Turning on" if on else "Turning off"
            text = f"{verb} {target}."
        elif name == "HassLightSet":
            if "brightness" in s:
                text = f"Setting {target} to {_number(s['brightness'])} percent brightness."
            elif "color" in s:
                text = f"Turning {target} {s['color']}."
            elif "temperature" in s:
                text = f"Setting {target} to {_number(s['temperature'])} kelvin."
            else:
                text = f"Adjusting {target}."
        elif name == "HassClimateSetTemperature":
            where = f" in the {s['area']}" if s.get("area") else ""
            text = f"Setting the temperature{where} to {_number(s.get('temperature'))} degrees."
        elif name == "HassSetPosition":
            text = f"Setting {target} to {_number(s.get('position'))} percent."
        elif name == "HassFanSetSpeed":
            text = f"Setting {target} to {_number(s.get('percentage'))} percent."
        elif name in ("HassMediaPause", "HassMediaUnpause", "HassMediaNext",
                      "HassMediaPrevious", "HassMediaPlayerMute", "HassMediaPlayerUnmute"):
            verb = {"HassMediaPause": "Pausing", "HassMediaUnpause": "Resuming",
                    "HassMediaNext": "Skipping to the next track on",
                    "HassMediaPrevious": "Going back a track on",
                    "HassMediaPlayerMute": "Muting",
                    "HassMediaPlayerUnmute": "Unmuting"}[name]
            text = f"{verb} {target if target != 'that' else 'the music'}."
        elif name == "HassMediaSearchAndPlay":
            text = f"Playing {s.get('search_query', 'something')}."
        elif name in ("HassSetVolume", "HassSetVolumeRelative"):
            level = s.get("volume_level", s.get("volume"))
            step = s.get("volume_step")
            text = (f"Setting the volume of {target} to {_number(level)} percent."
                    if level is not None else f"Turning {target} {step or 'up'}.")
        elif name in ("HassShoppingListAddItem", "HassListAddItem"):
            list_name = str(s.get("name") or "shopping")
            item = str(s.get("item", "")).strip()
            self.lists.setdefault(list_name, []).append(item)
            text = f"Added {item} to your {list_name} list."
        elif name in ("HassShoppingListCompleteItem", "HassListCompleteItem",
                      "HassListRemoveItem"):
            list_name = str(s.get("name") or "shopping")
            item = str(s.get("item", "")).strip()
            items = self.lists.get(list_name, [])
            if item in items:
                items.remove(item)
            text = f"Removed {item} from your {list_name} list."
        elif name in ("HassGetState", "HassClimateGetTemperature", "HassGetWeather"):
            text = ("I can't check that: no Home Assistant is connected. "
                    "Set home.home_assistant_url to connect one.")
        else:
            text = f"I would run {name} on {target}, but no Home Assistant is connected."
        return Reply(text=text, intent=intent, cacheable=False)


_TARGET_SLOTS = ("area", "floor", "domain", "device_class")


def _values(value: Any) -> set[str]:
    if value in (None, ""):
        return set()
    items = value if isinstance(value, (list, tuple, set)) else [value]
    return {str(v).casefold() for v in items}


# never acted on by a target that does not name their domain: "turn off everything
# downstairs" must not unlock the front door
_SECURITY_DOMAINS = frozenset({"lock", "alarm_control_panel"})


def exposed_targets(home: Any, slots: dict[str, Any]) -> list[Any]:
    """The entities of ``home`` an area / floor / domain / device class target means
    (every one of those given must fit; locks and alarm panels only when their domain
    is named)."""
    domains, classes = _values(slots.get("domain")), _values(slots.get("device_class"))
    areas, floors = _values(slots.get("area")), _values(slots.get("floor"))
    floor_of = {a.name.casefold(): a.floor.casefold() for a in home.areas}
    out = []
    for e in home.entities:
        if domains and e.domain.casefold() not in domains:
            continue
        if not domains and e.domain in _SECURITY_DOMAINS:
            continue
        if classes and str(e.attributes.get("device_class", "")).casefold() not in classes:
            continue
        if areas and e.area.casefold() not in areas:
            continue
        if floors and floor_of.get(e.area.casefold(), "") not in floors:
            continue
        out.append(e)
    return out


class HomeAssistantHandler:
    """Runs intents on a Home Assistant instance over its REST API.

    ``POST {url}/api/intent/handle`` with ``{"name": intent, "data": slots}`` and the
    long-lived access token as a Bearer token (Home Assistant needs ``intent:`` in its
    configuration.yaml for this endpoint). The reply is Home Assistant's own speech.

    ``home`` (optional, ``() -> Home``: the home read from Home Assistant, only the
    entities exposed to Assist): an intent aimed at an area, floor, domain or device
    class rather than a name is sent once per exposed entity it means, by name, since
    Home Assistant's intent API would act on unexposed ones too. None exposed: nothing
    is sent and hark says so.
    """

    def __init__(self, url: str, token: str, timeout_s: float = 5.0,
                 home: Callable[[], Any] | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.home = home

    def handle(self, intent: IntentResult) -> Reply:
        home = self.home() if self.home is not None else None
        slots = intent.slots
        if home is None or slots.get("name") or not any(slots.get(k) for k in _TARGET_SLOTS):
            speech, failed = self._post(intent.name, slots, intent)
            return failed or Reply(speech or "Done.", intent, cacheable=False)
        targets = exposed_targets(home, slots)
        if not targets:
            return Reply(f"I can't control {describe_target(slots)}: Home Assistant "
                         "exposes none to Assist.", intent, cacheable=False)
        rest = {k: v for k, v in slots.items() if k not in _TARGET_SLOTS}
        speeches = []
        for entity in targets:
            data = {**rest, "name": entity.name, **({"area": entity.area} if entity.area
                                                     else {})}
            speech, failed = self._post(intent.name, data, intent)
            if failed is not None:
                return failed
            speeches.append(speech)
        if len(targets) == 1 and speeches[0]:
            return Reply(speeches[0], intent, cacheable=False)
        return Reply("Done.", intent, cacheable=False)

    def _post(self, name: str, data: dict[str, Any], intent: IntentResult
              ) -> tuple[str, Reply | None]:
        """Home Assistant's speech for one intent, or the reply saying what failed."""
        body = json.dumps({"name": name, "data": data}).encode()
        request = urllib.request.Request(
            f"{self.url}/api/intent/handle", data=body, method="POST",
            headers={"Authorization": f"Bearer {self.token}",
                     "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = json.loads(response.read().decode("utf-8") or "{}")
        except urllib.error.HTTPError as exc:
            log.warning("Home Assistant answered %s to %s: %s", exc.code, name,
                        exc.read()[:200])
            if exc.code == 401:
                return "", Reply("Home Assistant refused my access token.", intent,
                                 cacheable=False)
            return "", Reply("Home Assistant couldn't do that.", intent, cacheable=False)
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            log.warning("cannot reach Home Assistant at %s: %s", self.url, exc)
            return "", Reply("I couldn't reach Home Assistant.", intent, cacheable=False)
        if not isinstance(payload, dict):
            return "", None
        return (((payload.get("speech") or {}).get("plain") or {}).get("speech")
                or "").strip(), None


class DomainHandler:
    """User-domain intents: confirm with the slots.

    The domain file's ``responses: {intent: "One {size} {coffeeDrink}, coming up."}``
    is filled with the slots (missing ones left out); without one, the reply is
    "Okay: large latte." (the slot values in order).
    """

    def __init__(self, responses: Callable[[str], dict[str, str]]):
        self._responses = responses

    def handle(self, intent: IntentResult) -> Reply:
        template = self._responses(intent.domain).get(intent.name)
        if template:
            values = {k: _number(v) for k, v in intent.slots.items()}
            text = re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), ""), template)
            text = re.sub(r"\s+([,.!?])", r"\1", re.sub(r"\s{2,}", " ", text)).strip()
        else:
            words = " ".join(_number(v) for v in intent.slots.values() if v not in ("", None))
            text = f"Okay: {words}." if words else "Okay."
        return Reply(text=text, intent=intent, cacheable=False)


# -- dispatch ---------------------------------------------------------------------------


class IntentHandlers:
    """Answers an intent: ``handle(intent, session) -> Reply``.

    Keeps, per session, the last reply (for "repeat that"; the pipeline should call
    :meth:`remember` with LLM answers too) and the assistant's volume (``volume``).
    ``timers.on_fire(callback)`` registers what to do when a timer finishes.

    ``recognizer`` (the intent stage) reads the command of a timer that carries one
    ("in 5 minutes turn off the kitchen lights"); when the timer fires, that intent runs
    through :meth:`handle` like a spoken one (Home Assistant or the dry run) and the
    timer's ``done_message`` says what was done.
    """

    def __init__(self, cfg: Config, timers: TimerManager | None = None,
                 home: HomeHandler | None = None,
                 responses: Callable[[str], dict[str, str]] | None = None,
                 now: Callable[[], datetime] = datetime.now,
                 recognizer: Recognizer | None = None,
                 states: StateAnswerer | None = None):
        self.cfg = cfg
        self.states = states
        self.timers = timers or TimerManager()
        if home is None:
            if cfg.home.home_assistant_url:
                home = HomeAssistantHandler(cfg.home.home_assistant_url,
                                            cfg.home.home_assistant_token)
            else:
                home = DryRunHomeHandler(states.home if states is not None else None)
        self.home = home
        self.domains = DomainHandler(responses or (lambda domain: {}))
        self.now = now
        self.recognizer = recognizer
        # registered first, so the command has run (and done_message says what it did)
        # before any later callback, such as the pipeline's notification, reads it
        self.timers.on_fire(self._run_timer_action)
        # per session, bounded: the least recently used sessions are forgotten
        self.volume: LRUCache[str, int] = LRUCache(maxsize=256)
        self._last: LRUCache[str, Reply] = LRUCache(maxsize=256)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------------------------

    def can_handle(self, intent: IntentResult) -> bool:
        """Every intent gets an answer (an honest one when nothing can act on it)."""
        return True

    def handle(self, intent: IntentResult, session: str = "default") -> Reply:
        try:
            reply = self._dispatch(intent, session)
        except Exception:
            log.exception("handler for %s failed", intent.name)
            reply = Reply("Sorry, something went wrong doing that.", intent, cacheable=False)
        if intent.name not in ("HarkRepeat", "HassNevermind") and reply.text:
            self.remember(session, reply)
        return reply

    def remember(self, session: str, reply: Reply | str) -> None:
        """Record what was last said in ``session`` (for "repeat that")."""
        if isinstance(reply, str):
            reply = Reply(text=reply)
        with self._lock:
            self._last[session] = reply

    def on_timer(self, callback: Callable[[Timer], None]) -> None:
        """``callback(timer)`` (on a timer thread) when a timer finishes, after its
        attached command has run."""
        self.timers.on_fire(callback)

    def last_reply(self, session: str = "default") -> Reply | None:
        with self._lock:
            return self._last.get(session)

    def _dispatch(self, intent: IntentResult, session: str) -> Reply:
        name = intent.name
        if intent.domain not in ("homeassistant", "hark"):
            return self.domains.handle(intent)
        if name in TIMER_INTENTS:
            return self._timer(intent, session)
        if name == "HassGetCurrentTime":
            now = self.now()
            return Reply(f"It's {now.strftime('%I:%M %p').lstrip('0')}.", intent,
                         cacheable=False)
        if name == "HassGetCurrentDate":
            now = self.now()
            return Reply(f"Today is {now.strftime('%A, %B')} {now.day}, {now.year}.", intent,
                         cacheable=False)
        if name == "HassNevermind":
            return Reply("", intent, cacheable=True, end_conversation=True)
        if name == "HarkRepeat":
            last = self.last_reply(session)
            text = last.text if last else "I haven't said anything yet."
            return Reply(text, intent, cacheable=False)
        if name == "HassRespond":
            return Reply("Hello! I'm hark, your voice assistant.", intent)
        if (name == "HassSetVolume" and not intent.slots.get("name")
                and not intent.slots.get("area")):
            return self._set_volume(session, int(intent.slots.get("volume", 50)), intent)
        if name == "HarkVolumeStep":
            step = VOLUME_STEP if intent.slots.get("volume_step") == "up" else -VOLUME_STEP
            return self._set_volume(session, self.volume.get(session, 50) + step, intent)
        if name in STATE_INTENTS and self.states is not None:
            answer = self.states.answer(intent)
            # a state the home does not know is asked of Home Assistant, when connected
            if answer is not None and (answer.known or not self.cfg.home.home_assistant_url):
                return Reply(answer.text, intent, cacheable=False)
        if name == "HassGetWeather" and not self.cfg.home.home_assistant_url:
            return Reply("I don't have a weather service set up, so I can't tell you the "
                         "weather.", intent)
        return self.home.handle(intent)

    def _set_volume(self, session: str, level: int, intent: IntentResult) -> Reply:
        level = max(0, min(100, level))
        self.volume[session] = level
        return Reply(f"Volume set to {level} percent.", intent, cacheable=False)

    # -- timers ------------------------------------------------------------------------

    @staticmethod
    def _seconds(slots: dict[str, Any], prefix: str = "") -> float | None:
        parts = [(slots.get(f"{prefix}hours"), 3600), (slots.get(f"{prefix}minutes"), 60),
                 (slots.get(f"{prefix}seconds"), 1)]
        if all(value is None for value, _ in parts):
            return None
        return float(sum(float(value or 0) * unit for value, unit in parts))

    def _selected(self, slots: dict[str, Any], session: str) -> list[Timer]:
        """The timers a cancel/status/pause sentence points at (all when unspecified)."""
        duration = self._seconds(slots, "start_")
        name = str(slots.get("name") or "")
        if name or duration is not None:
            return self.timers.find(name=name, duration_s=duration)
        return self.timers.active()

    def _timer(self, intent: IntentResult, session: str) -> Reply:
        s = intent.slots
        name = intent.name

        def reply(text: str) -> Reply:
            return Reply(text, intent, cacheable=False)

        if name == "HassStartTimer":
            seconds = self._seconds(s)
            if not seconds:
                return reply("How long should the timer be?")
            command = str(s.get("conversation_command") or "").strip()
            action = None
            if command:
                action = self.recognizer.recognize(command) if self.recognizer else None
                if action is None or action.name == "HassStartTimer":
                    return reply(f"Sorry, I don't know how to {command}, so I didn't set "
                                 "a timer for it.")
            timer = self.timers.start(seconds, name=str(s.get("name") or ""),
                                      command=command, session=session, action=action)
            if command:
                return reply(f"In {say_duration(seconds)}, I'll {command}.")
            prefix = f"{timer.name.capitalize()} timer" if timer.name else "Timer"
            return reply(f"{prefix} set for {say_duration(seconds)}.")
        if name == "HassCancelAllTimers":
            n = self.timers.cancel_all()
            return reply("You have no timers running." if n == 0 else
                         "Timer cancelled." if n == 1 else f"All {n} timers cancelled.")
        selected = self._selected(s, session)
        if not selected:
            return reply("You have no timers running." if not self.timers.active()
                         else "I couldn't find that timer.")
        if name == "HassCancelTimer":
            target = selected[-1]  # the newest matching timer
            self.timers.cancel(target)
            return reply(f"{target.label.capitalize()} cancelled.")
        if name == "HassTimerStatus":
            parts = []
            for timer in selected:
                state = " (paused)" if timer.paused else ""
                parts.append(f"your {timer.label} has {say_duration(timer.remaining_s)} "
                             f"left{state}")
            text = "; ".join(parts)
            return reply(text[0].upper() + text[1:] + ".")
        target = selected[-1]
        if name == "HassPauseTimer":
            self.timers.pause(target)
            return reply(f"{target.label.capitalize()} paused.")
        if name == "HassUnpauseTimer":
            self.timers.resume(target)
            return reply(f"{target.label.capitalize()} resumed.")
        amount = self._seconds(s) or 60.0
        if name == "HassDecreaseTimer":
            amount = -amount
        self.timers.add_time(target, amount)
        verb = "Added" if amount > 0 else "Took"
        where = "to" if amount > 0 else "off"
        return reply(f"{verb} {say_duration(abs(amount))} {where} your {target.label}.")

    def _run_timer_action(self, timer: Timer) -> None:
        """A timer with a command fired: run it (a timer thread) and say what was done."""
        if timer.action is None:
            return
        log.info("timer %s fired: running %s %s", timer.label, timer.action.name,
                 timer.action.slots)
        done = self.handle(timer.action, timer.session).text.strip()
        timer.outcome = f"It's been {say_duration(timer.duration_s)}. {done}".strip()

    def close(self) -> None:
        self.timers.close()


def _file_responses(cfg: Config) -> Callable[[str], dict[str, str]]:
    """Domain name -> its ``responses:`` section, read from the domain files once."""
    import yaml

    from hark.nlu.domain_files import domain_paths

    table: dict[str, dict[str, str]] = {}
    for path in domain_paths(cfg.nlu.domains_dir, cfg.nlu.builtin_domains):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue  # the intent stage reports broken files
        raw = data.get("responses") if isinstance(data, dict) else None
        if isinstance(raw, dict):
            table[path.stem] = {
                str(k): str(v.get("default", "") if isinstance(v, dict) else v)
                for k, v in raw.items()
            }
    return lambda domain: table.get(domain, {})


def load_handlers(cfg: Config, stage: Any = None) -> IntentHandlers:
    """Handlers for ``cfg``. User domains' reply templates come from the intent stage
    when given, else straight from the domain files; the stage also reads the commands
    timers carry (without one, "in 5 minutes turn off the lights" is refused), and its
    home answers state questions. With the home read from Home Assistant
    (``home.home_assistant_sync``), the stage's home (only entities exposed to Assist)
    limits what area-wide commands act on, and its live states answer questions."""
    responses = stage.responses if stage is not None else _file_responses(cfg)
    home = None
    h = cfg.home
    if (stage is not None and h.home_assistant_url and h.home_assistant_token
            and h.home_assistant_sync):
        home = HomeAssistantHandler(h.home_assistant_url, h.home_assistant_token,
                                    home=lambda: stage.home)
    states = None
    if getattr(stage, "home", None) is not None:  # the stage's home, as it is swapped
        states = StateAnswerer(lambda: stage.home, cfg.nlu.language)
    return IntentHandlers(cfg, responses=responses, recognizer=stage, home=home,
                          states=states)
