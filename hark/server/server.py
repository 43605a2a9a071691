"""``hark serve``: one Assistant, many satellites.

Each satellite holds one control connection (TCP, :mod:`hark.transport.control`) and is
one :class:`Session`. Its audio travels as RTP packets over UDP (one shared server
socket; the packet's SSRC says which session it belongs to), over the control
connection (``audio-chunk`` events: the fallback when UDP does not get through), or
through shared-memory rings when the satellite runs on this machine (read on the
writer's wake-up). The fallback loses nothing: when a turn's UDP audio does not arrive,
the server keeps what did, tells the satellite the newest sequence number it has
(``transport`` with ``last_seq``), and the satellite resends the rest over TCP; TCP and
shared-memory audio is decoded at once, without a jitter buffer.

A turn: the satellite sends ``wake``; the server feeds the session's incoming audio to
``assistant.run_turn`` and forwards each event (transcripts, intent, reply text) over
the control connection and the reply audio over the session's audio path. A second
``wake`` while a turn runs is a barge-in: the running turn is closed (its LLM/TTS work
cancelled) and a new one starts. A satellite that disappears is cleaned up with its
turn. Extension points for observability: :attr:`Server.sessions`,
:attr:`Server.turn_listeners` (called with every finished turn's Trace) and
:attr:`Server.event_listeners` (called with (session, event) for each turn event).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from hark.audio import SAMPLE_RATE, AudioChunk
from hark.config import Config
from hark.errors import HarkError, ProtocolError
from hark.pipeline.events import (
    IntentEvent,
    ReplyAudio,
    ReplyText,
    SpeechEnded,
    SpeechStarted,
    TranscriptEvent,
    TurnEnd,
)
from hark.trace import Trace
from hark.transport.control import MAX_HEADER, PROTOCOL_VERSION, Connection, Event
from hark.transport.rtp import PT_PROBE, RtpPacket
from hark.transport.shm import ShmRing, host_id
from hark.transport.stream import RtpStreamReceiver, RtpStreamSender, wire_rate

log = logging.getLogger(__name__)

BUSY_TEXT = "Sorry, I'm busy right now. Please try again in a moment."
HELLO_TIMEOUT_S = 5.0
UDP_SILENCE_S = 0.6  # no uplink audio this long after a wake: UDP is broken, use TCP
CAPABILITIES = ["wake", "asr", "tts", "intent", "pipeline", "barge-in", "timer",
                "audio-udp", "audio-tcp", "audio-shm", "opus", "pcm"]


def is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class ServerStats:
    packets_in: int = 0
    packets_dropped_unknown: int = 0  # SSRC of no authenticated session / wrong source
    packets_malformed: int = 0
    events_rejected: int = 0
    sessions_refused: int = 0
    turns: int = 0
    turns_busy: int = 0
    barge_ins: int = 0
    llm_worker_restarts: int = 0  # crashed LLM worker processes restarted (hark.llm.worker)


RECENT_PACKETS = 64  # uplink packets kept for a turn whose audio beat its "wake" event


@dataclass
class Session:
    """One connected satellite."""

    id: str
    name: str
    conn: Connection
    peer_host: str
    ssrc_up: int  # SSRC the satellite's audio must carry
    ssrc_down: int
    codec: str
    frame_ms: int
    down_rate: int  # wire rate of reply audio
    udp_port: int = 0  # satellite's UDP port for reply audio
    audio_path: str = "tcp"  # "udp" | "tcp" | "shm"
    udp_addr: tuple[str, int] | None = None
    shm_up: ShmRing | None = None
    shm_down: ShmRing | None = None
    receiver: RtpStreamReceiver | None = None
    inbox: asyncio.Queue[AudioChunk] | None = None  # decoded audio for the current turn
    turn: asyncio.Task | None = None
    playing: bool = False
    connected_at: float = field(default_factory=time.monotonic)
    turns: int = 0
    packets_up: int = 0  # audio packets accepted from this satellite
    udp_fallbacks: int = 0  # turns whose audio moved from UDP to TCP mid-turn
    fell_back: bool = False  # the current turn's audio moved from UDP to TCP
    info: dict[str, Any] = field(default_factory=dict)
    #: the last uplink packets, turn or not: a turn's first packets can be read before
    #: its "wake" event (UDP and shared memory do not wait for the TCP control channel)
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_PACKETS))


class Server:
    """The hark server. ``await start()``, then ``await serve_forever()`` or ``stop()``."""

    def __init__(self, cfg: Config, assistant: Any):
        self.cfg = cfg
        self.assistant = assistant
        self.sessions: dict[str, Session] = {}
        self.turn_listeners: list[Callable[[Trace], Any]] = []
        self.event_listeners: list[Callable[[Session, Any], Any]] = []
        #: ``owns(session)`` of other front ends (Wyoming satellites): their sessions'
        #: notifications are theirs to deliver, not a gone session of this server's
        self.other_sessions: list[Callable[[str], bool]] = []
        self.stats = ServerStats()
        self._by_ssrc: dict[int, Session] = {}
        self._turn_slots = asyncio.Semaphore(cfg.server.max_concurrent_turns)
        self._tcp: asyncio.base_events.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task] = set()
        self._host_id = host_id()
        self.control_port = 0
        self.rtp_port = 0
        assistant.on_notify(self._on_notify)
        # LLM engines in a supervised child process (llm.isolation = "process"): count
        # their restarts (exported as hark_server_llm_worker_restarts_total)
        llm = getattr(assistant, "llm", None)
        self._llm_workers = [e for e in (getattr(llm, "engine", None),
                                         getattr(llm, "fallback", None))
                             if isinstance(getattr(e, "on_restart", None), list)]
        for worker in self._llm_workers:
            worker.on_restart.append(self._on_llm_restart)

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        sc = self.cfg.server
        loop = asyncio.get_running_loop()
        self._tcp = await asyncio.start_server(self._handle_client, sc.host, sc.control_port,
                                               limit=MAX_HEADER)
        self.control_port = self._tcp.sockets[0].getsockname()[1]
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(sc.host, sc.rtp_port))
        self.rtp_port = self._udp.get_extra_info("sockname")[1]
        self._pump = asyncio.create_task(self._pump_audio())
        log.info("hark server on %s: control %d/tcp, audio %d/udp", sc.host,
                 self.control_port, self.rtp_port)

    async def serve_forever(self) -> None:
        assert self._tcp is not None
        await self._tcp.serve_forever()

    def _on_llm_restart(self, _count: int) -> None:  # a supervisor thread
        self.stats.llm_worker_restarts = sum(w.restarts for w in self._llm_workers)

    async def stop(self) -> None:
        for worker in self._llm_workers:
            if self._on_llm_restart in worker.on_restart:
                worker.on_restart.remove(self._on_llm_restart)
        if self._tcp:
            self._tcp.close()
        for s in list(self.sessions.values()):
            await self._end_session(s, "server stopping")
            await s.conn.close()
        if self._udp:
            self._udp.close()
        self._pump.cancel()
        for t in list(self._tasks):
            t.cancel()
        if self._tcp:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2.0)

    def _spawn(self, coro) -> asyncio.Task:
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # --- control connection -------------------------------------------------------------
    async def _handle_client(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        conn = Connection(reader, writer)
        peer = conn.peer[0] if conn.peer else None
        session: Session | None = None
        try:
            session = await self._handshake(conn, peer)
            if session is None:
                return
            await self._control_loop(session)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        except ProtocolError as exc:
            self.stats.events_rejected += 1
            log.info("closing %s: %s", peer, exc)
            with contextlib.suppress(Exception):
                await conn.send("error", {"code": "protocol", "message": str(exc)})
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session with %s failed", peer)
        finally:
            if session is not None:
                await self._end_session(session, "disconnected")
            await conn.close()

    async def _handshake(self, conn: Connection, peer: str | None) -> Session | None:
        sc = self.cfg.server
        try:
            hello = await asyncio.wait_for(conn.recv(), HELLO_TIMEOUT_S)
        except TimeoutError:
            await conn.send("error", {"code": "timeout", "message": "no hello"})
            return None
        if hello is None:
            return None
        if hello.type != "hello":
            await self._refuse(conn, "protocol", f"expected 'hello', got '{hello.type}'")
            return None
        d = hello.data
        name = str(d.get("name") or "satellite")[:64]
        if d.get("version") != PROTOCOL_VERSION:
            await self._refuse(conn, "version", f"protocol version {d.get('version')!r} "
                               f"not supported; this server speaks {PROTOCOL_VERSION}")
            return None
        expected = sc.tokens.get(name)
        if expected is not None or not is_loopback(peer):
            token = d.get("token")
            if expected is None or not isinstance(token, str) or not hmac.compare_digest(
                    token.encode(), expected.encode()):
                await self._refuse(conn, "auth", f"satellite '{name}' is not authorised: "
                                   "wrong or missing token (server.tokens)")
                return None
        if len(self.sessions) >= sc.max_sessions:
            await self._refuse(conn, "busy", f"server at max_sessions ({sc.max_sessions})")
            return None
        tc = self.cfg.transport
        codecs = d.get("codecs") if isinstance(d.get("codecs"), list) else ["opus", "pcm"]
        caps = d.get("capabilities") if isinstance(d.get("capabilities"), list) else []
        try:
            udp_port = int(d.get("udp_port") or 0)
            if not 0 <= udp_port < 65536:
                raise ValueError(udp_port)
        except (TypeError, ValueError):
            await self._refuse(conn, "protocol", f"bad udp_port {d.get('udp_port')!r}")
            return None
        codec = tc.codec if tc.codec in codecs else "pcm"
        s = Session(id=f"{name}-{uuid.uuid4().hex[:8]}", name=name, conn=conn,
                    peer_host=peer or "", ssrc_up=self._new_ssrc(), ssrc_down=self._new_ssrc(),
                    codec=codec, frame_ms=tc.frame_ms,
                    down_rate=wire_rate(codec, self.assistant.tts_rate))
        s.udp_port = udp_port
        welcome: dict[str, Any] = {
            "version": PROTOCOL_VERSION, "session": s.id, "capabilities": CAPABILITIES,
            "codec": codec, "frame_ms": s.frame_ms, "up_rate": SAMPLE_RATE,
            "down_rate": s.down_rate, "ssrc": s.ssrc_up, "server_ssrc": s.ssrc_down,
            "rtp_port": self.rtp_port, "audio": tc.tcp_audio_fallback,
            "jitter_min_ms": tc.jitter_min_ms, "jitter_max_ms": tc.jitter_max_ms,
        }
        if tc.shm != "never" and is_loopback(peer) and d.get("host_id") == self._host_id \
                and "audio-shm" in caps:
            s.shm_up, s.shm_down = ShmRing(), ShmRing()
            welcome["shm"] = {"up": s.shm_up.name, "down": s.shm_down.name}
            # read the moment the satellite writes (its wake-up), not on a timer
            asyncio.get_running_loop().add_reader(s.shm_up.fileno(), self._on_shm_up, s)
        s.receiver = RtpStreamReceiver(codec, SAMPLE_RATE, s.frame_ms, tc.jitter_min_ms,
                                       tc.jitter_max_ms)
        self.sessions[s.id] = s
        self._by_ssrc[s.ssrc_up] = s
        await conn.send("welcome", welcome)
        log.info("satellite '%s' connected from %s: session %s", name, peer, s.id)
        return s

    async def _refuse(self, conn: Connection, code: str, message: str) -> None:
        self.stats.sessions_refused += 1
        log.warning("refused satellite from %s: %s", conn.peer, message)
        await conn.send("error", {"code": code, "message": message})

    def _new_ssrc(self) -> int:
        while True:
            ssrc = random.getrandbits(32)
            if ssrc not in self._by_ssrc:
                return ssrc

    async def _control_loop(self, s: Session) -> None:
        while True:
            ev = await s.conn.recv()
            if ev is None:
                return
            handler = _HANDLERS.get(ev.type)
            if handler is None:
                self.stats.events_rejected += 1
                await s.conn.send("error", {"code": "unknown-event",
                                            "message": f"unknown event type '{ev.type[:64]}'"})
                continue
            try:
                await handler(self, s, ev)
            except (ProtocolError, HarkError, ValueError, TypeError, KeyError) as exc:
                self.stats.events_rejected += 1
                await s.conn.send("error", {"code": "bad-event", "message": str(exc)})
            if ev.type == "session-end":
                return

    async def _on_transport(self, s: Session, ev: Event) -> None:
        path = ev.data.get("audio")
        if path not in ("udp", "tcp", "shm"):
            raise ProtocolError(f"unknown audio path {path!r}")
        if path == "shm" and s.shm_up is None:
            raise ProtocolError("no shared memory ring for this session")
        if path == "udp" and s.udp_addr is None:
            if not s.udp_port:
                raise ProtocolError("udp audio needs udp_port in hello")
            s.udp_addr = (s.peer_host, s.udp_port)
        s.audio_path = path
        log.info("session %s: audio over %s", s.id, path)

    async def _on_audio_chunk(self, s: Session, ev: Event) -> None:
        pkt = RtpPacket.parse(ev.payload)
        self._accept_packet(s, pkt, ordered=True)  # TCP: reliable and in order

    async def _on_wake(self, s: Session, ev: Event) -> None:
        if s.turn is not None and not s.turn.done():
            self.stats.barge_ins += 1
            await self._cancel_turn(s)
            await s.conn.send("barge-in", {})
        s.inbox = asyncio.Queue(maxsize=500)
        # a turn is a new talk spurt, usually from a new RTP sender (new sequence numbers):
        # a fresh jitter buffer, or the old clock would drop most of it as "late"
        tc = self.cfg.transport
        s.receiver = RtpStreamReceiver(s.codec, SAMPLE_RATE, s.frame_ms, tc.jitter_min_ms,
                                       tc.jitter_max_ms)
        s.fell_back = False
        s.turn = self._spawn(self._turn(s, s.inbox, follow_up=bool(ev.data.get("followup"))))
        first = ev.data.get("seq")
        if isinstance(first, int) and not isinstance(first, bool):
            # this turn's packets that arrived before this event went to no turn (or to
            # the one it interrupts): give them to this one
            early = [(p, o) for p, o in s.recent if (p.seq - first) & 0xFFFF < 0x8000]
            s.recent.clear()
            for pkt, ordered in early:
                self._accept_packet(s, pkt, ordered)
        if s.audio_path == "udp" and tc.tcp_audio_fallback == "auto":
            self._spawn(self._udp_watchdog(s, s.packets_up))

    async def _udp_watchdog(self, s: Session, before: int) -> None:
        """UDP worked for the probe but no audio arrives (a middlebox that drops larger
        datagrams, a NAT timeout): move this satellite's audio to the TCP connection."""
        await asyncio.sleep(UDP_SILENCE_S)
        if s.id in self.sessions and s.audio_path == "udp" and s.inbox is not None \
                and s.packets_up == before:
            log.warning("session %s: no UDP audio for %.1f s after wake; switching to TCP",
                        s.id, UDP_SILENCE_S)
            s.audio_path = "tcp"
            s.udp_fallbacks += 1
            s.fell_back = True
            last = None
            if s.receiver is not None:  # what UDP did bring is kept; the rest is resent
                for t, pcm in s.receiver.drain():
                    self._deliver(s, pcm, t)
                last = s.receiver.highest_seq
            # the satellite resends every frame of the turn after ``last_seq`` over TCP
            await _safe_send(s.conn, "transport", {"audio": "tcp", "last_seq": last,
                                                   "reason": "no-udp-audio"}, b"")

    async def _on_audio_stop(self, s: Session, ev: Event) -> None:
        if s.inbox is not None:
            with contextlib.suppress(asyncio.QueueFull):
                s.inbox.put_nowait(None)  # type: ignore[arg-type]

    async def _on_ping(self, s: Session, ev: Event) -> None:
        await s.conn.send("pong", ev.data)

    async def _ignore(self, s: Session, ev: Event) -> None:
        return None

    async def _on_error(self, s: Session, ev: Event) -> None:
        log.info("satellite %s reports: %s", s.id, ev.data.get("message"))

    # --- audio in -----------------------------------------------------------------------
    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        """A UDP datagram: dropped unless it is a well-formed packet of an authenticated
        session, sent from that session's host."""
        self.stats.packets_in += 1
        try:
            pkt = RtpPacket.parse(data)
        except ProtocolError:
            self.stats.packets_malformed += 1
            return
        s = self._by_ssrc.get(pkt.ssrc)
        if s is None or addr[0] != s.peer_host:
            self.stats.packets_dropped_unknown += 1
            return
        if pkt.pt == PT_PROBE:  # the satellite checks that UDP gets through: answer it
            s.udp_addr = (addr[0], s.udp_port or addr[1])
            self._send_packet(s, RtpPacket(pkt.seq, pkt.timestamp, s.ssrc_down, b"", PT_PROBE),
                              force_udp=True)
            return
        if s.audio_path != "udp":  # late UDP audio after a move to TCP: resent there
            return
        self._accept_packet(s, pkt)

    def _accept_packet(self, s: Session, pkt: RtpPacket, ordered: bool = False) -> None:
        """Uplink audio of the current turn: through the jitter buffer (UDP), or decoded
        at once when the path is reliable and ordered (TCP, shared memory)."""
        if pkt.ssrc != s.ssrc_up or s.receiver is None or pkt.pt == PT_PROBE:
            self.stats.packets_dropped_unknown += 1
            return
        s.recent.append((pkt, ordered))
        if s.inbox is None:  # no turn: audio is not wanted
            return
        s.packets_up += 1
        if not ordered:
            s.receiver.push(pkt)
            return
        for t, pcm in s.receiver.push_ordered(pkt):
            self._deliver(s, pcm, t)

    def _deliver(self, s: Session, pcm, t: float) -> None:
        """Decoded uplink audio into the running turn."""
        if s.inbox is not None:
            with contextlib.suppress(asyncio.QueueFull):
                s.inbox.put_nowait(AudioChunk(pcm, SAMPLE_RATE, t))

    def _on_shm_up(self, s: Session) -> None:
        """The satellite wrote to its shared-memory ring: take every frame now (same
        host, in order, nothing lost on the way: no jitter buffer)."""
        ring = s.shm_up
        if ring is None:
            return
        try:
            ring.clear()
            while (raw := ring.read()) is not None:
                self._accept_packet(s, RtpPacket.parse(raw), ordered=True)
        except ProtocolError as exc:
            log.info("session %s: dropping bad audio: %s", s.id, exc)
            self.stats.packets_malformed += 1

    async def _pump_audio(self) -> None:
        """Every 5 ms: play each session's jitter buffer (UDP audio) out into its turn."""
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            for s in list(self.sessions.values()):
                try:
                    if s.receiver is None:
                        continue
                    for frame, pcm in s.receiver.pop(now):
                        self._deliver(s, pcm, frame.due)
                except ProtocolError as exc:
                    log.info("session %s: dropping bad audio: %s", s.id, exc)
                    self.stats.packets_malformed += 1

    # --- audio out ----------------------------------------------------------------------
    def _send_packet(self, s: Session, pkt: RtpPacket, force_udp: bool = False) -> None:
        raw = pkt.pack()
        if (force_udp or s.audio_path == "udp") and s.udp_addr and self._udp:
            self._udp.sendto(raw, s.udp_addr)
        elif s.audio_path == "shm" and s.shm_down is not None:
            s.shm_down.write(raw)
        else:
            self._spawn(_safe_send(s.conn, "audio-chunk", {}, raw))

    async def _play(self, s: Session, chunks: AsyncIterator[AudioChunk], rate: int) -> None:
        """Send reply audio, paced at real time (a little ahead), framed for the path."""
        sender = RtpStreamSender(s.codec, rate, s.frame_ms, self.cfg.transport.fec,
                                 ssrc=s.ssrc_down)
        await s.conn.send("audio-start", {"rate": sender.wire_rate, "codec": s.codec})
        s.playing = True
        start = None
        sent = 0  # packets sent so far: the pacing clock (push() makes a chunk's at once)
        frame_s = s.frame_ms / 1000.0
        try:
            async for chunk in chunks:
                for pkt in sender.push(chunk.samples):
                    if start is None:
                        start = time.monotonic()
                    self._send_packet(s, pkt)
                    sent += 1
                    ahead = start + sent * frame_s - time.monotonic() - 0.08
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            for pkt in sender.flush():
                self._send_packet(s, pkt)
        finally:
            s.playing = False
            with contextlib.suppress(Exception):
                await s.conn.send("audio-stop", {})

    # --- turns --------------------------------------------------------------------------
    async def _turn(self, s: Session, inbox: asyncio.Queue, follow_up: bool = False) -> None:
        if self._turn_slots.locked():
            self.stats.turns_busy += 1
            s.inbox = None
            await s.conn.send("busy", {"message": BUSY_TEXT})
            await self._play(s, self.assistant.speak(BUSY_TEXT), self.assistant.tts_rate)
            await s.conn.send("turn-end", {"error": "busy", "transcript": "", "reply": ""})
            return
        async with self._turn_slots:
            self.stats.turns += 1
            s.turns += 1

            async def audio() -> AsyncIterator[AudioChunk]:
                while True:
                    chunk = await inbox.get()
                    if chunk is None:
                        return
                    yield chunk

            gen = self.assistant.run_turn(audio(), session=s.id)
            reply_q: asyncio.Queue | None = None
            player: asyncio.Task | None = None
            trace: Trace | None = None
            try:
                async for ev in gen:
                    self._notify_listeners(s, ev)
                    if isinstance(ev, ReplyAudio):
                        if reply_q is None:
                            reply_q = asyncio.Queue()
                            player = asyncio.create_task(
                                self._play(s, _drain(reply_q), self.assistant.tts_rate))
                        await reply_q.put(ev.chunk)
                        continue
                    if isinstance(ev, SpeechEnded):
                        s.inbox = None  # the turn has all the audio it needs
                    if isinstance(ev, TurnEnd):
                        trace = ev.trace
                        if reply_q is not None:
                            await reply_q.put(None)
                            await player
                        await s.conn.send("turn-end", {"transcript": ev.transcript,
                                                       "reply": ev.reply, "error": ev.error})
                        continue
                    msg = _event_message(ev)
                    if msg is not None:
                        await s.conn.send(*msg)
            finally:
                await gen.aclose()
                if player is not None and not player.done():
                    player.cancel()
                    with contextlib.suppress(BaseException):
                        await player
                if s.inbox is inbox:
                    s.inbox = None
                if trace is not None:
                    trace.info.setdefault("satellite", s.name)
                    trace.info.setdefault("audio_path", s.audio_path)
                    trace.info.setdefault("udp_fallback", s.fell_back)
                    for cb in self.turn_listeners:
                        try:
                            cb(trace)
                        except Exception:
                            log.exception("turn listener failed")

    def _notify_listeners(self, s: Session, ev: Any) -> None:
        for cb in self.event_listeners:
            try:
                cb(s, ev)
            except Exception:
                log.exception("event listener failed")

    async def _cancel_turn(self, s: Session) -> None:
        task, s.turn = s.turn, None
        s.inbox = None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _end_session(self, s: Session, why: str) -> None:
        if self.sessions.pop(s.id, None) is None:
            return
        self._by_ssrc.pop(s.ssrc_up, None)
        await self._cancel_turn(s)
        if s.shm_up is not None and s.shm_up.listening:
            asyncio.get_running_loop().remove_reader(s.shm_up.fileno())
        for ring in (s.shm_up, s.shm_down):
            if ring is not None:
                ring.close()
        s.shm_up = s.shm_down = None
        log.info("session %s ended: %s", s.id, why)

    async def _on_notify(self, session: str, text: str) -> None:
        s = self.sessions.get(session)
        if s is None:
            if not any(owns(session) for owns in self.other_sessions):
                log.warning("notification for session %s, which is gone: %s", session, text)
            return
        await s.conn.send("timer", {"text": text})
        self._spawn(self._play(s, self.assistant.speak(text), self.assistant.tts_rate))


