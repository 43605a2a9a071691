"""Wake word detection on the satellite: microWakeWord with a phase ensemble.

microWakeWord (pymicro-wakeword) turns 16 kHz audio into one feature vector per 10 ms
and runs its streaming TFLite network on every third vector (stride 3, one score per
30 ms), then averages the last few scores against a cutoff. Which three features fall
into one inference depends on where the stream happened to start, and on real
recordings that *phase* moves a keyword's peak score by up to 0.15: the same audio
detected or missed, the same sentence false-accepted or not, depending on 10 ms of
leading silence.

:class:`WakeWordDetector` removes that variance: it runs the model at all three stride
phases (three interpreter instances fed the same features, offset by one feature each)
and scores the mean of their latest outputs, so the score no longer depends on the
stream's start. That more stable score must stay at or above ``threshold`` for
``confirm`` consecutive 10 ms features (80 ms by default: real keywords hold it far
longer, the kitchen-noise transients that false-accepted 10-60 ms), then nothing fires for
``refractory_s`` seconds of audio. CPU cost triples but stays under 1 % of a core.

A Silero VAD gate (accept only if speech is heard in the last second) was tried and
rejected: every false accept on augmented real speech had speech around it, and run from
a fresh state on a 1 s window Silero scored the kitchen-noise transients as speech too.

A Whisper second-stage check was tried and rejected: 450-800 ms per check on a busy
2-core CPU, and whisper-tiny does not reliably transcribe a lone "Alexa".
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from hark.audio import SAMPLE_RATE, AudioChunk
from hark.errors import AudioError, ConfigError, ModelError

log = logging.getLogger(__name__)

FEATURE_STEP_S = 0.010  # microWakeWord computes one feature vector per 10 ms of audio
DEFAULT_THRESHOLD = 0.87  # on the phase-mean score; see ``hark eval wake``
#: consecutive 10 ms features the score must stay at or above the threshold. Real
#: spoken keywords held it for 110-400 ms; the kitchen-noise transients that crossed it
#: lasted 10-60 ms (``hark eval wake --second-stage``).
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
                 refractory_s: float = 2.0, confirm: int = DEFAULT_CONFIRM):
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
        first = self._n_features
        event: WakeEvent | None = None
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
            if event is None and self._above >= self.confirm \
                    and self.stream_s >= self._blocked_until:
                self._blocked_until = self.stream_s + self.refractory_s
                offset = (self._n_features - first) * FEATURE_STEP_S
                event = WakeEvent(self.keyword, self.stream_s,
                                  chunk_t + offset if chunk_t else 0.0, self.score)
        return event


def load_wake(cfg) -> WakeWordDetector:
    """The detector configured in ``cfg.wake``."""
    return WakeWordDetector(cfg.wake.keyword, refractory_s=cfg.wake.refractory_s)
