"""Typed messages of the control channel: one dataclass per event type.

In the style of the ``wyoming`` package: each message has a wire ``TYPE``,
:meth:`~Message.is_type`, :meth:`~Message.event` (to an :class:`~hark.transport.control.Event`)
and :meth:`~Message.from_event`, plus :meth:`~Message.to_dict`/:meth:`~Message.from_dict`
for the event's ``data`` object. :func:`parse` turns any received event into its message.

The wire format is the one hark has always spoken (an old satellite or server keeps
working): a message writes exactly the keys the untyped code wrote. Parsing checks every
field it reads and raises :class:`~hark.errors.ProtocolError` naming the event, the field
and what was wrong (missing, wrong type, out of range); JSON ``null`` counts as absent for
an optional field; fields a message does not know are ignored (a newer peer may send
more). An event type that no message describes raises :class:`UnknownMessageType`, and a
``hello`` of another protocol version raises :class:`UnsupportedVersion` (both
``ProtocolError``), so the receiver can answer each with its own error code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from hark.errors import ProtocolError
from hark.transport.control import PROTOCOL_VERSION, Event

#: audio paths a satellite's audio can take (``transport``)
AUDIO_PATHS = ("udp", "tcp", "shm")
#: the codecs both ends speak
CODECS = ("opus", "pcm")
#: the server's ``transport.tcp_audio_fallback`` mode, told in ``welcome``
FALLBACK_MODES = ("auto", "always", "never")
MAX_SEQ = 0xFFFF  # RTP sequence numbers are 16 bit
MAX_SSRC = 0xFFFFFFFF  # RTP SSRCs are 32 bit
MAX_RATE = 192_000  # Hz
MAX_FRAME_MS = 120  # Opus's longest frame
MAX_JITTER_MS = 10_000

M = TypeVar("M", bound="Message")


class UnknownMessageType(ProtocolError):
    """An event type no message describes."""

    def __init__(self, etype: str):
        self.etype = etype
        super().__init__(f"unknown event type '{etype[:64]}'")


class UnsupportedVersion(ProtocolError):
    """A ``hello`` of a protocol version this side does not speak."""

    def __init__(self, version: Any):
        self.version = version
        super().__init__(f"protocol version {_show(version)} not supported; this server "
                         f"speaks {PROTOCOL_VERSION}")


_MISSING: Any = object()


def _show(value: Any) -> str:
    """A value for an error message: short, and safe for huge integers."""
    if value is None:
        return "null"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Fields:
    """Checked reads of one event's ``data``: each raises ProtocolError naming the event
    and the field. ``default`` makes a field optional (absent or null gives it)."""

    def __init__(self, etype: str, data: Mapping[str, Any]):
        if not isinstance(data, Mapping):
            raise ProtocolError(f"'{etype}' event: 'data' must be an object, got "
                                f"{_show(data)}")
        self.etype, self.data = etype, data

    def _get(self, key: str, default: Any) -> Any:
        value = self.data.get(key)
        if value is None:
            if default is _MISSING:
                if key in self.data:
                    raise self.error(key, "must not be null")
                raise ProtocolError(f"'{self.etype}' event: field '{key}' is missing")
            return default
        return value

    def error(self, key: str, what: str, value: Any = _MISSING) -> ProtocolError:
        got = "" if value is _MISSING else f", got {_show(value)}"
        return ProtocolError(f"'{self.etype}' event: field '{key}' {what}{got}")

    def text(self, key: str, default: Any = _MISSING, *,
            choices: tuple[str, ...] | None = None) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if not isinstance(value, str):
            raise self.error(key, "must be a string", value)
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}", value)
        return value

    def integer(self, key: str, lo: int, hi: int, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, "must be an integer", value)
        if not lo <= value <= hi:
            raise self.error(key, f"must be in [{lo}, {hi}]", value)
        return value

    def number(self, key: str, lo: float, hi: float, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default:
            return value
        if not isinstance(value, (int, float)) or isinstance(value, bool) or (
                isinstance(value, float) and not math.isfinite(value)):
            raise self.error(key, "must be a number", value)
        if not lo <= value <= hi:
            raise self.error(key, f"must be in [{lo}, {hi}]", value)
        return value

    def flag(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and not isinstance(value, bool):
            raise self.error(key, "must be true or false", value)
        return value

    def text_list(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default:
            return list(value) if isinstance(value, list) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "must be a list of strings", value)
        return list(value)

    def text_map(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is default:
            return dict(value) if isinstance(value, dict) else value
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.error(key, "must be an object of strings", value)
        return dict(value)

    def obj(self, key: str, default: Any = _MISSING) -> Any:
        value = self._get(key, default)
        if value is not default and not isinstance(value, dict):
            raise self.error(key, "must be an object", value)
        return value


class Message:
    """One control-channel event as a typed value (the base of every message).

    A subclass sets ``TYPE`` (the event type on the wire) and implements
    :meth:`to_dict` and :meth:`_parse`; it is registered for :func:`parse` by name."""

    TYPE: ClassVar[str] = ""
    #: event type -> message class, for :func:`parse`
    registry: ClassVar[dict[str, type[Message]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.TYPE:
            raise TypeError(f"{cls.__name__} has no TYPE")
        if cls.TYPE in Message.registry:
            raise TypeError(f"two messages for event type '{cls.TYPE}'")
        Message.registry[cls.TYPE] = cls

    @classmethod
    def is_type(cls, event_type: str) -> bool:
        return event_type == cls.TYPE

    def to_dict(self) -> dict[str, Any]:
        """The event's ``data``: exactly the keys hark has always sent."""
        return {}

    def payload(self) -> bytes:
        """The event's binary payload (only audio chunks have one)."""
        return b""

    def event(self) -> Event:
        return Event(self.TYPE, self.to_dict(), self.payload())

    @classmethod
    def from_event(cls: type[M], event: Event) -> M:
        """The message of ``event``; ProtocolError when it is another type, a field is
        missing or mistyped, or a value is out of range."""
        if event.type != cls.TYPE:
            raise ProtocolError(f"expected a '{cls.TYPE}' event, got '{event.type[:64]}'")
        return cls._parse(_Fields(cls.TYPE, event.data), event.payload)

    @classmethod
    def from_dict(cls: type[M], data: Mapping[str, Any], payload: bytes = b"") -> M:
        """The message of an event's ``data`` (and payload); checked as :meth:`from_event`."""
        return cls._parse(_Fields(cls.TYPE, data), payload)

    @classmethod
    def _parse(cls: type[M], f: _Fields, payload: bytes) -> M:
        return cls()


