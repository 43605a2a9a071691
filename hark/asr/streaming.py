"""Streaming transcripts while the person speaks: LocalAgreement-2 over re-decodes.

Every ``partial_interval_ms`` the pipeline hands :meth:`StreamingTranscriber.update` the
whole utterance so far. Each pass is one Whisper hypothesis; the words on which the last
two hypotheses agree (their longest common prefix, compared case- and punctuation-blind)
are *committed*: they go into ``Transcript.stable`` and never change afterwards. The rest
of the newest hypothesis is tentative. This is the LocalAgreement-2 policy of
whisper_streaming (Macháček et al., 2023), here over a growing utterance that is at most
``vad.max_utterance_s`` long, so the audio buffer never needs trimming.

Each pass decodes the whole utterance freely. Forcing the committed words as a decoder
prefix was tried and rejected: once a finished sentence is committed, the trailing
silence makes tiny.en invent a continuation ("... soy milk. You can see the red one.").
A pass that re-hears a committed word differently is aligned to the committed words
(difflib) and only its words after them are used; committed words never change.
The last word of a pass is committed only when a later pass agrees *and* more audio has
confirmed it (it is not the pass's final word) or Whisper ended the sentence there.
"""

from __future__ import annotations

import difflib
import re
import time

import numpy as np

from hark.asr.base import AsrEngine, Transcript
from hark.config import AsrConfig

SAMPLE_RATE = 16000
MIN_UPDATE_S = 0.3  # shorter audio is not worth a decode (Whisper guesses)
SENTENCE_END = (".", "?", "!")
REUSE_MARGIN_S = 0.1  # a partial pass this far past the end of speech can be the final


def norm_word(word: str) -> str:
    """A word as compared between passes: lower case, no punctuation."""
    return re.sub(r"[^\w']", "", word.lower()).strip("'")


def ends_sentence(word: str) -> bool:
    """Whisper closed a sentence after ``word`` ("it?", "minutes."), as opposed to
    trailing off ("of...") or a cut-off word ("l-")."""
    return word.endswith(SENTENCE_END) and not word.endswith("..")


def common_prefix(a: list[str], b: list[str]) -> int:
    """Number of leading words ``a`` and ``b`` share (normalised comparison)."""
    n = 0
    for x, y in zip(a, b):
        if norm_word(x) != norm_word(y):
            break
        n += 1
    return n


class StreamingTranscriber:
    """Partial transcripts with a stable prefix for one utterance (blocking; run it on
    the ASR stage thread). ``engine`` is a :class:`~hark.asr.whisper.WhisperAsr` (or any
    ``AsrEngine``)."""

    def __init__(self, engine: AsrEngine, asr_cfg: AsrConfig | None = None):
        self.engine = engine
        self.cfg = asr_cfg or AsrConfig()
        self.reset()

    def reset(self) -> None:
        """Forget the utterance (start of a new turn)."""
        self.committed: list[str] = []  # agreed words; only ever appended to
        self.tentative: list[str] = []  # newest hypothesis beyond the committed words
        self._prev: list[str] | None = None  # previous hypothesis' uncommitted words
        self.passes = 0
        self.last_decode_s = 0.0
        self.reused_final = False  # the final came from the last partial pass
        self._last_len = 0  # samples of audio the last pass decoded
        self._last_words: list[str] = []  # that pass's words, as decoded

    @property
    def stable(self) -> str:
        return " ".join(self.committed)

    @property
    def text(self) -> str:
        return " ".join(self.committed + self.tentative)

    def _decode(self, audio: np.ndarray) -> list[str]:
        t0 = time.perf_counter()
        text = self.engine.transcribe(audio)
        self.last_decode_s = time.perf_counter() - t0
        self.passes += 1
        self._last_len = len(audio)
        self._last_words = text.split()
        return self._last_words

    def _after_committed(self, words: list[str]) -> list[str]:
        """The words of a hypothesis that come after the committed ones."""
        n = len(self.committed)
        if common_prefix(words, self.committed) == n:
            return words[n:]
        # the pass re-heard a committed word differently: align the two word sequences
        # and take what follows the last committed word's counterpart
        sm = difflib.SequenceMatcher(a=[norm_word(w) for w in self.committed],
                                     b=[norm_word(w) for w in words], autojunk=False)
        blocks = [m for m in sm.get_matching_blocks() if m.size]
        if not blocks:
            return words[n:]
        last = blocks[-1]
        end = last.b + last.size + (n - (last.a + last.size))
        return words[min(end, len(words)):]

    def update(self, audio: np.ndarray) -> Transcript:
        """Re-decode the utterance so far; commit what the last two passes agree on."""
        if len(audio) >= MIN_UPDATE_S * SAMPLE_RATE:
            hyp = self._after_committed(self._decode(audio))
            if self._prev is not None:
                k = common_prefix(self._prev, hyp)
                if k == len(hyp) and k and not ends_sentence(hyp[-1]):
                    # the newest pass's last word may be cut off mid-word by the end of
                    # the audio ("cap" for "cappuccino"): it waits for one more pass
                    k -= 1
                self.committed += hyp[:k]  # in the newest pass's spelling
                hyp = hyp[k:]
            self._prev = hyp
            self.tentative = hyp
        return Transcript(self.text, self.stable, is_final=False, t=time.monotonic())

    def finalize(self, audio: np.ndarray, speech_samples: int | None = None) -> Transcript:
        """The final transcript: a whole-utterance decode; every word becomes final.

        ``speech_samples``: where the speech ends in ``audio`` (``Endpointer.
        speech_samples``). When the last partial pass already decoded audio reaching
        ``REUSE_MARGIN_S`` past that point, it heard the whole utterance and its words are
        the final transcript, with no second decode (this is most of the final ASR
        latency). Otherwise ``audio`` is decoded once more.

        The final text is a fresh whole-utterance hypothesis, not the partial passes'
        merge, because it is the most accurate; on rare occasions it therefore revises a
        committed partial word (the pipeline re-checks speculative work against it).
        """
        reuse = (speech_samples is not None and self.passes > 0 and
                 self._last_len >= speech_samples + REUSE_MARGIN_S * SAMPLE_RATE)
        if reuse:
            final = list(self._last_words)
        else:
            final = self._decode(audio) if len(audio) else []
        self.reused_final = reuse
        text = " ".join(final)
        self.committed = text.split()
        self.tentative = []
        self._prev = None
        return Transcript(text, text, is_final=True, t=time.monotonic())
