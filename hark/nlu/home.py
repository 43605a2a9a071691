"""The home hassil matches names against: areas, floors and entities (with aliases).

Built from ``[home]`` in the config, or from a fixtures file in the shape of the
home-assistant/intents repository's ``tests/en/_fixtures.yaml`` (for ``hark eval intents``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hassil import TextSlotList, is_template, parse_sentence, sample_expression
from hassil.expression import TextChunk
from hassil.intents import SlotList, TextSlotValue

from hark.errors import ConfigError


@dataclass
class Area:
    name: str
    id: str = ""
    aliases: list[str] = field(default_factory=list)
    floor: str = ""


@dataclass
class Entity:
    name: str
    domain: str = "light"
    area: str = ""  # area *name*
    aliases: list[str] = field(default_factory=list)
    id: str = ""  # Home Assistant entity id, e.g. light.kitchen
    state: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def entity_id(self) -> str:
        return self.id or f"{self.domain}.{'_'.join(self.name.lower().split())}"


@dataclass
class Home:
    areas: list[Area] = field(default_factory=list)
    entities: list[Entity] = field(default_factory=list)
    floors: list[str] = field(default_factory=list)

    def find_entity(self, name: str) -> Entity | None:
        """The entity called ``name`` (or with that alias), case-insensitively."""
        key = name.strip().casefold()
        for entity in self.entities:
            if key in {n.casefold() for n in _expand(entity.name) + entity.aliases}:
                return entity
        return None

    def slot_lists(self) -> dict[str, SlotList]:
        """hassil lists ``area``, ``floor``, ``name`` and ``zone`` for this home. Each
        name carries its entity's domain, raw attributes (``device_class``...) and area
        name as context, so templates with ``requires_context`` match as in Home
        Assistant."""
        areas: list[TextSlotValue] = []
        for area in self.areas:
            for text in _expand(area.name) + area.aliases:
                areas.append(TextSlotValue(TextChunk(text), _expand(area.name)[0]))
        names: list[TextSlotValue] = []
        for entity in self.entities:
            # what a template's requires_context / excludes_context is checked against:
            # the domain, the raw attributes (device_class...) and the area's name
            context = {**entity.attributes, "domain": entity.domain}
            if entity.area:
                context["area"] = entity.area
            canonical = _expand(entity.name)[0]
            for text in _expand(entity.name):
                names.append(TextSlotValue(TextChunk(text), text, context))
            for alias in entity.aliases:
                names.append(TextSlotValue(TextChunk(alias), canonical, context))
        # "the ground floor" is the floor "Ground" (Home Assistant's state questions
        # have no optional "floor" after the name, its commands do)
        floors = [TextSlotValue(TextChunk(spoken), text)
                  for floor in self.floors for text in _expand(floor)
                  for spoken in ([text] if text.casefold().endswith(" floor")
                                 else [text, f"{text} floor"])]
        # Zones are open (wildcard) in Home Assistant's sentences; closing them to the
        # places people are reported at keeps "who is the president" out of HassGetState.
        zones = {"home", "away", "work", "school"} | {
            e.state for e in self.entities if e.domain == "person" and e.state
        }
        return {
            "area": TextSlotList(name="area", values=areas),
            "floor": TextSlotList(name="floor", values=floors),
            "name": TextSlotList(name="name", values=names),
            "zone": TextSlotList.from_strings(sorted(zones), name="zone"),
        }

    @property
    def domains(self) -> set[str]:
        return {e.domain for e in self.entities}


def _expand(text: str) -> list[str]:
    """A name may be a template ("Trader Joe[']s"): every way of saying it."""
    text = text.strip()
    if is_template(text):
        return [t.strip() for t in sample_expression(parse_sentence(text).expression)]
    return [text]


def home_from_config(home_cfg: Any) -> Home:
    """The home in ``cfg.home``: areas as names (or tables), entities as tables."""
    areas: list[Area] = []
    for item in home_cfg.areas:
        if isinstance(item, str):
            areas.append(Area(name=item, id=item))
        elif isinstance(item, dict) and item.get("name"):
            areas.append(Area(name=item["name"], id=item.get("id", item["name"]),
                              aliases=list(item.get("aliases", [])),
                              floor=item.get("floor", "")))
        else:
            raise ConfigError(f"home.areas: each area must be a name or a table with "
                              f"'name', got {item!r}")
    entities: list[Entity] = []
    for item in home_cfg.entities:
        if not isinstance(item, dict) or not item.get("name"):
            raise ConfigError(f"home.entities: each entity needs a 'name', got {item!r}",
                              fix='e.g. { name = "kitchen light", domain = "light", '
                                  'area = "kitchen" }')
        entities.append(Entity(
            name=item["name"], domain=item.get("domain", "light"), area=item.get("area", ""),
            aliases=list(item.get("aliases", [])), id=item.get("id", ""),
            state=str(item.get("state", "")), attributes=dict(item.get("attributes", {})),
        ))
    floors = sorted({a.floor for a in areas if a.floor})
    return Home(areas=areas, entities=entities, floors=floors)


def home_from_fixtures(path: str | Path) -> Home:
    """A home from a home-assistant/intents ``_fixtures.yaml``-shaped file."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read fixtures file {path}: {exc}") from exc
    area_name = {}
    areas = []
    for a in data.get("areas", []):
        names = _expand(a["name"])
        area_name[a.get("id", a["name"])] = names[0]
        areas.append(Area(name=names[0], id=a.get("id", a["name"]), aliases=names[1:],
                          floor=a.get("floor", "")))
    floors = [f["name"] for f in data.get("floors", [])]
    entities = []
    for e in data.get("entities", []):
        names = _expand(e["name"])
        state = e.get("state", "")
        if isinstance(state, dict):
            state = state.get("in", "")
        for n in names:
            entities.append(Entity(name=n, domain=e["id"].split(".", 1)[0],
                                   area=area_name.get(e.get("area", ""), ""), id=e["id"],
                                   state=str(state), attributes=dict(e.get("attributes", {}))))
    return Home(areas=areas, entities=entities, floors=floors)
