"""The LLM in a supervised child process (hark.llm.worker) on the real SmolLM2-135M
model: tokens stream over the pipe, prefix reuse still works, closing the stream cancels
generation in the child, a child killed with SIGKILL mid-answer costs one answer (an
LlmError / the spoken apology) and is restarted, a hung child is killed and restarted,
crash loops back off, and nothing is left behind on close. Then the same crash through
the server with real satellites on loopback."""

from __future__ import annotations

import asyncio
import copy
import functools
import multiprocessing
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hark.config import Config
from hark.errors import ConfigError, ModelError
from hark.llm.base import ChatMessage, LlmError
from hark.llm.llama import engine_for_profile
from hark.llm.service import APOLOGY, LlmService, RetryingEngine, load_llm
from hark.llm.worker import ProcessEngine, backoff_s, worker_for_profile

pytestmark = pytest.mark.timeout(240)

# fixtures that load a model: the tiny LLM in a worker process; an Assistant
MODEL_FIXTURES = frozenset({"worker", "process_assistant"})


@pytest.fixture(scope="module")
def tiny_cfg() -> Config:
    c = Config()
    c.llm.profile = "tiny"
    c.llm.max_tokens = 16
    c.llm.n_threads = 1  # a busy 2-core box: one llama.cpp thread (see test_llm.py)
    c.llm.n_threads_batch = 1
    c.llm.isolation = "process"
    c.sched.realtime = False  # no real-time class for the worker on a shared test box
    return c


@pytest.fixture(scope="module")
def worker(tiny_cfg: Config) -> ProcessEngine:
    e = worker_for_profile(tiny_cfg, "tiny")
    e.backoff_base_s = 0.1  # quick retries for the crash-loop test
    e.warm_up(tiny_cfg.llm.system_prompt)
    yield e
    e.close()


def msgs(cfg: Config, text: str) -> list[ChatMessage]:
    return [ChatMessage("system", cfg.llm.system_prompt), ChatMessage("user", text)]


def _proc_gone(pid: int) -> bool:
    """No process and no zombie with this id."""
    return not Path(f"/proc/{pid}").exists()


def test_backoff_grows_and_is_capped() -> None:
    delays = [backoff_s(n, 0.5, 30.0) for n in range(1, 10)]
    assert delays[0] == 0.0  # the first restart is immediate
    assert delays[1:4] == [0.5, 1.0, 2.0]
    assert max(delays) == 30.0 and delays == sorted(delays)


def test_tokens_stream_from_the_child(worker: ProcessEngine, tiny_cfg: Config) -> None:
    assert worker.pid not in (None, os.getpid()) and worker.ready
    assert worker.name == "tiny"
    pieces = list(worker.stream(msgs(tiny_cfg, "Name three colors."), 16))
    assert len(pieces) > 1 and "".join(pieces).strip()
    stats = worker.last_stats
    assert stats.generated_tokens >= len(pieces) - 1 and stats.prompt_tokens > 0
    assert worker.last_first_token_s is not None
    # the tokenizer and the chat rendering are the model's own, as in-process
    local = engine_for_profile(tiny_cfg, "tiny")
    try:
        assert worker.count_tokens("Turn on the kitchen light.") == \
            local.count_tokens("Turn on the kitchen light.")
        assert worker.render(msgs(tiny_cfg, "Hi")) == local.render(msgs(tiny_cfg, "Hi"))
    finally:
        local.close()


def test_prefix_reuse_counters_through_the_proxy(worker: ProcessEngine,
                                                 tiny_cfg: Config) -> None:
    worker.forget_all()  # fully cold: nothing cached, no saved prefix
    list(worker.stream(msgs(tiny_cfg, "Name a fruit."), 8))
    cold = worker.last_stats
    assert cold.evaluated_tokens == cold.prompt_tokens
    list(worker.stream(msgs(tiny_cfg, "Name a vegetable."), 8))
    warm = worker.last_stats
    assert warm.reused_tokens >= len(tiny_cfg.llm.system_prompt.split())
    assert warm.evaluated_tokens < warm.prompt_tokens / 3
    assert worker.total_evaluated_tokens >= cold.evaluated_tokens + warm.evaluated_tokens
    # prefill reads a partial question ahead; the final call then reads only the rest
    worker.warm_up(tiny_cfg.llm.system_prompt)
    worker.forget()
    assert worker.prefill(msgs(tiny_cfg, "What is the tallest mountain in")) > 0
    list(worker.stream(msgs(tiny_cfg, "What is the tallest mountain in Europe?"), 8))
    assert worker.last_stats.reused_tokens > len(tiny_cfg.llm.system_prompt.split())


