"""Audio codecs for the network path: Opus (libopus) and raw PCM.

Opus runs through the libopus that PyAV bundles (``av.libs/libopus*.so``; the system's
``libopus.so.0`` otherwise), called with ctypes. PyAV's own codec API hides what a
real-time receiver needs: libopus' packet-loss concealment (``opus_decode`` with no
data) and in-band FEC recovery (``decode_fec=1`` on the *next* packet) are not
reachable through it, so the decoder calls libopus directly.

Opus accepts 8/12/16/24/48 kHz; :func:`opus_rate` picks the nearest one at or above a
stream's rate (Piper's 22050 Hz goes as 24 kHz), and the caller resamples.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
from functools import lru_cache

import numpy as np

from hark.errors import AudioError, ModelError, ProtocolError

OPUS_APPLICATION_VOIP = 2048
OPUS_SET_BITRATE = 4002
OPUS_SET_COMPLEXITY = 4010
OPUS_SET_INBAND_FEC = 4012
OPUS_SET_PACKET_LOSS_PERC = 4014
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
MAX_PACKET = 1500


@lru_cache(maxsize=1)
def libopus() -> ctypes.CDLL:
    """Load libopus: the copy bundled with PyAV first, else the system's."""
    candidates: list[str] = []
    try:
        import av

        here = os.path.dirname(av.__file__)
        candidates = sorted(glob.glob(os.path.join(here, os.pardir, "av.libs", "libopus*.so*")))
    except ImportError:  # a satellite without PyAV: the system's libopus will do
        pass
    candidates += [c for c in (ctypes.util.find_library("opus"), "libopus.so.0") if c]
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int,
                                            ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                    ctypes.c_char_p, ctypes.c_int32]
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int,
                                            ctypes.POINTER(ctypes.c_int)]
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32,
                                    ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_strerror.restype = ctypes.c_char_p
        lib.opus_strerror.argtypes = [ctypes.c_int]
        lib.opus_encoder_ctl.restype = ctypes.c_int
        return lib
    raise ModelError("libopus not found", fix="pip install av (it bundles libopus) or "
                     "apt-get install libopus0; or set transport.codec = \"pcm\"")


def opus_rate(rate: int) -> int:
    """The Opus sampling rate a stream at ``rate`` Hz is sent at."""
    for r in OPUS_RATES:
        if r >= rate:
            return r
    return 48000


def _check(code: int, what: str) -> int:
    if code < 0:
        raise ProtocolError(f"{what}: {libopus().opus_strerror(code).decode()}")
    return code


class OpusEncoder:
    """Encodes frames of exactly ``frame_samples`` int16 samples to Opus packets."""

    name = "opus"

    def __init__(self, rate: int = 16000, frame_ms: int = 20, bitrate: int = 24000,
                 fec: bool = True, expected_loss_pct: int = 10, complexity: int = 5):
        if rate not in OPUS_RATES:
            raise AudioError(f"Opus cannot run at {rate} Hz", fix=f"use one of {OPUS_RATES}")
        if frame_ms not in (10, 20, 40, 60):
            raise AudioError(f"Opus frame of {frame_ms} ms", fix="transport.frame_ms = 10 or 20")
        lib = libopus()
        err = ctypes.c_int()
        self._enc = lib.opus_encoder_create(rate, 1, OPUS_APPLICATION_VOIP, ctypes.byref(err))
        _check(err.value, "opus_encoder_create")
        self.rate, self.frame_ms = rate, frame_ms
        self.frame_samples = rate * frame_ms // 1000
        i, enc = ctypes.c_int, ctypes.c_void_p(self._enc)  # variadic: pass typed args
        lib.opus_encoder_ctl(enc, i(OPUS_SET_BITRATE), i(bitrate))
        lib.opus_encoder_ctl(enc, i(OPUS_SET_COMPLEXITY), i(complexity))
        lib.opus_encoder_ctl(enc, i(OPUS_SET_INBAND_FEC), i(1 if fec else 0))
        lib.opus_encoder_ctl(enc, i(OPUS_SET_PACKET_LOSS_PERC),
                             i(expected_loss_pct if fec else 0))
        self._out = ctypes.create_string_buffer(MAX_PACKET)

    def encode(self, frame: np.ndarray) -> bytes:
        if len(frame) != self.frame_samples:
            raise AudioError(f"Opus frame must be {self.frame_samples} samples, got {len(frame)}")
        pcm = np.ascontiguousarray(frame, dtype=np.int16)
        n = _check(libopus().opus_encode(self._enc, pcm.ctypes.data, self.frame_samples,
                                         self._out, MAX_PACKET), "opus_encode")
        return self._out.raw[:n]

    def __del__(self) -> None:
        if getattr(self, "_enc", None):
            libopus().opus_encoder_destroy(self._enc)
            self._enc = None


