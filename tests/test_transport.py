"""Transport pieces: RTP, Opus/PCM codecs (real libopus), jitter buffer, control events,
shared-memory ring."""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp

import numpy as np
import pytest

from hark.errors import ProtocolError
from hark.transport import messages as m
from hark.transport.codec import (
    OpusDecoder,
    OpusEncoder,
    PcmDecoder,
    PcmEncoder,
    opus_rate,
)
from hark.transport.control import MAX_HEADER, MAX_PAYLOAD, Event, read_event
from hark.transport.jitter import JitterBuffer
from hark.transport.link import AudioLink
from hark.transport.rtp import PT_OPUS, PT_PCM, RtpPacket, seq_delta
from hark.transport.shm import ShmRing
from hark.transport.stream import RtpStreamReceiver, RtpStreamSender

# --- RTP ------------------------------------------------------------------------------


def test_rtp_round_trip():
    p = RtpPacket(65535, 4294967295, 0xDEADBEEF, b"\x01\x02\x03", PT_OPUS, True)
    raw = p.pack()
    assert len(raw) == 15 and raw[0] == 0x80 and raw[1] == 0x80 | PT_OPUS
    assert RtpPacket.parse(raw) == p
    q = RtpPacket(7, 160, 1, b"\x00" * 640, PT_PCM)
    assert RtpPacket.parse(q.pack()) == q


@pytest.mark.parametrize("raw, why", [
    (b"", "shorter"),
    (b"\x80\x6f\x00", "shorter"),
    (bytes([0x40, 111]) + bytes(10) + b"x", "version"),
    (bytes([0xA0, 111]) + bytes(10) + b"x", "padding"),
    (bytes([0x90, 111]) + bytes(10) + b"x", "extension"),
    (bytes([0x82, 111]) + bytes(10) + b"x", "CSRC"),
    (bytes([0x80, 5]) + bytes(10) + b"x", "payload type"),
    (bytes([0x80, 111]) + bytes(10), "empty payload"),
    (bytes([0x80, 111]) + bytes(10) + bytes(5000), "exceeds"),
])
def test_rtp_rejects_malformed(raw, why):
    with pytest.raises(ProtocolError, match=why):
        RtpPacket.parse(raw)


def test_seq_delta_wraps():
    assert seq_delta(1, 65535) == 2 and seq_delta(65535, 1) == -2 and seq_delta(5, 5) == 0


# --- codecs ----------------------------------------------------------------------------


def _aligned_corr(x: np.ndarray, y: np.ndarray) -> float:
    best = max(range(400), key=lambda lag: float(np.dot(x[:len(x) - lag].astype(float),
                                                           y[lag:len(x)].astype(float))))
    return float(np.corrcoef(x[:len(x) - best], y[best:len(x)])[0, 1])


