"""Second-stage wake word check: an independently trained model on the audio just heard.

microWakeWord is the first stage: cheap, streaming, always on. Its false accepts on real
speech are phrases that sound like the keyword to *that* network (for "alexa": "I'd
like a twelve ounce..."). A pocketsphinx alignment of the keyword against a phone loop
scored such a phrase as well as real keywords, so a better acoustic fit is not the
answer; a second network trained on other data is.

:class:`OpenWakeWordVerifier` runs openWakeWord (pyopen-wakeword: a melspectrogram, a
speech embedding and a small keyword classifier, TFLite) over the last ``window_s``
seconds of audio only when the first stage fires, and accepts when its best score
reaches ``threshold``. openWakeWord scores a keyword once it has heard the word's end;
on real voices that is already so when microWakeWord fires, but a sharper synthetic
voice (Piper's "Alexa") ends later, so a check that is not yet sure listens on for up
to ``wait_s`` (the satellite then sends that audio with the turn, nothing is clipped).
A check adds its own time to the detection latency, and noisy keywords are confirmed
somewhat less often than by the first stage alone. ``hark eval wake`` measures both and
prints the scores and a threshold chosen per half of the recordings; the figures behind
the defaults are in docs/ARCHITECTURE.md, "Measurements behind the defaults".

The openWakeWord models ship inside the pyopen-wakeword wheel (code Apache-2.0); the
pre-trained models themselves are licensed CC BY-NC-SA 4.0 (non-commercial). Set
``wake.verifier = "none"`` to run without them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

import numpy as np

from hark.audio import SAMPLE_RATE
from hark.errors import ConfigError, ModelError

log = logging.getLogger(__name__)

VERIFIERS = ("openwakeword", "none")
#: least openWakeWord score accepted: between the highest score of a first-stage false
#: accept and the lowest of a real keyword, on the low side to keep noisy keywords
#: (``hark eval wake`` prints the scores and a threshold chosen per half)
DEFAULT_THRESHOLD = 0.10
#: seconds of audio before the detection that are scored. openWakeWord's classifier
#: reads 16 embeddings of 80 ms on top of a 0.78 s melspectrogram window, about 2 s.
DEFAULT_WINDOW_S = 2.0
#: silence put before the window so the first embeddings have a context
LEAD_S = 0.5
#: how long the check may go on listening after the first stage fired. openWakeWord
#: scores a keyword once it has heard its end, which on real voices is already the case
#: when microWakeWord fires; a synthetic voice's keyword ends a little later.
DEFAULT_WAIT_S = 0.5

#: hark's keyword name -> openWakeWord built-in model
KEYWORDS = {"alexa": "alexa", "hey_jarvis": "hey_jarvis", "hey_mycroft": "hey_mycroft",
            "okay_nabu": "okay_nabu"}


class OpenWakeWordVerifier:
    """Scores the audio before a first-stage detection with openWakeWord.

    A check is :meth:`start` on the audio before the detection, then :meth:`feed` with
    the audio that follows for up to ``wait_s`` seconds, until a score reaches
    ``threshold``. One check at a time per instance (one instance per detector); the
    lock only keeps a stray call from another thread from corrupting the models.
    """

    def __init__(self, keyword: str = "alexa", *, threshold: float = DEFAULT_THRESHOLD,
                 window_s: float = DEFAULT_WINDOW_S, wait_s: float = DEFAULT_WAIT_S):
        if keyword not in KEYWORDS:
            raise ConfigError(f"the openWakeWord verifier has no model for '{keyword}'",
                              fix="set wake.verifier = \"none\" for this keyword, or use one "
                              f"of {', '.join(KEYWORDS)}")
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"wake.verifier_threshold must be between 0 and 1, got {threshold}")
        if not 1.0 <= window_s <= 8.0:
            raise ConfigError(f"the verifier window must be 1-8 s, got {window_s}")
        if not 0.0 <= wait_s <= 2.0:
            raise ConfigError(f"wake.verifier_wait_s must be 0-2 s, got {wait_s}")
        try:
            from pyopen_wakeword import Model, OpenWakeWord, OpenWakeWordFeatures
        except ImportError as exc:
            raise ModelError("the wake word verifier needs pyopen-wakeword",
                             fix="pip install pyopen-wakeword==1.1.0, or set "
                             "wake.verifier = \"none\"") from exc
        self.keyword = keyword
        self.threshold = threshold
        self.window_s = window_s
        self.wait_s = wait_s
        self._model = OpenWakeWord.from_builtin(Model(KEYWORDS[keyword]))
        self._features = OpenWakeWordFeatures.from_builtin()
        self._lock = threading.Lock()
        self.last_ms = 0.0  # wall time of the last start() or feed()

    def start(self, audio: np.ndarray) -> float:
        """Begin a check on the audio heard up to a first-stage detection (16 kHz int16;
        the last ``window_s`` seconds are used); the best score over it."""
        x = np.asarray(audio).astype(np.int16, copy=False)[-int(self.window_s * SAMPLE_RATE):]
        x = np.concatenate([np.zeros(int(LEAD_S * SAMPLE_RATE), np.int16), x])
        with self._lock:
            self._model.reset()
            self._features.reset()
            # reset() pretends 8 s of silence were heard; scoring only the window is far
            # cheaper and the lead above gives the first embeddings their context
            self._features.new_audio_samples = 0
        return self.feed(x)

    def feed(self, samples: np.ndarray) -> float:
        """Audio that arrived after :meth:`start`: the best score it added (0.0 if the
        model produced none yet). Cheap: one embedding per 80 ms."""
        t0 = time.perf_counter()
        best = 0.0
        with self._lock:
            data = np.asarray(samples).astype(np.int16, copy=False).tobytes()
            for emb in self._features.process_streaming(data):
                for p in self._model.process_streaming(emb):
                    best = max(best, float(p))
        self.last_ms = (time.perf_counter() - t0) * 1000.0
        return best

    def score(self, audio: np.ndarray) -> float:
        """The best score over ``audio`` on its own (a fresh check)."""
        return self.start(audio)


class AudioHistory:
    """The last ``seconds`` of int16 audio, appended chunk by chunk (for the verifier)."""

    def __init__(self, seconds: float):
        self.max_samples = int(seconds * SAMPLE_RATE)
        self._chunks: deque[np.ndarray] = deque()
        self._n = 0

    def clear(self) -> None:
        self._chunks.clear()
        self._n = 0

    def append(self, samples: np.ndarray) -> None:
        if not len(samples):
            return
        self._chunks.append(np.array(samples, np.int16, copy=True))
        self._n += len(samples)
        while self._chunks and self._n - len(self._chunks[0]) >= self.max_samples:
            self._n -= len(self._chunks.popleft())

    def get(self) -> np.ndarray:
        if not self._chunks:
            return np.zeros(0, np.int16)
        return np.concatenate(list(self._chunks))[-self.max_samples:]


def load_verifier(name: str, keyword: str, threshold: float = DEFAULT_THRESHOLD,
                  wait_s: float = DEFAULT_WAIT_S):
    """The configured second stage, or None (``"none"``, or a keyword given as a model
    path, which has no openWakeWord counterpart: said once in the log)."""
    if name not in VERIFIERS:
        raise ConfigError(f"unknown wake.verifier '{name}'",
                          fix=f"set wake.verifier to one of {', '.join(VERIFIERS)}")
    if name == "none":
        return None
    if keyword not in KEYWORDS:
        log.warning("wake word %s: no openWakeWord model to verify it with; running the "
                    "first stage alone", keyword)
        return None
    return OpenWakeWordVerifier(keyword, threshold=threshold, wait_s=wait_s)
