"""The home read from Home Assistant and kept current over its WebSocket API.

:class:`HomeAssistantSync` connects to ``{home.home_assistant_url}/api/websocket``
(``ws://``, or ``wss://`` for an ``https://`` URL), authenticates with the long-lived
access token (``auth_required`` -> ``auth`` -> ``auth_ok`` / ``auth_invalid``), then:

1. subscribes to ``state_changed`` and to the registries' ``*_registry_updated``
   events (``subscribe_events``), before reading anything, so no change is missed;
2. reads ``config/floor_registry/list``, ``config/area_registry/list``,
   ``config/device_registry/list``, ``config/entity_registry/list`` (and, for the
   exposed entities' aliases and device classes, ``config/entity_registry/get_entries``),
   ``homeassistant/expose_entity/list`` and ``get_states``;
3. builds hark's :class:`~hark.nlu.home.Home` from them (:func:`build_home`): only the
   entities exposed to Assist (``conversation``), with their friendly name, aliases,
   area (the entity's own, else its device's), state and raw attributes
   (``device_class``, ``unit_of_measurement``, ``friendly_name``...); areas with their
   aliases and floor; the floors;
4. keeps it current: a ``state_changed`` event replaces the entity's ``state`` and
   ``attributes`` in place (each one attribute assignment, so a reader on another thread
   sees the old value or the new one); a registry event reads everything again, and a
   home whose names, areas, aliases, domains or device classes changed is handed to
   ``on_home`` (the pipeline rebuilds its intent matcher with it). State events that
   arrive while everything is read again are replayed after it, those older than the
   ``get_states`` answer dropped.

A lost connection is retried with exponential backoff (``backoff_s`` doubling up to
``max_backoff_s``); each time it connects again it reads everything again. A Home
Assistant that cannot be reached, or that refuses the token, is logged once per change
(the URL and what happened, never the token), and :meth:`problem` gives the sentence
hark says when a command needs it. While disconnected no state is known: each
entity's ``state`` is ``""`` and its attributes only those that describe it
(``STATIC_ATTRIBUTES``), so nothing stale is reported as the device's state. Memory is bounded whatever the peer sends: a
WebSocket message over ``max_message_bytes`` closes the connection (then backoff), at
most ``max_entities`` exposed entities are kept (the rest are logged and left out), and
state events buffered during a reload are capped.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from hark.nlu.home import Area, Entity, Home

log = logging.getLogger(__name__)

ASSISTANT = "conversation"  # Home Assistant's name for Assist in the expose settings
REGISTRY_EVENTS = ("area_registry_updated", "floor_registry_updated",
                   "device_registry_updated", "entity_registry_updated")
# attributes that describe an entity rather than its state: kept while disconnected
STATIC_ATTRIBUTES = frozenset({"friendly_name", "device_class", "unit_of_measurement",
                               "supported_features", "supported_color_modes", "icon",
                               "state_class"})
UNREACHABLE = "I couldn't reach Home Assistant."
REFUSED = "Home Assistant refused my access token."

Status = Literal["starting", "connected", "unreachable", "unauthorized", "error", "stopped"]


class HaError(Exception):
    """A failure talking to Home Assistant; ``status`` says which kind."""

    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status: Status = status


def websocket_url(url: str) -> str:
    """``http://host:8123`` -> ``ws://host:8123/api/websocket`` (https -> wss)."""
    parts = urlsplit(url.strip().rstrip("/"))
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    path = parts.path if parts.path.endswith("/api/websocket") else \
        parts.path + "/api/websocket"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


@dataclass
class Snapshot:
    """Everything read from Home Assistant at one time (its answers, as sent)."""

    floors: list[dict[str, Any]] = field(default_factory=list)
    areas: list[dict[str, Any]] = field(default_factory=list)
    devices: list[dict[str, Any]] = field(default_factory=list)
    entities: list[dict[str, Any]] = field(default_factory=list)  # entity_registry/list
    extended: dict[str, Any] = field(default_factory=dict)  # get_entries, by entity id
    exposed: dict[str, Any] = field(default_factory=dict)  # expose_entity/list
    states: list[dict[str, Any]] = field(default_factory=list)


