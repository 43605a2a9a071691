"""llama.cpp in a supervised child process: a crash in the model costs one answer, not
the server.

:class:`ProcessEngine` has the methods of :class:`hark.llm.llama.LlamaCppEngine` that
the service, the pipeline and the benches call (``stream``, ``prefill``, ``warm_up``,
``count_tokens``, ``render``, ``forget``, ``forget_all``, ``last_stats``,
``total_evaluated_tokens``, ``name``, ``close``), but the model lives in a child process
started with the ``spawn`` method (a fresh interpreter: no threads or locks inherited).

- **Streaming**: the child sends each text piece over a pipe as soon as llama.cpp
  yields it; nothing is batched, so the first token reaches the caller at once.
- **Cancellation**: when the consumer stops iterating (``close()`` on the generator: a
  reply cut after two sentences, a barge-in), the proxy sends ``cancel``; the child
  checks its pipe between tokens, stops generating and answers ``end``.
- **Crashes**: if the child dies (segfault, OOM killer, ``kill -9``) before or during a
  call, the call raises :class:`LlmError` (the service speaks its apology) and the
  supervisor thread starts a new child in the background, warmed with the same system
  prompt. Until it is up, calls fail at once with "LLM worker restarting" rather than
  hang. Crashes in quick succession back off (0 s, then 0.5 s, 1 s, 2 s ... up to 30 s),
  so a model that always crashes does not spin. A child that stops answering for
  ``stall_s`` in the middle of a call is killed and restarted the same way.
- **Counting**: :attr:`ProcessEngine.restarts`, a log line per restart, and
  ``on_restart`` callbacks (the server exports ``hark_server_llm_worker_restarts_total``).

Chosen with ``llm.isolation`` (``"process"``, ``"thread"``, or ``"auto"``: process for
``hark serve``, thread elsewhere); built by :func:`hark.llm.service.load_llm`.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from hark.config import Config
from hark.errors import ConfigError, HarkError, ModelError
from hark.llm.base import HOLD_MAX_S, ChatMessage, LlmEngine, LlmError
from hark.llm.llama import GenerationStats

log = logging.getLogger(__name__)

# engine methods a caller may run in the child through :meth:`ProcessEngine._call`
_REMOTE_METHODS = frozenset({"count_tokens", "render", "prefill", "forget", "forget_all",
                             "keep_prefix_only", "warm_up"})
_ERRORS: dict[str, type[HarkError]] = {"ModelError": ModelError, "LlmError": LlmError,
                                       "ConfigError": ConfigError}


def backoff_s(failures: int, base_s: float = 0.5, max_s: float = 30.0) -> float:
    """Delay before restart attempt number ``failures`` of a crash streak: the first
    restart is immediate, then ``base_s`` doubling up to ``max_s``."""
    if failures <= 1:
        return 0.0
    return min(max_s, base_s * 2 ** (failures - 2))


# --- the child ---------------------------------------------------------------------------


def _error_payload(exc: BaseException) -> tuple[str, str, str | None]:
    """An exception as plain data for the pipe: (class name, message, fix)."""
    fix = getattr(exc, "fix", None)
    message = str(exc)
    if fix:
        message = message.split("\n  fix: ", 1)[0]
    return type(exc).__name__, message, fix


def _rebuild_error(payload: tuple[str, str, str | None]) -> HarkError:
    name, message, fix = payload
    cls = _ERRORS.get(name)
    if cls is None:
        return LlmError(f"LLM worker: {name}: {message}", fix=fix)
    return cls(message, fix=fix)


def _worker_main(conn: Connection, factory: Callable[[], Any],
                 on_start: Callable[[], Any] | None, warm: tuple[bool, str | None],
                 log_level: int) -> None:
    """Entry point of the child: run ``on_start`` (scheduling), load the model, say
    ``ready``, serve requests until ``close`` or until the parent goes away."""
    t0 = time.monotonic()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    logging.basicConfig(level=log_level, format="%(asctime)s llm-worker[%(process)d] "
                        "%(levelname)s %(name)s: %(message)s")
    try:
        if on_start is not None:
            on_start()
        engine = factory()
        if warm[0]:
            engine.warm_up(warm[1])
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("failed", 0, _error_payload(exc)))
        conn.close()
        return
    conn.send(("ready", 0, {"name": engine.name, "load_s": getattr(engine, "load_s", 0.0),
                            "pid": os.getpid(), "boot_s": time.monotonic() - t0}))
    try:
        _serve(conn, engine)
    finally:
        engine.close()
        conn.close()


def _serve(conn: Connection, engine: Any) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        kind, call_id = msg[0], msg[1]
        if kind == "close":
            return
        if kind == "stream":
            if not _serve_stream(conn, engine, call_id, *msg[2:]):
                return
        elif kind == "call":
            method, args = msg[2], msg[3]
            try:
                if method not in _REMOTE_METHODS:
                    raise LlmError(f"LLM worker: no method {method!r}")
                result = ("ok", call_id, getattr(engine, method)(*args))
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                result = ("err", call_id, _error_payload(exc))
            try:
                conn.send(result)
            except OSError:
                return  # the parent is gone
        # a "cancel" for a call that already ended: nothing to do


def _serve_stream(conn: Connection, engine: Any, call_id: int,
                  messages: list[tuple[str, str]], max_tokens: int,
                  ignore_eos: bool) -> bool:
    """Send each piece as it comes; stop early on ``cancel``. False when the child
    should exit (``close``, or the parent is gone)."""
    gen = engine.stream([ChatMessage(r, c) for r, c in messages], max_tokens, ignore_eos)
    keep_serving = True
    cancelled = False
    try:
        try:
            for piece in gen:
                conn.send(("tok", call_id, piece))
                # between tokens: has the caller stopped listening, or asked to hold?
                kind = conn.recv()[0] if conn.poll() else None
                if kind == "hold":  # wait for "go" (or a cancel), HOLD_MAX_S at most
                    kind = conn.recv()[0] if conn.poll(HOLD_MAX_S) else None
                if kind in ("cancel", "close"):
                    cancelled = True
                    keep_serving = kind == "cancel"
                    break
        except (EOFError, OSError):
            return False  # the parent is gone
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            gen.close()
            conn.send(("err", call_id, _error_payload(exc)))
            return True
        finally:
            gen.close()
        conn.send(("end", call_id, dataclasses.asdict(engine.last_stats),
                   engine.total_evaluated_tokens, cancelled))
    except (EOFError, OSError):
        return False
    return keep_serving


# --- the parent --------------------------------------------------------------------------

_LIVE: weakref.WeakSet[ProcessEngine] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """At interpreter exit, stop every worker before multiprocessing's own exit handler
    terminates the children (registered later, so it runs first): otherwise a
    supervisor would see its child die and start another one during shutdown."""
    for engine in list(_LIVE):
        engine.close()


@dataclass
class _Child:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    started: float
    name: str
    load_s: float

    @property
    def pid(self) -> int:
        return int(self.process.pid or 0)


def _how_it_died(process: multiprocessing.process.BaseProcess, wait_s: float = 1.0) -> str:
    # The exit status may be a moment late, or being collected by the supervisor thread
    # (then this thread's waitpid sees no child and exitcode stays None until that
    # thread has stored it): look again for up to ``wait_s``.
    code = process.exitcode
    deadline = time.monotonic() + wait_s
    while code is None and time.monotonic() < deadline:
        time.sleep(0.02)
        code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ProcessEngine(LlmEngine):
    """A :class:`~hark.llm.llama.LlamaCppEngine` (built by ``factory`` in a child
    process) behind a pipe, restarted by a supervisor thread when it dies.

    ``factory`` must be picklable (a module-level function or a ``functools.partial``
    of one), e.g. ``functools.partial(engine_for_profile, cfg, "fast")``: use
    :func:`worker_for_profile`. The constructor returns once the child has loaded the
    model; a model that cannot be loaded raises :class:`ModelError` as the in-process
    engine would. Calls are serialised, like the in-process engine's. ``on_start``
    (picklable too) runs first in every child, e.g. the ``llm`` stage's scheduling
    settings (:func:`hark.sched.apply_stage_sched`)."""

    can_prefill = True

    def __init__(self, factory: Callable[[], Any], *, name: str = "llm",
                 on_start: Callable[[], Any] | None = None,
                 start_timeout_s: float = 120.0, stall_s: float = 60.0,
                 backoff_base_s: float = 0.5, backoff_max_s: float = 30.0,
                 stable_s: float = 60.0):
        self.name = name
        self.start_timeout_s = start_timeout_s
        self.stall_s = stall_s  # a call with no word from the child this long: kill it
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.stable_s = stable_s  # a child up this long before dying ends a crash streak
        self.restarts = 0
        self.start_failures = 0  # restart attempts whose child never became ready
        self.last_crash: str | None = None  # how the last child died
        self.last_start_error: HarkError | None = None
        self.on_restart: list[Callable[[int], Any]] = []  # called with the restart count
        self.last_stats = GenerationStats()
        self.last_first_token_s: float | None = None  # as the caller saw it (incl. the pipe)
        self.total_evaluated_tokens = 0
        self.load_s = 0.0
        self.active_call: str | None = None  # "stream", "prefill", ... while one runs
        self._factory = factory
        self._on_start = on_start
        # (warm?, system prompt): what every restarted child does before taking calls
        self._warm: tuple[bool, str | None] = (False, None)
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()  # one call at a time, like LlamaCppEngine
        self._send_lock = threading.Lock()
        self._streaming: int | None = None  # the call id of the answer being written
        self._state = threading.Lock()  # guards _child / _ready
        self._ids = itertools.count(1)
        self._closing = threading.Event()
        self._failures = 0  # crashes in the current streak
        self._ready = False
        self._child: _Child | None = self._spawn()
        self._ready = True
        self.name = self._child.name
        self.load_s = self._child.load_s
        self._supervisor = threading.Thread(target=self._supervise, daemon=True,
                                            name=f"hark-llm-supervisor-{self.name}")
        self._supervisor.start()
        _LIVE.add(self)

    # --- status -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """A child is up and answering (False while it restarts)."""
        return self._ready and not self._closing.is_set()

    @property
    def pid(self) -> int | None:
        """The current child's process id (None while none is up)."""
        child = self._child
        return child.pid if child is not None else None

    def wait_ready(self, timeout_s: float) -> bool:
        """Block until a child is up (after a restart); False on timeout or close."""
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            if self._closing.is_set() or time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    # --- the engine API -----------------------------------------------------------------

    def stream(self, messages: list[ChatMessage], max_tokens: int,
               ignore_eos: bool = False) -> Iterator[str]:
        """Yield text pieces as the child's model writes them. Closing the generator
        early cancels the generation in the child."""
        with self._lock:
            child = self._current()
            call_id = next(self._ids)
            t0 = time.monotonic()
            self.last_first_token_s = None
            self.active_call = "stream"
            finished = False
            try:
                self._send(child, ("stream", call_id, [(m.role, m.content) for m in messages],
                                   max_tokens, ignore_eos))
                self._streaming = call_id
                while True:
                    kind, _, *rest = self._recv(child, call_id)
                    if kind == "tok":
                        if self.last_first_token_s is None:
                            self.last_first_token_s = time.monotonic() - t0
                        yield rest[0]
                    elif kind == "end":
                        finished = True
                        self._took_stats(rest[0], rest[1])
                        return
                    else:  # "err"
                        finished = True
                        raise _rebuild_error(rest[0])
            finally:
                self._streaming = None
                if not finished:
                    self._cancel(child, call_id)
                self.active_call = None

    def hold(self, on: bool) -> None:
        """Pause the child's generation in progress between two tokens (HOLD_MAX_S at
        most), or let it go on. Nothing to do when no answer is being written."""
        child, call_id = self._child, self._streaming
        if child is None or call_id is None:
            return
        try:
            self._send(child, ("hold" if on else "go", call_id))
        except LlmError as exc:  # the child died: the stream reports it
            log.debug("LLM worker hold: %s", exc)

    def prefill(self, messages: list[ChatMessage]) -> int:
        return int(self._call("prefill", [ChatMessage(m.role, m.content) for m in messages]))

    def warm_up(self, system_prompt: str | None = None) -> None:
        """Evaluate and save the system prompt in the child; every restarted child is
        warmed with the same prompt before it takes calls."""
        self._warm = (True, system_prompt if system_prompt is not None else self._warm[1])
        self._call("warm_up", system_prompt)

    def count_tokens(self, text: str) -> int:
        return int(self._call("count_tokens", text))

    def render(self, messages: list[ChatMessage]) -> list[int]:
        return list(self._call("render", messages))

    def forget(self) -> None:
        self._call("forget")

    def forget_all(self) -> None:
        self._call("forget_all")

    def keep_prefix_only(self) -> None:
        self._call("keep_prefix_only")

    def close(self) -> None:
        """Stop the child (politely, then by force) and the supervisor."""
        if self._closing.is_set():
            return
        self._closing.set()
        with self._state:
            child, self._child, self._ready = self._child, None, False
        if child is not None:
            self._stop_child(child)
        if self._supervisor is not threading.current_thread():
            self._supervisor.join(10)

    # --- internals: calls ---------------------------------------------------------------

    def _current(self) -> _Child:
        """The live child, or LlmError at once while there is none."""
        with self._state:
            child, ready = self._child, self._ready
        if self._closing.is_set():
            raise LlmError("the LLM worker is closed")
        if child is None or not ready:
            why = f" (last start failed: {self.last_start_error})" \
                if self.last_start_error is not None else ""
            raise LlmError(f"LLM worker restarting after a crash{why}; try again shortly")
        return child

    def _call(self, method: str, *args: Any) -> Any:
        with self._lock:
            child = self._current()
            call_id = next(self._ids)
            self.active_call = method
            try:
                self._send(child, ("call", call_id, method, args))
                kind, _, result = self._recv(child, call_id)
            finally:
                self.active_call = None
            if kind == "err":
                raise _rebuild_error(result)
            return result

    def _send(self, child: _Child, msg: tuple) -> None:
        try:
            with self._send_lock:  # hold() sends from another thread
                child.conn.send(msg)
        except (OSError, EOFError, ValueError) as exc:  # broken pipe: the child is gone
            raise self._died(child) from exc

    def _recv(self, child: _Child, call_id: int, stall_s: float | None = None) -> tuple:
        """The next message of call ``call_id`` (older calls' leftovers are skipped).
        The child's death or silence for ``stall_s`` raises LlmError."""
        limit = self.stall_s if stall_s is None else stall_s
        deadline = time.monotonic() + limit
        while True:
            try:
                if not child.conn.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
                    if not child.process.is_alive():
                        raise self._died(child)
                    if time.monotonic() >= deadline:
                        log.error("LLM worker pid %d gave no answer for %.0f s: killing it",
                                  child.pid, limit)
                        child.process.kill()
                        raise self._died(child, f"no answer for {limit:.0f} s")
                    continue
                msg = child.conn.recv()
            except (EOFError, OSError, ValueError) as exc:
                raise self._died(child) from exc
            if msg[1] == call_id:
                return msg

    def _cancel(self, child: _Child, call_id: int) -> None:
        """The consumer stopped early: tell the child, and read up to its ``end`` so the
        pipe is clean for the next call."""
        if not child.process.is_alive():
            return
        try:
            with self._send_lock:
                child.conn.send(("cancel", call_id))
            while True:
                kind, _, *rest = self._recv(child, call_id, stall_s=min(self.stall_s, 10.0))
                if kind == "end":
                    self._took_stats(rest[0], rest[1])
                    return
                if kind == "err":
                    return
        except (LlmError, OSError, EOFError, ValueError) as exc:
            log.debug("LLM worker cancel: %s", exc)

    def _took_stats(self, stats: dict[str, Any], total: int) -> None:
        self.last_stats = GenerationStats(**stats)
        self.total_evaluated_tokens = int(total)

    def _died(self, child: _Child, how: str | None = None) -> LlmError:
        """Mark the engine not ready (the supervisor restarts the child) and describe it."""
        with self._state:
            if self._child is child:
                self._ready = False
        if how is None:
            child.process.join(0.5)  # the exit code arrives a moment after the pipe breaks
            how = _how_it_died(child.process)
        child.conn.close()
        return LlmError(f"LLM worker pid {child.pid} died mid-answer ({how}); restarting it")

    # --- internals: processes -----------------------------------------------------------

    def _spawn(self) -> _Child:
        """Start a child and wait until it has loaded (and warmed) the model."""
        parent, child_end = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main, name=f"hark-llm-{self.name}", daemon=True,
            args=(child_end, self._factory, self._on_start, self._warm,
                  logging.getLogger().getEffectiveLevel()))
        t0 = time.monotonic()
        process.start()
        child_end.close()  # so the parent's reads end (EOF) when the child dies
        try:
            while True:
                if parent.poll(0.2):
                    try:
                        kind, _, data = parent.recv()
                    except (EOFError, OSError):
                        process.join(5)
                        raise ModelError(f"the LLM worker died while loading the model "
                                         f"({_how_it_died(process)})",
                                         fix="check the model file ('hark models verify') "
                                         "and the memory free") from None
                    if kind == "failed":
                        process.join(5)
                        raise _rebuild_error(data)
                    log.info("LLM worker %s (pid %d) ready in %.2f s: interpreter %.2f s, "
                             "model load + warm-up %.2f s (model file %.2f s)", data["name"],
                             process.pid, time.monotonic() - t0,
                             time.monotonic() - t0 - data["boot_s"], data["boot_s"],
                             data["load_s"])
                    return _Child(process, parent, t0, data["name"], float(data["load_s"]))
                if self._closing.is_set():
                    raise LlmError("the LLM worker is closed")
                if not process.is_alive() and not parent.poll(0):
                    process.join()
                    raise ModelError(f"the LLM worker died while loading the model "
                                     f"({_how_it_died(process)})")
                if time.monotonic() - t0 > self.start_timeout_s:
                    raise ModelError(f"the LLM worker did not load the model in "
                                     f"{self.start_timeout_s:.0f} s",
                                     fix="a slow disk or a model too big for the memory")
        except BaseException:
            self._stop_child(_Child(process, parent, t0, self.name, 0.0), polite=False)
            raise

    def _stop_child(self, child: _Child, polite: bool = True) -> None:
        if polite and child.process.is_alive():
            try:
                child.conn.send(("close", 0))
            except (OSError, ValueError):
                pass
            child.process.join(5)
        if child.process.is_alive():
            child.process.kill()
        child.process.join(5)  # reaped: no zombie
        child.conn.close()

    def _supervise(self) -> None:
        """Wait for the child to die; then start a new one (with backoff)."""
        while not self._closing.is_set():
            child = self._child
            if child is not None:
                wait([child.process.sentinel], timeout=1.0)
                if self._closing.is_set():
                    return
                if child.process.is_alive():
                    continue
                child.process.join()
                # the pipe belongs to the call in flight, if any: that thread closes it
                # when it sees the death (closing it under a read could hand its file
                # descriptor number to the next child's pipe)
                if self._lock.acquire(blocking=False):
                    try:
                        child.conn.close()
                    finally:
                        self._lock.release()
                lived = time.monotonic() - child.started
                self._failures = 1 if lived > self.stable_s else self._failures + 1
                self.last_crash = _how_it_died(child.process)
                with self._state:
                    if self._child is child:
                        self._child, self._ready = None, False
                log.error("LLM worker %s (pid %d) died after %.1f s (%s)", self.name,
                          child.pid, lived, self.last_crash)
            delay = backoff_s(self._failures, self.backoff_base_s, self.backoff_max_s)
            if delay:
                log.warning("LLM worker %s: restart in %.1f s (crash %d in a row)",
                            self.name, delay, self._failures)
            if self._closing.wait(delay):
                return
            t0 = time.monotonic()
            try:
                new = self._spawn()
            except HarkError as exc:
                if self._closing.is_set():
                    return
                self.start_failures += 1
                self._failures += 1
                self.last_start_error = exc
                log.error("LLM worker %s could not be restarted: %s", self.name, exc)
                continue
            with self._state:
                if self._closing.is_set():
                    self._stop_child(new)
                    return
                self._child, self._ready = new, True
                self.restarts += 1
                self.last_start_error = None
            log.warning("LLM worker %s restarted (pid %d, restart %d) in %.1f s", self.name,
                        new.pid, self.restarts, time.monotonic() - t0)
            for callback in list(self.on_restart):
                try:
                    callback(self.restarts)
                except Exception:  # a listener must not stop the supervisor
                    log.exception("LLM worker restart listener failed")


def worker_for_profile(cfg: Config, profile: str) -> ProcessEngine:
    """:func:`hark.llm.llama.engine_for_profile` run in a supervised child process.
    The child applies ``cfg.sched`` for the ``llm`` stage to itself (real-time class,
    ``pin_cores.llm``, ``mlock``: the model's memory is in the child), as the stage
    thread does in-process. A call with no word from the child for
    ``max(60, 3 * llm.timeout_s)`` seconds kills and restarts it."""
    from hark.llm.llama import engine_for_profile
    from hark.sched import apply_stage_sched

    sc = cfg.sched
    on_start = functools.partial(apply_stage_sched, "llm", cfg) \
        if sc.realtime or sc.mlock or (sc.pin_cores or {}).get("llm") else None
    return ProcessEngine(functools.partial(engine_for_profile, cfg, profile), name=profile,
                         on_start=on_start, stall_s=max(60.0, 3 * cfg.llm.timeout_s))

