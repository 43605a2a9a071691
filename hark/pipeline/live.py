"""Live microphone and speaker through sounddevice (PortAudio)."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from hark.audio import AudioChunk, resample
from hark.errors import AudioError

log = logging.getLogger(__name__)


def open_devices(cfg):
    """sounddevice, checked: raises AudioError saying plainly when there is no device."""
    try:
        import sounddevice as sd
    except OSError as exc:  # PortAudio library missing
        raise AudioError(f"PortAudio is not available ({exc})",
                         fix="apt-get install libportaudio2, or use 'hark demo --input FILE'")
    try:
        devices = sd.query_devices()
    except Exception as exc:
        raise AudioError(f"cannot list audio devices: {exc}") from exc
    inputs = [d for d in devices if d.get("max_input_channels", 0) > 0]
    if not inputs:
        raise AudioError("this machine has no microphone (no audio input device found)",
                         fix="connect one, or use 'hark demo --input FILE.wav'")
    return sd


def run_live(cfg, mode: str = "streaming") -> int:
    sd = open_devices(cfg)
    from hark.pipeline.assistant import Assistant
    from hark.pipeline.events import ReplyAudio, ReplyText, TranscriptEvent

    assistant = Assistant.load(cfg)
    frame = cfg.audio.frame_ms * 16
    device_in = cfg.audio.input_device or None
    device_out = cfg.audio.output_device or None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        mic: asyncio.Queue[AudioChunk] = asyncio.Queue()

        def on_audio(indata, frames, t, status):  # PortAudio thread
            chunk = AudioChunk(indata[:, 0].copy(), 16000, time.monotonic())
            loop.call_soon_threadsafe(mic.put_nowait, chunk)

        async def mic_stream():
            while True:
                yield await mic.get()

        with sd.InputStream(samplerate=16000, channels=1, dtype="int16", blocksize=frame,
                            device=device_in, callback=on_audio):
            print("listening (Ctrl-C to stop) ...", flush=True)
            while True:
                reply: list[np.ndarray] = []
                async for ev in assistant.run_turn(mic_stream(), mode=mode):
                    if isinstance(ev, TranscriptEvent) and ev.transcript.is_final:
                        print(f"you:  {ev.transcript.text}")
                    elif isinstance(ev, ReplyText):
                        print(f"hark: {ev.text}")
                    elif isinstance(ev, ReplyAudio):
                        reply.append(ev.chunk.samples)
                if reply:
                    audio = np.concatenate(reply)
                    out = resample(audio, assistant.tts_rate, 48000)
                    await asyncio.to_thread(sd.play, out, 48000, device=device_out, blocking=True)
                while not mic.empty():  # don't answer our own voice
                    mic.get_nowait()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        assistant.close()
    return 0
