"""Speech straight to intent: a recognizer that can only hear the active templates.

pocketsphinx decodes the audio against a JSGF grammar generated from the hassil
templates of the loaded domains (:mod:`hark.asr.grammar`), while a second pocketsphinx
search decodes the same audio as an unconstrained loop of phones. Both run as the
audio arrives, so the result is ready a few milliseconds after the last chunk.

A grammar always finds *some* sentence, even for "why is the sky blue". To tell a
command from anything else, the recognizer compares the two searches: the per-frame
log-likelihood of the best grammar path minus that of the free phone loop
(:attr:`GrammarHypothesis.ratio`). Speech the templates can produce fits the grammar
almost as well as the phone loop (ratio near 0); other speech fits it much worse. Below
``threshold`` the recognizer answers ``None`` ("not one of my sentences"), and the turn
goes on to open transcription and the LLM. An accepted hypothesis is parsed by hassil
to get the intent and its slot values.

Home Assistant's full English sentence set also works as a grammar, but decodes too
slowly to be the default.

Instead, the grammar-only built-in domain ``home_core`` (``nlu.grammar_domains``) holds
the commonest home commands under Home Assistant's intent names: time, date, timers,
lights by name or area (the home's names from ``[home]``), stop / never mind, volume.
A sentence that only starts like one of these commands ("what is the capital of France"
as "what is the time") is caught by home_core's stricter :class:`Limits`: the worst
0.3 s must fit too, and speech the sentence has no place for (heard as silence) is not
allowed.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hark.asr.grammar import Grammar, build_jsgf, combine
from hark.config import Config
from hark.errors import AudioError, ModelError
from hark.nlu.base import IntentResult

log = logging.getLogger(__name__)

# Per-frame log-likelihood gap (grammar minus phone loop, x1000) under which speech is
# "not a template sentence": between the scores of correctly heard commands and of other
# speech (the calibration: docs/ARCHITECTURE.md, "Measurements behind the defaults").
DEFAULT_THRESHOLD = -0.6
# A whole-utterance average hides a sentence that only *starts* like a command ("what is
# the capital of France" heard as "what is the time right now"): the worst stretch of
# WINDOW_FRAMES frames (0.3 s) must fit too. Same units as the ratio. Not checked by
# default (None): real commands in noise can have a stretch as poor as a question's; only
# for DOMAIN_LIMITS.
WINDOW_FRAMES = 30
DEFAULT_WINDOW_THRESHOLD: float | None = None
# Frames where the grammar path says silence but the phone loop hears speech that fits
# it clearly better (gap below UNHEARD_GAP): words the sentence had no place for, as in
# "what is the capital of France" heard as "what is the <sil> time".
UNHEARD_GAP = -2.0


@dataclass(frozen=True)
class Limits:
    """What a grammar hypothesis must reach to be accepted (see :class:`GrammarHypothesis`)."""

    ratio: float = DEFAULT_THRESHOLD
    # ratio needed by a one-word sentence ("stop"): over one short word the free phone
    # loop has the edge, so it scores lower than longer sentences. None: ``ratio``.
    short_ratio: float | None = None
    window: float | None = DEFAULT_WINDOW_THRESHOLD  # None: not checked
    unheard_frames: int | None = None  # None: not checked
    # ratio + window / 2: a poor overall fit passes only when no part of it is poor
    combined: float | None = None
    short_combined: float | None = None  # the same for one-word sentences (None: combined)


# Stricter limits for sentences of some domains. home_core's short "what's the ..."
# commands share their start with countless questions; a command wrongly rejected only
# waits for Whisper, a question wrongly accepted is answered wrongly. Each limit lies
# between what the domain's commands reach and what questions heard as one of them reach
# (the scores: docs/ARCHITECTURE.md, "Measurements behind the defaults").
DOMAIN_LIMITS: dict[str, Limits] = {"home_core": Limits(
    ratio=-0.2, short_ratio=-1.1, window=-9.0, unheard_frames=6, combined=-3.4,
    short_combined=-4.1)}
# Wide beams: the default ones prune the right path on real, hesitant speech; these
# cost more CPU and still decode faster than real time.
BEAMS = {"beam": 1e-80, "wbeam": 1e-60, "pbeam": 1e-80}
CHUNK_SAMPLES = 512
# Common pronunciations CMUdict lacks (it has "almonds" with an L, "almond" without).
EXTRA_PRONUNCIATIONS = {
    "almond": ["AA L M AH N D", "AE M AH N D", "AE L M AH N D"],
}


@dataclass
class GrammarHypothesis:
    """What the constrained search heard, and how well it fits (for logs and evals)."""

    text: str  # words of the best grammar path ("" when the search found none)
    ratio: float  # grammar minus phone-loop log-likelihood per frame (x1000)
    frames: int
    accepted: bool
    reason: str = ""  # why it was rejected
    window: float = 0.0  # the same gap over the worst 0.3 s stretch
    unheard: int = 0  # frames of speech the grammar path took for silence


def load_domains(cfg: Config, domains: list | None = None, strict: bool = False) -> list:
    """Domain objects from names/paths/Domain objects (default: the config's domains).

    The default is every domain the speech recognizer listens for: the user domains
    (``nlu.builtin_domains``, then the files in ``nlu.domains_dir``) and the grammar-only
    built-ins of ``nlu.grammar_domains`` (``home_core``: time, timers, lights...).
    Domains loaded from files get the home's ``name``/``area``/``floor``/``zone`` lists
    from ``cfg.home`` (unless they define their own), so ``SpeechIntentRecognizer(domains)``
    can hear "turn on the kitchen light" without being given ``slot_lists``.

    A file that fails to load is logged and skipped so the other domains keep working;
    with ``strict`` its :class:`DomainFileError` is raised instead."""
    from hark.nlu.domain_files import (
        BUILTIN_DOMAINS_DIR,
        Domain,
        DomainFileError,
        domain_paths,
        load_domain,
    )
    from hark.nlu.home import home_from_config

    if domains is None:
        domains = domain_paths(cfg.nlu.domains_dir, cfg.nlu.builtin_domains)
        for name in getattr(cfg.nlu, "grammar_domains", []):
            path = BUILTIN_DOMAINS_DIR / f"{name}.yaml"
            if path.exists():
                if path not in domains:
                    domains.append(path)
            else:
                log.error("nlu.grammar_domains: no built-in domain %r (files: %s)", name,
                          ", ".join(sorted(p.stem for p in BUILTIN_DOMAINS_DIR.glob("*.yaml"))))
    home_lists: dict | None = None
    out = []
    for d in domains:
        if isinstance(d, Domain):
            out.append(d)
            continue
        path = Path(d)
        if not path.exists() and (BUILTIN_DOMAINS_DIR / f"{d}.yaml").exists():
            path = BUILTIN_DOMAINS_DIR / f"{d}.yaml"
        try:
            domain = load_domain(path)
        except DomainFileError as exc:
            if strict:
                raise
            log.error("speech grammar: skipping domain %s:\n%s", path, exc)
            continue
        if home_lists is None:
            home_lists = home_from_config(cfg.home).slot_lists()
        for name, slot_list in home_lists.items():
            domain.intents.slot_lists.setdefault(name, slot_list)
        out.append(domain)
    return out


def result_domain(intent: str, domain: str) -> str:
    """The ``IntentResult.domain`` of an intent heard in ``domain``'s templates.

    Home Assistant's intents (``Hass*``) are labelled "homeassistant" and hark's own
    (``Hark*``) "hark", whichever file's templates heard them, so :class:`hark.nlu.handlers.IntentHandlers` answers them
    itself instead of treating them as a user domain's order."""
    if intent.startswith("Hass"):
        return "homeassistant"
    if intent.startswith("Hark"):
        return "hark"
    return domain


class SpeechIntentRecognizer:
    """int16 16 kHz audio -> :class:`IntentResult` (``source="grammar"``) or ``None``.

    Streaming: :meth:`start`, :meth:`feed` each chunk as it arrives, :meth:`finish` at
    end of speech. :meth:`recognize` does all three on a whole utterance. Not
    thread-safe: one instance per audio stream (they are cheap to build).
    """

    def __init__(self, domains: list, threshold: float = DEFAULT_THRESHOLD,
                 slot_lists: dict | None = None, model_dir: str | None = None,
                 search: dict | None = None,
                 window_threshold: float | None = DEFAULT_WINDOW_THRESHOLD,
                 domain_limits: dict[str, Limits] | None = None):
        """``domains``: :class:`hark.nlu.domain_files.Domain` objects to listen for;
        ``slot_lists``: extra hassil lists (the home's ``name``/``area`` for Home
        Assistant's sentences); ``search``: pocketsphinx settings over :data:`BEAMS`;
        ``threshold`` / ``window_threshold``: the least whole-utterance / worst-0.3 s fit
        accepted; ``domain_limits``: stricter :class:`Limits` for sentences of named
        domains (default :data:`DOMAIN_LIMITS`)."""
        try:
            import pocketsphinx
            from pocketsphinx import Decoder
        except ImportError as exc:  # pragma: no cover - declared dependency
            raise ModelError("pocketsphinx is not installed",
                             fix="pip install pocketsphinx==5.1.1") from exc
        if not domains:
            raise ModelError("no intent domain to build a grammar from",
                             fix="set nlu.builtin_domains, nlu.grammar_domains or "
                                 "nlu.domains_dir")
        model = Path(model_dir or os.path.join(pocketsphinx.get_model_path(), "en-us"))
        common = dict(hmm=str(model / "en-us"), dict=str(model / "cmudict-en-us.dict"),
                      bestpath=False, loglevel="FATAL", **{**BEAMS, **(search or {})})
        self.threshold = threshold
        self.window_threshold = window_threshold
        self.domain_limits = dict(DOMAIN_LIMITS if domain_limits is None else domain_limits)
        self.domains = list(domains)
        self._grammar_dec = Decoder(lm=None, **common)
        self._add_pronunciations()
        known = self._grammar_dec.lookup_word
        grammars: list[Grammar] = []
        self._owner: dict[str, object] = {}  # intent name -> domain
        for i, domain in enumerate(self.domains):
            try:
                g = build_jsgf(domain.intents, slot_lists=slot_lists,
                               in_vocabulary=lambda w: known(w) is not None, prefix=f"d{i}_")
            except ValueError as exc:
                log.warning("domain %s cannot be heard by a grammar: %s", domain.name, exc)
                continue
            grammars.append(g)
            for name in g.intents:
                self._owner.setdefault(name, domain)
        if not grammars:
            raise ModelError("none of the domains can be turned into a speech grammar",
                             fix="templates need words in the pronunciation dictionary")
        self.grammar = combine(grammars)
        self._slot_lists = slot_lists or {}
        try:
            self._grammar_dec.add_jsgf_string("templates", self.grammar.jsgf)
        except RuntimeError as exc:
            raise ModelError(f"pocketsphinx rejected the generated grammar: {exc}") from exc
        self._grammar_dec.activate_search("templates")
        self._phone_dec = Decoder(allphone=str(model / "en-us-phone.lm.bin"), lm=None,
                                  **common)
        self._started = False
        self._fed = 0
        self.last: GrammarHypothesis | None = None
        self.peeked: GrammarHypothesis | None = None  # what peek() last saw
        self.finish_ms = 0.0  # time finish() took (end of speech -> result)

    @classmethod
    def load(cls, cfg: Config, domains: list | None = None,
             threshold: float = DEFAULT_THRESHOLD) -> SpeechIntentRecognizer:
        """Build from config: ``domains`` are Domain objects, file paths or built-in names
        (default: :func:`load_domains`' — user domains plus ``nlu.grammar_domains``)."""
        return cls(load_domains(cfg, domains), threshold=threshold)

    def _add_pronunciations(self) -> None:
        dec = self._grammar_dec
        for word, prons in EXTRA_PRONUNCIATIONS.items():
            known = dec.lookup_word(word)
            for n, phones in enumerate(prons, start=2):
                variant = f"{word}({n})"
                if dec.lookup_word(variant) is None and phones != known:
                    dec.add_word(variant, phones, n == len(prons) + 1)

    # Streaming -------------------------------------------------------------------------
    def start(self) -> None:
        """Begin an utterance (forgets any unfinished one)."""
        if self._started:
            self._end()
        self._grammar_dec.start_utt()
        self._phone_dec.start_utt()
        self._started = True
        self._fed = 0

    def feed(self, chunk: np.ndarray) -> None:
        """Decode the next int16 16 kHz mono chunk (any length)."""
        if not self._started:
            self.start()
        data = _pcm16(chunk)
        if not data:
            return
        self._grammar_dec.process_raw(data, False, False)
        self._phone_dec.process_raw(data, False, False)
        self._fed += len(data) // 2

    def partial(self) -> str:
        """The best grammar path so far ("" before any); cheap, for endpointing hints.

        Not yet checked against the phone loop: only :meth:`finish` decides."""
        if not self._started:
            return ""
        hyp = self._grammar_dec.hyp()
        return hyp.hypstr if hyp is not None else ""

    def finish(self) -> IntentResult | None:
        """End of speech: the intent if the audio was a template sentence, else None."""
        t0 = time.perf_counter()
        if not self._started:
            self.last = GrammarHypothesis("", -math.inf, 0, False, "no audio")
            return None
        self._end()
        result = self._decide()
        self.finish_ms = (time.perf_counter() - t0) * 1000
        return result

    def peek(self) -> IntentResult | None:
        """What :meth:`finish` would answer if the speech ended now, without ending the
        utterance: the same checks on the searches so far (for a pause mid-turn).
        :attr:`peeked` holds the hypothesis; :attr:`last` is left alone."""
        self.peeked = None
        if not self._started:
            return None
        last = self.last
        try:
            result = self._decide()
        finally:
            self.peeked, self.last = self.last, last
        return result

    def recognize(self, samples: np.ndarray) -> IntentResult | None:
        """Whole utterance at once (fed in chunks, as a stream would be)."""
        samples = _check_samples(samples)
        self.start()
        for i in range(0, len(samples), CHUNK_SAMPLES):
            self.feed(samples[i:i + CHUNK_SAMPLES])
        return self.finish()

    # Internals ---------------------------------------------------------------------------
    def _end(self) -> None:
        self._grammar_dec.end_utt()
        self._phone_dec.end_utt()
        self._started = False

    def _decide(self) -> IntentResult | None:
        frames = self._grammar_dec.n_frames()
        hyp = self._grammar_dec.hyp()  # None when no path reached the grammar's end
        phones = self._phone_dec.hyp()
        if frames == 0 or self._fed == 0:
            self.last = GrammarHypothesis("", -math.inf, frames, False, "no audio")
            return None
        if hyp is None or not hyp.hypstr or phones is None:
            self.last = GrammarHypothesis("", -math.inf, frames, False, "no grammar path")
            return None
        # pocketsphinx reports scores as probabilities (logmath.exp of a log score that
        # is normalised per frame to the best state); their logs compare the two searches.
        ratio = (_log(hyp.score) - _log(phones.score)) / frames * 1000
        loosest = min([self.threshold, *(min(lim.ratio, lim.short_ratio or lim.ratio)
                                         for lim in self.domain_limits.values())])
        if ratio < loosest:
            self.last = GrammarHypothesis(hyp.hypstr, ratio, frames, False,
                                          f"fits the templates poorly ({ratio:.2f} < "
                                          f"{loosest:.2f})")
            return None
        window, unheard = self._local_fit(frames)
        parsed = self._parse(hyp.hypstr)
        if parsed is None:
            self.last = GrammarHypothesis(hyp.hypstr, ratio, frames, False,
                                          "hassil did not parse it", window, unheard)
            return None
        result, domain = parsed
        limits = self.domain_limits.get(domain) or Limits(self.threshold,
                                                          self.window_threshold)
        min_ratio, min_combined = limits.ratio, limits.combined
        if len(hyp.hypstr.split()) == 1:
            min_ratio = limits.short_ratio if limits.short_ratio is not None else min_ratio
            if limits.short_combined is not None:
                min_combined = limits.short_combined
        reason = ""
        if ratio < min_ratio:
            reason = f"fits the templates poorly ({ratio:.2f} < {min_ratio:.2f})"
        elif limits.window is not None and window < limits.window:
            reason = f"part of it fits the templates poorly ({window:.2f} < {limits.window:.2f})"
        elif limits.unheard_frames is not None and unheard > limits.unheard_frames:
            reason = (f"{unheard} frames of speech outside the sentence "
                      f"(> {limits.unheard_frames})")
        elif min_combined is not None and ratio + window / 2 < min_combined:
            reason = (f"fits the templates poorly overall and in part "
                      f"({ratio + window / 2:.2f} < {min_combined:.2f})")
        self.last = GrammarHypothesis(hyp.hypstr, ratio, frames, not reason, reason, window,
                                      unheard)
        if reason:
            return None
        result.confidence = 1.0 / (1.0 + math.exp(-4.0 * (ratio - min_ratio)))
        return result

    def _local_fit(self, frames: int) -> tuple[float, int]:
        """From the two searches' word / phone segments: the grammar minus phone-loop
        score per frame (x1000) over the worst :data:`WINDOW_FRAMES` frames, and how many
        frames the grammar path took for silence where the phone loop heard speech."""
        g_scores, g_words = _frame_scores(self._grammar_dec.seg(), frames)
        p_scores, p_words = _frame_scores(self._phone_dec.seg(), frames)
        gap = (g_scores - p_scores) * 1000
        width = min(WINDOW_FRAMES, frames)
        total = np.concatenate([[0.0], np.cumsum(gap)])
        window = float(np.min(total[width:] - total[:-width]) / width)
        silent = np.array([w == "<sil>" for w in g_words])
        speech = np.array([w not in ("", "SIL") and not w.startswith("+") for w in p_words])
        unheard = int(np.sum(silent & speech & (gap < UNHEARD_GAP)))
        return window, unheard

    def _parse(self, text: str) -> tuple[IntentResult, str] | None:
        """hassil's reading of the heard words, and the name of the domain it is from."""
        from hassil import recognize

        for domain in self.domains:
            match = recognize(text, domain.intents, slot_lists=self._slot_lists or None)
            if match is not None:
                slots = {name: e.value for name, e in match.entities.items()}
                return IntentResult(name=match.intent.name, slots=slots, text=text,
                                    source="grammar",
                                    domain=result_domain(match.intent.name, domain.name)
                                    ), domain.name
        return None


def _frame_scores(segments, frames: int) -> tuple[np.ndarray, list[str]]:
    """Each frame's share of its segment's acoustic log score, and its word / phone."""
    scores = np.zeros(frames)
    words = [""] * frames
    for seg in segments:
        start, end = seg.start_frame, min(seg.end_frame, frames - 1)
        if start < 0 or end < start:
            continue
        scores[start:end + 1] = _log(seg.ascore) / (end - start + 1)
        words[start:end + 1] = [seg.word] * (end - start + 1)
    return scores, words


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -1e12


def _check_samples(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise AudioError(f"expected mono audio (1-D array), got shape {samples.shape}",
                         fix="mix down to one channel before recognition")
    return samples


def _pcm16(chunk: np.ndarray) -> bytes:
    chunk = _check_samples(chunk)
    if chunk.dtype == np.int16:
        return chunk.tobytes()
    if np.issubdtype(chunk.dtype, np.floating):
        return (np.clip(chunk, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
    raise AudioError(f"expected int16 or float audio samples, got {chunk.dtype}",
                     fix="pass 16 kHz int16 mono samples")
