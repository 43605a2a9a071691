"""The home read from Home Assistant and kept current (hark.nlu.ha_client), against the
in-test Home Assistant of ``ha_fake`` (its REST and WebSocket message shapes)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from ha_fake import TOKEN, FakeHomeAssistant, free_port

from hark.config import Config
from hark.nlu.ha_client import (
    REFUSED,
    UNREACHABLE,
    HomeAssistantSync,
    keep_current,
    websocket_url,
)
from hark.nlu.home import Home

pytestmark = pytest.mark.timeout(120)
WAIT = 30.0  # generous: a loaded 2-core machine


def run(coro):
    return asyncio.run(coro)


def make_sync(url: str, token: str = TOKEN, **kw) -> HomeAssistantSync:
    kw.setdefault("timeout_s", 10.0)
    return HomeAssistantSync(url, token, backoff_s=0.05, max_backoff_s=0.5, **kw)


def test_websocket_url():
    assert websocket_url("http://ha.local:8123") == "ws://ha.local:8123/api/websocket"
    assert websocket_url("https://ha.example/") == "wss://ha.example/api/websocket"
    with pytest.raises(ValueError):
        websocket_url("ha.local:8123")


def test_reads_the_home_exposed_entities_only():
    async def go():
        ha = await FakeHomeAssistant().start()
        sync = make_sync(ha.url)
        try:
            home = await sync.start(WAIT)
            return home, sync.status, sync.area_of_device("Bedroom Voice"), \
                sync.area_of_device("nothing"), list(ha.commands)
        finally:
            await sync.stop()
            await ha.stop()

    home, status, satellite_area, unknown_area, commands = run(go())
    assert status == "connected"
    assert isinstance(home, Home)
    by_id = {e.id: e for e in home.entities}
    # exposed (the fan through its registry option only); the heater and the sun are not
    assert set(by_id) == {"light.porch_lamp", "light.kitchen_ceiling", "lock.front_door",
                          "sensor.outside_humidity", "fan.bedroom_fan"}
    lamp = by_id["light.porch_lamp"]
    assert (lamp.name, lamp.domain, lamp.area, lamp.aliases, lamp.state) == \
        ("Porch Lamp", "light", "Garden", ["patio light"], "off")
    assert by_id["lock.front_door"].area == "Hall"  # from its device
    humidity = by_id["sensor.outside_humidity"]
    assert humidity.state == "61"
    assert humidity.attributes["unit_of_measurement"] == "%"
    assert humidity.attributes["device_class"] == "humidity"
    assert by_id["light.kitchen_ceiling"].attributes["brightness"] == 200
    areas = {a.name: a for a in home.areas}
    assert areas["Kitchen"].aliases == ["cookhouse"]
    assert areas["Kitchen"].floor == "Ground Floor" and areas["Garden"].floor == ""
    assert home.floors == ["Ground Floor", "First Floor"]
    assert home.find_entity("patio light") is lamp
    assert satellite_area == "Bedroom" and unknown_area == ""
    # subscribed before reading, so no change between the reads is missed
    assert commands.index("subscribe_events") < commands.index("get_states")


def test_state_changes_update_entities_in_place():
    async def go():
        ha = await FakeHomeAssistant().start()
        sync = make_sync(ha.url)
        try:
            home = await sync.start(WAIT)
            lock = home.find_entity("front door")
            humidity = home.find_entity("outside humidity")
            await ha.set_state("lock.front_door", "unlocked")
            await sync.wait_for(lambda: lock.state == "unlocked", WAIT)
            await ha.set_state("sensor.outside_humidity", "72.5", {
                "friendly_name": "Outside Humidity", "device_class": "humidity",
                "unit_of_measurement": "%"})
            await sync.wait_for(lambda: humidity.state == "72.5", WAIT)
            # an entity that is not exposed changes: nothing of it enters the home
            await ha.set_state("switch.secret_heater", "on")
            await ha.set_state("lock.front_door", "jammed")  # after the heater's event
            await sync.wait_for(lambda: lock.state == "jammed", WAIT)
            return home, sync.home, lock, humidity
        finally:
            await sync.stop()
            await ha.stop()

    home, current, lock, humidity = run(go())
    assert current is home  # the same objects, changed in place
    assert lock.state == "jammed" and humidity.attributes["unit_of_measurement"] == "%"
    assert home.find_entity("secret heater") is None


def test_states_are_forgotten_while_disconnected():
    """Home Assistant gone: no state is known (""), none is stale; back: read again."""
    async def go():
        ha = await FakeHomeAssistant().start()
        sync = make_sync(ha.url)
        try:
            home = await sync.start(WAIT)
            light = home.find_entity("kitchen ceiling")
            before = (light.state, dict(light.attributes))
            await ha.stop()
            await sync.wait_for(lambda: sync.status == "unreachable", WAIT)
            gone = (light.state, dict(light.attributes), sync.problem())
            await ha.start()
            await ha_connected(sync, 2)
            return before, gone, (light.state, light.attributes.get("brightness"))
        finally:
            await sync.stop()
            await ha.stop()

    before, gone, back = run(go())
    assert before[0] == "on" and before[1]["brightness"] == 200
    assert gone == ("", {"friendly_name": "Kitchen Ceiling"}, UNREACHABLE)
    assert back == ("on", 200)


def test_registry_change_rebuilds_home_and_matcher():
    """A renamed entity: a new home goes to on_home, the intent stage matches the new
    name, and the command reaches Home Assistant's REST intent API."""
    from hark.nlu.handlers import IntentHandlers
    from hark.nlu.recognizer import load_nlu

    cfg = Config()
    cfg.nlu.embedding_fallback = False  # no model: hassil and the home only
    cfg.nlu.speech_intent = False

    async def go():
        ha = await FakeHomeAssistant().start()
        cfg.home.home_assistant_url, cfg.home.home_assistant_token = ha.url, TOKEN
        homes: list[Home] = []
        loop = asyncio.get_running_loop()
        sync = make_sync(ha.url)
        try:
            home = await sync.start(WAIT)
            stage = await loop.run_in_executor(None, lambda: load_nlu(cfg, home=home))
            first = stage.recognize("turn on the porch lamp")
            hidden = stage.recognize("turn on the secret heater")

            def set_home(new: Home) -> None:  # as hark serve: Assistant.set_home
                stage.set_home(new)
                homes.append(new)

            await keep_current(sync, set_home, home)
            await ha.rename("light.porch_lamp", "Garden Lamp")
            await sync.wait_for(lambda: stage.home is not home, WAIT)
            renamed = stage.recognize("turn on the garden lamp")
            handlers = IntentHandlers(cfg)
            reply = await loop.run_in_executor(None, handlers.handle, renamed)
            handlers.close()
            return first, hidden, renamed, reply, homes, list(ha.intents)
        finally:
            await sync.stop()
            await ha.stop()

    first, hidden, renamed, reply, homes, posted = run(go())
    assert first is not None and first.name == "HassTurnOn"
    assert first.slots["name"] == "Porch Lamp"
    assert hidden is None  # not exposed to Assist: no name hark knows
    assert len(homes) == 1 and homes[0].find_entity("garden lamp").id == "light.porch_lamp"
    assert renamed is not None and renamed.name == "HassTurnOn"
    assert renamed.slots["name"] == "Garden Lamp"
    assert reply.text == "Turned on the light"
    assert posted == [{"name": "HassTurnOn", "data": renamed.slots}]


