"""Home Assistant MQTT *device* discovery for one node, as pure values: no I/O, no paho.

One retained message on ``homeassistant/device/<node>/config`` describes the node as one device
whose components (``cmps``) are, per model, an ``event`` entity plus, by the model's ``kind``, a
``sensor`` (the label) or a ``binary_sensor`` (a threshold state, with ``off_delay`` so it cannot
stay on), and diagnostic sensors read from the node's stats topic. Availability is the node's
status topic (retained ``online``; Last Will ``offline``).

What the daemon must publish for these entities (the payload contract):

- ``<prefix>/node/<node>/events/<model>``: every successful reply, not retained (HA's event entity
  ignores retained messages). ``result`` is a JSON object; for a model with labels it carries
  ``label`` (one of the labels; it becomes the ``event_type`` and the sensor state) and may carry
  ``score``; for a ``binary_sensor`` model it carries ``state`` (true/false). A model without
  labels fires ``event_type`` ``"result"`` on every reply. A reply whose ``result`` lacks the
  key renders nothing and Home Assistant ignores it.
- ``<prefix>/node/<node>/stats``: ``{"models": {name: {"requests", "errors": {code: n},
  "latency_ms": {"p50", ...}}}}`` (see ``stats.py``); counters may restart at 0 with the daemon
  (``total_increasing`` treats a drop as a reset).
- Discovery: on every connect, and again whenever ``homeassistant/status`` says ``online``; then
  the state topics need fresh values. To remove a model, publish once with its component ids in
  ``removed`` (each becomes ``{"p": <platform>}``), then again without them.

Sources: the device discovery payload, ``cmps``/``p``/``o`` and component removal are in HA's
MQTT docs (home-assistant.io ``integrations/mqtt``, "Device discovery payload"); keys and their
abbreviations in ``homeassistant/components/mqtt/abbreviations.py``; ``event_types`` and the
JSON ``event_type`` payload in ``homeassistant/components/mqtt/event.py``; ``off_delay`` and
``expire_after`` in ``homeassistant/components/mqtt/binary_sensor.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgert import __version__
from edgert.config import ModelConfig
from edgert.errors import ConfigError
from edgert.sections import ENTITY_KINDS, EntityKind
from edgert.topics import Topics

__all__ = [
    "DEFAULT_OFF_DELAY",
    "ENTITY_KINDS",
    "EntityKind",
    "ModelEntity",
    "SourceEntity",
    "component_platforms",
    "device_discovery",
]

DEFAULT_OFF_DELAY = 30  # seconds a binary_sensor stays on without a fresh "on" result

# The last ``_``-separated part of a component id names its role; roles hold no ``_``, so ids of
# different models cannot collide unless two names sanitize to the same id (checked).
_ROLE_PLATFORM = {
    "event": "event",
    "label": "sensor",
    "state": "binary_sensor",
    "latency": "sensor",
    "requests": "sensor",
    "rate": "sensor",
    "errors": "sensor",
    "seen": "event",  # a source's events
    "detected": "binary_sensor",  # on while a source keeps seeing something
}
_NODE_ID = "node"  # component-id stem of the node's own diagnostic sensors


def _sanitize(text: str) -> str:
    # Home Assistant ids allow [a-zA-Z0-9_-] only.
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "_"


@dataclass(frozen=True, kw_only=True)
class ModelEntity:
    """How one model appears in Home Assistant; from model.toml's ``[homeassistant]`` section.

    ``title`` is the entity name (``name`` in the section; default: the model's name);
    ``device_class`` and ``icon`` go to the model's main entity (the event entity for kind
    ``event``, else the sensor or binary_sensor); ``off_delay`` (seconds) is the binary_sensor's.
    """

    name: str
    version: str = "1"
    labels: tuple[str, ...] = ()
    kind: EntityKind = "event"
    title: str | None = None
    icon: str | None = None
    off_delay: int = DEFAULT_OFF_DELAY
    device_class: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("a model entity needs a name")
        if self.kind not in ENTITY_KINDS:
            raise ConfigError(
                f"{self.name}: [homeassistant] kind is {self.kind!r}; one of "
                f"{', '.join(ENTITY_KINDS)}"
            )
        if (
            not isinstance(self.off_delay, int)
            or isinstance(self.off_delay, bool)
            or self.off_delay <= 0
        ):
            raise ConfigError(
                f"{self.name}: [homeassistant] off_delay must be a positive number of seconds, "
                f"got {self.off_delay!r}"
            )

    @property
    def component_id(self) -> str:
        """The stem of this model's component ids: its name reduced to ``[a-zA-Z0-9_-]``."""
        return _sanitize(self.name)

    @classmethod
    def of(cls, config: ModelConfig) -> ModelEntity:
        """The entity of a model from its ``[homeassistant]`` (checked when model.toml was
        read)."""
        section = config.homeassistant
        return cls(
            name=config.name,
            version=config.version,
            labels=config.labels,
            kind=section.kind,
            title=section.name,
            icon=section.icon,
            off_delay=DEFAULT_OFF_DELAY if section.off_delay is None else section.off_delay,
            device_class=section.device_class,
        )