def _strings(value: Any) -> list[str]:
    """The non-empty strings of a list (Home Assistant's alias lists may hold null)."""
    if not isinstance(value, (list, tuple, set)):
        return []
    return [v.strip() for v in value if isinstance(v, str) and v.strip()]


def exposed_ids(snapshot: Snapshot) -> set[str]:
    """Entity ids exposed to Assist: ``expose_entity/list``'s ``conversation: true``, or
    for an entity it does not list, the registry option ``conversation.should_expose``."""
    out = {eid for eid, settings in snapshot.exposed.items()
           if isinstance(settings, dict) and settings.get(ASSISTANT) is True}
    for entry in snapshot.entities:
        eid = entry.get("entity_id")
        if not isinstance(eid, str) or eid in snapshot.exposed:
            continue
        options = entry.get("options") or {}
        if isinstance(options, dict) and (options.get(ASSISTANT) or {}).get("should_expose"):
            out.add(eid)
    return out


def build_home(snapshot: Snapshot, max_entities: int = 5000) -> Home:
    """hark's :class:`Home` from a :class:`Snapshot`: floors, areas (aliases, floor name)
    and the exposed entities that have a state (at most ``max_entities``, by entity id)."""
    floor_name = {f.get("floor_id"): str(f.get("name", "")) for f in snapshot.floors
                  if isinstance(f, dict) and f.get("name")}
    areas: list[Area] = []
    area_name: dict[Any, str] = {}
    for a in snapshot.areas:
        if not isinstance(a, dict) or not a.get("name"):
            continue
        area_name[a.get("area_id")] = str(a["name"])
        areas.append(Area(name=str(a["name"]), id=str(a.get("area_id") or a["name"]),
                          aliases=_strings(a.get("aliases")),
                          floor=floor_name.get(a.get("floor_id"), "")))
    device_area = {d.get("id"): d.get("area_id") for d in snapshot.devices
                   if isinstance(d, dict)}
    registry = {e.get("entity_id"): e for e in snapshot.entities if isinstance(e, dict)}
    states = {s.get("entity_id"): s for s in snapshot.states
              if isinstance(s, dict) and isinstance(s.get("entity_id"), str)}
    exposed = sorted(exposed_ids(snapshot) & states.keys())
    if len(exposed) > max_entities:
        log.warning("Home Assistant exposes %d entities to Assist; hark keeps the first "
                    "%d (home.home_assistant_max_entities)", len(exposed), max_entities)
        exposed = exposed[:max_entities]
    entities: list[Entity] = []
    for eid in exposed:
        state = states[eid]
        entry = registry.get(eid) or {}
        ext = snapshot.extended.get(eid) or {}
        attributes = dict(state.get("attributes") or {})
        if not attributes.get("device_class") and (ext.get("device_class")
                                                   or ext.get("original_device_class")):
            attributes["device_class"] = ext.get("device_class") or ext["original_device_class"]
        name = (attributes.get("friendly_name") or entry.get("name")
                or entry.get("original_name") or eid.split(".", 1)[-1].replace("_", " "))
        area_id = entry.get("area_id") or device_area.get(entry.get("device_id"))
        entities.append(Entity(
            name=str(name).strip(), domain=eid.split(".", 1)[0],
            area=area_name.get(area_id, ""), aliases=_strings(ext.get("aliases")),
            id=eid, state=str(state.get("state", "")), attributes=attributes))
    floors = [str(f["name"]) for f in snapshot.floors if isinstance(f, dict) and f.get("name")]
    return Home(areas=areas, entities=entities, floors=floors)


