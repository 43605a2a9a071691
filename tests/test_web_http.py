"""The HTTP side over a real socket: /health, /metrics, /api/state, the page's files."""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from urllib.parse import quote

import pytest
from prometheus_client.parser import text_string_to_metric_families
from web_helpers import FakeServer, FakeSession, LiveHttp, http_get, make_trace

from hark.config import Config
from hark.errors import ConfigError
from hark.server.http import start_http


@pytest.fixture()
def live(tmp_path):
    cfg = Config(home_dir=str(tmp_path))
    server = FakeServer()
    live = LiveHttp(server, cfg)
    yield live
    live.close()


def test_health_reports_starting_then_ready(live):
    status, _, body = live.get("/health")
    assert status == 503 and json.loads(body) == {"status": "starting"}
    live.server.ready.set()
    status, _, body = live.get("/health")
    assert status == 200 and json.loads(body) == {"status": "ready"}


def test_state_shows_satellites_and_turns_newest_first(live, tmp_path):
    live.server.sessions["kitchen"] = FakeSession("kitchen", turns=2)
    first, second = make_trace(400, satellite="kitchen"), make_trace(
        800, transcript="turn on the kitchen light", reply="Turned on the kitchen light.")
    live.in_loop(live.server.finish_turn, first)
    live.in_loop(live.server.finish_turn, second)
    status, ctype, body = live.get("/api/state")
    assert status == 200 and ctype.startswith("application/json")
    st = json.loads(body)
    assert st["ready"] is False
    assert st["satellites"][0]["name"] == "kitchen" and st["satellites"][0]["turns"] == 2
    assert [t["turn_id"] for t in st["turns"]] == [second.turn_id, first.turn_id]
    t = st["turns"][1]
    assert t["satellite"] == "kitchen" and t["transcript"].startswith("what is")
    bars = {b["stage"]: b for b in t["bars"]}
    assert bars["total"]["ms"] == pytest.approx(400, abs=0.02)
    assert bars["total"]["start_ms"] == 0 and t["origin"] == "speech_end"
    assert bars["asr_final"]["end_ms"] == pytest.approx(250, abs=0.02)
    assert st["percentiles"]["total"]["n"] == 2
    assert st["percentiles"]["total"]["p50"] == pytest.approx(600, abs=0.1)
    assert st["trace_log"]["written"] == 2
    lines = (tmp_path / "traces.jsonl").read_text().splitlines()
    assert [json.loads(x)["turn_id"] for x in lines] == [first.turn_id, second.turn_id]