@dataclass(frozen=True)
class SourceEntity:
    """A source (a camera the daemon pulls) as Home Assistant sees it: an ``event`` entity of
    what it sees, and a ``binary_sensor`` on while it keeps seeing something."""

    name: str
    model: str
    event_types: tuple[str, ...]
    off_delay: int = DEFAULT_OFF_DELAY

    @property
    def component_id(self) -> str:
        return _sanitize(self.name)


def component_platforms(
    models: Iterable[ModelEntity], sources: Iterable[SourceEntity] = ()
) -> dict[str, str]:
    """Every component id the payload for ``models`` and ``sources`` holds, with its platform:
    what a caller keeps to find, next time, the ids to pass as ``removed``."""
    platforms = {
        f"{_NODE_ID}_requests": "sensor",
        f"{_NODE_ID}_rate": "sensor",
        f"{_NODE_ID}_errors": "sensor",
    }
    for source in sources:
        platforms[f"{source.component_id}_seen"] = "event"
        platforms[f"{source.component_id}_detected"] = "binary_sensor"
    owner: dict[str, str] = {}
    for model in models:
        stem = model.component_id
        if stem in owner:
            raise ConfigError(
                f"models {owner[stem]!r} and {model.name!r} both become Home Assistant id "
                f"{stem!r}; rename one"
            )
        owner[stem] = model.name
        roles = ["event", "latency"]
        if model.kind == "sensor":
            roles.append("label")
        elif model.kind == "binary_sensor":
            roles.append("state")
        platforms.update({f"{stem}_{role}": _ROLE_PLATFORM[role] for role in roles})
    return platforms


def _platform_of(component_id: str) -> str:
    role = component_id.rsplit("_", 1)[-1]
    if (
        "_" not in component_id
        or role not in _ROLE_PLATFORM
        or _sanitize(component_id) != (component_id)
    ):
        raise ConfigError(
            f"{component_id!r} is not an edgert component id (<name>_<role>, role one of "
            f"{', '.join(_ROLE_PLATFORM)})"
        )
    return _ROLE_PLATFORM[role]


# Templates read the daemon's reply JSON (value_json). A template that renders nothing makes
# Home Assistant ignore the message, so a reply without the expected key changes no state.
# A top-k result is a list, best first: its first entry is the one entities show.
_RESULT = (
    "{% set r = value_json.result if value_json.ok else none %}"
    "{% if r is not mapping and r is iterable and r is not string %}"
    "{% set r = (r | first) if r else none %}{% endif %}"
)


