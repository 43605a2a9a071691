"""Server + satellite on loopback with real sockets, codecs and wake word, and a small
fake Assistant (the real one is exercised in test_server_e2e.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import numpy as np
import pytest

from hark.audio import AudioChunk, read_audio, write_wav
from hark.config import Config
from hark.pipeline.events import (
    ReplyAudio,
    ReplyText,
    SpeechEnded,
    SpeechStarted,
    TurnEnd,
)
from hark.satellite.audio import FileSource, WavSink
from hark.satellite.satellite import FRAME, Satellite
from hark.server.server import Server
from hark.trace import Trace
from hark.transport.control import PROTOCOL_VERSION, Connection
from hark.transport.rtp import RtpPacket

TTS_RATE = 22050
pytestmark = pytest.mark.timeout(120)


class FakeAssistant:
    """The Assistant's shape: ends the turn after 300 ms of quiet following speech and
    answers with a 440 Hz tone of ``reply_s`` seconds."""

    tts_rate = TTS_RATE

    def __init__(self, reply_s: float = 0.6, hold: asyncio.Event | None = None):
        self.reply_s = reply_s
        self.heard: dict[str, int] = {}  # session -> samples of speech received
        self.turn_speech: list[int] = []  # samples of speech received, per turn
        self.closed = 0
        self.hold = hold
        self._notify = []

    def on_notify(self, cb) -> None:
        self._notify.append(cb)

    async def notify(self, session: str, text: str) -> None:
        for cb in self._notify:
            await cb(session, text)

    def tone(self, seconds: float) -> np.ndarray:
        t = np.arange(int(seconds * TTS_RATE)) / TTS_RATE
        return (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)

    async def speak(self, text: str):
        yield AudioChunk(self.tone(0.3), TTS_RATE)

    async def run_turn(self, audio, *, session: str = "default", mode: str = "streaming"):
        trace = Trace(info={"session": session})
        speech = quiet = 0
        try:
            async for chunk in audio:
                loud = np.abs(chunk.samples).mean() > 300
                if loud and not speech:
                    yield SpeechStarted(chunk.t)
                speech += len(chunk.samples) if loud else 0
                quiet = 0 if loud else quiet + len(chunk.samples)
                if speech and quiet > 0.3 * 16000:
                    break
            self.heard[session] = self.heard.get(session, 0) + speech
            self.turn_speech.append(speech)
            if not speech:
                yield TurnEnd(trace, "", "", error="no speech")
                return
            trace.mark("speech_end")
            yield SpeechEnded(time.monotonic())
            if self.hold is not None:
                await self.hold.wait()
            yield ReplyText("It is noon.", "intent")
            tone = self.tone(self.reply_s)
            for i in range(0, len(tone), 4410):
                yield ReplyAudio(AudioChunk(tone[i:i + 4410], TTS_RATE))
            yield TurnEnd(trace, "what time is it", "It is noon.")
        finally:
            self.closed += 1


@pytest.fixture(scope="module")
def wake_wav(tmp_path_factory, speak):
    """Piper saying "Alexa, what time is it?" with silence around it."""
    path = tmp_path_factory.mktemp("audio") / "ask.wav"
    pad = np.zeros(8000, np.int16)
    write_wav(path, np.concatenate([pad, speak("Alexa, what time is it?"), pad]), 16000)
    return path


def _cfg(**transport) -> Config:
    c = Config()
    c.server.control_port = 0
    c.server.rtp_port = 0
    for k, v in transport.items():
        setattr(c.transport, k, v)
    return c


async def _start(cfg: Config, assistant=None) -> tuple[Server, FakeAssistant]:
    assistant = assistant or FakeAssistant()
    server = Server(cfg, assistant)
    await server.start()
    cfg.satellite.server = f"127.0.0.1:{server.control_port}"
    return server, assistant


def _satellite(cfg: Config, wav, out, name: str = "kitchen") -> Satellite:
    c = Config()
    c.transport = cfg.transport
    c.satellite.server = cfg.satellite.server
    c.satellite.name = name
    c.sched.realtime = False
    return Satellite(c, FileSource(wav, FRAME), WavSink(out), exit_when_done=True,
                     realtime_thread=False)


def _tone_energy(path) -> tuple[float, float]:
    """(seconds of audio, fraction of its energy near 440 Hz)."""
    x = read_audio(path, 22050).astype(np.float64)
    if len(x) == 0:
        return 0.0, 0.0
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 22050)
    return len(x) / 22050, float(spec[(freqs > 420) & (freqs < 460)].sum() / spec.sum())


@pytest.mark.parametrize("path, settings", [
    ("udp", {"shm": "never", "tcp_audio_fallback": "never"}),
    ("tcp", {"shm": "never", "tcp_audio_fallback": "always"}),
    ("shm", {"shm": "auto", "codec": "pcm"}),
])
def test_satellite_turn_over_each_audio_path(wake_wav, tmp_path, path, settings):
    async def go():
        cfg = _cfg(**settings)
        server, fake = await _start(cfg)
        traces = []
        server.turn_listeners.append(traces.append)
        sat = _satellite(cfg, wake_wav, tmp_path / "out.wav")
        try:
            await asyncio.wait_for(sat.run(), 30)
        finally:
            await server.stop()
        return sat, fake, traces

    sat, fake, traces = asyncio.run(go())
    assert sat.stats.wakes == 1 and sat.stats.turns_done == 1
    assert sat._path == path or sat.stats.connects == 1
    # the server heard the question (about 1 s of speech after the wake word)
    assert sum(fake.heard.values()) > 0.4 * 16000
    seconds, tonal = _tone_energy(tmp_path / "out.wav")
    assert seconds >= 0.6 and tonal > 0.8  # the reply tone came back through the codec
    assert len(traces) == 1 and traces[0].info["audio_path"] == path
    assert "reply-text" in sat.stats.events


def test_two_satellites_at_once(wake_wav, tmp_path):
    async def go():
        cfg = _cfg(shm="never")
        server, fake = await _start(cfg)
        a = _satellite(cfg, wake_wav, tmp_path / "a.wav", "kitchen")
        b = _satellite(cfg, wake_wav, tmp_path / "b.wav", "office")
        try:
            await asyncio.wait_for(asyncio.gather(a.run(), b.run()), 30)
        finally:
            await server.stop()
        return a, b, fake

    a, b, fake = asyncio.run(go())
    assert a.stats.turns_done == b.stats.turns_done == 1
    assert len(fake.heard) == 2 and a.session != b.session
    for name in ("a.wav", "b.wav"):
        assert _tone_energy(tmp_path / name)[1] > 0.8


async def _raw_client(server: Server, name: str = "probe", token: str | None = None
                      ) -> tuple[Connection, dict]:
    """A hand-made satellite; its token is the server's unless given."""
    conn = await Connection.open("127.0.0.1", server.control_port)
    token = server.token if token is None else token
    await conn.send("hello", {"version": PROTOCOL_VERSION, "name": name, "token": token,
                              "capabilities": [], "udp_port": 9})
    ev = await conn.recv()
    return conn, {"type": ev.type, **ev.data}


