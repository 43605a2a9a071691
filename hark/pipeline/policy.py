"""The turn's policy: when a turn ends, what starts speculatively, what is discarded.

:class:`TurnPolicy` is pure and synchronous: it holds one turn's decisions and nothing
else (no audio, no engines, no clock). :meth:`TurnPolicy.on` takes one :data:`Signal`
(what the endpointer, the recognizers and the speculative response observed) and returns
the :data:`Action` s to carry out, in order. ``Assistant.run_turn`` only carries them out:
it sets the endpointer's timeout, starts and cancels work, and feeds what that work
returns back in as signals. So every decision of a turn can be read, and tested, from a
table of signals and actions (``tests/test_policy.py``) without a model.

The decisions, in the order a turn meets them:

* **end of turn**: the silence that ends the turn starts halfway between
  ``vad.eot_short_ms`` and ``vad.eot_long_ms`` and moves with what has been heard: a
  command the grammar recognizer hears, a partial transcript that matches a template or a
  speculative response that found an intent: ``eot_short_ms``; a speculative transcript
  that reads as a whole question: ``eot_complete_ms``; a partial transcript that ends
  mid-phrase ("turn on the"): ``eot_long_ms``. The baseline waits ``eot_silence_ms``.
* **partial decodes** while the person speaks (``asr.streaming``): one at a time, only on
  speech longer than ``asr.partial_min_ms``, ``asr.partial_interval_ms`` of new audio
  apart, never in a silence. After ``asr.early_final_ms`` of silence an *early* decode of
  everything said starts on the idle engine (only while this is the only turn listened
  to), so that the pause can use it as the transcript.
* **speculation** at the first pause (``vad.speculative_ms``): a response starts on the
  grammar's guess, or on a decode that already heard all the speech, or on the audio.
  Speech resuming discards it.
* **commit** at the end of turn: the grammar's final hypothesis, unless open transcription
  heard two words it lacks, wins; a speculative response on the same intent is kept;
  otherwise the response restarts from what was heard.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from hark.asr.base import Transcript
from hark.config import AsrConfig, VadConfig
from hark.nlu.base import IntentResult

# A decode counts as covering all the speech when its audio reaches this many samples
# past the end of the last speech frame: a regular partial 100 ms, an early decode 30 ms
# (it began after a silence, so its audio ends in that silence).
PARTIAL_MARGIN = 1600
EARLY_MARGIN = 480

# A partial transcript ending in one of these words is probably unfinished ("turn on the").
_UNFINISHED = re.compile(
    r"\b(the|a|an|to|of|for|and|or|but|my|is|are|what|what's|who|how|why|when|where|"
    r"set|turn|switch|in|on|at|with|about|please|um|uh|like)\W*$",
    re.IGNORECASE,
)

# A sentence opening as a question does. Whisper closes whatever it heard with a full
# stop when the audio stops, so a full stop alone says little: "In two seconds." (the
# first words of "In two seconds, turn off the light") is not a finished request.
_QUESTION_OPENING = re.compile(
    r"^(what|what's|whats|why|who|who's|whom|whose|how|how's|when|where|where's|which|"
    r"is|are|was|were|can|could|do|does|did|will|would|should|shall|has|have)\b",
    re.IGNORECASE,
)


def looks_unfinished(text: str) -> bool:
    """True for an empty text or one that ends on a word that needs more after it."""
    return not text.strip() or bool(_UNFINISHED.search(text.strip()))


def looks_complete(text: str) -> bool:
    """A finished question: Whisper closed it with a question mark, or with a full stop
    or an exclamation mark after a question's opening words, and it does not end
    mid-phrase. (A command is recognized as complete by the intent matcher instead.)"""
    t = text.strip()
    if not t.endswith(("?", ".", "!")) or looks_unfinished(t.rstrip("?.!")):
        return False
    return t.endswith("?") or bool(_QUESTION_OPENING.match(t))


# --- signals: what the turn observed ----------------------------------------------------


@dataclass(frozen=True)
class SpeechStart:
    """The endpointer heard speech begin."""


@dataclass(frozen=True)
class Pause:
    """A short silence (``vad.speculative_ms``) after speech.

    ``speech_samples``: samples of the utterance up to the end of its last speech frame;
    ``early_began``: the early decode in flight (if any) has started on its engine."""

    speech_samples: int
    early_began: bool = False


@dataclass(frozen=True)
class Resume:
    """Speech again after a pause."""


@dataclass(frozen=True)
class SpeechEnd:
    """The silence reached the end-of-turn timeout (or the audio stopped)."""


@dataclass(frozen=True)
class Chunk:
    """One chunk of audio was processed: the endpointer's state after it, and the
    speculative response's progress (its transcript once known; whether it found an
    intent). ``alone``: this is the only turn being listened to."""

    samples: int  # length of the utterance so far
    silence_ms: float
    spoken_ms: float
    alone: bool = True
    response_transcript: str | None = None
    response_matched: bool = False


@dataclass(frozen=True)
class DecodeDone:
    """The partial (or early) decode in flight finished; ``transcript`` is None when it
    failed."""

    transcript: Transcript | None


@dataclass(frozen=True)
class TemplatesMatched:
    """Answer to :class:`MatchTemplates`: whether ``text`` matches an intent template."""

    text: str
    matched: bool


@dataclass(frozen=True)
class GrammarGuess:
    """Answer to :class:`PeekGrammar`: the grammar recognizer's (text, intent) if the
    speech ended now, or None."""

    text: str | None = None
    intent: IntentResult | None = None


@dataclass(frozen=True)
class GrammarFinal:
    """Answer to :class:`FinishGrammar`: the grammar recognizer's final (text, intent),
    or None."""

    text: str | None = None
    intent: IntentResult | None = None


Signal = (SpeechStart | Pause | Resume | SpeechEnd | Chunk | DecodeDone | TemplatesMatched
          | GrammarGuess | GrammarFinal)


# --- actions: what the turn does ----------------------------------------------------------


@dataclass(frozen=True)
class SetEndOfTurn:
    """Set the endpointer's end-of-turn silence."""

    ms: int


