"""Piper text-to-speech (onnxruntime), one audio chunk per sentence as it is made."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from hark.audio import AudioChunk
from hark.errors import ModelError

log = logging.getLogger(__name__)


class PiperTts:
    """Piper voice. ``synthesize`` yields a chunk per sentence, so the first sentence can
    play while the next is synthesized."""

    def __init__(self, model_path: str | Path, length_scale: float = 1.0, use_cuda: bool = False,
                 deterministic: bool = False):
        """``deterministic``: no random variation (VITS noise off), so one text always
        gives the same audio (tests); otherwise each synthesis varies a little, as
        Piper intends."""
        from piper import PiperVoice
        from piper.config import SynthesisConfig

        path = Path(model_path)
        if not path.is_file():
            raise ModelError(f"Piper voice {path} not found", fix="hark models pull")
        try:
            self.voice = PiperVoice.load(path, use_cuda=use_cuda)
        except Exception as exc:
            raise ModelError(f"Piper voice {path} failed to load: {exc}",
                             fix="hark models verify; hark models pull --force") from exc
        self.sample_rate: int = self.voice.config.sample_rate
        self._syn = (SynthesisConfig(length_scale=length_scale, noise_scale=0.0,
                                     noise_w_scale=0.0) if deterministic
                     else SynthesisConfig(length_scale=length_scale))
        self._lock = threading.Lock()  # one onnxruntime session: one synthesis at a time

    def synthesize(self, text: str) -> Iterator[AudioChunk]:
        text = text.strip()
        if not text:
            return
        with self._lock:
            for chunk in self.voice.synthesize(text, self._syn):
                yield AudioChunk(chunk.audio_int16_array.reshape(-1), self.sample_rate,
                                 time.monotonic())

    def warm_up(self) -> None:
        for _ in self.synthesize("Ready."):
            pass


def load_tts(cfg, deterministic: bool = False):
    """The TTS engine named in ``cfg.tts``: Piper in this process, or with
    ``tts.engine = "wyoming"`` the remote service (:class:`hark.tts.wyoming.WyomingTts`;
    ``deterministic`` is then up to the service)."""
    from hark.models.store import resolve

    if cfg.tts.engine == "wyoming":
        from hark.tts.wyoming import load_wyoming_tts

        return load_wyoming_tts(cfg)
    if cfg.tts.engine != "piper":
        raise ModelError(f"unknown tts.engine '{cfg.tts.engine}'", fix='set tts.engine = "piper"')
    path = resolve(cfg.tts.voice, cfg.models_dir, kind="tts")
    return PiperTts(path, cfg.tts.length_scale, cfg.tts.use_cuda, deterministic)