def test_wrong_token_and_bad_version_refused():
    async def go():
        cfg = _cfg()
        cfg.server.tokens = {"kitchen": "kitchen-secret-0123456789"}
        server, _ = await _start(cfg)
        try:
            _, bad = await _raw_client(server, "kitchen", "guess-guess-guess-guess")
            _, missing = await _raw_client(server, "kitchen", "")
            _, good = await _raw_client(server, "kitchen", "kitchen-secret-0123456789")
            conn = await Connection.open("127.0.0.1", server.control_port)
            await conn.send("hello", {"version": 99, "name": "x"})
            version = await conn.recv()
            return bad, missing, good, version, server.stats.sessions_refused
        finally:
            await server.stop()

    bad, missing, good, version, refused = asyncio.run(go())
    assert bad["type"] == "error" and bad["code"] == "auth"
    assert missing["type"] == "error" and missing["code"] == "auth"
    assert good["type"] == "welcome"
    assert version.type == "error" and "version" in version.data["message"]
    assert refused == 3


def test_bad_events_get_errors_and_server_keeps_serving():
    async def go():
        server, _ = await _start(_cfg())
        try:
            conn, _ = await _raw_client(server)
            await conn.send("frobnicate", {"x": 1})
            unknown = await conn.recv()
            await conn.send("transport", {"audio": "carrier-pigeon"})
            bad = await conn.recv()
            await conn.send("ping", {"n": 1})
            pong = await conn.recv()
            # a half-sent event, then the connection drops
            c2, _ = await _raw_client(server, "half")
            c2.writer.write(b'{"type":"audio-chunk","payload_length":1000}\n' + b"x" * 10)
            await c2.writer.drain()
            await c2.close()
            # an oversized header
            c3, _ = await _raw_client(server, "big")
            c3.writer.write(b"{" + b" " * 70000)
            await c3.writer.drain()
            too_big = await asyncio.wait_for(c3.recv(), 5)
            await asyncio.sleep(0.2)
            await conn.send("ping", {"n": 2})
            pong2 = await conn.recv()
            return unknown, bad, pong, too_big, pong2, len(server.sessions)
        finally:
            await server.stop()

    unknown, bad, pong, too_big, pong2, n_sessions = asyncio.run(go())
    assert unknown.type == "error" and "unknown event type" in unknown.data["message"]
    assert bad.type == "error" and "carrier-pigeon" in bad.data["message"]
    assert pong.type == "pong" and pong.data == {"n": 1}
    assert too_big.type == "error" and "longer than" in too_big.data["message"]
    assert pong2.type == "pong"
    assert n_sessions == 1  # the half-sent and oversized clients were cleaned up


