"""The HTTP side of ``hark serve``: health, Prometheus metrics, live state and a page.

Routes (bound to ``server.host``:``server.http_port``, localhost by default):

- ``GET /health``     200 ``{"status": "ready"}`` once every model is loaded and warm,
                      503 ``{"status": "starting"}`` before (for load balancers, systemd
                      and docker health checks); open to anyone, and says nothing else;
- ``GET /metrics``    Prometheus text format (:mod:`hark.server.metrics`);
- ``GET /api/state``  connected satellites, the last turns (marks, spans, waterfall
                      bars, transcript, reply) and p50/p95 per stage, as JSON;
- ``GET /``           a small page polling ``/api/state`` (``hark/server/web``);
- ``GET /reply/<name>.wav`` a reply for a device that plays a URL (ESPHome satellites):
                      the unguessable, single-use, short-lived name is the credential
                      (:mod:`hark.server.replies`); 404 when there is no store or no
                      such reply;
- ``GET /login?token=T[&next=/path]``  a browser's way in: with the server token it
                      sets an HttpOnly, SameSite=Strict session cookie and redirects to
                      ``next`` (a path on this server; default ``/``); else 401.

Every route but ``/health``, ``/login`` and ``/reply/`` needs ``Authorization: Bearer <server token>``
or the session cookie (else 401). Every route but ``/health`` also checks the ``Host``
header (else 403): an IP address, ``localhost``, ``server.host``, this machine's host
name or a name in ``server.http_hosts``. A DNS-rebinding page always sends its own
domain name as the Host, so it is refused; an IP-address Host cannot be a rebinding (the
browser's origin is then that address itself).

It attaches to any object with the attributes the server core exposes, so it can be
tested and reused without the rest of the server:

- ``turn_listeners``: a list of callables; :class:`Observability` appends one that
  receives each finished :class:`hark.trace.Trace`;
- ``sessions``: a dict (or list) of connected satellite sessions; each is shown through
  its ``describe()`` (or ``as_dict()``) when it has one, else through common attributes
  (``name``, ``peer``/``peer_host``, ``connected_at``, ``codec``, ``audio_path``,
  ``turns``; its state from ``playing``/``turn``);
- ``ready`` (optional): a bool, a ``threading``/``asyncio`` ``Event``, or a callable;
  without one the server counts as ready;
- ``stats`` (optional): a dataclass of counters, exported as ``hark_server_<field>_total``;
- ``sched_results`` (optional): the :class:`hark.sched.SchedResult` list of the stages.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import logging
import math
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from prometheus_client.core import CounterMetricFamily

from hark.auth import COOKIE_NAME, check_token, ensure_server_token, session_cookie
from hark.errors import ConfigError
from hark.server.metrics import CONTENT_TYPE, Metrics
from hark.server.tracelog import TraceLog, trace_record
from hark.trace import SPANS, Trace

log = logging.getLogger("hark.http")

WEB_DIR = Path(__file__).with_name("web")
STARTED = time.time()


class Observability:
    """Everything a finished turn feeds: the trace log, the metrics and the list of
    recent turns the page shows. :meth:`on_turn` never raises."""

    def __init__(self, cfg: Any, recent: int = 20, window: int = 200,
                 trace_log: TraceLog | None = None):
        self.metrics = Metrics(window=window)
        self.trace_log = trace_log if trace_log is not None else TraceLog.from_config(cfg)
        self.recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self.turns_seen = 0
        self.stats_server: Any = None  # whose ``stats`` /metrics exports
        self.metrics.registry.register(_StatsCollector(self))

    def attach(self, server: Any) -> Observability:
        """Register :meth:`on_turn` with ``server.turn_listeners``."""
        listeners = getattr(server, "turn_listeners", None)
        if listeners is None:
            raise TypeError(f"{type(server).__name__} has no turn_listeners list")
        if self.on_turn not in listeners:
            listeners.append(self.on_turn)
        if getattr(server, "stats", None) is not None:
            self.stats_server = server
        return self

    def on_turn(self, trace: Trace) -> None:
        try:
            self.metrics.observe(trace)
            if not self.trace_log.write(trace):
                self.metrics.trace_log_errors.inc()
            self.recent.append(turn_view(trace))
            self.turns_seen += 1
        except Exception:  # noqa: BLE001 - observability must never break a turn
            log.exception("could not record turn %s", getattr(trace, "turn_id", "?"))


def turn_view(trace: Trace) -> dict[str, Any]:
    """A turn as the page draws it: the trace record plus one waterfall bar per span.
    Bar times (``start_ms``/``end_ms``) count from the end of speech when the turn has
    one (the moment the user starts waiting), else from the turn's first mark."""
    rec = trace_record(trace)
    marks = rec["marks_ms"]
    origin = marks.get("speech_end", 0.0)
    bars = []
    for stage, (a, b) in SPANS.items():
        if a in marks and b in marks:
            bars.append({"stage": stage, "start_ms": round(marks[a] - origin, 2),
                         "end_ms": round(marks[b] - origin, 2),
                         "ms": round(marks[b] - marks[a], 2)})
    info = rec.get("info", {})
    return {
        "turn_id": rec["turn_id"],
        "time": rec["time"],
        "satellite": info.get("satellite", ""),
        "transcript": info.get("transcript", ""),
        "reply": info.get("reply", ""),
        "intent": info.get("intent", ""),
        "error": info.get("error"),
        "marks_ms": marks,
        "origin": "speech_end" if "speech_end" in marks else "first mark",
        "spans_ms": rec["spans_ms"],
        "bars": bars,
        "info": info,
    }


