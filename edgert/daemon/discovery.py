"""Home Assistant MQTT *device* discovery for one node, as pure values: no I/O, no MQTT library.

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
from edgert.daemon.components import NODE_ID, model_components, node_components, source_components
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
    "image": "image",  # a video source's last annotated snapshot
    "count": "sensor",  # a video source's count of one label in its last frame
    "stream": "sensor",  # a video source's stream state (diagnostic)
}


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
    what it sees, and a ``binary_sensor`` on while it keeps seeing something; a video source
    (``video``) also an ``image`` (its last annotated snapshot), a ``sensor`` per event type
    (its count in the last frame) and a diagnostic ``sensor`` of its stream's state."""

    name: str
    model: str
    event_types: tuple[str, ...]
    off_delay: int = DEFAULT_OFF_DELAY
    video: bool = False

    @property
    def component_id(self) -> str:
        return _sanitize(self.name)

    def count_ids(self) -> dict[str, str]:
        """Each event type's count sensor's component id."""
        return {
            label: f"{self.component_id}_{_sanitize(label)}_count" for label in self.event_types
        }

    def platforms(self) -> dict[str, str]:
        """This source's component ids, with their platforms."""
        stem = self.component_id
        ids = {f"{stem}_seen": "event", f"{stem}_detected": "binary_sensor"}
        if self.video:
            ids |= {f"{stem}_image": "image", f"{stem}_stream": "sensor"}
            ids |= dict.fromkeys(self.count_ids().values(), "sensor")
        return ids


def component_platforms(
    models: Iterable[ModelEntity], sources: Iterable[SourceEntity] = ()
) -> dict[str, str]:
    """Every component id the payload for ``models`` and ``sources`` holds, with its platform:
    what a caller keeps to find, next time, the ids to pass as ``removed``."""
    platforms = {
        f"{NODE_ID}_requests": "sensor",
        f"{NODE_ID}_rate": "sensor",
        f"{NODE_ID}_errors": "sensor",
    }
    for source in sources:
        platforms.update(source.platforms())
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
    cmps = node_components(unique, topics)
    for model in models:
        cmps.update(model_components(unique, topics, model))
    for source in sources:
        cmps.update(source_components(unique, topics, source))
    for component_id in removed:
        if component_id in platforms:
            raise ConfigError(f"component {component_id!r} is both served and removed")
        cmps[component_id] = {"p": _platform_of(component_id)}
    payload: Mapping[str, Any] = {
        "dev": {
            "ids": [unique],
            "name": node,
            "mf": "edgert",
            "mdl": "edgert inference node",
            "sw": __version__,
        },
        "o": _origin(support_url),
        "avty": [{"t": topics.status, "pl_avail": "online", "pl_not_avail": "offline"}],
        "cmps": cmps,
    }
    return topics.discovery, json.dumps(payload, separators=(",", ":")).encode()


def _origin(support_url: str | None) -> dict[str, str]:
    origin: dict[str, str] = {"name": "edgert", "sw": __version__}
    if support_url:
        origin["url"] = support_url
    return origin