def test_unknown_session_audio_dropped_and_flood_survived():
    async def go():
        server, fake = await _start(_cfg())
        try:
            conn, welcome = await _raw_client(server)
            await conn.send("wake", {})
            loop = asyncio.get_running_loop()
            tx, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                        remote_addr=("127.0.0.1",
                                                                     server.rtp_port))
            rng = np.random.default_rng(0)
            loud = (rng.normal(0, 5000, 320)).astype("<i2").tobytes()
            for i in range(300):  # someone else's SSRC: never reaches the session
                tx.sendto(RtpPacket(i, i * 320, welcome["ssrc"] ^ 1, loud, 97).pack())
                if i % 20 == 0:
                    await asyncio.sleep(0.001)
            for i in range(3000):  # garbage flood
                tx.sendto(rng.bytes(int(rng.integers(0, 1400))))
                if i % 20 == 0:
                    await asyncio.sleep(0.001)
            await asyncio.sleep(0.3)
            await conn.send("ping", {})
            alive = await conn.recv()
            tx.close()
            return alive, server.stats, fake.heard
        finally:
            await server.stop()

    alive, stats, heard = asyncio.run(go())
    assert alive.type == "pong"
    # (the kernel may drop some of a flood before the server sees it)
    assert stats.packets_dropped_unknown >= 200
    assert stats.packets_malformed >= 1500
    assert sum(heard.values()) == 0


