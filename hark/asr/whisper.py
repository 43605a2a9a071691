"""Whisper speech-to-text on faster-whisper (CTranslate2), tuned for short spoken commands.

Decode options for short (1-5 s) utterances: greedy search (``beam_size`` from config,
1 by default), no timestamps, no conditioning on earlier text, no temperature fallback,
no built-in VAD (hark's endpointer already cut the utterance), and a cap on new tokens
proportional to the audio length.

The audio is always encoded in Whisper's full 30 s window. Encoding only the utterance
is faster, but tiny.en then loops ("Stop. Stop. Stop. ...") or drops and changes words
on short commands, so it is not offered (the comparison: docs/ARCHITECTURE.md,
"Measurements behind the defaults").

Silence and noise: faster-whisper drops a segment whose ``no_speech_prob`` is above 0.6
while its average log-probability is below -1; on top of that, the classic Whisper
fillers ("you", "Thank you.") are dropped when the decoder was unsure of them.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from hark.asr.base import AsrResult
from hark.config import AsrConfig, Config
from hark.errors import AudioError, ModelError
from hark.models.store import resolve

if TYPE_CHECKING:
    from hark.nlu.home import Home

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIN_SAMPLES = SAMPLE_RATE // 10  # under 0.1 s nothing can be said
MAX_TOKENS_PER_S = 10
SILENT_PEAK = 16  # int16 peak at or below this is digital silence (about -66 dBFS)

# What Whisper writes on silence or noise. Dropped only when the decoder was unsure, so a
# person who really says "thank you" is still heard.
HALLUCINATIONS = {
    "you", "thank you", "thanks", "thank you very much", "thanks for watching",
    "thank you for watching", "bye", "so", "uh", "um", "hmm", "i", "the", "oh",
}
UNSURE_NO_SPEECH = 0.3
UNSURE_LOGPROB = -0.7


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


class WhisperAsr:
    """Blocking Whisper decoder (implements ``hark.asr.base.AsrEngine``).

    ``model`` is a CTranslate2 model folder, or a hub name (faster-whisper downloads it;
    needs internet). One instance may be shared by threads; CTranslate2 serialises work.
    """

    def __init__(self, model: str, device: str = "cpu", compute_type: str = "int8",
                 beam_size: int = 1, threads: int = 2, language: str = "en",
                 initial_prompt: str = ""):
        from faster_whisper import WhisperModel

        is_path = Path(model).expanduser().exists()
        try:
            self.model = WhisperModel(model, device=device, compute_type=compute_type,
                                      cpu_threads=threads, num_workers=1,
                                      local_files_only=is_path)
        except Exception as exc:  # CTranslate2 / huggingface_hub raise many kinds
            where = "folder" if is_path else "hub model"
            raise ModelError(
                f"cannot load the Whisper {where} '{model}': {exc}",
                fix="hark models pull whisper-tiny.en (and set asr.model = \"whisper-tiny.en\"),"
                " or point asr.model at a CTranslate2 Whisper folder",
            ) from exc
        self.model_name = model
        self.beam_size = max(1, beam_size)
        self.language = language if self.model.model.is_multilingual else "en"
        self.initial_prompt = initial_prompt

    # --- decoding --------------------------------------------------------------------------

    def decode(self, samples: np.ndarray, prompt: str = "", prefix: str = "") -> AsrResult:
        """Decode int16 (or float -1..1) 16 kHz mono audio.

        ``prompt``: text said *before* this audio (vocabulary / context hint);
        ``prefix``: words this audio is known to start with; the decoder is forced to
        begin with them (the streaming transcriber passes its committed words).
        Returns an empty text for empty, very short, silent or noise-only audio.
        """
        audio = self._as_float(samples)
        dur = len(audio) / SAMPLE_RATE
        if len(audio) < MIN_SAMPLES or float(np.abs(audio).max()) * 32768 <= SILENT_PEAK:
            return AsrResult("", audio_s=dur)
        full_prompt = " ".join(p for p in (self.initial_prompt.strip(), prompt.strip()) if p)
        t0 = time.perf_counter()
        segments, _info = self.model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            temperature=0.0,  # no fallback re-decodes: they cost seconds on a CPU
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
            initial_prompt=full_prompt or None,
            prefix=prefix.strip() or None,
            # a bound on runaway loops: even fast speech is under ~6 tokens a second
            max_new_tokens=min(int(dur * MAX_TOKENS_PER_S) + 16, 200),
        )
        segments = list(segments)  # the generator does the work
        elapsed = time.perf_counter() - t0
        if not segments:
            return AsrResult("", audio_s=dur, decode_s=elapsed)
        text = " ".join(s.text.strip() for s in segments).strip()
        no_speech = max(s.no_speech_prob for s in segments)
        logprob = float(np.mean([s.avg_logprob for s in segments]))
        if not prefix and _words(text) in HALLUCINATIONS and (
                no_speech > UNSURE_NO_SPEECH or logprob < UNSURE_LOGPROB):
            log.debug("dropped likely hallucination %r (no_speech %.2f, logprob %.2f)",
                      text, no_speech, logprob)
            text = ""
        return AsrResult(text, no_speech, logprob, dur, elapsed)

    def transcribe(self, samples: np.ndarray, prompt: str = "") -> str:
        """Decode audio to text (blocking); "" when there is no speech."""
        return self.decode(samples, prompt).text

    def warm_up(self) -> None:
        """Run one decode so the first real request does not pay for lazy setup."""
        rng = np.random.default_rng(0)
        self.decode((rng.normal(0, 300, SAMPLE_RATE)).astype(np.int16))

    @staticmethod
    def _as_float(samples: np.ndarray) -> np.ndarray:
        a = np.asarray(samples)
        if a.ndim != 1:
            a = a.reshape(-1) if a.ndim == 2 and 1 in a.shape else None
            if a is None:
                raise AudioError(f"ASR takes mono audio, got an array of shape "
                                 f"{np.shape(samples)}")
        if a.dtype == np.int16:
            return a.astype(np.float32) / 32768.0
        if np.issubdtype(a.dtype, np.floating):
            return np.clip(a.astype(np.float32), -1.0, 1.0)
        raise AudioError(f"ASR takes int16 or float audio, got {a.dtype}")


def _looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or "\\" in ref or ref.endswith((".bin", "/"))


def resolve_asr_model(asr: AsrConfig, models_dir: Path) -> str:
    """Catalogue name -> assembled folder; existing path as is; hub name passed through.
    A path that does not exist raises :class:`ModelError` saying how to get a model."""
    ref = asr.model
    if _looks_like_path(ref) and not Path(ref).expanduser().exists():
        raise ModelError(
            f"ASR model path '{ref}' does not exist",
            fix="hark models pull whisper-tiny.en, then set asr.model = \"whisper-tiny.en\" "
            "(or point asr.model at a CTranslate2 Whisper folder)",
        )
    return resolve(ref, models_dir, kind="asr")


def home_prompt(cfg: Config, home: Home | None = None) -> str:
    """A Whisper prompt for this home: a command in the style of the home's sentences and
    the names of its devices and areas ("" with ``asr.home_prompt`` off). It biases the
    decode toward the home's words: more commands heard right, questions heard worse, so
    the pipeline uses it only to decode again a command it did not understand.
    ``home``: the home in use (one read from Home Assistant), default ``[home]``."""
    if not cfg.asr.home_prompt:
        return ""
    from hark.nlu.home import home_from_config

    home = home if home is not None else home_from_config(cfg.home)
    names = list(dict.fromkeys([e.name for e in home.entities] + [a.name for a in home.areas]))
    if not names:
        return ""
    return "Turn on the kitchen light. Set a timer. " + ", ".join(names) + "."


def load_asr(cfg: Config):
    """The engine configured by ``cfg.asr``: Whisper in this process, or with
    ``asr.backend = "wyoming"`` the remote service (:class:`hark.asr.wyoming.WyomingAsr`)."""
    a = cfg.asr
    if a.backend == "wyoming":
        from hark.asr.wyoming import load_wyoming_asr

        return load_wyoming_asr(cfg)
    return WhisperAsr(resolve_asr_model(a, cfg.models_dir), device=a.device,
                      compute_type=a.compute_type, beam_size=a.beam_size, threads=a.threads,
                      language=a.language, initial_prompt=a.initial_prompt)


def load_idle_asr(cfg: Config, warm: bool = True):
    """A second Whisper engine for partial transcripts, whose compute threads run in the
    idle scheduling class: it uses only CPU nothing else wants, so a partial decode still
    running when the person stops gets only the CPU the final decode leaves.

    CTranslate2 starts its worker thread when the model is constructed, and that thread
    starts the OpenMP team on the first decode; both inherit the class of the thread that
    built the model, so it is built (and warmed up) on a short-lived thread put in
    ``SCHED_IDLE`` first. Returns ``(engine or None, SchedResult)``: None where the class
    is not available (the caller then shares its main engine)."""
    import threading

    from hark.sched import set_idle

    box: dict = {}

    def build() -> None:
        box["sched"] = res = set_idle("asr-partial")
        if not res.ok:
            return
        try:
            box["engine"] = engine = load_asr(cfg)
            if warm:
                engine.warm_up()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            box["error"] = exc

    t = threading.Thread(target=build, name="hark-asr-partial-load")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("engine"), box["sched"]
