"""The control channel's typed messages (hark.transport.messages): the exact dicts the
untyped satellite and server wrote still parse, and the messages write them back byte for
byte; every message round-trips; malformed ones raise ProtocolError and nothing else."""

from __future__ import annotations

import asyncio
import json

import pytest

from hark.errors import ProtocolError
from hark.transport import messages as m
from hark.transport.control import EVENT_TYPES, MAX_HEADER, Event, read_event

BUSY = "Sorry, I'm busy right now. Please try again in a moment."
SAT_CAPS = ["audio-udp", "audio-tcp", "opus", "pcm", "barge-in", "audio-shm"]
SERVER_CAPS = ["wake", "asr", "tts", "intent", "pipeline", "barge-in", "timer",
               "audio-udp", "audio-tcp", "audio-shm", "opus", "pcm"]
RTP = bytes([0x80, 0x6F, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]) + b"opus"
WELCOME = {"version": 1, "session": "kitchen-1a2b3c4d", "capabilities": SERVER_CAPS,
           "codec": "opus", "frame_ms": 20, "up_rate": 16000, "down_rate": 24000,
           "ssrc": 3735928559, "server_ssrc": 195948557, "rtp_port": 10701, "audio": "auto",
           "jitter_min_ms": 10, "jitter_max_ms": 120}
WELCOME_MSG = m.Welcome(session="kitchen-1a2b3c4d", capabilities=SERVER_CAPS, codec="opus",
                        frame_ms=20, up_rate=16000, down_rate=24000, ssrc=3735928559,
                        server_ssrc=195948557, rtp_port=10701, audio="auto",
                        jitter_min_ms=10, jitter_max_ms=120)