def home_shape(home: Home) -> tuple:
    """What the intent matcher is built from (names, aliases, areas, floors, domains,
    device classes): two homes of the same shape differ only in states."""
    return (
        tuple((a.name, a.id, tuple(a.aliases), a.floor) for a in home.areas),
        tuple((e.id, e.name, e.domain, e.area, tuple(e.aliases),
               e.attributes.get("device_class")) for e in home.entities),
        tuple(home.floors),
    )


class _Connection:
    """One authenticated WebSocket: numbered commands, their results, and events."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, timeout_s: float,
                 on_event: Callable[[int, dict[str, Any]], None]):
        self.ws = ws
        self.timeout_s = timeout_s
        self.on_event = on_event
        self.next_id = 1
        self.seq = 0  # messages received, in order: a result's place among the events
        self.pending: dict[int, asyncio.Future] = {}

    async def call(self, kind: str, **data: Any) -> tuple[int, Any]:
        """Send one command; its ``(seq, result)``. Raises :class:`HaError`."""
        msg_id = self.next_id
        self.next_id += 1
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending[msg_id] = future
        try:
            await self.ws.send_json({"id": msg_id, "type": kind, **data})
            return await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError:
            raise HaError("error", f"no answer to {kind} within {self.timeout_s:g} s") from None
        finally:
            self.pending.pop(msg_id, None)

    async def read(self) -> None:
        """Read until the socket closes; resolves results, passes events on. Raises
        :class:`HaError` on a closed or broken socket (a message too large included)."""
        try:
            while True:
                msg = await self.ws.receive()
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self.seq += 1
                    self._dispatch(msg.data)
                    continue
                if msg.type in (aiohttp.WSMsgType.ERROR, aiohttp.WSMsgType.CLOSE,
                                aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    raise _closed(self.ws, msg)
                # binary frames are not part of the API: ignored
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(HaError("unreachable", "connection lost"))

    def _dispatch(self, text: str) -> None:
        import json

        try:
            data = json.loads(text)
        except ValueError:
            log.warning("Home Assistant sent a message that is not JSON; ignored")
            return
        # Home Assistant may coalesce several messages into one JSON array
        for item in data if isinstance(data, list) else [data]:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "result":
                future = self.pending.get(item.get("id"))  # type: ignore[arg-type]
                if future is None or future.done():
                    continue
                if item.get("success"):
                    future.set_result((self.seq, item.get("result")))
                else:
                    error = item.get("error") or {}
                    future.set_exception(HaError("error", f"{error.get('code', '?')}: "
                                                 f"{error.get('message', '')}"))
            elif item.get("type") == "event" and isinstance(item.get("event"), dict):
                self.on_event(self.seq, item["event"])


class HomeAssistantSync:
    """Reads the home from Home Assistant and keeps it current (see the module).

    ``await start(wait_s)`` begins (and keeps) the connection, and returns the home once
    it has been read, or ``None`` when that failed or took longer than ``wait_s``; the
    connection is retried in the background either way. ``on_home(home)`` (awaited, one
    call at a time) gets each home whose shape changed, the first one read included when
    ``start`` had already returned. ``await stop()`` closes it.
    """

    def __init__(self, url: str, token: str, *, timeout_s: float = 10.0,
                 max_message_bytes: int = 16 * 1024 * 1024, max_entities: int = 5000,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 on_home: Callable[[Home], Awaitable[None]] | None = None):
        self.url = url.rstrip("/")
        self.ws_url = websocket_url(url)
        self._token = token
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self.max_entities = max_entities
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.on_home = on_home
        self.status: Status = "starting"
        self.detail = ""
        self.home: Home | None = None
        self.devices: list[dict[str, Any]] = []
        self.areas: dict[str, str] = {}  # area id -> name
        self.connections = 0  # successful syncs (a reconnection counts again)
        self._by_id: dict[str, Entity] = {}
        self._task: asyncio.Task | None = None
        self._first = asyncio.Event()
        self._changed = asyncio.Condition()
        self._reload = asyncio.Event()
        self._buffer: collections.deque | None = None  # state events during a reload
        self._buffer_overflow = False
        self._returned = False  # start() has returned (with or without a home)

    def __repr__(self) -> str:  # never the token
        return f"HomeAssistantSync({self.url!r}, status={self.status!r})"

    # -- public ----------------------------------------------------------------------

    async def start(self, wait_s: float | None = None) -> Home | None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="home-assistant-sync")
        try:
            await asyncio.wait_for(self._first.wait(), wait_s if wait_s is not None
                                   else self.timeout_s)
        except asyncio.TimeoutError:
            if self.status == "starting":
                log.warning("Home Assistant at %s did not answer within %.0f s; hark "
                            "starts without its home and keeps trying", self.url,
                            wait_s if wait_s is not None else self.timeout_s)
        self._returned = True
        return self.home

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.status = "stopped"

    def problem(self) -> str | None:
        """What to say to a command that needs Home Assistant now (``None``: connected
        or not yet known)."""
        if self.status == "unauthorized":
            return REFUSED
        if self.status in ("unreachable", "error"):
            return UNREACHABLE
        return None

    def area_of_device(self, name: str) -> str:
        """The area name of the device called ``name`` (its user-given name, its name,
        or its id) in Home Assistant's device registry; "" when unknown. A satellite's
        device gives its room this way."""
        key = name.strip().casefold()
        for device in self.devices:
            names = {str(device.get(k) or "").casefold()
                     for k in ("name_by_user", "name", "id")}
            if key and key in names:
                return self.areas.get(device.get("area_id") or "", "")
        return ""

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Return once ``predicate()`` holds, checked after each change this client
        applies; ``asyncio.TimeoutError`` after ``timeout_s``."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout_s)

    # -- the connection --------------------------------------------------------------

    def _set_status(self, status: Status, detail: str = "") -> None:
        if (status, detail) != (self.status, self.detail):
            if status == "connected":
                log.info("Home Assistant at %s: connected, %s", self.url, detail)
            elif status == "unauthorized":
                log.error("Home Assistant at %s refused the access token (%s); set "
                          "home.home_assistant_token to a valid long-lived token",
                          self.url, detail)
            elif status == "unreachable":
                log.error("cannot reach Home Assistant at %s: %s", self.url, detail)
            elif status == "error":
                log.error("Home Assistant at %s: %s", self.url, detail)
        self.status, self.detail = status, detail

    async def _run(self) -> None:
        delay = self.backoff_s
        timeout = aiohttp.ClientTimeout(total=None, connect=self.timeout_s,
                                        sock_connect=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    await self._session(session)
                except HaError as exc:
                    self._set_status(exc.status, str(exc))
                except aiohttp.WSServerHandshakeError as exc:  # e.g. a proxy's 401
                    self._set_status("unauthorized" if exc.status in (401, 403)
                                     else "unreachable", f"HTTP {exc.status} {exc.message}")
                except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
                    self._set_status("unreachable", f"{type(exc).__name__}: {exc}".rstrip(": "))
                except Exception as exc:  # a bug must not end the sync: logged, retried
                    log.exception("Home Assistant sync failed")
                    self._set_status("error", f"{type(exc).__name__}: {exc}")
                if self.status == "connected":  # it was up: try again soon
                    delay = self.backoff_s
                self._forget_states()
                self._first.set()
                await self._notify()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)

    async def _session(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(self.ws_url, max_msg_size=self.max_message_bytes,
                                      heartbeat=30.0, autoping=True) as ws:
            await self._authenticate(ws)
            conn = _Connection(ws, self.timeout_s, self._on_event)
            reader = asyncio.create_task(conn.read())
            try:
                await self._serve(conn, reader)
            finally:
                reader.cancel()
                try:
                    await reader
                except (asyncio.CancelledError, HaError):
                    pass

    async def _authenticate(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        first = await self._receive(ws)
        if first.get("type") != "auth_required":
            raise HaError("error", f"expected auth_required, got {first.get('type')!r}")
        await ws.send_json({"type": "auth", "access_token": self._token})
        answer = await self._receive(ws)
        if answer.get("type") == "auth_invalid":
            raise HaError("unauthorized", str(answer.get("message") or "auth_invalid"))
        if answer.get("type") != "auth_ok":
            raise HaError("error", f"expected auth_ok, got {answer.get('type')!r}")

    async def _receive(self, ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
        try:
            msg = await ws.receive(timeout=self.timeout_s)
        except asyncio.TimeoutError:
            raise HaError("unreachable", "no answer during authentication") from None
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise _closed(ws, msg)
        try:
            data = msg.json()
        except ValueError:
            raise HaError("error", "a message that is not JSON during authentication") \
                from None
        if not isinstance(data, dict):
            raise HaError("error", "an authentication message that is not an object")
        return data

    async def _serve(self, conn: _Connection, reader: asyncio.Task) -> None:
        """Subscribe, read everything, then read again on each registry change, until
        the reader ends (its error is raised)."""
        self._buffer, self._buffer_overflow = collections.deque(), False
        calls = [asyncio.ensure_future(conn.call("subscribe_events", event_type=event))
                 for event in ("state_changed", *REGISTRY_EVENTS)]
        await self._until(reader, asyncio.gather(*calls))
        while True:
            self._reload.clear()
            await self._until(reader, self._load(conn))
            self.connections += 1
            await self._notify()
            self._first.set()
            waiter = asyncio.ensure_future(self._reload.wait())
            await self._until(reader, waiter)
            self._buffer, self._buffer_overflow = collections.deque(), False

    @staticmethod
    async def _until(reader: asyncio.Task, work: Awaitable[Any]) -> Any:
        """``await work``, unless the reader ends first (then its error)."""
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task, reader}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, HaError):
            pass
        exc = reader.exception()
        raise exc if exc is not None else HaError("unreachable", "connection closed")

    async def _load(self, conn: _Connection) -> None:
        _, floors = await conn.call("config/floor_registry/list")
        _, areas = await conn.call("config/area_registry/list")
        _, devices = await conn.call("config/device_registry/list")
        _, entities = await conn.call("config/entity_registry/list")
        _, exposed = await conn.call("homeassistant/expose_entity/list")
        snapshot = Snapshot(
            floors=_list(floors), areas=_list(areas), devices=_list(devices),
            entities=_list(entities),
            exposed=dict((exposed or {}).get("exposed_entities") or {})
            if isinstance(exposed, dict) else {})
        wanted = sorted(exposed_ids(snapshot))[:self.max_entities]
        if wanted:
            _, extended = await conn.call("config/entity_registry/get_entries",
                                          entity_ids=wanted)
            snapshot.extended = extended if isinstance(extended, dict) else {}
        seq, states = await conn.call("get_states")
        snapshot.states = _list(states)
        home = build_home(snapshot, self.max_entities)
        self.devices = snapshot.devices
        self.areas = {str(a.get("area_id")): str(a.get("name")) for a in snapshot.areas
                      if isinstance(a, dict)}
        old = self.home
        if old is not None and home_shape(old) == home_shape(home):
            for entity in home.entities:  # the same home: states in place
                current = self._by_id[entity.id]
                current.state, current.attributes = entity.state, entity.attributes
            home = old
        else:
            self.home = home
            self._by_id = {e.id: e for e in home.entities}
        # state events that came while reading: those after get_states's answer are newer
        buffered, self._buffer = self._buffer or collections.deque(), None
        for event_seq, event in buffered:
            if event_seq > seq:
                self._apply_state(event)
        if self._buffer_overflow:
            log.warning("Home Assistant sent more state changes than hark buffers while "
                        "reading its home; reading it again")
            self._reload.set()
        self._set_status("connected", f"{len(home.entities)} exposed entities, "
                         f"{len(home.areas)} areas, {len(home.floors)} floors")
        # a new home for the pipeline: one that changed, or the first one read after
        # start() returned without it
        if home is not old and self.on_home is not None and (old is not None
                                                              or self._returned):
            await self.on_home(home)

    def _forget_states(self) -> None:
        """Disconnected: no state is known any more (``""``, as in a home from the
        config), until the next connection reads them again. Attributes keep only what
        describes the entity, not its state."""
        for entity in self._by_id.values():
            entity.attributes = {k: v for k, v in entity.attributes.items()
                                 if k in STATIC_ATTRIBUTES}
            entity.state = ""

    def _on_event(self, seq: int, event: dict[str, Any]) -> None:
        kind = event.get("event_type")
        if kind == "state_changed":
            if self._buffer is not None:
                if len(self._buffer) < 4 * self.max_entities:
                    self._buffer.append((seq, event))
                else:
                    self._buffer_overflow = True
                return
            self._apply_state(event)
            asyncio.get_running_loop().create_task(self._notify())
        elif kind in REGISTRY_EVENTS:
            self._reload.set()

    def _apply_state(self, event: dict[str, Any]) -> None:
        data = event.get("data") or {}
        entity = self._by_id.get(data.get("entity_id")) if isinstance(data, dict) else None
        if entity is None:
            return  # not exposed (or not known yet: the next reload reads it)
        new = data.get("new_state")
        if not isinstance(new, dict):  # removed: the registry event reloads the home
            entity.state = "unavailable"
            return
        attributes = new.get("attributes")
        entity.attributes = dict(attributes) if isinstance(attributes, dict) else {}
        entity.state = str(new.get("state", ""))

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


def _closed(ws: aiohttp.ClientWebSocketResponse, msg: aiohttp.WSMessage) -> HaError:
    """The error for a socket that closed or broke (``msg`` the last thing received)."""
    too_big = (ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
               or getattr(msg.data, "code", None) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG)
    if too_big:
        return HaError("error", "a message larger than the limit "
                       "(home.home_assistant_max_message_bytes) was refused")
    if msg.type == aiohttp.WSMsgType.ERROR:
        return HaError("error", f"connection broken: {msg.data}")
    return HaError("unreachable", f"connection closed (code {ws.close_code})")


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def sync_from_config(home_cfg: Any, on_home: Callable[[Home], Awaitable[None]] | None = None
                     ) -> HomeAssistantSync | None:
    """The sync ``[home]`` asks for (a URL, a token and ``home_assistant_sync``), else
    ``None``."""
    if not (home_cfg.home_assistant_url and home_cfg.home_assistant_token
            and home_cfg.home_assistant_sync):
        return None
    return HomeAssistantSync(
        home_cfg.home_assistant_url, home_cfg.home_assistant_token,
        timeout_s=home_cfg.home_assistant_timeout_s,
        max_message_bytes=home_cfg.home_assistant_max_message_bytes,
        max_entities=home_cfg.home_assistant_max_entities, on_home=on_home)


async def keep_current(sync: HomeAssistantSync, set_home: Callable[[Home], None],
                       initial: Home | None) -> None:
    """Hand every later home of ``sync`` to ``set_home`` (blocking, e.g.
    ``Assistant.set_home``: run on the default executor, one at a time, always the
    newest home). ``initial``: the home the pipeline was built with; a newer one read
    meanwhile is handed over at once."""
    loop = asyncio.get_running_loop()
    lock = asyncio.Lock()
    applied: list[Home | None] = [initial]

    async def on_home(_home: Home) -> None:
        async with lock:
            newest = sync.home
            if newest is None or newest is applied[0]:
                return
            try:
                await loop.run_in_executor(None, set_home, newest)
            except Exception:  # the pipeline keeps the home it has
                log.exception("the home read from Home Assistant could not be used")
                return
            applied[0] = newest
            log.info("home from Home Assistant in use: %d entities, %d areas",
                     len(newest.entities), len(newest.areas))

    sync.on_home = on_home
    if sync.home is not None and sync.home is not initial:
        await on_home(sync.home)