def parse(event: Event) -> Message:
    """The typed message of any received event.

    Raises :class:`UnknownMessageType` for a type no message describes, and
    :class:`~hark.errors.ProtocolError` for a malformed one."""
    cls = Message.registry.get(event.type)
    if cls is None:
        raise UnknownMessageType(event.type)
    return cls.from_event(event)


# --- session set-up ---------------------------------------------------------------------

@dataclass
class Hello(Message):
    """Satellite -> server, first: who it is and what it can do."""

    TYPE = "hello"
    name: str = "satellite"
    token: str | None = None
    capabilities: list[str] = field(default_factory=list)
    codecs: list[str] = field(default_factory=lambda: list(CODECS))
    udp_port: int = 0  # where the satellite takes reply audio over UDP; 0: none
    host_id: str | None = None  # equal to the server's: shared memory can work
    version: int = PROTOCOL_VERSION
    # the room the satellite stands in (satellite.area): "turn on the lights" said to it
    # means the lights there; "" = none (the server's home.default_area)
    area: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "name": self.name, "token": self.token,
                "capabilities": list(self.capabilities), "codecs": list(self.codecs),
                "udp_port": self.udp_port, "host_id": self.host_id,
                **({"area": self.area} if self.area else {})}

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> Hello:
        # the version first: another version's hello may have other fields
        version = f.data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) \
                or version != PROTOCOL_VERSION:
            raise UnsupportedVersion(version)
        return cls(name=f.text("name", "satellite"), token=f.text("token", None),
                   capabilities=f.text_list("capabilities", []),
                   codecs=f.text_list("codecs", list(CODECS)),
                   udp_port=f.integer("udp_port", 0, 65535, 0),
                   host_id=f.text("host_id", None), version=version,
                   area=_area(f))


AREA_MAX_CHARS = 100


