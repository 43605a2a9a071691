"""``hark bench transport``: speech through the real network path under impairment.

A sender paces 16 kHz speech frame by frame at real time (as a microphone delivers
it), encodes it, wraps it in RTP and sends it over loopback UDP, impairing the stream
on the way out: packets lost, delayed by a random 0..jitter ms, held back behind the
next packet (reordering) or sent twice. The receiver runs the same jitter buffer and
decoder as the satellite and plays each frame out at its due time.

Measured: *one-way added latency*, from the moment a frame's last sample was captured
to the moment that frame is played out (so it excludes the frame's own duration, which
any 20 ms framing costs), per played frame; lost, late, concealed and FEC-recovered
frames; and the word error rate of a Whisper transcription of the received audio
against the transcription of the sent audio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hark.audio import SAMPLE_RATE
from hark.trace import percentile
from hark.transport.rtp import RtpPacket
from hark.transport.stream import RtpStreamReceiver, RtpStreamSender

# what Piper says when no --input is given
DEFAULT_TEXT = ("Alexa, set a timer for ten minutes. What is the weather like in Paris "
                "tomorrow? Turn on the kitchen light and play some music in the living room. "
                "I would like a large cappuccino with oat milk and two sugars, please.")


@dataclass
class Impairment:
    loss: float = 0.0
    jitter_ms: float = 0.0
    reorder: float = 0.0
    duplicate: float = 0.0
    seed: int = 1


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance / reference length (lower case, no punctuation)."""
    norm = lambda s: re.sub(r"[^\w' ]+", " ", s.lower()).split()
    ref, hyp = norm(reference), norm(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)] / len(ref)


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, rx: RtpStreamReceiver):
        self.rx = rx
        self.arrived = 0
        self.wake = asyncio.Event()

    def datagram_received(self, data: bytes, addr) -> None:
        self.arrived += 1
        self.rx.push(RtpPacket.parse(data))
        self.wake.set()


async def run_transport(samples: np.ndarray, imp: Impairment, codec: str = "opus",
                        frame_ms: int = 20, jitter_min_ms: float = 10,
                        jitter_max_ms: float = 120, fec: bool = True) -> dict:
    """Stream ``samples`` (16 kHz int16) sender -> receiver over loopback UDP."""
    loop = asyncio.get_running_loop()
    rng = random.Random(imp.seed)
    tx = RtpStreamSender(codec, SAMPLE_RATE, frame_ms, fec)
    rx = RtpStreamReceiver(codec, tx.wire_rate, frame_ms, jitter_min_ms, jitter_max_ms)
    proto = _Receiver(rx)
    recv_t, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", 0))
    port = recv_t.get_extra_info("sockname")[1]
    send_t, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol,
                                                    remote_addr=("127.0.0.1", port))
    n = tx.frame_samples
    frames = [samples[i:i + n] for i in range(0, len(samples) - n + 1, n)]
    captured: dict[int, float] = {}  # ext-seq offset -> capture time of the frame's end
    first_ts = tx.timestamp
    counts = {"sent": 0, "dropped": 0, "duplicated": 0, "reordered": 0}
    held: list[bytes] = []

    def emit(raw: bytes) -> None:
        delay = rng.uniform(0, imp.jitter_ms) / 1000.0
        if delay > 0:
            loop.call_later(delay, send_t.sendto, raw)
        else:
            send_t.sendto(raw)

    async def sender() -> None:
        t0 = time.monotonic()
        for k, frame in enumerate(frames):
            end = t0 + (k + 1) * frame_ms / 1000.0  # the frame is complete at this moment
            wait = end - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            captured[k] = end
            for pkt in tx.push(frame):
                raw = pkt.pack()
                counts["sent"] += 1
                if rng.random() < imp.loss:
                    counts["dropped"] += 1
                    continue
                if rng.random() < imp.reorder:
                    counts["reordered"] += 1
                    held.append(raw)  # goes out after the next packet
                    continue
                emit(raw)
                while held:
                    emit(held.pop())
                if rng.random() < imp.duplicate:
                    counts["duplicated"] += 1
                    emit(raw)
        while held:
            emit(held.pop())

    latencies: list[float] = []
    out: list[np.ndarray] = []
    done = asyncio.Event()

    async def player() -> None:
        while not done.is_set() or rx.jitter.next_due() is not None:
            due = rx.jitter.next_due()
            if due is None:
                proto.wake.clear()
                try:
                    await asyncio.wait_for(proto.wake.wait(), 0.05)
                except TimeoutError:
                    pass
                continue
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            now = time.monotonic()
            for frame, pcm in rx.pop(now):
                k = ((frame.timestamp - first_ts) & 0xFFFFFFFF) // tx.frame_samples
                if frame.payload is not None and k in captured:
                    latencies.append((now - captured[k]) * 1000.0)
                out.append(pcm)

    play = asyncio.create_task(player())
    await sender()
    await asyncio.sleep(imp.jitter_ms / 1000.0 + 0.3)
    done.set()
    await play
    send_t.close()
    recv_t.close()
    st = rx.jitter.stats
    received = np.concatenate(out) if out else np.zeros(0, np.int16)
    return {
        "one_way_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
                       "max": max(latencies) if latencies else None},
        "frames": len(frames),
        "packets_sent": counts["sent"],
        "impairment": {"dropped": counts["dropped"], "duplicated": counts["duplicated"],
                       "reordered": counts["reordered"]},
        "lost_frames": st.lost,
        "late_frames": st.late,
        "concealed_frames": rx.concealed + rx.fec_recovered,
        "plc_frames": rx.concealed,
        "fec_recovered_frames": rx.fec_recovered,
        "duplicates_dropped": st.duplicates,
        "reordered_in_time": st.reordered,
        "jitter_target_ms": st.target_ms,
        "codec": codec,
        "frame_ms": frame_ms,
        "_received": received,
        "_rate": rx.rate,
        "_latencies": latencies,
    }


