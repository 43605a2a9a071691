"""A small Home Assistant for tests (aiohttp.web), speaking the message shapes of its
developer documentation (developers.home-assistant.io, "WebSocket API" and "REST API")
and of the registry commands in Home Assistant core:

- ``GET /api/`` and ``POST /api/intent/handle`` with ``Authorization: Bearer TOKEN``
  (401 without the right token);
- ``GET /api/websocket``: ``auth_required`` -> ``auth`` -> ``auth_ok``/``auth_invalid``;
  then ``{"id", "type"}`` commands answered by ``{"id", "type": "result", "success",
  "result"}``: ``subscribe_events``, ``get_states``, ``config/floor_registry/list``,
  ``config/area_registry/list``, ``config/device_registry/list``,
  ``config/entity_registry/list``, ``config/entity_registry/get_entries``,
  ``homeassistant/expose_entity/list``; events as ``{"id": subscription, "type":
  "event", "event": {"event_type", "data", "origin", "time_fired", "context"}}``.

The test changes the home with :meth:`FakeHomeAssistant.set_state` (a
``state_changed`` event to subscribers) and :meth:`rename` (an
``entity_registry_updated`` event).
"""

from __future__ import annotations

import asyncio
import copy
import socket
from typing import Any

from aiohttp import WSMsgType, web

TOKEN = "fake-ha-long-lived-token-0123456789"
NOW = "2026-01-01T12:00:00.000000+00:00"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(entity_id: str, state: str, attributes: dict[str, Any]) -> dict[str, Any]:
    return {"entity_id": entity_id, "state": state, "attributes": dict(attributes),
            "last_changed": NOW, "last_updated": NOW, "last_reported": NOW,
            "context": {"id": "01J0000000000000000000000", "parent_id": None,
                        "user_id": None}}