# (event type, data as the untyped code wrote it, payload, the message it is,
#  whether the typed code writes these very bytes: False where the old writer left out
#  fields that the message writes with their default, or ordered its keys otherwise)
OLD_WIRE = [
    # satellite.py: _connect
    ("hello", {"version": 1, "name": "kitchen", "token": "", "capabilities": SAT_CAPS,
               "codecs": ["opus", "pcm"], "udp_port": 40001, "host_id": "pi:7f3e"}, b"",
     m.Hello(name="kitchen", token="", capabilities=SAT_CAPS, codecs=["opus", "pcm"],
             udp_port=40001, host_id="pi:7f3e"), True),
    # bench/load.py: SimSatellite.connect, without and with a token
    ("hello", {"version": 1, "name": "sim-0", "codecs": ["pcm"], "capabilities": []}, b"",
     m.Hello(name="sim-0", codecs=["pcm"]), False),
    ("hello", {"version": 1, "name": "sim-1", "codecs": ["opus"], "capabilities": [],
               "token": "t0k"}, b"",
     m.Hello(name="sim-1", token="t0k", codecs=["opus"]), False),
    # tests' raw client
    ("hello", {"version": 1, "name": "probe", "token": "", "capabilities": [],
               "udp_port": 9}, b"", m.Hello(name="probe", token="", udp_port=9), False),
    # server.py: _handshake
    ("welcome", WELCOME, b"", WELCOME_MSG, True),
    ("welcome", {**WELCOME, "codec": "pcm", "down_rate": 22050,
                 "shm": {"up": "/psm_a1", "down": "/psm_b2"}}, b"",
     m.Welcome(**{**WELCOME_MSG.__dict__, "codec": "pcm", "down_rate": 22050,
                  "shm": m.ShmRings("/psm_a1", "/psm_b2")}), True),
    ("error", {"code": "auth", "message": "satellite 'kitchen' is not authorised: wrong or "
               "missing token (server.tokens)"}, b"",
     m.Error("auth", "satellite 'kitchen' is not authorised: wrong or missing token "
             "(server.tokens)"), True),
    ("error", {"code": "unknown-event", "message": "unknown event type 'frobnicate'"}, b"",
     m.Error("unknown-event", "unknown event type 'frobnicate'"), True),
    # satellite.py: _start_turn; loadbench and older clients send an empty wake
    ("wake", {"keyword": "alexa", "followup": False, "seq": 51234}, b"",
     m.Wake("alexa", False, 51234), True),
    ("wake", {"keyword": "hey_jarvis", "followup": True, "seq": 0}, b"",
     m.Wake("hey_jarvis", True, 0), True),
    ("wake", {}, b"", m.Wake(), False),
    ("wake", {"seq": 65535}, b"", m.Wake(seq=65535), False),
    # loadbench (satellite -> server) and server.py: _play (server -> satellite)
    ("audio-start", {"rate": 16000, "codec": "pcm"}, b"", m.AudioStart(16000, "pcm"), True),
    ("audio-start", {"rate": 24000, "codec": "opus"}, b"", m.AudioStart(24000, "opus"), True),
    ("audio-chunk", {}, RTP, m.AudioChunk(RTP), True),
    ("audio-stop", {}, b"", m.AudioStop(), True),
    # satellite.py: _connect, _reprobe; server.py: _udp_watchdog
    ("transport", {"audio": "udp"}, b"", m.Transport("udp"), True),
    ("transport", {"audio": "shm"}, b"", m.Transport("shm"), True),
    ("transport", {"audio": "tcp", "last_seq": 812, "reason": "no-udp-audio"}, b"",
     m.Transport("tcp", 812, "no-udp-audio"), True),
    ("transport", {"audio": "tcp", "last_seq": None, "reason": "no-udp-audio"}, b"",
     m.Transport("tcp", None, "no-udp-audio"), True),
    # server.py: _event_message, _turn, _on_notify, _on_wake
    ("speech-start", {}, b"", m.SpeechStart(), True),
    ("speech-end", {}, b"", m.SpeechEnd(), True),
    ("transcript", {"text": "what time is it", "final": True}, b"",
     m.Transcript("what time is it", True), True),
    ("transcript", {"text": "what ti", "final": False}, b"", m.Transcript("what ti", False),
     True),
    ("intent", {"name": None}, b"", m.Intent(None), True),
    ("intent", {"name": "HassTurnOn", "slots": {"name": "kitchen light"}}, b"",
     m.Intent("HassTurnOn", {"name": "kitchen light"}), True),
    ("intent", {"name": "HassGetTime", "slots": {}}, b"", m.Intent("HassGetTime"), True),
    ("reply-text", {"text": "It is noon.", "source": "intent"}, b"",
     m.ReplyText("It is noon.", "intent"), True),
    ("turn-end", {"transcript": "what time is it", "reply": "It is noon.", "error": None},
     b"", m.TurnEnd("what time is it", "It is noon.", None), True),
    ("turn-end", {"transcript": "", "reply": "", "error": "no speech"}, b"",
     m.TurnEnd("", "", "no speech"), True),
    ("turn-end", {"error": "busy", "transcript": "", "reply": ""}, b"",
     m.TurnEnd("", "", "busy"), False),  # same keys, another order
    ("barge-in", {}, b"", m.BargeIn(), True),
    ("timer", {"text": "Your 5 minute timer is done."}, b"",
     m.Timer("Your 5 minute timer is done."), True),
    ("busy", {"message": BUSY}, b"", m.Busy(BUSY), True),
    ("ping", {"n": 1}, b"", m.Ping({"n": 1}), True),
    ("ping", {}, b"", m.Ping(), True),
    ("pong", {"n": 1}, b"", m.Pong({"n": 1}), True),
    ("session-end", {}, b"", m.SessionEnd(), True),
]


def _read(raw: bytes) -> Event | None:
    async def go():
        reader = asyncio.StreamReader(limit=MAX_HEADER)
        reader.feed_data(raw)
        reader.feed_eof()
        return await read_event(reader)

    return asyncio.run(go())


