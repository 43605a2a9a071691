"""One peer's audio packets over whichever path is current: the send side that the
satellite and the server share.

Both ends send the same RTP packets (:mod:`hark.transport.stream`) over one of three
paths: a UDP datagram, the payload of an ``audio-chunk`` event on the control connection
(TCP), or a record in a shared-memory ring (same host). An :class:`AudioLink` holds one
peer's paths, sends each packet over the current one (TCP when that path is not set up),
keeps events it posts on the control connection in the order they were posted, and reads
the incoming shared-memory ring the moment its writer signals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from hark.errors import ProtocolError
from hark.transport.control import Connection
from hark.transport.messages import AUDIO_PATHS, AudioChunk, Message
from hark.transport.rtp import RtpPacket
from hark.transport.shm import ShmRing

log = logging.getLogger(__name__)


async def send_quietly(conn: Connection, message: Message) -> None:
    """Send ``message``; a connection that is closing or gone is no error here (its
    reader notices and ends the session)."""
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        await conn.send_message(message)


class AudioLink:
    """The audio paths to one peer.

    ``path`` is where packets go: ``"udp"`` (to ``udp_addr`` through the ``udp``
    transport, which the link does not own), ``"shm"`` (into ``shm_out``) or ``"tcp"``
    (``audio-chunk`` events on ``conn``). After :meth:`close` nothing more is sent."""

    def __init__(self, conn: Connection, udp: asyncio.DatagramTransport | None = None,
                 udp_addr: tuple[str, int] | None = None, path: str = "tcp"):
        self.conn = conn
        self.udp = udp
        self.udp_addr = udp_addr
        self.path = path
        self.shm_out: ShmRing | None = None  # written: this side's audio
        self.shm_in: ShmRing | None = None  # read: the peer's audio
        self.closed = False
        self._posted: set[asyncio.Task] = set()

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, path: str) -> None:
        if path not in AUDIO_PATHS:
            raise ValueError(f"unknown audio path {path!r}")
        self._path = path

    def send(self, pkt: RtpPacket, force_udp: bool = False) -> None:
        """One packet over the current path (``force_udp``: over UDP whatever the path,
        for a probe's answer); over TCP when that path is not set up."""
        if self.closed:
            return
        raw = pkt.pack()
        if (force_udp or self.path == "udp") and self.udp is not None \
                and self.udp_addr is not None:
            self.udp.sendto(raw, self.udp_addr)
        elif self.path == "shm" and self.shm_out is not None:
            self.shm_out.write(raw)
        else:
            self.post(AudioChunk(raw))

    def send_udp(self, raw: bytes) -> bool:
        """A datagram to the peer's UDP address (a probe); False when there is none."""
        if self.closed or self.udp is None or self.udp_addr is None:
            return False
        self.udp.sendto(raw, self.udp_addr)
        return True

    def post(self, message: Message) -> None:
        """Send ``message`` on the control connection without waiting: messages (and TCP
        packets) go out in the order they were posted (each is a task; tasks start, and
        the connection's lock is granted, in order)."""
        if self.closed:
            return
        task = asyncio.get_running_loop().create_task(send_quietly(self.conn, message))
        self._posted.add(task)  # a reference, or the loop may collect it half-way
        task.add_done_callback(self._posted.discard)

    def watch_shm(self, ring: ShmRing, on_packet: Callable[[bytes], None],
                  on_error: Callable[[ProtocolError], None]) -> None:
        """Read ``ring`` (the peer's audio) on this event loop whenever its writer
        signals: ``on_packet`` for each record, ``on_error`` when one is bad (the rest
        waits for the next signal)."""
        self.shm_in = ring
        asyncio.get_running_loop().add_reader(ring.fileno(), self._read_shm, ring,
                                              on_packet, on_error)

    def _read_shm(self, ring: ShmRing, on_packet: Callable[[bytes], None],
                  on_error: Callable[[ProtocolError], None]) -> None:
        if ring is not self.shm_in:
            return
        try:
            ring.clear()  # the wake-ups first, so that none for a new record is lost
            for raw in ring.read_frames():  # at most MAX_FRAMES_PER_WAKEUP at a time
                on_packet(raw)
        except ProtocolError as exc:
            on_error(exc)

    def close(self) -> None:
        """Stop reading the incoming ring, detach from both rings (the side that created
        them removes them) and drop the posts still pending; the UDP transport and the
        connection are the owner's to close."""
        self.closed = True
        for task in list(self._posted):
            task.cancel()
        ring_in, ring_out, self.shm_in, self.shm_out = self.shm_in, self.shm_out, None, None
        if ring_in is not None and ring_in.listening:
            with contextlib.suppress(RuntimeError, ValueError, OSError):  # the loop is gone
                asyncio.get_running_loop().remove_reader(ring_in.fileno())
        for ring in (ring_in, ring_out):
            if ring is not None:
                ring.close()
