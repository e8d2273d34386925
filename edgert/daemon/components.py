"""The components (``cmps``) of a node's Home Assistant device discovery payload, as pure values.

``discovery`` assembles them into the payload; each builder here gives one part's components by
component id: the node's diagnostic sensors, a model's entities, a source's entities.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from edgert.topics import Topics

if TYPE_CHECKING:  # annotation only: discovery imports this module
    from edgert.daemon.discovery import ModelEntity, SourceEntity

__all__ = ["NODE_ID", "NO_LABEL", "model_components", "node_components", "source_components"]

NODE_ID = "node"  # component-id stem of the node's own diagnostic sensors

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


# An ok result that names no label (a detector that found nothing, every score NaN) is the
# label sensor's NO_LABEL: an enum sensor refuses a state outside its options, an empty one
# included, and Home Assistant's "None" is unknown for numeric sensors only.
NO_LABEL = "none"
_LABELLED = "r is mapping and 'label' in r"
_LABEL_TEMPLATE = (
    _RESULT + f"{{% if {_LABELLED} %}}{{{{ r.label }}}}"
    f"{{% elif value_json.ok %}}{NO_LABEL}{{% endif %}}"
)
# Attributes must render a JSON object: anything else is logged as erroneous JSON.
_SCORE_TEMPLATE = (
    _RESULT + "{% if value_json.ok %}"
    f'{{{{ {{"score": r.get("score") if {_LABELLED} else none, '
    '"version": value_json.version} | tojson }}{% endif %}'
)
# A null state (the model's score was NaN) renders "None": Home Assistant's "unknown".
_STATE_TEMPLATE = (
    _RESULT + "{% if r is mapping and 'state' in r %}"
    "{{ 'None' if r.state is none else ('ON' if r.state else 'OFF') }}{% endif %}"
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


def model_components(unique: str, topics: Topics, model: ModelEntity) -> dict[str, dict[str, Any]]:
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
            options = list(model.labels)
            if NO_LABEL not in options:
                options.append(NO_LABEL)
            sensor.update({"dev_cla": "enum", "ops": options})
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


def source_components(
    unique: str, topics: Topics, source: SourceEntity
) -> dict[str, dict[str, Any]]:
    stem, events = source.component_id, topics.events(source.name)
    cmps: dict[str, dict[str, Any]] = {
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
    return cmps | (_video_components(unique, topics, source) if source.video else {})


def _video_components(
    unique: str, topics: Topics, source: SourceEntity
) -> dict[str, dict[str, Any]]:
    """A video source's snapshot image, per-label counts, and its stream's state."""
    stem, counts = source.component_id, topics.counts(source.name)
    cmps: dict[str, dict[str, Any]] = {
        f"{stem}_image": {
            "p": "image",
            "name": f"{source.name} snapshot",
            "uniq_id": f"{unique}_{stem}_image",
            "image_topic": topics.snapshot(source.name),
            "content_type": "image/jpeg",
        },
        f"{stem}_stream": {
            "p": "sensor",
            "name": f"{source.name} stream",
            "uniq_id": f"{unique}_{stem}_stream",
            "stat_t": topics.stats,
            "val_tpl": _stream_template(source.name, "state"),
            "json_attr_t": topics.stats,
            "json_attr_tpl": _stream_template(source.name, None),
            "ent_cat": "diagnostic",
            "ic": "mdi:cctv",
        },
    }
    for label, component_id in source.count_ids().items():
        cmps[component_id] = {
            "p": "sensor",
            "name": f"{source.name} {label}",
            "uniq_id": f"{unique}_{component_id}",
            "stat_t": counts,
            "val_tpl": f"{{{{ value_json.get({json.dumps(label)}, 0) }}}}",
            "stat_cla": "measurement",
        }
    return cmps


def _stream_template(name: str, key: str | None) -> str:
    """A source's entry of the stats (``key`` of it; all of it, as attributes, for None)."""
    entry = f"{{% set s = (value_json.sources or {{}}).get({json.dumps(name)}) %}}"
    if key is None:
        keys = ("fps", "last_error", "decoded", "gated", "inferred", "reconnects")
        pairs = ", ".join(f'"{k}": s.{k}' for k in keys)
        return entry + f"{{{{ ({{{pairs}}} if s else {{}}) | tojson }}}}"
    return entry + f"{{{{ s.{key} if s else 'None' }}}}"


def node_components(unique: str, topics: Topics) -> dict[str, dict[str, Any]]:
    """The node's own diagnostic sensors, read from its stats topic."""
    return {
        f"{NODE_ID}_requests": {
            "p": "sensor",
            "name": "Requests",
            "uniq_id": f"{unique}_{NODE_ID}_requests",
            "stat_t": topics.stats,
            "val_tpl": _REQUESTS_TEMPLATE,
            "stat_cla": "total_increasing",
            "ent_cat": "diagnostic",
            "ic": "mdi:counter",
        },
        f"{NODE_ID}_rate": {
            "p": "sensor",
            "name": "Request rate",
            "uniq_id": f"{unique}_{NODE_ID}_rate",
            "stat_t": topics.stats,
            "val_tpl": _RATE_TEMPLATE,
            "unit_of_meas": "req/s",
            "stat_cla": "measurement",
            "ent_cat": "diagnostic",
            "ic": "mdi:speedometer",
        },
        f"{NODE_ID}_errors": {
            "p": "sensor",
            "name": "Errors",
            "uniq_id": f"{unique}_{NODE_ID}_errors",
            "stat_t": topics.stats,
            "val_tpl": _ERRORS_TEMPLATE,
            "stat_cla": "total_increasing",
            "ent_cat": "diagnostic",
            "ic": "mdi:alert-circle-outline",
        },
    }
