"""Intent handlers: real timers, time/date, local commands, and the Home Assistant REST
handler against a real HTTP server on localhost that records what it receives."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hark.config import Config
from hark.nlu.base import IntentResult
from hark.nlu.handlers import (
    DomainHandler,
    DryRunHomeHandler,
    HomeAssistantHandler,
    IntentHandlers,
    load_handlers,
)
from hark.nlu.recognizer import IntentStage
from hark.nlu.timers import TimerManager, say_duration


MODEL_FIXTURES = frozenset({"stage"})  # its paraphrase fallback loads the sentence encoder


def intent(intent_name: str, domain: str = "homeassistant", **slots) -> IntentResult:
    return IntentResult(name=intent_name, slots=slots, domain=domain)


@pytest.fixture
def handlers():
    h = IntentHandlers(Config(), now=lambda: datetime(2026, 1, 2, 15, 5))
    yield h
    h.close()


@pytest.fixture(scope="module")
def stage() -> IntentStage:
    cfg = Config()
    cfg.nlu.builtin_domains = []
    return IntentStage(cfg)


# -- timers --------------------------------------------------------------------------


def test_timer_really_fires_and_calls_back():
    timers = TimerManager()
    done = threading.Event()
    fired = []
    timers.on_fire(lambda t: (fired.append(t), done.set()))
    timer = timers.start(1.0, name="")
    assert timers.active() == [timer]
    assert done.wait(10), "the 1-second timer never fired"
    assert fired == [timer]
    assert timer.done_message == "Your 1 second timer is done."
    assert timers.active() == []


def test_spoken_timer_fires_through_handlers(handlers, stage):
    done = threading.Event()
    messages = []
    handlers.timers.on_fire(lambda t: (messages.append(t.done_message), done.set()))
    result = stage.match("set a timer for 1 second")
    assert result is not None and result.name == "HassStartTimer"
    reply = handlers.handle(result)
    assert reply.text == "Timer set for 1 second."
    assert reply.cacheable is False
    assert done.wait(10)
    assert messages == ["Your 1 second timer is done."]


def _fired_messages(handlers: IntentHandlers) -> tuple[list[str], threading.Event]:
    """What the assistant would say when timers fire (registered after the handlers'
    own callback, as the pipeline's notification is)."""
    messages: list[str] = []
    done = threading.Event()
    handlers.timers.on_fire(lambda t: (messages.append(t.done_message), done.set()))
    return messages, done


@pytest.mark.parametrize("sentence", ["in 1 second turn off the kitchen light",
                                      "turn off the kitchen light in 1 second"])
def test_timer_command_runs_through_the_home_handler_when_it_fires(stage, sentence):
    dry = DryRunHomeHandler()
    handlers = IntentHandlers(Config(), home=dry, recognizer=stage)
    try:
        messages, done = _fired_messages(handlers)
        result = stage.match(sentence)
        assert result.name == "HassStartTimer"
        assert result.slots["conversation_command"] == "turn off the kitchen light"
        assert handlers.handle(result).text == "In 1 second, I'll turn off the kitchen light."
        assert dry.calls == []  # nothing happens before the timer fires
        assert done.wait(10), "the command timer never fired"
        assert [(c.name, c.slots) for c in dry.calls] == [("HassTurnOff",
                                                          {"name": "kitchen light"})]
        assert messages == ["It's been 1 second. Turning off the kitchen light."]
    finally:
        handlers.close()


def test_timer_command_calls_home_assistant_when_it_fires(home_assistant, stage):
    url, recorder = home_assistant
    cfg = Config()
    cfg.home.home_assistant_url = url
    handlers = load_handlers(cfg, stage)
    try:
        messages, done = _fired_messages(handlers)
        handlers.handle(stage.match("in 1 second turn on the kitchen light"))
        assert recorder.calls == []
        assert done.wait(10)
        assert [c["body"] for c in recorder.calls] == [
            {"name": "HassTurnOn", "data": {"name": "kitchen light"}}]
        assert messages == ["It's been 1 second. Turned on the light"]
    finally:
        handlers.close()


def test_timer_command_not_understood_sets_no_timer(stage):
    handlers = IntentHandlers(Config(), home=DryRunHomeHandler(), recognizer=stage)
    try:
        result = stage.match("in 5 minutes defrost the zeppelin")
        assert result is not None and result.slots["conversation_command"]
        reply = handlers.handle(result)
        assert reply.text.startswith("Sorry, I don't know how to defrost the zeppelin")
        assert handlers.timers.active() == []
        # without an intent stage a command cannot be read either
        plain = IntentHandlers(Config(), home=DryRunHomeHandler())
        assert plain.handle(result).text.startswith("Sorry")
        plain.close()
    finally:
        handlers.close()


def test_cancelled_command_timer_never_runs_its_command(stage):
    dry = DryRunHomeHandler()
    handlers = IntentHandlers(Config(), home=dry, recognizer=stage)
    try:
        handlers.handle(stage.match("in 1 second turn off the kitchen light"))
        assert handlers.handle(stage.match("cancel my timer")).text == \
            "1 second timer cancelled."
        time.sleep(1.5)
        assert dry.calls == []
    finally:
        handlers.close()


def test_cancelled_timer_never_fires(handlers, stage):
    fired = []
    handlers.timers.on_fire(fired.append)
    handlers.handle(stage.match("set a timer for 1 second"))
    reply = handlers.handle(stage.match("cancel my timer"))
    assert reply.text == "1 second timer cancelled."
    time.sleep(1.5)
    assert fired == [] and handlers.timers.active() == []
    assert handlers.handle(stage.match("cancel my timer")).text == "You have no timers running."


def test_timer_status_pause_resume_and_add(handlers, stage):
    handlers.handle(stage.match("set a 10 minute pizza timer"))
    status = handlers.handle(stage.match("how much time is left on my timer")).text
    assert status.startswith("Your pizza timer has ") and status.endswith(" left.")
    assert "9 minutes" in status or "10 minutes" in status
    [timer] = handlers.timers.active()
    before = timer.remaining_s
    assert handlers.handle(stage.match("add 2 minutes to the pizza timer")).text == \
        "Added 2 minutes to your pizza timer."
    assert timer.remaining_s > before + 100
    assert handlers.handle(stage.match("pause the pizza timer")).text == "Pizza timer paused."
    paused_at = timer.remaining_s
    time.sleep(0.2)
    assert timer.remaining_s == paused_at  # a paused timer does not run down
    assert "(paused)" in handlers.handle(stage.match("how long is left on my timer")).text
    assert handlers.handle(stage.match("resume the pizza timer")).text == "Pizza timer resumed."
    assert not timer.paused
    assert handlers.handle(intent("HassCancelAllTimers")).text == "Timer cancelled."


def test_timer_without_duration_asks(handlers):
    assert handlers.handle(intent("HassStartTimer")).text == "How long should the timer be?"


def test_say_duration():
    assert say_duration(3725) == "1 hour, 2 minutes and 5 seconds"
    assert say_duration(60) == "1 minute"
    assert say_duration(90) == "1 minute and 30 seconds"


# -- local answers -------------------------------------------------------------------


def test_time_and_date(handlers):
    now = handlers.handle(intent("HassGetCurrentTime"))
    assert now.text == "It's 3:05 PM." and now.cacheable is False
    today = handlers.handle(intent("HassGetCurrentDate"))
    assert today.text == "Today is Friday, January 2, 2026." and today.cacheable is False


def test_time_with_the_real_clock(stage):
    h = IntentHandlers(Config())
    reply = h.handle(stage.match("what time is it"))
    assert reply.text.startswith("It's ") and reply.text.endswith(("AM.", "PM."))


def test_nevermind_ends_the_conversation(handlers, stage):
    for sentence in ("never mind", "stop", "cancel"):
        reply = handlers.handle(stage.match(sentence))
        assert reply.text == "" and reply.end_conversation


def test_repeat_returns_last_reply_per_session(handlers, stage):
    assert handlers.handle(stage.match("repeat that")).text == "I haven't said anything yet."
    said = handlers.handle(stage.match("what time is it"), session="a").text
    handlers.handle(stage.match("stop"), session="a")  # silence does not overwrite it
    assert handlers.handle(stage.match("repeat that"), session="a").text == said
    handlers.remember("b", "Paris is the capital of France.")  # e.g. an LLM answer
    assert handlers.handle(stage.match("say that again"), session="b").text == \
        "Paris is the capital of France."


def test_volume_is_recorded(handlers, stage):
    assert handlers.handle(stage.match("set the volume to 30")).text == "Volume set to 30 percent."
    assert handlers.volume["default"] == 30
    handlers.handle(stage.match("louder"))
    assert handlers.volume["default"] == 40
    handlers.handle(stage.match("set volume to 100"))
    handlers.handle(stage.match("volume up"))
    assert handlers.volume["default"] == 100


def test_weather_without_a_service_says_so(handlers, stage):
    reply = handlers.handle(stage.match("what's the weather"))
    assert "weather" in reply.text and "can't" in reply.text


# -- home automation -----------------------------------------------------------------


@pytest.mark.parametrize("sentence, reply", [
    ("turn on the kitchen light", "Turning on the kitchen light."),
    ("turn off the lights in the bedroom", "Turning off the lights in the bedroom."),
    ("open the garage door", "Opening the garage door."),
    ("set the brightness of the living room lamp to 50%",
     "Setting the living room lamp to 50 percent brightness."),
    ("set the thermostat to 70", "Setting the temperature to 70 degrees."),
    ("pause the tv", "Pausing the tv."),
    ("add eggs to my shopping list", "Added eggs to your shopping list."),
])
def test_dry_run_says_what_it_would_do(handlers, stage, sentence, reply):
    assert isinstance(handlers.home, DryRunHomeHandler)
    result = stage.match(sentence)
    assert handlers.handle(result).text == reply
    assert handlers.home.calls[-1] is result


def test_dry_run_keeps_the_shopping_list(handlers, stage):
    handlers.handle(stage.match("add milk to my shopping list"))
    assert handlers.home.lists["shopping"] == ["milk"]


def test_unknown_intent_gets_an_honest_reply(handlers):
    reply = handlers.handle(intent("HassVacuumStart"))
    assert "no Home Assistant is connected" in reply.text


class _Recorder(BaseHTTPRequestHandler):
    calls: list[dict] = []
    status = 200

    def do_POST(self):  # noqa: N802 (http.server API)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).calls.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                 "type": self.headers.get("Content-Type"),
                                 "body": json.loads(body)})
        payload = {"speech": {"plain": {"speech": "Turned on the light", "extra_data": None}},
                   "card": {}, "language": "en", "response_type": "action_done"}
        data = json.dumps(payload).encode() if self.status == 200 else b"{}"
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def home_assistant():
    _Recorder.calls = []
    _Recorder.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder
    server.shutdown()
    server.server_close()


