"""Speech-to-text on a remote Wyoming ASR service (``asr.backend = "wyoming"``), such as
``wyoming-faster-whisper`` on a household's GPU box.

One decode is one Wyoming request on its own connection: ``transcribe``, then the audio
(``audio-start``, ``audio-chunk``..., ``audio-stop``), answered by ``transcript``.
Partial transcripts while the person speaks (``asr.streaming``) are the same request on
the utterance so far, each one a round trip; they run on their own stage thread, so one
in flight never holds up the final decode on hark's side (the service decides how it
serves two requests at once).

What a Wyoming transcript does not carry, hark does without: there is no confidence
(``AsrResult.avg_logprob`` is None, so ``asr.question_min_logprob`` does not apply) and
no prompt (``asr.initial_prompt`` and ``asr.home_prompt`` are Whisper-only).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop

from hark.asr.base import AsrResult
from hark.errors import AudioError
from hark.wyoming_client import BoundedClient, WyomingPeer, WyomingServiceError, installed_names

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
MIN_SAMPLES = SAMPLE_RATE // 10  # under 0.1 s nothing can be said (as WhisperAsr)
SILENT_PEAK = 16  # int16 peak at or below this is digital silence
CHUNK_SAMPLES = 8000  # 0.5 s per audio-chunk (16 KB, well under any payload cap)
MAX_TRANSCRIPT_CHARS = 4000  # a longer transcript is refused (15 s of speech is ~300)


class WyomingAsr:
    """A remote Wyoming ASR service (implements ``hark.asr.base.AsrEngine``). Thread
    safe: each decode has its own connection. ``model``: the service's model name
    ("" = its default); ``language``: sent with each request ("" = the service's)."""

    def __init__(self, uri: str, *, language: str = "en", model: str = "",
                 timeout_s: float = 15.0, connect_timeout_s: float = 3.0):
        self.peer = WyomingPeer(uri, "ASR", timeout_s=timeout_s,
                                connect_timeout_s=connect_timeout_s, where="asr.wyoming_uri")
        self.language = language
        self.model = model
        self.model_name = f"wyoming {uri}"

    def __repr__(self) -> str:
        return f"WyomingAsr({self.peer.uri})"

    def decode(self, samples: np.ndarray, prompt: str = "", prefix: str = "") -> AsrResult:
        """Decode int16 (or float -1..1) 16 kHz mono audio on the service. ``prompt`` and
        ``prefix`` are not sent (Wyoming has no field for them). Empty, very short or
        silent audio is "" without a request. Raises :class:`WyomingServiceError`."""
        audio = _as_int16(samples)
        dur = len(audio) / SAMPLE_RATE
        if len(audio) < MIN_SAMPLES or int(np.abs(audio.astype(np.int32)).max()) <= SILENT_PEAK:
            return AsrResult("", audio_s=dur, avg_logprob=None)
        t0 = time.perf_counter()
        text = self.peer.call(lambda client: self._transcribe(client, audio))
        return AsrResult(text.strip(), no_speech_prob=0.0, avg_logprob=None, audio_s=dur,
                         decode_s=time.perf_counter() - t0)

    async def _transcribe(self, client: BoundedClient, audio: np.ndarray) -> str:
        await client.write_event(Transcribe(name=self.model or None,
                                            language=self.language or None).event())
        await client.write_event(AudioStart(rate=SAMPLE_RATE, width=2, channels=1).event())
        data = audio.astype("<i2").tobytes()
        step = CHUNK_SAMPLES * 2
        for i in range(0, len(data), step):
            await client.write_event(AudioChunk(rate=SAMPLE_RATE, width=2, channels=1,
                                                audio=data[i:i + step]).event())
        await client.write_event(AudioStop().event())
        while True:
            event = await self.peer.read(client, "a transcript")
            if Transcript.is_type(event.type):
                text = event.data.get("text")
                if not isinstance(text, str):
                    raise WyomingServiceError(f"ASR service {self.peer.uri} sent a "
                                              "transcript without text")
                if len(text) > MAX_TRANSCRIPT_CHARS:
                    raise WyomingServiceError(
                        f"ASR service {self.peer.uri} sent a transcript of {len(text)} "
                        f"characters (more than {MAX_TRANSCRIPT_CHARS}): refused")
                return text
            # transcript-start / transcript-chunk (streaming services) and anything else:
            # the final transcript follows

    def transcribe(self, samples: np.ndarray, prompt: str = "") -> str:
        """Decode audio to text (blocking); "" when there is no speech."""
        return self.decode(samples, prompt).text

    def check(self) -> str:
        """Ask the service what it is (``describe``); raise :class:`WyomingServiceError`
        unless it offers speech-to-text. Returns a one-line description."""
        info = self.peer.info()
        if not info.asr:
            raise WyomingServiceError(
                f"the service at {self.peer.uri} offers no speech-to-text (its info "
                "lists no asr program)", fix="point asr.wyoming_uri at a Wyoming ASR "
                "service such as wyoming-faster-whisper")
        prog = info.asr[0]
        models = installed_names(info.asr)
        return f"{prog.name} {prog.version or ''}".strip() + (
            f", models {', '.join(models[:4])}" if models else "")

    def warm_up(self) -> None:
        """Check the service is an ASR service and decode one second of noise, so the
        first real request does not pay for the service's lazy setup."""
        self.check()
        rng = np.random.default_rng(0)
        self.decode(rng.normal(0, 300, SAMPLE_RATE).astype(np.int16))


def _as_int16(samples: np.ndarray) -> np.ndarray:
    a = np.asarray(samples)
    if a.ndim != 1:
        if a.ndim == 2 and 1 in a.shape:
            a = a.reshape(-1)
        else:
            raise AudioError(f"ASR takes mono audio, got an array of shape {np.shape(samples)}")
    if a.dtype == np.int16:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return (np.clip(a, -1.0, 1.0) * 32767.0).astype(np.int16)
    raise AudioError(f"ASR takes int16 or float audio, got {a.dtype}")


def load_wyoming_asr(cfg) -> WyomingAsr:
    """The remote engine configured by ``cfg.asr`` (``backend = "wyoming"``)."""
    a = cfg.asr
    return WyomingAsr(a.wyoming_uri, language=a.language, model=a.wyoming_model,
                      timeout_s=a.wyoming_timeout_s)
