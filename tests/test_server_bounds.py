"""The server's bounds over real sockets on 127.0.0.1: pending handshakes, writes a
satellite does not take, a turn whose audio stops, a turn that never ends, and TCP
keepalive on control connections."""

from __future__ import annotations

import asyncio
import socket

import pytest
from test_server import FakeAssistant

import hark.server.server as srv
import hark.server.session as session_mod
from hark.config import Config
from hark.transport.control import PROTOCOL_VERSION, Connection
from hark.transport.keepalive import IDLE_S

pytestmark = pytest.mark.timeout(120)


def _cfg(tmp_path) -> Config:
    c = Config(home_dir=str(tmp_path))
    c.server.control_port = 0
    c.server.rtp_port = 0
    return c


async def _client(server: srv.Server, name: str = "probe") -> tuple[Connection, dict]:
    conn = await Connection.open("127.0.0.1", server.control_port)
    await conn.send("hello", {"version": PROTOCOL_VERSION, "name": name,
                              "token": server.token, "capabilities": []})
    ev = await asyncio.wait_for(conn.recv(), 10)
    return conn, {"type": ev.type, **ev.data}


async def _closed(reader: asyncio.StreamReader, timeout: float = 30) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except ConnectionResetError:
        return True


def test_pending_handshakes_are_capped_and_a_satellite_still_gets_in(tmp_path, monkeypatch):
    monkeypatch.setattr(srv, "MAX_PENDING_HANDSHAKES", 8)

    async def go():
        cfg = _cfg(tmp_path)
        cfg.server.hello_timeout_s = 60.0  # any close below is the cap's
        server = srv.Server(cfg, FakeAssistant())
        await server.start()
        try:
            idle = [await asyncio.open_connection("127.0.0.1", server.control_port)
                    for _ in range(12)]
            while len(server._pending) < 8:
                await asyncio.sleep(0.01)
            conn, welcome = await _client(server, "kitchen")
            # the oldest were closed to make room: 12 idle + 1 satellite, 8 at a time
            oldest = [await _closed(r) for r, _ in idle[:5]]
            pending = len(server._pending)
            for _, w in idle:
                w.close()
            await conn.close()
            return welcome["type"], oldest, pending
        finally:
            await server.stop()

    welcome, oldest, pending = asyncio.run(go())
    assert welcome == "welcome" and oldest == [True] * 5 and pending <= 8


def test_a_write_the_peer_does_not_take_times_out(monkeypatch):
    monkeypatch.setattr(srv, "WRITE_TIMEOUT_S", 0.5)

    async def go():
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        async def on_connect(reader, writer):
            accepted.set_result(srv._TimedConnection(reader, writer))

        listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        port = listener.sockets[0].getsockname()[1]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))  # and never reads
        conn = await asyncio.wait_for(accepted, 10)
        sent = 0
        try:
            with pytest.raises(ConnectionError, match="took nothing"):
                for _ in range(200):
                    await conn.send("audio-chunk", {}, bytes(1024 * 1024))
                    sent += 1
        finally:
            sock.close()
            listener.close()
        return sent, conn.writer.transport.is_closing()

    sent, closing = asyncio.run(go())
    assert sent < 200 and closing


class _Stuck(FakeAssistant):
    """A turn that never ends by itself (a model wedged, a satellite's audio stuck)."""

    async def run_turn(self, audio, *, session: str = "default", mode: str = "streaming"):
        try:
            await asyncio.Event().wait()
            yield None
        finally:
            self.closed += 1


def test_a_turn_past_its_deadline_is_ended_and_frees_its_slot(tmp_path, monkeypatch):
    monkeypatch.setattr(session_mod, "TURN_DEADLINE_S", 0.5)

    async def go():
        cfg = _cfg(tmp_path)
        cfg.server.max_concurrent_turns = 1
        fake = _Stuck()
        server = srv.Server(cfg, fake)
        await server.start()
        try:
            conn, _ = await _client(server)
            ends = []
            for _ in range(2):  # the second would be "busy" if the first kept its slot
                await conn.send("wake", {})
                while (ev := await asyncio.wait_for(conn.recv(), 30)).type != "turn-end":
                    pass
                ends.append(ev.data["error"])
            return ends, fake.closed, server.stats.turns, server.stats.turns_busy
        finally:
            await server.stop()

    ends, closed, turns, busy = asyncio.run(go())
    assert ends == ["timeout", "timeout"] and closed == 2 and turns == 2 and busy == 0


def test_wake_then_silence_ends_the_turns_audio(tmp_path, monkeypatch):
    monkeypatch.setattr(session_mod, "AUDIO_GAP_S", 0.5)

    async def go():
        fake = FakeAssistant()
        server = srv.Server(_cfg(tmp_path), fake)
        await server.start()
        try:
            conn, _ = await _client(server)
            await conn.send("wake", {})  # and no audio at all
            while (ev := await asyncio.wait_for(conn.recv(), 30)).type != "turn-end":
                pass
            return ev.data, fake.turn_speech
        finally:
            await server.stop()

    end, speech = asyncio.run(go())
    assert end["error"] == "no speech" and speech == [0]


def test_control_connections_use_tcp_keepalive(tmp_path):
    async def go():
        server = srv.Server(_cfg(tmp_path), FakeAssistant())
        await server.start()
        try:
            conn, _ = await _client(server)
            [s] = server.sessions.values()
            sock = s.conn.writer.get_extra_info("socket")
            out = (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                   sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE))
            await conn.close()
            return out
        finally:
            await server.stop()

    keepalive, idle = asyncio.run(go())
    assert keepalive == 1 and idle == IDLE_S
