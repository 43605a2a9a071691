"""Property-based fuzzing (hypothesis, bounded) of every parser that reads outside input:
config files and --set overrides, RTP datagrams, control events, audio frames, and
intent domain files. Each may only succeed or raise its own clear error class."""

from __future__ import annotations

import asyncio
import json
import string

import numpy as np
import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hark.config import Config, load_config, parse_override, to_dict
from hark.errors import ConfigError, HarkError, ProtocolError

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])

# --- config ---------------------------------------------------------------------------

SECTIONS = {k: list(v) for k, v in to_dict(Config()).items() if isinstance(v, dict)}
KEYS = st.one_of(st.sampled_from(sorted(SECTIONS)), st.text(string.ascii_lowercase + "_",
                                                             min_size=1, max_size=12))
SCALARS = st.one_of(st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True), st.booleans(),
                    st.text(max_size=30))
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(string.ascii_letters, min_size=1,
                                                    max_size=8), inner, max_size=4)),
    max_leaves=8)


@st.composite
def config_docs(draw) -> str:
    """TOML documents shaped like hark configs: real and made-up sections and keys,
    values of every TOML type (so most are wrong in some way)."""
    doc: dict = {}
    for key in draw(st.lists(st.sampled_from(["home_dir", "nope"]), max_size=1)):
        doc[key] = draw(VALUES)
    for section in draw(st.lists(KEYS, max_size=4, unique=True)):
        known = SECTIONS.get(section, [])
        names = st.sampled_from(known) if known and draw(st.booleans()) else KEYS
        doc[section] = {key: draw(VALUES)
                        for key in draw(st.lists(names, max_size=5, unique=True))}
    return tomli_w.dumps(doc)


def _load(tmp_path, data: bytes | str):
    path = tmp_path / "hark.toml"
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    return load_config(str(path))


@FUZZ
@given(doc=config_docs())
def test_config_documents_load_or_raise_config_error(tmp_path, doc):
    try:
        cfg = _load(tmp_path, doc)
    except ConfigError as exc:
        assert str(exc)
        return
    assert isinstance(cfg, Config)


@FUZZ
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_arbitrary_config_bytes_load_or_raise_config_error(tmp_path, data):
    try:
        _load(tmp_path, data)
    except ConfigError:
        pass


@FUZZ
@given(text=st.one_of(st.text(max_size=60),
                      st.builds(lambda s, k, v: f"{s}.{k}={v}",
                                st.sampled_from(sorted(SECTIONS)), KEYS, st.text(max_size=20))))
def test_set_overrides_parse_and_apply_or_raise_config_error(text):
    try:
        overrides = parse_override(text)
        cfg = load_config("/dev/null", overrides)
    except ConfigError:
        return
    assert isinstance(cfg, Config)


# --- RTP --------------------------------------------------------------------------------

rtp = pytest.importorskip("hark.transport.rtp")


@FUZZ
@given(data=st.binary(max_size=rtp.MAX_DATAGRAM + 64))
def test_rtp_parse_random_datagrams(data):
    try:
        pkt = rtp.RtpPacket.parse(data)
    except ProtocolError:
        return
    assert pkt.pack() == data  # anything accepted is exactly what it says


@FUZZ
@given(seq=st.integers(0, 2**16 - 1), ts=st.integers(0, 2**32 - 1),
       ssrc=st.integers(0, 2**32 - 1), pt=st.sampled_from(sorted(rtp.PAYLOAD_TYPES)),
       marker=st.booleans(), payload=st.binary(min_size=1, max_size=2000),
       flips=st.lists(st.tuples(st.integers(0, 4095), st.integers(1, 255)), max_size=3))
def test_rtp_round_trip_and_bit_flips(seq, ts, ssrc, pt, marker, payload, flips):
    pkt = rtp.RtpPacket(seq, ts, ssrc, payload, pt, marker)
    wire = pkt.pack()
    assert rtp.RtpPacket.parse(wire) == pkt
    mutated = bytearray(wire)
    for pos, mask in flips:
        if pos < len(mutated):
            mutated[pos] ^= mask
    try:
        rtp.RtpPacket.parse(bytes(mutated))
    except ProtocolError:
        pass


# --- control events ---------------------------------------------------------------------

control = pytest.importorskip("hark.transport.control")

JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=10)


def _read_all(data: bytes) -> list:
    async def go():
        reader = asyncio.StreamReader(limit=control.MAX_HEADER)
        reader.feed_data(data)
        reader.feed_eof()
        events = []
        while (ev := await control.read_event(reader)) is not None:
            events.append(ev)
        return events

    return asyncio.run(go())


@FUZZ
@given(line=st.one_of(st.binary(max_size=200),
                      st.builds(lambda o: json.dumps(o).encode(), JSONISH)))
def test_control_header_parser(line):
    try:
        etype, data, length = control.parse_header(line)
    except ProtocolError:
        return
    assert isinstance(etype, str) and isinstance(data, dict) and 0 <= length