def _event_template(model: ModelEntity) -> str:
    if model.labels:
        return (
            _RESULT + "{% if r is mapping and 'label' in r %}"
            '{{ {"event_type": r.label, "score": r.get("score"), '
            '"version": value_json.version} | tojson }}{% endif %}'
        )
    return (
        '{% if value_json.ok %}{{ {"event_type": "result", "result": value_json.result, '
        '"version": value_json.version} | tojson }}{% endif %}'
    )


_LABEL_TEMPLATE = _RESULT + "{% if r is mapping and 'label' in r %}{{ r.label }}{% endif %}"
_SCORE_TEMPLATE = (
    _RESULT + "{% if r is mapping and 'label' in r %}"
    '{{ {"score": r.get("score"), "version": value_json.version} | tojson }}{% endif %}'
)
_STATE_TEMPLATE = (
    _RESULT + "{% if r is mapping and 'state' in r %}{{ 'ON' if r.state else 'OFF' }}{% endif %}"
)
_REQUESTS_TEMPLATE = "{{ value_json.models.values() | map(attribute='requests') | sum }}"
_RATE_TEMPLATE = (
    "{{ (value_json.models.values() | map(attribute='rate', default=0) | sum) | round(3) }}"
)
_ERRORS_TEMPLATE = (
    "{% set n = namespace(errors=0) %}{% for m in value_json.models.values() %}"
    "{% set n.errors = n.errors + (m.errors.values() | sum) %}{% endfor %}{{ n.errors }}"
)


def _latency_template(name: str) -> str:
    # json.dumps gives an ASCII, backslash-escaped literal that Jinja reads as the same string.
    # "None" (no model entry or no latency yet) makes the sensor unknown.
    return (
        f"{{% set m = value_json.models.get({json.dumps(name)}) %}}"
        "{{ m.latency_ms.p50 if m and m.latency_ms and m.latency_ms.p50 is not none "
        "else 'None' }}"
    )


def _model_components(unique: str, topics: Topics, model: ModelEntity) -> dict[str, dict[str, Any]]:
    stem = model.component_id
    title = model.title or model.name
    events = topics.events(model.name)
    main: dict[str, Any] = {}
    if model.device_class:
        main["dev_cla"] = model.device_class
    if model.icon:
        main["ic"] = model.icon
    event: dict[str, Any] = {
        "p": "event",
        "name": title if model.kind == "event" else f"{title} result",
        "uniq_id": f"{unique}_{stem}_event",
        "stat_t": events,
        "event_types": list(model.labels) or ["result"],
        "val_tpl": _event_template(model),
    }
    if model.kind == "event":
        event.update(main)
    cmps: dict[str, dict[str, Any]] = {f"{stem}_event": event}
    if model.kind == "sensor":
        sensor: dict[str, Any] = {
            "p": "sensor",
            "name": title,
            "uniq_id": f"{unique}_{stem}_label",
            "stat_t": events,
            "val_tpl": _LABEL_TEMPLATE,
            "json_attr_t": events,
            "json_attr_tpl": _SCORE_TEMPLATE,
        }
        if model.labels and not model.device_class:
            sensor.update({"dev_cla": "enum", "ops": list(model.labels)})
        cmps[f"{stem}_label"] = sensor | main
    elif model.kind == "binary_sensor":
        cmps[f"{stem}_state"] = {
            "p": "binary_sensor",
            "name": title,
            "uniq_id": f"{unique}_{stem}_state",
            "stat_t": events,
            "val_tpl": _STATE_TEMPLATE,
            "pl_on": "ON",
            "pl_off": "OFF",
            "off_dly": model.off_delay,
        } | main
    cmps[f"{stem}_latency"] = {
        "p": "sensor",
        "name": f"{title} latency p50",
        "uniq_id": f"{unique}_{stem}_latency",
        "stat_t": topics.stats,
        "val_tpl": _latency_template(model.name),
        "unit_of_meas": "ms",
        "dev_cla": "duration",
        "stat_cla": "measurement",
        "ent_cat": "diagnostic",
    }
    return cmps