def test_metrics_endpoint_is_prometheus_text(live):
    live.server.sessions["a"] = FakeSession("a")
    live.server.sessions["b"] = FakeSession("b")
    live.in_loop(live.server.finish_turn, make_trace(300, tts_cache_hit=True))
    status, ctype, body = live.get("/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(body) for s in f.samples}
    assert samples[("hark_turns_total", ())] == 1
    assert samples[("hark_satellites_connected", ())] == 2
    assert samples[("hark_ready", ())] == 0
    assert samples[("hark_cache_hits_total", (("cache", "tts"),))] == 1
    assert samples[("hark_stage_latency_seconds_count", (("stage", "total"),))] == 1


def test_page_and_static_files_are_served(live):
    status, ctype, body = live.get("/")
    assert status == 200 and ctype.startswith("text/html") and "/static/app.js" in body
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        status, ctype, _ = live.get(f"/static/{name}")
        assert status == 200 and kind in ctype
    assert live.get("/static/../http.py")[0] in (403, 404)
    assert live.get("/nope")[0] == 404


def test_a_listener_error_never_breaks_the_turn(live):
    bad = make_trace()
    bad.info["unencodable"] = object()  # default=str copes; a broken trace must not raise
    bad.marks["weird"] = float("nan")
    live.in_loop(live.server.finish_turn, bad)
    status, _, body = live.get("/api/state")

    def reject(const):
        raise AssertionError(f"{const} is not JSON a browser accepts")

    st = json.loads(body, parse_constant=reject)
    assert status == 200 and st["turns"][0]["turn_id"] == bad.turn_id


def test_sessions_as_list_and_describe_method(tmp_path):
    from hark.server.http import satellites

    class Described:
        def describe(self):
            return {"name": "office", "codec": "opus"}

    srv = FakeServer()
    srv.sessions = [Described(), FakeSession("garage")]
    office, garage = satellites(srv)
    assert office == {"name": "office", "codec": "opus"}
    assert garage["connected_at"] == pytest.approx(srv.sessions[1].connected_at, abs=0.01)
    assert {k: garage[k] for k in ("name", "peer", "state", "turns")} == {
        "name": "garage", "peer": "127.0.0.1:50000", "state": "idle", "turns": 0}


@dataclasses.dataclass
class _Stats:
    turns: int = 0
    turns_busy: int = 0
    barge_ins: int = 0


class _CoreLikeSession:
    """The shape of hark.server.session.SatelliteSession: monotonic connected_at,
    peer_host, a turn task and a playing flag."""

    def __init__(self, name: str):
        self.id = f"{name}-1234"
        self.name = name
        self.peer_host = "127.0.0.1"
        self.codec = "opus"
        self.audio_path = "udp"
        self.connected_at = time.monotonic() - 30
        self.turn = None
        self.playing = True
        self.turns = 3


def test_core_server_shape_sessions_and_stats(tmp_path):
    srv = FakeServer()
    srv.stats = _Stats(turns=5, turns_busy=2, barge_ins=1)
    srv.sessions = {"kitchen-1234": _CoreLikeSession("kitchen")}
    live = LiveHttp(srv, Config(home_dir=str(tmp_path)))
    try:
        st = json.loads(live.get("/api/state")[2])
        sat = st["satellites"][0]
        assert sat["name"] == "kitchen" and sat["peer"] == "127.0.0.1"
        assert sat["state"] == "speaking" and sat["audio_path"] == "udp"
        assert sat["connected_at"] == pytest.approx(time.time() - 30, abs=2)
        assert st["server_stats"] == {"turns": 5, "turns_busy": 2, "barge_ins": 1}
        srv.stats.turns_busy = 7
        body = live.get("/metrics")[2]
        samples = {s.name: s.value for f in text_string_to_metric_families(body)
                   for s in f.samples}
        assert samples["hark_server_turns_busy_total"] == 7
        assert samples["hark_server_barge_ins_total"] == 1
    finally:
        live.close()


def test_server_without_ready_attribute_counts_as_ready():
    from hark.server.http import is_ready

    class Bare:
        turn_listeners: list = []

    assert is_ready(Bare())


def test_port_in_use_is_a_clear_config_error(tmp_path):
    import asyncio

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        with pytest.raises(ConfigError) as err:
            asyncio.run(start_http(FakeServer(), Config(home_dir=str(tmp_path)), port=port))
        assert str(port) in str(err.value) and "server.http_port" in err.value.fix
    finally:
        blocker.close()


def test_loading_placeholder_then_the_real_server(tmp_path):
    from hark.server.http import Loading

    live = LiveHttp(Loading(), Config(home_dir=str(tmp_path)))
    try:
        assert live.get("/health")[0] == 503
        assert json.loads(live.get("/api/state")[2])["ready"] is False
        real = FakeServer()
        real.ready.set()
        real.stats = _Stats(turns=1)
        real.sessions["office"] = FakeSession("office")
        live.http.set_server(real)
        assert live.get("/health")[0] == 200
        trace = make_trace(500)
        live.in_loop(real.finish_turn, trace)
        st = json.loads(live.get("/api/state")[2])
        assert st["satellites"][0]["name"] == "office"
        assert st["turns"][0]["turn_id"] == trace.turn_id
        body = live.get("/metrics")[2]
        assert "hark_server_turns_total 1.0" in body and "hark_ready 1.0" in body
        live.http.set_server(real)  # attaching twice registers nothing twice
        assert real.turn_listeners.count(live.obs.on_turn) == 1
        assert live.get("/metrics")[0] == 200
    finally:
        live.close()


def test_every_route_but_health_needs_the_token(live):
    live.server.sessions["kitchen"] = FakeSession("kitchen", peer="192.168.1.40:40001")
    live.in_loop(live.server.finish_turn, make_trace(transcript="open the garage door"))
    for path in ("/", "/api/state", "/metrics", "/static/app.js", "/nope"):
        for token in ("", "x" * 43, live.token[:-1]):
            status, _, body = live.get(path, token=token)
            assert status == 401, (path, token)
            assert "kitchen" not in body and "garage" not in body and "192.168" not in body
    status, _, body, headers = http_get(live.url + "/api/state")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    status, ctype, body = live.get("/", token="")
    assert ctype.startswith("text/html") and "hark token show --url" in body
    for path in ("/", "/api/state", "/metrics", "/static/app.js"):
        assert live.get(path)[0] == 200, path
    assert "garage" in live.get("/api/state")[2]
    # /health: open, and it says only whether the server is ready
    status, _, body = live.get("/health", token="")
    assert status == 503 and json.loads(body) == {"status": "starting"}


def test_browser_logs_in_once_with_a_strict_http_only_cookie(live):
    status, _, _, headers = http_get(live.login_url("/?poll=200"))
    assert status == 303 and headers["Location"] == "/?poll=200"
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert live.token not in cookie  # the cookie is derived from the token, not it
    session = cookie.split(";")[0]
    assert http_get(live.url + "/api/state", {"Cookie": session})[0] == 200
    assert http_get(live.url + "/", {"Cookie": session})[0] == 200
    name = session.split("=")[0]
    assert http_get(live.url + "/api/state", {"Cookie": f"{name}={'0' * 64}"})[0] == 401
    # a wrong token sets nothing
    status, _, body, headers = http_get(f"{live.url}/login?token={'x' * 43}")
    assert status == 401 and "Set-Cookie" not in headers
    assert http_get(f"{live.url}/login")[0] == 401
    # never a redirect off this server
    for away in ("//evil.example/", "https://evil.example/", "/\\evil.example", "evil"):
        url = live.login_url("/").replace("/login?", "/login?next=" + quote(away, safe="") + "&")
        status, _, _, headers = http_get(url)
        assert status == 303 and headers["Location"] == "/", away


def test_host_header_must_name_this_server(tmp_path):
    cfg = Config(home_dir=str(tmp_path))
    cfg.server.http_hosts = ["hark.lan"]
    live = LiveHttp(FakeServer(), cfg)
    try:
        port = live.http.port
        auth = {"Authorization": f"Bearer {live.token}"}
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}",
                     "192.168.1.7:80", socket.gethostname(), "hark.lan", f"hark.lan.:{port}"):
            assert http_get(live.url + "/api/state", {**auth, "Host": host})[0] == 200, host
        # a DNS-rebinding page sends its own name; and malformed headers
        for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example",
                     "127.0.0.1.evil.example", "[::1", "[::1]x", ""):
            status, _, body, _ = http_get(live.url + "/api/state", {**auth, "Host": host})
            assert status == 403 and "unknown host" in body, host
        status, _, _, _ = http_get(live.login_url(), {"Host": "evil.example"})
        assert status == 403  # no login under a foreign name either
        # /health answers whatever the Host (load balancers, container probes)
        assert http_get(live.url + "/health", {"Host": "evil.example"})[0] == 503
    finally:
        live.close()
