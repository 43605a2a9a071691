"""UDP -> TCP fallback with the real Assistant on loopback: a satellite whose UDP audio
is dropped (probes pass, audio does not: a middlebox that drops bigger datagrams) still
gets its whole question heard and answered, and once UDP carries audio again a later
turn goes back over UDP."""

from __future__ import annotations

import asyncio
import re

import numpy as np
import pytest
from rapidfuzz import fuzz

from hark.audio import read_audio, write_wav
from hark.config import Config
from hark.pipeline.events import TurnEnd
from hark.transport.stream import RtpStreamReceiver, RtpStreamSender

pytestmark = pytest.mark.timeout(300)


def squash(text: str) -> str:
    """Letters and digits only: "2:42 PM" and "2.42pm" are the same answer."""
    return re.sub(r"[^a-z0-9]", "", text.lower())


def test_ordered_path_drains_jitter_buffer_then_resumes_after_it(speak):
    """Frames the jitter buffer holds come out first, then the resent ones, with no
    duplicate and no gap: the audio equals what was sent."""
    speech = speak("What time is it?")
    tx = RtpStreamSender("pcm", 16000, 20)
    pkts = tx.push(speech) + tx.flush()
    rx = RtpStreamReceiver("pcm", 16000, 20)
    for i, p in enumerate(pkts[:10]):  # arrived over UDP, still waiting in the buffer
        rx.push(p, now=i * 0.02)
    assert rx.highest_seq == pkts[9].seq
    out = [pcm for _, pcm in rx.drain()]
    assert rx.highest_seq == pkts[9].seq
    for p in pkts[5:]:  # resent over TCP from an older point: overlap is dropped
        out += [pcm for _, pcm in rx.push_ordered(p)]
    audio = np.concatenate(out)
    assert len(audio) == len(pkts) * 320
    assert np.array_equal(audio[:len(speech)], speech)
    # a gap on the ordered path is concealed, not skipped
    later = tx.push(speech[:1280])  # 4 frames
    got = rx.push_ordered(later[2])
    assert len(got) == 3 and rx.concealed == 2


@pytest.fixture
def blocked_udp_audio(monkeypatch):
    """A firewall in the server's UDP input: while ``state["on"]``, datagrams bigger than
    an empty RTP probe are dropped."""
    from hark.server.server import Server

    real = Server.datagram
    state = {"on": True, "dropped": 0}

    def filtered(self, data, addr):
        if state["on"] and len(data) > 12:
            state["dropped"] += 1
            return
        real(self, data, addr)

    monkeypatch.setattr(Server, "datagram", filtered)
    return state


def test_fallback_keeps_the_whole_question_and_udp_comes_back(cfg, assistant, speak,
                                                              tmp_path, blocked_udp_audio,
                                                              clock):
    from hark.satellite.audio import FileSource, WavSink
    from hark.satellite.satellite import FRAME, Satellite
    from hark.server.server import Server

    pad = np.zeros(8000, np.int16)
    ask = speak("Alexa, what time is it?")
    wav = write_wav(tmp_path / "ask.wav", np.concatenate(
        [pad, ask, np.zeros(5 * 16000, np.int16), ask, pad]), 16000)
    out = tmp_path / "answer.wav"

    async def go():
        scfg = Config()
        scfg.llm = cfg.llm
        scfg.server.control_port = scfg.server.rtp_port = 0
        scfg.transport.shm = "never"
        scfg.transport.tcp_audio_fallback = "auto"
        server = Server(scfg, assistant)
        await server.start()
        traces = []
        server.turn_listeners.append(traces.append)

        def unblock_after_first_turn(session, ev):
            if isinstance(ev, TurnEnd):
                blocked_udp_audio["on"] = False  # the network recovers

        server.event_listeners.append(unblock_after_first_turn)
        sat_cfg = Config()
        sat_cfg.transport = scfg.transport
        sat_cfg.sched.realtime = False
        sat_cfg.wake.followup_s = 0.0
        sat_cfg.satellite.server = f"127.0.0.1:{server.control_port}"
        sat = Satellite(sat_cfg, FileSource(wav, FRAME), WavSink(out), exit_when_done=True,
                        realtime_thread=False)
        try:
            await asyncio.wait_for(sat.run(), 150)
        finally:
            await server.stop()
        return sat, traces

    sat, traces = asyncio.run(go())
    st = sat.stats
    assert blocked_udp_audio["dropped"] > 0
    assert st.wakes == 2 and st.turns_done == 2 and len(traces) == 2
    # turn 1: UDP audio never arrived; everything was resent over TCP
    assert traces[0].info["udp_fallback"] and traces[0].info["audio_path"] == "tcp"
    assert st.udp_fallbacks == 1 and st.frames_resent > 0
    assert "whattimeisit" in squash(st.transcripts[0]), st.transcripts
    # turn 2: the re-probe found UDP working again
    assert st.udp_restored == 1
    assert traces[1].info["audio_path"] == "udp" and not traces[1].info["udp_fallback"]
    assert "whattimeisit" in squash(st.transcripts[1]), st.transcripts
    # both answers came back as audio: transcribe the satellite's output
    replies = " ".join(st.replies)
    assert "time" in replies.lower() or re.search(r"\d", replies), replies
    heard = assistant.asr.transcribe(read_audio(out))
    heard = getattr(heard, "text", heard)
    assert fuzz.ratio(squash(replies), squash(heard)) > 75, (replies, heard)