def _source_components(
    unique: str, topics: Topics, source: SourceEntity
) -> dict[str, dict[str, Any]]:
    stem, events = source.component_id, topics.events(source.name)
    return {
        f"{stem}_seen": {
            "p": "event",
            "name": f"{source.name}",
            "uniq_id": f"{unique}_{stem}_seen",
            "stat_t": events,
            "event_types": list(source.event_types),
            "val_tpl": (
                '{{ {"event_type": value_json.event_type, "score": value_json.score, '
                '"model": value_json.model} | tojson }}'
            ),
        },
        f"{stem}_detected": {
            "p": "binary_sensor",
            "name": f"{source.name} detection",
            "uniq_id": f"{unique}_{stem}_detected",
            "stat_t": events,
            "val_tpl": "ON",  # every source event means something was seen; off_dly ends it
            "pl_on": "ON",
            "off_dly": source.off_delay,
        },
    }


def device_discovery(
    node: str,
    topics: Topics,
    models: Sequence[ModelEntity],
    removed: Sequence[str] = (),
    *,
    sources: Sequence[SourceEntity] = (),
    support_url: str | None = None,
) -> tuple[str, bytes]:
    """The discovery topic and JSON payload of ``node`` serving ``models`` (publish retained).

    ``removed`` names component ids (from :func:`component_platforms` of an earlier call) to
    remove from the device: each is sent as ``{"p": <platform>}`` only, as Home Assistant
    documents; publish again without them afterwards. ``support_url`` goes to the origin.
    """
    if node != topics.node:
        raise ConfigError(f"node {node!r} differs from the topics' node {topics.node!r}")
    unique = f"edgert_{node}"
    platforms = component_platforms(models, sources)
    cmps: dict[str, dict[str, Any]] = {
        f"{_NODE_ID}_requests": {
            "p": "sensor",
            "name": "Requests",
            "uniq_id": f"{unique}_{_NODE_ID}_requests",
            "stat_t": topics.stats,
            "val_tpl": _REQUESTS_TEMPLATE,
            "stat_cla": "total_increasing",
            "ent_cat": "diagnostic",
            "ic": "mdi:counter",
        },
        f"{_NODE_ID}_rate": {
            "p": "sensor",
            "name": "Request rate",
            "uniq_id": f"{unique}_{_NODE_ID}_rate",
            "stat_t": topics.stats,
            "val_tpl": _RATE_TEMPLATE,
            "unit_of_meas": "req/s",
            "stat_cla": "measurement",
            "ent_cat": "diagnostic",
            "ic": "mdi:speedometer",
        },
        f"{_NODE_ID}_errors": {
            "p": "sensor",
            "name": "Errors",
            "uniq_id": f"{unique}_{_NODE_ID}_errors",
            "stat_t": topics.stats,
            "val_tpl": _ERRORS_TEMPLATE,
            "stat_cla": "total_increasing",
            "ent_cat": "diagnostic",
            "ic": "mdi:alert-circle-outline",
        },
    }
    for model in models:
        cmps.update(_model_components(unique, topics, model))
    for source in sources:
        cmps.update(_source_components(unique, topics, source))
    for component_id in removed:
        if component_id in platforms:
            raise ConfigError(f"component {component_id!r} is both served and removed")
        cmps[component_id] = {"p": _platform_of(component_id)}
    origin: dict[str, str] = {"name": "edgert", "sw": __version__}
    if support_url:
        origin["url"] = support_url
    payload: Mapping[str, Any] = {
        "dev": {
            "ids": [unique],
            "name": node,
            "mf": "edgert",
            "mdl": "edgert inference node",
            "sw": __version__,
        },
        "o": origin,
        "avty": [{"t": topics.status, "pl_avail": "online", "pl_not_avail": "offline"}],
        "cmps": cmps,
    }
    return topics.discovery, json.dumps(payload, separators=(",", ":")).encode()