def _area(f: _Fields) -> str:
    """A hello's ``area``: a room name, at most ``AREA_MAX_CHARS`` characters."""
    area = f.text("area", "")
    if len(area) > AREA_MAX_CHARS:
        raise f.error("area", f"must be at most {AREA_MAX_CHARS} characters", area[:40])
    return area.strip()


@dataclass
class ShmRings:
    """The names of a session's two shared-memory rings (:class:`~hark.transport.shm.ShmRing`)."""

    up: str  # satellite -> server audio
    down: str  # server -> satellite audio


@dataclass
class Welcome(Message):
    """Server -> satellite: the session and its audio parameters."""

    TYPE = "welcome"
    session: str
    capabilities: list[str]
    codec: str  # one of CODECS, both directions
    frame_ms: int
    up_rate: int  # Hz of the satellite's audio
    down_rate: int  # Hz of the reply audio on the wire
    ssrc: int  # the SSRC the satellite's audio must carry
    server_ssrc: int  # the SSRC of the reply audio
    rtp_port: int  # the server's UDP port
    audio: str  # the server's transport.tcp_audio_fallback (FALLBACK_MODES)
    jitter_min_ms: float
    jitter_max_ms: float
    shm: ShmRings | None = None  # offered when the satellite runs on the server's host
    version: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "version": self.version, "session": self.session,
            "capabilities": list(self.capabilities), "codec": self.codec,
            "frame_ms": self.frame_ms, "up_rate": self.up_rate, "down_rate": self.down_rate,
            "ssrc": self.ssrc, "server_ssrc": self.server_ssrc, "rtp_port": self.rtp_port,
            "audio": self.audio, "jitter_min_ms": self.jitter_min_ms,
            "jitter_max_ms": self.jitter_max_ms,
        }
        if self.shm is not None:
            d["shm"] = {"up": self.shm.up, "down": self.shm.down}
        return d

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> Welcome:
        shm = f.obj("shm", None)
        if shm is not None:
            rings = _Fields("welcome.shm", shm)
            shm = ShmRings(up=rings.text("up"), down=rings.text("down"))
        lo = f.number("jitter_min_ms", 0, MAX_JITTER_MS)
        hi = f.number("jitter_max_ms", 0, MAX_JITTER_MS)
        if hi < lo:
            raise f.error("jitter_max_ms", f"must not be below jitter_min_ms ({lo})", hi)
        return cls(session=f.text("session"), capabilities=f.text_list("capabilities", []),
                   codec=f.text("codec", choices=CODECS),
                   frame_ms=f.integer("frame_ms", 1, MAX_FRAME_MS),
                   up_rate=f.integer("up_rate", 1, MAX_RATE),
                   down_rate=f.integer("down_rate", 1, MAX_RATE),
                   ssrc=f.integer("ssrc", 0, MAX_SSRC),
                   server_ssrc=f.integer("server_ssrc", 0, MAX_SSRC),
                   rtp_port=f.integer("rtp_port", 1, 65535),
                   audio=f.text("audio", choices=FALLBACK_MODES),
                   jitter_min_ms=lo, jitter_max_ms=hi, shm=shm,
                   version=f.integer("version", 0, 2**31 - 1))


@dataclass
class Error(Message):
    """Either way: something went wrong. The server's codes: ``auth``, ``version``,
    ``busy``, ``protocol``, ``timeout`` (the connection then closes), ``unknown-event``
    and ``bad-event`` (it stays open)."""

    TYPE = "error"
    code: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message}

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> Error:
        return cls(code=f.text("code"), message=f.text("message"))


@dataclass
class Transport(Message):
    """Either way: the path audio takes from now on.

    From the satellite: its audio path. From the server: a request to move (``reason``
    set), with ``last_seq``, the newest audio packet it has (null: none), after which the
    satellite resends the turn's audio."""

    TYPE = "transport"
    audio: str  # one of AUDIO_PATHS
    last_seq: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"audio": self.audio}
        if self.last_seq is not None or self.reason is not None:
            d["last_seq"] = self.last_seq
        if self.reason is not None:
            d["reason"] = self.reason
        return d

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> Transport:
        return cls(audio=f.text("audio", choices=AUDIO_PATHS),
                   last_seq=f.integer("last_seq", 0, MAX_SEQ, None), reason=f.text("reason", None))


