"""The turn's policy, table by table: a sequence of signals in, the actions out.

Each case is one turn as the pipeline meets it (the endpointer's events and state per
chunk, what the decodes, templates and grammar answered) with the actions the policy must
answer each signal with. No engine, no clock: the same table every run.

Config used (hark's defaults): eot_short 200, eot_long 1000 (default 600 between them),
eot_complete 350, eot_silence 700 (baseline), partial_interval 500 ms (8000 samples),
partial_min 1500 ms, early_final 64 ms, speculative 96 ms.
"""

from __future__ import annotations

import pytest

from hark.asr.base import Transcript
from hark.config import Config
from hark.nlu.base import IntentResult
from hark.pipeline.policy import (
    BeginGrammar,
    CancelDecode,
    CancelResponse,
    Chunk,
    Commit,
    DecodeDone,
    FinishGrammar,
    GrammarFinal,
    GrammarGuess,
    HeardCommand,
    MatchTemplates,
    Pause,
    PeekGrammar,
    Prefill,
    Resume,
    SetEndOfTurn,
    ShowPartial,
    SpeechEnd,
    SpeechStart,
    StartDecode,
    StartResponse,
    TemplatesMatched,
    TurnPolicy,
    looks_complete,
    looks_unfinished,
)

CFG = Config()
SHORT, LONG, DEFAULT = CFG.vad.eot_short_ms, CFG.vad.eot_long_ms, 600
COMPLETE, BASELINE = CFG.vad.eot_complete_ms, CFG.vad.eot_silence_ms

LIGHT_ON = IntentResult("HassTurnOn", {"name": "kitchen light"}, "turn on the kitchen light",
                        source="grammar")
LIGHT_ON_PLURAL = IntentResult("HassTurnOn", {"name": "Kitchen Light "},
                               "turn on the kitchen lights", source="grammar")
LIGHT_OFF = IntentResult("HassTurnOff", {"name": "kitchen light"},
                         "turn off the kitchen lights", source="grammar")


def speaking(samples: int, **kw) -> Chunk:
    """A chunk while the person speaks (spoken_ms follows the samples)."""
    return Chunk(samples, 0.0, samples / 16, **kw)


def silent(samples: int, silence_ms: float, **kw) -> Chunk:
    return Chunk(samples, silence_ms, samples / 16, **kw)


def T(text: str) -> Transcript:
    return Transcript(text, text)


