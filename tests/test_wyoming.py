"""hark as a Wyoming service, driven by the wyoming package's own client."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.handle import Handled
from wyoming.info import Describe, Info
from wyoming.intent import Intent, Recognize
from wyoming.pipeline import PipelineStage, RunPipeline
from wyoming.tts import Synthesize
from wyoming.wake import Detect, Detection, NotDetected

from hark.audio import resample
from hark.bench.transport import word_error_rate
from hark.config import Config

pytestmark = pytest.mark.timeout(300)

def _with_service(assistant, cfg, body):
    from hark.server.wyoming import start_wyoming

    async def go():
        c = Config()
        c.llm = cfg.llm
        svc = await start_wyoming(c, assistant, port=0)
        try:
            async with AsyncTcpClient("127.0.0.1", svc.port) as client:
                return await asyncio.wait_for(body(client), 120)
        finally:
            await svc.stop()

    return asyncio.run(go())


async def _send_audio(client: AsyncTcpClient, samples: np.ndarray, rate: int = 16000) -> None:
    await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
    for i in range(0, len(samples), 1024):
        await client.write_event(AudioChunk(rate=rate, width=2, channels=1,
                                            audio=samples[i:i + 1024].tobytes()).event())
    await client.write_event(AudioStop().event())


async def _read_audio(client: AsyncTcpClient) -> tuple[np.ndarray, int]:
    parts, rate = [], 0
    while True:
        ev = await client.read_event()
        assert ev is not None
        if AudioStart.is_type(ev.type):
            rate = AudioStart.from_event(ev).rate
        elif AudioChunk.is_type(ev.type):
            parts.append(np.frombuffer(AudioChunk.from_event(ev).audio, dtype="<i2"))
        elif AudioStop.is_type(ev.type):
            return np.concatenate(parts) if parts else np.zeros(0, np.int16), rate


def test_describe_transcribe_synthesize_recognize(assistant, cfg, speak):
    question = speak("Turn on the kitchen light.")
    # the client sends 48 kHz stereo-free audio: hark converts
    question_48k = resample(question, 16000, 48000)

    async def body(client):
        await client.write_event(Describe().event())
        info = Info.from_event(await client.read_event())
        await client.write_event(Transcribe(language="en").event())
        await _send_audio(client, question_48k, 48000)
        transcript = Transcript.from_event(await client.read_event())
        await client.write_event(Synthesize(text="The kitchen light is on.").event())
        audio, rate = await _read_audio(client)
        await client.write_event(Recognize(text="what time is it").event())
        intent = await client.read_event()
        await client.write_event(Event(type="frobnicate", data={}))
        err = await client.read_event()
        await client.write_event(Describe().event())  # still serving after the error
        again = await client.read_event()
        return info, transcript, audio, rate, intent, err, again

    info, transcript, audio, rate, intent, err, again = _with_service(assistant, cfg, body)
    assert info.asr and info.tts and info.wake and info.handle and info.intent
    assert "alexa" in [m.name for m in info.wake[0].models]
    assert "kitchen light" in transcript.text.lower()
    assert rate == assistant.tts_rate and len(audio) / rate > 0.8
    heard = assistant.asr.transcribe(resample(audio, rate, 16000))
    assert word_error_rate("the kitchen light is on", heard) <= 0.25, heard
    assert Intent.is_type(intent.type) and Intent.from_event(intent).name
    assert Error.is_type(err.type) and "frobnicate" in Error.from_event(err).text
    assert Info.is_type(again.type)


def test_wake_detection_service(assistant, cfg, speak):
    pad = np.zeros(8000, np.int16)

    async def body(client):
        await client.write_event(Detect(names=["alexa"]).event())
        await _send_audio(client, np.concatenate([pad, speak("Alexa."), pad]))
        hit = await client.read_event()
        rest = await client.read_event()
        await client.write_event(Detect(names=["alexa"]).event())
        await _send_audio(client, np.concatenate([pad, speak("Good morning."), pad]))
        miss = await client.read_event()
        return hit, rest, miss

    hit, rest, miss = _with_service(assistant, cfg, body)
    assert Detection.is_type(hit.type) and Detection.from_event(hit).name == "alexa"
    assert NotDetected.is_type(rest.type)  # audio-stop closes the detection request
    assert NotDetected.is_type(miss.type)


def test_pipeline_turn(assistant, cfg, speak):
    pad = np.zeros(8000, np.int16)
    audio = np.concatenate([pad, speak("Alexa, what time is it?"), np.zeros(32000, np.int16)])

    async def body(client):
        await client.write_event(RunPipeline(start_stage=PipelineStage.WAKE,
                                             end_stage=PipelineStage.TTS,
                                             wake_word_name="alexa").event())
        await _send_audio(client, audio)
        got = {}
        reply_audio = []
        while "handled" not in got:
            ev = await client.read_event()
            assert ev is not None
            if AudioChunk.is_type(ev.type):
                reply_audio.append(np.frombuffer(AudioChunk.from_event(ev).audio, "<i2"))
            got[ev.type] = ev
        return got, np.concatenate(reply_audio) if reply_audio else np.zeros(0, np.int16)

    got, reply_audio = _with_service(assistant, cfg, body)
    assert Detection.is_type(got["detection"].type)
    assert "time" in Transcript.from_event(got["transcript"]).text.lower()
    handled = Handled.from_event(got["handled"]).text
    assert handled
    # the whole spoken reply arrived: "It's 5:20 PM." is 0.79 s of Piper once its
    # silence is trimmed, so the bound is on the words, not on a second
    assert len(reply_audio) / assistant.tts_rate > 0.04 * len(handled), (handled,
                                                                          len(reply_audio))