@pytest.fixture(scope="module")
def speech(speak) -> np.ndarray:
    x = speak("Alexa, what time is it?")
    return x[: len(x) // 320 * 320]


@pytest.mark.parametrize("frame_ms", [20, 10])
def test_opus_round_trip_keeps_speech(speech, frame_ms):
    enc, dec = OpusEncoder(16000, frame_ms), OpusDecoder(16000, frame_ms)
    n = enc.frame_samples
    packets = [enc.encode(speech[i:i + n]) for i in range(0, len(speech), n)]
    kbps = sum(map(len, packets)) * 8 / (len(speech) / 16000) / 1000
    assert kbps < 40  # compressed (PCM would be 256 kbit/s)
    out = np.concatenate([dec.decode(p) for p in packets])
    assert len(out) == len(speech)
    assert _aligned_corr(speech, out) > 0.9
    ratio = np.sqrt((out.astype(float) ** 2).mean() / (speech.astype(float) ** 2).mean())
    assert 0.7 < ratio < 1.3


def test_opus_fec_beats_plc_under_loss(speech):
    enc = OpusEncoder(16000, 20, fec=True)
    packets = [enc.encode(speech[i:i + 320]) for i in range(0, len(speech), 320)]

    def run(mode: str) -> float:
        dec, out = OpusDecoder(16000, 20), []
        for i, p in enumerate(packets):
            if i % 7 == 3 and i + 1 < len(packets):
                out.append(dec.recover(packets[i + 1]) if mode == "fec" else dec.conceal())
            else:
                out.append(dec.decode(p))
        return _aligned_corr(speech, np.concatenate(out))

    fec, plc = run("fec"), run("plc")
    assert fec > plc and fec > 0.85


def test_opus_bad_input():
    from hark.errors import AudioError

    with pytest.raises(AudioError):
        OpusEncoder(22050)
    with pytest.raises(AudioError):
        OpusEncoder(16000).encode(np.zeros(100, np.int16))
    with pytest.raises(ProtocolError, match="corrupt"):
        OpusDecoder(16000).decode(b"\xff\xff\xff\xff\xff")
    assert opus_rate(22050) == 24000 and opus_rate(16000) == 16000


def test_pcm_codec_and_conceal():
    x = (np.arange(320) * 50).astype(np.int16)
    dec = PcmDecoder(16000)
    assert np.array_equal(dec.decode(PcmEncoder(16000).encode(x)), x)
    c1, c2 = dec.conceal(), dec.conceal()
    assert np.abs(c1).max() > np.abs(c2).max() > 0
    with pytest.raises(ProtocolError):
        dec.decode(b"\x00\x01\x02")


# --- jitter buffer (scripted arrivals, explicit clock) ----------------------------------


def _pkt(seq: int, payload: bytes | None = None) -> RtpPacket:
    return RtpPacket(seq & 0xFFFF, seq * 320, 42, payload or bytes([seq & 0xFF]) * 4)


def test_jitter_reorders_and_drops_duplicates():
    jb = JitterBuffer(frame_ms=20, jitter_min_ms=40, jitter_max_ms=120)
    f = 0.020
    # seq 0..5, arriving 2,0,1,1(dup),4,3,5 within the buffer's 40 ms
    arrivals = [(0, 0.000), (2, 0.001), (1, 0.021), (1, 0.022), (4, 0.061), (3, 0.062),
                (5, 0.100)]
    results = [jb.push(_pkt(s), t) for s, t in arrivals]
    assert results.count("duplicate") == 1
    out = jb.pop(1.0)
    played, tail = out[:6], out[6:]
    assert [fr.payload[0] for fr in played] == [0, 1, 2, 3, 4, 5]
    assert not any(fr.lost for fr in played)
    assert all(fr.lost for fr in tail) and jb.next_due() is None  # stream ended: idle
    assert jb.stats.reordered == 2 and jb.stats.duplicates == 1
    assert jb.stats.lost == 0
    # frames are due one frame apart
    dues = [fr.due for fr in played]
    assert np.allclose(np.diff(dues), f)


def test_jitter_conceals_loss_with_fec_payload_and_drops_late():
    jb = JitterBuffer(frame_ms=20, jitter_min_ms=20, jitter_max_ms=120)
    for s in (0, 1, 3, 4):  # seq 2 lost
        jb.push(_pkt(s), s * 0.020)
    out = jb.pop(0.2)[:5]
    assert [fr.ext_seq - out[0].ext_seq for fr in out] == [0, 1, 2, 3, 4]
    lost = out[2]
    assert lost.lost and lost.fec == _pkt(3).payload  # next packet offered for FEC
    assert jb.stats.lost == 1
    assert jb.push(_pkt(2), 0.25) == "late"  # its frame was already concealed
    assert jb.stats.late == 1


def test_jitter_target_adapts_to_measured_jitter():
    rng = np.random.default_rng(0)
    calm = JitterBuffer(frame_ms=20, jitter_min_ms=10, jitter_max_ms=120)
    rough = JitterBuffer(frame_ms=20, jitter_min_ms=10, jitter_max_ms=120)
    for s in range(200):
        calm.push(_pkt(s), s * 0.02 + rng.uniform(0, 0.002))
        rough.push(_pkt(s), s * 0.02 + rng.uniform(0, 0.030))
    assert calm.target_ms == pytest.approx(10, abs=1)
    assert 25 < rough.target_ms <= 32
    capped = JitterBuffer(frame_ms=20, jitter_min_ms=10, jitter_max_ms=50)
    for s in range(100):
        capped.push(_pkt(s), s * 0.02 + rng.uniform(0, 0.3))
    assert capped.target_ms == 50


def test_jitter_idle_then_new_talk_spurt_and_seq_wrap():
    jb = JitterBuffer(frame_ms=20, jitter_min_ms=10)
    for s in range(65533, 65536 + 3):  # wraps through 0
        jb.push(_pkt(s), (s - 65533) * 0.02)
    out = jb.pop(1.0)
    assert [fr.lost for fr in out][:6] == [False] * 6
    assert jb.next_due() is None  # idle after a few concealed tail frames
    assert jb.stats.lost == 0  # the stream ended; nothing was lost
    assert jb.push(_pkt(65536 + 100), 5.0) == "ok"  # new talk spurt re-anchors
    out = jb.pop(6.0)
    assert not out[0].lost


def test_jitter_stream_resuming_after_a_stall_is_played_not_dropped():
    # one packet, then nothing for 1.5 s (the buffer conceals a few frames and goes idle),
    # then the same stream goes on with the next sequence numbers and no marker
    jb = JitterBuffer(frame_ms=20, jitter_min_ms=10)
    jb.push(_pkt(500), 0.0)
    jb.pop(0.5)
    assert jb.next_due() is None  # idle
    results = [jb.push(_pkt(501 + k), 1.5 + k * 0.02) for k in range(10)]
    assert results == ["ok"] * 10 and jb.stats.late == 0
    out = jb.pop(2.0)[:10]
    assert [fr.payload[0] for fr in out] == [(501 + k) & 0xFF for k in range(10)]
    assert jb.target_ms < 15  # the stall was a pause, not jitter


@pytest.mark.parametrize("second_start", [100, 40000, 65500])
def test_jitter_new_stream_after_pause_plays_whatever_its_numbers(second_start):
    jb = JitterBuffer(frame_ms=20, jitter_min_ms=20)
    for k in range(10):
        jb.push(_pkt(1000 + k), k * 0.02)
    assert not any(fr.lost for fr in jb.pop(0.3)[:10])
    assert jb.next_due() is None  # idle
    # a new sender (random sequence numbers, marker on the first packet), 2 s later
    results = []
    for k in range(10):
        p = RtpPacket((second_start + k) & 0xFFFF, k * 320, 42, bytes([k]) * 4, PT_OPUS, k == 0)
        results.append(jb.push(p, 2.0 + k * 0.02))
    assert results == ["ok"] * 10
    out = jb.pop(3.0)[:10]
    assert [fr.payload[0] for fr in out] == list(range(10))
    # the pause did not count as loss, and the jitter estimate stayed sane
    assert jb.stats.lost == 0 and jb.target_ms < 25


def test_jitter_refuses_packets_absurdly_far_ahead():
    jb = JitterBuffer(frame_ms=20)
    jb.push(_pkt(0), 0.0)
    assert jb.push(_pkt(30000), 0.01) == "dropped"
    assert len(jb) == 1


def test_stream_sender_receiver_round_trip(speech):
    tx = RtpStreamSender("opus", 16000, 20)
    rx = RtpStreamReceiver("opus", 16000, 20, jitter_min_ms=20)
    packets = tx.push(speech[:8000]) + tx.push(speech[8000:]) + tx.flush()
    assert packets[0].marker and not packets[1].marker
    for i, p in enumerate(packets):
        if i % 10 != 4:  # 10 % loss
            rx.push(p, i * 0.02)
    out = np.concatenate([pcm for _, pcm in rx.pop(100.0)])
    assert len(out) >= len(speech)
    assert rx.fec_recovered > 0
    assert _aligned_corr(speech, out) > 0.85


def test_stream_sender_resamples_tts_rate():
    tx = RtpStreamSender("opus", 22050, 20)
    assert tx.wire_rate == 24000
    pk = tx.push(np.zeros(22050, np.int16))
    assert 48 <= len(pk) <= 50


# --- control events --------------------------------------------------------------------


def _reader(data: bytes) -> asyncio.StreamReader:
    r = asyncio.StreamReader(limit=MAX_HEADER)
    r.feed_data(data)
    r.feed_eof()
    return r


def test_control_event_round_trip():
    async def go():
        a = Event("wake", {"keyword": "alexa"})
        b = Event("audio-chunk", {"seq": 1}, b"\x00\x01" * 10)
        r = _reader(a.encode() + b.encode())
        assert await read_event(r) == a
        assert await read_event(r) == b
        assert await read_event(r) is None
    asyncio.run(go())


@pytest.mark.parametrize("raw, why", [
    (b"not json\n", "not JSON"),
    (b"[1,2]\n", "JSON object"),
    (b'{"data":{}}\n', "no 'type'"),
    (b'{"type":"x","data":[]}\n', "'data' must be"),
    (b'{"type":"x","payload_length":-1}\n', "payload_length"),
    (json.dumps({"type": "x", "payload_length": MAX_PAYLOAD + 1}).encode() + b"\n", "exceeds"),
    (b'{"type":"audio-chunk","payload_length":100}\n' + b"x" * 40, "40 of 100"),
    (b'{"type":"wake","da', "middle of an event header"),
    (b"x" * (MAX_HEADER + 10), "longer than"),
])
def test_control_rejects_bad_events(raw, why):
    async def go():
        with pytest.raises(ProtocolError, match=why):
            await read_event(_reader(raw))
    asyncio.run(go())


def test_control_refuses_to_send_oversized():
    with pytest.raises(ProtocolError):
        Event("audio-chunk", {}, b"x" * (MAX_PAYLOAD + 1)).encode()


# --- shared memory --------------------------------------------------------------------


def _consumer(name: str, n: int, q) -> None:
    ring = ShmRing(name, create=False)
    got = []
    import time
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        frame = ring.read()
        if frame is None:
            time.sleep(0.001)
            continue
        got.append(frame)
    ring.close()
    q.put(got)


def test_shm_ring_across_processes():
    ring = ShmRing(capacity=4096)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_consumer, args=(ring.name, 200, q))
    proc.start()
    frames = [bytes([i % 256]) * (1 + i % 90) for i in range(200)]
    import time
    for f in frames:
        while not ring.write(f):  # full: wait for the reader
            time.sleep(0.001)
    got = q.get(timeout=20)
    proc.join(5)
    ring.close()
    assert got == frames


