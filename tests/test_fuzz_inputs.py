"""Hostile input to the remaining parsers: WAV files, the trace log, the jitter buffer.

Only the project's own errors may escape, and state stays bounded."""

from __future__ import annotations

import json
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hark.audio import read_audio, wav_bytes
from hark.errors import HarkError

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

_WAV = wav_bytes(np.arange(-800, 800, 4, dtype=np.int16), 16000)


@FUZZ
@given(cut=st.integers(0, len(_WAV)), flips=st.lists(st.integers(0, 8 * len(_WAV) - 1),
                                                      max_size=8),
       channels=st.sampled_from([None, 0, 1, 2, 7, 65535]),
       rate=st.sampled_from([None, 0, 1, 8000, 48000, 2 ** 32 - 1]),
       width=st.sampled_from([None, 0, 1, 2, 3, 4, 255]))
def test_wav_input_reads_or_raises_audio_error(tmp_path_factory, cut, flips, channels, rate,
                                               width):
    data = bytearray(_WAV)
    if channels is not None:
        struct.pack_into("<H", data, 22, channels)
    if rate is not None:
        struct.pack_into("<I", data, 24, rate)
    if width is not None:
        struct.pack_into("<H", data, 34, width * 8)
    for bit in flips:
        data[bit // 8] ^= 1 << (bit % 8)
    path = tmp_path_factory.mktemp("wav") / "in.wav"
    path.write_bytes(bytes(data[:cut]))
    try:
        out = read_audio(path)
    except HarkError:
        return
    assert out.dtype == np.int16 and out.ndim == 1


@FUZZ
@given(lines=st.lists(st.one_of(
    st.binary(max_size=200),
    st.recursive(st.none() | st.integers() | st.text(max_size=20),
                 lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                     max_size=3),
                 max_leaves=20).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 20000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(4000, 6000).map(lambda n: b"9" * n)), max_size=12))
def test_trace_log_reader_returns_records_of_any_file(tmp_path_factory, lines):
    from hark.server.tracelog import read_traces

    path = tmp_path_factory.mktemp("traces") / "traces.jsonl"
    path.write_bytes(b"\n".join(lines))
    records = read_traces(path)
    assert all(isinstance(r, dict) for r in records)


@FUZZ
@given(packets=st.lists(st.tuples(st.integers(0, 65535), st.integers(0, 2 ** 32 - 1),
                                  st.binary(max_size=64),
                                  st.floats(-1e6, 1e6, allow_nan=False)), max_size=300),
       pops=st.lists(st.floats(-1e6, 1e6, allow_nan=False), max_size=50))
def test_jitter_buffer_takes_any_packets_and_stays_bounded(packets, pops):
    from hark.transport.jitter import JitterBuffer
    from hark.transport.rtp import RtpPacket

    jb = JitterBuffer()
    for i, (seq, ts, payload, now) in enumerate(packets):
        status = jb.push(RtpPacket(seq=seq, timestamp=ts, ssrc=1, payload=payload), now)
        assert isinstance(status, str)
        if i < len(pops):
            for frame in jb.pop(pops[i]):
                assert frame is not None
        assert len(jb._packets) <= jb.max_ahead + 1
