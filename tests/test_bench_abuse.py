"""``hark bench abuse``'s probes against a server in this process (real sockets on
127.0.0.1, small fake assistants; the bench itself starts a real ``hark serve``)."""

from __future__ import annotations

import asyncio
import logging
import os

import numpy as np
import pytest
from test_server import FakeAssistant
from test_wyoming_bounds import FakeAssistant as WyomingFake

from hark.bench.abuse import RSS_LIMIT_MB, Target, format_table, run_abuse
from hark.bench.load import Utterance
from hark.config import Config
from hark.server.http import start_http
from hark.server.server import Server
from hark.server.wyoming import start_wyoming

pytestmark = pytest.mark.timeout(180)


def _tone_utterance() -> Utterance:
    """Loud enough for FakeAssistant to hear speech, then quiet (its end of turn)."""
    t = np.arange(4000) / 16000  # 0.25 s: each probe is followed by one such turn
    audio = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    return Utterance("tone", "command", audio, 0.25)


def test_probes_refuse_bound_and_leave_the_server_serving(tmp_path, caplog):
    async def go():
        cfg = Config(home_dir=str(tmp_path))
        for key in ("control_port", "rtp_port", "wyoming_port"):
            setattr(cfg.server, key, 0)
        cfg.server.hello_timeout_s = 1.0  # the idle probe waits for it
        assistant = FakeAssistant(reply_s=0.1)  # each probe is followed by a turn
        wy = WyomingFake()  # ASR that reports how many samples it was given
        assistant.asr, assistant.asr_exec, assistant.llm = wy.asr, wy.asr_exec, wy.llm
        server = Server(cfg, assistant)
        await server.start()
        http = await start_http(server, cfg, port=0)
        wyoming = await start_wyoming(cfg, assistant, port=0)
        target = Target("127.0.0.1", server.control_port, http.port, wyoming.port,
                        server.token, os.getpid(), cfg.server.hello_timeout_s)
        try:
            out = await run_abuse(target, _tone_utterance(), idle=20, flood_minutes=1)
            return out, list(caplog.messages)
        finally:
            await wyoming.stop()
            await http.close()
            await server.stop()

    caplog.set_level(logging.INFO, logger="hark.server.wyoming")
    out, messages = asyncio.run(go())
    probes = {p["probe"].split(" (")[0]: p for p in out["probes"]}
    print(format_table(out))
    assert len(out["probes"]) == 6
    for p in out["probes"]:  # after each: /health ok and a real turn completes
        assert p["health_after"] == 200 and p["turn_after"] == "completed", p
    assert set(probes["HTTP without token"]["numbers"].values()) == {401}
    assert set(probes["control without token"]["numbers"].values()) == {"error:auth"}
    bomb = probes["Wyoming payload bomb"]
    assert bomb["ok"], bomb  # closed with an error before the 1 GB
    assert probes["Wyoming odd rate"]["numbers"]["refused"] == 1001
    # ... and its 1001 refusals are 5 log lines and a count, not 1001 lines
    refused = [m for m in messages if "audio-chunk failed" in m or "audio-start failed" in m]
    assert len(refused) == 5, refused[:10]
    assert any("1001 refused events in all" in m for m in messages)
    for name in ("Wyoming payload bomb", "Wyoming odd rate", "Wyoming audio flood"):
        assert probes[name]["rss_growth_mb"] < RSS_LIMIT_MB, probes[name]
    idle = probes["20 idle control connections"]["numbers"]
    assert idle["closed"] == 20 and idle["turn"] == "completed"
    assert idle["handshake_timeout_s"] == 1.0