@pytest.mark.parametrize("etype, data, payload, message, same_bytes", OLD_WIRE,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(OLD_WIRE)])
def test_old_wire_dicts_parse_and_are_written_back(etype, data, payload, message, same_bytes):
    old_wire = Event(etype, data, payload).encode()  # what the untyped code sent
    received = _read(old_wire)
    assert m.parse(received) == message
    assert type(message).is_type(etype) and type(message).from_dict(data, payload) == message
    assert message.payload() == payload
    if same_bytes:
        assert message.event().encode() == old_wire
        assert message.to_dict() == data
    else:  # the typed writer adds defaults (or orders keys): the same message all the same
        assert m.parse(_read(message.event().encode())) == message


def test_every_event_type_has_a_message_and_the_table_covers_them():
    assert set(m.Message.registry) == EVENT_TYPES
    assert {c[0] for c in OLD_WIRE} == EVENT_TYPES
    assert all(cls.TYPE == etype and cls.is_type(etype) and not cls.is_type(etype + "x")
               for etype, cls in m.Message.registry.items())


ROUND_TRIP = [
    m.Hello(), m.Hello("x" * 200, "tok", ["a"], [], 65535, "h", 1),
    WELCOME_MSG, m.Welcome(**{**WELCOME_MSG.__dict__, "jitter_min_ms": 0.5,
                              "jitter_max_ms": 80.25, "shm": m.ShmRings("u", "d")}),
    m.Error("protocol", "bad"), m.Wake(), m.Wake("alexa", True, 0), m.Wake(seq=65535),
    m.AudioStart(48000, "opus"), m.AudioChunk(RTP), m.AudioChunk(), m.AudioStop(),
    m.Transport("udp"), m.Transport("tcp", 0), m.Transport("tcp", None, "why"),
    m.Transport("tcp", 65535, "why"), m.SpeechStart(), m.SpeechEnd(),
    m.Transcript("", False), m.Intent(), m.Intent("X", {"a": "b"}),
    m.ReplyText("Hi.", "llm"), m.TurnEnd(), m.TurnEnd("a", "b", "c"), m.BargeIn(),
    m.Timer("t"), m.Busy("b"), m.Ping({"n": [1, {"x": None}]}), m.Pong({"s": "é"}),
    m.SessionEnd(),
]


@pytest.mark.parametrize("message", ROUND_TRIP, ids=lambda x: type(x).__name__)
def test_round_trip(message):
    assert m.parse(message.event()) == message
    assert type(message).from_dict(message.to_dict(), message.payload()) == message
    assert m.parse(_read(message.event().encode())) == message


def test_round_trip_table_covers_every_message():
    assert {type(x) for x in ROUND_TRIP} == set(m.Message.registry.values())


HUGE = 10 ** 40

