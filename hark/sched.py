"""Scheduling settings for the threads that do hark's work: real-time class, CPU
affinity and memory locking, each applied where the OS permits and each reporting
plainly whether it took effect and, if not, why and how to fix it.

Linux schedules threads, not processes: ``sched_setscheduler(0, ...)`` and
``sched_setaffinity(0, ...)`` called on a stage's own thread change that thread only
(threads it creates afterwards, such as llama.cpp's or onnxruntime's worker pools,
inherit the setting). So the server calls :func:`apply_stage_sched` at the start of each
stage thread, e.g. as ``StageExecutor(name, on_start=lambda: apply_stage_sched(name, cfg))``.

Policy: audio-path stages (capture, VAD, wake word, transport, the event loop) get
``SCHED_FIFO`` at ``sched.rt_priority``. Inference stages (ASR, grammar, LLM, TTS) stay
at normal priority unless ``sched.realtime_inference`` is set; then they get
``SCHED_RR`` one step lower, so audio always pre-empts inference while inference threads
of equal priority share the CPU in time slices. It is off by default because those
slices are 100 ms: on 2 cores with 4 satellites, commands waited behind a question's LLM
slices (``hark bench load``: command p95 1.76 s with real-time inference, 0.69 s without).
Memory locking (``mlockall``) is process-wide and applied once.

Wiring: the event loop thread calls :func:`apply_loop_sched` (real-time inference threads
would otherwise starve it), each stage executor is created with
``on_start=stage_initializer(name, cfg, results)``, and ``results`` goes to the server's
``sched_results`` so ``/api/state`` shows what took effect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import resource
import sys
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("hark.sched")

AUDIO_STAGES = frozenset({"audio", "capture", "playback", "vad", "wake", "transport",
                          "rtp", "loop", "server"})
INFERENCE_STAGES = frozenset({"asr", "grammar", "llm", "tts", "nlu", "intent"})

MCL_CURRENT = 1
MCL_FUTURE = 2

_mlock_lock = threading.Lock()
_mlock_result: SchedResult | None = None


@dataclass(frozen=True)
class SchedResult:
    """What one scheduling setting did. ``ok`` is True when it took effect;
    ``skipped`` when the config did not ask for it; otherwise ``detail`` says why not and
    ``fix`` how to permit it."""

    setting: str  # "realtime" | "affinity" | "mlock"
    stage: str
    ok: bool
    detail: str
    fix: str | None = None
    skipped: bool = False

    @property
    def status(self) -> str:
        return "skipped" if self.skipped else ("ok" if self.ok else "not applied")

    def __str__(self) -> str:
        text = f"{self.setting} [{self.stage}]: {self.status}: {self.detail}"
        return text + (f" (fix: {self.fix})" if self.fix else "")

    def as_dict(self) -> dict[str, Any]:
        return {"setting": self.setting, "stage": self.stage, "status": self.status,
                "ok": self.ok, "detail": self.detail, "fix": self.fix}


def _is_linux() -> bool:
    return sys.platform.startswith("linux")


def _why(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "error")
    return f"{name}: {exc.strerror or exc}"


_RT_FIX = ("run as root, or grant the capability: 'setcap cap_sys_nice+ep' on the python "
           "binary, LimitRTPRIO=99 in the systemd unit, '--cap-add SYS_NICE "
           "--ulimit rtprio=99' for docker, or an '@audio - rtprio 95' line in "
           "/etc/security/limits.conf")


def policy_for(stage: str, priority: int) -> tuple[int, str, int]:
    """(policy constant, policy name, priority) for a stage under the policy above."""
    if stage in INFERENCE_STAGES:
        return os.SCHED_RR, "SCHED_RR", max(1, priority - 1)
    return os.SCHED_FIFO, "SCHED_FIFO", priority


def set_realtime(stage: str, priority: int, tid: int = 0) -> SchedResult:
    """Put thread ``tid`` (0 = the calling thread) in the real-time class chosen for
    ``stage`` by :func:`policy_for`."""
    if not _is_linux() or not hasattr(os, "sched_setscheduler"):
        return SchedResult("realtime", stage, False, f"not supported on {sys.platform}")
    policy, name, prio = policy_for(stage, priority)
    lo, hi = os.sched_get_priority_min(policy), os.sched_get_priority_max(policy)
    if not lo <= prio <= hi:
        return SchedResult("realtime", stage, False,
                           f"priority {prio} outside {name}'s range {lo}..{hi}",
                           fix=f"set sched.rt_priority between {lo + 1} and {hi}")
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(prio))
    except OSError as exc:
        soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
        return SchedResult("realtime", stage, False,
                           f"{name} priority {prio} refused ({_why(exc)}; RLIMIT_RTPRIO={soft})",
                           fix=_RT_FIX)
    got = os.sched_getscheduler(tid)
    got_prio = os.sched_getparam(tid).sched_priority
    if got != policy or got_prio != prio:
        return SchedResult("realtime", stage, False,
                           f"asked for {name} {prio}, kernel reports policy {got} "
                           f"priority {got_prio}")
    return SchedResult("realtime", stage, True, f"{name} priority {prio}")


def set_idle(stage: str, tid: int = 0) -> SchedResult:
    """Put thread ``tid`` (0 = the calling thread) in ``SCHED_IDLE``: it runs only when
    no ordinary or real-time thread wants the CPU. Threads it creates afterwards inherit
    the class (so do the worker threads of an engine constructed on it)."""
    if not _is_linux() or not hasattr(os, "SCHED_IDLE"):
        return SchedResult("idle", stage, False, f"not supported on {sys.platform}")
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:
        return SchedResult("idle", stage, False, f"SCHED_IDLE refused ({_why(exc)})")
    return SchedResult("idle", stage, True, "SCHED_IDLE")


def set_normal(tid: int = 0) -> None:
    """Return a thread to the ordinary time-sharing class (used by tests and shutdown)."""
    if _is_linux():
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))


def set_affinity(stage: str, cores: list[int], tid: int = 0) -> SchedResult:
    """Pin thread ``tid`` (0 = the calling thread) to ``cores``."""
    if not hasattr(os, "sched_setaffinity"):
        return SchedResult("affinity", stage, False, f"not supported on {sys.platform}")
    wanted = set(cores)
    available = os.sched_getaffinity(0) | os.sched_getaffinity(tid)
    n = os.cpu_count() or 0
    bad = sorted(c for c in wanted if not isinstance(c, int) or c < 0 or c >= n)
    if not wanted or bad:
        return SchedResult("affinity", stage, False,
                           f"cores {sorted(wanted) if not bad else bad} invalid on a machine "
                           f"with cores 0..{n - 1}",
                           fix=f"set sched.pin_cores.{stage} to a non-empty list of cores "
                               f"from 0 to {n - 1}")
    try:
        os.sched_setaffinity(tid, wanted)
    except OSError as exc:
        return SchedResult("affinity", stage, False,
                           f"cores {sorted(wanted)} refused ({_why(exc)}; this process may "
                           f"use {sorted(available)})",
                           fix="pin only to cores this process may use (see 'taskset -p "
                               "$$', or the container's --cpuset-cpus)")
    got = os.sched_getaffinity(tid)
    if got != wanted:
        return SchedResult("affinity", stage, False,
                           f"asked for cores {sorted(wanted)}, kernel reports {sorted(got)}")
    return SchedResult("affinity", stage, True, f"pinned to cores {sorted(wanted)}")


def locked_kib() -> int | None:
    """VmLck of this process in KiB (Linux), None where unknown."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmLck:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def lock_memory(stage: str = "process") -> SchedResult:
    """``mlockall(MCL_CURRENT | MCL_FUTURE)``: keep model weights and buffers in RAM so
    a turn never waits on a page fault. Process-wide; applied once, later calls return
    the first result."""
    global _mlock_result
    with _mlock_lock:
        if _mlock_result is not None:
            return _mlock_result
        _mlock_result = _lock_memory(stage)
        return _mlock_result


