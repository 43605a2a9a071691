"""The Wyoming port's guards over real sockets on 127.0.0.1, with a small fake Assistant:
who may connect, how many, for how long, and how much one event or one request may make
the server hold (the real Assistant is exercised in test_wyoming.py)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.handle import Handled
from wyoming.info import Describe, Info
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.tts import Synthesize

from hark.config import Config
from hark.errors import ConfigError
from hark.pipeline.events import ReplyText, TurnEnd
from hark.server.wyoming import (
    MAX_BUFFERED_S,
    MAX_DATA,
    MAX_PAYLOAD,
    MAX_TEXT,
    WyomingService,
    check_wyoming_access,
    start_wyoming,
)
from hark.trace import Trace

pytestmark = pytest.mark.timeout(60)


class _Exec:
    async def run(self, fn, *args):
        return fn(*args)


class _Asr:
    def transcribe(self, audio: np.ndarray) -> str:
        return f"{len(audio)} samples"


class _Llm:
    def __init__(self) -> None:
        self.reset_sessions: list[str] = []

    def reset(self, session: str | None = None) -> None:
        self.reset_sessions.append(session)


class FakeAssistant:
    tts_rate = 22050

    def __init__(self) -> None:
        self.asr, self.asr_exec = _Asr(), _Exec()
        self.llm = _Llm()
        self.sessions: list[str] = []
        self.turns_closed = 0
        self.turn_started = asyncio.Event()

    async def speak(self, text: str):
        from hark.audio import AudioChunk as Chunk

        yield Chunk(np.zeros(2205, np.int16), self.tts_rate)

    async def run_text(self, text: str, *, session: str = "default"):
        self.sessions.append(session)
        yield ReplyText(f"you said {text}", "intent")
        yield TurnEnd(Trace(), text, f"you said {text}")

    async def run_turn(self, audio, *, session: str = "default"):
        self.turn_started.set()
        try:
            async for _ in audio:
                pass
            await asyncio.Event().wait()  # a turn that never ends by itself
            yield None
        finally:
            self.turns_closed += 1


def _cfg(**server) -> Config:
    c = Config()
    for k, v in server.items():
        setattr(c.server, k, v)
    return c


def _run(body, assistant=None, **server):
    async def go():
        a = assistant or FakeAssistant()
        svc = await start_wyoming(_cfg(**server), a, port=0)
        try:
            return await asyncio.wait_for(body(svc, a), 30)
        finally:
            await svc.stop()

    return asyncio.run(go())


async def _raw(svc: WyomingService) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", svc.port)


async def _closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""


def _events(raw: bytes) -> list[dict]:
    """Wyoming events in ``raw`` (header line, then data and payload bytes) as dicts of
    the header with its data merged in."""
    out = []
    while raw:
        line, _, raw = raw.partition(b"\n")
        ev = json.loads(line)
        n = ev.pop("data_length", 0) or 0
        ev.setdefault("data", {}).update(json.loads(raw[:n]) if n else {})
        raw = raw[n + (ev.pop("payload_length", 0) or 0):]
        out.append(ev)
    return out


def test_listen_address_beyond_this_machine_needs_an_allow_list():
    assert check_wyoming_access("127.0.0.1", []) == []
    assert check_wyoming_access("::1", []) == []
    with pytest.raises(ConfigError) as err:
        check_wyoming_access("0.0.0.0", [])
    assert "wyoming_allow" in err.value.fix
    with pytest.raises(ConfigError):
        check_wyoming_access("192.168.1.5", [])
    assert len(check_wyoming_access("0.0.0.0", ["192.168.1.20", "10.0.0.0/24"])) == 2
    with pytest.raises(ConfigError, match="not an address or network"):
        check_wyoming_access("0.0.0.0", ["homeassistant.local"])
    with pytest.raises(ConfigError):  # and hark serve never starts so
        asyncio.run(start_wyoming(_cfg(wyoming_host="0.0.0.0"), FakeAssistant(), port=0))


def test_peers_outside_the_allow_list_are_closed_unread():
    svc = WyomingService(_cfg(wyoming_host="0.0.0.0", wyoming_allow=["192.168.1.20",
                                                                      "10.0.0.0/24"]),
                         FakeAssistant(), "0.0.0.0")
    for ok in ("127.0.0.1", "::1", "192.168.1.20", "10.0.0.77", "::ffff:192.168.1.20"):
        assert svc.peer_allowed(ok), ok
    for bad in ("192.168.1.21", "10.0.1.1", "8.8.8.8", "fe80::1", "", None, "garbage"):
        assert not svc.peer_allowed(bad), bad

    async def body(svc, a):
        svc.allowed = []
        svc.peer_allowed = lambda host: False  # as a peer not on the list is
        reader, writer = await _raw(svc)
        writer.write(b'{"type": "describe"}\n')
        await writer.drain()
        got = await _closed(reader)
        writer.close()
        return got, svc.refused, len(svc.handlers)

    got, refused, handlers = _run(body)
    assert got == b"" and refused == 1 and handlers == 0


@pytest.mark.parametrize("header, why", [
    ({"type": "audio-chunk", "payload_length": MAX_PAYLOAD + 1}, "payload_length"),
    ({"type": "audio-chunk", "payload_length": 10 ** 12}, "payload_length"),
    ({"type": "transcript", "data_length": MAX_DATA + 1}, "data_length"),
    ({"type": "transcript", "data_length": -1}, "data_length"),
    ({"type": "transcript", "data_length": True}, "data_length"),
    ({"type": "describe", "data": [1, 2]}, "'data' must be an object"),
    ({"data": {}}, "'type'"),
])
def test_oversized_or_malformed_events_end_the_connection_unbuffered(header, why):
    async def body(svc, a):
        reader, writer = await _raw(svc)
        writer.write(json.dumps(header).encode() + b"\n")
        await writer.drain()
        got = _events(await _closed(reader))
        writer.close()
        # the service goes on
        async with AsyncTcpClient("127.0.0.1", svc.port) as client:
            await client.write_event(Describe().event())
            info = await client.read_event()
        return got, info

    got, info = _run(body)
    assert got and got[-1]["type"] == "error" and why in json.dumps(got[-1])
    assert Info.is_type(info.type)


@pytest.mark.parametrize("line", [
    b"[" * 50000 + b"]" * 50000,  # deep nesting
    b'{"type": "describe", "data_length": ' + b"9" * 5000 + b"}",  # a huge integer
    b"\xff\xfe{not json",
    b"{" + b" " * (70 * 1024) + b"}",  # longer than any header
])
def test_hostile_header_lines(line):
    async def body(svc, a):
        reader, writer = await _raw(svc)
        writer.write(line + b"\n")
        await writer.drain()
        got = _events(await _closed(reader))
        writer.close()
        return got

    got = _run(body)
    assert got and got[-1]["type"] == "error"


def test_audio_formats_are_checked_and_buffering_is_capped():
    rate = 16000

    async def body(svc, a):
        async with AsyncTcpClient("127.0.0.1", svc.port) as client:
            replies = []
            # rate 1 (a 15,840x blow-up in the converter), 8-bit, 3 channels, 96 kHz
            for r, w, c in ((1, 2, 1), (16000, 1, 1), (16000, 2, 3), (96000, 2, 1)):
                await client.write_event(AudioStart(rate=r, width=w, channels=c).event())
                replies.append(await client.read_event())
                await client.write_event(AudioChunk(rate=r, width=w, channels=c,
                                                    audio=b"\0" * 12).event())
                replies.append(await client.read_event())
            await client.write_event(AudioChunk(rate=rate, width=2, channels=1,
                                                audio=b"\0" * 3).event())  # half a sample
            replies.append(await client.read_event())
            # 40 s of audio for one transcription: only MAX_BUFFERED_S is kept
            await client.write_event(Transcribe().event())
            await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
            second = np.zeros(rate, np.int16).tobytes()
            for _ in range(40):
                await client.write_event(AudioChunk(rate=rate, width=2, channels=1,
                                                    audio=second).event())
            await client.write_event(AudioStop().event())
            transcript = Transcript.from_event(await client.read_event())
            # 8 kHz stereo is fine
            await client.write_event(Transcribe().event())
            await client.write_event(AudioStart(rate=8000, width=2, channels=2).event())
            await client.write_event(AudioChunk(rate=8000, width=2, channels=2,
                                                audio=np.zeros(16000, np.int16).tobytes())
                                     .event())
            await client.write_event(AudioStop().event())
            stereo = Transcript.from_event(await client.read_event())
            return replies, transcript, stereo

    replies, transcript, stereo = _run(body)
    assert all(Error.is_type(e.type) for e in replies), replies
    assert "unsupported audio format" in Error.from_event(replies[0]).text
    assert "whole number" in Error.from_event(replies[-1]).text
    assert transcript.text == f"{int(MAX_BUFFERED_S * rate)} samples"
    assert abs(int(stereo.text.split()[0]) - 16000) <= 2  # 1 s (resampling may lose one)


def test_long_texts_are_refused():
    async def body(svc, a):
        async with AsyncTcpClient("127.0.0.1", svc.port) as client:
            await client.write_event(Synthesize(text="a" * (MAX_TEXT + 1)).event())
            long = await client.read_event()
            await client.write_event(Transcript(text="what time is it").event())
            ok = await client.read_event()
            return long, ok

    long, ok = _run(body)
    assert Error.is_type(long.type) and "longer than" in Error.from_event(long).text
    assert Handled.is_type(ok.type)


def test_connection_cap_and_idle_timeout():
    async def body(svc, a):
        first = await _raw(svc)
        second = await _raw(svc)
        while len(svc.handlers) < 2:
            await asyncio.sleep(0.01)
        third_reader, third_writer = await _raw(svc)
        refused = await _closed(third_reader)  # over the cap: closed at once
        # the two idle ones are closed after server.wyoming_idle_s
        idle = [await _closed(r) for r, _ in (first, second)]
        for _, w in (first, second, (None, third_writer)):
            w.close()
        return refused, idle, svc.refused, len(svc.handlers)

    refused, idle, n_refused, handlers = _run(body, wyoming_max_connections=2,
                                              wyoming_idle_s=0.5)
    assert refused == b"" and n_refused == 1
    assert idle == [b"", b""] and handlers == 0


def test_each_connection_is_its_own_conversation_and_is_forgotten():
    async def body(svc, a):
        for _ in range(3):
            async with AsyncTcpClient("127.0.0.1", svc.port) as client:
                await client.write_event(Transcript(text="hello").event())
                await client.read_event()
        for _ in range(100):
            if len(a.llm.reset_sessions) == 3:
                break
            await asyncio.sleep(0.02)
        return a.sessions, a.llm.reset_sessions

    sessions, forgotten = _run(body)
    assert len(set(sessions)) == 3 and sorted(forgotten) == sorted(sessions)


def test_a_turn_is_cancelled_when_its_client_leaves():
    async def body(svc, a):
        client = AsyncTcpClient("127.0.0.1", svc.port)
        await client.connect()
        await client.write_event(RunPipeline(start_stage=PipelineStage.ASR,
                                             end_stage=PipelineStage.TTS).event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await asyncio.wait_for(a.turn_started.wait(), 10)
        await client.disconnect()
        for _ in range(200):
            if a.turns_closed and not svc.handlers:
                break
            await asyncio.sleep(0.02)
        return a.turns_closed, len(svc.handlers)

    closed, handlers = _run(body)
    assert closed == 1 and handlers == 0


def test_wyoming_work_waits_for_a_turn_slot():
    """transcribe/synthesize/handle share server.max_concurrent_turns with the satellites:
    with every slot taken, a handle request waits until one is free."""
    import asyncio as aio

    from hark.config import Config
    from hark.server import wyoming as wy

    class Assistant:
        async def run_text(self, text, session="x"):
            from hark.pipeline.events import ReplyText, TurnEnd
            from hark.trace import Trace

            yield ReplyText("ok", "intent")
            yield TurnEnd(Trace(), text, "ok")

    async def go():
        slots = aio.Semaphore(1)
        writer_out = []

        class Writer:
            def write(self, data):
                writer_out.append(data)

            def writelines(self, parts):
                writer_out.extend(parts)

            async def drain(self):
                pass

            def close(self):
                pass

            def is_closing(self):
                return False

        handler = wy.HarkWyomingHandler(Config(), Assistant(), aio.StreamReader(), Writer(),
                                        turn_slots=slots)
        await slots.acquire()  # a satellite's turn holds the only slot
        task = aio.create_task(handler._handle_text("what time is it"))
        await aio.sleep(0.2)
        waited = not task.done()
        slots.release()
        await aio.wait_for(task, 5)
        return waited, b"".join(writer_out)

    waited, out = aio.run(go())
    assert waited and b"handled" in out