def test_home_assistant_handler_calls_the_rest_api(home_assistant, stage):
    url, recorder = home_assistant
    cfg = Config()
    cfg.home.home_assistant_url = url + "/"
    cfg.home.home_assistant_token = "secret-token"
    handlers = load_handlers(cfg, stage)
    assert isinstance(handlers.home, HomeAssistantHandler)
    reply = handlers.handle(stage.match("turn on the kitchen light"))
    assert reply.text == "Turned on the light"
    assert recorder.calls == [{
        "path": "/api/intent/handle", "auth": "Bearer secret-token",
        "type": "application/json",
        "body": {"name": "HassTurnOn", "data": {"name": "kitchen light"}},
    }]
    handlers.handle(stage.match("set the brightness of the living room lamp to 50%"))
    assert recorder.calls[-1]["body"] == {
        "name": "HassLightSet", "data": {"name": "living room lamp", "brightness": 50}}
    # With Home Assistant connected, the weather question goes to it too.
    handlers.handle(stage.match("what's the weather"))
    assert recorder.calls[-1]["body"]["name"] == "HassGetWeather"
    # Local intents never reach it.
    handlers.handle(stage.match("what time is it"))
    assert len(recorder.calls) == 3


def test_home_assistant_errors_are_spoken_not_raised(home_assistant):
    url, recorder = home_assistant
    recorder.status = 401
    assert HomeAssistantHandler(url, "bad").handle(intent("HassTurnOn", name="tv")).text == \
        "Home Assistant refused my access token."
    recorder.status = 500
    assert HomeAssistantHandler(url, "t").handle(intent("HassTurnOn", name="tv")).text == \
        "Home Assistant couldn't do that."
    unreachable = HomeAssistantHandler("http://127.0.0.1:9", "t", timeout_s=2)
    assert unreachable.handle(intent("HassTurnOn", name="tv")).text == \
        "I couldn't reach Home Assistant."


