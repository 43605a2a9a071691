"""The control channel: typed events over TCP, modelled on the Wyoming protocol.

One event on the wire is a JSON header line, then an optional binary payload::

    {"type": "wake", "data": {"keyword": "alexa"}, "payload_length": 0}\\n
    <payload_length bytes>

A satellite opens with ``hello`` (protocol version, name, token, capabilities); the
server answers ``welcome`` (session id, audio parameters) or ``error`` and closes.
Headers over :data:`MAX_HEADER` bytes and payloads over :data:`MAX_PAYLOAD` are refused,
so a peer cannot make the other side buffer without bound. A malformed event raises
:class:`~hark.errors.ProtocolError`. This module frames events; what each event's
``data`` holds is :mod:`hark.transport.messages` (one dataclass per type, checked when
parsed); an unknown ``type`` is the caller's business (the server answers it with an
``error`` event and keeps the connection).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hark.errors import ProtocolError

if TYPE_CHECKING:
    from hark.transport.messages import Message

PROTOCOL_VERSION = 1
MAX_HEADER = 64 * 1024
MAX_PAYLOAD = 1024 * 1024

#: every event type, and who sends it (S: satellite, H: server); the fields of each are
#: its message in :mod:`hark.transport.messages`
EVENT_TYPES = {
    "hello",  # S: {version, name, token, capabilities, udp_port, host_id}
    "welcome",  # H: {version, session, capabilities, codec, frame_ms, rates, ssrc...}
    "error",  # both: {code, message}
    "wake",  # S: {keyword, followup, seq} a turn begins (or barge-in during playback)
    "audio-start",  # both: {rate, codec} audio of a turn follows
    "audio-chunk",  # both: payload = one RTP packet (TCP audio fallback)
    "audio-stop",  # both: no more audio for this turn
    "transport",  # both: {audio: "udp" | "tcp" | "shm", last_seq, reason} the audio path
    "speech-start",  # H
    "speech-end",  # H
    "transcript",  # H: {text, final}
    "intent",  # H: {name, slots} or {name: null}
    "reply-text",  # H: {text, source}
    "turn-end",  # H: {transcript, reply, error}
    "barge-in",  # H: the turn was cut off by the satellite
    "timer",  # H: {text} something to say unprompted (a timer fired)
    "busy",  # H: {message} the server is at capacity
    "ping",  # both
    "pong",  # both
    "session-end",  # both: goodbye
}


@dataclass
class Event:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
    payload: bytes = b""

    def encode(self) -> bytes:
        if len(self.payload) > MAX_PAYLOAD:
            raise ProtocolError(f"event payload of {len(self.payload)} bytes exceeds "
                                f"{MAX_PAYLOAD}")
        header = json.dumps({"type": self.type, "data": self.data,
                             "payload_length": len(self.payload)},
                            separators=(",", ":")).encode()
        if len(header) >= MAX_HEADER:
            raise ProtocolError(f"event header of {len(header)} bytes exceeds {MAX_HEADER}")
        return header + b"\n" + self.payload


def parse_header(line: bytes) -> tuple[str, dict[str, Any], int]:
    """Validate one header line: (type, data, payload_length)."""
    try:
        obj = json.loads(line)
    except RecursionError as exc:
        raise ProtocolError("event header is nested too deeply") from exc
    except ValueError as exc:  # not JSON, not UTF-8, or an integer of over 4300 digits
        raise ProtocolError(f"event header is not JSON: {str(exc)[:200]}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError("event header must be a JSON object")
    etype = obj.get("type")
    data = obj.get("data")
    data = {} if data is None else data
    length = obj.get("payload_length") or 0
    if not isinstance(etype, str) or not etype:
        raise ProtocolError("event header has no 'type'")
    if not isinstance(data, dict):
        raise ProtocolError(f"event '{etype}': 'data' must be an object")
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ProtocolError(f"event '{etype}': bad payload_length {length!r}")
    if length > MAX_PAYLOAD:
        raise ProtocolError(f"event '{etype}': payload of {length} bytes exceeds {MAX_PAYLOAD}")
    return etype, data, length


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event, or None at a clean end of stream (between events).

    Raises :class:`ProtocolError` for an oversized or malformed header, or a connection
    that closes half-way through an event."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise ProtocolError("connection closed in the middle of an event header") from exc
    except asyncio.LimitOverrunError as exc:
        raise ProtocolError(f"event header longer than {MAX_HEADER} bytes") from exc
    if len(line) > MAX_HEADER:
        raise ProtocolError(f"event header longer than {MAX_HEADER} bytes")
    etype, data, length = parse_header(line)
    payload = b""
    if length:
        try:
            payload = await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise ProtocolError(f"connection closed after {len(exc.partial)} of {length} "
                                f"payload bytes of a '{etype}' event") from exc
    return Event(etype, data, payload)


class Connection:
    """One control connection: typed reads and serialised writes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self._lock = asyncio.Lock()
        self.peer = writer.get_extra_info("peername")

    @classmethod
    async def open(cls, host: str, port: int, timeout: float = 5.0) -> Connection:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=MAX_HEADER), timeout)
        return cls(reader, writer)

    async def send(self, etype: str, data: dict[str, Any] | None = None,
                   payload: bytes = b"") -> None:
        await self._write(Event(etype, data or {}, payload).encode())

    async def send_message(self, message: Message) -> None:
        """Send a typed message (:mod:`hark.transport.messages`)."""
        await self._write(message.event().encode())

    async def _write(self, raw: bytes) -> None:
        async with self._lock:
            self.writer.write(raw)
            await self.writer.drain()

    async def recv(self) -> Event | None:
        return await read_event(self.reader)

    async def close(self) -> None:
        try:
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
        except (TimeoutError, OSError, ConnectionError):
            pass