def plot_transport(res: dict, latencies: list[float], path: str, target_ms: float = 40.0) -> str:
    """PNG: one-way latency of every played frame over the stream (with p50, p95 and the
    target), its distribution, and what happened to the frames (lost, recovered, late)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(15, 4.2),
                                        gridspec_kw={"width_ratios": [2.2, 1.2, 1.2]})
    imp = res.get("impairment_settings", {})
    title = (f"{res['codec']} {res['frame_ms']} ms frames, loss {imp.get('loss', 0):.0%}, "
             f"jitter 0-{imp.get('jitter_ms', 0):.0f} ms, reorder {imp.get('reorder', 0):.0%}, "
             f"duplicates {imp.get('duplicate', 0):.0%}")
    ow = res["one_way_ms"]
    ax1.plot(range(len(latencies)), latencies, ".", ms=3, color="#1f77b4")
    for y, label, style in ((ow["p50"], "p50", "-"), (ow["p95"], "p95", "--"),
                            (target_ms, "target", ":")):
        if y is not None:
            ax1.axhline(y, ls=style, color="#d62728" if "target" in label else "#555",
                        lw=1, label=f"{label} {y:.1f} ms")
    ax1.set_xlabel("played frame")
    ax1.set_ylabel("one-way added latency (ms)")
    ax1.set_title(title, fontsize=9)
    ax1.legend(fontsize=8, loc="upper right")
    ax2.hist(latencies, bins=30, color="#1f77b4")
    ax2.set_xlabel("one-way added latency (ms)")
    ax2.set_ylabel("frames")
    ax2.set_title("distribution", fontsize=10)
    names = ["lost", "FEC-recovered", "PLC", "late", "duplicates\ndropped"]
    vals = [res["lost_frames"], res["fec_recovered_frames"], res["plc_frames"],
            res["late_frames"], res["duplicates_dropped"]]
    ax3.bar(names, vals, color=["#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"])
    ax3.set_title(f"{res['frames']} frames sent", fontsize=10)
    ax3.tick_params(axis="x", labelsize=8)
    for i, v in enumerate(vals):
        ax3.text(i, v, str(v), ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- same host: the shared-memory ring ------------------------------------------------

_STAMP = struct.Struct("<d")


def _shm_writer(name: str, frames: int, frame_ms: int, size: int) -> None:
    """Child process: one frame every ``frame_ms``, stamped with the time it was written
    (CLOCK_MONOTONIC is one clock for every process on the machine)."""
    from hark.transport.shm import ShmRing

    ring = ShmRing(name, create=False)
    pad = bytes(max(0, size - _STAMP.size))
    t0 = time.monotonic()
    for k in range(frames):
        wait = t0 + k * frame_ms / 1000.0 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        ring.write(_STAMP.pack(time.monotonic()) + pad)
    ring.close()


def run_shm_latency(mode: str = "wake", frames: int = 500, frame_ms: int = 20,
                    size: int = 80, poll_ms: float = 5.0) -> dict:
    """One-way latency of frames through a :class:`~hark.transport.shm.ShmRing` from
    another process: written -> read by a reader that either sleeps on the ring's
    wake-up (``mode="wake"``) or polls every ``poll_ms`` (``"poll"``, how it was read
    before wake-ups)."""
    import multiprocessing as mp

    from hark.transport.shm import ShmRing

    if mode not in ("wake", "poll"):
        raise ValueError(f"mode must be 'wake' or 'poll', not {mode!r}")
    ring = ShmRing(capacity=64 * 1024)
    if mode == "wake":
        ring.fileno()  # listen before the writer starts
    proc = mp.get_context("spawn").Process(target=_shm_writer,
                                           args=(ring.name, frames, frame_ms, size))
    proc.start()
    lat: list[float] = []
    timeouts = 0
    try:
        while len(lat) < frames:
            if mode == "wake":
                ring.clear()
            got = False
            while (raw := ring.read()) is not None:
                lat.append((time.monotonic() - _STAMP.unpack_from(raw)[0]) * 1000.0)
                got = True
            if got:
                continue
            if not proc.is_alive() and ring.read() is None:
                break
            if mode == "wake":
                if not ring.wait(1.0):
                    timeouts += 1
            else:
                time.sleep(poll_ms / 1000.0)
    finally:
        proc.join(5)
        wakeups = ring.wakeups
        ring.close()
    return {"mode": mode, "frames": len(lat), "wakeups": wakeups, "wait_timeouts": timeouts,
            "one_way_ms": {"p50": percentile(lat, 50), "p95": percentile(lat, 95),
                           "max": max(lat) if lat else None}}


def cmd_bench_transport(args: argparse.Namespace) -> int:
    """``hark bench transport`` (options in :mod:`hark.bench.cli`)."""
    from hark.audio import read_audio, resample, write_wav
    from hark.cli import load_cfg

    cfg = load_cfg(args)
    if args.path == "shm":
        return _bench_shm(args)
    if args.input:
        speech = np.concatenate([read_audio(p) for p in args.input])
    else:
        from hark.tts.piper import load_tts

        tts = load_tts(cfg)
        speech = resample(np.concatenate([c.samples for c in tts.synthesize(DEFAULT_TEXT)]),
                          tts.sample_rate, 16000)
    imp = Impairment(args.loss, args.jitter_ms, args.reorder, args.duplicate, args.seed)
    res = asyncio.run(run_transport(speech, imp, args.codec or cfg.transport.codec,
                                    args.frame_ms or cfg.transport.frame_ms,
                                    cfg.transport.jitter_min_ms, cfg.transport.jitter_max_ms,
                                    cfg.transport.fec))
    received, rate = res.pop("_received"), res.pop("_rate")
    latencies = res.pop("_latencies")
    if args.save:
        write_wav(args.save, received, rate)
    if not args.no_wer:
        from hark.asr.whisper import load_asr

        transcribe = load_asr(cfg).transcribe
        sent_text = transcribe(speech)
        recv_text = transcribe(resample(received, rate, 16000))
        sent_text = getattr(sent_text, "text", sent_text)
        recv_text = getattr(recv_text, "text", recv_text)
        res["transcript_sent"] = sent_text
        res["transcript_received"] = recv_text
        res["wer_received_vs_sent"] = word_error_rate(sent_text, recv_text)
        if not args.input:
            res["wer_sent_vs_text"] = word_error_rate(DEFAULT_TEXT, sent_text)
            res["wer_received_vs_text"] = word_error_rate(DEFAULT_TEXT, recv_text)
    res["impairment_settings"] = {"loss": args.loss, "jitter_ms": args.jitter_ms,
                                  "reorder": args.reorder, "duplicate": args.duplicate}
    ow = res["one_way_ms"]
    print(f"one-way added latency: p50 {ow['p50']:.1f} ms, p95 {ow['p95']:.1f} ms "
          f"(jitter buffer target {res['jitter_target_ms']:.1f} ms)")
    print(f"frames {res['frames']}: lost {res['lost_frames']} (FEC-recovered "
          f"{res['fec_recovered_frames']}, PLC {res['plc_frames']}), late {res['late_frames']}, "
          f"duplicates dropped {res['duplicates_dropped']}")
    if "wer_received_vs_sent" in res:
        print(f"WER received vs sent transcription: {res['wer_received_vs_sent']:.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        print(f"plot: {plot_transport(res, latencies, args.plot)}")
    return 0


def _bench_shm(args: argparse.Namespace) -> int:
    """Same-host ring: a writer process -> this process, read on wake-up vs polled."""
    results = {}
    for mode in ("poll", "wake"):
        r = run_shm_latency(mode, args.frames, args.frame_ms or 20)
        results[mode] = r
        ow = r["one_way_ms"]
        print(f"shm {mode:4s}: one-way p50 {ow['p50']:.3f} ms, p95 {ow['p95']:.3f} ms, "
              f"max {ow['max']:.3f} ms over {r['frames']} frames "
              f"(wake-ups {r['wakeups']}, wait timeouts {r['wait_timeouts']})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0
