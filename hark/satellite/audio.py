"""Satellite audio ends: where microphone audio comes from and where replies go.

Sources are blocking iterators of 16 kHz mono int16 frames, read on the wake word
thread: a sounddevice microphone, a WAV file played at real time, or raw PCM on stdin.
Sinks take decoded reply audio: a sounddevice speaker or a WAV file. A sink that can
tell sets ``underran`` on each ``write``: True when the speaker ran dry (played a gap)
before that audio, which puts the reply's echo out of line with what was written; a
source that can tell sets ``overflowed`` with each frame: True when audio was dropped
before it, so the frames no longer count the time since the first.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hark.audio import SAMPLE_RATE, read_audio
from hark.errors import AudioError

log = logging.getLogger(__name__)


class FileSource:
    """A recording played at real time (as a microphone would deliver it), then
    silence until :attr:`done` is set."""

    def __init__(self, path: str | Path, frame_samples: int = 320, realtime: bool = True,
                 tail_silence_s: float | None = None):
        self.samples = read_audio(path)
        self.frame_samples = frame_samples
        self.realtime = realtime
        self.ended = threading.Event()  # the recording has been played
        self.done = threading.Event()  # stop producing silence
        self.tail_silence_s = tail_silence_s
        self.started_at: float | None = None  # monotonic time of the first sample

    def __iter__(self) -> Iterator[np.ndarray]:
        n = self.frame_samples
        t0 = time.monotonic()
        self.started_at = t0
        i = 0
        sent = 0
        while not self.done.is_set():
            if i < len(self.samples):
                frame = self.samples[i:i + n]
                if len(frame) < n:
                    frame = np.concatenate([frame, np.zeros(n - len(frame), np.int16)])
                i += n
            else:
                self.ended.set()
                if self.tail_silence_s is not None and \
                        (sent * n / SAMPLE_RATE) > len(self.samples) / SAMPLE_RATE + \
                        self.tail_silence_s:
                    return
                frame = np.zeros(n, np.int16)
            sent += 1
            if self.realtime:
                delay = t0 + sent * n / SAMPLE_RATE - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            yield frame


class StdinSource:
    """Raw 16 kHz mono s16le PCM from standard input."""

    def __init__(self, frame_samples: int = 320, stream=None):
        self.frame_samples = frame_samples
        self.stream = stream or sys.stdin.buffer
        self.ended = threading.Event()
        self.done = threading.Event()

    def __iter__(self) -> Iterator[np.ndarray]:
        need = self.frame_samples * 2
        while not self.done.is_set():
            data = self.stream.read(need)
            if not data or len(data) < need:
                self.ended.set()
                return
            yield np.frombuffer(data, dtype="<i2").astype(np.int16)


class MicSource:
    """The microphone (sounddevice / PortAudio), device from ``audio.input_device``."""

    def __init__(self, device: str = "", frame_samples: int = 320):
        try:
            import sounddevice as sd
        except OSError as exc:  # PortAudio library missing
            raise AudioError(f"no audio system: {exc}",
                             fix="apt-get install libportaudio2, or use --input FILE.wav / "
                             "--stdin") from exc
        dev = int(device) if device.isdigit() else (device or None)
        try:
            sd.check_input_settings(device=dev, channels=1, samplerate=SAMPLE_RATE,
                                    dtype="int16")
        except Exception as exc:  # sounddevice raises PortAudioError/ValueError
            raise AudioError(f"no usable microphone ({device or 'default device'}): {exc}",
                             fix="set audio.input_device (python -m sounddevice lists "
                             "devices), or use --input FILE.wav / --stdin") from exc
        self._stream = sd.InputStream(device=dev, channels=1, samplerate=SAMPLE_RATE,
                                      dtype="int16", blocksize=frame_samples)
        self.frame_samples = frame_samples
        self.ended = threading.Event()
        self.done = threading.Event()
        self.overflowed = False  # PortAudio dropped audio before the last frame

    def __iter__(self) -> Iterator[np.ndarray]:
        with self._stream:
            while not self.done.is_set():
                data, overflowed = self._stream.read(self.frame_samples)
                self.overflowed = bool(overflowed)
                yield data.reshape(-1).copy()


class WavSink:
    """Reply audio into a WAV file (rate fixed by the first audio written)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._w: wave.Wave_write | None = None
        self.rate = 0
        self.samples_written = 0

    def write(self, samples: np.ndarray, rate: int) -> None:
        if self._w is None:
            self._w = wave.open(str(self.path), "wb")  # noqa: SIM115 - closed in close()
            self._w.setnchannels(1)
            self._w.setsampwidth(2)
            self._w.setframerate(rate)
            self.rate = rate
        if rate != self.rate:
            from hark.audio import resample

            samples = resample(samples, rate, self.rate)
        self._w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
        self.samples_written += len(samples)

    def stop(self) -> None:
        """Barge-in: nothing queued to drop in a file."""

    def close(self) -> None:
        if self._w is None:  # no reply at all: still leave a valid (empty) WAV
            self.write(np.zeros(0, np.int16), SAMPLE_RATE)
        assert self._w is not None
        self._w.close()


class SpeakerSink:
    """Reply audio to the speaker (sounddevice), device from ``audio.output_device``."""

    def __init__(self, device: str = ""):
        try:
            import sounddevice as sd
        except OSError as exc:
            raise AudioError(f"no audio system: {exc}",
                             fix="apt-get install libportaudio2, or use --output FILE.wav") from exc
        self._sd = sd
        self._dev = int(device) if device.isdigit() else (device or None)
        self._stream = None
        self.rate = 0
        self.underran = False  # PortAudio played silence before the last write's audio

    def write(self, samples: np.ndarray, rate: int) -> None:
        if self._stream is None or rate != self.rate:
            if self._stream is not None:
                self._stream.close()
            try:
                self._stream = self._sd.OutputStream(device=self._dev, channels=1,
                                                     samplerate=rate, dtype="int16")
                self._stream.start()
            except Exception as exc:
                raise AudioError(f"no usable speaker: {exc}",
                                 fix="set audio.output_device, or use --output FILE.wav") from exc
            self.rate = rate
        self.underran = bool(
            self._stream.write(np.ascontiguousarray(samples, dtype=np.int16).reshape(-1, 1)))

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.abort()
            self._stream.close()
            self._stream = None

    def close(self) -> None:
        self.stop()
