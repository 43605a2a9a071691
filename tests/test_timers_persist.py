"""Timers survive a restart: kept in a file written atomically, restored with the time
that passed, and a timer that ended while the server was down fires when it is back,
announced on its satellite when that connects (real files, real sockets)."""

from __future__ import annotations

import asyncio
import json

import pytest
from test_server import FakeAssistant

from hark.config import Config
from hark.nlu.base import IntentResult
from hark.nlu.timers import MAX_TIMERS, TimerManager, timers_path
from hark.server.server import Server
from hark.transport.control import PROTOCOL_VERSION, Connection

pytestmark = pytest.mark.timeout(60)


def test_timers_are_restored_after_a_restart(tmp_path):
    path = tmp_path / "timers.json"
    first = TimerManager()
    assert first.persist(path) == []
    lights = IntentResult("HassTurnOff", {"name": "kitchen light"}, "turn off the kitchen light")
    first.start(600, name="pizza", session="kitchen-1234abcd")
    paused = first.start(900, session="hall-00000000")
    first.pause(paused)
    first.start(1200, command="turn off the kitchen light", action=lights,
                session="kitchen-1234abcd")
    first.close()  # the server stops: nothing fires, the file keeps them
    assert [p.name for p in tmp_path.iterdir()] == ["timers.json"]  # no temp file left

    fired = []
    second = TimerManager()
    second.on_fire(fired.append)
    restored = second.persist(path)
    try:
        assert fired == []
        by_name = {t.name or t.command or "paused": t for t in second.active()}
        assert [t.duration_s for t in second.active()] == [600, 900, 1200]  # same order
        assert 590 < by_name["pizza"].remaining_s <= 600
        assert by_name["paused"].paused and by_name["paused"].remaining_s == \
            pytest.approx(900, abs=1)
        action = by_name["turn off the kitchen light"].action
        assert action == lights and by_name["pizza"].session == "kitchen-1234abcd"
        assert len(restored) == 3
        new = second.start(60)
        assert new.id > max(t.id for t in restored)  # ids go on, never reused
    finally:
        second.close()


def test_a_timer_that_ended_while_down_fires_on_restore(tmp_path):
    path = tmp_path / "timers.json"
    first = TimerManager()
    first.persist(path)
    lights = IntentResult("HassTurnOff", {"area": "garage"}, "turn off the garage lights")
    first.start(300, command="turn off the garage lights", action=lights,
                session="garage-abcdef12")
    first.start(3600, name="bread", session="kitchen-1234abcd")
    first.close()
    data = json.loads(path.read_text())
    data["timers"][0]["ends_at_wall"] -= 3600  # an hour of downtime
    data["timers"][1]["ends_at_wall"] -= 3600
    path.write_text(json.dumps(data))

    fired = []
    second = TimerManager()
    second.on_fire(fired.append)
    second.persist(path)
    try:
        assert len(fired) == 2
        garage = next(t for t in fired if t.session == "garage-abcdef12")
        assert garage.action == lights and garage.duration_s == 300
        assert second.active() == []
        assert json.loads(path.read_text())["timers"] == []  # fired ones are gone
    finally:
        second.close()


def test_every_change_is_saved_and_a_bad_file_is_set_aside(tmp_path):
    path = tmp_path / "timers.json"
    tm = TimerManager()
    tm.persist(path)

    def saved() -> list[float]:
        return [t["duration_s"] for t in json.loads(path.read_text())["timers"]]

    a, b = tm.start(100), tm.start(200)
    assert saved() == [100, 200]
    tm.add_time(a, 50)
    assert json.loads(path.read_text())["timers"][0]["ends_at_wall"] > 0
    tm.cancel(b)
    assert saved() == [100]
    tm.cancel_all()
    assert saved() == []
    tm.close()
    path.write_text('{"timers": [{"id": "x"}, 17, {"id": 3, "duration_s": -1}]')  # cut off
    again = TimerManager()
    assert again.persist(path) == []
    assert (tmp_path / "timers.json.corrupt").exists()
    again.close()
    path.write_text(json.dumps({"timers": [{"id": "x"}, 17, {"id": 3, "duration_s": -1},
                                           {"id": 4, "duration_s": 60,
                                            "ends_at_wall": 4e9}]}))
    third = TimerManager()
    assert [t.id for t in third.persist(path)] == [4]  # the bad records are skipped
    third.close()


def test_timers_are_capped():
    tm = TimerManager()
    try:
        for _ in range(MAX_TIMERS):
            tm.start(1000)
        with pytest.raises(ValueError, match="running already"):
            tm.start(1000)
    finally:
        tm.close()


def test_timers_path_default_and_configured(tmp_path):
    cfg = Config(home_dir=str(tmp_path))
    assert timers_path(cfg) == tmp_path / "timers.json"
    cfg.server.timers_file = str(tmp_path / "state" / "t.json")
    assert timers_path(cfg) == tmp_path / "state" / "t.json"


async def _hello(server: Server, name: str) -> Connection:
    conn = await Connection.open("127.0.0.1", server.control_port)
    await conn.send("hello", {"version": PROTOCOL_VERSION, "name": name,
                              "token": server.token, "capabilities": []})
    assert (await asyncio.wait_for(conn.recv(), 10)).type == "welcome"
    return conn


async def _timer_text(conn: Connection) -> str:
    while (ev := await asyncio.wait_for(conn.recv(), 10)).type != "timer":
        pass
    return ev.data["text"]


def test_an_announcement_waits_for_its_satellite(tmp_path):
    """A restored timer names a session of before the restart: it is said on the
    satellite of that name, now or when it connects."""
    async def go():
        cfg = Config(home_dir=str(tmp_path))
        cfg.server.control_port = cfg.server.rtp_port = 0
        fake = FakeAssistant()
        server = Server(cfg, fake)
        await server.start()
        try:
            await fake.notify("kitchen-0badc0de", "Your bread timer is done.")
            kitchen = await _hello(server, "kitchen")  # connects after: hears it then
            held = await _timer_text(kitchen)
            await fake.notify("kitchen-feedf00d", "Your pizza timer is done.")  # old id
            now = await _timer_text(kitchen)
            await kitchen.close()
            return held, now
        finally:
            await server.stop()

    held, now = asyncio.run(go())
    assert held == "Your bread timer is done." and now == "Your pizza timer is done."
