"""Whole turns through the real engines: Piper-spoken audio in, spoken reply out."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest

from hark.audio import frames, paced, read_audio, write_wav
from hark.cli import main
from hark.pipeline.events import IntentEvent, ReplyAudio, TranscriptEvent, TurnEnd


def _words(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", text.lower()).strip()


def _turn(assistant, audio: np.ndarray, mode: str = "streaming"):
    async def run():
        pad = np.zeros(8000, np.int16)
        mic = paced(frames(np.concatenate([pad, audio, np.zeros(48000, np.int16)]), 512),
                    realtime=True)
        return [ev async for ev in assistant.run_turn(mic, mode=mode)]

    return asyncio.run(run())


def _transcribe(audio: np.ndarray, rate: int) -> str:
    from hark.asr.whisper import load_asr
    from hark.audio import resample
    from hark.config import Config

    return load_asr(Config()).transcribe(resample(audio, rate, 16000))


@pytest.mark.parametrize("mode", ["streaming", "baseline"])
def test_spoken_command_gets_spoken_answer(assistant, speak, mode, clock):
    events = _turn(assistant, speak("What time is it?"), mode)
    end = events[-1]
    assert isinstance(end, TurnEnd) and end.error is None, end
    finals = [e for e in events if isinstance(e, TranscriptEvent) and e.transcript.is_final]
    assert "what time is it" in _words(finals[-1].transcript.text)
    intents = [e.intent for e in events if isinstance(e, IntentEvent)]
    assert intents[-1] is not None and intents[-1].name == "HassGetCurrentTime"
    audio = np.concatenate([e.chunk.samples for e in events if isinstance(e, ReplyAudio)])
    assert len(audio) / assistant.tts_rate > 0.5
    spans = end.trace.spans_ms()
    assert {"asr_final", "intent", "tts_first_audio", "total"} <= set(spans)
    # the reply really says the time: transcribe it back
    heard = _words(_transcribe(audio, assistant.tts_rate))
    assert f"{clock.hour % 12 or 12}{clock.minute:02d}" in re.sub(r"\D", "", heard), heard


def test_spoken_question_goes_to_the_llm(assistant, speak):
    events = _turn(assistant, speak("Why is the sky blue?"))
    end = events[-1]
    assert end.error is None, end
    assert [e.intent for e in events if isinstance(e, IntentEvent)][-1] is None
    assert end.reply.strip()
    assert any(isinstance(e, ReplyAudio) for e in events)
    assert end.trace.has("llm_first_token") and end.trace.has("first_audio_out")


def test_silence_is_no_speech(assistant):
    events = _turn(assistant, np.zeros(16000, np.int16))
    assert events[-1].error == "no speech"


@pytest.mark.models
def test_demo_file_to_reply_wav(tmp_path, speak, capsys):
    q = write_wav(tmp_path / "q.wav", speak("Set a timer for two minutes."), 16000)
    out = tmp_path / "reply.wav"
    rc = main(["--set", "llm.profile=tiny", "demo", "--input", str(q), "--output", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "HassStartTimer" in text and "end of speech -> first reply audio" in text
    reply = read_audio(out)
    assert len(reply) > 8000


@pytest.mark.models
def test_demo_text_uses_local_handler(capsys):
    rc = main(["--set", "llm.profile=tiny", "demo", "--text", "what time is it",
               "--output", "/dev/null"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "HassGetCurrentTime" in text and "[intent]" in text and "[llm]" not in text


def test_demo_rejects_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav at all")
    assert main(["demo", "--input", str(bad)]) == 1
    assert "bad.wav" in capsys.readouterr().err
