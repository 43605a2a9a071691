"""The OpenAI-compatible HTTP backend against a real llama.cpp server
(``python -m llama_cpp.server`` with SmolLM2), plus servers that are down or answer
garbage: each failure is a clear LlmError, and through the service a spoken apology
after which the next turn works."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from hark.config import Config
from hark.llm.base import ChatMessage, LlmError
from hark.llm.openai_http import OpenAiEngine
from hark.llm.service import APOLOGY, LlmService, load_llm
from hark.models.store import resolve

pytest.importorskip("uvicorn", reason="llama-cpp-python[server] extras not installed")


MODEL_FIXTURES = frozenset({"server_url"})  # llama_cpp.server with the tiny LLM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    """A real llama_cpp.server on a free port, serving SmolLM2; stopped afterwards."""
    cfg = Config()
    model = resolve(cfg.llm.profiles["tiny"], cfg.models_dir, kind="llm")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "1024", "--n_threads", "2", "--verbose", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not start within 120 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def http_cfg(url: str) -> Config:
    c = Config()
    c.llm.backend = "openai"
    c.llm.openai_url = url
    c.llm.max_tokens = 16
    c.llm.timeout_s = 60.0
    return c


MESSAGES = [ChatMessage("system", "Answer in one short sentence."),
            ChatMessage("user", "What color is grass?")]


def test_streams_from_real_server(server_url: str) -> None:
    eng = OpenAiEngine(server_url, timeout_s=60)
    pieces = list(eng.stream(MESSAGES, 16))
    assert len(pieces) > 1  # token by token, not one block
    assert "".join(pieces).strip()
    assert eng.last_stats.first_token_s is not None


def test_service_over_http_and_followup(server_url: str) -> None:
    svc = load_llm(http_cfg(server_url))  # warm-up request included
    first = svc.reply("Who wrote Hamlet?")
    assert first and first != APOLOGY and svc.last_source == "llm"
    svc.reply("When was he born?")
    assert svc.last_source == "llm"
    assert [m.role for m in svc.history()] == ["user", "assistant"] * 2


def test_unreachable_server_is_apology_then_next_turn_works(server_url, caplog) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with pytest.raises(LlmError, match="cannot reach"):
        list(OpenAiEngine(dead, timeout_s=5).stream(MESSAGES, 8))
    cfg = http_cfg(dead)
    eng = OpenAiEngine.from_config(cfg)
    svc = LlmService(cfg, eng)
    with caplog.at_level(logging.ERROR, logger="hark.llm.service"):
        assert svc.reply("What is the capital of France?") == APOLOGY
    assert svc.last_source == "error"
    assert any("cannot reach" in r.getMessage() for r in caplog.records)
    eng.base_url = server_url  # the server is back
    reply = svc.reply("What is the capital of France?")
    assert reply != APOLOGY and svc.last_source == "llm"


class _Garbage(http.server.BaseHTTPRequestHandler):
    body = b""
    ctype = "text/event-stream"
    status = 200

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(self.status)
        self.send_header("Content-Type", self.ctype)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def garbage_server():
    servers = []

    def start(body: bytes, ctype: str = "text/event-stream", status: int = 200) -> str:
        handler = type("H", (_Garbage,), {"body": body, "ctype": ctype, "status": status})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}/v1"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("body,ctype,status,match", [
    (b"hello world\n", "text/event-stream", 200, "not a server-sent event"),
    (b"data: {not json\n\n", "text/event-stream", 200, "malformed event"),
    (b'data: {"foo": 1}\n\n', "text/event-stream", 200, "malformed event"),
    (b"", "text/event-stream", 200, "without an answer"),
    (b"<html>It works!</html>", "text/html", 200, "did not answer with a chat completion"),
    (b'{"error": "model not found"}', "application/json", 404, "HTTP 404"),
    (b'data: {"error": {"message": "overloaded"}}\n\n', "text/event-stream", 200,
     "reported an error"),
])
def test_garbage_answers_are_clear_errors(garbage_server, body, ctype, status, match) -> None:
    url = garbage_server(body, ctype, status)
    with pytest.raises(LlmError, match=match):
        list(OpenAiEngine(url, timeout_s=5).stream(MESSAGES, 8))


def test_garbage_through_service_is_apology(garbage_server) -> None:
    url = garbage_server(b"data: {not json\n\n")
    cfg = http_cfg(url)
    svc = LlmService(cfg, OpenAiEngine.from_config(cfg))
    assert svc.reply("Why is the sky blue?") == APOLOGY
    assert "malformed" in svc.last_error


def test_non_streaming_json_answer_accepted(garbage_server) -> None:
    body = json.dumps({"choices": [{"message": {"role": "assistant",
                                                 "content": "Grass is green."}}]}).encode()
    url = garbage_server(body, "application/json")
    assert "".join(OpenAiEngine(url).stream(MESSAGES, 8)) == "Grass is green."
