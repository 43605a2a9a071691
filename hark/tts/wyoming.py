"""Text-to-speech on a remote Wyoming TTS service (``tts.engine = "wyoming"``), such as
``wyoming-piper`` on a household's GPU box.

Each phrase is one request on its own connection. Where the service's ``info`` says
``supports_synthesize_streaming``, the text goes as a stream (``synthesize-start``,
``synthesize-chunk``, ``synthesize`` for older services, ``synthesize-stop``) and the
answer is read up to ``synthesize-stopped`` (one ``audio-start`` .. ``audio-stop`` per
sentence, as the service splits it); otherwise one ``synthesize`` event, answered by
``audio-start``, ``audio-chunk``..., ``audio-stop``. Either way each ``audio-chunk`` is
yielded as soon as it arrives, converted to mono at :attr:`WyomingTts.sample_rate`
(``tts.wyoming_rate``) by libswresample when the service's rate or channels differ.

Audio must be 16-bit, 8-48 kHz, one or two channels, in whole frames; anything else ends
the request with :class:`~hark.wyoming_client.WyomingServiceError`, as do a service that
is down, one that goes quiet for ``tts.wyoming_timeout_s``, one that disconnects
mid-phrase, and more than :data:`MAX_AUDIO_S` of audio for one phrase.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator

import numpy as np
from wyoming.audio import AudioChunk as WyChunk
from wyoming.audio import AudioStart, AudioStop
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from hark.audio import AudioChunk
from hark.wyoming_client import BoundedClient, WyomingPeer, WyomingServiceError, installed_names

log = logging.getLogger(__name__)

MAX_AUDIO_S = 120.0  # audio accepted for one phrase; more ends the request
MAX_TEXT = 2000  # characters sent in one request (hark's phrases are clauses)
_END = object()


class WyomingTts:
    """A remote Wyoming TTS service (implements ``hark.tts.base.TtsEngine``). Thread
    safe: each phrase has its own connection. ``voice``: the service's voice name
    ("" = its default); ``sample_rate``: the rate hark gets every chunk at.
    ``streaming``: None = as the service's ``info`` says (asked once, on first use),
    False = never send streaming input."""

    def __init__(self, uri: str, *, voice: str = "", sample_rate: int = 22050,
                 timeout_s: float = 15.0, connect_timeout_s: float = 3.0,
                 streaming: bool | None = None):
        self.peer = WyomingPeer(uri, "TTS", timeout_s=timeout_s,
                                connect_timeout_s=connect_timeout_s, where="tts.wyoming_uri")
        self.voice = voice
        self.sample_rate = sample_rate
        self.streaming = streaming
        self.service_rate: int | None = None  # the rate of the service's last audio

    def __repr__(self) -> str:
        return f"WyomingTts({self.peer.uri})"

    def check(self) -> str:
        """Ask the service what it is (``describe``); raise :class:`WyomingServiceError`
        unless it offers text-to-speech. Learns whether it takes streaming input.
        Returns a one-line description."""
        info = self.peer.info()
        if not info.tts:
            raise WyomingServiceError(
                f"the service at {self.peer.uri} offers no text-to-speech (its info lists "
                "no tts program)", fix="point tts.wyoming_uri at a Wyoming TTS service "
                "such as wyoming-piper")
        prog = info.tts[0]
        if self.streaming is None:
            self.streaming = bool(getattr(prog, "supports_synthesize_streaming", False))
        voices = installed_names(info.tts)
        return (f"{prog.name} {prog.version or ''}".strip()
                + (f", voices {', '.join(voices[:4])}" if voices else "")
                + (", streaming input" if self.streaming else ""))

    def synthesize(self, text: str) -> Iterator[AudioChunk]:
        """Yield the service's audio for ``text`` chunk by chunk as it arrives (blocking
        generator). Closing the generator ends the request. Raises
        :class:`WyomingServiceError`."""
        text = text.strip()
        if not text:
            return
        if len(text) > MAX_TEXT:
            raise WyomingServiceError(f"a phrase of {len(text)} characters is longer than "
                                      f"the {MAX_TEXT} hark sends to a TTS service")
        if self.streaming is None:
            self.check()
        out: queue.Queue = queue.Queue()
        fut = self.peer.submit(self.peer.session(
            lambda client: self._request(client, text, bool(self.streaming), out)))
        fut.add_done_callback(lambda _f: out.put(_END))
        try:
            while True:
                try:
                    item = out.get(timeout=self.peer.timeout_s + self.peer.connect_timeout_s
                                   + 5.0)
                except queue.Empty:  # the request's own timeouts end it before this
                    raise WyomingServiceError(f"TTS service {self.peer.uri}: no audio and "
                                              "no end of the request") from None
                if item is _END:
                    break
                yield AudioChunk(item, self.sample_rate, time.monotonic())
            fut.result()  # a failure after the last chunk (or before the first) raises
        finally:
            fut.cancel()

    async def _request(self, client: BoundedClient, text: str, streaming: bool,
                       out: queue.Queue) -> None:
        from hark.server.wyoming_satellite import SatelliteAudio

        voice = SynthesizeVoice(name=self.voice) if self.voice else None
        if streaming:
            await client.write_event(SynthesizeStart(voice=voice).event())
            await client.write_event(SynthesizeChunk(text=text).event())
            # the whole text once more, for a service that only reads synthesize (as
            # Home Assistant sends it); a streaming service ignores it inside a stream
            await client.write_event(Synthesize(text=text, voice=voice).event())
            await client.write_event(SynthesizeStop().event())
        else:
            await client.write_event(Synthesize(text=text, voice=voice).event())
        conv = SatelliteAudio(rate=self.sample_rate)
        total = 0
        started = False
        while True:
            event = await self.peer.read(client, "audio" if not started else "more audio")
            if AudioStart.is_type(event.type):
                start = AudioStart.from_event(event)
                from hark.server.wyoming_satellite import check_format

                check_format(start.rate, start.width, start.channels)
                started = True
                conv.reset()
            elif WyChunk.is_type(event.type):
                chunk = WyChunk.from_event(event)
                samples = conv.convert(chunk)
                self.service_rate = chunk.rate
                total += len(samples)
                if total > MAX_AUDIO_S * self.sample_rate:
                    raise WyomingServiceError(
                        f"TTS service {self.peer.uri} sent more than {MAX_AUDIO_S:g} s of "
                        f"audio for a phrase of {len(text)} characters: refused")
                if len(samples):
                    out.put(np.asarray(samples, dtype=np.int16))
            elif AudioStop.is_type(event.type):
                if not streaming:
                    return
            elif SynthesizeStopped.is_type(event.type):
                if streaming:
                    return

    def warm_up(self) -> None:
        """Check the service is a TTS service and synthesize one short phrase."""
        self.check()
        for _ in self.synthesize("Ready."):
            pass


def load_wyoming_tts(cfg) -> WyomingTts:
    """The remote engine configured by ``cfg.tts`` (``engine = "wyoming"``)."""
    t = cfg.tts
    return WyomingTts(t.wyoming_uri, voice=t.wyoming_voice, sample_rate=t.wyoming_rate,
                      timeout_s=t.wyoming_timeout_s)