def test_shm_ring_full_drops_and_missing_ring_errors():
    ring = ShmRing(capacity=64)
    assert ring.write(b"x" * 40)
    assert not ring.write(b"y" * 40) and ring.dropped == 1
    assert ring.read() == b"x" * 40 and ring.read() is None
    ring.close()
    with pytest.raises(ProtocolError):
        ShmRing("psm_does_not_exist_hark", create=False)


def _waiting_consumer(name, n, q):
    """Reads only when woken: no sleep, no polling loop."""
    ring = ShmRing(name, create=False)
    ring.fileno()  # listen for wake-ups
    q.put("listening")
    got, timeouts = [], 0
    while len(got) < n:
        ring.clear()  # consume wake-ups before reading, so none is missed
        while (frame := ring.read()) is not None:
            got.append(frame)
        if len(got) < n and not ring.wait(timeout=30.0):
            timeouts += 1
            break
    q.put((got, ring.wakeups, timeouts))
    ring.close()


def test_shm_reader_sleeps_on_the_wakeup_across_processes():
    """Every frame reaches a reader in another process that only ever returns from
    wait() through the writer's wake-ups (a timeout would mean it fell back to time)."""
    ring = ShmRing(capacity=4096)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_waiting_consumer, args=(ring.name, 100, q))
    proc.start()
    assert q.get(timeout=20) == "listening"
    frames = [bytes([i]) * (1 + i % 50) for i in range(100)]
    import time
    for f in frames:
        while not ring.write(f):
            time.sleep(0.001)
        if frames.index(f) % 10 == 0:
            time.sleep(0.01)  # let the reader go back to sleep now and then
    got, wakeups, timeouts = q.get(timeout=30)
    proc.join(5)
    ring.close()
    assert got == frames
    assert timeouts == 0 and wakeups >= 1