async def _safe_send(conn: Connection, etype: str, data: dict, payload: bytes) -> None:
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        await conn.send(etype, data, payload)


async def _drain(q: asyncio.Queue) -> AsyncIterator[AudioChunk]:
    while (item := await q.get()) is not None:
        yield item


def _event_message(ev: Any) -> tuple[str, dict] | None:
    """The control event that tells the satellite about a turn event."""
    if isinstance(ev, SpeechStarted):
        return "speech-start", {}
    if isinstance(ev, SpeechEnded):
        return "speech-end", {}
    if isinstance(ev, TranscriptEvent):
        return "transcript", {"text": ev.transcript.text, "final": ev.transcript.is_final}
    if isinstance(ev, IntentEvent):
        it = ev.intent
        if it is None:
            return "intent", {"name": None}
        return "intent", {"name": getattr(it, "name", str(it)),
                          "slots": {k: str(v) for k, v in (getattr(it, "slots", {}) or {}).items()}}
    if isinstance(ev, ReplyText):
        return "reply-text", {"text": ev.text, "source": ev.source}
    return None


_HANDLERS: dict[str, Callable[[Server, Session, Event], Any]] = {
    "wake": Server._on_wake,
    "audio-chunk": Server._on_audio_chunk,
    "audio-start": Server._ignore,
    "audio-stop": Server._on_audio_stop,
    "transport": Server._on_transport,
    "ping": Server._on_ping,
    "pong": Server._ignore,
    "error": Server._on_error,
    "session-end": Server._ignore,
}


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: Server):
        self.server = server

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            self.server.datagram(data, addr)
        except Exception:
            log.exception("dropping a datagram from %s", addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)


def run_server(cfg: Config, assistant: Any | None = None) -> None:
    """Load the assistant (unless given) and serve until interrupted."""
    if assistant is None:
        from hark.pipeline.assistant import Assistant

        assistant = Assistant.load(cfg)

    async def main() -> None:
        server = Server(cfg, assistant)
        await server.start()
        try:
            await server.serve_forever()
        finally:
            await server.stop()

    asyncio.run(main())