def test_refused_token_logs_clearly_and_is_spoken(caplog):
    from hark.nlu.base import IntentResult
    from hark.nlu.handlers import IntentHandlers

    bad = "wrong-token-that-must-never-be-logged"
    cfg = Config()
    caplog.set_level(logging.INFO)

    async def go():
        ha = await FakeHomeAssistant().start()
        cfg.home.home_assistant_url, cfg.home.home_assistant_token = ha.url, bad
        sync = make_sync(ha.url, token=bad)
        try:
            home = await sync.start(WAIT)
            handlers = IntentHandlers(cfg)
            intent = IntentResult(name="HassTurnOn", slots={"name": "Porch Lamp"},
                                  text="turn on the porch lamp", domain="homeassistant")
            reply = await asyncio.get_running_loop().run_in_executor(
                None, handlers.handle, intent)
            handlers.close()
            return home, sync.status, sync.problem(), reply, ha.url, list(ha.intents)
        finally:
            await sync.stop()
            await ha.stop()

    home, status, problem, reply, url, posted = run(go())
    assert home is None and status == "unauthorized"
    assert problem == REFUSED and reply.text == REFUSED
    assert posted == []
    refused = [r for r in caplog.records if "refused the access token" in r.getMessage()]
    assert len(refused) == 1 and url in refused[0].getMessage()
    assert refused[0].levelno == logging.ERROR
    assert all(bad not in r.getMessage() for r in caplog.records)
    assert bad not in repr(cfg.home) and bad not in repr(HomeAssistantSync(url, bad))


