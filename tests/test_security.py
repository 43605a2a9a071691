"""Tokens (hark/auth.py): the server token file, config checks, and every control
connection authenticated over real sockets on 127.0.0.1 (loopback gets no pass)."""

from __future__ import annotations

import asyncio
import os
import stat

import numpy as np
import pytest

from hark.auth import (
    MIN_TOKEN_CHARS,
    ensure_server_token,
    read_server_token,
    token_acceptable,
    token_path,
)
from hark.config import Config, load_config
from hark.errors import ConfigError, HarkError
from hark.satellite.satellite import Satellite
from hark.server.server import Server
from hark.transport.control import PROTOCOL_VERSION, Connection

pytestmark = pytest.mark.timeout(60)

OWN = "kitchen-own-token-0123456789"


def _cfg(home) -> Config:
    c = Config(home_dir=str(home))
    c.server.control_port = 0
    c.server.rtp_port = 0
    return c


def test_server_token_file_is_private_and_stable(tmp_path):
    cfg = Config(home_dir=str(tmp_path / "home"))
    assert read_server_token(cfg) is None  # no server has run here yet
    token = ensure_server_token(cfg)
    path = token_path(cfg)
    assert path == tmp_path / "home" / "server.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 40 and token == path.read_text().strip()
    assert ensure_server_token(cfg) == token == read_server_token(cfg)
    assert os.listdir(path.parent) == ["server.token"]  # no temporary file left behind
    other = Config(home_dir=str(tmp_path / "other"))
    assert ensure_server_token(other) != token


def test_token_file_others_can_read_is_narrowed(tmp_path, caplog):
    cfg = Config(home_dir=str(tmp_path))
    path = token_path(cfg)
    path.write_text("a-token-someone-wrote-by-hand\n")
    path.chmod(0o644)
    assert ensure_server_token(cfg) == "a-token-someone-wrote-by-hand"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "narrowed to 0600" in caplog.text


def test_short_token_file_and_explicit_path(tmp_path):
    cfg = Config(home_dir=str(tmp_path))
    cfg.server.token_file = str(tmp_path / "secrets" / "hark.token")
    token = ensure_server_token(cfg)
    assert (tmp_path / "secrets" / "hark.token").read_text().strip() == token
    (tmp_path / "secrets" / "hark.token").write_text("short\n")
    with pytest.raises(ConfigError, match=f"at least {MIN_TOKEN_CHARS} characters"):
        ensure_server_token(cfg)
    assert read_server_token(cfg) is None


@pytest.mark.parametrize("toml, where", [
    ('[server.tokens]\nkitchen = "s3cret"\n', "server.tokens.kitchen"),
    ('[server.tokens]\nkitchen = ""\n', "server.tokens.kitchen"),
    ("[server.tokens]\nkitchen = 12345678901234567890\n", "server.tokens.kitchen"),
    ('[satellite]\ntoken = "guessable"\n', "satellite.token"),
])
def test_short_tokens_are_refused_at_config_load(tmp_path, toml, where):
    path = tmp_path / "hark.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert where in str(err.value) and "secrets.token_urlsafe" in err.value.fix
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    with pytest.raises(ConfigError):  # --set satellite.token=...
        load_config(str(empty), {"satellite": {"token": "x" * (MIN_TOKEN_CHARS - 1)}})
    ok = load_config(str(empty), {"server": {"tokens": {"kitchen": OWN}},
                                  "satellite": {"token": "y" * MIN_TOKEN_CHARS}})
    assert ok.server.tokens == {"kitchen": OWN}


def test_token_rules():
    server = "the-server-token-abcdefghijklmnop"
    tokens = {"kitchen": OWN, "hall": "short"}
    assert token_acceptable(server, tokens, "anything", server)
    assert token_acceptable(server, tokens, "kitchen", OWN)
    assert not token_acceptable(server, tokens, "office", OWN)  # another satellite's
    assert not token_acceptable(server, tokens, "hall", "short")  # never a short one
    for bad in (None, "", 42, ["x"], server[:-1], server + "x", "\ud800" * 20):
        assert not token_acceptable(server, tokens, "kitchen", bad), bad
    assert not token_acceptable("", {}, "x", "")  # no token configured: nothing passes


class _Assistant:  # what Server needs for a handshake
    tts_rate = 22050

    def on_notify(self, cb) -> None:
        pass


async def _hello(server: Server, name: str, token: object = None, **extra) -> dict:
    conn = await Connection.open("127.0.0.1", server.control_port)
    hello = {"version": PROTOCOL_VERSION, "name": name, "capabilities": [], **extra}
    if token is not None:
        hello["token"] = token
    await conn.send("hello", hello)
    ev = await asyncio.wait_for(conn.recv(), 10)
    await conn.close()
    return {"type": ev.type, **ev.data}


