"""Turn metrics: Prometheus exposition for ``/metrics`` and recent p50/p95 for the page.

prometheus_client writes the text format (escaping, ``_bucket``/``_sum``/``_count``
series, ``# HELP``/``# TYPE`` lines) exactly as Prometheus parses it, so we use it rather
than hand-formatting; each :class:`Metrics` has its own registry, so several servers
(or tests) in one process never share counters.

What a trace contributes (conventions shared with the pipeline):

- each span in :data:`hark.trace.SPANS` present in the trace -> one observation of
  ``hark_stage_latency_seconds{stage=...}``;
- ``info["error"]`` set -> ``hark_turn_errors_total{kind="no_speech"|"failure"}``;
- ``info["barge_in"]`` truthy or a ``barge_in`` mark -> ``hark_barge_ins_total`` (the
  server's own count of cancelled, barged-in turns is ``hark_server_barge_ins_total``,
  see :mod:`hark.server.http`);
- each truthy ``info["<name>_cache_hit"]`` -> ``hark_cache_hits_total{cache="<name>"}``.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from hark.trace import SPANS, Trace, percentile

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds; dense where a voice assistant lives (50 ms .. 2 s), sparse beyond.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
                   1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)

NO_SPEECH = "no speech"


class Metrics:
    """Counters and histograms fed by finished traces (:meth:`observe`, usable as a
    ``Server.turn_listeners`` callback), plus a window of the last ``window`` turns'
    spans for :meth:`percentiles`."""

    def __init__(self, window: int = 200):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.stage_latency = Histogram(
            "hark_stage_latency_seconds", "Latency of each turn stage (hark.trace.SPANS)",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.turns = Counter("hark_turns", "Turns finished (with or without an error)",
                             registry=r)
        self.errors = Counter("hark_turn_errors", "Turns that ended in an error",
                              ["kind"], registry=r)
        self.barge_ins = Counter("hark_barge_ins", "Replies interrupted by the user",
                                 registry=r)
        self.cache_hits = Counter("hark_cache_hits", "Replies served from a cache",
                                  ["cache"], registry=r)
        self.refused = Counter("hark_turns_refused",
                               "Turns refused with a spoken 'busy' (over capacity)",
                               registry=r)
        self.trace_log_errors = Counter("hark_trace_log_errors",
                                        "Trace log writes that failed", registry=r)
        self.satellites = Gauge("hark_satellites_connected", "Satellites connected now",
                                registry=r)
        self.ready = Gauge("hark_ready", "1 once every model is loaded and warm",
                           registry=r)
        self._window: deque[dict[str, float]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def __call__(self, trace: Trace) -> None:
        self.observe(trace)

    def observe(self, trace: Trace) -> None:
        """Count one finished turn."""
        spans = trace.spans_ms()
        for stage, ms in spans.items():
            self.stage_latency.labels(stage=stage).observe(ms / 1000.0)
        self.turns.inc()
        info = trace.info or {}
        error = info.get("error")
        if error:
            self.errors.labels(kind="no_speech" if error == NO_SPEECH else "failure").inc()
        if info.get("barge_in") or trace.has("barge_in"):
            self.barge_ins.inc()
        for key, value in info.items():
            if isinstance(key, str) and key.endswith("_cache_hit") and value:
                self.cache_hits.labels(cache=key[: -len("_cache_hit")] or "reply").inc()
        with self._lock:
            self._window.append(spans)

    def percentiles(self) -> dict[str, dict[str, float | int | None]]:
        """``{stage: {"p50": ms, "p95": ms, "n": count}}`` over the recent window, for
        every stage of :data:`SPANS` (``None`` where no turn had that span)."""
        with self._lock:
            window = list(self._window)
        out: dict[str, dict[str, float | int | None]] = {}
        for stage in SPANS:
            values = [s[stage] for s in window if stage in s]
            p50, p95 = percentile(values, 50), percentile(values, 95)
            out[stage] = {"p50": None if p50 is None else round(p50, 1),
                          "p95": None if p95 is None else round(p95, 1),
                          "n": len(values)}
        return out

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)

    @staticmethod
    def counter_value(counter: Any, **labels: str) -> float:
        """Current value of a counter (for tests and /api/state)."""
        target = counter.labels(**labels) if labels else counter
        return target._value.get()  # noqa: SLF001 - prometheus_client has no public getter