def _lock_memory(stage: str) -> SchedResult:
    if not _is_linux():
        return SchedResult("mlock", stage, False, f"not supported on {sys.platform}")
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE) != 0:
        err = ctypes.get_errno()
        soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        limit = "unlimited" if soft == resource.RLIM_INFINITY else f"{soft // 1024} KiB"
        return SchedResult("mlock", stage, False,
                           f"mlockall refused ({errno.errorcode.get(err, err)}: "
                           f"{os.strerror(err)}; RLIMIT_MEMLOCK={limit})",
                           fix="raise the limit: LimitMEMLOCK=infinity in the systemd "
                               "unit, '--ulimit memlock=-1 --cap-add IPC_LOCK' for docker, "
                               "or a 'memlock unlimited' line in /etc/security/limits.conf")
    return SchedResult("mlock", stage, True, f"all memory locked ({locked_kib()} KiB now)")


def apply_stage_sched(stage: str, cfg: Any) -> list[SchedResult]:
    """Apply ``cfg.sched`` to the calling thread for ``stage``; logs and returns one
    :class:`SchedResult` per setting. Never raises: a setting the OS refuses is reported,
    and the stage runs on without it."""
    sc = cfg.sched
    results: list[SchedResult] = []
    try:
        if sc.realtime and stage in INFERENCE_STAGES and not getattr(
                sc, "realtime_inference", True):
            results.append(SchedResult("realtime", stage, False,
                                       "sched.realtime_inference is false: normal priority",
                                       skipped=True))
        elif sc.realtime:
            results.append(set_realtime(stage, sc.rt_priority))
        else:
            results.append(SchedResult("realtime", stage, False,
                                       "sched.realtime is false", skipped=True))
        cores = (sc.pin_cores or {}).get(stage)
        if cores:
            results.append(set_affinity(stage, list(cores)))
        else:
            results.append(SchedResult("affinity", stage, False,
                                       f"no sched.pin_cores.{stage}", skipped=True))
        if sc.mlock:
            results.append(lock_memory(stage))
        else:
            results.append(SchedResult("mlock", stage, False, "sched.mlock is false",
                                       skipped=True))
    except Exception as exc:  # noqa: BLE001 - scheduling must never stop a stage
        results.append(SchedResult("sched", stage, False, f"unexpected error: {exc!r}"))
    for r in results:
        if r.skipped:
            log.debug("%s", r)
        elif r.ok:
            log.info("%s", r)
        else:
            log.warning("%s", r)
    return results


def apply_loop_sched(cfg: Any) -> list[SchedResult]:
    """Apply the settings to the calling thread as the ``loop`` stage: call it on the
    event loop's thread at the start of ``hark serve`` / ``hark satellite``. The event
    loop carries every satellite's audio, so when inference threads run real-time it must
    too (at the audio priority, above them), or SCHED_RR inference would starve it."""
    return apply_stage_sched("loop", cfg)


def stage_initializer(stage: str, cfg: Any, sink: list[SchedResult] | None = None):
    """An ``on_start`` for :class:`hark.aio.StageExecutor`: applies the settings on the
    stage's thread and (optionally) appends the results to ``sink`` for /api/state."""

    def init() -> None:
        results = apply_stage_sched(stage, cfg)
        if sink is not None:
            sink.extend(results)

    return init


def freeze_startup_objects() -> int:
    """Collect, then move every object alive now (the loaded models' Python side, the
    intent templates, the example sentences...) to the collector's permanent generation
    (``gc.freeze``): a later full collection no longer walks them. Without it one
    typed command in ~250 waited ~20 ms for such a collection (``hark eval intents``,
    1992 commands: max 23 ms; with it, 7 ms). Call once, after loading and warm-up.
    Returns how many objects were frozen."""
    import gc

    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()

