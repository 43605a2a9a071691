"""Silero VAD (v5/v6 ONNX) on onnxruntime, one 32 ms frame at a time, without torch.

The v5/v6 networks take 512 new samples at 16 kHz *plus the last 64 samples of the
previous frame* (the "context"), 576 samples in all, and carry a recurrent state between
calls. Two ONNX exports exist and both are handled:

- faster-whisper's ``silero_vad_v6.onnx``: inputs ``input`` (n, 576), ``h`` and ``c``
  (1, 1, 128 each); outputs ``speech_probs``, ``hn``, ``cn``;
- the silero-vad package's ``silero_vad.onnx``: inputs ``input`` (n, 576), ``state``
  (2, 1, 128) and ``sr`` (int64); outputs the probability and ``stateN``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hark.config import Config
from hark.errors import AudioError, ModelError
from hark.models.store import resolve

FRAME_SAMPLES = 512  # 32 ms at 16 kHz: the only frame size v5/v6 accept at this rate
CONTEXT_SAMPLES = 64
SAMPLE_RATE = 16000


class SileroVad:
    """Speech probability per 512-sample int16 frame (implements ``VadEngine``).

    Stateful: frames must be fed in stream order; call :meth:`reset` between streams.
    Not thread-safe (one instance per audio stream).
    """

    frame_samples: int = FRAME_SAMPLES

    def __init__(self, model_path: str | Path, threads: int = 1):
        import onnxruntime

        path = Path(model_path)
        if not path.is_file():
            raise ModelError(f"Silero VAD model {path} does not exist",
                             fix="hark models pull silero-vad-v6")
        opts = onnxruntime.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load Silero VAD model {path}: {exc}",
                             fix="hark models verify silero-vad-v6, or hark models pull "
                             "silero-vad-v6 --force") from exc
        names = {i.name for i in self._session.get_inputs()}
        if {"input", "h", "c"} <= names:
            self._style = "hc"  # faster-whisper export
        elif {"input", "state", "sr"} <= names:
            self._style = "state"  # silero-vad package export
        else:
            raise ModelError(f"{path} is not a Silero VAD v5/v6 model (inputs {sorted(names)})",
                             fix="set vad.model to silero-vad-v6 or a Silero v5/v6 .onnx file")
        self._sr = np.array(SAMPLE_RATE, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget the recurrent state and the audio context (start of a new stream)."""
        if self._style == "hc":
            self._h = np.zeros((1, 1, 128), dtype=np.float32)
            self._c = np.zeros((1, 1, 128), dtype=np.float32)
        else:
            self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)

    def probability(self, frame: np.ndarray) -> float:
        """Speech probability (0..1) of one int16 frame of exactly 512 samples."""
        if frame.shape != (FRAME_SAMPLES,):
            raise AudioError(f"Silero VAD takes frames of {FRAME_SAMPLES} samples at 16 kHz, "
                             f"got shape {frame.shape}")
        audio = frame.astype(np.float32) / 32768.0 if frame.dtype == np.int16 else \
            frame.astype(np.float32)
        x = np.concatenate([self._context, audio])[None, :]
        if self._style == "hc":
            out, self._h, self._c = self._session.run(
                None, {"input": x, "h": self._h, "c": self._c})
        else:
            out, self._state = self._session.run(
                None, {"input": x, "state": self._state, "sr": self._sr})
        self._context = audio[-CONTEXT_SAMPLES:]
        return float(np.asarray(out).reshape(-1)[0])

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities for consecutive frames of a whole int16 clip (last frame padded);
        continues from the current state."""
        n = -(-len(samples) // FRAME_SAMPLES)
        padded = np.zeros(n * FRAME_SAMPLES, dtype=np.int16)
        padded[:len(samples)] = samples
        return np.array([self.probability(padded[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES])
                         for i in range(n)], dtype=np.float32)


def load_vad(cfg: Config) -> SileroVad:
    """The VAD engine named by ``cfg.vad.model`` (catalogue name or .onnx path)."""
    ref = cfg.vad.model
    if ref.endswith(".onnx") and not Path(ref).expanduser().exists():
        raise ModelError(f"VAD model file '{ref}' does not exist",
                         fix="hark models pull silero-vad-v6, then set vad.model = "
                         "\"silero-vad-v6\" (or a path to a Silero v5/v6 .onnx file)")
    path = resolve(ref, cfg.models_dir, kind="vad")
    return SileroVad(path, threads=cfg.vad.threads)