def _registry_entry(entity_id: str, *, name: str | None = None, area_id: str | None = None,
                    device_id: str | None = None, aliases: list | None = None,
                    device_class: str | None = None, should_expose: bool | None = None,
                    original_name: str | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if should_expose is not None:
        options["conversation"] = {"should_expose": should_expose}
    return {"entity_id": entity_id, "id": f"id-{entity_id}", "area_id": area_id,
            "device_id": device_id, "name": name, "original_name": original_name,
            "platform": "demo", "config_entry_id": "entry1", "disabled_by": None,
            "entity_category": None, "hidden_by": None, "has_entity_name": False,
            "icon": None, "labels": [], "categories": {}, "options": options,
            "translation_key": None, "unique_id": f"uid-{entity_id}",
            # extended_dict's extra fields (config/entity_registry/get_entries)
            "_aliases": list(aliases or []), "_device_class": device_class}


class FakeHomeAssistant:
    """A Home Assistant with a small home: two floors, four areas (one through a
    device), a few exposed entities and one that is not exposed."""

    def __init__(self, token: str = TOKEN, port: int | None = None):
        self.token = token
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.floors = [
            {"floor_id": "ground", "name": "Ground Floor", "aliases": ["downstairs"],
             "level": 0, "icon": None},
            {"floor_id": "first", "name": "First Floor", "aliases": ["upstairs"],
             "level": 1, "icon": None},
        ]
        self.areas = [
            {"area_id": "kitchen", "name": "Kitchen", "aliases": ["cookhouse"],
             "floor_id": "ground", "icon": None, "picture": None, "labels": []},
            {"area_id": "hall", "name": "Hall", "aliases": [], "floor_id": "ground",
             "icon": None, "picture": None, "labels": []},
            {"area_id": "garden", "name": "Garden", "aliases": [], "floor_id": None,
             "icon": None, "picture": None, "labels": []},
            {"area_id": "bedroom", "name": "Bedroom", "aliases": [], "floor_id": "first",
             "icon": None, "picture": None, "labels": []},
        ]
        self.devices = [
            {"id": "dev-lock", "name": "Front Door Lock", "name_by_user": None,
             "area_id": "hall", "manufacturer": "Acme", "model": "L1"},
            {"id": "dev-sat", "name": "esp32-satellite", "name_by_user": "Bedroom Voice",
             "area_id": "bedroom", "manufacturer": "Espressif", "model": "S3"},
        ]
        self.registry = {e["entity_id"]: e for e in [
            _registry_entry("light.porch_lamp", area_id="garden", aliases=["patio light"]),
            _registry_entry("light.kitchen_ceiling", area_id="kitchen"),
            # the lock's area comes from its device
            _registry_entry("lock.front_door", device_id="dev-lock"),
            _registry_entry("sensor.outside_humidity", area_id="garden",
                            device_class="humidity"),
            _registry_entry("switch.secret_heater", area_id="kitchen"),
            _registry_entry("light.kitchen_strip", area_id="kitchen"),  # not exposed
            # exposed through the registry option only (not in expose_entity/list)
            _registry_entry("fan.bedroom_fan", area_id="bedroom", should_expose=True),
        ]}
        self.exposed = {"light.porch_lamp": {"conversation": True, "cloud.alexa": False},
                        "light.kitchen_ceiling": {"conversation": True},
                        "lock.front_door": {"conversation": True},
                        "sensor.outside_humidity": {"conversation": True},
                        "switch.secret_heater": {"conversation": False}}
        self.states = {s["entity_id"]: s for s in [
            _state("light.porch_lamp", "off", {"friendly_name": "Porch Lamp",
                                               "supported_color_modes": ["brightness"]}),
            _state("light.kitchen_ceiling", "on", {"friendly_name": "Kitchen Ceiling",
                                                   "brightness": 200}),
            _state("lock.front_door", "locked", {"friendly_name": "Front Door"}),
            _state("sensor.outside_humidity", "61", {
                "friendly_name": "Outside Humidity", "device_class": "humidity",
                "unit_of_measurement": "%", "state_class": "measurement"}),
            _state("switch.secret_heater", "off", {"friendly_name": "Secret Heater"}),
            _state("light.kitchen_strip", "on", {"friendly_name": "Kitchen Strip"}),
            _state("fan.bedroom_fan", "off", {"friendly_name": "Bedroom Fan"}),
            # in the states but in no registry and not exposed
            _state("sun.sun", "above_horizon", {"friendly_name": "Sun"}),
        ]}
        self.intents: list[dict[str, Any]] = []  # POST /api/intent/handle bodies
        self.commands: list[str] = []  # WebSocket command types, in order
        self.sockets: list[web.WebSocketResponse] = []
        self._subs: list[tuple[web.WebSocketResponse, int, str | None]] = []
        self._runner: web.AppRunner | None = None
        self.hold_get_states: asyncio.Event | None = None  # set: answer get_states
        self.http_status: int | None = None  # answer /api/websocket with this instead

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> FakeHomeAssistant:
        app = web.Application()
        app.router.add_get("/api/", self._api)
        app.router.add_post("/api/intent/handle", self._intent)
        app.router.add_get("/api/websocket", self._websocket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port,
                          reuse_address=True).start()
        return self

    async def stop(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        self.sockets.clear()
        self._subs.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- changes, pushed as Home Assistant does ---------------------------------------

    async def set_state(self, entity_id: str, state: str,
                        attributes: dict[str, Any] | None = None) -> None:
        old = self.states.get(entity_id)
        attrs = attributes if attributes is not None else (old or {}).get("attributes", {})
        new = _state(entity_id, state, attrs)
        self.states[entity_id] = new
        await self._fire("state_changed", {"entity_id": entity_id, "old_state": old,
                                           "new_state": new})

    async def rename(self, entity_id: str, friendly_name: str) -> None:
        """The user renames an entity: its registry name and friendly_name change."""
        self.registry[entity_id]["name"] = friendly_name
        state = self.states[entity_id]
        state["attributes"] = {**state["attributes"], "friendly_name": friendly_name}
        await self._fire("entity_registry_updated", {
            "action": "update", "entity_id": entity_id, "changes": {"name": None}})

    async def send_raw(self, text: str) -> None:
        """Send ``text`` as it is to every connected client."""
        for ws in list(self.sockets):
            await ws.send_str(text)

    async def _fire(self, event_type: str, data: dict[str, Any]) -> None:
        for ws, sub_id, wanted in list(self._subs):
            if wanted not in (None, event_type) or ws.closed:
                continue
            await ws.send_json({"id": sub_id, "type": "event", "event": {
                "event_type": event_type, "data": data, "origin": "LOCAL",
                "time_fired": NOW, "context": {"id": "01J1", "parent_id": None,
                                               "user_id": None}}})

    # -- REST --------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _api(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"message": "401: Unauthorized"}, status=401)
        return web.json_response({"message": "API running."})

    async def _intent(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"message": "401: Unauthorized"}, status=401)
        body = await request.json()
        self.intents.append(body)
        return web.json_response({
            "speech": {"plain": {"speech": "Turned on the light", "extra_data": None}},
            "card": {}, "language": "en", "response_type": "action_done",
            "data": {"targets": [], "success": [], "failed": []}})

    # -- WebSocket -------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if self.http_status is not None:  # e.g. a reverse proxy in front refusing it
            return web.json_response({"message": "refused"}, status=self.http_status)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        await ws.send_json({"type": "auth_required", "ha_version": "2025.6.0"})
        msg = await ws.receive()
        data = msg.json() if msg.type == WSMsgType.TEXT else {}
        if data.get("type") != "auth" or data.get("access_token") != self.token:
            await ws.send_json({"type": "auth_invalid",
                                "message": "Invalid access token or password"})
            await ws.close()
            return ws
        await ws.send_json({"type": "auth_ok", "ha_version": "2025.6.0"})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            command = msg.json()
            self.commands.append(command.get("type"))
            await self._command(ws, command)
        self._subs = [s for s in self._subs if s[0] is not ws]
        return ws

    async def _command(self, ws: web.WebSocketResponse, cmd: dict[str, Any]) -> None:
        kind, msg_id = cmd.get("type"), cmd.get("id")

        async def result(value: Any) -> None:
            await ws.send_json({"id": msg_id, "type": "result", "success": True,
                                "result": value})

        if kind == "subscribe_events":
            self._subs.append((ws, msg_id, cmd.get("event_type")))
            await result(None)
        elif kind == "get_states":
            if self.hold_get_states is not None:
                await self.hold_get_states.wait()
            await result(copy.deepcopy(list(self.states.values())))
        elif kind == "config/floor_registry/list":
            await result(copy.deepcopy(self.floors))
        elif kind == "config/area_registry/list":
            await result(copy.deepcopy(self.areas))
        elif kind == "config/device_registry/list":
            await result(copy.deepcopy(self.devices))
        elif kind == "config/entity_registry/list":
            await result([{k: v for k, v in e.items() if not k.startswith("_")}
                          for e in self.registry.values()])
        elif kind == "config/entity_registry/get_entries":
            out: dict[str, Any] = {}
            for eid in cmd.get("entity_ids", []):
                e = self.registry.get(eid)
                out[eid] = None if e is None else {
                    **{k: v for k, v in e.items() if not k.startswith("_")},
                    "aliases": e["_aliases"], "device_class": None,
                    "original_device_class": e["_device_class"], "capabilities": None}
            await result(out)
        elif kind == "homeassistant/expose_entity/list":
            await result({"exposed_entities": copy.deepcopy(self.exposed)})
        else:
            await ws.send_json({"id": msg_id, "type": "result", "success": False,
                                "error": {"code": "unknown_command",
                                          "message": "Unknown command."}})
