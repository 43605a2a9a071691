"""Reply audio served over HTTP to devices that fetch a URL and cannot send a token
(ESPHome voice satellites' media players).

:class:`ReplyStore` hands out one :class:`ReplyStream` per reply, under an unguessable
path (``/reply/<secrets.token_urlsafe(32)>.wav``: 256 random bits). The path is the
credential, so it is

- single use: the first ``GET`` claims it, any later one is answered 404;
- short lived: a reply not fetched within :attr:`ReplyStore.ttl_s` of being published
  is dropped (404 after that);
- bounded: at most :attr:`ReplyStore.max_replies` are held (the oldest is dropped when
  one more is published), and each holds at most :attr:`ReplyStore.max_seconds` of
  audio (more is cut, with one log line).

The response is a 16-bit mono WAV streamed as the reply is synthesized: the header
first (its sizes set to the largest value, as the length is not known yet), then each
chunk as soon as it is written, until :meth:`ReplyStream.finish` (or
:meth:`ReplyStream.abort`, which ends the response early). ``hark.server.http`` serves
``GET /reply/{name}`` through :meth:`ReplyStore.handle` without asking for the bearer
token (the Host check still applies).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from aiohttp import web

log = logging.getLogger(__name__)

PREFIX = "/reply/"
UNKNOWN_SIZE = 0xFFFFFFFF  # a streamed WAV's RIFF and data sizes


def wav_header(rate: int, channels: int = 1, width: int = 2) -> bytes:
    """A RIFF/WAVE PCM header whose sizes say 'to the end of the stream'."""
    return (b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate,
                                    rate * channels * width, channels * width, width * 8)
            + b"data" + struct.pack("<I", UNKNOWN_SIZE))


class ReplyStream:
    """One reply being written (by the turn) and read (by the device's GET)."""

    def __init__(self, store: ReplyStore, name: str, rate: int | None, created: float):
        self.store = store
        self.name = name
        self.rate = rate
        self.created = created
        self.claimed = False
        self.done = False
        self.aborted = False
        self.first_read: float | None = None  # monotonic time the GET began
        self._chunks: list[bytes] = []
        self._samples = 0
        self._cut_logged = False
        self._changed = asyncio.Event()

    @property
    def path(self) -> str:
        return f"{PREFIX}{self.name}"

    def set_rate(self, rate: int) -> None:
        """The sample rate, when it was not known at :meth:`ReplyStore.publish`."""
        self.rate = rate
        self._changed.set()

    def write(self, samples: np.ndarray) -> None:
        """Append 16-bit samples at :attr:`rate` (beyond ``max_seconds`` they are cut)."""
        if self.done:
            return
        if self.rate is None:
            raise ValueError("set_rate() before the first write()")
        room = int(self.store.max_seconds * self.rate) - self._samples
        if room <= 0:
            if not self._cut_logged:
                self._cut_logged = True
                log.warning("reply %s... longer than %.0f s: the rest is cut", self.name[:6],
                            self.store.max_seconds)
            return
        data = samples[:room].astype("<i2", copy=False)
        self._samples += len(data)
        self._chunks.append(data.tobytes())
        self._changed.set()

    def finish(self) -> None:
        self.done = True
        self._changed.set()

    def abort(self) -> None:
        self.aborted = True
        self.finish()

    async def stream_to(self, resp: web.StreamResponse) -> None:
        while self.rate is None and not self.done:  # the header needs the rate
            self._changed.clear()
            if self.rate is None and not self.done:
                await self._changed.wait()
        if self.rate is None:
            return  # ended before any audio: an empty response
        await resp.write(wav_header(self.rate))
        sent = 0
        while True:
            while sent < len(self._chunks):
                chunk = self._chunks[sent]
                self._chunks[sent] = b""  # sent: not held twice
                sent += 1
                await resp.write(chunk)
            if self.done:
                return
            self._changed.clear()
            if sent < len(self._chunks) or self.done:
                continue
            await self._changed.wait()


class ReplyStore:
    """Replies waiting for their device's ``GET``. See the module docstring."""

    ttl_s = 60.0
    max_replies = 16
    max_seconds = 120.0

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._replies: OrderedDict[str, ReplyStream] = OrderedDict()

    def __len__(self) -> int:
        return len(self._replies)

    def publish(self, rate: int | None) -> ReplyStream:
        """A new reply at ``rate`` Hz (None: :meth:`ReplyStream.set_rate` later); its
        :attr:`ReplyStream.path` is valid at once."""
        self._expire()
        while len(self._replies) >= self.max_replies:
            _, old = self._replies.popitem(last=False)
            old.abort()
        name = f"{secrets.token_urlsafe(32)}.wav"
        stream = ReplyStream(self, name, rate, self._clock())
        self._replies[name] = stream
        return stream

    def claim(self, name: str) -> ReplyStream | None:
        """The reply named ``name``, removed from the store (None if unknown, taken or
        expired)."""
        self._expire()
        stream = self._replies.pop(name, None)
        if stream is not None:
            stream.claimed = True
            stream.first_read = self._clock()
        return stream

    def _expire(self) -> None:
        now = self._clock()
        for name in [n for n, s in self._replies.items() if now - s.created > self.ttl_s]:
            self._replies.pop(name).abort()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info.get("name", "")
        stream = self.claim(name)
        if stream is None:
            log.info("reply %s... asked for: unknown, already fetched or expired", name[:6])
            return web.Response(status=404, text="no such reply")
        resp = web.StreamResponse(headers={"Content-Type": "audio/wav",
                                           "Cache-Control": "no-store"})
        await resp.prepare(request)
        try:
            await stream.stream_to(resp)
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            log.info("reply %s...: the device stopped reading", name[:6])
            raise
        return resp