def test_closing_the_stream_cancels_generation_in_the_child(worker: ProcessEngine,
                                                            tiny_cfg: Config) -> None:
    # a model that never stops by itself: only max_tokens (200) or a cancel ends it
    stream = worker.stream(msgs(tiny_cfg, "Tell me a long story."), 200, ignore_eos=True)
    first = next(stream)
    assert first
    stream.close()
    stats = worker.last_stats
    assert not stats.stopped_by_limit and stats.generated_tokens < 200
    # the pipe is clean: the next call gets its own reply, whole
    pieces = list(worker.stream(msgs(tiny_cfg, "Name a planet."), 8))
    assert "".join(pieces).strip() and worker.last_stats.prompt_tokens > 0


def _no_tokens_while_held(engine, cfg: Config) -> None:
    """Pull a never-ending answer on a thread; hold it after the first token: nothing
    more comes (but a token already on its way) until it is let go, then all of it."""
    stream = engine.stream(msgs(cfg, "Tell me a long story."), 24, ignore_eos=True)
    got: list[str] = [next(stream)]
    puller = threading.Thread(target=lambda: got.extend(stream), daemon=True)
    engine.hold(True)
    puller.start()
    time.sleep(0.3)
    while_held = len(got)
    time.sleep(0.3)  # both looks within the hold (it ends by itself after HOLD_MAX_S)
    assert len(got) == while_held <= 3
    engine.hold(False)
    puller.join(30)
    assert not puller.is_alive() and len(got) > while_held
    assert engine.last_stats.generated_tokens >= 23  # the whole answer, nothing lost


def test_hold_pauses_generation_in_the_child(worker: ProcessEngine, tiny_cfg: Config) -> None:
    _no_tokens_while_held(worker, tiny_cfg)
    # the pipe is clean for the next call; a hold with nothing being written is harmless
    worker.hold(True)
    worker.hold(False)
    assert "".join(worker.stream(msgs(tiny_cfg, "Name a planet."), 8)).strip()


@pytest.mark.models
def test_hold_pauses_generation_in_this_process(tiny_cfg: Config) -> None:
    local = engine_for_profile(tiny_cfg, "tiny")
    try:
        _no_tokens_while_held(local, tiny_cfg)
    finally:
        local.close()


def test_sigkill_mid_generation_raises_restarts_and_recovers(worker: ProcessEngine,
                                                             tiny_cfg: Config) -> None:
    old_pid = worker.pid
    restarts = worker.restarts
    stream = worker.stream(msgs(tiny_cfg, "Tell me a long story."), 200, ignore_eos=True)
    assert next(stream)
    os.kill(old_pid, signal.SIGKILL)
    with pytest.raises(LlmError, match="died mid-answer.*SIGKILL"):
        for _ in stream:
            pass
    # while the new child loads, calls fail at once instead of hanging
    with pytest.raises(LlmError, match="LLM worker restarting"):
        worker.count_tokens("hello")
    assert worker.wait_ready(90)
    assert worker.pid != old_pid and worker.restarts == restarts + 1
    assert worker.last_crash == "killed by SIGKILL"
    assert _proc_gone(old_pid)  # reaped, not a zombie
    pieces = list(worker.stream(msgs(tiny_cfg, "Name a planet."), 8))
    assert "".join(pieces).strip()
    # the restarted child was warmed with the same system prompt
    assert worker.last_stats.reused_tokens >= len(tiny_cfg.llm.system_prompt.split())


def test_service_apologises_when_the_child_is_killed(worker: ProcessEngine,
                                                     tiny_cfg: Config) -> None:
    cfg = copy.deepcopy(tiny_cfg)
    cfg.llm.max_tokens = 80
    svc = LlmService(cfg, worker)
    old_pid = worker.pid
    out = []
    for piece in svc.reply_stream("Tell me a long story about a dragon and a knight.",
                                  cacheable=False):
        if not out:
            os.kill(old_pid, signal.SIGKILL)  # mid-answer: after its first words
        out.append(piece)
    assert APOLOGY in "".join(out)
    assert svc.last_source == "error" and "died" in (svc.last_error or "")
    assert worker.wait_ready(90) and worker.pid != old_pid
    answer = svc.reply("Name a color.", cacheable=False)
    assert answer and svc.last_source == "llm"


