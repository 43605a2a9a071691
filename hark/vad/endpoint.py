"""End-of-turn detection: VAD probabilities turned into speech start / pause / end events.

An :class:`Endpointer` follows one turn. Feed it microphone chunks of any size; it cuts
them into the VAD engine's frames (512 samples at 16 kHz) and returns the events each
chunk produced::

    idle --(min_speech_ms of speech)--> speaking   emits speech_start (t = speech onset)
    speaking --(speculative_ms silence)--> paused  emits pause (t = end of speech)
    paused --(speech again)--> speaking            emits speech_resume (t = its onset)
    speaking/paused --(eot_ms silence)--> ended    emits speech_end (t = end of speech)

Event times are monotonic seconds of the *audio position* they refer to, computed from
``AudioChunk.t`` (time of a chunk's first sample) plus the sample offset, so
``speech_end.t`` is when the person stopped talking, not when the timeout ran out.

A frame is speech when its probability reaches ``threshold``, and stays speech while it
is above ``neg_threshold`` (hysteresis). The end-of-turn timeout can be changed while
listening with :meth:`Endpointer.set_eot_ms`; the change is applied on the next frame.
After ``speech_end`` the endpointer ignores audio until :meth:`Endpointer.reset`.
"""

from __future__ import annotations

import math

import numpy as np

from hark.audio import SAMPLE_RATE, AudioChunk, to_int16
from hark.config import VadConfig
from hark.errors import AudioError
from hark.vad.base import VadEngine, VadEvent

IDLE, SPEAKING, PAUSED, ENDED = "idle", "speaking", "paused", "ended"