def is_ready(server: Any) -> bool:
    """``server.ready`` (bool, Event or callable). An object without one is taken as
    ready: hark's Server only exists once its Assistant has loaded and warmed up."""
    ready = getattr(server, "ready", True)
    if hasattr(ready, "is_set"):
        return bool(ready.is_set())
    if callable(ready):
        return bool(ready())
    return bool(ready)


_SESSION_FIELDS = ("name", "id", "peer", "peer_host", "address", "codec", "audio_path",
                   "transport", "state", "turns", "turns_completed")


def _wall_time(t: float) -> float:
    """A ``time.monotonic()`` stamp as Unix time (values that already are pass through)."""
    return t if t > 1e9 else time.time() - (time.monotonic() - t)


def _session_state(session: Any) -> str:
    if getattr(session, "playing", False):
        return "speaking"
    turn = getattr(session, "turn", None)
    if turn is not None and hasattr(turn, "done") and not turn.done():
        return "in turn"
    return "idle"


def describe_session(key: Any, session: Any) -> dict[str, Any]:
    """A satellite session as JSON: its ``describe()``/``as_dict()`` when it has one,
    else its common attributes; ``connected_at`` is Unix seconds."""
    for method in ("describe", "as_dict"):
        fn = getattr(session, method, None)
        if callable(fn):
            out = dict(fn())
            out.setdefault("name", str(key))
            return out
    out: dict[str, Any] = {"name": str(key)}
    for f in _SESSION_FIELDS:
        v = getattr(session, f, None)
        if v is not None and not callable(v):
            out[f] = v if isinstance(v, (int, float, str, bool)) else str(v)
    if "peer" not in out and "peer_host" in out:
        out["peer"] = out["peer_host"]
    connected = getattr(session, "connected_at", None)
    if isinstance(connected, (int, float)):
        out["connected_at"] = round(_wall_time(connected), 3)
    out.setdefault("state", _session_state(session))
    return out


def satellites(server: Any) -> list[dict[str, Any]]:
    sessions = getattr(server, "sessions", None) or {}
    items = sessions.items() if isinstance(sessions, dict) else (
        (getattr(s, "name", i), s) for i, s in enumerate(sessions))
    return [describe_session(k, s) for k, s in list(items)]