def test_satellite_killed_mid_turn_is_cleaned_up(speak):
    async def go():
        server, fake = await _start(_cfg())
        try:
            conn, welcome = await _raw_client(server)
            await conn.send("transport", {"audio": "tcp"})
            await conn.send("wake", {})
            from hark.transport.stream import RtpStreamSender
            tx = RtpStreamSender("opus", 16000, ssrc=welcome["ssrc"])
            for pkt in tx.push(speak("What time")[:8000]):
                await conn.send("audio-chunk", {}, pkt.pack())
            await asyncio.sleep(0.3)
            during = len(server.sessions)
            conn.writer.transport.abort()  # the satellite vanishes
            await asyncio.sleep(0.5)
            return during, len(server.sessions), fake.closed, server.turn_slots._value
        finally:
            await server.stop()

    during, after, closed, free_slots = asyncio.run(go())
    assert during == 1 and after == 0
    assert closed == 1  # the turn generator was closed
    assert free_slots == Config().server.max_concurrent_turns


def test_busy_when_over_capacity_and_timer_notification(wake_wav, tmp_path):
    async def go():
        cfg = _cfg(shm="never")
        cfg.server.max_concurrent_turns = 1
        hold = asyncio.Event()
        server, fake = await _start(cfg, FakeAssistant(hold=hold))
        try:
            first, _ = await _raw_client(server, "first")
            await first.send("transport", {"audio": "tcp"})
            await first.send("wake", {})
            from hark.transport.stream import RtpStreamSender
            tx = RtpStreamSender("opus", 16000, ssrc=_["ssrc"])
            audio = read_audio(wake_wav)
            for pkt in tx.push(np.concatenate([audio, np.zeros(8000, np.int16)])):
                await first.send("audio-chunk", {}, pkt.pack())
            await asyncio.sleep(0.5)  # the first turn now waits on `hold`
            sat = _satellite(cfg, wake_wav, tmp_path / "busy.wav", "second")
            await asyncio.wait_for(sat.run(), 30)
            busy_events = sat.stats.events
            # a timer fires for the first satellite's session
            sid = next(s for s in server.sessions if s.startswith("first"))
            await fake.notify(sid, "Your timer is done.")
            got = []
            while "timer" not in got:
                ev = await asyncio.wait_for(first.recv(), 5)
                got.append(ev.type)
            hold.set()
            return busy_events, server.stats.turns_busy
        finally:
            await server.stop()

    events, busy = asyncio.run(go())
    assert "busy" in events and busy == 1
    assert _tone_energy(tmp_path / "busy.wav")[0] >= 0.25  # the spoken "busy" came back


def test_satellite_reconnects_after_server_restart(wake_wav, tmp_path):
    async def go():
        cfg = _cfg(shm="never")
        server, _ = await _start(cfg)
        port = server.control_port
        sat = _satellite(cfg, wake_wav, tmp_path / "r.wav")
        sat.exit_when_done = False
        task = asyncio.create_task(sat.run())
        await asyncio.wait_for(sat.connected.wait(), 10)
        await server.stop()
        await asyncio.sleep(0.3)
        cfg2 = _cfg(shm="never")
        cfg2.server.control_port = port
        server2, _ = await _start(cfg2)
        try:
            deadline = time.monotonic() + 15
            while sat.stats.connects < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return sat.stats.connects, len(server2.sessions)
        finally:
            sat.stop()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)
            await server2.stop()

    connects, sessions = asyncio.run(go())
    assert connects == 2 and sessions == 1


def test_barge_in_closes_the_playing_turn(speak):
    async def go():
        server, fake = await _start(_cfg(), FakeAssistant(reply_s=4.0))
        try:
            conn, welcome = await _raw_client(server)
            await conn.send("transport", {"audio": "tcp"})
            from hark.transport.stream import RtpStreamSender
            tx = RtpStreamSender("opus", 16000, ssrc=welcome["ssrc"])
            await conn.send("wake", {})
            audio = np.concatenate([speak("What time is it?"), np.zeros(8000, np.int16)])
            for pkt in tx.push(audio):
                await conn.send("audio-chunk", {}, pkt.pack())
            seen = []
            while "audio-start" not in seen:  # the reply is playing
                seen.append((await asyncio.wait_for(conn.recv(), 10)).type)
            await conn.send("wake", {})  # the person says the wake word again
            while "barge-in" not in seen:
                seen.append((await asyncio.wait_for(conn.recv(), 10)).type)
            await asyncio.sleep(0.2)
            return seen, fake.closed, server.stats.barge_ins, server.stats.turns
        finally:
            await server.stop()

    seen, closed, barge_ins, turns = asyncio.run(go())
    assert "barge-in" in seen and barge_ins == 1
    assert closed >= 1 and turns == 2  # the old turn was closed, a new one began