# (case, policy options, [(signal, expected actions), ...], expected info items)
CASES = [
    ("baseline: a fixed silence, then everything from the audio", {"streaming": False}, [
        (SpeechStart(), []),
        (speaking(8000), []),
        (Pause(8000), []),
        (Resume(), []),
        (speaking(40000), []),
        (SpeechEnd(), [StartResponse("audio"), Commit()]),
    ], {"speculative_discarded": 0}),

    ("a short command: speculation at the pause is kept; its intent shortens the wait", {}, [
        (SpeechStart(), []),
        (speaking(8000), []),  # 500 ms spoken: under partial_min, no partial decode
        (Pause(8000), [StartResponse("audio")]),
        (silent(9600, 100), []),
        (silent(10112, 132, response_transcript="Turn on the kitchen light.",
                response_matched=True), [SetEndOfTurn(SHORT)]),
        (SpeechEnd(), [Commit()]),
    ], {"speculative_used": True}),

    ("a whole question: the complete-sentence wait, decided once", {}, [
        (SpeechStart(), []),
        (Pause(8000), [StartResponse("audio")]),
        (silent(9600, 100, response_transcript="Why is the sky blue?"),
         [SetEndOfTurn(COMPLETE)]),
        (silent(10112, 132, response_transcript="Why is the sky blue?"), []),
        (SpeechEnd(), [Commit()]),
    ], {"speculative_used": True}),

    ("an open-ended statement goes back to the default wait", {}, [
        (SpeechStart(), []),
        (Pause(8000), [StartResponse("audio")]),
        (silent(9600, 100, response_transcript="I like jazz."), [SetEndOfTurn(DEFAULT)]),
    ], {}),

    ("half a sentence at the pause keeps the wait it had", {}, [
        (SpeechStart(), []),
        (Pause(8000), [StartResponse("audio")]),
        (silent(9600, 100, response_transcript="Turn on the."), []),
    ], {}),

    ("speech resumes: the speculation is discarded, the end starts afresh", {}, [
        (SpeechStart(), []),
        (Pause(8000), [StartResponse("audio")]),
        (Resume(), [CancelResponse(discarded=True)]),
        (speaking(12000), []),
        (Pause(12000), [StartResponse("audio")]),
        (Resume(), [CancelResponse(discarded=True)]),
        (speaking(16000), []),
        (SpeechEnd(), [StartResponse("audio"), Commit()]),
    ], {"speculative_discarded": 2}),

    ("the grammar hears a command at the pause: short wait, answer prepared, kept",
     {"grammar": True}, [
        (SpeechStart(), [BeginGrammar()]),
        (Pause(8000), [PeekGrammar()]),
        (GrammarGuess("turn on the kitchen light", LIGHT_ON),
         [SetEndOfTurn(SHORT), StartResponse("grammar", "turn on the kitchen light", LIGHT_ON)]),
        (silent(9600, 100, response_matched=True), [SetEndOfTurn(SHORT)]),
        (SpeechEnd(), [FinishGrammar()]),
        # the same intent (slots compared without case or spaces): the speculation stands
        (GrammarFinal("turn on the kitchen lights", LIGHT_ON_PLURAL),
         [HeardCommand("turn on the kitchen lights"), Commit()]),
    ], {"speculative_used": True, "speech_intent": True}),

    ("the grammar's final command differs from its guess: restarted on the final",
     {"grammar": True}, [
        (SpeechStart(), [BeginGrammar()]),
        (Pause(8000), [PeekGrammar()]),
        (GrammarGuess("turn on the kitchen light", LIGHT_ON),
         [SetEndOfTurn(SHORT), StartResponse("grammar", "turn on the kitchen light", LIGHT_ON)]),
        (SpeechEnd(), [FinishGrammar()]),
        (GrammarFinal(None, LIGHT_OFF),  # no text of its own: the intent's text
         [CancelResponse(), StartResponse("grammar", "turn off the kitchen lights", LIGHT_OFF),
          HeardCommand("turn off the kitchen lights"), Commit()]),
    ], {"speech_intent": True}),

    ("the grammar's guess does not hold at the end: open transcription decides",
     {"grammar": True}, [
        (SpeechStart(), [BeginGrammar()]),
        (Pause(8000), [PeekGrammar()]),
        (GrammarGuess("turn on the kitchen light", LIGHT_ON),
         [SetEndOfTurn(SHORT), StartResponse("grammar", "turn on the kitchen light", LIGHT_ON)]),
        (SpeechEnd(), [FinishGrammar()]),
        (GrammarFinal(), [CancelResponse(), StartResponse("audio"), Commit()]),
    ], {}),

    ("the grammar hears nothing at the pause: a speculation on the audio", {"grammar": True}, [
        (SpeechStart(), [BeginGrammar()]),
        (Pause(8000), [PeekGrammar()]),
        (GrammarGuess(), [StartResponse("audio")]),
        (SpeechEnd(), [FinishGrammar()]),
        (GrammarFinal(), [Commit()]),
    ], {"speculative_used": True}),

    ("a partial that ends mid-phrase waits long and is read ahead into the LLM", {}, [
        (SpeechStart(), []),
        (speaking(24000), [StartDecode()]),  # 1500 ms spoken, 8000 samples of new audio
        (speaking(26000), []),  # one decode at a time
        (DecodeDone(T("what is the capital of")), []),
        (speaking(28000), [ShowPartial(T("what is the capital of")), SetEndOfTurn(LONG),
                           Prefill("what is the capital of")]),
        (speaking(34000), []),  # 6000 samples since the last one: not yet
        (speaking(36000), [StartDecode()]),
        (silent(36512, 32), []),
        (DecodeDone(None), []),  # a failed decode reports nothing
        (silent(37024, 64), []),
    ], {}),

    ("a partial that matches a template ends the turn soon", {}, [
        (SpeechStart(), []),
        (speaking(24000), [StartDecode()]),
        (DecodeDone(T("turn on the kitchen light")), []),
        (speaking(24512), [ShowPartial(T("turn on the kitchen light")),
                           MatchTemplates("turn on the kitchen light")]),
        (TemplatesMatched("turn on the kitchen light", True), [SetEndOfTurn(SHORT)]),
    ], {}),

    ("a partial that matches no template: the default wait, read ahead", {}, [
        (SpeechStart(), []),
        (speaking(24000), [StartDecode()]),
        (DecodeDone(T("tell me a joke")), []),
        (speaking(24512), [ShowPartial(T("tell me a joke")), MatchTemplates("tell me a joke")]),
        (TemplatesMatched("tell me a joke", False), [SetEndOfTurn(DEFAULT),
                                                     Prefill("tell me a joke")]),
    ], {}),

    ("no partial decode starts in a silence, nor while a speculation runs", {}, [
        (SpeechStart(), []),
        (silent(24000, 32), []),
        (Pause(23000), [StartResponse("audio")]),
        (speaking(32000), []),
    ], {}),

    ("a partial done before the pause that heard all the speech is the transcript", {}, [
        (SpeechStart(), []),
        (speaking(24000), [StartDecode()]),
        (DecodeDone(T("turn on the kitchen light")), []),
        (Pause(22000), [StartResponse("decode", "turn on the kitchen light")]),
    ], {"partial_reused": True}),

    ("a partial still running at the pause that covers the speech is handed over", {}, [
        (SpeechStart(), []),
        (speaking(24000), [StartDecode()]),
        (Pause(22000), [StartResponse("decode")]),
        (SpeechEnd(), [Commit()]),  # the decode went to the response: nothing to cancel
    ], {"partial_reused": True, "speculative_used": True}),

    ("a partial that missed the speech's end is not the transcript", {}, [
        (SpeechStart(), []),
        (speaking(24000), [StartDecode()]),
        (Pause(23000), [StartResponse("audio")]),  # 1000 samples past: under the margin
        (SpeechEnd(), [CancelDecode(), Commit()]),
    ], {"speculative_used": True}),

    ("an early decode in the first silence becomes the transcript at the pause",
     {"early_decode": True}, [
        (SpeechStart(), []),
        (speaking(20000), []),
        (silent(20512, 32), []),
        (silent(21024, 64), [StartDecode(early=True)]),
        (silent(21536, 96), []),  # one early decode per silence
        (Pause(20000, early_began=True), [StartResponse("decode")]),
    ], {"partial_reused": True}),

    ("an early decode still queued at the pause: the main engine is sooner",
     {"early_decode": True}, [
        (SpeechStart(), []),
        (speaking(20000), []),
        (silent(21024, 64), [StartDecode(early=True)]),
        (Pause(20000, early_began=False), [StartResponse("audio")]),
        (SpeechEnd(), [CancelDecode(), Commit()]),
    ], {"speculative_used": True}),

    ("an early decode that speech went on after is one more partial",
     {"early_decode": True}, [
        (SpeechStart(), []),
        (silent(21024, 64), [StartDecode(early=True)]),
        (speaking(22000), []),  # speaking again while it runs: no second early decode
        (silent(22512, 64), []),
        (DecodeDone(T("turn on the")), []),
        (speaking(23024), [ShowPartial(T("turn on the")), SetEndOfTurn(LONG),
                           Prefill("turn on the")]),
        (silent(23536, 64), []),  # collected in this very speech: not yet
        (speaking(24048), []),  # speaking again after it was collected
        (silent(24560, 64), [StartDecode(early=True)]),  # so this silence may start one
        (Pause(26000, early_began=True), [StartResponse("audio")]),  # it missed the end
    ], {}),

    ("no early decode while another turn is listened to", {"early_decode": True}, [
        (SpeechStart(), []),
        (silent(21024, 64, alone=False), []),
        (Pause(20000), [StartResponse("audio")]),
    ], {}),

    ("no early decode without the idle engine", {"early_decode": False}, [
        (SpeechStart(), []),
        (silent(21024, 64), []),
    ], {}),

    ("Whisper heard two words the grammar's sentence lacks: it decides",
     {"grammar": True}, [
        (SpeechStart(), [BeginGrammar()]),
        (speaking(24000), [StartDecode()]),
        (DecodeDone(T("Turn off the kitchen light in two")), []),
        (speaking(24512), [ShowPartial(T("Turn off the kitchen light in two")),
                           MatchTemplates("Turn off the kitchen light in two")]),
        (SpeechEnd(), [FinishGrammar()]),
        (GrammarFinal("turn off the kitchen lights", LIGHT_OFF),
         [StartResponse("audio"), Commit()]),
    ], {"grammar_overruled": 1}),

    ("Whisper heard one word more (or the same words): the grammar's command stands",
     {"grammar": True}, [
        (SpeechStart(), [BeginGrammar()]),
        (speaking(24000), [StartDecode()]),
        (DecodeDone(T("Turn off the kitchen light in")), []),
        (speaking(24512), [ShowPartial(T("Turn off the kitchen light in")),
                           SetEndOfTurn(LONG), Prefill("Turn off the kitchen light in")]),
        (SpeechEnd(), [FinishGrammar()]),
        (GrammarFinal("turn off the kitchen lights", LIGHT_OFF),
         [StartResponse("grammar", "turn off the kitchen lights", LIGHT_OFF),
          HeardCommand("turn off the kitchen lights"), Commit()]),
    ], {"speech_intent": True}),

    ("nothing but a pause with no speech start is ignored by the grammar's answer",
     {"grammar": True}, [
        (GrammarGuess("turn on the kitchen light", LIGHT_ON), []),  # not asked for
        (GrammarFinal("turn on the kitchen light", LIGHT_ON), []),  # turn not ended
    ], {}),
]


