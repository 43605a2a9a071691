"""hark.sched against the real kernel: every reported result must match what
os.sched_getscheduler / os.sched_getaffinity / /proc/self/status say afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading

import pytest

from hark import sched
from hark.aio import StageExecutor
from hark.config import Config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def _in_thread(fn):
    """Run fn on a fresh thread, return (result, native thread id, policy, prio, affinity)
    read back from inside the thread before it ends."""
    out = {}

    def body():
        try:
            out["result"] = fn()
            out["policy"] = os.sched_getscheduler(0)
            out["prio"] = os.sched_getparam(0).sched_priority
            out["affinity"] = os.sched_getaffinity(0)
        finally:
            sched.set_normal()

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return out


def _can_rt() -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError:
        return False
    sched.set_normal()
    return True


def test_realtime_result_matches_kernel_state():
    out = _in_thread(lambda: sched.set_realtime("vad", 10))
    r = out["result"]
    if r.ok:
        assert out["policy"] == os.SCHED_FIFO and out["prio"] == 10
        assert "SCHED_FIFO priority 10" in r.detail
    else:
        assert out["policy"] == os.SCHED_OTHER
        assert r.fix
    assert r.ok == _can_rt()
    # the main thread is untouched: scheduling is per thread
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_inference_stages_get_round_robin_below_audio():
    if not _can_rt():
        pytest.skip("no permission for real-time scheduling here")
    out = _in_thread(lambda: sched.set_realtime("llm", 10))
    assert out["result"].ok
    assert out["policy"] == os.SCHED_RR and out["prio"] == 9


def test_inference_stays_at_normal_priority_unless_asked():
    cfg = Config()
    assert cfg.sched.realtime and not cfg.sched.realtime_inference  # the defaults
    out = _in_thread(lambda: sched.apply_stage_sched("asr", cfg))
    [rt] = [r for r in out["result"] if r.setting == "realtime"]
    assert rt.skipped and "realtime_inference" in rt.detail
    assert out["policy"] == os.SCHED_OTHER  # the kernel agrees
    if _can_rt():
        cfg.sched.realtime_inference = True
        out = _in_thread(lambda: sched.apply_stage_sched("asr", cfg))
        assert out["policy"] == os.SCHED_RR
        out = _in_thread(lambda: sched.apply_stage_sched("vad", Config()))
        assert out["policy"] == os.SCHED_FIFO  # the audio path is real-time either way


def test_bad_priority_is_reported_not_raised():
    r = sched.set_realtime("vad", 1000)
    assert not r.ok and "outside" in r.detail and "sched.rt_priority" in r.fix
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_affinity_matches_kernel_state():
    core = sorted(os.sched_getaffinity(0))[-1]
    out = _in_thread(lambda: sched.set_affinity("asr", [core]))
    assert out["result"].ok, out["result"]
    assert out["affinity"] == {core}
    assert len(os.sched_getaffinity(0)) >= 1  # main thread keeps its own mask


def test_invalid_core_is_reported():
    n = os.cpu_count()
    out = _in_thread(lambda: sched.set_affinity("asr", [n + 5]))
    r = out["result"]
    assert not r.ok and "invalid" in r.detail and "sched.pin_cores.asr" in r.fix
    assert out["affinity"] == os.sched_getaffinity(0)


_CHILD = r"""
import json, os, resource, sys
from hark import sched
drop = sys.argv[1] == "drop"
if drop:
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (64 * 1024, 64 * 1024))
    resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
    os.setgid(65534); os.setuid(65534)
rt = sched.set_realtime("vad", 10)
m = sched.lock_memory()
print(json.dumps({"rt": rt.as_dict(), "mlock": m.as_dict(),
                  "policy": os.sched_getscheduler(0), "vmlck": sched.locked_kib()}))
"""


def _child(mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_mlock_in_a_fresh_process_matches_vmlck():
    res = _child("keep")
    if res["mlock"]["ok"]:
        assert res["vmlck"] > 1000  # the interpreter's pages are now locked
    else:
        assert res["vmlck"] == 0 and res["mlock"]["fix"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_unprivileged_process_reports_why_and_the_fix():
    res = _child("drop")
    assert res["rt"]["ok"] is False and "EPERM" in res["rt"]["detail"]
    assert "LimitRTPRIO" in res["rt"]["fix"]
    assert res["policy"] == os.SCHED_OTHER
    assert res["mlock"]["ok"] is False and "RLIMIT_MEMLOCK" in res["mlock"]["detail"]
    assert "LimitMEMLOCK" in res["mlock"]["fix"]
    assert res["vmlck"] == 0


def test_apply_stage_sched_on_a_stage_executor_thread():
    cfg = Config()
    core = sorted(os.sched_getaffinity(0))[0]
    cfg.sched.pin_cores = {"tts": [core]}
    cfg.sched.mlock = False
    sink: list[sched.SchedResult] = []
    ex = StageExecutor("tts", on_start=sched.stage_initializer("tts", cfg, sink))

    def probe():
        return (os.sched_getscheduler(0), os.sched_getparam(0).sched_priority,
                os.sched_getaffinity(0))

    try:
        policy, prio, aff = asyncio.run(ex.run(probe))
        asyncio.run(ex.run(sched.set_normal))
    finally:
        ex.shutdown()
    by = {r.setting: r for r in sink}
    assert set(by) == {"realtime", "affinity", "mlock"}
    assert by["mlock"].skipped
    assert by["affinity"].ok and aff == {core}
    if by["realtime"].ok:
        assert policy == os.SCHED_RR and prio == cfg.sched.rt_priority - 1
    else:
        assert policy == os.SCHED_OTHER
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_realtime_off_is_skipped():
    cfg = Config()
    cfg.sched.realtime = False
    out = _in_thread(lambda: sched.apply_stage_sched("vad", cfg))
    assert [r.status for r in out["result"]] == ["skipped", "skipped", "skipped"]
    assert out["policy"] == os.SCHED_OTHER


def test_startup_objects_are_frozen_out_of_full_collections():
    import gc

    from hark.sched import freeze_startup_objects

    class Node:
        pass

    kept = Node()
    try:
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > 0
        assert not any(o is kept for o in gc.get_objects())  # no generation holds it now
    finally:
        gc.unfreeze()
    assert any(o is kept for o in gc.get_objects())