def server_stats(server: Any) -> dict[str, int | float]:
    """The numeric fields of ``server.stats`` (a dataclass, dict or object), if any."""
    stats = getattr(server, "stats", None)
    if stats is None:
        return {}
    if isinstance(stats, dict):
        fields = stats
    elif dataclasses.is_dataclass(stats):
        fields = dataclasses.asdict(stats)
    else:
        fields = vars(stats)
    return {k: v for k, v in fields.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class _StatsCollector:
    """Exports the attached server's ``stats`` at scrape time as counters
    ``hark_server_<field>_total`` (e.g. ``hark_server_barge_ins_total``: a barged-in turn
    is cancelled before it has a trace, so the server counts those)."""

    def __init__(self, obs: Observability):
        self.obs = obs

    def describe(self):
        return []  # names depend on the server attached later

    def collect(self):
        for name, value in server_stats(self.obs.stats_server).items():
            yield CounterMetricFamily(f"hark_server_{name}",
                                      f"Server counter '{name}' (hark.server.ServerStats)",
                                      value=value)


def state(server: Any, obs: Observability) -> dict[str, Any]:
    """What ``/api/state`` returns."""
    sats = satellites(server)
    sched = [r.as_dict() if hasattr(r, "as_dict") else str(r)
             for r in getattr(server, "sched_results", None) or []]
    return {
        "ready": is_ready(server),
        "uptime_s": round(time.time() - getattr(server, "started_at", STARTED), 1),
        "satellites": sats,
        "server_stats": server_stats(server),
        "turns": list(reversed(obs.recent)),  # newest first
        "turns_seen": obs.turns_seen,
        "percentiles": obs.metrics.percentiles(),
        "spans": {k: list(v) for k, v in SPANS.items()},
        "trace_log": {"path": str(obs.trace_log.path), "written": obs.trace_log.written,
                      "errors": obs.trace_log.errors, "last_error": obs.trace_log.last_error},
        "sched": sched,
    }


def _finite(obj: Any) -> Any:
    """Browsers reject NaN/Infinity in JSON: replace them with null, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class Loading:
    """Stands in for the server while models load: ``/health`` answers 503 and the page
    says "starting" until :meth:`HttpServer.set_server` hands over the real one."""

    def __init__(self) -> None:
        self.ready = False
        self.turn_listeners: list = []
        self.sessions: dict = {}


def allowed_host_names(cfg: Any) -> set[str]:
    """Host names (besides IP addresses) the page may be reached by: ``localhost``,
    ``server.host``, this machine's names and ``server.http_hosts``."""
    names = {"localhost", str(cfg.server.host)}
    hostname = socket.gethostname()
    names |= {hostname, f"{hostname}.local", socket.getfqdn()}
    names |= set(getattr(cfg.server, "http_hosts", []) or [])
    return {n.lower().rstrip(".") for n in names if n}


def host_allowed(host: str | None, names: set[str]) -> bool:
    """Whether a ``Host`` header (``name``, ``name:port``, ``[v6]:port``) is an IP
    address or one of ``names``. A missing or malformed header is refused."""
    if not host:
        return False
    host = host.strip().lower()
    if host.startswith("["):  # [v6] or [v6]:port
        name, sep, rest = host[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return False
    elif host.count(":") == 1:
        name = host.split(":", 1)[0]
    else:
        name = host  # a name, or a bare IPv6 address
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name.rstrip(".") in names


UNAUTHORISED_PAGE = """<!doctype html><meta charset="utf-8"><title>hark: log in</title>
<p>This page needs the server's token. On the server, run
<code>hark token show --url</code> and open the URL it prints (once per browser).</p>
"""


def make_app(target: dict[str, Any], obs: Observability, token: str,
             hosts: set[str]) -> web.Application:
    """The routes; ``target["server"]`` is read on every request, so it can be swapped.
    ``token`` is the server token every route but ``/health`` and ``/login`` asks for;
    ``hosts`` the Host names accepted besides IP addresses."""
    check_token(token, "the HTTP server's token")
    cookie = session_cookie(token)

    def server() -> Any:
        return target["server"]

    def authorised(request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        scheme, _, given = auth.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
                given.strip().encode("utf-8", "surrogatepass"), token.encode()):
            return True
        got = request.cookies.get(COOKIE_NAME, "")
        return bool(got) and hmac.compare_digest(
            got.encode("utf-8", "surrogatepass"), cookie.encode())

    def unauthorised(request: web.Request) -> web.Response:
        headers = {"WWW-Authenticate": 'Bearer realm="hark"', "Cache-Control": "no-store"}
        if request.path == "/" or request.path == "/login":
            return web.Response(status=401, text=UNAUTHORISED_PAGE,
                                content_type="text/html", headers=headers)
        return web.json_response({"error": "unauthorized"}, status=401, headers=headers)

    @web.middleware
    async def guard(request: web.Request, handler):
        if request.path == "/health":
            return await handler(request)
        if not host_allowed(request.headers.get("Host"), hosts):
            log.info("refused a request for Host %r (not one of this server's names; "
                        "add it to server.http_hosts if it is)",
                        request.headers.get("Host", "")[:100])
            return web.json_response({"error": "unknown host"}, status=403)
        if request.path == "/login" or request.path.startswith("/reply/") \
                or authorised(request):
            return await handler(request)
        return unauthorised(request)

    async def login(request: web.Request) -> web.Response:
        given = request.query.get("token", "")
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"),
                                                token.encode()):
            return unauthorised(request)
        target_path = request.query.get("next", "/")
        if not target_path.startswith("/") or target_path.startswith("//") \
                or "\\" in target_path:
            target_path = "/"  # never a redirect off this server
        resp = web.Response(status=303, headers={"Location": target_path,
                                                 "Cache-Control": "no-store",
                                                 "Referrer-Policy": "no-referrer"})
        resp.set_cookie(COOKIE_NAME, cookie, httponly=True, samesite="Strict", path="/",
                        max_age=400 * 24 * 3600)
        return resp

    async def health(request: web.Request) -> web.Response:
        ok = is_ready(server())
        return web.json_response({"status": "ready" if ok else "starting"},
                                 status=200 if ok else 503)

    async def metrics(request: web.Request) -> web.Response:
        obs.metrics.satellites.set(len(satellites(server())))
        obs.metrics.ready.set(1 if is_ready(server()) else 0)
        body = obs.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def api_state(request: web.Request) -> web.Response:
        return web.json_response(_finite(state(server(), obs)),
                                 dumps=lambda o: json.dumps(o, default=str, allow_nan=False))

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def reply(request: web.Request) -> web.StreamResponse:
        store = target.get("replies")
        if store is None:
            return web.Response(status=404, text="no such reply")
        return await store.handle(request)

    app = web.Application(middlewares=[guard])
    app.router.add_get("/login", login)
    app.router.add_get("/", index)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/state", api_state)
    app.router.add_get("/reply/{name}", reply)
    app.router.add_static("/static/", WEB_DIR, show_index=False)
    return app


@dataclass
class HttpServer:
    """A running HTTP server; ``port`` is the bound port (useful with port 0)."""

    runner: web.AppRunner
    host: str
    port: int
    obs: Observability
    target: dict[str, Any]
    token: str = ""  # the server token the routes ask for

    @property
    def url(self) -> str:
        return base_url(self.host, self.port)

    def login_url(self, next_path: str = "/") -> str:
        """The URL a browser logs in with (it holds the token: treat it as a secret)."""
        return login_url(self.host, self.port, self.token, next_path)

    @property
    def server(self) -> Any:
        return self.target["server"]

    def set_server(self, server: Any) -> None:
        """Serve ``server`` from now on (e.g. the real Server once models are loaded,
        replacing :class:`Loading`); its finished turns feed the same metrics and log."""
        self.obs.attach(server)
        self.target["server"] = server

    @property
    def replies(self) -> Any:
        """The :class:`hark.server.replies.ReplyStore` ``/reply/`` serves, made on first
        use."""
        store = self.target.get("replies")
        if store is None:
            from hark.server.replies import ReplyStore

            store = self.target["replies"] = ReplyStore()
        return store

    async def close(self) -> None:
        await self.runner.cleanup()


def base_url(host: str, port: int) -> str:
    """``http://host:port`` for a listen address; a wildcard address (0.0.0.0, ::) is
    named by this machine's host name."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def login_url(host: str, port: int, token: str, next_path: str = "/") -> str:
    """The browser login URL of a server listening on ``host``:``port``."""
    url = f"{base_url(host, port)}/login?token={quote(token, safe='')}"
    return url if next_path == "/" else f"{url}&next={quote(next_path, safe='/')}"


async def start_http(server: Any, cfg: Any, obs: Observability | None = None,
                     port: int | None = None, host: str | None = None,
                     token: str | None = None) -> HttpServer:
    """Attach :class:`Observability` to ``server`` and serve the routes above on
    ``cfg.server.host``:``cfg.server.http_port`` (``port``/``host`` override; port 0
    picks a free one). Raises :class:`ConfigError` when the port is taken. The routes
    ask for ``token``, by default the server token (:func:`hark.auth.ensure_server_token`,
    made if there is none yet).

    In ``hark serve``: start it with :class:`Loading` before the models load, so
    ``/health`` says "starting", then :meth:`HttpServer.set_server` the real Server."""
    obs = (obs or Observability(cfg)).attach(server)
    host = cfg.server.host if host is None else host
    port = cfg.server.http_port if port is None else port
    target = {"server": server}
    token = ensure_server_token(cfg) if token is None else token
    hosts = allowed_host_names(cfg) | {host.lower()}
    runner = web.AppRunner(make_app(target, obs, token, hosts), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc}",
                          fix="stop what uses the port or set server.http_port "
                              "(e.g. --set server.http_port=10781)") from exc
    bound = port
    for s in runner.sites:
        srv = getattr(s, "_server", None)
        if srv is not None and srv.sockets:
            bound = srv.sockets[0].getsockname()[1]
    log.info("web page and metrics on http://%s:%d", host, bound)
    return HttpServer(runner, host, bound, obs, target, token)