@pytest.mark.parametrize("case,options,steps,info", CASES, ids=[c[0] for c in CASES])
def test_policy_table(case, options, steps, info):
    policy = TurnPolicy(CFG.vad, CFG.asr, **options)
    streaming = options.get("streaming", True)
    assert policy.start() == [SetEndOfTurn(DEFAULT if streaming else BASELINE)]
    for i, (signal, expected) in enumerate(steps):
        got = policy.on(signal)
        assert got == expected, f"step {i}: {signal!r}"
    for key, value in info.items():
        assert policy.info.get(key) == value, key


def test_after_the_end_chunks_change_nothing():
    policy = TurnPolicy(CFG.vad, CFG.asr)
    policy.on(SpeechStart())
    policy.on(SpeechEnd())
    assert policy.on(speaking(90000)) == []


def test_a_signal_it_does_not_know_is_an_error():
    with pytest.raises(TypeError, match="not a turn signal"):
        TurnPolicy(CFG.vad, CFG.asr).on("speech_start")  # type: ignore[arg-type]


def test_timeouts_follow_the_config():
    cfg = Config()
    cfg.vad.eot_short_ms, cfg.vad.eot_long_ms, cfg.vad.eot_complete_ms = 150, 900, 300
    policy = TurnPolicy(cfg.vad, cfg.asr, grammar=True)
    assert policy.start() == [SetEndOfTurn(525)]
    policy.on(SpeechStart())
    policy.on(Pause(8000))
    assert policy.on(GrammarGuess("turn on the kitchen light", LIGHT_ON))[0] == SetEndOfTurn(150)


@pytest.mark.parametrize("text,unfinished", [
    ("", True), ("turn on the", True), ("what is", True), ("set a timer for", True),
    ("turn on the kitchen light", False), ("what time is it", False),
])
def test_looks_unfinished(text, unfinished):
    assert looks_unfinished(text) is unfinished


@pytest.mark.parametrize("text,complete", [
    ("Why is the sky blue?", True), ("What is the capital of France.", True),
    ("Why is the", False), ("Tell me about the.", False), ("what is", False),
    # a full stop closes any fragment Whisper heard: only a question's opening makes it
    # a finished question ("In two seconds," of "..., turn off the light" is not)
    ("In two seconds.", False), ("Turn off the.", False), ("Who wrote Hamlet.", True),
    ("Tell me a joke?", True),
])
def test_looks_complete(text, complete):
    assert looks_complete(text) is complete