@dataclass
class Ping(Message):
    """Either way: answered with a :class:`Pong` carrying the same data."""

    TYPE = "ping"
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> Ping:
        return cls(dict(f.data))


@dataclass
class Pong(Message):
    TYPE = "pong"
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> Pong:
        return cls(dict(f.data))


@dataclass
class SessionEnd(Message):
    """Either way: goodbye."""

    TYPE = "session-end"


# --- a turn -----------------------------------------------------------------------------

@dataclass
class Wake(Message):
    """Satellite -> server: a turn begins (during a reply: a barge-in)."""

    TYPE = "wake"
    keyword: str | None = None
    followup: bool = False  # started by speech after a reply, not the wake word
    seq: int | None = None  # RTP seq of the turn's first audio packet

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.keyword is not None:
            d["keyword"] = self.keyword
        d["followup"] = self.followup
        if self.seq is not None:
            d["seq"] = self.seq
        return d

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> Wake:
        return cls(keyword=f.text("keyword", None), followup=f.flag("followup", False),
                   seq=f.integer("seq", 0, MAX_SEQ, None))


@dataclass
class AudioStart(Message):
    """Either way: audio of a turn follows."""

    TYPE = "audio-start"
    rate: int  # Hz on the wire
    codec: str

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "codec": self.codec}

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> AudioStart:
        return cls(rate=f.integer("rate", 1, MAX_RATE), codec=f.text("codec", choices=CODECS))


@dataclass
class AudioChunk(Message):
    """Either way: one RTP packet (:class:`~hark.transport.rtp.RtpPacket`) as the payload,
    when audio travels over the control connection."""

    TYPE = "audio-chunk"
    packet: bytes = b""

    def payload(self) -> bytes:
        return self.packet

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> AudioChunk:
        return cls(payload)


@dataclass
class AudioStop(Message):
    """Either way: no more audio for this turn."""

    TYPE = "audio-stop"


@dataclass
class SpeechStart(Message):
    TYPE = "speech-start"


@dataclass
class SpeechEnd(Message):
    """Server -> satellite: the person stopped speaking (stop sending audio)."""

    TYPE = "speech-end"


@dataclass
class Transcript(Message):
    TYPE = "transcript"
    text: str
    final: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "final": self.final}

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> Transcript:
        return cls(text=f.text("text"), final=f.flag("final", True))


@dataclass
class Intent(Message):
    """The intent that answers the turn; ``name`` None: none did (the LLM answers)."""

    TYPE = "intent"
    name: str | None = None
    slots: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        if self.name is None:
            return {"name": None}
        return {"name": self.name, "slots": dict(self.slots)}

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> Intent:
        return cls(name=f.text("name", None), slots=f.text_map("slots", {}))


@dataclass
class ReplyText(Message):
    """A speakable piece of the reply; ``source``: intent, template, cache, llm, error."""

    TYPE = "reply-text"
    text: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "source": self.source}

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> ReplyText:
        return cls(text=f.text("text"), source=f.text("source"))


@dataclass
class TurnEnd(Message):
    TYPE = "turn-end"
    transcript: str = ""
    reply: str = ""
    error: str | None = None  # "busy", "no speech", or what failed

    def to_dict(self) -> dict[str, Any]:
        return {"transcript": self.transcript, "reply": self.reply, "error": self.error}

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> TurnEnd:
        return cls(transcript=f.text("transcript", ""), reply=f.text("reply", ""),
                   error=f.text("error", None))


@dataclass
class BargeIn(Message):
    """Server -> satellite: the running turn was cut off by a new one."""

    TYPE = "barge-in"


@dataclass
class Timer(Message):
    """Server -> satellite: something to say unprompted (a timer fired)."""

    TYPE = "timer"
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text}

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> Timer:
        return cls(text=f.text("text"))


@dataclass
class Busy(Message):
    """Server -> satellite: at capacity; the spoken ``message`` follows."""

    TYPE = "busy"
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"message": self.message}

    @classmethod
    def _parse(cls, f: _Fields, payload: bytes) -> Busy:
        return cls(message=f.text("message"))
