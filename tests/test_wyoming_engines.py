"""Remote Wyoming engines (hark/asr/wyoming.py, hark/tts/wyoming.py) against a small
Wyoming service written in the test: what they send, and every way a service can fail
(down, silent, disconnecting mid-request, an error event, an odd audio format, oversized
events, too much audio). The real wyoming-faster-whisper and wyoming-piper:
tests/test_wyoming_engines_e2e.py."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

import numpy as np
import pytest
from wyoming.asr import Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Attribution, AsrModel, AsrProgram, Describe, Info, TtsProgram, TtsVoice
from wyoming.tts import SynthesizeStopped

from hark.asr.wyoming import WyomingAsr
from hark.bench.tools import free_port
from hark.config import load_config
from hark.errors import ConfigError
from hark.tts.wyoming import WyomingTts
from hark.wyoming_client import WyomingServiceError

ATTR = Attribution(name="test", url="")

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter, list], Awaitable[None]]


class FakeService:
    """A TCP server on 127.0.0.1 on its own event loop thread; each connection runs
    ``behaviour(reader, writer, seen)`` (``seen``: the event types read so far)."""

    def __init__(self, behaviour: Behaviour):
        self.behaviour = behaviour
        self.seen: list[Event] = []
        self.connections = 0
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self.loop).result(10)
        self.port = self.server.sockets[0].getsockname()[1]
        self.uri = f"tcp://127.0.0.1:{self.port}"

    async def _serve(self, reader, writer):
        self.connections += 1
        try:
            await self.behaviour(reader, writer, self.seen)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def close(self):
        async def stop():
            self.server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def service():
    made = []

    def make(behaviour):
        s = FakeService(behaviour)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


async def read_until(reader, seen, etype: str) -> Event:
    while True:
        event = await async_read_event(reader)
        if event is None:
            raise ConnectionError("client left")
        seen.append(event)
        if Describe.is_type(event.type):
            continue
        if event.type == etype:
            return event


def asr_info() -> Info:
    return Info(asr=[AsrProgram(name="fake-asr", description="", attribution=ATTR,
                                installed=True, version="1",
                                models=[AsrModel(name="m", description="", attribution=ATTR,
                                                 installed=True, version="1",
                                                 languages=["en"])])])


def tts_info(streaming: bool) -> Info:
    return Info(tts=[TtsProgram(name="fake-tts", description="", attribution=ATTR,
                                installed=True, version="1",
                                supports_synthesize_streaming=streaming,
                                voices=[TtsVoice(name="v", description="", attribution=ATTR,
                                                 installed=True, version="1",
                                                 languages=["en"])])])


def speech(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)


# --- ASR ---------------------------------------------------------------------------------

def test_asr_sends_the_whole_utterance_and_reads_the_transcript(service):
    async def behave(reader, writer, seen):
        event = await async_read_event(reader)
        if Describe.is_type(event.type):
            await async_write_event(asr_info().event(), writer)
            return
        seen.append(event)
        start = await read_until(reader, seen, "audio-start")
        got = bytearray()
        while True:
            event = await async_read_event(reader)
            seen.append(event)
            if AudioStop.is_type(event.type):
                break
            got += AudioChunk.from_event(event).audio
        text = f"{len(got) // 2} samples at {start.data['rate']}"
        await async_write_event(Event("transcript-start"), writer)  # streaming services
        await async_write_event(Transcript(text=text).event(), writer)

    svc = service(behave)
    asr = WyomingAsr(svc.uri, language="en", model="m")
    assert "fake-asr" in asr.check()
    audio = speech(1.3)
    result = asr.decode(audio)
    assert result.text == f"{len(audio)} samples at 16000"
    assert result.avg_logprob is None  # Wyoming carries no confidence
    transcribe = svc.seen[0]
    assert transcribe.type == "transcribe"
    assert transcribe.data["language"] == "en" and transcribe.data["name"] == "m"
    # silence and too-short audio are "" without a request
    connections = svc.connections
    assert asr.decode(np.zeros(16000, np.int16)).text == ""
    assert asr.decode(speech(0.05)).text == ""
    assert svc.connections == connections


def test_asr_service_down_is_a_clear_error_logged_once_while_it_lasts(caplog):
    asr = WyomingAsr(f"tcp://127.0.0.1:{free_port()}", timeout_s=2)
    with caplog.at_level(logging.DEBUG, logger="hark.wyoming_client"):
        for _ in range(3):
            with pytest.raises(WyomingServiceError, match="not reachable") as err:
                asr.decode(speech())
    assert "fix:" in str(err.value)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ASR service tcp://127.0.0.1" in warnings[0].getMessage()


def test_asr_disconnect_mid_request(service):
    async def behave(reader, writer, seen):
        await read_until(reader, seen, "audio-start")
        writer.close()  # gone before any transcript

    asr = WyomingAsr(service(behave).uri, timeout_s=10)
    # hark notices on its next write (broken pipe) or its read, whichever comes first
    with pytest.raises(WyomingServiceError, match="closed the connection (while hark "
                                                  "waited for a transcript|in the middle)"):
        asr.decode(speech())


def test_asr_silent_service_times_out(service):
    async def behave(reader, writer, seen):
        await read_until(reader, seen, "audio-stop")
        await asyncio.sleep(60)  # never answers

    asr = WyomingAsr(service(behave).uri, timeout_s=0.5)
    with pytest.raises(WyomingServiceError, match="sent nothing for 0.5 s"):
        asr.decode(speech())


def test_asr_error_event_and_oversized_event(service):
    async def error(reader, writer, seen):
        await read_until(reader, seen, "audio-stop")
        await async_write_event(Error(text="model exploded", code="boom").event(), writer)

    asr = WyomingAsr(service(error).uri)
    with pytest.raises(WyomingServiceError, match="model exploded"):
        asr.decode(speech())

    async def huge(reader, writer, seen):
        await read_until(reader, seen, "audio-stop")
        # claims a 1 GB payload: refused from the header, never buffered
        writer.write(b'{"type": "transcript", "data": {"text": "x"}, '
                     b'"payload_length": 1000000000}\n')
        await writer.drain()
        await asyncio.sleep(60)

    asr = WyomingAsr(service(huge).uri, timeout_s=5)
    with pytest.raises(WyomingServiceError, match="payload_length 1000000000"):
        asr.decode(speech())

    async def not_json(reader, writer, seen):
        await read_until(reader, seen, "audio-stop")
        writer.write(b"this is not wyoming\n")
        await writer.drain()

    asr = WyomingAsr(service(not_json).uri, timeout_s=5)
    with pytest.raises(WyomingServiceError, match="not valid JSON"):
        asr.decode(speech())


def test_asr_check_refuses_a_service_without_asr(service):
    async def behave(reader, writer, seen):
        await async_read_event(reader)  # describe
        await async_write_event(tts_info(False).event(), writer)

    asr = WyomingAsr(service(behave).uri)
    with pytest.raises(WyomingServiceError, match="offers no speech-to-text"):
        asr.check()


# --- TTS ---------------------------------------------------------------------------------

def tts_service(service, *, streaming: bool, rate=22050, width=2, channels=1,
                chunks=4, chunk_samples=1000, gate: threading.Event | None = None,
                stop_after: int | None = None):
    """A TTS service answering every request with ``chunks`` chunks of a tone;
    ``gate``: waits for it after the first chunk (the client must have yielded it);
    ``stop_after``: closes the connection after that many chunks."""

    async def behave(reader, writer, seen):
        while True:
            event = await async_read_event(reader)
            if event is None:
                return
            seen.append(event)
            if Describe.is_type(event.type):
                await async_write_event(tts_info(streaming).event(), writer)
                continue
            if event.type == ("synthesize-stop" if streaming else "synthesize"):
                break
        t = np.arange(chunk_samples * channels) / rate
        tone = (6000 * np.sin(2 * np.pi * 300 * t)).astype("<i2")
        payload = tone.tobytes() if width == 2 else bytes(chunk_samples * channels * width)
        await async_write_event(AudioStart(rate=rate, width=width, channels=channels).event(),
                                writer)
        for i in range(chunks):
            if stop_after is not None and i == stop_after:
                writer.close()
                return
            await async_write_event(AudioChunk(rate=rate, width=width, channels=channels,
                                               audio=payload).event(), writer)
            if i == 0 and gate is not None:
                await asyncio.get_running_loop().run_in_executor(None, gate.wait, 30)
        await async_write_event(AudioStop().event(), writer)
        if streaming:
            await async_write_event(SynthesizeStopped().event(), writer)

    return service(behave)


def test_tts_streaming_input_and_audio_yielded_as_it_arrives(service):
    gate = threading.Event()
    svc = tts_service(service, streaming=True, gate=gate)
    tts = WyomingTts(svc.uri, voice="v", timeout_s=10)
    gen = tts.synthesize("Hello there. How are you?")
    first = next(gen)  # the service holds the rest back until this chunk is here
    gate.set()
    rest = list(gen)
    assert len(first.samples) == 1000 and [len(c.samples) for c in rest] == [1000] * 3
    assert first.rate == 22050 and tts.streaming is True
    types = [e.type for e in svc.seen if e.type != "describe"]
    assert types == ["synthesize-start", "synthesize-chunk", "synthesize", "synthesize-stop"]
    chunk = next(e for e in svc.seen if e.type == "synthesize-chunk")
    assert chunk.data["text"] == "Hello there. How are you?"
    start = next(e for e in svc.seen if e.type == "synthesize-start")
    assert start.data["voice"]["name"] == "v"


def test_tts_without_streaming_sends_one_synthesize_and_keeps_the_audio_exact(service):
    svc = tts_service(service, streaming=False)
    tts = WyomingTts(svc.uri)
    audio = np.concatenate([c.samples for c in tts.synthesize("Hi.")])
    t = np.arange(1000) / 22050
    tone = (6000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    assert np.array_equal(audio, np.tile(tone, 4))
    assert [e.type for e in svc.seen if e.type != "describe"] == ["synthesize"]


def test_tts_other_rate_and_stereo_are_converted(service):
    svc = tts_service(service, streaming=True, rate=16000, channels=2, chunks=16)
    tts = WyomingTts(svc.uri, sample_rate=22050)
    chunks = list(tts.synthesize("Hi."))
    audio = np.concatenate([c.samples for c in chunks])
    assert all(c.rate == 22050 for c in chunks) and tts.service_rate == 16000
    # 16 000 frames at 16 kHz is one second: ~22 050 samples (libswresample's delay aside)
    assert abs(len(audio) - 22050) < 400, len(audio)
    assert np.abs(audio).max() > 3000


@pytest.mark.parametrize("fmt,match", [
    ({"width": 1}, "1-byte samples"),
    ({"rate": 96000}, "96000 Hz"),
    ({"channels": 6}, "6 channel"),
])
def test_tts_odd_audio_format_is_refused(service, fmt, match):
    svc = tts_service(service, streaming=False, **fmt)
    tts = WyomingTts(svc.uri)
    with pytest.raises(WyomingServiceError, match=match):
        list(tts.synthesize("Hi."))


def test_tts_disconnect_mid_phrase_after_some_audio(service):
    svc = tts_service(service, streaming=True, stop_after=2)
    tts = WyomingTts(svc.uri, timeout_s=10)
    got = []
    with pytest.raises(WyomingServiceError, match="closed the connection"):
        for c in tts.synthesize("Hello there."):
            got.append(c)
    assert len(got) == 2  # what came before the break was played


def test_tts_too_much_audio_is_refused(service, monkeypatch):
    import hark.tts.wyoming as tw

    monkeypatch.setattr(tw, "MAX_AUDIO_S", 0.1)  # 2205 samples at 22 050 Hz
    svc = tts_service(service, streaming=False, chunks=50)
    with pytest.raises(WyomingServiceError, match="more than 0.1 s of audio"):
        list(WyomingTts(svc.uri).synthesize("Hi."))


def test_tts_down_then_up_again(service):
    port = free_port()
    tts = WyomingTts(f"tcp://127.0.0.1:{port}", streaming=False)
    with pytest.raises(WyomingServiceError, match="not reachable"):
        list(tts.synthesize("Hi."))
    # the service comes up on that port: the next phrase works, nothing to reset
    svc = tts_service(service, streaming=False)
    tts.peer.port = svc.port
    assert len(np.concatenate([c.samples for c in tts.synthesize("Hi.")])) == 4000


# --- config ------------------------------------------------------------------------------

def test_config_backend_choices_and_addresses():
    cfg = load_config(path="/dev/null", overrides={
        "asr": {"backend": "wyoming", "wyoming_uri": "tcp://10.0.0.5:10300"},
        "tts": {"engine": "wyoming", "wyoming_uri": "tcp://10.0.0.5:10200"}})
    assert cfg.asr.backend == "wyoming" and cfg.tts.wyoming_rate == 22050
    with pytest.raises(ConfigError, match="needs asr.wyoming_uri"):
        load_config(path="/dev/null", overrides={"asr": {"backend": "wyoming"}})
    with pytest.raises(ConfigError, match="tts.wyoming_uri"):
        load_config(path="/dev/null", overrides={
            "tts": {"engine": "wyoming", "wyoming_uri": "http://box:10200"}})
    with pytest.raises(ConfigError, match="asr.backend must be one of"):
        load_config(path="/dev/null", overrides={"asr": {"backend": "whisper"}})
    with pytest.raises(ConfigError, match="tts.wyoming_rate"):
        load_config(path="/dev/null", overrides={"tts": {"wyoming_rate": 4000}})


# --- hark doctor -------------------------------------------------------------------------

def test_doctor_checks_the_remote_services(service):
    from hark.server.doctor import FAIL, OK, check_remote_engines, configured_models

    async def asr_only(reader, writer, seen):
        await async_read_event(reader)  # describe
        await async_write_event(asr_info().event(), writer)

    svc = service(asr_only)
    down = f"tcp://127.0.0.1:{free_port()}"
    cfg = load_config(path="/dev/null", overrides={
        "asr": {"backend": "wyoming", "wyoming_uri": svc.uri},
        "tts": {"engine": "wyoming", "wyoming_uri": down}})
    asr_check, tts_check = check_remote_engines(cfg, timeout_s=2)
    assert asr_check.status == OK and "fake-asr" in asr_check.detail
    assert tts_check.status == FAIL and "not reachable" in tts_check.detail
    assert tts_check.fix and "start the service" in tts_check.fix
    cfg.tts.wyoming_uri = svc.uri  # an ASR service named as the TTS one
    tts_check = check_remote_engines(cfg, timeout_s=2)[1]
    assert tts_check.status == FAIL and "offers no text-to-speech" in tts_check.detail
    # the remote engines' models are the services' business, not this machine's
    assert [k for k, _v, _kind in configured_models(cfg)] == ["vad.model",
                                                              "llm.profiles.fast"]
    assert check_remote_engines(load_config(path="/dev/null")) == []