# (event type, data, words the error must contain)
MALFORMED = [
    ("hello", {"version": 1, "udp_port": "abc"}, "'udp_port' must be an integer"),
    ("hello", {"version": 1, "udp_port": HUGE}, "'udp_port' must be in [0, 65535]"),
    ("hello", {"version": 1, "udp_port": -1}, "'udp_port' must be in"),
    ("hello", {"version": 1, "udp_port": True}, "'udp_port' must be an integer"),
    ("hello", {"version": 1, "udp_port": 5000.0}, "'udp_port' must be an integer"),
    ("hello", {"version": 1, "name": ["x"]}, "'name' must be a string"),
    ("hello", {"version": 1, "token": 5}, "'token' must be a string"),
    ("hello", {"version": 1, "capabilities": 5}, "'capabilities' must be a list of strings"),
    ("hello", {"version": 1, "codecs": ["opus", 1]}, "'codecs' must be a list of strings"),
    ("hello", {"version": 1, "host_id": 7}, "'host_id' must be a string"),
    ("hello", {}, "protocol version null not supported"),
    ("hello", {"version": "1"}, "protocol version '1' not supported"),
    ("hello", {"version": 2, "name": 5}, "protocol version 2 not supported"),
    ("hello", {"version": True}, "protocol version True not supported"),
    ("hello", {"version": HUGE}, "integer of 133 bits not supported"),
    ("welcome", {k: v for k, v in WELCOME.items() if k != "session"},
     "'session' is missing"),
    ("welcome", {**WELCOME, "session": None}, "'session' must not be null"),
    ("welcome", {**WELCOME, "ssrc": 2 ** 32}, "'ssrc' must be in [0, 4294967295]"),
    ("welcome", {**WELCOME, "server_ssrc": -1}, "'server_ssrc' must be in"),
    ("welcome", {**WELCOME, "ssrc": HUGE}, "'ssrc' must be in"),
    ("welcome", {**WELCOME, "codec": "mp3"}, "'codec' must be one of opus, pcm, got 'mp3'"),
    ("welcome", {**WELCOME, "frame_ms": 0}, "'frame_ms' must be in [1, 120]"),
    ("welcome", {**WELCOME, "up_rate": 0}, "'up_rate' must be in"),
    ("welcome", {**WELCOME, "down_rate": "24000"}, "'down_rate' must be an integer"),
    ("welcome", {**WELCOME, "rtp_port": 0}, "'rtp_port' must be in [1, 65535]"),
    ("welcome", {**WELCOME, "rtp_port": 70000}, "'rtp_port' must be in"),
    ("welcome", {**WELCOME, "audio": "sometimes"}, "'audio' must be one of auto, always"),
    ("welcome", {**WELCOME, "jitter_min_ms": "10"}, "'jitter_min_ms' must be a number"),
    ("welcome", {**WELCOME, "jitter_max_ms": float("nan")}, "'jitter_max_ms' must be a number"),
    ("welcome", {**WELCOME, "jitter_max_ms": 5}, "'jitter_max_ms' must not be below"),
    ("welcome", {**WELCOME, "jitter_min_ms": HUGE}, "'jitter_min_ms' must be in"),
    ("welcome", {**WELCOME, "shm": "ring"}, "'shm' must be an object"),
    ("welcome", {**WELCOME, "shm": {"up": "a"}}, "'welcome.shm' event: field 'down' is missing"),
    ("welcome", {**WELCOME, "shm": {"up": 1, "down": "b"}}, "'up' must be a string"),
    ("welcome", {**WELCOME, "version": "1"}, "'version' must be an integer"),
    ("error", {"message": "x"}, "'code' is missing"),
    ("error", {"code": "auth"}, "'message' is missing"),
    ("error", {"code": "auth", "message": {"text": "x"}}, "'message' must be a string"),
    ("wake", {"seq": 65536}, "'seq' must be in [0, 65535]"),
    ("wake", {"seq": HUGE}, "'seq' must be in"),
    ("wake", {"seq": "1"}, "'seq' must be an integer"),
    ("wake", {"followup": "yes"}, "'followup' must be true or false"),
    ("wake", {"followup": 1}, "'followup' must be true or false"),
    ("wake", {"keyword": 5}, "'keyword' must be a string"),
    ("audio-start", {"codec": "opus"}, "'rate' is missing"),
    ("audio-start", {"rate": HUGE, "codec": "opus"}, "'rate' must be in"),
    ("audio-start", {"rate": 16000}, "'codec' is missing"),
    ("transport", {}, "'audio' is missing"),
    ("transport", {"audio": "carrier-pigeon"}, "'audio' must be one of udp, tcp, shm, got "
     "'carrier-pigeon'"),
    ("transport", {"audio": "tcp", "last_seq": HUGE}, "'last_seq' must be in [0, 65535]"),
    ("transport", {"audio": "tcp", "last_seq": -1}, "'last_seq' must be in"),
    ("transport", {"audio": "tcp", "last_seq": 1.5}, "'last_seq' must be an integer"),
    ("transport", {"audio": "tcp", "reason": 3}, "'reason' must be a string"),
    ("transcript", {"final": True}, "'text' is missing"),
    ("transcript", {"text": "x", "final": "no"}, "'final' must be true or false"),
    ("intent", {"name": 5}, "'name' must be a string"),
    ("intent", {"name": "X", "slots": {"a": 1}}, "'slots' must be an object of strings"),
    ("intent", {"name": "X", "slots": ["a"]}, "'slots' must be an object of strings"),
    ("reply-text", {"text": "x"}, "'source' is missing"),
    ("turn-end", {"error": 5}, "'error' must be a string"),
    ("turn-end", {"transcript": ["a"]}, "'transcript' must be a string"),
    ("timer", {"text": None}, "'text' must not be null"),
    ("busy", {}, "'message' is missing"),
]


