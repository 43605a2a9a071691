"""``hark satellite``: the small device by the person.

Threads and tasks:

- the *wake thread* reads the microphone (or file/stdin) 20 ms at a time and runs the
  wake word on every frame, at real-time priority and pinned to a core where the OS
  allows; it hands each frame (and any detection) to the event loop;
- the event loop keeps a pre-roll ring, talks to the server (control connection, audio
  over UDP/TCP/shared memory), plays the reply as it arrives through a jitter buffer,
  and reconnects with backoff when the server goes away.

After a wake word the pre-roll and the live audio stream to the server until it says
the person stopped speaking. The wake word keeps running during the reply: saying it
again interrupts (barge-in), and so does speech over the reply (its echo removed first,
:class:`~hark.bargein.detector.PlaybackListener`). For ``wake.followup_s`` after a reply,
speech starts a turn without the wake word: voice activity (Silero VAD,
:class:`~hark.satellite.followup.FollowUpGate`), not loudness, once the reply and its
echo have died away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hark.audio import SAMPLE_RATE, AudioChunk, SampleClock
from hark.auth import read_server_token
from hark.config import Config
from hark.errors import HarkError, ProtocolError
from hark.satellite.followup import FollowUpGate
from hark.sched import SchedResult, set_affinity, set_realtime
from hark.transport import messages as m
from hark.transport.control import Connection
from hark.transport.keepalive import enable_keepalive
from hark.transport.link import AudioLink
from hark.transport.rtp import PT_PROBE, RtpPacket, seq_delta
from hark.transport.shm import ShmRing, host_id
from hark.transport.stream import RtpStreamReceiver, RtpStreamSender

log = logging.getLogger(__name__)

FRAME_MS = 20
FRAME = SAMPLE_RATE * FRAME_MS // 1000
PRE_ROLL_S = 0.1  # audio before the detection point sent with the turn
FOLLOWUP_PRE_ROLL_S = 0.4  # a follow-up's start: the VAD needs ~0.2 s to be sure
ECHO_TAIL_S = 0.5  # after the last reply frame, the room may still ring with it
UNDERRUN_S = 0.03  # reply audio this late: the speaker may have played a gap
TURN_BUFFER_S = 30.0  # a turn's sent audio kept for resending after a move to TCP
PROBE_BYTES = 160  # a re-probe is as big as an audio packet (small ones may pass alone)
MAX_PROBE_WAIT = 16  # turns between UDP re-probes, at most


def earcon(freq: float = 880.0, seconds: float = 0.08) -> np.ndarray:
    """A short soft beep (16 kHz) that says "I'm listening"."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    env = np.minimum(1.0, np.minimum(t, seconds - t) / 0.01)  # 10 ms fade in/out
    return (4000 * env * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def wake_thread_sched(cfg: Config) -> list[SchedResult]:
    """Scheduling for the calling thread, the wake thread: real-time priority
    (``sched.realtime``) and pinned to ``sched.pin_cores.wake`` or else to the last core
    this process may use, each where the OS permits (:mod:`hark.sched`; never raises).
    Memory is not locked here."""
    sc = cfg.sched
    results = [set_realtime("wake", sc.rt_priority)] if sc.realtime else []
    if hasattr(os, "sched_getaffinity"):
        cores = (sc.pin_cores or {}).get("wake") or [max(os.sched_getaffinity(0))]
        results.append(set_affinity("wake", list(cores)))
    return results


@dataclass
class SatelliteStats:
    wakes: int = 0
    followups: int = 0
    turns_done: int = 0
    barge_ins: int = 0
    connects: int = 0
    frames_played: int = 0
    udp_fallbacks: int = 0  # turns whose audio the server moved from UDP to TCP
    frames_resent: int = 0  # audio frames resent over TCP after a fallback
    udp_restored: int = 0  # times a re-probe brought audio back to UDP
    reply_audio_at: list[float] = field(default_factory=list)  # first reply frame per turn
    transcripts: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)


