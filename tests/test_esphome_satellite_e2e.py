"""hark's whole pipeline driving an ESPHome voice satellite: the device emulator
(hark/bench/esphome_emulator.py, aioesphomeapi's messages and Noise framing) speaks a
Piper-spoken command in real time over an encrypted API connection; the reply it
fetches from hark's HTTP server (a media-player device, like the Voice PE) or receives
over the API (a speaker device) is transcribed back with Whisper."""

from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
from aioesphomeapi import VoiceAssistantEventType as ET
from spoken import digits_heard

from hark.audio import resample
from hark.config import Config

pytestmark = [pytest.mark.models, pytest.mark.timeout(600)]

KEY = base64.b64encode(bytes(range(100, 132))).decode()


@pytest.fixture(scope="session")
def whisper():
    from hark.asr.whisper import load_asr

    return load_asr(Config())


def _says_the_time(said: str, heard: str) -> bool:
    """Whisper heard the time the reply says (digits compared with zeros left out, as
    test_wyoming_satellite_e2e does)."""
    import re

    hour, minute = (int(x) for x in re.findall(r"\d+", said)[:2])
    want = (f"{hour}{minute:02d}" if minute else f"{hour}").replace("0", "")
    return want in digits_heard(heard).replace("0", "")


@pytest.mark.parametrize("kind", ["media_player", "speaker"])
def test_esphome_device_asks_the_time_and_hears_it(kind, assistant, cfg, speak, whisper,
                                                   tmp_path, clock):
    from hark.bench.esphome_emulator import MEDIA_PLAYER_FLAGS, SPEAKER_FLAGS, EsphomeDevice
    from hark.server.esphome_satellite import EsphomeSatellites
    from hark.server.http import Loading, start_http

    clip = speak("What time is it?")

    async def go():
        c = Config()
        c.llm = cfg.llm
        c.home_dir = str(tmp_path)
        http = await start_http(Loading(), c, port=0, host="127.0.0.1", token="t" * 24)
        dev = await EsphomeDevice(key=KEY, flags=MEDIA_PLAYER_FLAGS if kind == "media_player"
                                  else SPEAKER_FLAGS).start()
        c.server.esphome_satellites = [dev.uri]
        c.server.esphome_keys = {f"127.0.0.1:{dev.port}": KEY}
        traces: list = []
        sats = EsphomeSatellites(c, assistant, [dev.uri], replies=http.replies,
                                 reply_base=http.url, turn_listeners=[traces.append])
        await sats.start()
        try:
            await asyncio.wait_for(dev.subscribed.wait(), 60)
            return await dev.run_turn(clip, pace=True, tail_s=4.0, timeout_s=120), traces
        finally:
            await sats.stop()
            await dev.close()
            await http.close()

    turn, traces = asyncio.run(go())
    assert len(traces) == 1
    info = traces[0].info
    assert info["intent"] == "HassGetCurrentTime", info
    assert "time" in turn.data(ET.VOICE_ASSISTANT_STT_END)["text"].lower()
    assert turn.types[-1] == ET.VOICE_ASSISTANT_RUN_END
    assert ET.VOICE_ASSISTANT_ERROR not in turn.types
    # the device stopped its microphone at hark's end of turn, well before the tail ended
    assert turn.mic_samples < len(clip) + 3.5 * 16000
    audio = turn.samples()
    assert turn.first_reply_t is not None and len(audio) / turn.reply_rate > 0.8
    heard = whisper.transcribe(resample(audio, turn.reply_rate, 16000))
    assert _says_the_time(info["reply"], heard), (info["reply"], heard)
    if kind == "media_player":
        assert turn.fetch_status == 200 and turn.fetched_url.startswith("http://127.0.0.1")
    else:
        assert turn.fetched_url is None and turn.reply_rate == 16000
    assert np.abs(audio.astype(np.int32)).max() > 1000  # not silence