def test_follow_up_without_wake_word(speak, tmp_path):
    pad = np.zeros(8000, np.int16)
    wav = write_wav(tmp_path / "two.wav", np.concatenate([
        pad, speak("Alexa, what time is it?"), np.zeros(int(2.0 * 16000), np.int16),
        speak("And in Paris?"), pad]), 16000)

    async def go():
        cfg = _cfg(shm="never")
        server, fake = await _start(cfg)
        sat = _satellite(cfg, wav, tmp_path / "out.wav")
        sat.cfg.wake.followup_s = 3.0
        try:
            await asyncio.wait_for(sat.run(), 40)
        finally:
            await server.stop()
        return sat, fake

    sat, fake = asyncio.run(go())
    assert sat.stats.wakes == 1 and sat.stats.followups == 1
    assert sat.stats.turns_done == 2
    # both turns reached the server with their speech (one RTP stream, two talk spurts)
    assert fake.turn_speech[0] > 0.5 * 16000 and fake.turn_speech[1] > 0.3 * 16000


def test_audio_falls_back_to_tcp_when_udp_is_blocked(wake_wav, tmp_path, monkeypatch):
    monkeypatch.setattr(Server, "datagram", lambda self, data, addr: None)  # a firewall

    async def go():
        cfg = _cfg(shm="never", tcp_audio_fallback="auto")
        server, fake = await _start(cfg)
        sat = _satellite(cfg, wake_wav, tmp_path / "out.wav")
        try:
            await asyncio.wait_for(sat.run(), 30)
        finally:
            await server.stop()
        return sat, fake

    sat, fake = asyncio.run(go())
    assert sat._path == "tcp" and sat.stats.turns_done == 1
    assert sum(fake.heard.values()) > 0.4 * 16000
    assert _tone_energy(tmp_path / "out.wav")[1] > 0.8


def test_audio_moves_to_tcp_when_udp_audio_stops_arriving(wake_wav, tmp_path, monkeypatch):
    real = Server.datagram

    def only_probes(self, data, addr):  # probes pass, audio packets are dropped
        if len(data) <= 12:
            real(self, data, addr)

    monkeypatch.setattr(Server, "datagram", only_probes)

    async def go():
        cfg = _cfg(shm="never", tcp_audio_fallback="auto")
        server, fake = await _start(cfg)
        sat = _satellite(cfg, wake_wav, tmp_path / "out.wav")
        try:
            await asyncio.wait_for(sat.run(), 30)
        finally:
            await server.stop()
        return sat, fake

    sat, fake = asyncio.run(go())
    assert "transport" in sat.stats.events and sat._path == "tcp"
    assert sat.stats.turns_done == 1
    assert sum(fake.heard.values()) > 0  # the rest of the question came over TCP


def test_realtime_scheduling_falls_back_quietly():
    """The wake thread's settings: each reported as the kernel then says, none raises."""
    import os
    import threading

    from hark.satellite.satellite import wake_thread_sched
    from hark.sched import set_normal

    if not hasattr(os, "sched_getscheduler"):
        pytest.skip("Linux only")
    out = {}

    def body():
        out["results"] = wake_thread_sched(Config())
        out["policy"] = os.sched_getscheduler(0)
        out["cores"] = os.sched_getaffinity(0)
        set_normal()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    rt, pin = out["results"]
    assert (rt.setting, pin.setting) == ("realtime", "affinity")
    assert rt.ok == (out["policy"] == os.SCHED_FIFO)
    assert rt.ok or rt.fix  # refused: says how to permit it
    assert pin.ok and out["cores"] == {max(os.sched_getaffinity(0))}  # the last core


