"""One connected satellite: :class:`SatelliteSession`.

The router (:class:`hark.server.server.Server`) accepts the control connection, checks
the ``hello`` and makes a session from it; from then on the session owns the satellite:
its control loop (typed messages, :mod:`hark.transport.messages`), its audio paths
(:class:`~hark.transport.link.AudioLink`), the uplink audio the router hands it (UDP
packets by SSRC) or that it reads itself (TCP ``audio-chunk`` events, its shared-memory
ring), its turns and the reply audio it streams back.

A turn: ``wake`` starts one; the session feeds the turn's audio to
``assistant.run_turn`` and forwards each turn event (transcripts, intent, reply text) as
a message and the reply audio over the current path. A second ``wake`` while a turn runs
is a barge-in: the running turn is closed (its LLM/TTS work cancelled) and a new one
starts. When UDP audio stops arriving mid-turn the session keeps what did, tells the
satellite the newest sequence number it has (``transport`` with ``last_seq``), and the
satellite resends the rest over TCP; TCP and shared-memory audio is decoded at once,
without a jitter buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from hark.audio import SAMPLE_RATE, AudioChunk
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
from hark.transport import messages as m
from hark.transport.control import Connection
from hark.transport.link import AudioLink, send_quietly
from hark.transport.rtp import PT_PROBE, RtpPacket
from hark.transport.shm import ShmRing
from hark.transport.stream import RtpStreamReceiver, RtpStreamSender, paced_sender, wire_rate

if TYPE_CHECKING:
    from hark.server.server import Server

log = logging.getLogger(__name__)

BUSY_TEXT = "Sorry, I'm busy right now. Please try again in a moment."
UDP_SILENCE_S = 0.6  # no uplink audio this long after a wake: UDP is broken, use TCP
RECENT_PACKETS = 64  # uplink packets kept for a turn whose audio beat its "wake" event
REPLY_LEAD_S = 0.08  # reply audio is sent this far ahead of real time
# bounds (issue 17): a turn's uplink audio going silent ends it, and a whole turn
AUDIO_GAP_S = 10.0
TURN_DEADLINE_S = 120.0
CAPABILITIES = ["wake", "asr", "tts", "intent", "pipeline", "barge-in", "timer",
                "audio-udp", "audio-tcp", "audio-shm", "opus", "pcm"]


class SatelliteSession:
    """One connected satellite, made by the router from its checked ``hello``.

    The router calls :meth:`run` (the control loop, until the satellite leaves),
    :meth:`on_datagram` (its UDP packets), :meth:`pump` (every few ms: the jitter
    buffer's playout), :meth:`notify` and finally :meth:`close`."""

    def __init__(self, server: Server, conn: Connection, hello: m.Hello, name: str,
                 peer_host: str, ssrc_up: int, ssrc_down: int):
        tc = server.cfg.transport
        self.server = server
        self.id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.name = name
        self.conn = conn
        self.hello = hello
        self.peer_host = peer_host
        self.ssrc_up = ssrc_up  # SSRC the satellite's audio must carry
        self.ssrc_down = ssrc_down
        self.codec = tc.codec if tc.codec in hello.codecs else "pcm"
        self.frame_ms = tc.frame_ms
        self.down_rate = wire_rate(self.codec, server.assistant.tts_rate)  # reply audio
        self.udp_port = hello.udp_port  # satellite's UDP port for reply audio (0: none)
        self.link = AudioLink(conn, server.udp)
        self.receiver: RtpStreamReceiver | None = self._new_receiver()
        self.inbox: asyncio.Queue[AudioChunk] | None = None  # decoded audio of the turn
        self.turn: asyncio.Task | None = None
        self.playing = False
        self.closed = False
        self.connected_at = time.monotonic()
        self.turns = 0
        self.packets_up = 0  # audio packets accepted from this satellite
        self.udp_fallbacks = 0  # turns whose audio moved from UDP to TCP mid-turn
        self.fell_back = False  # the current turn's audio moved from UDP to TCP
        #: the last uplink packets, turn or not: a turn's first packets can be read before
        #: its "wake" event (UDP and shared memory do not wait for the TCP control channel)
        self.recent: deque[tuple[RtpPacket, bool]] = deque(maxlen=RECENT_PACKETS)

    @property
    def audio_path(self) -> str:
        """``"udp"``, ``"tcp"`` or ``"shm"``: the path of the satellite's audio both ways."""
        return self.link.path

    @property
    def udp_addr(self) -> tuple[str, int] | None:
        return self.link.udp_addr

    def _new_receiver(self) -> RtpStreamReceiver:
        tc = self.server.cfg.transport
        return RtpStreamReceiver(self.codec, SAMPLE_RATE, self.frame_ms, tc.jitter_min_ms,
                                 tc.jitter_max_ms)

    def open_shm(self) -> m.ShmRings:
        """Create this session's two shared-memory rings and read the uplink one the
        moment the satellite writes (its wake-up, not a timer)."""
        self.link.shm_out = ShmRing()
        self.link.watch_shm(ShmRing(), self._on_shm_packet, self._on_shm_error)
        assert self.link.shm_in is not None
        return m.ShmRings(up=self.link.shm_in.name, down=self.link.shm_out.name)

    def welcome(self, shm: m.ShmRings | None = None) -> m.Welcome:
        tc = self.server.cfg.transport
        return m.Welcome(session=self.id, capabilities=list(CAPABILITIES), codec=self.codec,
                         frame_ms=self.frame_ms, up_rate=SAMPLE_RATE, down_rate=self.down_rate,
                         ssrc=self.ssrc_up, server_ssrc=self.ssrc_down,
                         rtp_port=self.server.rtp_port, audio=tc.tcp_audio_fallback,
                         jitter_min_ms=tc.jitter_min_ms, jitter_max_ms=tc.jitter_max_ms,
                         shm=shm)

    # --- control connection -------------------------------------------------------------
    async def run(self) -> None:
        """Handle the satellite's messages until it leaves (``session-end`` or the end
        of the connection). An unknown event type or a malformed message is answered
        with an ``error`` and the session goes on."""
        stats = self.server.stats
        while True:
            ev = await self.conn.recv()
            if ev is None:
                return
            cls = m.Message.registry.get(ev.type)
            handler = _HANDLERS.get(cls) if cls is not None else None
            if handler is None:  # unknown, or a message only a server sends
                stats.events_rejected += 1
                await self.conn.send_message(m.Error(
                    "unknown-event", str(m.UnknownMessageType(ev.type))))
                continue
            try:
                await handler(self, cls.from_event(ev))
            except (HarkError, ValueError) as exc:  # ProtocolError is a HarkError
                stats.events_rejected += 1
                await self.conn.send_message(m.Error("bad-event", str(exc)))
            if cls is m.SessionEnd:
                return

    async def _on_transport(self, msg: m.Transport) -> None:
        if msg.audio == "shm" and self.link.shm_in is None:
            raise ProtocolError("no shared memory ring for this session")
        if msg.audio == "udp" and self.link.udp_addr is None:
            if not self.udp_port:
                raise ProtocolError("udp audio needs udp_port in hello")
            self.link.udp_addr = (self.peer_host, self.udp_port)
        self.link.path = msg.audio
        log.info("session %s: audio over %s", self.id, msg.audio)

    async def _on_audio_chunk(self, msg: m.AudioChunk) -> None:
        self.accept_packet(RtpPacket.parse(msg.packet), ordered=True)  # TCP: in order

    async def _on_wake(self, msg: m.Wake) -> None:
        if self.turn is not None and not self.turn.done():
            self.server.stats.barge_ins += 1
            await self.cancel_turn()
            await self.conn.send_message(m.BargeIn())
        self.inbox = asyncio.Queue(maxsize=500)
        # a turn is a new talk spurt, usually from a new RTP sender (new sequence numbers):
        # a fresh jitter buffer, or the old clock would drop most of it as "late"
        self.receiver = self._new_receiver()
        self.fell_back = False
        self.turn = self.server.spawn(self._with_deadline(
            self._turn(self.inbox, follow_up=msg.followup)))
        if msg.seq is not None:
            # this turn's packets that arrived before this event went to no turn (or to
            # the one it interrupts): give them to this one
            early = [(p, o) for p, o in self.recent if (p.seq - msg.seq) & 0xFFFF < 0x8000]
            self.recent.clear()
            for pkt, ordered in early:
                self.accept_packet(pkt, ordered)
        if self.audio_path == "udp" and self.server.cfg.transport.tcp_audio_fallback == "auto":
            self.server.spawn(self._udp_watchdog(self.packets_up))

    async def _udp_watchdog(self, before: int) -> None:
        """UDP worked for the probe but no audio arrives (a middlebox that drops larger
        datagrams, a NAT timeout): move this satellite's audio to the TCP connection."""
        await asyncio.sleep(UDP_SILENCE_S)
        if self.closed or self.audio_path != "udp" or self.inbox is None \
                or self.packets_up != before:
            return
        log.warning("session %s: no UDP audio for %.1f s after wake; switching to TCP",
                    self.id, UDP_SILENCE_S)
        self.link.path = "tcp"
        self.udp_fallbacks += 1
        self.fell_back = True
        last = None
        if self.receiver is not None:  # what UDP did bring is kept; the rest is resent
            for t, pcm in self.receiver.drain():
                self._deliver(pcm, t)
            last = self.receiver.highest_seq
        # the satellite resends every frame of the turn after ``last_seq`` over TCP
        await send_quietly(self.conn, m.Transport("tcp", last, "no-udp-audio"))

    async def _on_audio_stop(self, msg: m.AudioStop) -> None:
        if self.inbox is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self.inbox.put_nowait(None)  # type: ignore[arg-type]

    async def _on_ping(self, msg: m.Ping) -> None:
        await self.conn.send_message(m.Pong(msg.data))

    async def _ignore(self, msg: m.Message) -> None:
        return None

    async def _on_error(self, msg: m.Error) -> None:
        log.info("satellite %s reports: %s", self.id, msg.message)

    # --- audio in -----------------------------------------------------------------------
    def on_datagram(self, pkt: RtpPacket, addr: tuple[str, int]) -> None:
        """A UDP packet with this session's SSRC from the satellite's host."""
        if pkt.pt == PT_PROBE:  # the satellite checks that UDP gets through: answer it
            self.link.udp_addr = (addr[0], self.udp_port or addr[1])
            self.link.send(RtpPacket(pkt.seq, pkt.timestamp, self.ssrc_down, b"", PT_PROBE),
                           force_udp=True)
            return
        if self.audio_path != "udp":  # late UDP audio after a move to TCP: resent there
            return
        self.accept_packet(pkt)

    def accept_packet(self, pkt: RtpPacket, ordered: bool = False) -> None:
        """Uplink audio of the current turn: through the jitter buffer (UDP), or decoded
        at once when the path is reliable and ordered (TCP, shared memory)."""
        if pkt.ssrc != self.ssrc_up or self.receiver is None or pkt.pt == PT_PROBE:
            self.server.stats.packets_dropped_unknown += 1
            return
        self.recent.append((pkt, ordered))
        if self.inbox is None:  # no turn: audio is not wanted
            return
        self.packets_up += 1
        if not ordered:
            self.receiver.push(pkt)
            return
        for t, pcm in self.receiver.push_ordered(pkt):
            self._deliver(pcm, t)

    def _deliver(self, pcm, t: float) -> None:
        """Decoded uplink audio into the running turn."""
        if self.inbox is not None:
            with contextlib.suppress(asyncio.QueueFull):
                self.inbox.put_nowait(AudioChunk(pcm, SAMPLE_RATE, t))

    def _on_shm_packet(self, raw: bytes) -> None:
        """A record of the satellite's shared-memory ring (same host, in order, nothing
        lost on the way: no jitter buffer)."""
        self.accept_packet(RtpPacket.parse(raw), ordered=True)

    def _on_shm_error(self, exc: ProtocolError) -> None:
        log.info("session %s: dropping bad audio: %s", self.id, exc)
        self.server.stats.packets_malformed += 1

    def pump(self, now: float) -> None:
        """Play the jitter buffer (UDP audio) out into the turn, up to ``now``."""
        if self.receiver is None:
            return
        try:
            for frame, pcm in self.receiver.pop(now):
                self._deliver(pcm, frame.due)
        except ProtocolError as exc:
            log.info("session %s: dropping bad audio: %s", self.id, exc)
            self.server.stats.packets_malformed += 1

    # --- audio out ----------------------------------------------------------------------
    async def play(self, chunks: AsyncIterator[AudioChunk], rate: int) -> None:
        """Send reply audio, paced at real time (a little ahead), framed for the path."""
        sender = RtpStreamSender(self.codec, rate, self.frame_ms,
                                 self.server.cfg.transport.fec, ssrc=self.ssrc_down)
        await self.conn.send_message(m.AudioStart(sender.wire_rate, self.codec))
        self.playing = True
        # push() makes a chunk's packets at once; the pacing clock counts them sent
        schedule = paced_sender(self.link.send, self.frame_ms / 1000.0, REPLY_LEAD_S)
        try:
            async for chunk in chunks:
                for pkt in sender.push(chunk.samples):
                    ahead = schedule([pkt])
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            for pkt in sender.flush():
                self.link.send(pkt)
        finally:
            self.playing = False
            with contextlib.suppress(Exception):
                await self.conn.send_message(m.AudioStop())

    async def notify(self, text: str) -> None:
        """Something to say unprompted (a timer fired): the text, then its speech."""
        await self.conn.send_message(m.Timer(text))
        assistant = self.server.assistant
        self.server.spawn(self.play(assistant.speak(text), assistant.tts_rate))

    # --- turns --------------------------------------------------------------------------
    async def _turn(self, inbox: asyncio.Queue, follow_up: bool = False) -> None:
        server, assistant = self.server, self.server.assistant
        if server.turn_slots.locked():
            server.stats.turns_busy += 1
            self.inbox = None
            await self.conn.send_message(m.Busy(BUSY_TEXT))
            await self.play(assistant.speak(BUSY_TEXT), assistant.tts_rate)
            await self.conn.send_message(m.TurnEnd(error="busy"))
            return
        async with server.turn_slots:
            server.stats.turns += 1
            self.turns += 1

            async def audio() -> AsyncIterator[AudioChunk]:
                while True:
                    try:  # a satellite that sends wake and then nothing ends its audio
                        chunk = await asyncio.wait_for(inbox.get(), AUDIO_GAP_S)
                    except TimeoutError:
                        log.info("session %s: no audio for %.0f s: the turn's audio ends",
                                 self.id, AUDIO_GAP_S)
                        return
                    if chunk is None:
                        return
                    yield chunk

            # the satellite's room is the context of what it heard
            where = {"area": self.hello.area} if self.hello.area else {}
            gen = assistant.run_turn(audio(), session=self.id, **where)
            reply_q: asyncio.Queue | None = None
            player: asyncio.Task | None = None
            trace: Trace | None = None
            try:
                async for ev in gen:
                    self._notify_listeners(ev)
                    if isinstance(ev, ReplyAudio):
                        if reply_q is None:
                            reply_q = asyncio.Queue()
                            player = asyncio.create_task(
                                self.play(_drain(reply_q), assistant.tts_rate))
                        await reply_q.put(ev.chunk)
                        continue
                    if isinstance(ev, SpeechEnded):
                        self.inbox = None  # the turn has all the audio it needs
                    if isinstance(ev, TurnEnd):
                        trace = ev.trace
                        if reply_q is not None:
                            await reply_q.put(None)
                            await player
                        await self.conn.send_message(m.TurnEnd(ev.transcript, ev.reply,
                                                               ev.error))
                        continue
                    msg = turn_message(ev)
                    if msg is not None:
                        await self.conn.send_message(msg)
            finally:
                await gen.aclose()
                if player is not None and not player.done():
                    player.cancel()
                    with contextlib.suppress(BaseException):
                        await player
                if self.inbox is inbox:
                    self.inbox = None
                if trace is not None:
                    trace.info.setdefault("satellite", self.name)
                    trace.info.setdefault("audio_path", self.audio_path)
                    trace.info.setdefault("udp_fallback", self.fell_back)
                    for cb in server.turn_listeners:
                        try:
                            cb(trace)
                        except Exception:
                            log.exception("turn listener failed")

    async def _with_deadline(self, turn: Awaitable[None]) -> None:
        """Run ``turn``; past TURN_DEADLINE_S it is cancelled (its slot freed) and the
        satellite told the turn ended in a timeout."""
        try:
            await asyncio.wait_for(turn, TURN_DEADLINE_S)
        except TimeoutError:
            log.warning("session %s: turn cancelled after %.0f s", self.id, TURN_DEADLINE_S)
            await send_quietly(self.conn, m.TurnEnd(error="timeout"))

    def _notify_listeners(self, ev: Any) -> None:
        for cb in self.server.event_listeners:
            try:
                cb(self, ev)
            except Exception:
                log.exception("event listener failed")

    async def cancel_turn(self) -> None:
        task, self.turn = self.turn, None
        self.inbox = None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def close(self) -> None:
        """End the running turn and release the audio paths (the connection is the
        router's to close)."""
        self.closed = True
        await self.cancel_turn()
        self.link.close()


async def _drain(q: asyncio.Queue) -> AsyncIterator[AudioChunk]:
    while (item := await q.get()) is not None:
        yield item


def turn_message(ev: Any) -> m.Message | None:
    """The message that tells the satellite about a turn event (None: nothing to tell;
    reply audio and the turn's end are sent by the turn loop itself)."""
    if isinstance(ev, SpeechStarted):
        return m.SpeechStart()
    if isinstance(ev, SpeechEnded):
        return m.SpeechEnd()
    if isinstance(ev, TranscriptEvent):
        return m.Transcript(ev.transcript.text, ev.transcript.is_final)
    if isinstance(ev, IntentEvent):
        it = ev.intent
        if it is None:
            return m.Intent(None)
        return m.Intent(getattr(it, "name", str(it)),
                        {k: str(v) for k, v in (getattr(it, "slots", {}) or {}).items()})
    if isinstance(ev, ReplyText):
        return m.ReplyText(ev.text, ev.source)
    return None


_Handler = Callable[[SatelliteSession, Any], Awaitable[None]]
#: the messages a satellite may send, and what the session does with each
_HANDLERS: dict[type[m.Message], _Handler] = {
    m.Wake: SatelliteSession._on_wake,
    m.AudioChunk: SatelliteSession._on_audio_chunk,
    m.AudioStart: SatelliteSession._ignore,
    m.AudioStop: SatelliteSession._on_audio_stop,
    m.Transport: SatelliteSession._on_transport,
    m.Ping: SatelliteSession._on_ping,
    m.Pong: SatelliteSession._ignore,
    m.Error: SatelliteSession._on_error,
    m.SessionEnd: SatelliteSession._ignore,
}
