"""Property-based fuzzing (hypothesis, bounded) of the parsers the security work added
or hardened: the Wyoming event reader and handler, and the HTTP side (Host, token, cookie
and login parameters, over a real socket). Each may only succeed, answer with its own
error, or raise its own protocol error."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_wyoming_bounds import FakeAssistant
from web_helpers import FakeServer, LiveHttp
from wyoming.event import Event as WyEvent

from hark.config import Config
from hark.errors import ProtocolError
from hark.pipeline.events import TurnEnd
from hark.server import wyoming as wy
from hark.trace import Trace

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
              st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10)
TYPES = ["describe", "transcribe", "audio-start", "audio-chunk", "audio-stop", "synthesize",
         "recognize", "transcript", "detect", "run-pipeline", "frobnicate"]


# --- the Wyoming reader -------------------------------------------------------------------
def _read_all(data: bytes) -> list[WyEvent]:
    async def go():
        reader = asyncio.StreamReader(limit=wy.MAX_HEADER)
        reader.feed_data(data)
        reader.feed_eof()
        events = []
        while (ev := await wy.read_event(reader)) is not None:
            events.append(ev)
        return events

    return asyncio.run(go())


def _wire(etype: str, data: dict, payload: bytes, split: bool) -> bytes:
    """An event as the wyoming package writes it: data inline or after the header."""
    header: dict = {"type": etype, "version": "1.0"}
    body = b""
    if split and data:
        body = json.dumps(data).encode()
        header["data_length"] = len(body)
    elif data:
        header["data"] = data
    if payload:
        header["payload_length"] = len(payload)
    return json.dumps(header).encode() + b"\n" + body + payload


EVENTS = st.lists(st.tuples(st.sampled_from(TYPES),
                            st.dictionaries(st.text(max_size=8), JSONISH, max_size=3),
                            st.binary(max_size=64), st.booleans()), min_size=1, max_size=4)


@FUZZ
@given(data=st.binary(max_size=400))
def test_wyoming_reader_random_bytes(data):
    try:
        events = _read_all(data)
    except ProtocolError:
        return
    assert all(isinstance(e.type, str) and isinstance(e.data, dict) for e in events)


@FUZZ
@given(events=EVENTS, cut=st.integers(0, 10_000), flips=st.lists(st.integers(0, 10_000),
                                                                 max_size=3))
def test_wyoming_reader_round_trip_truncation_and_bit_flips(events, cut, flips):
    wire = b"".join(_wire(*e) for e in events)
    got = _read_all(wire)
    assert [(e.type, e.data, e.payload or b"") for e in got] == \
        [(t, d, p) for t, d, p, _ in events]
    damaged = bytearray(wire[: cut % (len(wire) + 1)])
    for f in flips:
        if damaged:
            damaged[f % len(damaged)] ^= 1 << (f % 8)
    try:
        got = _read_all(bytes(damaged))
    except ProtocolError:
        return
    assert all(isinstance(e.data, dict) for e in got)


@FUZZ
@given(header=st.dictionaries(st.sampled_from(["type", "data", "data_length",
                                               "payload_length", "version"]),
                              JSONISH, max_size=5),
       depth=st.integers(0, 3000))
def test_wyoming_reader_hostile_headers(header, depth):
    line = json.dumps(header).encode()
    if depth:
        line = b'{"type": "x", "data": ' + b"[" * depth + b"]" * depth + b"}"
    try:
        events = _read_all(line + b"\n" + bytes(100))
    except ProtocolError:
        return
    assert len(events) <= 2


# --- the Wyoming handler ------------------------------------------------------------------
class _Writer:
    """Collects what the handler writes (the StreamWriter calls it uses)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: bytes) -> None:
        self.data += b

    def writelines(self, parts) -> None:
        for p in parts:
            self.data += p

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        pass


class _Assistant(FakeAssistant):
    """Turns end when their audio does; intents are never recognized."""

    def __init__(self) -> None:
        super().__init__()
        self.nlu_exec = self.asr_exec
        self.nlu = self

    def recognize(self, text: str):
        return None

    async def run_turn(self, audio, *, session: str = "default"):
        async for _ in audio:
            pass
        yield TurnEnd(Trace(), "", "", error="no speech")


AUDIO_DATA = st.fixed_dictionaries({"rate": st.one_of(st.integers(-5, 200_000),
                                                      st.sampled_from([8000, 16000, 48000])),
                                    "width": st.integers(0, 4), "channels": st.integers(0, 3)})


@FUZZ
@given(events=st.lists(st.tuples(st.sampled_from(TYPES),
                                 st.one_of(st.dictionaries(st.text(max_size=8), JSONISH,
                                                           max_size=3), AUDIO_DATA),
                                 st.binary(max_size=64)), min_size=1, max_size=6))
def test_wyoming_handler_answers_every_event_and_never_raises(events):
    async def go():
        assistant = _Assistant()
        writer = _Writer()
        handler = wy.HarkWyomingHandler(Config(), assistant, asyncio.StreamReader(), writer)
        handler._start_wake = lambda names: None  # no wake model in this test
        for etype, data, payload in events:
            ev = WyEvent(etype, dict(data), payload or None)
            assert await asyncio.wait_for(handler.handle_event(ev), 10) is True
        await handler.disconnect()
        return bytes(writer.data)

    out = asyncio.run(go())
    reader_events = _read_all(out)  # whatever it wrote is well-formed Wyoming
    assert all(isinstance(e.type, str) for e in reader_events)


# --- HTTP ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live(tmp_path_factory):
    live = LiveHttp(FakeServer(), Config(home_dir=str(tmp_path_factory.mktemp("http"))))
    yield live
    live.close()


def _raw_request(port: int, request: bytes) -> int:
    """Send raw bytes as an HTTP request; the status code (0 if the server closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    first = reply.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) > 1 and first[1].isdigit() else 0


HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF,
                                    blacklist_characters="\r\n"), max_size=60)


@FUZZ
@given(path=st.one_of(st.sampled_from(["/", "/api/state", "/metrics", "/health", "/login",
                                       "/static/app.js"]),
                      st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=40)
                      .map(lambda p: "/" + p)),
       host=st.one_of(st.none(), HEADER_TEXT, st.sampled_from(["127.0.0.1", "[::1]:1",
                                                               "evil.example"])),
       auth=st.one_of(st.none(), st.just("Bearer TOKEN"), HEADER_TEXT,
                      HEADER_TEXT.map(lambda t: "Bearer " + t)),
       cookie=st.one_of(st.none(), HEADER_TEXT.map(lambda t: "hark_session=" + t)),
       query=st.one_of(st.just(""), HEADER_TEXT.map(lambda t: "?token=" + t),
                       HEADER_TEXT.map(lambda t: "?next=" + t)))
def test_http_refuses_or_answers_but_never_fails(live, path, host, auth, cookie, query):
    lines = [f"GET {path}{query.replace(' ', '%20')} HTTP/1.1"]
    auth = None if auth is None else auth.replace("Bearer TOKEN", f"Bearer {live.token}")
    for name, value in (("Host", host), ("Authorization", auth), ("Cookie", cookie)):
        if value is not None:
            lines.append(f"{name}: {value}")
    request = ("\r\n".join(lines) + "\r\nConnection: close\r\n\r\n").encode("utf-8")
    status = _raw_request(live.http.port, request)
    assert status in (0, 200, 303, 400, 401, 403, 404, 405, 503), status
    if status in (200, 404) and path != "/health":
        # only with this server's token (a random cookie is never the session's)
        assert auth == f"Bearer {live.token}", (path, auth, cookie)