def test_max_sessions_refuses_extra_satellite():
    async def go():
        cfg = _cfg()
        cfg.server.max_sessions = 1
        server, _ = await _start(cfg)
        try:
            _, first = await _raw_client(server, "one")
            _, second = await _raw_client(server, "two")
            return first, second
        finally:
            await server.stop()

    first, second = asyncio.run(go())
    assert first["type"] == "welcome"
    assert second["type"] == "error" and second["code"] == "busy"


def test_earcon_plays_on_wake(wake_wav, tmp_path):
    async def go():
        cfg = _cfg(shm="never")
        server, _ = await _start(cfg)
        sat = _satellite(cfg, wake_wav, tmp_path / "out.wav")
        sat.cfg.wake.earcon = True
        try:
            await asyncio.wait_for(sat.run(), 30)
        finally:
            await server.stop()
        return sat

    sat = asyncio.run(go())
    assert sat.stats.turns_done == 1
    x = read_audio(tmp_path / "out.wav", 16000).astype(np.float64)[:1280]  # first 80 ms
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / 16000)
    assert spec[(freqs > 850) & (freqs < 910)].sum() > 0.5 * spec.sum()


@pytest.mark.parametrize("hello", [
    {"version": PROTOCOL_VERSION, "name": ["x"], "udp_port": "abc"},
    {"version": PROTOCOL_VERSION, "capabilities": 5, "codecs": None, "host_id": 7},
    {"version": "1"},
    {},
])
def test_malformed_hello_never_hurts_the_server(hello):
    async def go():
        server, _ = await _start(_cfg())
        try:
            bad = await Connection.open("127.0.0.1", server.control_port)
            await bad.send("hello", hello)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(bad.recv(), 2)
            await bad.close()
            conn, welcome = await _raw_client(server, "good")
            await conn.send("ping", {})
            return welcome["type"], (await conn.recv()).type
        finally:
            await server.stop()

    assert asyncio.run(go()) == ("welcome", "pong")


def test_satellite_from_raw_pcm_on_stdin(wake_wav, tmp_path):
    import io

    from hark.satellite.audio import StdinSource

    pcm = read_audio(wake_wav)
    stream = io.BytesIO(np.concatenate([pcm, np.zeros(16000 * 3, np.int16)]).astype("<i2")
                        .tobytes())

    class Paced(StdinSource):  # stdin from a pipe delivers audio as it is recorded
        def __iter__(self):
            for frame in super().__iter__():
                time.sleep(FRAME / 16000)
                yield frame

    async def go():
        cfg = _cfg(shm="never")
        server, fake = await _start(cfg)
        c = Config()
        c.transport = cfg.transport
        c.satellite.server = cfg.satellite.server
        sat = Satellite(c, Paced(FRAME, stream), WavSink(tmp_path / "o.wav"),
                        exit_when_done=True, realtime_thread=False)
        try:
            await asyncio.wait_for(sat.run(), 30)
        finally:
            await server.stop()
        return sat, fake

    sat, fake = asyncio.run(go())
    assert sat.stats.wakes == 1 and sat.stats.turns_done == 1
    assert sum(fake.heard.values()) > 0.4 * 16000
    assert _tone_energy(tmp_path / "o.wav")[1] > 0.8


