"""Wake word detection on the satellite: microWakeWord with a phase ensemble.

microWakeWord (pymicro-wakeword) turns 16 kHz audio into one feature vector per 10 ms
and runs its streaming TFLite network on every third vector (stride 3, one score per
30 ms), then averages the last few scores against a cutoff. Which three features fall
into one inference depends on where the stream happened to start, and that *phase*
moves a keyword's peak score enough that the same audio is detected or missed, the
same sentence false-accepted or not, depending on 10 ms of leading silence.

:class:`WakeWordDetector` removes that variance: it runs the model at all three stride
phases (three interpreter instances fed the same features, offset by one feature each)
and scores the mean of their latest outputs, so the score no longer depends on the
stream's start. That more stable score must stay at or above ``threshold`` for
``confirm`` consecutive 10 ms features (80 ms by default: real keywords hold it far
longer than the short noise transients that cross it), then nothing fires for
``refractory_s`` seconds of audio. The three phases cost three times the CPU of one.

A Silero VAD gate (accept only if speech is heard in the last second) was tried and
rejected: every false accept on augmented real speech had speech around it, and run from
a fresh state on a 1 s window Silero scored the kitchen-noise transients as speech too.

A Whisper second-stage check was tried and rejected: too slow per check on a busy CPU,
and whisper-tiny does not reliably transcribe a lone "Alexa". The second
stage that is used is another keyword network (:mod:`hark.wake.verifier`): a candidate
is reported only when openWakeWord, run on the last 2 s of audio, agrees.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from hark.audio import SAMPLE_RATE, AudioChunk
from hark.errors import AudioError, ConfigError, ModelError
from hark.wake.verifier import AudioHistory, load_verifier

log = logging.getLogger(__name__)

FEATURE_STEP_S = 0.010  # microWakeWord computes one feature vector per 10 ms of audio
DEFAULT_THRESHOLD = 0.87  # on the phase-mean score; see ``hark eval wake``
#: consecutive 10 ms features the score must stay at or above the threshold: longer
#: than the noise transients that cross it, far shorter than a spoken keyword holds it
#: (``hark eval wake --second-stage`` measures both).
DEFAULT_CONFIRM = 8

#: keyword name -> pymicro-wakeword built-in model
KEYWORDS: dict[str, str] = {
    "alexa": "alexa",
    "hey_jarvis": "hey_jarvis",
    "hey_mycroft": "hey_mycroft",
    "okay_nabu": "okay_nabu",
}


@dataclass
class WakeEvent:
    """A detected wake word."""

    keyword: str
    stream_s: float  # audio position of the detection, seconds since the stream started
    t: float  # monotonic time of that audio position (from the chunk's ``t``; 0 if unknown)
    probability: float  # the phase-mean score that crossed the threshold
    #: how long after the first stage fired the second stage confirmed it (the audio of
    #: that wait follows the keyword: a satellite sends it with the turn)
    late_s: float = 0.0


def load_micro_wakeword(keyword: str):
    """The pymicro-wakeword model for a keyword name or a path to a model .json."""
    from pymicro_wakeword import MicroWakeWord, Model

    if keyword in KEYWORDS:
        return MicroWakeWord.from_builtin(Model(KEYWORDS[keyword]))
    if keyword.endswith(".json"):
        try:
            return MicroWakeWord.from_config(keyword)
        except FileNotFoundError as exc:
            raise ModelError(f"wake word model config {keyword} not found") from exc
    raise ConfigError(f"unknown wake word '{keyword}'",
                      fix=f"set wake.keyword to one of {', '.join(KEYWORDS)} or a path to a "
                      "microWakeWord .json")


class WakeWordDetector:
    """Streaming wake word detector (one per audio stream; not thread-safe).

    Feed 16 kHz mono int16 chunks of any size to :meth:`process`; it returns a
    :class:`WakeEvent` for the chunk in which the wake word was detected, else None.

    A candidate is the score at or above ``threshold`` for ``confirm`` consecutive
    10 ms features (1: at once).
    """

    def __init__(self, keyword: str = "alexa", *, threshold: float = DEFAULT_THRESHOLD,
                 refractory_s: float = 2.0, confirm: int = DEFAULT_CONFIRM,
                 verifier=None):
        """``verifier``: a second stage (:class:`hark.wake.verifier.OpenWakeWordVerifier`:
        ``start(audio)`` and ``feed(samples)`` return scores, against its ``threshold``,
        over ``window_s`` of history and for up to ``wait_s`` after the first stage), or
        None."""
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"wake threshold must be between 0 and 1, got {threshold}")
        if confirm < 1:
            raise ConfigError(f"wake confirm must be at least 1 feature, got {confirm}")
        self.keyword = keyword
        self.confirm = confirm
        first = load_micro_wakeword(keyword)
        self._models = [first] + [load_micro_wakeword(keyword)
                                  for _ in range(int(first.stride) - 1)]
        self.model_cutoff: float = float(first.probability_cutoff)
        self.threshold = threshold
        self.refractory_s = refractory_s
        self.cpu_s = 0.0  # process time spent in process(), for benchmarks
        #: set to a list to record the score after every 10 ms feature (evaluation)
        self.scores: list[float] | None = None
        self.verifier = verifier
        self._history = AudioHistory(verifier.window_s) if verifier is not None else None
        #: every second-stage check: stream time, first-stage score, verifier score, verdict
        self.verifications: list[dict] = []
        self.reset()

    def reset(self) -> None:
        """Start a new stream: forget features, scores and the refractory period."""
        from pymicro_wakeword import MicroWakeWordFeatures

        self._features = MicroWakeWordFeatures()
        for m in self._models:
            m.reset()
        self._latest = [0.0] * len(self._models)
        self._n_features = 0
        self._blocked_until = -1.0
        self._above = 0  # consecutive features at or above the threshold
        self._vetoed = False  # the verifier rejected this run above the threshold
        self._pending: dict | None = None  # a second-stage check still listening
        self.verifications = []
        if self._history is not None:
            self._history.clear()
        self.score = 0.0

    @property
    def stream_s(self) -> float:
        return self._n_features * FEATURE_STEP_S

    def process(self, chunk: AudioChunk | np.ndarray) -> WakeEvent | None:
        """Feed audio; a :class:`WakeEvent` if the wake word is detected in this chunk."""
        t0 = time.process_time()
        try:
            return self._process(chunk)
        finally:
            self.cpu_s += time.process_time() - t0

    def _process(self, chunk: AudioChunk | np.ndarray) -> WakeEvent | None:
        if isinstance(chunk, AudioChunk):
            if chunk.rate != SAMPLE_RATE:
                raise AudioError(f"the wake word engine takes 16 kHz audio, got {chunk.rate} Hz",
                                 fix="resample the microphone audio to 16 kHz")
            samples, chunk_t = chunk.samples, chunk.t
        else:
            samples, chunk_t = np.asarray(chunk), 0.0
        samples = samples.astype(np.int16, copy=False)
        if self._history is not None:
            self._history.append(samples)
        first = self._n_features
        event: WakeEvent | None = None
        started_now = False
        for feats in self._features.process_streaming(samples.tobytes()):
            for phase, model in enumerate(self._models):
                if self._n_features < phase:
                    continue  # phase k starts k features late
                prob = model.process_streaming_prob(feats)
                if prob is not None and not model._features:  # an inference ran
                    self._latest[phase] = float(prob)
            self._n_features += 1
            self.score = sum(self._latest) / len(self._latest)
            if self.scores is not None:
                self.scores.append(self.score)
            self._above = self._above + 1 if self.score >= self.threshold else 0
            if not self._above:
                self._vetoed = False
            if event is None and self._pending is None and self._above >= self.confirm \
                    and not self._vetoed and self.stream_s >= self._blocked_until:
                if self._start_check():
                    event = self._fire(chunk_t, (self._n_features - first) * FEATURE_STEP_S)
                else:
                    started_now = self._pending is not None
        if self._pending is not None and not started_now:
            event = self._continue_check(samples, chunk_t,
                                         (self._n_features - first) * FEATURE_STEP_S) or event
        return event

    def _fire(self, chunk_t: float, offset: float, late_s: float = 0.0) -> WakeEvent:
        self._blocked_until = self.stream_s + self.refractory_s
        return WakeEvent(self.keyword, self.stream_s, chunk_t + offset if chunk_t else 0.0,
                         self.score, late_s)

    def _start_check(self) -> bool:
        """A first-stage candidate: True to report it now. With a verifier, its check
        starts on the audio heard so far; if that is not yet enough, the check stays
        pending and goes on with the audio that follows (:meth:`_continue_check`)."""
        if self.verifier is None or self._history is None:
            return True
        vscore = self.verifier.start(self._history.get())
        self._pending = {"stream_s": round(self.stream_s, 3), "score": round(self.score, 4),
                         "verifier_score": vscore, "ms": self.verifier.last_ms,
                         "until": self.stream_s + self.verifier.wait_s}
        if vscore >= self.verifier.threshold:
            self._end_check(True)
            return True
        return False

    def _continue_check(self, samples: np.ndarray, chunk_t: float,
                        offset: float) -> WakeEvent | None:
        p = self._pending
        assert p is not None and self.verifier is not None
        vscore = self.verifier.feed(samples)
        p["verifier_score"] = max(p["verifier_score"], vscore)
        p["ms"] = self.verifier.last_ms
        if p["verifier_score"] >= self.verifier.threshold:
            self._end_check(True)
            return self._fire(chunk_t, offset, late_s=self.stream_s - p["stream_s"])
        if self.stream_s >= p["until"]:
            self._end_check(False)
            # a first stage still above its threshold is not checked again until it falls
            self._vetoed = self._above > 0
        return None

    def _end_check(self, ok: bool) -> None:
        p = self._pending
        assert p is not None and self.verifier is not None
        self._pending = None
        self.verifications.append({
            "stream_s": p["stream_s"], "score": p["score"],
            "verifier_score": round(p["verifier_score"], 4), "accepted": ok,
            "waited_s": round(self.stream_s - p["stream_s"], 3), "ms": round(p["ms"], 1)})
        if not ok:
            log.debug("wake word candidate at %.2f s (score %.3f) rejected by the verifier "
                      "(%.3f < %.3f)", p["stream_s"], p["score"], p["verifier_score"],
                      self.verifier.threshold)


def load_wake(cfg) -> WakeWordDetector:
    """The detector configured in ``cfg.wake``, with its second stage."""
    verifier = load_verifier(cfg.wake.verifier, cfg.wake.keyword,
                             cfg.wake.verifier_threshold, cfg.wake.verifier_wait_s)
    return WakeWordDetector(cfg.wake.keyword, refractory_s=cfg.wake.refractory_s,
                            verifier=verifier)