def test_hung_child_is_killed_and_restarted(worker: ProcessEngine,
                                            tiny_cfg: Config) -> None:
    old_pid, stall = worker.pid, worker.stall_s
    worker.stall_s = 1.0
    try:
        stream = worker.stream(msgs(tiny_cfg, "Tell me a long story."), 200,
                               ignore_eos=True)
        assert next(stream)
        os.kill(old_pid, signal.SIGSTOP)  # alive, but silent
        with pytest.raises(LlmError, match="no answer"):
            for _ in stream:
                pass
    finally:
        worker.stall_s = stall
    assert worker.wait_ready(90) and worker.pid != old_pid
    assert _proc_gone(old_pid)
    assert "".join(worker.stream(msgs(tiny_cfg, "Name a fruit."), 8)).strip()


def test_crash_loop_backs_off_then_recovers(worker: ProcessEngine,
                                           tiny_cfg: Config) -> None:
    good = worker._factory
    failures = worker.start_failures
    worker._factory = functools.partial(os._exit, 3)  # every new child dies at start
    try:
        os.kill(worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while worker.start_failures < failures + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.start_failures >= failures + 2
        assert "exit code 3" in str(worker.last_start_error)
        with pytest.raises(LlmError, match="restarting.*exit code 3"):
            list(worker.stream(msgs(tiny_cfg, "Hi there"), 4))
        assert worker._failures >= 3  # each failure lengthens the next wait
    finally:
        worker._factory = good
    assert worker.wait_ready(90)
    assert "".join(worker.stream(msgs(tiny_cfg, "Name a fruit."), 8)).strip()


def test_missing_model_is_a_clear_error(tiny_cfg: Config, tmp_path: Path) -> None:
    cfg = copy.deepcopy(tiny_cfg)
    cfg.home_dir = str(tmp_path)  # no models pulled here
    before = {p.pid for p in multiprocessing.active_children()}
    with pytest.raises(ModelError, match="is not in") as info:
        worker_for_profile(cfg, "tiny")
    assert "hark models pull" in (info.value.fix or "")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all" * 10)
    bad = copy.deepcopy(tiny_cfg)
    bad.llm.profiles["tiny"] = str(junk)
    with pytest.raises(ModelError, match="not a GGUF model file"):
        worker_for_profile(bad, "tiny")
    assert {p.pid for p in multiprocessing.active_children()} <= before  # none left
    # not strict: the service starts, apologises, and keeps retrying the load
    svc = load_llm(cfg, warm=False, strict=False)
    assert isinstance(svc.engine, RetryingEngine)
    assert svc.reply("Why is the sky blue?") == APOLOGY and svc.last_source == "error"
    cfg.llm.isolation = "sideways"
    with pytest.raises(ConfigError, match="llm.isolation"):
        load_llm(cfg, warm=False)


@pytest.mark.models
def test_close_leaves_no_process_or_thread(tiny_cfg: Config) -> None:
    cfg = copy.deepcopy(tiny_cfg)
    cfg.sched.pin_cores = {"llm": [0]}  # the llm stage's scheduling, applied in the child
    svc = load_llm(cfg, warm=True)
    engine = svc.engine
    assert isinstance(engine, ProcessEngine)
    pid = engine.pid
    assert os.sched_getaffinity(pid) == {0}
    assert svc.reply("Name a color.", cacheable=False)
    engine.close()
    assert _proc_gone(pid)
    assert not engine._supervisor.is_alive()
    assert engine._supervisor not in threading.enumerate()
    assert pid not in {p.pid for p in multiprocessing.active_children()}
    with pytest.raises(LlmError, match="closed"):
        engine.count_tokens("hi")
    assert svc.reply("Why is the sky blue?", cacheable=False) == APOLOGY


# --- through the server, with real satellites on loopback --------------------------------


class TwoQuestions:
    """A microphone (played at real time) that says ``first``, stays silent until
    ``gate`` is set, then says ``second``; then silence until :attr:`done`."""

    def __init__(self, first: np.ndarray, second: np.ndarray, frame: int):
        self.parts = [first, second]
        self.frame = frame
        self.gate = threading.Event()
        self.ended = threading.Event()
        self.done = threading.Event()

    def __iter__(self):
        n, t0 = self.frame, time.monotonic()
        silence = np.zeros(n, np.int16)
        sent = 0

        def paced(frame: np.ndarray) -> np.ndarray:
            nonlocal sent
            sent += 1
            delay = t0 + sent * n / 16000 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            return frame

        first, second = self.parts
        for i in range(0, len(first) - n + 1, n):
            yield paced(first[i:i + n])
        while not self.gate.is_set() and not self.done.is_set():
            yield paced(silence)  # a quiet room until the test says go
        for i in range(0, len(second) - n + 1, n):
            yield paced(second[i:i + n])
        self.ended.set()
        while not self.done.is_set():
            yield paced(silence)


def _squash(text: str) -> str:
    return re.sub(r"[^a-z]", "", text.lower())


@pytest.fixture(scope="module")
def process_assistant(tiny_cfg: Config):
    """A real Assistant whose LLM runs in a worker process (as ``hark serve`` has it)."""
    from hark.pipeline.assistant import Assistant

    cfg = copy.deepcopy(tiny_cfg)
    cfg.llm.max_tokens = 40
    a = Assistant.load(cfg)
    yield a
    a.close()
    a.llm.engine.close()


def test_server_survives_a_killed_llm_worker(process_assistant, speak, tmp_path) -> None:
    from hark.audio import write_wav
    from hark.satellite.audio import FileSource, WavSink
    from hark.satellite.satellite import FRAME, Satellite
    from hark.server.http import Observability
    from hark.server.server import Server
    from hark.server.tracelog import TraceLog

    engine = process_assistant.llm.engine
    assert isinstance(engine, ProcessEngine) and engine.wait_ready(90)
    pad = np.zeros(8000, np.int16)
    q1 = np.concatenate([pad, speak("Alexa, why is the sky blue?"), pad])
    q2 = np.concatenate([pad, speak("Alexa, why do cats purr?"), pad])
    q3 = np.concatenate([pad, speak("Alexa, who wrote Romeo and Juliet?"), pad])
    killed: list[int] = []

    def killer() -> None:  # SIGKILL the worker as soon as it is generating a reply
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if engine.active_call == "stream" and engine.pid:
                killed.append(engine.pid)
                os.kill(engine.pid, signal.SIGKILL)
                return
            time.sleep(0.002)

    def sat_cfg(server: Server, name: str) -> Config:
        c = Config()
        c.satellite.server = f"127.0.0.1:{server.control_port}"
        c.satellite.name = name
        c.sched.realtime = False
        c.wake.followup_s = 0.0  # every turn starts with the wake word
        c.wake.barge_in_speech = False
        return c

    async def go():
        scfg = Config()
        scfg.llm = process_assistant.cfg.llm
        scfg.server.control_port = 0
        scfg.server.rtp_port = 0
        server = Server(scfg, process_assistant)
        obs = Observability(scfg, trace_log=TraceLog(tmp_path / "traces.jsonl"))
        obs.attach(server)
        traces = []
        server.turn_listeners.append(traces.append)
        await server.start()
        source = TwoQuestions(q1, q2, FRAME)
        a = Satellite(sat_cfg(server, "kitchen"), source, WavSink(tmp_path / "a.wav"),
                      exit_when_done=True, realtime_thread=False)
        threading.Thread(target=killer, daemon=True).start()
        try:
            task = asyncio.create_task(a.run())
            t0 = time.monotonic()
            while (a.stats.turns_done < 1 or not traces) and time.monotonic() - t0 < 120 \
                    and not task.done():
                await asyncio.sleep(0.05)
            first = {"replies": list(a.stats.replies), "frames": a.stats.frames_played,
                     "traces": list(traces)}
            assert await asyncio.to_thread(engine.wait_ready, 90)
            source.gate.set()  # the second question, on the same connection
            await asyncio.wait_for(task, 120)
            b = Satellite(sat_cfg(server, "office"), FileSource(write_wav(
                tmp_path / "q3.wav", q3, 16000), FRAME), WavSink(tmp_path / "b.wav"),
                exit_when_done=True, realtime_thread=False)
            await asyncio.wait_for(b.run(), 120)
            metrics = obs.metrics.exposition().decode()
        finally:
            await server.stop()
        return a, b, first, traces, server.stats, metrics

    a, b, first, traces, stats, metrics = asyncio.run(go())
    # turn 1: the worker was killed mid-turn; the satellite heard the apology
    assert killed and engine.pid != killed[0] and _proc_gone(killed[0])
    assert len(first["traces"]) == 1
    t1 = first["traces"][0]
    assert t1.info.get("llm_source") == "error" and APOLOGY in t1.info["reply"]
    assert _squash(APOLOGY) in _squash(" ".join(first["replies"]))
    assert first["frames"] > 0  # ...as audio
    # the satellite stayed connected, and its next turn was answered by the new worker
    assert a.stats.connects == 1 and a.stats.turns_done == 2
    assert b.stats.turns_done == 1
    by_sat = {t.info.get("satellite"): t for t in traces[1:]}
    for t in traces[1:]:
        assert t.info.get("llm_source") == "llm", t.info
        assert t.info["reply"] and APOLOGY not in t.info["reply"]
    assert len(traces) == 3 and len(by_sat) == 2
    # the restart is counted on /metrics
    assert stats.llm_worker_restarts == 1
    assert "hark_server_llm_worker_restarts_total 1.0" in metrics