@dataclass(frozen=True)
class BeginGrammar:
    """Start the grammar recognizer on the utterance so far (it is fed every later chunk)."""


@dataclass(frozen=True)
class StartDecode:
    """Decode the utterance so far on the partial engine: a LocalAgreement partial, or
    (``early``) a whole decode that may become the transcript."""

    early: bool = False


@dataclass(frozen=True)
class CancelDecode:
    """Cancel the partial or early decode in flight."""


@dataclass(frozen=True)
class ShowPartial:
    """Report a partial transcript (yield it as a :class:`TranscriptEvent`)."""

    transcript: Transcript


@dataclass(frozen=True)
class MatchTemplates:
    """Check ``text`` against the intent templates (no paraphrase fallback); answer with
    :class:`TemplatesMatched`."""

    text: str


@dataclass(frozen=True)
class Prefill:
    """Read a partial question into the LLM's cache."""

    text: str


@dataclass(frozen=True)
class PeekGrammar:
    """Ask the grammar recognizer what it hears so far; answer with :class:`GrammarGuess`."""


@dataclass(frozen=True)
class FinishGrammar:
    """Ask the grammar recognizer for its final result; answer with :class:`GrammarFinal`."""


@dataclass(frozen=True)
class StartResponse:
    """Start a response (speculative until :class:`Commit`).

    ``source``: ``"grammar"`` (``text`` and ``intent`` are the grammar's command),
    ``"decode"`` (the decode in flight is the transcript, or ``text`` when it already
    finished) or ``"audio"`` (transcribe the utterance)."""

    source: Literal["grammar", "decode", "audio"]
    text: str | None = None
    intent: IntentResult | None = None


@dataclass(frozen=True)
class CancelResponse:
    """Cancel the response in flight. ``discarded``: it was speculative work thrown away
    because the person went on speaking."""

    discarded: bool = False


@dataclass(frozen=True)
class HeardCommand:
    """The grammar recognizer's transcript is the turn's final transcript."""

    text: str


@dataclass(frozen=True)
class Commit:
    """The turn has ended: release the response in flight (acting intents may run)."""


Action = (SetEndOfTurn | BeginGrammar | StartDecode | CancelDecode | ShowPartial
          | MatchTemplates | Prefill | PeekGrammar | FinishGrammar | StartResponse
          | CancelResponse | HeardCommand | Commit)


# --- the policy -----------------------------------------------------------------------------


@dataclass
class _Decode:
    """The partial or early decode in flight (or finished and not yet taken)."""

    samples: int  # utterance length it decodes
    early: bool
    done: bool = False
    transcript: Transcript | None = None


@dataclass
class _Speculation:
    """The response in flight."""

    grammar_intent: IntentResult | None = None  # started on the grammar's guess
    eot_checked: bool = False  # its transcript already moved the end of turn


