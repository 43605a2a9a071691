"""hark driving the real ``wyoming-satellite`` from PyPI (its own virtualenv, made on first
use), started inside the test on loopback: its mic command plays Piper-spoken clips in
real time then silence, its snd command writes what it is given to files; the replies
are transcribed back with Whisper."""

from __future__ import annotations

import asyncio
import re

import pytest
from spoken import digits_heard

from hark.audio import resample
from hark.config import Config
from hark.errors import HarkError
from hark.bench.transport import word_error_rate

pytestmark = [pytest.mark.models, pytest.mark.timeout(600)]


@pytest.fixture(scope="session")
def satellite_python():
    from hark.bench.wyoming_satellite import satellite_python

    try:
        return satellite_python(Config().home_path / "tools")
    except HarkError as exc:
        pytest.skip(f"wyoming-satellite cannot be installed here: {exc}")


@pytest.fixture(scope="session")
def whisper():
    from hark.asr.whisper import load_asr

    return load_asr(Config())


def _heard(whisper, reply) -> str:
    return whisper.transcribe(resample(reply.audio, reply.rate, 16000))


def _says_the_time(said: str, heard: str) -> bool:
    """Whether Whisper heard the time the reply says. Whisper tiny writes the spoken
    "three fifty-two PM" as "3:52 p.m.", "352pm" or "350 2pm", so the digits are compared
    with their zeros left out ("It's 4:00 PM.": the hour alone)."""
    hour, minute = (int(x) for x in re.findall(r"\d+", said)[:2])
    want = (f"{hour}{minute:02d}" if minute else f"{hour}").replace("0", "")
    return want in digits_heard(heard).replace("0", "")


def _close(reference: str, heard: str) -> bool:
    """Whisper tiny heard ``reference`` (its numbers written either way, at most two words
    in five wrong: Piper's own variation makes it hear "Timer set" as "Time or set" now
    and then)."""
    numbers = {"5": "five", "3": "three", "10": "ten"}
    norm = lambda t: " ".join(numbers.get(w, w) for w in re.findall(r"[\w']+", t.lower()))
    return word_error_rate(norm(reference), norm(heard)) <= 0.4


def _config(cfg) -> Config:
    c = Config()
    c.llm = cfg.llm
    return c


async def _drive(c, assistant, sat, traces):
    from hark.server.wyoming_satellite import WyomingSatellites

    await sat.start()
    group = WyomingSatellites(c, assistant, [sat.uri], turn_listeners=[traces.append])
    await group.start()
    await asyncio.wait_for(group.links[0].connected.wait(), 60)
    return group


def test_satellite_with_its_own_wake_word_answers_what_time_it_is(
        assistant, cfg, speak, satellite_python, whisper, tmp_path, clock):
    """The satellite detects "Alexa" itself (its --wake-uri is hark's Wyoming wake
    service), then streams; hark's end of turn ends the command, the reply is played by
    the satellite's snd command and says the time; the satellite goes back to waiting
    for its wake word. Restarted, it is driven again (hark reconnects by itself)."""
    from hark.bench.wyoming_satellite import SatelliteProcess, wake_clip
    from hark.server.wyoming import start_wyoming

    clip, true_end = wake_clip(speak("What time is it?"), speak("Alexa."))

    async def go():
        c = _config(cfg)
        service = await start_wyoming(c, assistant, port=0)
        sat = SatelliteProcess(satellite_python, tmp_path / "sat",
                               wake_uri=f"tcp://127.0.0.1:{service.port}")
        traces: list = []
        group = None
        try:
            group = await _drive(c, assistant, sat, traces)
            link = group.links[0]
            await sat.wait_log("Connected to wake service")
            await sat.wait_log("Waiting for wake word")
            sat.play(clip, true_end)
            reply = await sat.next_reply(120)
            await sat.wait_log("Waiting for wake word", count=2)  # back to its wake word
            sat.stop()  # the satellite goes down; a new one comes up on the same port
            sat2 = SatelliteProcess(satellite_python, tmp_path / "sat2",
                                    wake_uri=sat.wake_uri, port=sat.port)
            await sat2.start()
            while link.stats.connects < 2:
                await asyncio.sleep(0.1)
            sat2.stop()
            return reply, traces, link.stats
        finally:
            if group is not None:
                await group.stop()
            sat.stop()
            await service.stop()

    reply, traces, stats = asyncio.run(go())
    assert len(traces) == 1
    info = traces[0].info
    assert "time" in info["transcript"].lower(), info
    assert info["intent"] == "HassGetCurrentTime"
    said = info["reply"]  # "It's 3:45 PM."
    assert reply.first_t is not None and len(reply.audio) / reply.rate > 0.8
    heard = _heard(whisper, reply)
    assert _says_the_time(said, heard), (said, heard)
    assert stats.connects == 2 and stats.failures >= 1


def test_always_streaming_satellite_hark_wake_word_timer_announcement(
        assistant, cfg, speak, satellite_python, whisper, tmp_path, clock):
    """The satellite streams all the time (no wake word of its own), at 48 kHz stereo:
    hark hears "Alexa", sets the timer, announces its end on that satellite, and hears
    the next "Alexa" on the same stream."""
    from hark.bench.wyoming_satellite import SatelliteProcess, wake_clip

    wake = speak("Alexa.")
    timer_clip, timer_end = wake_clip(speak("Set a timer for five seconds."), wake)
    time_clip, time_end = wake_clip(speak("What time is it?"), wake)

    async def go():
        c = _config(cfg)
        sat = SatelliteProcess(satellite_python, tmp_path / "sat", mic_rate=48000,
                               mic_channels=2)
        traces: list = []
        group = None
        try:
            group = await _drive(c, assistant, sat, traces)
            await sat.wait_log("Streaming audio")
            sat.play(timer_clip, timer_end)
            set_reply = await sat.next_reply(120)
            announced = await sat.next_reply(120)
            sat.play(time_clip, time_end)
            time_reply = await sat.next_reply(120)
            return set_reply, announced, time_reply, traces, group.links[0].stats
        finally:
            if group is not None:
                await group.stop()
            sat.stop()

    set_reply, announced, time_reply, traces, stats = asyncio.run(go())
    assert [t.info["intent"] for t in traces] == ["HassStartTimer", "HassGetCurrentTime"]
    heard = _heard(whisper, set_reply)
    assert _close(traces[0].info["reply"], heard) and "set" in heard.lower(), heard
    heard = _heard(whisper, announced)
    assert _close("Your 5 second timer is done.", heard) and "done" in heard.lower(), heard
    said = traces[1].info["reply"]
    heard = _heard(whisper, time_reply)
    assert _says_the_time(said, heard), (said, heard)
    assert stats.wakes == 2 and stats.announcements == 1 and stats.refused_chunks == 0