def test_shm_wait_is_bounded_and_notices_a_closed_writer():
    writer = ShmRing(capacity=1024)
    reader = ShmRing(writer.name, create=False)
    reader.fileno()
    assert reader.wait(0.01) is False  # nothing written: the bounded wait returns
    assert reader.writer_alive()
    writer.write(b"frame")
    assert reader.wait(5.0) is True and reader.read() == b"frame"
    reader_copy = ShmRing(writer.name, create=False)
    assert reader_copy.writer_alive()
    reader_copy.close()
    writer_side = ShmRing(writer.name, create=False)  # e.g. the satellite's writer end
    writer_side.write(b"last")
    writer_side.close()  # marks the ring closed and wakes the reader
    assert reader.wait(5.0) is True and reader.read() == b"last"
    assert not reader.writer_alive()
    reader.close()
    writer.close()


def _write_and_vanish(name):
    import os

    ring = ShmRing(name, create=False)
    ring.write(b"bye")
    os._exit(0)  # no close(): the process just disappears


def test_shm_notices_a_vanished_writer_process():
    ring = ShmRing(capacity=1024)
    ring.fileno()
    proc = mp.get_context("spawn").Process(target=_write_and_vanish, args=(ring.name,))
    proc.start()
    assert ring.wait(20.0) and ring.read() == b"bye"
    proc.join(10)
    assert not ring.writer_alive()
    ring.close()


