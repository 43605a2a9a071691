"""Shared by the web tests: a server-shaped object and the HTTP side running on a real
socket in a background event loop (so sync clients such as Playwright can drive it), and
requests that log in (the server token as a bearer header, or a browser's login URL)."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from hark.config import Config
from hark.server.http import HttpServer, Observability, start_http
from hark.trace import Trace


@dataclass
class FakeSession:
    name: str
    peer: str = "127.0.0.1:50000"
    connected_at: float = field(default_factory=time.time)
    state: str = "idle"
    turns: int = 0


class FakeServer:
    """The attributes hark.server.http attaches to, and nothing else."""

    def __init__(self) -> None:
        self.turn_listeners: list = []
        self.sessions: dict[str, Any] = {}
        self.ready = threading.Event()

    def finish_turn(self, trace: Trace) -> None:
        for listener in self.turn_listeners:
            listener(trace)


def make_trace(total_ms: float = 420.0, transcript: str = "what is the capital of france",
               reply: str = "Paris is the capital of France.", **info: Any) -> Trace:
    """A trace marked the way the pipeline marks an LLM turn."""
    t = Trace()
    t0 = time.monotonic()
    steps = [("speech_start", -1.2), ("speech_end", 0.0), ("turn_end", 0.2),
             ("asr_final", 0.25), ("intent_start", 0.25), ("intent_done", 0.252),
             ("llm_start", 0.253), ("llm_first_token", 0.31), ("llm_first_chunk", 0.33),
             ("tts_start", 0.33), ("tts_first_audio", total_ms / 1000 - 0.01),
             ("first_audio_out", total_ms / 1000), ("llm_done", 0.6), ("tts_done", 0.8)]
    for name, dt in steps:
        t.mark(name, t0 + dt)
    t.info.update({"transcript": transcript, "reply": reply, "intent": "LLM"})
    t.info.update(info)
    return t


def http_get(url: str, headers: dict[str, str] | None = None
             ) -> tuple[int, str, str, dict[str, str]]:
    """GET ``url`` (redirects not followed): (status, content type, body, headers)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode(), \
                dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode(), dict(e.headers)


class LiveHttp:
    """start_http (port 0: any free one) in a thread with its own event loop; its
    routes ask for the server token of ``cfg``'s home (:attr:`token`)."""

    def __init__(self, server: Any, cfg: Config, port: int = 0):
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.http: HttpServer = self.call(start_http(server, cfg, port=port))

    @property
    def url(self) -> str:
        return self.http.url

    @property
    def token(self) -> str:
        return self.http.token

    def login_url(self, next_path: str = "/") -> str:
        """The URL that logs a browser in, then shows ``next_path``."""
        return self.http.login_url(next_path)

    def get(self, path: str, token: str | None = None) -> tuple[int, str, str]:
        """GET ``path`` with ``Authorization: Bearer`` (this server's token unless
        ``token`` is given; "" sends none): (status, content type, body)."""
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return http_get(self.url + path, headers)[:3]

    @property
    def obs(self) -> Observability:
        return self.http.obs

    def call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def in_loop(self, fn, *args) -> None:
        """Run fn(*args) on the server's loop (as the server core would) and wait."""

        async def run():
            fn(*args)

        self.call(run())

    def close(self) -> None:
        self.call(self.http.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
