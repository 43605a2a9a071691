"""End to end on loopback with the real Assistant: a satellite fed a WAV of
"Alexa, what time is it?" gets the spoken answer into its output WAV."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest
from spoken import digits_heard
from rapidfuzz import fuzz

from hark.audio import read_audio, write_wav
from hark.config import Config

pytestmark = pytest.mark.timeout(300)

def _run(cfg: Config, assistant, wav: Path, out: Path, **transport):
    from hark.satellite.audio import FileSource, WavSink
    from hark.satellite.satellite import FRAME, Satellite
    from hark.server.server import Server

    async def go():
        scfg = Config()
        scfg.llm = cfg.llm
        scfg.server.control_port = 0
        scfg.server.rtp_port = 0
        for k, v in transport.items():
            setattr(scfg.transport, k, v)
        server = Server(scfg, assistant)
        await server.start()
        traces = []
        server.turn_listeners.append(traces.append)
        sat_cfg = Config()
        sat_cfg.transport = scfg.transport
        sat_cfg.sched.realtime = False
        sat_cfg.satellite.server = f"127.0.0.1:{server.control_port}"
        sat = Satellite(sat_cfg, FileSource(wav, FRAME), WavSink(out), exit_when_done=True,
                        realtime_thread=False)
        try:
            await asyncio.wait_for(sat.run(), 120)
        finally:
            await server.stop()
        return sat, traces

    return asyncio.run(go())


@pytest.mark.parametrize("path", ["udp", "shm"])
def test_satellite_gets_spoken_answer(cfg, assistant, speak, tmp_path, path, clock):
    pad = np.zeros(8000, np.int16)
    wav = write_wav(tmp_path / "ask.wav",
                    np.concatenate([pad, speak("Alexa, what time is it?"), pad]), 16000)
    settings = {"shm": "never", "tcp_audio_fallback": "never"} if path == "udp" else {}
    sat, traces = _run(cfg, assistant, wav, tmp_path / "answer.wav", **settings)
    assert sat.stats.wakes == 1 and sat.stats.turns_done == 1
    assert len(traces) == 1
    trace = traces[0]
    assert trace.info["audio_path"] == path
    assert "time" in " ".join(sat.stats.transcripts).lower()
    reply = " ".join(sat.stats.replies)
    assert reply
    # the reply's packets were paced so that none came after its playout time (a server
    # that sent one packet and then the rest a whole reply later lost the first words)
    jitter = sat._receiver.jitter.stats
    assert jitter.played > 0 and jitter.late == 0, jitter
    # the answer came back as audio: transcribe the satellite's output WAV
    answer = read_audio(tmp_path / "answer.wav")
    assert len(answer) / 16000 > 0.8
    heard = assistant.asr.transcribe(answer)
    # compare letters and digits only: "2:42 PM" and "2.42pm" are the same answer
    squash = lambda s: re.sub(r"[^a-z0-9]", "", s.lower())
    assert fuzz.ratio(squash(reply), squash(heard)) > 75, (reply, heard)


# Runs `hark satellite` in a Python that cannot import any server package, as on a
# satellite installed with HARK_ROLE=satellite scripts/setup.sh.
_NO_SERVER_PACKAGES = """
import importlib.abc, sys
from hark.cli import SERVER_PACKAGES
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in SERVER_PACKAGES:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
from hark.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_satellite_without_server_packages_gets_spoken_answer(cfg, assistant, speak,
                                                              tmp_path, clock):
    import sys

    from hark.server.server import Server

    pad = np.zeros(8000, np.int16)
    wav = write_wav(tmp_path / "ask.wav",
                    np.concatenate([pad, speak("Alexa, what time is it?"), pad]), 16000)
    out = tmp_path / "answer.wav"

    async def go():
        scfg = Config()
        scfg.llm = cfg.llm
        scfg.server.control_port = 0
        scfg.server.rtp_port = 0
        server = Server(scfg, assistant)
        await server.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _NO_SERVER_PACKAGES,
                "--set", "sched.realtime=false", "satellite",
                "--server", f"127.0.0.1:{server.control_port}",
                "--input", str(wav), "--output", str(out),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            printed, _ = await asyncio.wait_for(proc.communicate(), 120)
        finally:
            await server.stop()
        return proc.returncode, printed.decode()

    rc, printed = asyncio.run(go())
    assert rc == 0, printed
    assert "wakes 1, turns 1" in printed, printed
    answer = read_audio(out)
    assert len(answer) / 16000 > 0.8
    heard = assistant.asr.transcribe(answer).lower()
    # the time told, hour and minutes, in whatever form Whisper writes it ("3:25",
    # "3.25pm", "325 pdem": it does not always hear the "PM")
    said = f"{clock.hour % 12 or 12}{clock.minute:02d}"
    assert said in digits_heard(heard), (heard, said)
