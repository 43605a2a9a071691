"""``hark serve``: one Assistant, many satellites.

:class:`Server` is the router: it listens (the control port over TCP, the audio port
over UDP), checks each satellite's ``hello`` (protocol version, token, capacity) and
makes a :class:`~hark.server.session.SatelliteSession` of it, which then owns that
satellite: its control loop, turns and reply audio. The router keeps the sessions by id
and by the SSRC their audio carries: every UDP packet goes to the session its SSRC names,
and only when it came from that session's host. It limits how many satellites connect
(``server.max_sessions``) and how many turns run at once (``server.max_concurrent_turns``:
a turn over the limit is answered "busy"), plays every session's jitter buffer out on one
clock, and routes the assistant's notifications (a timer fired) to their session.

Messages on the control connection are typed (:mod:`hark.transport.messages`); audio
travels as RTP packets over UDP, the control connection or shared memory
(:mod:`hark.transport.link`). Extension points for observability: :attr:`Server.sessions`,
:attr:`Server.turn_listeners` (called with every finished turn's Trace) and
:attr:`Server.event_listeners` (called with (session, event) for each turn event).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hark.auth import ensure_server_token, token_acceptable
from hark.config import Config
from hark.errors import ProtocolError
from hark.server.session import BUSY_TEXT, SatelliteSession
from hark.trace import Trace
from hark.transport import messages as m
from hark.transport.control import MAX_HEADER, Connection
from hark.transport.keepalive import enable_keepalive
from hark.transport.rtp import RtpPacket
from hark.transport.shm import host_id

__all__ = ["BUSY_TEXT", "SatelliteSession", "Server", "ServerStats", "run_server"]

log = logging.getLogger(__name__)

PUMP_S = 0.005  # the jitter buffers' playout clock
# bounds (issue 17): connections that have not finished their hello (the oldest is
# closed to make room, so a real satellite always gets in), and a write the satellite
# does not take; notifications kept for satellites that are away (timers)
MAX_PENDING_HANDSHAKES = 64
WRITE_TIMEOUT_S = 10.0
HELD_SATELLITES, HELD_PER_SATELLITE = 64, 16


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


class _TimedConnection(Connection):
    """A control connection whose writes give up after WRITE_TIMEOUT_S: a satellite
    that stops reading is dropped (its connection aborted) instead of stalling a turn."""

    async def _write(self, raw: bytes) -> None:
        try:
            await asyncio.wait_for(super()._write(raw), WRITE_TIMEOUT_S)
        except TimeoutError:
            self.writer.transport.abort()
            raise ConnectionError(f"peer took nothing for {WRITE_TIMEOUT_S:.0f} s") from None


class Server:
    """The hark server. ``await start()``, then ``await serve_forever()`` or ``stop()``."""

    def __init__(self, cfg: Config, assistant: Any):
        self.cfg = cfg
        self.assistant = assistant
        self.sessions: dict[str, SatelliteSession] = {}
        self.turn_listeners: list[Callable[[Trace], Any]] = []
        self.event_listeners: list[Callable[[SatelliteSession, Any], Any]] = []
        #: ``owns(session)`` of other front ends (Wyoming satellites): their sessions'
        #: notifications are theirs to deliver, not a gone session of this server's
        self.other_sessions: list[Callable[[str], bool]] = []
        self.stats = ServerStats()
        #: free while fewer than server.max_concurrent_turns turns run
        self.turn_slots = asyncio.Semaphore(cfg.server.max_concurrent_turns)
        self.udp: asyncio.DatagramTransport | None = None  # shared by every session
        self._by_ssrc: dict[int, SatelliteSession] = {}
        self._tcp: asyncio.base_events.Server | None = None
        self._pump: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._host_id = host_id()
        self.control_port = 0
        self.rtp_port = 0
        self.token = ""  # the server token (hark.auth), read or made by start()
        self._pending: dict[Connection, None] = {}  # connections before their welcome
        self._held: dict[str, deque[str]] = {}  # satellite name -> notifications for it
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
        self.token = ensure_server_token(self.cfg)
        self._tcp = await asyncio.start_server(self._handle_client, sc.host, sc.control_port,
                                               limit=MAX_HEADER)
        self.control_port = self._tcp.sockets[0].getsockname()[1]
        self.udp, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=(sc.host, sc.rtp_port))
        self.rtp_port = self.udp.get_extra_info("sockname")[1]
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
        if self.udp:
            self.udp.close()
        if self._pump is not None:
            self._pump.cancel()
        for t in list(self._tasks):
            t.cancel()
        if self._tcp:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2.0)

    def spawn(self, coro) -> asyncio.Task:
        """A task of the server's (sessions' included), cancelled by :meth:`stop`."""
        t = asyncio.create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    # --- control connection -------------------------------------------------------------
    async def _handle_client(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        conn = _TimedConnection(reader, writer)
        peer = conn.peer[0] if conn.peer else None
        session: SatelliteSession | None = None
        enable_keepalive(writer)
        if len(self._pending) >= MAX_PENDING_HANDSHAKES:
            oldest = next(iter(self._pending))
            self._pending.pop(oldest)
            oldest.writer.transport.abort()  # its hello read ends; it cleans itself up
        self._pending[conn] = None
        try:
            try:
                session = await self._handshake(conn, peer)
            finally:
                self._pending.pop(conn, None)
            if session is None:
                return
            await session.run()
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            pass
        except ProtocolError as exc:
            self.stats.events_rejected += 1
            log.info("closing %s: %s", peer, exc)
            with contextlib.suppress(Exception):
                await conn.send_message(m.Error("protocol", str(exc)))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session with %s failed", peer)
        finally:
            if session is not None:
                await self._end_session(session, "disconnected")
            await conn.close()

    async def _handshake(self, conn: Connection, peer: str | None) -> SatelliteSession | None:
        """The session of a satellite whose ``hello`` passes (version, fields, token,
        capacity), after sending it ``welcome``; None after refusing it with ``error``."""
        sc = self.cfg.server
        try:
            ev = await asyncio.wait_for(conn.recv(), sc.hello_timeout_s)
        except TimeoutError:
            await conn.send_message(m.Error("timeout", "no hello"))
            return None
        if ev is None:
            return None
        if not m.Hello.is_type(ev.type):
            await self._refuse(conn, "protocol", f"expected 'hello', got '{ev.type[:64]}'")
            return None
        try:
            hello = m.Hello.from_event(ev)
        except m.UnsupportedVersion as exc:
            await self._refuse(conn, "version", str(exc))
            return None
        except ProtocolError as exc:
            await self._refuse(conn, "protocol", str(exc))
            return None
        name = (hello.name or "satellite")[:64]
        if not self.token_acceptable(name, hello.token, peer):
            await self._refuse(conn, "auth", f"satellite '{name}' is not authorised: wrong "
                               "or missing token (the server token, 'hark token show', or "
                               "its own server.tokens entry)")
            return None
        if len(self.sessions) >= sc.max_sessions:
            await self._refuse(conn, "busy", f"server at max_sessions ({sc.max_sessions})")
            return None
        s = SatelliteSession(self, conn, hello, name, peer or "", ssrc_up=self._new_ssrc(),
                             ssrc_down=self._new_ssrc())
        shm = None
        if self.cfg.transport.shm != "never" and is_loopback(peer) \
                and hello.host_id == self._host_id and "audio-shm" in hello.capabilities:
            shm = s.open_shm()
        self.sessions[s.id] = s
        self._by_ssrc[s.ssrc_up] = s
        await conn.send_message(s.welcome(shm))
        log.info("satellite '%s' connected from %s: session %s", name, peer, s.id)
        for text in self._held.pop(name, ()):  # said while it was away (timers)
            self.spawn(self._on_notify(s.id, text))
        return s

    def token_acceptable(self, name: str, token: object, peer: str | None) -> bool:
        """Whether ``token`` admits a satellite called ``name``, from any peer
        (loopback included): :func:`hark.auth.token_acceptable`."""
        return token_acceptable(self.token, self.cfg.server.tokens, name, token)

    async def _refuse(self, conn: Connection, code: str, message: str) -> None:
        self.stats.sessions_refused += 1
        log.warning("refused satellite from %s: %s", conn.peer, message)
        await conn.send_message(m.Error(code, message))

    def _new_ssrc(self) -> int:
        while True:
            ssrc = random.getrandbits(32)
            if ssrc not in self._by_ssrc:
                return ssrc

    async def _end_session(self, s: SatelliteSession, why: str) -> None:
        if self.sessions.pop(s.id, None) is None:
            return
        self._by_ssrc.pop(s.ssrc_up, None)
        await s.close()
        log.info("session %s ended: %s", s.id, why)

    async def _on_notify(self, session: str, text: str) -> None:
        """Say ``text`` on ``session``'s satellite: the session itself, else the
        satellite of the same name connected now (it reconnected, or the server
        restarted and restored a timer), else the next time it connects."""
        name = session.rsplit("-", 1)[0]
        s = self.sessions.get(session) or next(
            (x for x in self.sessions.values() if x.name == name), None)
        if s is None:
            if any(owns(session) for owns in self.other_sessions):
                return
            if name not in self._held and len(self._held) >= HELD_SATELLITES:
                log.warning("notification for %s dropped (no satellite): %s", session, text)
                return
            self._held.setdefault(name, deque(maxlen=HELD_PER_SATELLITE)).append(text)
            log.info("notification for satellite '%s' held until it connects: %s", name,
                     text)
            return
        await s.notify(text)

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
        s.on_datagram(pkt, addr)

    async def _pump_audio(self) -> None:
        """Every few ms: play each session's jitter buffer (UDP audio) out into its turn."""
        while True:
            await asyncio.sleep(PUMP_S)
            now = time.monotonic()
            for s in list(self.sessions.values()):
                s.pump(now)


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