def test_down_at_start_then_up_is_picked_up(caplog):
    caplog.set_level(logging.INFO)
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    async def go():
        homes: list[Home] = []

        async def on_home(home: Home) -> None:
            homes.append(home)

        sync = make_sync(url, on_home=on_home)
        ha = FakeHomeAssistant(port=port)
        try:
            first = await sync.start(WAIT)  # refused at once: returns without a home
            down = (sync.status, sync.problem())
            await ha.start()
            await sync.wait_for(lambda: sync.status == "connected" and bool(homes), WAIT)
            up = sync.home
            await ha.stop()  # down again: noticed, then back
            await sync.wait_for(lambda: sync.status == "unreachable", WAIT)
            await ha.start()
            await ha_connected(sync, 2)
            await ha.set_state("light.porch_lamp", "on")
            lamp = sync.home.find_entity("porch lamp")
            await sync.wait_for(lambda: lamp.state == "on", WAIT)
            return first, down, up, homes, sync.connections
        finally:
            await sync.stop()
            await ha.stop()

    first, down, up, homes, connections = run(go())
    assert first is None and down == ("unreachable", UNREACHABLE)
    assert up is not None and homes == [up]  # handed over once: the same home after
    assert connections == 2
    lines = [r.getMessage() for r in caplog.records if "cannot reach Home Assistant" in
             r.getMessage()]
    assert lines and url in lines[0]
    assert len(lines) <= 4  # once per change of what went wrong, not once per retry


@pytest.mark.parametrize("http_status, status", [(401, "unauthorized"),
                                                  (404, "unreachable")])
def test_http_refusal_of_the_websocket(caplog, http_status, status):
    caplog.set_level(logging.INFO)

    async def go():
        ha = FakeHomeAssistant()
        ha.http_status = http_status
        await ha.start()
        sync = make_sync(ha.url)
        try:
            return await sync.start(WAIT), sync.status, sync.problem(), ha.url
        finally:
            await sync.stop()
            await ha.stop()

    home, got, problem, url = run(go())
    assert home is None and got == status
    assert problem == (REFUSED if status == "unauthorized" else UNREACHABLE)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert lines and url in lines[0] and f"HTTP {http_status}" in lines[0]


async def ha_connected(sync: HomeAssistantSync, times: int) -> None:
    await sync.wait_for(lambda: sync.connections >= times and sync.status == "connected",
                        WAIT)


def test_oversized_message_is_refused_and_the_client_reconnects(caplog):
    caplog.set_level(logging.INFO)

    async def go():
        ha = await FakeHomeAssistant().start()
        sync = make_sync(ha.url, max_message_bytes=65536)
        try:
            await sync.start(WAIT)
            await ha.send_raw('{"type": "event", "event": {"data": "' + "x" * 200_000
                              + '"}}')
            await sync.wait_for(lambda: sync.status == "error", WAIT)
            detail = sync.detail
            await ha_connected(sync, 2)
            return detail, sync.home
        finally:
            await sync.stop()
            await ha.stop()

    detail, home = run(go())
    assert "larger than the limit" in detail
    assert home is not None and home.find_entity("porch lamp") is not None
    assert any("larger than the limit" in r.getMessage() for r in caplog.records)


def test_entity_count_is_bounded():
    async def go():
        ha = await FakeHomeAssistant().start()
        sync = make_sync(ha.url, max_entities=2)
        try:
            return await sync.start(WAIT)
        finally:
            await sync.stop()
            await ha.stop()

    home = run(go())
    assert [e.id for e in home.entities] == ["fan.bedroom_fan", "light.kitchen_ceiling"]


def test_sync_from_config():
    from hark.nlu.ha_client import sync_from_config

    cfg = Config()
    assert sync_from_config(cfg.home) is None  # no URL
    cfg.home.home_assistant_url, cfg.home.home_assistant_token = "http://ha:8123", TOKEN
    sync = sync_from_config(cfg.home)
    assert sync is not None and sync.ws_url == "ws://ha:8123/api/websocket"
    cfg.home.home_assistant_sync = False
    assert sync_from_config(cfg.home) is None