def test_loopback_peers_need_a_token_too(tmp_path):
    async def go():
        cfg = _cfg(tmp_path)
        cfg.server.tokens = {"kitchen": OWN, "hall": "tiny"}  # "tiny": set past load_config
        server = Server(cfg, _Assistant())
        await server.start()
        try:
            token = server.token
            out = {
                "none": await _hello(server, "kitchen"),
                "empty": await _hello(server, "kitchen", ""),
                "wrong": await _hello(server, "kitchen", "w" * 43),
                "number": await _hello(server, "kitchen", 10 ** 30),
                "surrogate": await _hello(server, "kitchen", "\ud800" * 20),
                "short own": await _hello(server, "hall", "tiny"),
                "other's own": await _hello(server, "office", OWN),
                "server token": await _hello(server, "office", token),
                "own": await _hello(server, "kitchen", OWN),
            }
            return out, server.stats.sessions_refused, token
        finally:
            await server.stop()

    out, refused, token = asyncio.run(go())
    assert token == read_server_token(_cfg(tmp_path))  # the file hark token show prints
    for case in ("none", "empty", "wrong", "surrogate", "short own", "other's own"):
        assert out[case]["type"] == "error" and out[case]["code"] == "auth", case
        assert "hark token show" in out[case]["message"]
    # a token that is no string is a malformed hello (hark.transport.messages)
    assert out["number"]["type"] == "error" and out["number"]["code"] == "protocol"
    assert out["server token"]["type"] == "welcome" and out["own"]["type"] == "welcome"
    assert refused == 7


class _Detector:
    keyword = "alexa"

    def process(self, chunk):
        return None


class _Sink:
    def write(self, pcm, rate) -> None:
        pass

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass


def _sat(cfg: Config, home, token: str = "") -> Satellite:
    c = Config(home_dir=str(home))
    c.satellite.server = cfg.satellite.server
    c.satellite.token = token
    c.wake.barge_in_speech = False
    c.wake.followup_s = 0
    c.transport.shm = "never"
    return Satellite(c, iter([np.zeros(320, np.int16)]), _Sink(), detector=_Detector(),
                     realtime_thread=False)


def test_satellite_on_this_machine_reads_the_token_itself(tmp_path):
    async def go():
        cfg = _cfg(tmp_path)
        server = Server(cfg, _Assistant())
        await server.start()
        cfg.satellite.server = f"127.0.0.1:{server.control_port}"
        try:
            local = _sat(cfg, tmp_path)  # same home: reads <home>/server.token
            await local._connect()
            given = _sat(cfg, tmp_path / "elsewhere", token=server.token)  # --token
            await given._connect()
            without = _sat(cfg, tmp_path / "elsewhere")  # another machine, no token
            with pytest.raises(HarkError, match="hark token show"):
                await without._connect()
            sessions = len(server.sessions)
            for s in (local, given, without):
                await s._disconnect()
            return local.session, given.session, sessions
        finally:
            await server.stop()

    local, given, sessions = asyncio.run(go())
    assert local and given and sessions == 2


def test_refused_satellite_keeps_trying(tmp_path):
    """A refused token is logged and retried (the token may be fixed), never the end of
    the satellite's link task."""
    async def go():
        cfg = _cfg(tmp_path)
        server = Server(cfg, _Assistant())
        await server.start()
        cfg.satellite.server = f"127.0.0.1:{server.control_port}"
        sat = _sat(cfg, tmp_path / "elsewhere", token="not-the-server-token-at-all")
        link = asyncio.create_task(sat._link_loop())
        try:
            for _ in range(200):
                if server.stats.sessions_refused:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            return server.stats.sessions_refused, link.done(), sat.stats.connects
        finally:
            sat.stop()
            link.cancel()
            await asyncio.gather(link, return_exceptions=True)
            await server.stop()

    refused, done, connects = asyncio.run(go())
    assert refused >= 1 and not done and connects == 0


def test_token_show_prints_the_token_url_and_path(tmp_path, capsys):
    from hark.cli import main

    home = f'home_dir="{tmp_path}"'
    assert main(["--set", home, "token", "show"]) == 0
    token = capsys.readouterr().out.strip()
    assert token == read_server_token(Config(home_dir=str(tmp_path)))
    assert main(["--set", home, "--set", "server.http_port=10999", "token", "show",
                 "--url"]) == 0
    assert capsys.readouterr().out.strip() == f"http://127.0.0.1:10999/login?token={token}"
    assert main(["--set", home, "token", "show", "--path"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "server.token")


def test_the_satellite_takes_reply_audio_only_from_its_server_host():
    from hark.satellite.satellite import _SatUdp

    class Sat:
        _server_ip = "192.0.2.10"

        def __init__(self):
            self.got = []

        def datagram(self, data):
            self.got.append(data)

    sat = Sat()
    udp = _SatUdp(sat)
    udp.datagram_received(b"from the server", ("192.0.2.10", 10701))
    udp.datagram_received(b"from elsewhere, any SSRC", ("192.0.2.99", 10701))
    assert sat.got == [b"from the server"]
