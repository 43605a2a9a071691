"""hark driving ESPHome voice satellites through aioesphomeapi: the real client library
against the device emulator (hark/bench/esphome_emulator.py: aioesphomeapi's protobuf
messages, its plaintext and Noise framing) and a small fake assistant. The real models
run in test_esphome_satellite_e2e.py."""

from __future__ import annotations

import asyncio
import base64
import logging
import socket

import aiohttp
import numpy as np
import pytest
from aioesphomeapi import VoiceAssistantEventType as ET
from aioesphomeapi import VoiceAssistantFeature as F

from hark.asr.base import Transcript as HarkTranscript
from hark.audio import AudioChunk
from hark.bench.esphome_emulator import MEDIA_PLAYER_FLAGS, SPEAKER_FLAGS, EsphomeDevice
from hark.cli import main
from hark.config import Config, load_config, validate
from hark.errors import ConfigError
from hark.pipeline.events import (ReplyAudio, ReplyText, SpeechEnded, SpeechStarted,
                                  TranscriptEvent, TurnEnd)
from hark.server.esphome_satellite import DROPPED_TEXT, EsphomeLink, EsphomeSatellites
from hark.server.http import Loading, start_http
from hark.server.replies import ReplyStore
from hark.trace import Trace

pytestmark = pytest.mark.timeout(120)

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()
LOUD = 4000
REPLY_SAMPLES = 3000
TTS_RATE = 22050
WAIT_S = 30.0  # how long a test waits for something before it fails (not a timing check)


class FakeAssistant:
    """run_turn: speech is a chunk louder than 1000; the first quiet chunk after it ends
    the turn (hark's own end of turn, in small). ``hold``: a reply waits for it."""

    def __init__(self):
        self.callbacks = []
        self.turns: list[tuple[str, list[AudioChunk]]] = []
        self.areas: list[str | None] = []  # the area each turn was given
        self.closed = 0
        self.hold: asyncio.Event | None = None
        self.replying = asyncio.Event()
        self.spoken: list[str] = []

    def on_notify(self, cb):
        self.callbacks.append(cb)

    async def notify(self, session, text):
        for cb in self.callbacks:
            await cb(session, text)

    async def speak(self, text):
        self.spoken.append(text)
        for _ in range(2):
            yield AudioChunk(np.full(1500, 9, np.int16), TTS_RATE)

    async def run_turn(self, audio, *, session="default", area=None):
        got: list[AudioChunk] = []
        self.turns.append((session, got))
        self.areas.append(area)
        finished = False
        try:
            speech = False
            async for chunk in audio:
                got.append(chunk)
                level = float(np.abs(chunk.samples.astype(np.int32)).mean())
                if level > 1000 and not speech:
                    speech = True
                    yield SpeechStarted(chunk.t)
                elif speech and level < 100:
                    break
            if not speech:
                finished = True
                yield TurnEnd(Trace(), "", "", error="no speech")
                return
            yield SpeechEnded(0.0)
            yield TranscriptEvent(HarkTranscript("what time is it", "", True))
            yield ReplyText("It is noon.", "intent")
            self.replying.set()
            if self.hold is not None:
                await self.hold.wait()
            yield ReplyAudio(AudioChunk(np.full(REPLY_SAMPLES, 7, np.int16), TTS_RATE))
            finished = True
            yield TurnEnd(Trace(), "what time is it", "It is noon.")
        finally:
            if not finished:
                self.closed += 1


def speech(speech_s: float = 0.5) -> np.ndarray:
    """0.2 s of silence then "speech" (the emulator adds the silence after it)."""
    return np.concatenate([np.zeros(3200, np.int16),
                           np.full(int(speech_s * 16000), LOUD, np.int16)])


def cfg() -> Config:
    return Config()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 100))