# -- user domains ---------------------------------------------------------------------


def test_domain_handler_fills_the_response_template():
    handler = DomainHandler(lambda d: {"orderDrink": "One {size} {coffeeDrink}, coming up."}
                            if d == "coffee" else {})
    reply = handler.handle(intent("orderDrink", "coffee", size="large", coffeeDrink="latte"))
    assert reply.text == "One large latte, coming up."
    missing = handler.handle(intent("orderDrink", "coffee", coffeeDrink="latte"))
    assert missing.text == "One latte, coming up."
    plain = handler.handle(intent("orderTea", "tea", kind="green"))
    assert plain.text == "Okay: green."


@pytest.mark.models
def test_handlers_use_domain_file_responses(tmp_path):
    (tmp_path / "pizza.yaml").write_text(
        "language: en\nintents:\n  orderPizza:\n    data:\n      - sentences:\n"
        "          - \"a {size} pizza\"\nlists:\n  size:\n    values: [small, large]\n"
        "responses:\n  orderPizza: \"One {size} pizza, coming up.\"\n")
    cfg = Config()
    cfg.nlu.builtin_domains = []
    cfg.nlu.domains_dir = str(tmp_path)
    pizza_stage = IntentStage(cfg)
    for h in (load_handlers(cfg, pizza_stage), load_handlers(cfg)):  # via stage, via files
        reply = h.handle(pizza_stage.match("a large pizza"))
        assert reply.text == "One large pizza, coming up."


def test_a_failing_handler_answers_instead_of_raising(handlers):
    class Broken:
        def handle(self, intent):
            raise RuntimeError("boom")

    handlers.home = Broken()
    reply = handlers.handle(intent("HassTurnOn", name="tv"))
    assert reply.text == "Sorry, something went wrong doing that."


def test_per_session_state_is_bounded():
    h = IntentHandlers(Config())
    try:
        for i in range(1000):
            h.remember(f"satellite-{i}", "said")
        assert len(h._last) == 256 and h.last_reply("satellite-999").text == "said"
        assert h.last_reply("satellite-0") is None
    finally:
        h.close()