def test_audio_heard_while_the_wake_word_is_verified_is_sent_with_the_turn(wake_wav, tmp_path):
    """openWakeWord confirms Piper's "Alexa" about 0.25 s after microWakeWord fired; the
    words said in that time reach the server all the same."""
    async def go(verifier: str):
        cfg = _cfg(shm="never")
        server, fake = await _start(cfg)
        sat = _satellite(cfg, wake_wav, tmp_path / f"{verifier}.wav")
        sat_cfg = sat.cfg
        assert sat_cfg.wake.verifier == "openwakeword"  # the default
        if verifier == "none":
            from hark.wake.detector import WakeWordDetector

            sat.detector = WakeWordDetector("alexa", refractory_s=sat_cfg.wake.refractory_s)
        try:
            await asyncio.wait_for(sat.run(), 30)
        finally:
            await server.stop()
        return sat, sum(fake.heard.values())

    checked, heard = asyncio.run(go("openwakeword"))
    (check,) = checked.detector.verifications
    assert check["accepted"] and check["waited_s"] > 0.1
    alone, heard_alone = asyncio.run(go("none"))
    assert checked.stats.wakes == alone.stats.wakes == 1
    # the same speech either way (without sending the wait's audio: ~0.25 s less)
    assert abs(heard - heard_alone) < 0.08 * 16000, (heard, heard_alone)


@pytest.mark.parametrize("with_seq", [True, False])
def test_turn_audio_that_beats_its_wake_event_is_kept(with_seq):
    """UDP (and shared memory) audio can reach the server before the "wake" event on
    the TCP channel; the event names the turn's first packet, and those early packets
    go to the new turn (an event without it: they are lost, as before)."""
    async def go():
        server, fake = await _start(_cfg(shm="never"))
        try:
            conn, welcome = await _raw_client(server)
            await conn.send("transport", {"audio": "udp"})
            loop = asyncio.get_running_loop()
            tx, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                        remote_addr=("127.0.0.1",
                                                                     server.rtp_port))
            from hark.transport.stream import RtpStreamSender
            sender = RtpStreamSender("opus", 16000, ssrc=welcome["ssrc"])
            first = sender.seq
            rng = np.random.default_rng(3)
            loud = rng.normal(0, 6000, 16000).astype(np.int16)  # 1 s of loud noise
            early, late = loud[:8000], loud[8000:]
            for pkt in sender.push(early):  # 0.5 s of the turn, before its wake event
                tx.sendto(pkt.pack())
            await asyncio.sleep(0.1)  # the server has read them by now
            await conn.send("wake", {"seq": first} if with_seq else {})
            await asyncio.sleep(0.05)
            for part in (late, np.zeros(16000, np.int16)):
                for i in range(0, len(part), 320):
                    for pkt in sender.push(part[i:i + 320]):
                        tx.sendto(pkt.pack())
                    await asyncio.sleep(0.02)
            for _ in range(100):
                if fake.turn_speech:
                    break
                await asyncio.sleep(0.05)
            tx.close()
            return list(fake.turn_speech)
        finally:
            await server.stop()

    (speech,) = asyncio.run(go())
    if with_seq:
        assert speech >= 0.9 * 16000, speech  # both halves of the loud second
    else:
        assert speech <= 0.6 * 16000, speech  # the early half went to no turn


# --- typed control messages on the wire ----------------------------------------------

OLD_WELCOME_KEYS = ["version", "session", "capabilities", "codec", "frame_ms", "up_rate",
                    "down_rate", "ssrc", "server_ssrc", "rtp_port", "audio", "jitter_min_ms",
                    "jitter_max_ms"]