@dataclass
class TurnPolicy:
    """One turn's decisions (see the module docstring). ``streaming=False`` is the
    baseline: a fixed silence ends the turn, nothing runs ahead. ``grammar``: a grammar
    recognizer listens beside open transcription. ``early_decode``: an idle-class engine
    is there for early decodes (they would hold up the final decode on the main one)."""

    vad: VadConfig
    asr: AsrConfig
    streaming: bool = True
    grammar: bool = False
    early_decode: bool = False
    # what the turn reports in its trace: partial_reused, grammar_overruled,
    # speculative_discarded, speculative_used, speech_intent
    info: dict = field(default_factory=lambda: {"speculative_discarded": 0})

    def __post_init__(self) -> None:
        self.started = False
        self.ended = False
        self.response: _Speculation | None = None
        self.decode: _Decode | None = None
        self.partial_text = ""  # the latest collected decode's words ("" when none)
        self.partial_samples = 0  # the audio the latest started decode covers
        self.heard_words = ""  # the latest collected decode that had any words
        self.last_partial_at = 0  # utterance length when the last partial started
        self.partial_done_at = 0  # ... and when the last one was collected
        self.early_pending = False  # an early decode was started in this silence
        self._pause: Pause | None = None  # a pause waiting for the grammar's guess

    # --- timeouts ---

    @property
    def default_eot_ms(self) -> int:
        return (self.vad.eot_short_ms + self.vad.eot_long_ms) // 2

    def start(self) -> list[Action]:
        """The actions before the first chunk."""
        return [SetEndOfTurn(self.default_eot_ms if self.streaming else self.vad.eot_silence_ms)]

    # --- signals ---

    def on(self, signal: Signal) -> list[Action]:
        """The actions ``signal`` calls for, in the order they are to be carried out."""
        handler = getattr(self, "_on_" + type(signal).__name__, None)
        if handler is None:
            raise TypeError(f"not a turn signal: {signal!r}")
        return handler(signal)

    def _on_SpeechStart(self, s: SpeechStart) -> list[Action]:
        self.started = True
        return [BeginGrammar()] if self.streaming and self.grammar else []

    def _on_Pause(self, s: Pause) -> list[Action]:
        if not self.streaming:
            return []
        actions: list[Action] = []
        if self.response is not None:
            actions.append(CancelResponse())
            self.response = None
        if self.grammar:
            self._pause = s
            return [*actions, PeekGrammar()]
        return actions + self._speculate(s, None)

    def _on_GrammarGuess(self, s: GrammarGuess) -> list[Action]:
        pause, self._pause = self._pause, None
        if pause is None:  # not asked for
            return []
        return self._speculate(pause, self._unless_said_more(s.text, s.intent))

    def _speculate(self, pause: Pause, heard: tuple[str, IntentResult] | None) -> list[Action]:
        """The speculative response at a pause."""
        d = self.decode
        margin = EARLY_MARGIN if self.early_pending else PARTIAL_MARGIN
        covered = self.partial_samples >= pause.speech_samples + margin
        if self.early_pending and not pause.early_began:
            covered = False  # still queued: the main engine is sooner
        if heard is not None:
            # the grammar already hears a known command: end after a short pause
            self.response = _Speculation(grammar_intent=heard[1])
            return [SetEndOfTurn(self.vad.eot_short_ms),
                    StartResponse("grammar", heard[0], heard[1])]
        self.response = _Speculation()
        if covered and d is not None and not (d.done and d.transcript is None):
            self.decode = None  # the response takes it over
            self.info["partial_reused"] = True
            text = (d.transcript.text if d.transcript else "") if d.done else None
            return [StartResponse("decode", text)]
        if covered and self.partial_text:
            self.info["partial_reused"] = True
            return [StartResponse("decode", self.partial_text)]
        return [StartResponse("audio")]

    def _on_Resume(self, s: Resume) -> list[Action]:
        if not self.streaming or self.response is None:
            return []
        self.response = None
        self.info["speculative_discarded"] += 1
        return [CancelResponse(discarded=True)]

    def _on_DecodeDone(self, s: DecodeDone) -> list[Action]:
        if self.decode is not None:
            self.decode.done, self.decode.transcript = True, s.transcript
        return []

    def _on_Chunk(self, c: Chunk) -> list[Action]:
        if self.ended:
            return []
        actions: list[Action] = []
        v = self.vad
        resp = self.response
        if resp is not None and c.response_matched:
            actions.append(SetEndOfTurn(v.eot_short_ms))  # the speculative answer is a command
        elif resp is not None and c.response_transcript and not resp.eot_checked:
            # what was said up to the pause reads as a whole question: a shorter wait; a
            # sentence that does not end mid-phrase no longer needs the long wait an
            # earlier partial's ending ("... about") asked for
            resp.eot_checked = True
            if looks_complete(c.response_transcript):
                actions.append(SetEndOfTurn(v.eot_complete_ms))
            elif not looks_unfinished(c.response_transcript.rstrip("?.!")):
                actions.append(SetEndOfTurn(self.default_eot_ms))
        early_ms = self.asr.early_final_ms if self.early_decode else 0
        if (self.streaming and self.started and resp is None and self.decode is None
                and 0 < early_ms <= c.silence_ms and not self.early_pending and c.alone):
            # a short silence: decode what was said now; it is the transcript if the
            # pause follows a moment later (else it is one more partial)
            self.decode = _Decode(c.samples, early=True)
            self.partial_samples, self.partial_text = c.samples, ""
            self.early_pending = True
            actions.append(StartDecode(early=True))
        if c.silence_ms == 0:  # speaking again: once that decode is collected, the next
            # silence may start another
            self.early_pending = self.early_pending and self.decode is not None
        if self.streaming and self.started and self.asr.streaming and resp is None:
            d = self.decode
            if d is not None and d.done:
                self.decode = None
                self.partial_done_at = c.samples
                part = d.transcript
                self.partial_text = part.text if part else ""
                if self.partial_text:
                    self.heard_words = self.partial_text
                    actions += [ShowPartial(part), *self._partial_heard(self.partial_text)]
            every = int(self.asr.partial_interval_ms * 16)
            if (self.decode is None and c.spoken_ms >= self.asr.partial_min_ms
                    and c.samples - self.last_partial_at >= every
                    and c.samples - self.partial_done_at >= every
                    and c.silence_ms == 0):
                self.last_partial_at = c.samples
                self.decode = _Decode(c.samples, early=False)
                self.partial_samples, self.partial_text = c.samples, ""
                actions.append(StartDecode())
        return actions

    def _partial_heard(self, text: str) -> list[Action]:
        """A partial transcript moves the end of turn: an unfinished phrase waits long (and
        is read ahead into the LLM); otherwise the templates decide."""
        if looks_unfinished(text):
            return [SetEndOfTurn(self.vad.eot_long_ms), Prefill(text)]
        return [MatchTemplates(text)]

    def _on_TemplatesMatched(self, s: TemplatesMatched) -> list[Action]:
        if s.matched:  # a complete command
            return [SetEndOfTurn(self.vad.eot_short_ms)]
        return [SetEndOfTurn(self.default_eot_ms), Prefill(s.text)]  # likely a question

    def _on_SpeechEnd(self, s: SpeechEnd) -> list[Action]:
        self.ended = True
        actions: list[Action] = []
        if self.decode is not None:
            actions.append(CancelDecode())
            self.decode = None
        if self.streaming and self.grammar:
            return [*actions, FinishGrammar()]
        return actions + self._commit(None)

    def _on_GrammarFinal(self, s: GrammarFinal) -> list[Action]:
        if not self.ended:
            return []
        return self._commit(self._unless_said_more(s.text, s.intent))

    def _commit(self, heard: tuple[str, IntentResult] | None) -> list[Action]:
        resp, self.response = self.response, None
        if heard is not None:  # a known command, heard straight from the speech
            text, intent = heard
            self.info["speech_intent"] = True
            if resp is not None and _same_intent(resp.grammar_intent, intent):
                self.info["speculative_used"] = True
                return [HeardCommand(text), Commit()]
            cancel = [CancelResponse()] if resp is not None else []
            return [*cancel, StartResponse("grammar", text, intent), HeardCommand(text),
                    Commit()]
        if resp is not None and resp.grammar_intent is not None:
            # the grammar's guess did not hold up: open transcription decides
            return [CancelResponse(), StartResponse("audio"), Commit()]
        if resp is None:
            return [StartResponse("audio"), Commit()]
        self.info["speculative_used"] = True
        return [Commit()]

    def _unless_said_more(self, text: str | None, intent: IntentResult | None
                          ) -> tuple[str, IntentResult] | None:
        """The grammar recognizer's (text, intent), unless open transcription has already
        heard at least two words its sentence lacks ("turn off the kitchen light in two"
        against the grammar's "turn off the kitchen lights": a command with more to it
        than the templates know, which Whisper then reads in full)."""
        if intent is None:
            return None
        text = text or intent.text
        if not self.heard_words:
            return text, intent
        said = {_stem(w) for w in text.split()}
        extra = {_stem(w) for w in self.heard_words.split()} - said - {""}
        if len(extra) >= 2:
            self.info["grammar_overruled"] = self.info.get("grammar_overruled", 0) + 1
            return None
        return text, intent


def _stem(word: str) -> str:
    w = re.sub(r"[^a-z0-9']", "", word.lower())
    return w[:-1] if len(w) > 3 and w.endswith("s") else w


def _same_intent(a: IntentResult | None, b: IntentResult | None) -> bool:
    if a is None or b is None or a.name != b.name:
        return False

    def norm(slots: dict) -> dict:
        return {k: str(v).strip().lower() for k, v in slots.items()}

    return norm(a.slots) == norm(b.slots)