@pytest.mark.parametrize("etype, data, words", MALFORMED,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(MALFORMED)])
def test_malformed_messages_raise_a_protocol_error_naming_the_field(etype, data, words):
    with pytest.raises(ProtocolError) as err:
        m.parse(Event(etype, data))
    assert words in str(err.value)
    assert str(err.value).startswith(f"'{etype}") or "protocol version" in str(err.value)
    with pytest.raises(ProtocolError):
        m.Message.registry[etype].from_dict(data)


def test_a_hello_of_another_version_is_its_own_error():
    with pytest.raises(m.UnsupportedVersion) as err:
        m.parse(Event("hello", {"version": 99, "name": "x"}))
    assert err.value.version == 99 and "this server speaks 1" in str(err.value)


@pytest.mark.parametrize("etype", ["frobnicate", "", "x" * 1000, "Hello", "audio_chunk"])
def test_unknown_event_type_is_a_protocol_error(etype):
    with pytest.raises(m.UnknownMessageType) as err:
        m.parse(Event(etype, {"version": 1}))
    assert isinstance(err.value, ProtocolError) and err.value.etype == etype
    assert str(err.value) == f"unknown event type '{etype[:64]}'"


def test_from_event_of_another_type_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="expected a 'welcome' event, got 'error'"):
        m.Welcome.from_event(m.Error("auth", "no").event())


def test_unknown_fields_are_ignored_and_null_is_absent():
    assert m.parse(Event("wake", {"keyword": None, "seq": None, "probability": 0.9,
                                  "future": {"x": 1}})) == m.Wake()
    assert m.parse(Event("hello", {"version": 1, "codecs": None, "capabilities": None})) \
        == m.Hello()


def test_data_that_is_not_an_object_is_a_protocol_error():
    with pytest.raises(ProtocolError, match="'data' must be an object"):
        m.Wake.from_dict(["seq", 1])  # type: ignore[arg-type]


def test_huge_integers_in_a_header_are_a_protocol_error():
    """Python's JSON parser refuses integers of over 4300 digits with a ValueError (not
    a JSONDecodeError), and deep nesting with a RecursionError: both are protocol errors."""
    digits = json.dumps({"type": "wake", "data": {}}).replace("{}", '{"seq":' + "9" * 5000
                                                               + "}")
    with pytest.raises(ProtocolError, match="not JSON"):
        _read(digits.encode() + b"\n")
    with pytest.raises(ProtocolError, match="nested too deeply"):
        _read(b'{"type":"ping","data":{"x":' + b"[" * 30000 + b"]" * 30000 + b"}}\n")


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_no_numbers(constant):
    """Python's JSON reads NaN and Infinity; a number field refuses them."""
    header = Event("welcome", WELCOME).encode().replace(b'"jitter_max_ms":120',
                                                        b'"jitter_max_ms":' + constant)
    with pytest.raises(ProtocolError, match="'jitter_max_ms' must be a number"):
        m.parse(_read(header))