class OpusDecoder:
    """Decodes Opus packets; :meth:`conceal` runs libopus PLC for a lost packet and
    :meth:`recover` rebuilds a lost packet from the FEC data in the one after it."""

    name = "opus"

    def __init__(self, rate: int = 16000, frame_ms: int = 20):
        if rate not in OPUS_RATES:
            raise AudioError(f"Opus cannot run at {rate} Hz", fix=f"use one of {OPUS_RATES}")
        err = ctypes.c_int()
        self._dec = libopus().opus_decoder_create(rate, 1, ctypes.byref(err))
        _check(err.value, "opus_decoder_create")
        self.rate, self.frame_ms = rate, frame_ms
        self.frame_samples = rate * frame_ms // 1000
        self._pcm = np.zeros(rate * 120 // 1000, np.int16)  # largest Opus frame

    def _run(self, data: bytes | None, fec: int) -> np.ndarray:
        n = libopus().opus_decode(self._dec, data, len(data) if data else 0,
                                  self._pcm.ctypes.data,
                                  self.frame_samples if data is None or fec else len(self._pcm),
                                  fec)
        if n < 0:
            raise ProtocolError(f"corrupt Opus packet: {libopus().opus_strerror(n).decode()}")
        return self._pcm[:n].copy()

    def decode(self, payload: bytes) -> np.ndarray:
        return self._run(payload, 0)

    def conceal(self) -> np.ndarray:
        return self._run(None, 0)

    def recover(self, next_payload: bytes) -> np.ndarray:
        return self._run(next_payload, 1)

    def __del__(self) -> None:
        if getattr(self, "_dec", None):
            libopus().opus_decoder_destroy(self._dec)
            self._dec = None


class PcmEncoder:
    """Raw 16-bit little-endian PCM (for a LAN with bandwidth to spare)."""

    name = "pcm"

    def __init__(self, rate: int = 16000, frame_ms: int = 20, **_):
        self.rate, self.frame_ms = rate, frame_ms
        self.frame_samples = rate * frame_ms // 1000

    def encode(self, frame: np.ndarray) -> bytes:
        return np.asarray(frame, dtype="<i2").tobytes()


class PcmDecoder:
    """Decodes raw PCM; conceals a loss by repeating the last frame, fading out."""

    name = "pcm"

    def __init__(self, rate: int = 16000, frame_ms: int = 20):
        self.rate, self.frame_ms = rate, frame_ms
        self.frame_samples = rate * frame_ms // 1000
        self._last = np.zeros(self.frame_samples, np.int16)
        self._fade = 1.0

    def decode(self, payload: bytes) -> np.ndarray:
        if len(payload) % 2:
            raise ProtocolError(f"PCM payload of {len(payload)} bytes is not whole samples")
        self._last = np.frombuffer(payload, dtype="<i2").astype(np.int16)
        self._fade = 1.0
        return self._last.copy()

    def conceal(self) -> np.ndarray:
        self._fade *= 0.5
        return (self._last.astype(np.float32) * self._fade).astype(np.int16)

    def recover(self, next_payload: bytes) -> np.ndarray:  # PCM carries no FEC
        return self.conceal()


def make_encoder(codec: str, rate: int, frame_ms: int = 20, fec: bool = True):
    if codec == "opus":
        return OpusEncoder(rate, frame_ms, fec=fec)
    if codec == "pcm":
        return PcmEncoder(rate, frame_ms)
    raise AudioError(f"unknown codec '{codec}'", fix='transport.codec = "opus" or "pcm"')


def make_decoder(codec: str, rate: int, frame_ms: int = 20):
    if codec == "opus":
        return OpusDecoder(rate, frame_ms)
    if codec == "pcm":
        return PcmDecoder(rate, frame_ms)
    raise AudioError(f"unknown codec '{codec}'", fix='transport.codec = "opus" or "pcm"')