class Endpointer:
    """Turns a stream of audio chunks into :class:`VadEvent` s for one turn."""

    def __init__(self, engine: VadEngine, vad_cfg: VadConfig, rate: int = SAMPLE_RATE):
        self.engine = engine
        self.cfg = vad_cfg
        self.rate = rate
        self.frame_samples = engine.frame_samples
        self.frame_s = self.frame_samples / rate
        self.frame_ms = self.frame_s * 1000.0
        self._pre_roll_frames = math.ceil(vad_cfg.pre_roll_ms / self.frame_ms)
        self.reset()

    # --- state -------------------------------------------------------------------------

    def reset(self) -> None:
        """Start a new turn: forget audio, events and the VAD's recurrent state; the
        end-of-turn timeout goes back to ``eot_silence_ms``."""
        self.engine.reset()
        self.state = IDLE
        self.eot_ms = float(self.cfg.eot_silence_ms)
        self._pending = np.zeros(0, np.int16)  # samples not yet making a whole frame
        self._pending_t = 0.0  # monotonic time of _pending's first sample
        self._frame_idx = 0  # index of the next frame to process
        self._frames: list[np.ndarray] = []  # processed frames kept for utterance()
        self._frames_first = 0  # frame index of _frames[0]
        self._utt_first = -1  # frame index where utterance() starts (-1: no speech yet)
        self._speaking = False  # hysteresis state of the last frame
        self._run = 0  # consecutive speech frames while idle
        self._run_t = 0.0
        self._run_first = 0
        self._silent_frames = 0  # trailing non-speech frames
        self.speech_start_t: float | None = None
        self.speech_end_t: float | None = None  # end of the last speech frame
        self._start_frame = 0
        self._end_frame = 0  # index of the frame after the last speech frame
        self.last_probability = 0.0

    def set_eot_ms(self, ms: float) -> None:
        """Change how much trailing silence ends the turn (takes effect on the next frame):
        shorter when the partial transcript is already a complete command, longer when it
        looks unfinished."""
        if not ms > 0:
            raise ValueError(f"end-of-turn timeout must be positive, got {ms}")
        self.eot_ms = float(ms)

    @property
    def silence_ms(self) -> float:
        """Trailing silence so far (ms), counted in whole VAD frames."""
        return self._silent_frames * self.frame_ms

    @property
    def in_speech(self) -> bool:
        """True between speech_start and speech_end."""
        return self.state in (SPEAKING, PAUSED)

    @property
    def ended(self) -> bool:
        return self.state == ENDED

    # --- audio ---------------------------------------------------------------------------

    def process(self, chunk: AudioChunk) -> list[VadEvent]:
        """Feed one chunk (any length); returns the events it caused, in order."""
        if chunk.rate != self.rate:
            raise AudioError(f"the endpointer takes {self.rate} Hz audio, got {chunk.rate} Hz",
                             fix="resample with hark.audio.resample before the VAD")
        samples = np.asarray(chunk.samples).reshape(-1)
        if samples.dtype != np.int16:
            if not np.issubdtype(samples.dtype, np.floating):
                raise AudioError(f"audio must be int16 or float, got {samples.dtype}")
            samples = to_int16(samples)
        if self.state == ENDED or len(samples) == 0:
            return []
        if chunk.t:
            # anchor on the newest chunk's clock: _pending's samples came just before it
            self._pending_t = chunk.t - len(self._pending) / self.rate
        self._pending = np.concatenate([self._pending, samples])
        events: list[VadEvent] = []
        n = self.frame_samples
        while len(self._pending) >= n and self.state != ENDED:
            frame, self._pending = self._pending[:n], self._pending[n:]
            t0 = self._pending_t
            self._pending_t += self.frame_s
            events += self._on_frame(frame, t0)
        return events

    def _on_frame(self, frame: np.ndarray, t0: float) -> list[VadEvent]:
        cfg = self.cfg
        p = self.engine.probability(frame)
        self.last_probability = p
        idx = self._frame_idx
        self._frame_idx += 1
        self._frames.append(frame)
        self._speaking = p >= cfg.threshold or (self._speaking and p >= cfg.neg_threshold)
        if self._speaking:
            self._silent_frames = 0
        else:
            self._silent_frames += 1
        events: list[VadEvent] = []

        if self.state == IDLE:
            if self._speaking:
                if self._run == 0:
                    self._run_t, self._run_first = t0, idx
                self._run += 1
                if self._run * self.frame_ms >= cfg.min_speech_ms:
                    self.state = SPEAKING
                    self.speech_start_t = self._run_t
                    self.speech_end_t = t0 + self.frame_s
                    self._end_frame = idx + 1
                    self._start_frame = self._run_first
                    self._utt_first = max(self._frames_first,
                                          self._run_first - self._pre_roll_frames)
                    events.append(VadEvent("speech_start", self._run_t))
            else:
                self._run = 0
            if self.state == IDLE:  # keep only the pre-roll (plus the speech run so far)
                keep = self._pre_roll_frames + self._run
                if len(self._frames) > keep:
                    drop = len(self._frames) - keep
                    del self._frames[:drop]
                    self._frames_first += drop
            return events

        # speaking or paused
        if self._speaking:
            self.speech_end_t = t0 + self.frame_s
            self._end_frame = idx + 1
            if self.state == PAUSED:
                self.state = SPEAKING
                events.append(VadEvent("speech_resume", t0))
        else:
            silence = self.silence_ms
            if self.state == SPEAKING and silence >= min(cfg.speculative_ms, self.eot_ms):
                self.state = PAUSED
                events.append(VadEvent("pause", self.speech_end_t, silence))
            if silence >= self.eot_ms:
                self.state = ENDED
                events.append(VadEvent("speech_end", self.speech_end_t, silence))
        if self.state != ENDED and \
                (idx + 1 - self._start_frame) * self.frame_s >= cfg.max_utterance_s:
            if self.state == SPEAKING and not self._speaking:
                events.append(VadEvent("pause", self.speech_end_t, self.silence_ms))
            self.state = ENDED
            events.append(VadEvent("speech_end", self.speech_end_t, self.silence_ms))
        return events

    @property
    def spoken_ms(self) -> float:
        """How long the person has been speaking: ms from the speech onset (not the
        pre-roll before it) to now, pauses included; 0 before speech started."""
        if self._utt_first < 0:
            return 0.0
        return (self._frame_idx - self._start_frame) * self.frame_ms

    @property
    def speech_samples(self) -> int:
        """How many samples of :meth:`utterance` lead up to the end of the last speech
        frame (0 before speech started). The streaming transcriber uses it to tell
        whether its last partial pass already heard all the speech."""
        if self._utt_first < 0:
            return 0
        return (self._end_frame - self._utt_first) * self.frame_samples

    def utterance(self) -> np.ndarray:
        """int16 audio from ``pre_roll_ms`` before speech start up to now (empty before
        speech started)."""
        if self._utt_first < 0:
            return np.zeros(0, np.int16)
        parts = self._frames[self._utt_first - self._frames_first:]
        if self.state != ENDED:
            parts = [*parts, self._pending]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)