@pytest.fixture
def logged(caplog):
    caplog.set_level(logging.DEBUG, logger="hark.server.esphome_satellite")

    def check(text: str) -> bool:
        return any(text in m for m in caplog.messages)

    check.caplog = caplog
    return check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Rig:
    """hark's HTTP server (replies) + one link per device, torn down together."""

    def __init__(self, tmp_path):
        self.cfg = cfg()
        self.cfg.home_dir = str(tmp_path)
        self.http = None
        self.links: list[EsphomeLink] = []

    async def start_http(self):
        self.http = await start_http(Loading(), self.cfg, port=0, host="127.0.0.1",
                                     token="t" * 24)
        return self.http

    def link(self, dev: EsphomeDevice, assistant, key=None, **kw) -> EsphomeLink:
        link = EsphomeLink(dev.uri, self.cfg, assistant, key=key,
                           replies=self.http.replies if self.http else None,
                           reply_base=self.http.url if self.http else "", **kw)
        link.backoff_min_s, link.backoff_max_s = 0.05, 0.2
        self.links.append(link)
        link.start()
        return link

    async def close(self, *devices):
        for link in self.links:
            await link.stop()
        for d in devices:
            await d.close()
        if self.http is not None:
            await self.http.close()


# --- config and command line --------------------------------------------------------------
def test_config_takes_esphome_devices_and_keys_and_redacts_the_keys(tmp_path, capsys,
                                                                    monkeypatch):
    p = tmp_path / "hark.toml"
    p.write_text('[server]\nesphome_satellites = ["esphome://192.168.1.30:6053"]\n'
                 f'esphome_keys = {{ "192.168.1.30:6053" = "{KEY}" }}\n')
    c = load_config(str(p))
    assert c.server.esphome_keys == {"192.168.1.30:6053": KEY}
    assert KEY not in repr(c.server)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARK_CONFIG", raising=False)
    assert main(["--config", str(p), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert "esphome_satellites" in out and KEY not in out
    for body, says in [
            ('esphome_satellites = ["tcp://h:6053"]', "'esphome://'"),
            (f'esphome_satellites = ["esphome://h:6053"]\n'
             f'esphome_keys = {{ "other:6053" = "{KEY}" }}', "no device 'other:6053'"),
            ('esphome_satellites = ["esphome://h:6053"]\n'
             'esphome_keys = { "h:6053" = "c2hvcnQ=" }', "not an ESPHome encryption key"),
            ('esphome_reply_base = "ftp://x"', "http://")]:
        p.write_text(f"[server]\n{body}\n")
        with pytest.raises(ConfigError) as err:
            load_config(str(p))
        assert says in str(err.value), body
        assert "c2hvcnQ=" not in str(err.value)


def test_serve_refuses_a_bad_esphome_flag_before_loading_anything(capsys, monkeypatch,
                                                                 tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARK_CONFIG", raising=False)
    assert main(["serve", "--esphome", "kitchen:6053"]) == 1
    err = capsys.readouterr().err
    assert "--esphome" in err and "'kitchen:6053'" in err


# --- the reply store ------------------------------------------------------------------------
def test_reply_urls_are_single_use_expire_and_are_bounded():
    now = [0.0]
    store = ReplyStore(clock=lambda: now[0])
    store.ttl_s, store.max_replies = 10.0, 3
    a = store.publish(16000)
    assert len(a.name) > 40 and a.path.startswith("/reply/") and a.path.endswith(".wav")
    assert store.claim(a.name) is a and store.claim(a.name) is None  # single use
    b = store.publish(16000)
    now[0] = 11.0
    assert store.claim(b.name) is None and b.aborted  # expired
    many = [store.publish(16000) for _ in range(5)]
    assert len(store) == 3 and many[0].aborted and many[1].aborted
    assert store.claim(many[-1].name) is many[-1]
    store.max_seconds = 0.1
    c = store.publish(16000)
    c.write(np.ones(16000, np.int16))
    assert sum(len(x) for x in c._chunks) == 1600 * 2  # cut at max_seconds


# --- turns ------------------------------------------------------------------------------------
def test_media_player_device_encrypted_event_order_and_streamed_url(tmp_path):
    """A Voice PE-like device (media player, no SPEAKER) with an encryption key: the run
    events in Home Assistant's order, the reply fetched from the RUN_START URL at
    INTENT_PROGRESS tts_start_streaming, a second fetch refused."""
    async def go():
        rig = Rig(tmp_path)
        await rig.start_http()
        dev = await EsphomeDevice(key=KEY, flags=MEDIA_PLAYER_FLAGS, area="Kitchen").start()
        a = FakeAssistant()
        traces = []
        link = rig.link(dev, a, key=KEY, turn_listeners=[traces.append])
        try:
            await asyncio.wait_for(dev.subscribed.wait(), WAIT_S)
            assert dev.subscribe_flags == F.API_AUDIO
            turn = await dev.run_turn(speech(), pace=False, tail_s=1.0)
            assert turn.types == [
                ET.VOICE_ASSISTANT_RUN_START, ET.VOICE_ASSISTANT_STT_START,
                ET.VOICE_ASSISTANT_STT_VAD_START, ET.VOICE_ASSISTANT_STT_VAD_END,
                ET.VOICE_ASSISTANT_STT_END, ET.VOICE_ASSISTANT_INTENT_START,
                ET.VOICE_ASSISTANT_INTENT_PROGRESS, ET.VOICE_ASSISTANT_INTENT_END,
                ET.VOICE_ASSISTANT_TTS_START, ET.VOICE_ASSISTANT_TTS_END,
                ET.VOICE_ASSISTANT_RUN_END]
            url = turn.data(ET.VOICE_ASSISTANT_RUN_START)["url"]
            assert url.startswith(rig.http.url + "/reply/")
            assert turn.data(ET.VOICE_ASSISTANT_TTS_END)["url"] == url
            assert turn.data(ET.VOICE_ASSISTANT_STT_END) == {"text": "what time is it"}
            assert turn.data(ET.VOICE_ASSISTANT_TTS_START) == {"text": "It is noon."}
            assert turn.data(ET.VOICE_ASSISTANT_INTENT_PROGRESS) == {
                "tts_start_streaming": "1"}
            assert turn.port == 0 and turn.fetched_url == url and turn.fetch_status == 200
            assert turn.reply_rate == TTS_RATE
            got = turn.samples()
            assert len(got) == REPLY_SAMPLES and (got == 7).all()
            # the device's audio reached the assistant as 16 kHz chunks, in order
            heard = np.concatenate([c.samples for c in a.turns[0][1]])
            assert heard[:3200].max() == 0 and (heard[3200:3200 + 8000] == LOUD).all()
            assert a.turns[0][0] == "esphome-127.0.0.1:%d" % dev.port
            assert a.areas == ["Kitchen"] and link.area == "Kitchen"  # its room: context
            assert traces and traces[0].info["frontend"] == "esphome"
            async with aiohttp.ClientSession() as s:
                async with s.get(url) as resp:
                    assert resp.status == 404  # single use
                async with s.get(rig.http.url + "/api/state") as resp:
                    assert resp.status == 401  # the rest still asks for the token
            assert link.stats.turns == 1 and dev.handshake_failures == 0
        finally:
            await rig.close(dev)

    run(go())


def test_speaker_device_gets_the_reply_over_the_api_unencrypted(tmp_path, logged):
    """A device with SPEAKER and API_AUDIO, no key: TTS_START, TTS_END, the stream events
    and the reply as 16 kHz VoiceAssistantAudio."""
    async def go():
        rig = Rig(tmp_path)
        await rig.start_http()
        dev = await EsphomeDevice(flags=SPEAKER_FLAGS).start()
        a = FakeAssistant()
        rig.link(dev, a)
        try:
            await asyncio.wait_for(dev.subscribed.wait(), WAIT_S)
            turn = await dev.run_turn(speech(), pace=False, tail_s=1.0)
            assert turn.types == [
                ET.VOICE_ASSISTANT_RUN_START, ET.VOICE_ASSISTANT_STT_START,
                ET.VOICE_ASSISTANT_STT_VAD_START, ET.VOICE_ASSISTANT_STT_VAD_END,
                ET.VOICE_ASSISTANT_STT_END, ET.VOICE_ASSISTANT_INTENT_START,
                ET.VOICE_ASSISTANT_INTENT_END, ET.VOICE_ASSISTANT_TTS_START,
                ET.VOICE_ASSISTANT_TTS_END, ET.VOICE_ASSISTANT_TTS_STREAM_START,
                ET.VOICE_ASSISTANT_TTS_STREAM_END, ET.VOICE_ASSISTANT_RUN_END]
            assert turn.fetched_url is None and turn.reply_rate == 16000
            got = turn.samples()
            # 3000 samples at 22.05 kHz are ~2177 at 16 kHz (less the resampler's delay)
            assert 1900 < len(got) <= 2200 and np.median(got) == 7
            assert logged("replies over the API")
        finally:
            await rig.close(dev)

    run(go())


def test_no_speech_is_an_error_event_and_the_device_serves_on(tmp_path):
    async def go():
        rig = Rig(tmp_path)
        await rig.start_http()
        dev = await EsphomeDevice().start()
        a = FakeAssistant()
        rig.link(dev, a)
        try:
            await asyncio.wait_for(dev.subscribed.wait(), WAIT_S)
            turn = await dev.run_turn(np.zeros(1600, np.int16), pace=False, tail_s=0.5)
            assert turn.types[-2:] == [ET.VOICE_ASSISTANT_ERROR, ET.VOICE_ASSISTANT_RUN_END]
            assert turn.data(ET.VOICE_ASSISTANT_ERROR)["code"] == "stt-no-text-recognized"
            turn = await dev.run_turn(speech(), pace=False, tail_s=1.0)
            assert turn.types[-1] == ET.VOICE_ASSISTANT_RUN_END and len(turn.samples())
        finally:
            await rig.close(dev)

    run(go())


def test_a_wrong_key_is_logged_by_device_and_retried_with_backoff(tmp_path, logged):
    async def go():
        rig = Rig(tmp_path)
        dev = await EsphomeDevice(key=KEY).start()
        link = rig.link(dev, FakeAssistant(), key=OTHER_KEY)
        try:
            while link.stats.failures < 3:
                await asyncio.sleep(0.05)
            assert dev.handshake_failures >= 3 and not link.connected.is_set()
            assert logged(f"esphome satellite {dev.uri}: wrong encryption key")
            assert logged('server.esphome_keys["127.0.0.1:%d"]' % dev.port)
            text = "\n".join(logged.caplog.messages)
            assert KEY not in text and OTHER_KEY not in text
            # and a device that wants a key gets a clear line when none is set
            link2 = rig.link(dev, FakeAssistant(), key=None)
            while link2.stats.failures < 1:
                await asyncio.sleep(0.05)
            assert logged("the device uses encryption: set its key")
        finally:
            await rig.close(dev)

    run(go())


def test_a_device_that_drops_mid_turn_is_reconnected_and_told(tmp_path, logged):
    """The device drops while the reply is being made: one log line, the turn's work is
    cancelled, the link reconnects, and the device (it can announce) hears an apology;
    its next turn works."""
    async def go():
        rig = Rig(tmp_path)
        await rig.start_http()
        dev = await EsphomeDevice(key=KEY).start()
        a = FakeAssistant()
        a.hold = asyncio.Event()
        link = rig.link(dev, a, key=KEY)
        try:
            await asyncio.wait_for(dev.subscribed.wait(), WAIT_S)
            asyncio.create_task(dev.run_turn(speech(), pace=False, tail_s=1.0,
                                             timeout_s=5))
            await asyncio.wait_for(a.replying.wait(), WAIT_S)
            await dev.drop()
            while not dev.announcements or not dev.announcements[0].done.is_set():
                await asyncio.sleep(0.05)
            assert logged("disconnected mid-turn")
            assert a.closed == 1 and dev.connections == 2
            assert a.spoken == [DROPPED_TEXT] and link.stats.announcements == 1
            assert (dev.announcements[0].samples() == 9).all()
            assert len(dev.announcements[0].samples()) == 3000
            a.hold = None
            turn = await dev.run_turn(speech(), pace=False, tail_s=1.0)
            assert turn.types[-1] == ET.VOICE_ASSISTANT_RUN_END
            assert len(turn.samples()) == REPLY_SAMPLES
        finally:
            await rig.close(dev)

    run(go())


def test_reconnects_when_the_device_comes_up_later(tmp_path, logged):
    async def go():
        rig = Rig(tmp_path)
        port = free_port()
        dev = EsphomeDevice()
        dev.port = port
        link = rig.link(dev, FakeAssistant())
        try:
            while link.stats.failures < 2:
                await asyncio.sleep(0.05)
            assert logged("connection refused") or logged("retrying in")
            await dev.start(port)
            await asyncio.wait_for(link.connected.wait(), WAIT_S)
            assert link.stats.connects == 1 and dev.connections == 1
        finally:
            await rig.close(dev)

    run(go())


def test_audio_that_never_stops_is_bounded_and_bad_audio_is_dropped(tmp_path, logged):
    """A device streams without end to a pipeline that stopped reading: at most
    max_queued_s waits, the rest is dropped with one line; odd-length audio is dropped;
    the device's abort ends the turn and the link serves on."""
    async def go():
        rig = Rig(tmp_path)
        dev = await EsphomeDevice(flags=SPEAKER_FLAGS).start()
        stuck = asyncio.Event()

        class Stuck(FakeAssistant):
            async def run_turn(self, audio, *, session="default"):
                async for _ in audio:
                    stuck.set()
                    await asyncio.Event().wait()  # never reads again
                yield  # pragma: no cover

        link = rig.link(dev, Stuck())
        link.max_queued_s = 0.5
        seen = []
        orig = link._handle_audio

        async def spy(data, data2=None):
            await orig(data, data2)
            if link._turn is not None:
                seen.append(link._turn.queued)

        link._handle_audio = spy  # before it subscribes (it subscribes on connect)
        try:
            await asyncio.wait_for(dev.subscribed.wait(), WAIT_S)
            await dev.stream_forever(chunks=200)  # 6.4 s of audio
            while len(seen) < 150:
                await asyncio.sleep(0.05)
            assert stuck.is_set()
            assert max(seen) <= 0.5 * 16000 and link.stats.dropped_audio > 100
            assert logged("more than 0.5 s of audio waiting; dropping what comes")
            dev.send_raw_audio(b"\x01\x02\x03")
            while link.stats.bad_audio < 1:
                await asyncio.sleep(0.05)
            assert logged("not whole 16-bit samples")
            dev.stop_request()
            while link._turn is not None:
                await asyncio.sleep(0.05)
            assert link.connected.is_set() and link.stats.failures == 0
        finally:
            await rig.close(dev)

    run(go())


def test_announcements_and_several_devices_at_once(tmp_path, logged):
    async def go():
        rig = Rig(tmp_path)
        http = await rig.start_http()
        kitchen = await EsphomeDevice(name="kitchen", key=KEY).start()
        office = await EsphomeDevice(name="office", flags=SPEAKER_FLAGS).start()
        rig.cfg.server.esphome_satellites = [kitchen.uri, office.uri]
        rig.cfg.server.esphome_keys = {f"127.0.0.1:{kitchen.port}": KEY}
        validate(rig.cfg)
        a = FakeAssistant()
        sats = EsphomeSatellites(rig.cfg, a, rig.cfg.server.esphome_satellites,
                                 replies=http.replies, reply_base=http.url)
        for link in sats.links:
            link.backoff_min_s = 0.05
        await sats.start()
        try:
            await asyncio.wait_for(kitchen.subscribed.wait(), WAIT_S)
            await asyncio.wait_for(office.subscribed.wait(), WAIT_S)
            t1, t2 = await asyncio.gather(
                kitchen.run_turn(speech(), pace=False, tail_s=1.0),
                office.run_turn(speech(), pace=False, tail_s=1.0))
            assert len(t1.samples()) == REPLY_SAMPLES and len(t2.samples()) > 1900
            assert {s for s, _ in a.turns} == {l.session for l in sats.links}
            assert sats.owns(f"esphome-127.0.0.1:{kitchen.port}")
            await a.notify(f"esphome-127.0.0.1:{kitchen.port}", "Your timer is done.")
            assert len(kitchen.announcements) == 1
            assert len(kitchen.announcements[0].samples()) == 3000
            await a.notify(f"esphome-127.0.0.1:{office.port}", "Your tea is ready.")
            assert not office.announcements and logged("no ANNOUNCE feature")
        finally:
            await sats.stop()
            await rig.close(kitchen, office)

    run(go())


def test_a_failing_turn_and_a_server_side_wake_word_get_error_events(tmp_path, logged):
    """An assistant that raises mid-turn: ERROR (hark-error) then RUN_END, one log line,
    and the next turn works. A device asking hark for the wake word is refused clearly.
    A reply URL is still checked against the Host header."""
    async def go():
        rig = Rig(tmp_path)
        http = await rig.start_http()
        dev = await EsphomeDevice().start()

        class Failing(FakeAssistant):
            fail = True

            async def run_turn(self, audio, *, session="default"):
                async for ev in super().run_turn(audio, session=session):
                    if self.fail and isinstance(ev, TranscriptEvent):
                        self.fail = False
                        raise RuntimeError("boom")
                    yield ev

        rig.link(dev, Failing())
        try:
            await asyncio.wait_for(dev.subscribed.wait(), WAIT_S)
            turn = await dev.run_turn(speech(), pace=False, tail_s=1.0)
            assert turn.types[-2:] == [ET.VOICE_ASSISTANT_ERROR, ET.VOICE_ASSISTANT_RUN_END]
            assert turn.data(ET.VOICE_ASSISTANT_ERROR)["code"] == "hark-error"
            assert logged("turn failed")
            turn = await dev.run_turn(speech(), pace=False, tail_s=1.0)
            assert len(turn.samples()) == REPLY_SAMPLES
            url = turn.data(ET.VOICE_ASSISTANT_RUN_START)["url"]
            # a fresh reply, asked for under a name that is not this server's: refused
            stream = http.replies.publish(16000)
            async with aiohttp.ClientSession() as s:
                async with s.get(http.url + stream.path,
                                 headers={"Host": "evil.example"}) as resp:
                    assert resp.status == 403
                async with s.get(url) as resp:
                    assert resp.status == 404  # already played
            # the device asks hark to run the wake word: refused with an error answer
            from aioesphomeapi import api_pb2 as pb

            dev._turn = t = type(turn)()
            dev._conn.send(pb.VoiceAssistantRequest(start=True, flags=2))
            await asyncio.wait_for(t.responded.wait(), WAIT_S)
            assert t.error and t.data(ET.VOICE_ASSISTANT_ERROR)["code"] == \
                "wake-provider-missing"
            assert logged("asks hark to listen for its wake word")
        finally:
            await rig.close(dev)

    run(go())


def test_the_reply_route_opens_nothing_else_without_the_token(tmp_path):
    """/reply/ needs no token; a path that climbs out of it still does."""
    async def go():
        rig = Rig(tmp_path)
        http = await rig.start_http()
        try:
            for path in ["/reply/../api/state", "/reply/%2e%2e/api/state",
                         "/reply/x/../../metrics", "/reply/..%2fmetrics"]:
                r, w = await asyncio.open_connection("127.0.0.1", http.port)
                w.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        "Connection: close\r\n\r\n".encode())
                status = (await r.read()).split(b"\r\n")[0]
                w.close()
                assert status.split()[1] in (b"401", b"404"), (path, status)
            r, w = await asyncio.open_connection("127.0.0.1", http.port)
            w.write(b"GET /reply/nothing.wav HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Connection: close\r\n\r\n")
            assert (await r.read()).split(b"\r\n")[0].split()[1] == b"404"
            w.close()
        finally:
            await rig.close()

    run(go())


def test_started_as_hark_serve_starts_them(tmp_path, logged):
    """start_esphome_satellites (what hark serve calls): the devices in the config, their
    keys, replies from the given HTTP server (a loopback one is warned about)."""
    from hark.server.esphome_satellite import start_esphome_satellites

    async def go():
        rig = Rig(tmp_path)
        http = await rig.start_http()
        dev = await EsphomeDevice(key=KEY).start()
        rig.cfg.server.esphome_satellites = [dev.uri]
        rig.cfg.server.esphome_keys = {f"127.0.0.1:{dev.port}": KEY}
        assert await start_esphome_satellites(rig.cfg, FakeAssistant(), [], http=http) is None
        sats = await start_esphome_satellites(rig.cfg, FakeAssistant(), http=http)
        try:
            assert sats.links[0].reply_base == http.url
            assert logged("listens on 127.0.0.1 only")
            await asyncio.wait_for(dev.subscribed.wait(), WAIT_S)
            turn = await dev.run_turn(speech(), pace=False, tail_s=1.0)
            assert len(turn.samples()) == REPLY_SAMPLES
        finally:
            await sats.stop()
            await rig.close(dev)

    run(go())