@FUZZ
@given(data=st.binary(max_size=400))
def test_control_stream_of_random_bytes(data):
    try:
        events = _read_all(data)
    except ProtocolError:
        return
    assert all(isinstance(e, control.Event) for e in events)


@FUZZ
@given(events=st.lists(st.builds(control.Event,
                                 st.sampled_from(sorted(control.EVENT_TYPES)),
                                 st.dictionaries(st.text(max_size=8), JSONISH, max_size=3),
                                 st.binary(max_size=64)), min_size=1, max_size=4),
       cut=st.integers(0, 10_000))
def test_control_round_trip_and_truncation(events, cut):
    wire = b"".join(e.encode() for e in events)
    assert [(e.type, e.data, e.payload) for e in _read_all(wire)] == \
        [(e.type, e.data, e.payload) for e in events]
    truncated = wire[: cut % (len(wire) + 1)]
    try:
        got = _read_all(truncated)
    except ProtocolError:
        return
    assert len(got) <= len(events)


messages = pytest.importorskip("hark.transport.messages")
# values that sit at the edges of the messages' fields
EDGES = st.one_of(JSONISH, st.sampled_from([0, 1, -1, 65535, 65536, 2**32 - 1, 2**32, 10**40,
                                            -(10**40), True, "opus", "tcp", "auto"]))
FIELDS = st.sampled_from(["version", "name", "token", "capabilities", "codecs", "udp_port",
                          "host_id", "session", "codec", "frame_ms", "up_rate", "down_rate",
                          "ssrc", "server_ssrc", "rtp_port", "audio", "jitter_min_ms",
                          "jitter_max_ms", "shm", "code", "message", "keyword", "followup",
                          "seq", "rate", "last_seq", "reason", "text", "final", "slots",
                          "source", "transcript", "reply", "error"])


@FUZZ
@given(etype=st.sampled_from(sorted(control.EVENT_TYPES) + ["frobnicate"]),
       data=st.dictionaries(FIELDS, EDGES, max_size=8), payload=st.binary(max_size=16))
def test_typed_messages_parse_or_raise_protocol_error(etype, data, payload):
    try:  # from the wire, as a peer would send it (no NaN or Infinity there)
        (received,) = _read_all(control.Event(etype, data, payload).encode())
        msg = messages.parse(received)
    except ProtocolError:
        return
    # what was accepted is written back as an event that parses to the same message
    wire = msg.event().encode()
    (again,) = _read_all(wire)
    assert messages.parse(again) == msg


# --- audio frames -----------------------------------------------------------------------

codec = pytest.importorskip("hark.transport.codec")


@FUZZ
@given(payload=st.binary(max_size=1500))
def test_pcm_frames(payload):
    dec = codec.PcmDecoder(16000, 20)
    try:
        out = dec.decode(payload)
    except ProtocolError:
        assert len(payload) % 2
        return
    assert isinstance(out, np.ndarray)


@pytest.fixture(scope="module")
def opus_decoder():
    try:
        return codec.OpusDecoder(16000, 20)
    except HarkError as exc:
        pytest.skip(f"libopus unavailable: {exc}")


@FUZZ
@given(payload=st.binary(min_size=1, max_size=1275))
def test_opus_frames(opus_decoder, payload):
    try:
        out = opus_decoder.decode(payload)
    except ProtocolError:
        return
    assert isinstance(out, np.ndarray) and out.ndim == 1


# --- intent domain files ----------------------------------------------------------------

domain_files = pytest.importorskip("hark.nlu.domain_files")
yaml = pytest.importorskip("yaml")


@st.composite
def domain_docs(draw) -> str:
    """hassil-shaped YAML with random structure and sentence templates."""
    template = st.text(alphabet=string.ascii_lowercase + " []{}()<>|;:'", max_size=30)
    intents = draw(st.dictionaries(
        st.text(string.ascii_letters, min_size=1, max_size=10),
        st.one_of(JSONISH, st.fixed_dictionaries(
            {"data": st.lists(st.fixed_dictionaries(
                {"sentences": st.lists(template, max_size=3)}), max_size=2)})),
        max_size=3))
    doc: dict = {"language": draw(st.sampled_from(["en", "de", 5, None])),
                 "intents": intents}
    if draw(st.booleans()):
        doc["lists"] = draw(st.dictionaries(
            st.text(string.ascii_lowercase, min_size=1, max_size=6),
            st.one_of(JSONISH, st.fixed_dictionaries({"values": st.lists(
                st.text(max_size=8), max_size=3)})), max_size=2))
    if draw(st.booleans()):
        doc["responses"] = draw(st.dictionaries(st.text(max_size=6), JSONISH, max_size=2))
    return yaml.safe_dump(doc)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(text=st.one_of(st.text(max_size=200), domain_docs()))
def test_intent_files_load_or_raise_domain_file_error(text):
    problems = domain_files.check_domain_text(text, "fuzz.yaml")
    assert all(p.line >= 1 for p in problems)
    try:
        domain = domain_files.load_domain_text(text, "fuzz", "fuzz.yaml")
    except domain_files.DomainFileError as exc:
        assert exc.problems
        return
    assert not problems and domain.name == "fuzz"
