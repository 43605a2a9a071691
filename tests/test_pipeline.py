"""Pipeline behaviour with scripted stages: overlap, speculation, barge-in, no leaks.

The stages here are small fakes with scripted outputs so the behaviour is deterministic;
the same Assistant runs the real engines in tests/test_turn.py."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from hark.audio import AudioChunk
from hark.config import Config
from hark.nlu.base import IntentResult, Reply
from hark.pipeline.assistant import Assistant
from hark.pipeline.events import ReplyAudio, ReplyText, SpeechEnded, TurnEnd
from hark.vad.base import VadEvent


class Log:
    def __init__(self):
        self.items: list[str] = []
        self.lock = threading.Lock()

    def add(self, s: str) -> None:
        with self.lock:
            self.items.append(s)

    def index(self, prefix: str) -> int:
        return next(i for i, s in enumerate(self.items) if s.startswith(prefix))


class ScriptedEndpointer:
    """Emits the scripted VAD event kinds at given chunk numbers."""

    silence_ms = 0.0

    def __init__(self, script: dict[int, str]):
        self.script = script
        self.n = 0
        self.audio: list[np.ndarray] = []
        self.eot_ms: list[int] = []
        self.speech_end_t = 0.0

    def process(self, chunk: AudioChunk) -> list[VadEvent]:
        self.n += 1
        self.audio.append(chunk.samples)
        kind = self.script.get(self.n)
        return [VadEvent(kind, time.monotonic())] if kind else []

    def set_eot_ms(self, ms: int) -> None:
        self.eot_ms.append(ms)

    @property
    def spoken_ms(self) -> float:
        return sum(map(len, self.audio)) / 16

    @property
    def speech_samples(self) -> int:
        return sum(map(len, self.audio))

    def utterance(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, np.int16)


class FakeAsr:
    def __init__(self, log: Log, texts_by_len=None):
        self.log = log

    def decode(self, samples: np.ndarray, prompt: str = "", prefix: str = ""):
        from hark.asr.base import AsrResult

        return AsrResult(self.transcribe(samples, prompt), 0.0, self.avg_logprob)

    avg_logprob = -0.1  # a confident decode

    def transcribe(self, samples: np.ndarray, prompt: str = "") -> str:
        n_chunks = len(samples) // 512
        self.log.add(f"asr:{n_chunks}")
        return "what is the weather" if n_chunks < 8 else "turn on the kitchen light"


class FakeNlu:
    def recognize(self, text: str, context=None, paraphrase: bool = True):
        if "kitchen light" in text:
            return IntentResult("HassTurnOn", {"name": "kitchen light"}, text)
        return None


class FakeHandlers:
    def __init__(self, log: Log):
        self.log = log

    def handle(self, intent: IntentResult, session: str = "default") -> Reply:
        self.log.add(f"handle:{intent.name}")
        return Reply("Turning on the kitchen light.", intent, cacheable=True)

    def remember(self, session: str, reply) -> None:
        pass

    def on_timer(self, callback) -> None:
        pass

    def close(self) -> None:
        pass


class FakeLlm:
    """Yields scripted pieces with a delay; records whether it was stopped early."""

    def __init__(self, log: Log, pieces: list[str], delay: float = 0.03, endless=False):
        self.log = log
        self.pieces = pieces
        self.delay = delay
        self.endless = endless
        self.stopped = threading.Event()
        self.last_source = "llm"

    def prefill(self, text: str, session: str = "default") -> None:
        self.log.add(f"prefill:{text}")

    def hold(self, on: bool) -> None:
        pass

    def reply_stream(self, text: str, session: str = "default", trace=None):
        self.log.add("llm:start")
        try:
            i = 0
            while self.endless or i < len(self.pieces):
                time.sleep(self.delay)
                yield self.pieces[i % len(self.pieces)]
                i += 1
            self.log.add("llm:done")
        finally:
            self.stopped.set()


class FakeTts:
    sample_rate = 16000

    def __init__(self, log: Log):
        self.log = log

    def synthesize(self, text: str):
        self.log.add(f"tts:{text}")
        yield AudioChunk(np.full(160, 100, np.int16), 16000, time.monotonic())


def make(log: Log, llm: FakeLlm, script: dict[int, str]) -> tuple[Assistant, list]:
    cfg = Config()
    cfg.asr.partial_interval_ms = 64
    cfg.asr.partial_min_ms = 0
    made: list[ScriptedEndpointer] = []

    def factory():
        made.append(ScriptedEndpointer(script))
        return made[-1]

    a = Assistant(cfg, vad_factory=factory, asr=FakeAsr(log), nlu=FakeNlu(),
                  handlers=FakeHandlers(log), llm=llm, tts=FakeTts(log))
    return a, made


async def mic(n: int, pace: float = 0.005):
    for _ in range(n):
        await asyncio.sleep(pace)
        yield AudioChunk(np.zeros(512, np.int16), 16000, time.monotonic())


async def collect(agen):
    return [ev async for ev in agen]


def test_llm_and_tts_overlap():
    log = Log()
    llm = FakeLlm(log, ["The sky ", "is blue, ", "because of ", "Rayleigh ", "scattering. ",
                        "Short waves ", "scatter ", "more."])
    a, _ = make(log, llm, {1: "speech_start", 4: "speech_end"})
    events = asyncio.run(collect(a.run_turn(mic(10))))
    a.close()
    # the first clause was synthesized before the LLM had finished writing
    assert log.index("tts:") < log.index("llm:done")
    texts = [e.text for e in events if isinstance(e, ReplyText)]
    assert len(texts) >= 2 and "".join(texts).replace(" ", "") == (
        "The sky is blue, because of Rayleigh scattering. Short waves scatter more.".replace(" ", ""))
    end = events[-1]
    assert isinstance(end, TurnEnd) and end.error is None
    assert end.trace.has("first_audio_out") and end.trace.has("llm_first_chunk")
    # audio came out before the turn's end event, i.e. while work was still going on
    first_audio = next(i for i, e in enumerate(events) if isinstance(e, ReplyAudio))
    assert first_audio < len(events) - 1


def test_barge_in_cancels_llm_and_tts():
    log = Log()
    llm = FakeLlm(log, ["word, ", "another word. "], delay=0.02, endless=True)
    a, _ = make(log, llm, {1: "speech_start", 3: "speech_end"})

    async def run():
        agen = a.run_turn(mic(6))
        async for ev in agen:
            if isinstance(ev, ReplyAudio):
                break  # the person starts speaking: stop listening to the reply
        await agen.aclose()
        n_tts = sum(s.startswith("tts:") for s in log.items)
        stopped = await asyncio.to_thread(llm.stopped.wait, 5.0)
        await asyncio.sleep(0.2)
        assert sum(s.startswith("tts:") for s in log.items) <= n_tts + 1
        return stopped, [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    stopped, tasks = asyncio.run(run())
    a.close()
    assert stopped, "the LLM generator kept running after barge-in"
    assert tasks == []


def test_speculative_work_discarded_when_speech_resumes():
    log = Log()
    llm = FakeLlm(log, ["It is sunny."])
    # pause after 5 chunks (speculative response on "what is the weather"), speech resumes,
    # the person finishes "turn on the kitchen light", the turn ends.
    script = {1: "speech_start", 5: "pause", 7: "speech_resume", 12: "pause", 14: "speech_end"}
    a, made = make(log, llm, script)
    events = asyncio.run(collect(a.run_turn(mic(20, pace=0.02))))
    a.close()
    end = events[-1]
    assert isinstance(end, TurnEnd)
    assert end.trace.info["speculative_discarded"] == 1
    assert end.transcript == "turn on the kitchen light"
    assert end.trace.info["intent"] == "HassTurnOn"
    # the handler acted exactly once, for the committed turn; nothing of the discarded
    # speculative answer reached the output
    assert [s for s in log.items if s.startswith("handle:")] == ["handle:HassTurnOn"]
    assert all("sunny" not in e.text for e in events if isinstance(e, ReplyText))
    # a command understood speculatively shortened the end-of-turn wait
    assert a.cfg.vad.eot_short_ms in made[0].eot_ms


def test_handlers_never_act_before_commit():
    log = Log()
    llm = FakeLlm(log, ["ok."])
    script = {1: "speech_start", 12: "pause", 14: "speech_resume"}  # no end: audio stops

    async def run():
        a, _ = make(log, llm, script)
        agen = a.run_turn(mic(16, pace=0.02))
        async for ev in agen:
            if isinstance(ev, SpeechEnded):
                break
        await agen.aclose()
        a.close()

    asyncio.run(run())
    assert not any(s.startswith("handle:") for s in log.items)


def test_no_speech():
    log = Log()
    a, _ = make(log, FakeLlm(log, ["x"]), {})
    events = asyncio.run(collect(a.run_turn(mic(5))))
    a.close()
    assert len(events) == 1 and events[0].error == "no speech"
    assert not any(s.startswith(("asr", "llm", "tts")) for s in log.items)


def test_crashed_model_gives_spoken_apology_and_next_turn_works():
    log = Log()

    class CrashingLlm(FakeLlm):
        def reply_stream(self, text, session="default", trace=None):
            raise RuntimeError("model worker died")
            yield  # pragma: no cover

    a, _ = make(log, CrashingLlm(log, []), {1: "speech_start", 3: "speech_end"})
    events = asyncio.run(collect(a.run_turn(mic(5))))
    end = events[-1]
    assert end.error and "model worker died" in end.error
    assert any(isinstance(e, ReplyAudio) for e in events)
    events = asyncio.run(collect(a.run_text("turn on the kitchen light")))
    a.close()
    assert events[-1].error is None and events[-1].reply == "Turning on the kitchen light."


def test_baseline_mode_is_sequential():
    log = Log()
    llm = FakeLlm(log, ["The sky ", "is blue, ", "because of ", "scattering. ", "More."])
    a, made = make(log, llm, {1: "speech_start", 4: "speech_end"})
    events = asyncio.run(collect(a.run_turn(mic(8), mode="baseline")))
    a.close()
    assert log.index("llm:done") < log.index("tts:")
    assert made[0].eot_ms == [a.cfg.vad.eot_silence_ms]
    assert sum(isinstance(e, ReplyText) for e in events) == 1


def test_no_threads_leak_after_close():
    before = threading.active_count()
    for _ in range(3):
        log = Log()
        a, _ = make(log, FakeLlm(log, ["a b c."]), {1: "speech_start", 3: "speech_end"})
        asyncio.run(collect(a.run_turn(mic(5))))
        a.close()
    assert threading.active_count() <= before


class FakeGrammar:
    """A constrained recognizer that knows one sentence."""

    def __init__(self, log: Log, hears: bool):
        self.log, self.hears, self.fed = log, hears, 0
        self.last = self.peeked = None

    def start(self):
        self.fed = 0

    def feed(self, samples):
        self.fed += len(samples)

    def peek(self):
        self.peeked = type("H", (), {"text": "turn on the kitchen light"})()
        return self.finish_result() if self.hears else None

    def finish_result(self):
        return IntentResult("HassTurnOn", {"name": "kitchen light"}, "turn on the kitchen light",
                            source="grammar")

    def finish(self):
        self.log.add(f"grammar:{self.fed}")
        if not self.hears:
            return None
        self.last = type("H", (), {"text": "turn on the kitchen light"})()
        return IntentResult("HassTurnOn", {"name": "kitchen light"}, "turn on the kitchen light",
                            source="grammar")


@pytest.mark.parametrize("hears", [True, False])
def test_speech_intent_answers_without_open_transcription(hears):
    log = Log()
    a, _ = make(log, FakeLlm(log, ["It is sunny."]), {1: "speech_start", 9: "speech_end"})
    a._grammar_factory = lambda: FakeGrammar(log, hears)
    a.cfg.vad.speculative_ms = 10_000  # no speculative decode in this test
    a.cfg.asr.streaming = False
    events = asyncio.run(collect(a.run_turn(mic(12))))
    a.close()
    end = events[-1]
    grammar_calls = [s for s in log.items if s.startswith("grammar:")]
    assert len(grammar_calls) == 1 and int(grammar_calls[0].split(":")[1]) >= 8 * 512
    if hears:
        assert end.trace.info.get("speech_intent") is True
        assert not any(s.startswith("asr:") for s in log.items)  # Whisper never ran
        assert end.reply == "Turning on the kitchen light."
    else:  # outside the templates: open transcription decides
        assert any(s.startswith("asr:") for s in log.items)
        assert "speech_intent" not in end.trace.info


def test_partial_covering_the_speech_is_reused_as_final():
    """When a partial decode already heard all the speech, no second decode runs."""
    log = Log()

    class CoveringEndpointer(ScriptedEndpointer):
        speech_samples = 4 * 512  # the speech ends early in the utterance

    cfg_script = {1: "speech_start", 14: "pause", 16: "speech_end"}
    a, made = make(log, FakeLlm(log, ["ok."]), cfg_script)
    a._vad_factory = lambda: made.append(CoveringEndpointer(cfg_script)) or made[-1]
    events = asyncio.run(collect(a.run_turn(mic(20, pace=0.03))))
    a.close()
    end = events[-1]
    assert end.trace.info.get("partial_reused") is True
    asr_calls = [s for s in log.items if s.startswith("asr:")]
    # every decode was a partial launched during speech: none was started at the pause
    assert asr_calls and all(int(c.split(":")[1]) < 14 for c in asr_calls)
    assert end.transcript == "turn on the kitchen light"


def test_grammar_partial_at_the_pause_prepares_the_answer_and_shortens_the_turn():
    log = Log()
    a, made = make(log, FakeLlm(log, ["It is sunny."]),
                   {1: "speech_start", 6: "pause", 9: "speech_end"})
    a._grammar_factory = lambda: FakeGrammar(log, True)
    a.cfg.asr.streaming = False
    events = asyncio.run(collect(a.run_turn(mic(12, pace=0.02))))
    a.close()
    end = events[-1]
    assert end.trace.info.get("speculative_used") is True
    assert a.cfg.vad.eot_short_ms in made[0].eot_ms
    assert not any(s.startswith("asr:") for s in log.items)
    assert [s for s in log.items if s.startswith("handle:")] == ["handle:HassTurnOn"]


def test_partials_run_on_the_partial_engine_and_the_final_on_the_main_one():
    """With a separate partial engine (hark serve's default: an idle-class Whisper), every
    decode made while the person speaks goes to it, on its own thread, and the decode at
    the pause goes to the main engine, so a partial still running never queues before it."""
    import threading

    log = Log()
    threads: dict[str, set[str]] = {"main": set(), "partial": set()}

    class Recording(FakeAsr):
        def __init__(self, log, name):
            super().__init__(log)
            self.name = name

        def transcribe(self, samples, prompt=""):
            threads[self.name].add(threading.current_thread().name)
            self.log.add(f"{self.name}:{len(samples) // 512}")
            return super().transcribe(samples, prompt)


    script = {1: "speech_start", 14: "pause", 18: "speech_end"}
    cfg = Config()
    cfg.asr.partial_interval_ms = 64
    cfg.asr.partial_min_ms = 0
    a = Assistant(cfg, vad_factory=lambda: ScriptedEndpointer(script),
                  asr=Recording(log, "main"), nlu=FakeNlu(), handlers=FakeHandlers(log),
                  llm=FakeLlm(log, ["ok."]), tts=FakeTts(log),
                  partial_asr=Recording(log, "partial"))
    events = asyncio.run(collect(a.run_turn(mic(24, pace=0.03))))
    a.close()
    assert isinstance(events[-1], TurnEnd) and events[-1].error is None
    partial = [int(s.split(":")[1]) for s in log.items if s.startswith("partial:")]
    main = [int(s.split(":")[1]) for s in log.items if s.startswith("main:")]
    assert partial and all(n < 14 for n in partial)  # while speaking
    assert main and all(n >= 14 for n in main)  # at the pause: the whole utterance
    assert threads["main"] and threads["partial"]
    assert not threads["main"] & threads["partial"]  # two threads, no queue between them


class SilenceTts(FakeTts):
    """Like Piper: every phrase comes with 60 ms of silence before and 250 ms after."""

    def synthesize(self, text: str):
        self.log.add(f"tts:{text}")
        yield AudioChunk(np.concatenate([np.zeros(960, np.int16), np.full(1600, 5000, np.int16),
                                         np.zeros(4000, np.int16)]), 16000, time.monotonic())


def test_spoken_phrases_start_at_once_and_a_phrase_cut_mid_sentence_flows_on():
    log = Log()
    llm = FakeLlm(log, ["Romeo ", "and ", "Juliet ", "were ", "written ", "by ", "William ",
                        "Shakespeare."], delay=0.005)
    a, _ = make(log, llm, {1: "speech_start", 4: "speech_end"})
    a.tts = SilenceTts(log)
    a.cfg.tts.first_chunk_max_words = 3
    events = asyncio.run(collect(a.run_turn(mic(10))))
    a.close()
    spoken: list[tuple[str, int]] = []  # (phrase, samples of its audio)
    for e in events:
        if isinstance(e, ReplyText):
            spoken.append((e.text, 0))
        elif isinstance(e, ReplyAudio) and spoken:
            spoken[-1] = (spoken[-1][0], spoken[-1][1] + len(e.chunk.samples))
    assert spoken == [
        ("Romeo and Juliet", 240 + 1600 + 640),  # 15 ms before, 40 ms after: flows on
        ("were written by William Shakespeare.", 240 + 1600 + 4000),  # a sentence's pause
    ]


def test_the_llm_is_held_while_the_first_phrase_is_synthesized():
    log = Log()

    class HoldingLlm(FakeLlm):
        def hold(self, on: bool) -> None:
            self.log.add(f"hold:{on}")

    llm = HoldingLlm(log, ["The sky ", "is blue, ", "because of ", "Rayleigh ", "scattering. ",
                           "Short waves ", "scatter ", "more."])
    a, _ = make(log, llm, {1: "speech_start", 4: "speech_end"})
    asyncio.run(collect(a.run_turn(mic(10))))
    a.close()
    tts = [i for i, e in enumerate(log.items) if e.startswith("tts:")]
    holds = [i for i, e in enumerate(log.items) if e.startswith("hold:")]
    assert len(tts) >= 2 and [log.items[i] for i in holds] == ["hold:True", "hold:False"]
    assert holds[0] < tts[0] < holds[1] < tts[1]  # around the first phrase only
    # and not at all when turned off
    log2 = Log()
    llm2 = HoldingLlm(log2, ["The sky ", "is blue, ", "because of ", "Rayleigh ", "scattering."])
    b, _ = make(log2, llm2, {1: "speech_start", 4: "speech_end"})
    b.cfg.llm.hold_for_first_phrase = False
    asyncio.run(collect(b.run_turn(mic(10))))
    b.close()
    assert not any(e.startswith("hold:") for e in log2.items)


class SilenceScriptedEndpointer(ScriptedEndpointer):
    """Also says how long the silence has lasted (``silence``: chunk -> ms) and where the
    speech ended (``speech_samples``, like the real endpointer)."""

    def __init__(self, script: dict[int, str], silence: dict[int, float]):
        super().__init__(script)
        self.silence = silence
        self.speech_until = 0

    @property
    def speech_samples(self) -> int:
        return self.speech_until

    @property
    def silence_ms(self) -> float:
        return self.silence.get(self.n, 0.0)

    def process(self, chunk: AudioChunk) -> list[VadEvent]:
        events = super().process(chunk)
        if not self.silence.get(self.n):
            self.speech_until = 512 * self.n
        return events


def _early_turn(script, silence, partial_s: float = 0.0):
    log = Log()

    class Named(FakeAsr):
        def __init__(self, log, name, took=0.0):
            super().__init__(log)
            self.name, self.took = name, took

        def transcribe(self, samples, prompt=""):
            self.log.add(f"{self.name}:{len(samples) // 512}")
            time.sleep(self.took)
            return super().transcribe(samples, prompt)

    cfg = Config()
    cfg.asr.partial_min_ms = 10_000  # no partial decodes while speaking: only the early one
    a = Assistant(cfg, vad_factory=lambda: SilenceScriptedEndpointer(script, silence),
                  asr=Named(log, "main"), nlu=FakeNlu(), handlers=FakeHandlers(log),
                  llm=FakeLlm(log, ["ok."]), tts=FakeTts(log),
                  partial_asr=Named(log, "partial", partial_s))
    events = asyncio.run(collect(a.run_turn(mic(24, pace=0.03))))
    a.close()
    assert isinstance(events[-1], TurnEnd) and events[-1].error is None
    return log, events[-1]


def test_a_decode_begun_in_the_first_silence_is_the_transcript_when_the_pause_follows():
    # speech until chunk 11, silence from 12 (64 ms at 13, when the early decode starts),
    # the pause at 14
    log, end = _early_turn({1: "speech_start", 14: "pause", 18: "speech_end"},
                           {12: 32.0, 13: 64.0, 14: 96.0, 15: 128.0, 16: 160, 17: 192, 18: 224})
    assert "partial:13" in log.items  # on the idle engine, at 64 ms of silence
    assert not any(s.startswith("main:") for s in log.items)  # no second decode
    assert end.transcript == "turn on the kitchen light" and end.trace.info.get("partial_reused")


def test_an_early_decode_that_speech_went_on_after_is_only_a_partial():
    # a 64 ms dip at chunks 7-8 starts an early decode (slow: still running at the real
    # silence, so no second one starts); speech goes on until 11: the pause's decode, on
    # the main engine, hears all of it
    log, end = _early_turn({1: "speech_start", 14: "pause", 18: "speech_end"},
                           {7: 32.0, 8: 64.0, 12: 32.0, 13: 64.0, 14: 96.0, 15: 128.0,
                            16: 160, 17: 192, 18: 224}, partial_s=0.4)
    assert [s for s in log.items if s.startswith("partial:")] == ["partial:8"]
    assert [s for s in log.items if s.startswith("main:")] == ["main:14"]
    assert end.transcript == "turn on the kitchen light"


class GuessingNlu(FakeNlu):
    """The paraphrase fallback's guesses: a device class or a name nobody said."""

    def recognize(self, text: str, context=None, paraphrase: bool = True):
        if "my life" in text:
            return IntentResult("HassTurnOff", {"area": "bedroom", "domain": "cover"}, text,
                                source="embedding")
        if "leaving room" in text:
            return IntentResult("HassTurnOn", {"name": "kitchen light"}, text, source="fuzzy")
        return super().recognize(text, context, paraphrase)


def _text_turn(a: Assistant, text: str, session: str = "s") -> list:
    return asyncio.run(collect(a.run_text(text, session=session)))


def test_a_guessed_target_is_never_acted_on_and_a_yes_confirms_a_guessed_name():
    from hark.nlu.home import Area, Entity, Home

    log = Log()
    a = Assistant(Config(), vad_factory=lambda: None, asr=FakeAsr(log), nlu=GuessingNlu(),
                  handlers=FakeHandlers(log), llm=FakeLlm(log, ["Sure, done!"]),
                  tts=FakeTts(log),
                  home=Home([Area("bedroom"), Area("kitchen")],
                            [Entity("kitchen light", "light", "kitchen"),
                             Entity("bedroom blinds", "cover", "bedroom")]))
    end = _text_turn(a, "turn off my life in the bedroom")[-1]
    assert end.reply == "Sorry, what should I turn off in the bedroom?"
    assert end.trace.info["intent"] == "clarify"
    # a command-shaped sentence nothing understood: not the LLM's to dress up
    end = _text_turn(a, "turn off the t-me")[-1]
    assert end.reply == "Sorry, I didn't catch that." and "llm:start" not in log.items
    # a misheard name: one short question, and the yes runs what was asked
    end = _text_turn(a, "leaving room")[-1]
    assert end.reply == "The kitchen light?"
    assert not any(s.startswith("handle:") for s in log.items)
    assert _text_turn(a, "yes", session="other")[-1].reply != "Turning on the kitchen light."
    end = _text_turn(a, "yes please")[-1]
    assert end.reply == "Turning on the kitchen light." and end.trace.info.get("confirmed")
    assert [s for s in log.items if s.startswith("handle:")] == ["handle:HassTurnOn"]
    _text_turn(a, "yes")  # asked once, answered once
    assert log.items.count("handle:HassTurnOn") == 1
    a.close()


def test_a_command_not_understood_is_decoded_again_with_the_home_prompt():
    """The first decode heard 'turn off the t-me' (a command, not understood); decoded
    again with the home's words in the prompt it is 'turn on the kitchen light'. A
    question is never decoded again."""
    log = Log()

    class PromptedAsr(FakeAsr):
        def transcribe(self, samples, prompt=""):
            self.log.add(f"asr:{prompt!r}")
            if "kitchen light" in prompt:
                return "turn on the kitchen light"
            return "why is the sky blue" if len(samples) < 4 * 512 else "turn off the t-me"

    for chunks, expect in ((6, "Turning on the kitchen light."), (2, "It is blue.")):
        log.items.clear()
        a = Assistant(Config(), vad_factory=lambda: ScriptedEndpointer(
                          {1: "speech_start", chunks: "speech_end"}),
                      asr=PromptedAsr(log), nlu=FakeNlu(), handlers=FakeHandlers(log),
                      llm=FakeLlm(log, ["It is blue."]), tts=FakeTts(log))
        a.rescue_prompt = "Turn on the kitchen light."
        events = asyncio.run(collect(a.run_turn(mic(chunks + 2))))
        a.close()
        assert events[-1].reply == expect
        decodes = [s for s in log.items if s.startswith("asr:")]
        if expect.startswith("Turning"):
            assert decodes == ["asr:''", "asr:'Turn on the kitchen light.'"]
            assert events[-1].trace.info["asr_rescue"]["acts"] is True
        else:
            assert decodes == ["asr:''"]


@pytest.mark.parametrize("logprob,answered", [(-0.1, True), (-1.2, False)])
def test_a_question_heard_unsurely_is_asked_again_not_answered(logprob, answered):
    log = Log()
    asr = FakeAsr(log)
    asr.avg_logprob = logprob
    a = Assistant(Config(), vad_factory=lambda: ScriptedEndpointer(
                      {1: "speech_start", 3: "speech_end"}),
                  asr=asr, nlu=FakeNlu(), handlers=FakeHandlers(log),
                  llm=FakeLlm(log, ["It is sunny."]), tts=FakeTts(log))
    end = asyncio.run(collect(a.run_turn(mic(5))))[-1]
    a.close()
    assert end.transcript == "what is the weather"
    if answered:
        assert end.reply == "It is sunny." and end.trace.info["intent"] == "LLM"
    else:
        assert end.reply == "Sorry, could you say that again?"
        assert end.trace.info["intent"] == "clarify" and "llm:start" not in log.items


def test_tts_cache_keeps_the_most_recently_used_phrases():
    from hark.pipeline.assistant import _TtsCache

    cache = _TtsCache(size=2)
    ok, done, sure = [np.ones(3, np.int16)], [np.zeros(2, np.int16)], [np.ones(1, np.int16)]
    cache.put("OK.", ok)
    cache.put("Done.", done)
    assert cache.get("  ok. ") is ok  # case and surrounding spaces are not the phrase
    cache.put("Sure.", sure)  # "done." was used least recently: it goes
    assert cache.get("done.") is None
    assert cache.get("ok.") is ok and cache.get("sure.") is sure