def test_assistant_with_the_synced_home():
    """The pipeline as ``hark serve`` builds it (Assistant with the synced home, the
    real intent stage and handlers; fake ASR/LLM/TTS engines): an entity of Home
    Assistant is recognized and acted on through its REST API; after a rename the new
    name is; an entity not exposed to Assist is never acted on."""
    from test_pipeline import FakeAsr, FakeLlm, FakeTts, Log, collect

    from hark.nlu.guard import DIDNT_CATCH
    from hark.nlu.handlers import load_handlers
    from hark.nlu.recognizer import load_nlu
    from hark.pipeline.assistant import Assistant
    from hark.pipeline.events import TurnEnd

    cfg = Config()
    cfg.nlu.embedding_fallback = False
    cfg.nlu.speech_intent = False

    async def go():
        ha = await FakeHomeAssistant().start()
        cfg.home.home_assistant_url, cfg.home.home_assistant_token = ha.url, TOKEN
        loop = asyncio.get_running_loop()
        sync = make_sync(ha.url)
        log = Log()
        try:
            home = await sync.start(WAIT)
            nlu = await loop.run_in_executor(None, lambda: load_nlu(cfg, home=home))
            a = Assistant(cfg, vad_factory=lambda: None, asr=FakeAsr(log), nlu=nlu,
                          handlers=load_handlers(cfg, nlu), llm=FakeLlm(log, ["Okay."]),
                          tts=FakeTts(log), home=nlu.home)
            await keep_current(sync, a.set_home, home)
            ends = [(await collect(a.run_text("turn on the porch lamp")))[-1]]
            await ha.rename("light.porch_lamp", "Garden Lamp")
            await sync.wait_for(lambda: a.home is not home, WAIT)
            ends.append((await collect(a.run_text("turn on the garden lamp")))[-1])
            ends.append((await collect(a.run_text("turn on the secret heater")))[-1])
            # an area-wide command: only the exposed light of the kitchen is sent
            ends.append((await collect(a.run_text(
                "turn off the lights in the cookhouse")))[-1])
            ha.exposed["light.kitchen_ceiling"] = {"conversation": False}
            await ha.rename("light.kitchen_ceiling", "Kitchen Ceiling")  # a reload
            await sync.wait_for(lambda: a.home.find_entity("kitchen ceiling") is None,
                                WAIT)
            ends.append((await collect(a.run_text(
                "turn off the lights in the kitchen")))[-1])
            a.close()
            return ends, list(ha.intents), a.rescue_prompt
        finally:
            await sync.stop()
            await ha.stop()

    ends, posted, prompt = run(go())
    assert all(isinstance(e, TurnEnd) and e.error is None for e in ends)
    assert ends[0].reply == ends[1].reply == "Turned on the light"  # Home Assistant's
    assert posted == [{"name": "HassTurnOn", "data": {"name": "Porch Lamp"}},
                      {"name": "HassTurnOn", "data": {"name": "Garden Lamp"}},
                      {"name": "HassTurnOff", "data": {"name": "Kitchen Ceiling",
                                                       "area": "Kitchen"}}]
    assert ends[3].reply == "Turned on the light"  # Home Assistant's speech (the fake's)
    # no light of the kitchen is exposed any more: nothing sent; the guard says so
    assert ends[4].reply == "There's no light in the Kitchen."
    # the heater is not exposed to Assist: no name hark knows, nothing posted, and hark
    # says it did not catch that rather than claiming an action
    assert ends[2].reply == DIDNT_CATCH
    assert "Garden Lamp" in prompt and "Porch Lamp" not in prompt


def test_area_commands_reach_only_exposed_entities():
    """HomeAssistantHandler with the synced home: a target by area/floor/domain/device
    class is sent once per exposed entity, by name; none exposed: nothing is sent."""
    from hark.nlu.base import IntentResult
    from hark.nlu.handlers import HomeAssistantHandler

    async def go():
        ha = await FakeHomeAssistant().start()
        sync = make_sync(ha.url)
        loop = asyncio.get_running_loop()
        try:
            await sync.start(WAIT)
            handler = HomeAssistantHandler(ha.url, TOKEN, home=lambda: sync.home)

            def handle(**slots):
                intent = IntentResult("HassTurnOff", slots, "", domain="homeassistant")
                return loop.run_in_executor(None, handler.handle, intent)

            replies = [await handle(floor="Ground Floor"),
                       await handle(area="Kitchen", domain="switch"),
                       await handle(name="Porch Lamp")]
            return replies, list(ha.intents)
        finally:
            await sync.stop()
            await ha.stop()

    replies, posted = run(go())
    # the ground floor: the kitchen's exposed light; not the heater or the strip light
    # (in the kitchen, not exposed), nor the hall's lock (its domain was not named)
    assert posted[:1] == [
        {"name": "HassTurnOff", "data": {"name": "Kitchen Ceiling", "area": "Kitchen"}}]
    assert replies[0].text == "Turned on the light"  # the fake's speech
    assert replies[1].text == ("I can't control the switches in the Kitchen: Home "
                               "Assistant exposes none to Assist.")
    assert posted[1:] == [{"name": "HassTurnOff", "data": {"name": "Porch Lamp"}}]