def test_server_refuses_malformed_hellos_and_answers_bad_messages_by_field():
    """The welcome carries the keys the untyped server wrote, in its order; a hello with
    a mistyped or out-of-range field is refused as a protocol error that names the field;
    a malformed message in a session gets 'bad-event', and one only a server sends gets
    'unknown-event'; the session goes on."""
    async def hello(server: Server, data: dict) -> Any:
        conn = await Connection.open("127.0.0.1", server.control_port)
        await conn.send("hello", data)
        ev = await asyncio.wait_for(conn.recv(), 5)
        await conn.close()
        return ev

    async def go():
        server, _ = await _start(_cfg(shm="never"))
        try:
            refused = [await hello(server, {"version": PROTOCOL_VERSION, **bad}) for bad in (
                {"udp_port": 10 ** 40}, {"udp_port": "9"}, {"capabilities": "opus"},
                {"token": 5})]
            conn, welcome = await _raw_client(server)
            answers = []
            for etype, data in [("wake", {"seq": 10 ** 40}), ("wake", {"followup": "yes"}),
                                ("transport", {"audio": "tcp", "last_seq": -1}),
                                ("welcome", {}), ("ping", {"n": 3})]:
                await conn.send(etype, data)
                answers.append(await asyncio.wait_for(conn.recv(), 5))
            return refused, welcome, answers, server.stats
        finally:
            await server.stop()

    refused, welcome, answers, stats = asyncio.run(go())
    for ev, field in zip(refused, ["udp_port", "udp_port", "capabilities", "token"]):
        assert ev.type == "error" and ev.data["code"] == "protocol"
        assert ev.data["message"].startswith(f"'hello' event: field '{field}' must be")
    assert list(welcome)[1:] == OLD_WELCOME_KEYS  # ("type" first: _raw_client adds it)
    codes = [(a.type, a.data.get("code")) for a in answers]
    assert codes == [("error", "bad-event")] * 3 + [("error", "unknown-event"), ("pong", None)]
    assert "'seq' must be in [0, 65535]" in answers[0].data["message"]
    assert "unknown event type 'welcome'" in answers[3].data["message"]
    assert answers[4].data == {"n": 3}
    assert stats.sessions_refused == 4 and stats.events_rejected == 4 and stats.turns == 0


@pytest.mark.models  # the satellite loads the wake word models
def test_satellite_hello_is_the_old_one_and_a_malformed_welcome_means_reconnecting(tmp_path):
    """The satellite's hello has the old keys, values and order; a welcome without its
    SSRC is a protocol error: the satellite closes that connection and tries again
    (it used to die on a KeyError)."""
    from hark.transport.shm import host_id

    hellos: list[tuple[list, dict]] = []

    async def fake_server(reader, writer):
        conn = Connection(reader, writer)
        ev = await conn.recv()
        hellos.append((list(ev.data), ev.data))
        await conn.send("welcome", {k: v for k, v in {
            "version": 1, "session": "s", "capabilities": [], "codec": "pcm",
            "frame_ms": 20, "up_rate": 16000, "down_rate": 22050, "server_ssrc": 1,
            "rtp_port": 9, "audio": "always", "jitter_min_ms": 10,
            "jitter_max_ms": 120}.items()})
        with contextlib.suppress(Exception):
            await conn.recv()
        await conn.close()

    async def go():
        srv = await asyncio.start_server(fake_server, "127.0.0.1", 0)
        cfg = _cfg(shm="never")
        cfg.satellite.server = f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"
        wav = write_wav(tmp_path / "quiet.wav", np.zeros(1600, np.int16), 16000)
        sat = _satellite(cfg, wav, tmp_path / "out.wav", "garage")
        sat.exit_when_done = False
        task = asyncio.create_task(sat.run())
        try:
            for _ in range(200):
                if len(hellos) >= 2 or task.done():
                    break
                await asyncio.sleep(0.05)
        finally:
            sat.stop()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)
            srv.close()
        return sat

    sat = asyncio.run(go())
    assert len(hellos) >= 2 and sat.stats.connects == 0 and not sat.connected.is_set()
    keys, data = hellos[0]
    assert keys == ["version", "name", "token", "capabilities", "codecs", "udp_port",
                    "host_id"]
    assert data == {"version": 1, "name": "garage", "token": sat.token(),  # hark.auth
                    "capabilities": ["audio-udp", "audio-tcp", "opus", "pcm", "barge-in"],
                    "codecs": ["opus", "pcm"], "udp_port": data["udp_port"],
                    "host_id": host_id()}
    assert isinstance(data["udp_port"], int) and 0 < data["udp_port"] < 65536
