"""Audio primitives: the frame type every stage passes around, file I/O, resampling.

Inside hark audio is mono 16-bit PCM held as ``numpy.int16`` arrays. The server works at
16 kHz; TTS produces its voice's own rate (22.05 kHz for Piper's medium voices) and the
output side resamples only where a device needs it.
"""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hark.errors import AudioError

SAMPLE_RATE = 16000


@dataclass
class AudioChunk:
    """A piece of mono int16 audio. ``t`` is the monotonic time its first sample was
    captured (input) or produced (output); 0.0 when unknown."""

    samples: np.ndarray  # int16, shape (n,)
    rate: int = SAMPLE_RATE
    t: float = 0.0

    @property
    def duration(self) -> float:
        return len(self.samples) / self.rate

    def to_bytes(self) -> bytes:
        return self.samples.astype("<i2", copy=False).tobytes()

    @classmethod
    def from_bytes(cls, data: bytes, rate: int = SAMPLE_RATE, t: float = 0.0) -> AudioChunk:
        if len(data) % 2:
            raise AudioError(f"PCM payload of {len(data)} bytes is not whole 16-bit samples")
        return cls(np.frombuffer(data, dtype="<i2").astype(np.int16), rate, t)


class SampleClock:
    """When a stream's samples were captured or played, from how many came before.

    A callback that runs late (a busy interpreter), or a reader that falls behind and
    reads a backlog at once, must not move its audio in time, or the microphone and the
    speaker stop lining up for echo removal. The stream's start is the earliest one
    consistent with every callback so far, let go of slowly (``leak`` seconds per
    second) so a sound card clock a little slower than ours is followed."""

    def __init__(self, rate: int, leak: float = 1e-3):
        self.rate = rate
        self.leak = leak
        self.count = 0
        self._start: float | None = None
        self._last = 0.0

    def stamp(self, frames: int, now: float, *, captured: bool) -> float:
        """Time of the first of ``frames`` samples, given at ``now`` (an input callback
        comes after its samples were ``captured``; an output one before they play)."""
        start = now - (self.count + (frames if captured else 0)) / self.rate
        if self._start is None:
            self._start = start
        else:
            self._start = min(start, self._start + self.leak * (now - self._last))
        self._last = now
        t = self._start + self.count / self.rate
        self.count += frames
        return t


def to_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / 32768.0


def to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def resample(samples: np.ndarray, src_rate: int, dst_rate: int) -> np.ndarray:
    """Resample mono int16 audio with libswresample (through PyAV)."""
    if src_rate == dst_rate or len(samples) == 0:
        return samples
    import av

    resampler = av.AudioResampler(format="s16", layout="mono", rate=dst_rate)
    frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1).astype(np.int16), format="s16",
                                       layout="mono")
    frame.sample_rate = src_rate
    out = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    out += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)


def _decode_with_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    try:
        with av.open(str(path)) as container:
            stream = next((s for s in container.streams if s.type == "audio"), None)
            if stream is None:
                raise AudioError(f"{path}: no audio stream in the file")
            rate = stream.rate
            resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
            parts = []
            for frame in container.decode(stream):
                for f in resampler.resample(frame):
                    parts.append(f.to_ndarray().reshape(-1))
            for f in resampler.resample(None):
                parts.append(f.to_ndarray().reshape(-1))
    except AudioError:
        raise
    except Exception as exc:  # av raises many kinds of errors for damaged files
        raise AudioError(f"{path}: cannot decode audio ({exc})",
                         fix="give a WAV or FLAC file, 16 kHz mono preferred") from exc
    samples = np.concatenate(parts).astype(np.int16) if parts else np.zeros(0, np.int16)
    return samples, rate


def read_audio(path: str | Path, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a WAV/FLAC/any file PyAV can decode as mono int16 at ``rate``.

    Stereo is mixed down, other rates are resampled; a missing, empty or corrupt file
    raises :class:`AudioError` with a message naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: the file is empty")
    try:
        samples, src_rate = _read_samples(path)
        if not MIN_FILE_RATE <= src_rate <= MAX_FILE_RATE:
            raise AudioError(f"{path}: a sample rate of {src_rate} Hz is not audio hark takes",
                             fix=f"{MIN_FILE_RATE}-{MAX_FILE_RATE} Hz")
        return resample(samples, src_rate, rate)
    except AudioError:
        raise
    except Exception as exc:  # a damaged header: zero channels, sizes past the file, ...
        raise AudioError(f"{path}: cannot read it as audio ({type(exc).__name__}: {exc})",
                         fix="give a WAV or FLAC file, 16 kHz mono preferred") from exc


MIN_FILE_RATE, MAX_FILE_RATE = 4000, 384000  # sample rates read_audio takes


def _read_samples(path: Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples of a file and their rate (plain 16-bit WAV read directly)."""
    if path.suffix.lower() == ".wav":
        try:
            with wave.open(str(path), "rb") as w:
                ch, width, src_rate, n = (w.getnchannels(), w.getsampwidth(),
                                          w.getframerate(), w.getnframes())
                raw = w.readframes(n)
        except (wave.Error, EOFError):
            return _decode_with_av(path)  # e.g. float or extensible WAVs
        if width != 2 or ch < 1:
            return _decode_with_av(path)
        usable = len(raw) - len(raw) % (2 * ch)
        data = np.frombuffer(raw[:usable], dtype="<i2")
        if ch > 1:
            data = data.reshape(-1, ch).astype(np.int32).mean(axis=1)
        return data.astype(np.int16), src_rate
    return _decode_with_av(path)


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype=np.int16).astype("<i2").tobytes())
    return path


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype=np.int16).astype("<i2").tobytes())
    return buf.getvalue()


def frames(samples: np.ndarray, frame_samples: int, rate: int = SAMPLE_RATE,
           t0: float = 0.0) -> Iterator[AudioChunk]:
    """Cut audio into fixed frames (the last one zero-padded)."""
    for start in range(0, len(samples), frame_samples):
        part = samples[start:start + frame_samples]
        if len(part) < frame_samples:
            part = np.concatenate([part, np.zeros(frame_samples - len(part), np.int16)])
        yield AudioChunk(part, rate, t0 + start / rate)


async def paced(chunks: Iterable[AudioChunk], realtime: bool = True) -> AsyncIterator[AudioChunk]:
    """Yield chunks at their real duration, like a microphone; each gets ``t`` = the
    monotonic time it was "captured" (the moment its last sample would exist)."""
    import asyncio
    import time

    start = time.monotonic()
    elapsed = 0.0
    for chunk in chunks:
        elapsed += chunk.duration
        if realtime:
            delay = start + elapsed - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        chunk.t = time.monotonic() - chunk.duration
        yield chunk