class Satellite:
    """Runs until :meth:`stop` (or, with ``exit_when_done``, until a finite source has
    been played and every turn it started has been answered)."""

    def __init__(self, cfg: Config, source: Any, sink: Any, *, detector: Any = None,
                 exit_when_done: bool = False, realtime_thread: bool = True):
        self.cfg = cfg
        self.source = source
        self.sink = sink
        if detector is None:
            from hark.wake.detector import load_wake

            detector = load_wake(cfg)
        self.detector = detector
        self.exit_when_done = exit_when_done
        self.realtime_thread = realtime_thread
        self.stats = SatelliteStats()
        host, _, port = cfg.satellite.server.rpartition(":")
        self.server_host, self.server_port = host or "127.0.0.1", int(port or 10700)
        # the wake word's second stage may confirm up to its wait after the keyword: the
        # audio of that wait is sent with the turn too
        wait_s = getattr(getattr(detector, "verifier", None), "wait_s", 0.0) or 0.0
        self._pre_roll: deque[np.ndarray] = deque(
            maxlen=max(1, int(max(FOLLOWUP_PRE_ROLL_S, PRE_ROLL_S + wait_s) * 1000 / FRAME_MS)
                       + 1))
        self._stop = asyncio.Event()
        self.conn: Connection | None = None
        self.session: str = ""
        self._streaming = False
        self._turn_open = False  # wake sent, turn-end not yet received
        self._sender: RtpStreamSender | None = None
        self._receiver: RtpStreamReceiver | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._welcome: m.Welcome | None = None
        self._server_ip = ""  # the control connection's peer: reply audio comes from it
        self._link: AudioLink | None = None  # this connection's audio paths
        self._followup_until = 0.0
        self._probe_ok = asyncio.Event()
        self._turn_sent: deque[RtpPacket] = deque(maxlen=int(TURN_BUFFER_S * 1000 / FRAME_MS))
        self._udp_degraded = False  # auto mode fell back to TCP: probe UDP again later
        self._probe_wait = 1  # turns to wait before the next re-probe
        self._turns_degraded = 0
        self._restored_by_probe = False
        self._reply_started = False
        self._playback_started = 0.0  # when the listener's reference audio began
        self._speaker_clock = 0.0  # when the audio handed to the sink will have played
        self._last_audio = 0.0
        self.connected = asyncio.Event()
        self._listener = self._make_listener() if cfg.wake.barge_in_speech else None
        self._followup_gate = self._make_followup_gate() if cfg.wake.followup_s > 0 else None

    @property
    def _path(self) -> str:
        """The audio path of this (or the last) connection: udp, tcp or shm."""
        return self._link.path if self._link is not None else "tcp"

    def _make_listener(self):
        """Hears the person over the reply, with the reply's own echo removed first."""
        from hark.bargein.detector import PlaybackListener
        from hark.vad.silero import load_vad

        try:
            return PlaybackListener(load_vad(self.cfg), canceller=self.cfg.wake.echo_canceller)
        except HarkError as exc:
            log.warning("speech barge-in off (only the wake word interrupts): %s", exc)
            return None

    def _make_followup_gate(self) -> FollowUpGate | None:
        """Hears the person going on after a reply (voice activity, its own VAD state)."""
        from hark.vad.silero import load_vad

        try:
            return FollowUpGate(load_vad(self.cfg))
        except HarkError as exc:
            log.warning("follow-up without the wake word off (no VAD): %s", exc)
            return None

    # --- wake thread --------------------------------------------------------------------
    def _wake_thread(self, loop: asyncio.AbstractEventLoop, q: asyncio.Queue) -> None:
        if self.realtime_thread:
            log.info("wake word thread: %s", "; ".join(map(str, wake_thread_sched(self.cfg)))
                     or "no scheduling controls on this OS")
        # when each frame was captured: a thread that fell behind reads a backlog of older
        # frames at once, and their reading time would place them after the reply began
        # (counted afresh after audio was dropped)
        clock = SampleClock(SAMPLE_RATE)
        try:
            for frame in self.source:
                t = time.monotonic()
                if getattr(self.source, "overflowed", False):
                    clock = SampleClock(SAMPLE_RATE)
                captured = clock.stamp(len(frame), t, captured=True)
                ev = self.detector.process(AudioChunk(frame, SAMPLE_RATE, t))
                if self._stop.is_set():
                    return
                loop.call_soon_threadsafe(q.put_nowait, (frame, ev, captured))
            loop.call_soon_threadsafe(q.put_nowait, None)
        except RuntimeError:  # the loop closed under us: the satellite is stopping
            return
        except Exception as exc:  # noqa: BLE001 - reported on the loop
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(q.put_nowait, exc)

    # --- main ---------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        thread = threading.Thread(target=self._wake_thread, args=(loop, q),
                                  name="hark-wake", daemon=True)
        thread.start()
        link = asyncio.create_task(self._link_loop())
        player = asyncio.create_task(self._play_loop())
        try:
            while not self._stop.is_set():
                item = await q.get()
                if item is None:
                    break
                if isinstance(item, Exception):
                    raise item
                frame, ev, captured = item
                await self._on_frame(frame, ev, captured)
                if self.exit_when_done and self._finished():
                    break
        finally:
            self._stop.set()
            getattr(self.source, "done", threading.Event()).set()
            await asyncio.to_thread(thread.join, 2.0)
            for t in (link, player):
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
            await self._disconnect()
            self.sink.close()

    def stop(self) -> None:
        self._stop.set()

    def _finished(self) -> bool:
        ended = getattr(self.source, "ended", None)
        return bool(ended is not None and ended.is_set() and not self._turn_open
                    and not self._streaming and time.monotonic() - self._last_audio > 0.5)

    async def _on_frame(self, frame: np.ndarray, wake: Any, captured: float | None = None
                        ) -> None:
        now = time.monotonic()
        lis = self._listener
        # the listener lines microphone frames up with the reply sample by sample: only
        # frames captured once the reply began to play (a backlog may precede them)
        if lis is not None and lis.active and (captured is None or
                                               captured >= self._playback_started):
            if now - self._last_audio > 0.5:  # the reply has finished playing
                lis.reset()
            elif wake is None and not self._streaming and lis.heard(frame):
                log.info("barge-in: speech over the reply")
                lis.reset()
                if not self._turn_open:  # the reply was still playing out after turn-end
                    self.stats.barge_ins += 1
                    self.sink.stop()
                    if self._receiver is not None:
                        self._receiver = self._new_receiver()
                await self._start_turn(followup=True)  # (stops an open turn's reply)
        if wake is not None:
            self.stats.wakes += 1
            late_s = getattr(wake, "late_s", 0.0)
            log.info("wake word '%s' (%.2f%s)", wake.keyword, wake.probability,
                     f", confirmed {late_s * 1000:.0f} ms later" if late_s else "")
            await self._start_turn(followup=False, pre_roll_s=PRE_ROLL_S + late_s)
        elif not self._streaming and not self._turn_open and now < self._followup_until \
                and self._followup_gate is not None:
            gate = self._followup_gate
            if now - self._last_audio < ECHO_TAIL_S or (lis is not None and lis.active):
                gate.reset()  # the reply (or its echo) is in the room: the listener decides
            elif gate.heard(frame):
                self.stats.followups += 1
                log.info("follow-up speech without wake word")
                await self._start_turn(followup=True, pre_roll_s=FOLLOWUP_PRE_ROLL_S)
        if self._streaming:
            self._send_audio(frame)
        self._pre_roll.append(frame)

    async def _start_turn(self, followup: bool, pre_roll_s: float = PRE_ROLL_S) -> None:
        if self.conn is None:
            log.warning("wake word heard but the server (%s:%d) is not reachable",
                        self.server_host, self.server_port)
            return
        if self._turn_open:  # barge-in: interrupt the reply
            self.stats.barge_ins += 1
            self.sink.stop()
            if self._receiver is not None:
                self._receiver = self._new_receiver()
        self._followup_until = 0.0
        if self._followup_gate is not None:
            self._followup_gate.reset()
        w = self._welcome
        assert w is not None  # conn is set only after a welcome
        if self._sender is None:  # one RTP stream per connection; each turn a talk spurt
            self._sender = RtpStreamSender(w.codec, SAMPLE_RATE, w.frame_ms,
                                           self.cfg.transport.fec, ssrc=w.ssrc)
        try:
            # "seq": the turn's first packet, so a server that reads the audio (UDP,
            # shared memory) before this event still gives it to the new turn
            await self.conn.send_message(m.Wake(self.detector.keyword, followup,
                                                self._sender.seq))
        except (ConnectionError, OSError):
            return
        self._turn_open = True
        self._streaming = True
        self._turn_sent.clear()
        self._reply_started = False
        if self.cfg.wake.earcon and not followup:
            self.sink.write(earcon(), SAMPLE_RATE)
        keep = max(1, round(pre_roll_s * 1000 / FRAME_MS))
        for f in list(self._pre_roll)[-keep:]:
            self._send_audio(f)

    def _send_audio(self, frame: np.ndarray) -> None:
        if self._sender is None:
            return
        for pkt in self._sender.push(frame):
            self._send_packet(pkt)

    def _send_packet(self, pkt: RtpPacket) -> None:
        self._turn_sent.append(pkt)
        if self._link is not None:
            self._link.send(pkt)

    def _fall_back_to_tcp(self, last_seq: int | None) -> None:
        """The server got no (more) UDP audio: from now on audio goes over TCP, starting
        with every frame of this turn after ``last_seq``, the newest it did receive."""
        link = self._link
        if link is None:
            return
        link.path = "tcp"
        self.stats.udp_fallbacks += 1
        if self.cfg.transport.tcp_audio_fallback == "auto":
            self._udp_degraded = True
            self._turns_degraded = 0
            if self._restored_by_probe:  # the probe passed but audio did not: wait longer
                self._probe_wait = min(self._probe_wait * 2, MAX_PROBE_WAIT)
        self._restored_by_probe = False
        if not self._turn_open:
            return
        for pkt in list(self._turn_sent):
            if last_seq is None or seq_delta(pkt.seq, last_seq) > 0:
                link.post(m.AudioChunk(pkt.pack()))  # in order, after what went before
                self.stats.frames_resent += 1

    async def _reprobe(self) -> None:
        """Between turns after a fallback: if UDP now carries audio-sized packets both
        ways, move audio back to it."""
        link, w = self._link, self._welcome
        if link is None or link.closed or self.conn is None or w is None:
            return
        self._probe_ok.clear()
        pad = os.urandom(PROBE_BYTES)
        for i in range(3):
            if not link.send_udp(RtpPacket(i, 0, w.ssrc, pad, PT_PROBE).pack()):
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._probe_ok.wait(), 0.2)
                break
        if not self._probe_ok.is_set() or self._turn_open or link.path != "tcp":
            return  # still blocked (or a turn began meanwhile: try after it)
        try:
            await self.conn.send_message(m.Transport("udp"))
        except (ConnectionError, OSError, AttributeError):
            return
        link.path = "udp"
        self._udp_degraded = False
        self._restored_by_probe = True
        self.stats.udp_restored += 1
        log.info("UDP gets through again: audio back over UDP")

    # --- connection ---------------------------------------------------------------------
    async def _link_loop(self) -> None:
        backoff = 0.25
        while not self._stop.is_set():
            try:
                await self._connect()
                backoff = 0.25
                await self._control_loop()
            except (TimeoutError, ConnectionError, OSError, ProtocolError) as exc:
                log.info("server %s:%d unreachable (%s); retrying in %.1f s", self.server_host,
                         self.server_port, exc, backoff)
            except HarkError as exc:  # refused (token): retry slowly, the token may change
                backoff = 10.0
                log.error("%s; retrying in %.0f s", exc, backoff)
            await self._disconnect()
            if self._stop.is_set():
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)

    async def _connect(self) -> None:
        conn = await Connection.open(self.server_host, self.server_port)
        enable_keepalive(conn.writer)  # a server that vanished is noticed, then retried
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _SatUdp(self), local_addr=("0.0.0.0" if self.server_host not in
                                               ("127.0.0.1", "localhost") else "127.0.0.1", 0))
        udp_port = self._udp.get_extra_info("sockname")[1]
        try:
            welcome = await self._handshake(conn, udp_port)
        except Exception:
            await conn.close()  # (refused, or a malformed answer: the link loop retries)
            raise
        self._welcome = welcome
        self._sender = None
        # reply audio over UDP counts only from the server's own address
        self._server_ip = (conn.writer.get_extra_info("peername") or ("",))[0]
        self._link = AudioLink(conn, self._udp, (self.server_host, welcome.rtp_port))
        self.conn = conn
        self.session = welcome.session
        self._receiver = self._new_receiver()
        self._link.path = await self._choose_path(welcome)
        await conn.send_message(m.Transport(self._link.path))
        self.stats.connects += 1
        log.info("connected to %s:%d as %s, audio over %s", self.server_host,
                 self.server_port, self.session, self._path)
        self.connected.set()

    async def _handshake(self, conn: Connection, udp_port: int) -> m.Welcome:
        """Send ``hello``; the server's ``welcome``, or the error it answered with."""
        caps = ["audio-udp", "audio-tcp", "opus", "pcm", "barge-in"]
        if self.cfg.transport.shm != "never":
            caps.append("audio-shm")
        await conn.send_message(m.Hello(
            name=self.cfg.satellite.name, token=self.token(), capabilities=caps,
            codecs=["opus", "pcm"], udp_port=udp_port, host_id=host_id(),
            area=self.cfg.satellite.area))
        ev = await asyncio.wait_for(conn.recv(), 10.0)
        if ev is None:
            raise ConnectionError("server closed the connection")
        if m.Error.is_type(ev.type):
            err = m.Error.from_event(ev)
            if err.code == "auth":
                raise HarkError(f"server refused this satellite: {err.message}",
                                fix="set satellite.token (or hark satellite --token) to the "
                                "server's token ('hark token show' on the server) or to "
                                "this satellite's entry in server.tokens")
            raise ConnectionError(err.message)
        if not m.Welcome.is_type(ev.type):
            raise ProtocolError(f"expected welcome, got {ev.type[:64]}")
        return m.Welcome.from_event(ev)

    async def _choose_path(self, welcome: m.Welcome) -> str:
        mode = self.cfg.transport.tcp_audio_fallback
        link = self._link
        assert link is not None
        if welcome.shm is not None and self.cfg.transport.shm != "never":
            try:
                link.shm_out = ShmRing(welcome.shm.up, create=False)
                # reply frames are taken the moment the server writes them (wake-up)
                link.watch_shm(ShmRing(welcome.shm.down, create=False), self.datagram,
                               self._on_shm_error)
                return "shm"
            except ProtocolError as exc:
                log.info("shared memory unavailable (%s)", exc)
        if mode == "always":
            return "tcp"
        self._probe_ok.clear()
        for i in range(5):  # does UDP get through, both ways?
            link.send_udp(RtpPacket(i, 0, welcome.ssrc, b"", PT_PROBE).pack())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._probe_ok.wait(), 0.2)
                return "udp"
        if mode == "never":
            log.warning("no UDP reply from the server; sending UDP anyway (fallback 'never')")
            return "udp"
        log.info("UDP does not get through: audio over the TCP control connection")
        self._udp_degraded = True
        self._turns_degraded = 0
        return "tcp"

    def token(self) -> str:
        """The token this satellite presents: ``satellite.token``, else the server
        token file of a server on this machine (read at each connect: the server may make
        it after the satellite starts), else none."""
        return self.cfg.satellite.token or read_server_token(self.cfg) or ""

    def _new_receiver(self) -> RtpStreamReceiver:
        w = self._welcome
        assert w is not None  # a receiver exists only once the server welcomed us
        return RtpStreamReceiver(w.codec, w.down_rate, w.frame_ms, w.jitter_min_ms,
                                 w.jitter_max_ms)

    async def _disconnect(self) -> None:
        conn, self.conn = self.conn, None
        self.connected.clear()
        self._streaming = False
        self._turn_open = False
        if self._link is not None:
            self._link.close()
        if conn is not None:
            await conn.close()
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    async def _control_loop(self) -> None:
        assert self.conn is not None
        while not self._stop.is_set():
            ev = await self.conn.recv()
            if ev is None:
                raise ConnectionError("server closed the connection")
            self.stats.events.append(ev.type)
            try:
                msg = m.parse(ev)
            except m.UnknownMessageType as exc:  # a newer server's: not for this satellite
                log.debug("ignoring %s", exc)
                continue
            except ProtocolError as exc:
                log.warning("ignoring a malformed message from the server: %s", exc)
                continue
            await self._on_message(msg)

    async def _on_message(self, msg: m.Message) -> None:
        """One message from the server, after the welcome."""
        match msg:
            case m.AudioChunk():
                self.datagram(msg.packet)
            case m.SpeechEnd() | m.Busy():
                self._stop_streaming()
                if isinstance(msg, m.Busy) and self._listener is not None:
                    self._listener.ignore_until_reset()  # talking over "busy" is no barge-in
            case m.Transcript(final=True):
                self.stats.transcripts.append(msg.text)
            case m.ReplyText():
                log.info("reply: %s", msg.text)
                self.stats.replies.append(msg.text)
            case m.TurnEnd():
                self._stop_streaming()
                self._turn_open = False
                self.stats.turns_done += 1
                if self._path == "udp":
                    self._probe_wait = 1  # a whole turn over UDP: the path is sound
                if self._udp_degraded and self._path == "tcp":
                    self._turns_degraded += 1
                    if self._turns_degraded >= self._probe_wait:
                        self._turns_degraded = 0
                        asyncio.get_running_loop().create_task(self._reprobe())
                self._followup_until = time.monotonic() + 1.0 + self.cfg.wake.followup_s \
                    if not msg.error else 0.0
            case m.Error():
                log.warning("server: %s", msg.message)
            case m.Transport(audio="tcp"):
                log.warning("server asks for audio over TCP (newest UDP frame it has: %s)",
                            msg.last_seq)
                self._fall_back_to_tcp(msg.last_seq)
            case m.Transport(audio="udp") if self._link is not None:
                log.warning("server asks for audio over UDP")
                self._link.path = "udp"
            case m.Timer():
                log.info("timer: %s", msg.text)
            case m.BargeIn():
                log.info("reply interrupted")
            case m.Ping():
                assert self.conn is not None
                await self.conn.send_message(m.Pong(msg.data))

    def _stop_streaming(self) -> None:
        if self._streaming and self._sender is not None:
            for pkt in self._sender.flush():
                self._send_packet(pkt)
            if self._link is not None:
                self._link.post(m.AudioStop())  # after the packets posted before it
        self._streaming = False

    # --- reply audio --------------------------------------------------------------------
    def datagram(self, data: bytes) -> None:
        """A reply packet (UDP, TCP fallback or shared memory)."""
        try:
            pkt = RtpPacket.parse(data)
        except ProtocolError:
            return
        if self._welcome is None or pkt.ssrc != self._welcome.server_ssrc:
            return
        if pkt.pt == PT_PROBE:
            self._probe_ok.set()
            return
        if self._receiver is not None:
            self._receiver.push(pkt)

    def _on_shm_error(self, exc: ProtocolError) -> None:
        log.warning("reply audio ring: %s", exc)

    async def _play_loop(self) -> None:
        while True:
            await asyncio.sleep(0.005)  # the jitter buffer's playout clock
            rx = self._receiver
            if rx is None:
                continue
            for _frame, pcm in rx.pop():
                if not self._reply_started:
                    self._reply_started = True
                    self.stats.reply_audio_at.append(time.monotonic())
                self.sink.write(pcm, rx.rate)
                now = time.monotonic()
                # did the speaker play a gap before this audio (it ran dry in a stall)? The
                # sink says so when it can tell; else: this late, it did (less late, its
                # buffer carried the reply on)
                told = getattr(self.sink, "underran", None)
                gap = now > self._speaker_clock + UNDERRUN_S if told is None else told
                lis = self._listener
                if lis is not None:
                    if lis.active and gap:
                        # the speaker ran dry (a stall): the echo no longer lines up
                        # with the reference, so the listener measures it afresh
                        ignoring = lis.ignoring
                        lis.reset()
                        lis.ignoring = ignoring
                    if not lis.active:
                        self._playback_started = now
                    lis.played(pcm, rx.rate)
                # when the audio handed over will have played: on from the audio before
                # it, or from now after a gap (a clock moved on by every small delay ran
                # ahead of the speaker, until a gap it took for none put the echo out of
                # line with the reference and the listener heard the reply as a barge-in)
                self._speaker_clock = (now if gap else self._speaker_clock) + len(pcm) / rx.rate
                self.stats.frames_played += 1
                self._last_audio = time.monotonic()
                if self._followup_until:
                    self._followup_until = max(self._followup_until,
                                               self._last_audio + self.cfg.wake.followup_s)


class _SatUdp(asyncio.DatagramProtocol):
    def __init__(self, sat: Satellite):
        self.sat = sat

    def datagram_received(self, data: bytes, addr) -> None:
        server = self.sat._server_ip
        if server and addr and addr[0] != server:
            return  # another host's packet, whatever SSRC it carries
        self.sat.datagram(data)