def test_shm_event_loop_reader_is_called_per_write():
    """An event loop watching fileno() runs its callback when a frame is written from
    another thread (how server and satellite read their rings)."""
    import threading

    ring = ShmRing(capacity=4096)

    async def go():
        loop = asyncio.get_running_loop()
        got: list[bytes] = []
        calls = 0
        done = asyncio.Event()

        def on_ready():
            nonlocal calls
            calls += 1
            ring.clear()
            while (f := ring.read()) is not None:
                got.append(f)
            if len(got) == 3:
                done.set()

        loop.add_reader(ring.fileno(), on_ready)
        writer = ShmRing(ring.name, create=False)
        threading.Thread(target=lambda: [writer.write(b"%d" % i) for i in range(3)]).start()
        await asyncio.wait_for(done.wait(), 10)
        loop.remove_reader(ring.fileno())
        writer.close()
        return got, calls

    got, calls = asyncio.run(go())
    ring.close()
    assert got == [b"0", b"1", b"2"] and calls >= 1


# --- the audio link ---------------------------------------------------------------------


class _RecordingConn:
    """A control connection that keeps what is sent, in the order the sends began (the
    real one's lock then keeps that order on the wire)."""

    def __init__(self):
        self.sent: list = []

    async def send_message(self, message) -> None:
        self.sent.append(message)


class _RecordingUdp:
    def __init__(self):
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, raw: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((raw, addr))


def test_audio_link_sends_over_the_current_path_and_tcp_when_it_is_not_set_up():
    pkts = [RtpPacket(i, i * 320, 5, bytes([i]) * 4, PT_PCM) for i in range(8)]

    async def go():
        conn, udp = _RecordingConn(), _RecordingUdp()
        link = AudioLink(conn, udp, None, path="udp")  # type: ignore[arg-type]
        link.send(pkts[0])  # no UDP address yet: over TCP
        link.udp_addr = ("127.0.0.1", 4000)
        link.send(pkts[1])
        link.path = "tcp"
        link.send(pkts[2])
        link.send(pkts[3], force_udp=True)  # a probe's answer
        link.post(m.AudioStop())  # after the packets posted before it
        link.path = "shm"
        link.send(pkts[4])  # no ring: over TCP
        down = ShmRing()
        link.shm_out = ShmRing(down.name, create=False)
        got: list[bytes] = []
        woke = asyncio.Event()
        up = ShmRing()
        link.watch_shm(up, lambda raw: (got.append(raw), woke.set()), pytest.fail)
        link.send(pkts[5])
        peer = ShmRing(up.name, create=False)  # the peer writes its audio
        peer.write(pkts[6].pack())
        await asyncio.wait_for(woke.wait(), 5)
        await asyncio.sleep(0.05)  # the posts go out
        from_ring = down.read()
        with pytest.raises(ValueError, match="carrier-pigeon"):
            link.path = "carrier-pigeon"
        link.close()
        link.send(pkts[7])
        link.post(m.AudioStop())
        assert not link.send_udp(b"x") and link.shm_in is None and link.shm_out is None
        peer.close()
        down.close()
        return conn.sent, udp.sent, from_ring, got

    posted, datagrams, from_ring, got = asyncio.run(go())
    assert posted == [m.AudioChunk(pkts[0].pack()), m.AudioChunk(pkts[2].pack()),
                      m.AudioStop(), m.AudioChunk(pkts[4].pack())]
    assert datagrams == [(pkts[1].pack(), ("127.0.0.1", 4000)),
                         (pkts[3].pack(), ("127.0.0.1", 4000))]
    assert from_ring == pkts[5].pack() and got == [pkts[6].pack()]

