"""hark driving Wyoming satellites: the protocol logic against a scripted satellite and a
small fake assistant (the real wyoming-satellite package is driven in
test_wyoming_satellite_e2e.py)."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

import numpy as np
import pytest
from wyoming.asr import Transcript
from wyoming.audio import AudioChunk as WyChunk
from wyoming.audio import AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Attribution, Describe, Info, Satellite
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.wake import Detection

from hark.asr.base import Transcript as HarkTranscript
from hark.audio import AudioChunk
from hark.cli import main
from hark.config import Config, load_config, parse_override, parse_uri, validate
from hark.errors import ConfigError
from hark.pipeline.events import (ReplyAudio, ReplyText, SpeechEnded, SpeechStarted,
                                  TranscriptEvent, TurnEnd)
from hark.server.wyoming_satellite import (SatelliteAudio, SatelliteLink, WyomingSatellites,
                                           check_format, AudioFormatError)
from hark.trace import Trace

pytestmark = pytest.mark.timeout(120)

LOUD, QUIET, WAKE = 4000, 0, 500  # sample levels: speech, silence, the fake wake word
REPLY_SAMPLES = 3000
WAIT_S = 20.0  # how long a test waits for an event before it fails (not a timing check)


# --- fakes --------------------------------------------------------------------------------
class FakeAssistant:
    """run_turn: speech is a chunk louder than 1000; the first quiet chunk after it ends
    the turn (hark's own end of turn, in small)."""

    tts_rate = 22050

    def __init__(self):
        self.callbacks = []
        self.turns: list[tuple[str, list[AudioChunk]]] = []
        self.areas: list[str | None] = []  # the area each turn was given
        self.closed = 0  # turns whose generator was closed before its end

    def on_notify(self, cb):
        self.callbacks.append(cb)

    async def notify(self, session, text):
        for cb in self.callbacks:
            await cb(session, text)

    async def speak(self, text):
        for _ in range(2):
            yield AudioChunk(np.full(1500, 9, np.int16), self.tts_rate)

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
            yield ReplyAudio(AudioChunk(np.full(REPLY_SAMPLES, 7, np.int16), self.tts_rate))
            finished = True
            yield TurnEnd(Trace(), "what time is it", "It is noon.")
        finally:
            if not finished:
                self.closed += 1


@dataclass
class FakeWakeEvent:
    keyword: str
    stream_s: float
    probability: float = 0.99
    late_s: float = 0.0


class FakeWake:
    """Fires on a chunk of constant WAKE level."""

    verifier = None

    def __init__(self, keyword):
        self.keyword = keyword or "alexa"
        self.resets = 0

    def process(self, chunk):
        if len(chunk.samples) and (chunk.samples == WAKE).all():
            return FakeWakeEvent(self.keyword, 1.0)
        return None

    def reset(self):
        self.resets += 1


class FakeSatellite:
    """A scripted satellite on loopback: answers describe, records every other event."""

    def __init__(self, *, info: Info | None = None, answer_describe: bool = True,
                 name: str = "Kitchen"):
        self.info = info or Info(satellite=Satellite(
            name=name, area="kitchen", description=name,
            attribution=Attribution(name="", url=""), installed=True, version=None))
        self.answer_describe = answer_describe
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.connections = 0
        self.connected = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None
        self.reading = asyncio.Event()  # cleared: it stops reading (a stalled satellite)
        self.reading.set()
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    async def start(self, port: int = 0) -> FakeSatellite:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def uri(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def _handle(self, reader, writer):
        self.connections += 1
        self.writer = writer
        while (ev := await async_read_event(reader)) is not None:
            await self.reading.wait()
            if Describe.is_type(ev.type):
                if self.answer_describe:
                    await async_write_event(self.info.event(), writer)
                continue
            if ev.type == "run-satellite":
                self.connected.set()
            await self.events.put(ev)
        await self.events.put(Event("connection-closed"))

    async def send(self, *events) -> None:
        for ev in events:
            await async_write_event(ev if isinstance(ev, Event) else ev.event(), self.writer)

    async def next(self, etype: str) -> Event:
        """The next event of ``etype`` (audio chunks and other types on the way skipped)."""
        while True:
            ev = await asyncio.wait_for(self.events.get(), WAIT_S)
            if ev.type == etype:
                return ev

    async def until(self, etype: str) -> list[Event]:
        """Every event up to and with the next ``etype``."""
        out = []
        while True:
            ev = await asyncio.wait_for(self.events.get(), WAIT_S)
            out.append(ev)
            if ev.type == etype:
                return out

    async def drop(self) -> None:
        self.connected.clear()
        if self.writer is not None:
            self.writer.close()

    async def close(self) -> None:
        await self.drop()
        if self.server is not None:
            self.server.close()


def chunk(level: int, n: int = 1024, rate: int = 16000, channels: int = 1,
          width: int = 2) -> WyChunk:
    data = np.full(n * channels, level, np.int16).tobytes()
    if width != 2:
        data = bytes(n * channels * width)
    return WyChunk(rate=rate, width=width, channels=channels, audio=data)


def speech(rate: int = 16000, channels: int = 1) -> list[WyChunk]:
    """0.2 s of silence, 0.5 s of "speech", then silence (the turn's end)."""
    n = rate // 20
    return ([chunk(QUIET, n, rate, channels)] * 4 + [chunk(LOUD, n, rate, channels)] * 10
            + [chunk(QUIET, n, rate, channels)] * 4)


def cfg() -> Config:
    c = Config()
    c.wake.verifier = "none"
    return c


def link_for(sat: FakeSatellite, assistant, **kw) -> SatelliteLink:
    link = SatelliteLink(sat.uri, cfg(), assistant, wake_factory=FakeWake, **kw)
    link.backoff_min_s, link.backoff_max_s = 0.05, 0.2
    return link


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


@pytest.fixture
def logged(caplog):
    """logged(text): whether the module logged a line containing ``text``."""
    caplog.set_level(logging.DEBUG, logger="hark.server.wyoming_satellite")

    def check(text: str) -> bool:
        return any(text in m for m in caplog.messages)

    return check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def audio_of(events: list[Event]) -> np.ndarray:
    parts = [np.frombuffer(WyChunk.from_event(e).audio, "<i2") for e in events
             if e.type == "audio-chunk"]
    return np.concatenate(parts) if parts else np.zeros(0, np.int16)


# --- config and command line --------------------------------------------------------------
def test_config_takes_tcp_addresses_and_refuses_bad_ones_clearly(tmp_path):
    p = tmp_path / "hark.toml"
    p.write_text('[server]\nwyoming_satellites = ["tcp://192.168.1.20:10700", '
                 '"tcp://[::1]:10701"]\n')
    c = load_config(str(p))
    assert [parse_uri(u) for u in c.server.wyoming_satellites] == [
        ("192.168.1.20", 10700), ("::1", 10701)]
    assert Config().server.wyoming_satellites == []
    for bad, says in [('["192.168.1.20:10700"]', "no scheme"),
                      ('["udp://h:10700"]', "'udp://'"),
                      ('["tcp://h"]', "a host and a port"),
                      ('["tcp://h:99999"]', "not a valid address"),
                      ('["tcp://h:1/path"]', "a host and a port"),
                      ('[7]', "must be a string"),
                      ('"tcp://h:1"', "wrong type"),
                      ('["tcp://h:1", "tcp://h:1"]', "twice")]:
        p.write_text(f"[server]\nwyoming_satellites = {bad}\n")
        with pytest.raises(ConfigError) as err:
            load_config(str(p))
        assert "server.wyoming_satellites" in str(err.value) and says in str(err.value), bad
    c = Config()
    c.server.wyoming_satellites = ["tcp://h:0"]
    with pytest.raises(ConfigError, match="tcp://HOST:PORT"):
        validate(c)
    with pytest.raises(ConfigError, match="server.wyoming_satellites"):
        load_config(None, parse_override('server.wyoming_satellites=["h:1"]'))


def test_serve_refuses_a_bad_satellite_flag_before_loading_anything(capsys, monkeypatch,
                                                                   tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HARK_CONFIG", raising=False)
    assert main(["serve", "--wyoming-satellite", "tcp://ok:10700",
                 "--wyoming-satellite", "kitchen:10700"]) == 1
    err = capsys.readouterr().err
    assert "--wyoming-satellite" in err and "'kitchen:10700'" in err


# --- audio conversion -----------------------------------------------------------------------
def test_audio_format_checks():
    for rate, width, channels in [(16000, 2, 1), (8000, 2, 2), (48000, 2, 1), (22050, 2, 2)]:
        check_format(rate, width, channels)
    for rate, width, channels in [(7999, 2, 1), (96000, 2, 1), (16000, 4, 1), (16000, 1, 1),
                                  (16000, 2, 3), (16000, 2, 0), ("16000", 2, 1)]:
        with pytest.raises(AudioFormatError, match="hark takes 8000-48000 Hz"):
            check_format(rate, width, channels)


def test_stereo_44k_becomes_16k_mono_across_chunks():
    conv = SatelliteAudio()
    t = np.arange(44100) / 44100
    left = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    right = np.zeros_like(left)
    stereo = np.stack([left, right], axis=1).reshape(-1)
    out = [conv.convert(WyChunk(rate=44100, width=2, channels=2,
                                audio=stereo[i:i + 2048].tobytes()))
           for i in range(0, len(stereo), 2048)]
    mono = np.concatenate(out)
    assert abs(len(mono) - 16000) < 64  # one second, less the resampler's delay
    mid = mono[2000:14000].astype(np.float64)
    # the left channel mixed down (half its level), still a 440 Hz tone
    assert 0.4 < np.abs(mid).max() / 8000 < 0.6
    spectrum = np.abs(np.fft.rfft(mid))
    assert abs(np.argmax(spectrum) * 16000 / len(mid) - 440) < 5
    with pytest.raises(AudioFormatError, match="whole"):
        conv.convert(WyChunk(rate=16000, width=2, channels=2, audio=b"\0" * 6))


# --- the protocol -----------------------------------------------------------------------------
def test_a_turn_after_the_satellites_own_wake_word():
    """run-pipeline from asr (the satellite heard its wake word): the audio (44.1 kHz
    stereo here) goes to the assistant at 16 kHz mono; the satellite gets voice events,
    the transcript, then the reply's audio-start/chunks/stop."""
    async def go():
        sat = await FakeSatellite().start()
        a = FakeAssistant()
        traces = []
        link = link_for(sat, a, turn_listeners=[traces.append])
        link.start()
        try:
            await asyncio.wait_for(sat.connected.wait(), WAIT_S)
            await sat.send(RunPipeline(start_stage=PipelineStage.ASR,
                                       end_stage=PipelineStage.TTS),
                           *speech(44100, 2))
            events = await sat.until("audio-stop")
            return link, a, traces, events
        finally:
            await link.stop()
            await sat.close()

    link, a, traces, events = run(go())
    types = [e.type for e in events if e.type != "audio-chunk"]
    assert types[:1] == ["run-satellite"]
    assert types[1:] == ["voice-started", "voice-stopped", "transcript", "audio-start",
                         "audio-stop"]
    assert Transcript.from_event(events[3]).text == "what time is it"
    assert a.areas == ["kitchen"]  # the satellite's area (its info) is the turn's context
    start = AudioStart.from_event(next(e for e in events if e.type == "audio-start"))
    assert (start.rate, start.width, start.channels) == (22050, 2, 1)
    reply = audio_of(events)
    assert len(reply) == REPLY_SAMPLES and (reply == 7).all()
    session, got = a.turns[0]
    assert session == f"wyoming-satellite-127.0.0.1:{link.port}"
    assert all(c.rate == 16000 and c.samples.dtype == np.int16 for c in got)
    loud = [c for c in got if np.abs(c.samples.astype(int)).mean() > 1000]
    assert loud and abs(np.median(np.concatenate([c.samples for c in loud])) - LOUD) < 50
    assert link.name == "Kitchen" and link.area == "kitchen" and link.stats.turns == 1
    assert traces and traces[0].info["satellite"] == "Kitchen"


def test_always_streaming_satellite_uses_harks_wake_word_turn_after_turn():
    """run-pipeline from wake: hark listens for the wake word on the stream, answers
    detection, runs the turn, then listens for the wake word again (the satellite never
    sends another run-pipeline)."""
    async def go():
        sat = await FakeSatellite().start()
        a = FakeAssistant()
        link = link_for(sat, a)
        link.start()
        try:
            await asyncio.wait_for(sat.connected.wait(), WAIT_S)
            await sat.send(RunPipeline(start_stage=PipelineStage.WAKE,
                                       end_stage=PipelineStage.TTS))
            got = []
            for _ in range(2):
                await sat.send(*[chunk(QUIET)] * 3, chunk(WAKE), *speech())
                got.append(await sat.until("audio-stop"))
            await sat.send(*[chunk(QUIET)] * 5)  # no wake word: no turn
            await sat.send(AudioStop())
            return link, a, got
        finally:
            await link.stop()
            await sat.close()

    link, a, got = run(go())
    for events in got:
        types = [e.type for e in events if e.type != "audio-chunk"]
        assert types[-6:] == ["detection", "voice-started", "voice-stopped", "transcript",
                              "audio-start", "audio-stop"], types
        assert Detection.from_event(next(e for e in events if e.type == "detection")).name \
            == "alexa"
        assert len(audio_of(events)) == REPLY_SAMPLES
    assert link.stats.wakes == 2 and len(a.turns) == 2


def test_a_satellite_that_never_sends_audio_stop(logged):
    """A satellite that stops streaming mid-turn without audio-stop: the turn ends after
    audio_gap_s and is answered; one that streams silence: no speech, an error and an
    empty transcript, so the satellite goes back to its wake word. It serves on."""
    async def go():
        sat = await FakeSatellite().start()
        a = FakeAssistant()
        link = link_for(sat, a)
        link.audio_gap_s, link.no_speech_s = 0.3, 1.0
        link.start()
        try:
            await asyncio.wait_for(sat.connected.wait(), WAIT_S)
            run_asr = RunPipeline(start_stage=PipelineStage.ASR, end_stage=PipelineStage.TTS)
            await sat.send(run_asr, *[chunk(LOUD)] * 8)  # then nothing at all
            answered = await sat.until("audio-stop")
            await sat.send(run_asr)
            stop = asyncio.Event()

            async def silence():
                while not stop.is_set():
                    await sat.send(chunk(QUIET, 512))
                    await asyncio.sleep(0.03)

            streamer = asyncio.create_task(silence())
            silent = await sat.until("transcript")
            stop.set()
            await streamer
            await sat.send(run_asr, *speech())
            again = await sat.until("audio-stop")
            return answered, silent, again
        finally:
            await link.stop()
            await sat.close()

    answered, silent, again = run(go())
    assert Transcript.from_event(next(e for e in answered if e.type == "transcript")).text \
        == "what time is it"
    assert len(audio_of(answered)) == REPLY_SAMPLES
    err = next(e for e in silent if e.type == "error")
    assert Error.from_event(err).code == "stt-no-text-recognized"
    assert Transcript.from_event(silent[-1]).text == ""
    assert len(audio_of(again)) == REPLY_SAMPLES
    assert logged("no audio for 0.3 s mid-turn and no audio-stop")
    assert logged("no speech within 1.0 s")


def test_odd_audio_formats_are_refused_with_an_error_and_a_spoken_reason(logged):
    async def go():
        sat = await FakeSatellite().start()
        a = FakeAssistant()
        link = link_for(sat, a)
        link.start()
        try:
            await asyncio.wait_for(sat.connected.wait(), WAIT_S)
            run_asr = RunPipeline(start_stage=PipelineStage.ASR, end_stage=PipelineStage.TTS)
            out = []
            for odd in (chunk(LOUD, rate=4000), chunk(LOUD, width=4), chunk(LOUD, channels=3),
                        Event("audio-chunk", {"rate": 16000}, b"\0\0")):
                await sat.send(run_asr, odd, odd, odd)
                out.append(await sat.until("transcript"))
            await sat.send(run_asr, *speech(8000))  # then a good turn: it serves on
            out.append(await sat.until("audio-stop"))
            return link, out
        finally:
            await link.stop()
            await sat.close()

    link, out = run(go())
    for events in out[:4]:
        types = [e.type for e in events if e.type != "audio-chunk"]
        assert types[-4:] == ["error", "audio-start", "audio-stop", "transcript"], types
        assert types.count("error") == 1  # one per pipeline run, not one per chunk
        err = Error.from_event(next(e for e in events if e.type == "error"))
        assert err.code == "hark-audio-format"
        assert len(audio_of(events)) == 3000  # the fake's spoken reason
        assert Transcript.from_event(events[-1]).text == ""
    assert len(audio_of(out[4])) == REPLY_SAMPLES
    assert link.stats.refused_chunks == 12
    assert logged("refusing its audio: audio at 4000 Hz")
    assert logged("4-byte samples")
    assert logged("3 channel(s)")
    assert logged("malformed audio-chunk")


def test_reconnects_with_backoff_when_the_satellite_is_down_or_drops(logged):
    async def go():
        port = free_port()
        a = FakeAssistant()
        link = SatelliteLink(f"tcp://127.0.0.1:{port}", cfg(), a, wake_factory=FakeWake)
        link.backoff_min_s, link.backoff_max_s = 0.05, 0.2
        link.start()
        try:
            while link.stats.failures < 3:  # nothing listens there yet
                await asyncio.sleep(0.05)
            sat = await FakeSatellite().start(port)
            await asyncio.wait_for(sat.connected.wait(), WAIT_S)
            await sat.send(RunPipeline(start_stage=PipelineStage.ASR,
                                       end_stage=PipelineStage.TTS), *speech()[:8])
            await sat.next("voice-started")
            await sat.drop()  # mid-turn
            await sat.next("connection-closed")
            await asyncio.wait_for(sat.connected.wait(), WAIT_S)  # back by itself
            await sat.send(RunPipeline(start_stage=PipelineStage.ASR,
                                       end_stage=PipelineStage.TTS), *speech())
            events = await sat.until("audio-stop")
            await sat.close()
            return link, a, sat, events
        finally:
            await link.stop()

    link, a, sat, events = run(go())
    assert len(audio_of(events)) == REPLY_SAMPLES
    assert sat.connections == 2 and link.stats.connects == 2
    assert a.closed == 1  # the dropped turn's work was cancelled
    assert logged("connection refused (is wyoming-satellite running there?); retrying in")
    assert logged("disconnected mid-turn; retrying in")


def test_not_a_satellite_and_a_silent_one_are_retried_with_a_clear_reason(logged):
    async def go():
        from wyoming.info import AsrProgram

        asr = Info(asr=[AsrProgram(name="whisper", attribution=Attribution(name="", url=""),
                                   installed=True, description="", version=None, models=[])])
        service = await FakeSatellite(info=asr).start()
        silent = await FakeSatellite(answer_describe=False).start()
        links = []
        for s in (service, silent):
            link = link_for(s, FakeAssistant())
            link.describe_timeout_s = 0.2
            link.start()
            links.append(link)
        try:
            while min(link.stats.failures for link in links) < 2:
                await asyncio.sleep(0.05)
            return links
        finally:
            for link in links:
                await link.stop()
            await service.close()
            await silent.close()

    links = run(go())
    assert all(link.stats.connects == 0 for link in links)
    assert logged("is not a satellite: its info describes no satellite (it offers asr)")
    assert logged("no answer to describe within 0.2 s")


def test_announcements_and_several_satellites_at_once(logged):
    """Two satellites take turns at the same time; a timer set on one is announced on
    that one only; an announcement for one that is down is a log line."""
    async def go():
        sats = [await FakeSatellite(name=n).start() for n in ("Kitchen", "Office")]
        a = FakeAssistant()
        c = cfg()
        group = WyomingSatellites(c, a, [s.uri for s in sats], wake_factory=FakeWake)
        for link in group.links:
            link.backoff_min_s = 0.05
        await group.start()
        try:
            for s in sats:
                await asyncio.wait_for(s.connected.wait(), WAIT_S)
            run_asr = RunPipeline(start_stage=PipelineStage.ASR, end_stage=PipelineStage.TTS)
            await asyncio.gather(*(s.send(run_asr, *speech()) for s in sats))
            replies = await asyncio.gather(*(s.until("audio-stop") for s in sats))
            kitchen, office = group.links
            assert group.owns(kitchen.session) and not group.owns("other")
            await a.notify(kitchen.session, "Your timer is done.")
            announced = await sats[0].until("audio-stop")
            await a.notify("someone-else", "not ours")
            await sats[1].close()
            await sats[1].next("connection-closed")
            while office.connected.is_set():
                await asyncio.sleep(0.02)
            await a.notify(office.session, "Your tea is ready.")
            return group, replies, announced, sats[0].events.qsize()
        finally:
            await group.stop()
            await sats[0].close()

    group, replies, announced, left = run(go())
    assert all(len(audio_of(r)) == REPLY_SAMPLES for r in replies)
    assert [e.type for e in announced if e.type != "audio-chunk"] == ["audio-start",
                                                                      "audio-stop"]
    assert len(audio_of(announced)) == 3000
    assert left == 0  # "not ours" went nowhere
    assert group.links[0].stats.announcements == 1
    assert logged("is not connected; cannot say: Your tea is ready.")


def test_a_new_run_pipeline_interrupts_the_turn_and_malformed_events_are_answered(logged):
    async def go():
        sat = await FakeSatellite().start()
        a = FakeAssistant()
        link = link_for(sat, a)
        link.start()
        try:
            await asyncio.wait_for(sat.connected.wait(), WAIT_S)
            run_asr = RunPipeline(start_stage=PipelineStage.ASR, end_stage=PipelineStage.TTS)
            await sat.send(run_asr, *speech()[:8])
            await sat.next("voice-started")
            await sat.send(Event("run-pipeline", {"start_stage": "nope"}),
                           Event("ping", {"text": "hi"}),
                           RunPipeline(start_stage=PipelineStage.INTENT,
                                       end_stage=PipelineStage.TTS))
            bad = await sat.until("pong")
            unsupported = await sat.next("error")
            await sat.send(run_asr, *speech())
            events = await sat.until("audio-stop")
            return a, bad, unsupported, events
        finally:
            await link.stop()
            await sat.close()

    a, bad, unsupported, events = run(go())
    assert [e.type for e in bad][-2:] == ["error", "pong"]
    assert Error.from_event(bad[-2]).code == "hark-bad-event"
    assert "wake or asr" in Error.from_event(unsupported).text
    assert len(audio_of(events)) == REPLY_SAMPLES
    assert a.closed == 1
    assert logged("malformed run-pipeline event")


def test_a_satellite_that_stops_reading_is_dropped_and_reconnected(logged):
    """An announcement to a satellite that reads nothing: the send times out, the
    connection is dropped and made again; the announcement is reported lost."""
    class Loud(FakeAssistant):
        async def speak(self, text):
            for _ in range(200):  # ~20 MB of audio: more than the socket buffers hold
                yield AudioChunk(np.zeros(50_000, np.int16), self.tts_rate)

    async def go():
        sat = await FakeSatellite().start()
        link = link_for(sat, Loud())
        link.write_timeout_s = 0.5
        link.start()
        try:
            await asyncio.wait_for(sat.connected.wait(), WAIT_S)
            sat.reading.clear()
            ok = await link.announce("a very long announcement")
            sat.reading.set()
            while link.stats.connects < 2:
                await asyncio.sleep(0.05)
            return ok
        finally:
            await link.stop()
            await sat.close()

    assert run(go()) is False
    assert logged("announcement lost (the satellite read nothing for 0.5 s)")


def test_the_satellite_server_leaves_wyoming_satellite_notifications_to_them(caplog):
    """hark serve: a timer set on a Wyoming satellite is not a "gone session" of the
    satellite server (both hear every notification)."""
    from hark.server.server import Server

    server = Server(Config(), FakeAssistant())
    group = WyomingSatellites(cfg(), FakeAssistant(), ["tcp://127.0.0.1:10700"])
    session = group.links[0].session
    name = session.rsplit("-", 1)[0]
    asyncio.run(server._on_notify(session, "Your timer is done."))
    # without the hook: held for a satellite of the server by that name, never said
    assert list(server._held.get(name, [])) == ["Your timer is done."]
    server._held.clear()
    server.other_sessions.append(group.owns)
    asyncio.run(server._on_notify(session, "Your timer is done."))
    asyncio.run(server._on_notify("elsewhere", "Your timer is done."))
    assert name not in server._held and "elsewhere" in server._held
