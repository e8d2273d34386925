"""Home Assistant device discovery payloads, checked key by key against HA's documented schema."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgert import __version__
from edgert.config import ModelConfig
from edgert.daemon.components import NO_LABEL
from edgert.daemon.discovery import (
    DEFAULT_OFF_DELAY,
    ModelEntity,
    SourceEntity,
    component_platforms,
    device_discovery,
)
from edgert.errors import ConfigError
from edgert.pipeline import Postprocess, top_k
from edgert.protocol import ErrorCode, error_reply, ok_reply
from edgert.spec import DType, ModelIO, TensorSpec
from edgert.topics import Topics

REPO = Path(__file__).resolve().parents[2]

# The abbreviations this module uses, as Home Assistant expands them: a subset of
# home-assistant/core homeassistant/components/mqtt/abbreviations.py (ABBREVIATIONS,
# DEVICE_ABBREVIATIONS, ORIGIN_ABBREVIATIONS). "p", "o" and "cmps" are the device-discovery
# additions (HA 2024.11; also in the docs' "Device discovery payload" section).
HA_ABBREVIATIONS = {
    "avty": "availability",
    "cmps": "components",
    "dev": "device",
    "dev_cla": "device_class",
    "ent_cat": "entity_category",
    "ic": "icon",
    "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template",
    "name": "name",
    "o": "origin",
    "off_dly": "off_delay",
    "ops": "options",
    "p": "platform",
    "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available",
    "pl_off": "payload_off",
    "pl_on": "payload_on",
    "stat_cla": "state_class",
    "stat_t": "state_topic",
    "t": "topic",
    "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template",
}
HA_DEVICE_ABBREVIATIONS = {
    "ids": "identifiers",
    "name": "name",
    "mf": "manufacturer",
    "mdl": "model",
    "sw": "sw_version",
}
HA_ORIGIN_ABBREVIATIONS = {"name": "name", "sw": "sw_version", "url": "support_url"}

# Options each platform accepts (full names), from the HA MQTT platform schemas (event.py,
# sensor.py, binary_sensor.py, and the common entity schema); "required" ones per the same.
COMMON_OPTIONS = {
    "platform",
    "name",
    "unique_id",
    "state_topic",
    "value_template",
    "icon",
    "device_class",
    "entity_category",
    "json_attributes_topic",
    "json_attributes_template",
}
PLATFORM_OPTIONS = {
    "event": COMMON_OPTIONS | {"event_types"},
    "sensor": COMMON_OPTIONS | {"unit_of_measurement", "state_class", "options", "expire_after"},
    "binary_sensor": COMMON_OPTIONS | {"payload_on", "payload_off", "off_delay", "expire_after"},
}
ALL_OPTIONS: frozenset[str] = frozenset().union(*PLATFORM_OPTIONS.values())
REQUIRED = {
    # Device discovery: p and unique_id on every entity component; state_topic is required by
    # the read-only schema (MQTT_RO_SCHEMA); event_types by event.py.
    "event": {"platform", "unique_id", "state_topic", "event_types"},
    "sensor": {"platform", "unique_id", "state_topic"},
    "binary_sensor": {"platform", "unique_id", "state_topic"},
}
HA_ID = re.compile(r"[a-zA-Z0-9_-]+")


def expand(
    data: dict[str, Any], table: dict[str, str], full: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``data`` with abbreviated keys expanded; a key that is neither an abbreviation in
    ``table`` nor a full option name fails the test."""
    full = full | set(table.values())
    out = {}
    for key, value in data.items():
        assert key in table or key in full, f"{key!r} is neither an HA option nor abbreviation"
        out[table.get(key, key)] = value
    return out


TOPICS = Topics(node="kitchen")
OCCUPANCY = ModelEntity(
    name="occupancy",
    version="3",
    labels=("empty", "occupied"),
    kind="binary_sensor",
    device_class="occupancy",
    off_delay=45,
)
PETS = ModelEntity(name="pets.v2", labels=("cat", "dog"), kind="sensor", title="Pets")
VAD = ModelEntity(name="silero_vad")


def discover(*models: ModelEntity, removed: tuple[str, ...] = ()) -> dict[str, Any]:
    topic, payload = device_discovery("kitchen", TOPICS, list(models), removed)
    assert topic == "homeassistant/device/kitchen/config"
    data: dict[str, Any] = json.loads(payload)
    return data


def components(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        cid: expand(cfg, HA_ABBREVIATIONS, ALL_OPTIONS)
        for cid, cfg in expand(data, HA_ABBREVIATIONS)["components"].items()
    }


def test_root_has_the_required_device_and_origin_mappings() -> None:
    root = expand(discover(OCCUPANCY), HA_ABBREVIATIONS)
    assert set(root) == {"device", "origin", "availability", "components"}
    device = expand(root["device"], HA_DEVICE_ABBREVIATIONS)
    assert device == {
        "identifiers": ["edgert_kitchen"],
        "name": "kitchen",
        "manufacturer": "edgert",
        "model": "edgert inference node",
        "sw_version": __version__,
    }
    origin = expand(root["origin"], HA_ORIGIN_ABBREVIATIONS)
    assert origin == {"name": "edgert", "sw_version": __version__}  # name is required


def test_origin_support_url_when_given() -> None:
    _, payload = device_discovery("kitchen", TOPICS, [VAD], support_url="https://x.example/")
    origin = expand(json.loads(payload)["o"], HA_ORIGIN_ABBREVIATIONS)
    assert origin["support_url"] == "https://x.example/"


def test_availability_is_the_node_status_topic() -> None:
    root = expand(discover(VAD), HA_ABBREVIATIONS)
    [avail] = root["availability"]
    assert expand(avail, HA_ABBREVIATIONS) == {
        "topic": "edgert/node/kitchen/status",
        "payload_available": "online",
        "payload_not_available": "offline",
    }


def test_every_component_has_its_platform_required_keys_and_only_known_options() -> None:
    cmps = components(discover(OCCUPANCY, PETS, VAD))
    platforms = {cid: cfg["platform"] for cid, cfg in cmps.items()}
    assert platforms == {
        "node_requests": "sensor",
        "node_rate": "sensor",
        "node_errors": "sensor",
        "occupancy_event": "event",
        "occupancy_state": "binary_sensor",
        "occupancy_latency": "sensor",
        "pets_v2_event": "event",
        "pets_v2_label": "sensor",
        "pets_v2_latency": "sensor",
        "silero_vad_event": "event",
        "silero_vad_latency": "sensor",
    }
    for cid, cfg in cmps.items():
        platform = cfg["platform"]
        assert REQUIRED[platform] <= set(cfg), cid
        assert set(cfg) <= PLATFORM_OPTIONS[platform], (cid, set(cfg) - PLATFORM_OPTIONS[platform])
        assert HA_ID.fullmatch(cid) and HA_ID.fullmatch(cfg["unique_id"]), cid


def test_event_types_come_from_the_labels_or_result() -> None:
    cmps = components(discover(OCCUPANCY, VAD))
    assert cmps["occupancy_event"]["event_types"] == ["empty", "occupied"]
    assert cmps["occupancy_event"]["state_topic"] == "edgert/node/kitchen/events/occupancy"
    assert "r.label" in cmps["occupancy_event"]["value_template"]
    assert "event_type" in cmps["occupancy_event"]["value_template"]
    assert cmps["silero_vad_event"]["event_types"] == ["result"]
    assert '"event_type": "result"' in cmps["silero_vad_event"]["value_template"]


def test_binary_sensor_has_off_delay_and_on_off_payloads() -> None:
    state = components(discover(OCCUPANCY))["occupancy_state"]
    assert state["off_delay"] == 45
    assert (state["payload_on"], state["payload_off"]) == ("ON", "OFF")
    assert state["device_class"] == "occupancy"
    default = ModelEntity(name="door", kind="binary_sensor")
    assert components(discover(default))["door_state"]["off_delay"] == DEFAULT_OFF_DELAY


def test_label_sensor_is_an_enum_of_the_labels_with_score_attributes() -> None:
    label = components(discover(PETS))["pets_v2_label"]
    assert label["name"] == "Pets"
    assert (label["device_class"], label["options"]) == ("enum", ["cat", "dog", NO_LABEL])
    assert label["json_attributes_topic"] == "edgert/node/kitchen/events/pets.v2"
    assert "score" in label["json_attributes_template"]


def test_diagnostics_read_the_stats_topic() -> None:
    cmps = components(discover(PETS))
    for cid in ("node_requests", "node_errors", "pets_v2_latency"):
        assert cmps[cid]["state_topic"] == "edgert/node/kitchen/stats"
        assert cmps[cid]["entity_category"] == "diagnostic"
    assert cmps["node_requests"]["state_class"] == "total_increasing"
    assert cmps["node_errors"]["state_class"] == "total_increasing"
    rate = cmps["node_rate"]
    assert (rate["state_class"], rate["unit_of_measurement"]) == ("measurement", "req/s")
    assert "attribute='rate'" in rate["value_template"]
    latency = cmps["pets_v2_latency"]
    assert (latency["unit_of_measurement"], latency["device_class"]) == ("ms", "duration")
    assert 'value_json.models.get("pets.v2")' in latency["value_template"]
    assert "latency_ms.p50" in latency["value_template"]


def test_removed_components_are_platform_only() -> None:
    before = component_platforms([OCCUPANCY, PETS])
    after = component_platforms([OCCUPANCY])
    gone = tuple(sorted(set(before) - set(after)))
    assert gone == ("pets_v2_event", "pets_v2_label", "pets_v2_latency")
    cmps = discover(OCCUPANCY, removed=gone)["cmps"]
    assert cmps["pets_v2_event"] == {"p": "event"}
    assert cmps["pets_v2_label"] == {"p": "sensor"}
    assert cmps["pets_v2_latency"] == {"p": "sensor"}
    assert set(cmps) == set(after) | set(gone)


@pytest.mark.parametrize("bad", ["pets", "pets_bogus", "pets v2_event", ""])
def test_removing_an_unknown_component_id_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError):
        discover(OCCUPANCY, removed=(bad,))


def test_removing_a_served_component_is_refused() -> None:
    with pytest.raises(ConfigError, match="both served and removed"):
        discover(OCCUPANCY, removed=("occupancy_event",))


def test_unique_ids_are_stable_and_sanitized() -> None:
    first = discover(OCCUPANCY, PETS)
    again = discover(PETS, OCCUPANCY)  # model order changes nothing an id depends on
    ids = {cid: cfg["uniq_id"] for cid, cfg in first["cmps"].items()}
    assert ids == {cid: cfg["uniq_id"] for cid, cfg in again["cmps"].items()}
    assert ids["pets_v2_label"] == "edgert_kitchen_pets_v2_label"
    assert len(set(ids.values())) == len(ids)
    assert all(HA_ID.fullmatch(i) for i in ids.values())


def test_names_that_sanitize_alike_are_refused() -> None:
    with pytest.raises(ConfigError, match="both become"):
        discover(ModelEntity(name="a.b"), ModelEntity(name="a b"))


def test_node_must_match_the_topics() -> None:
    with pytest.raises(ConfigError, match="differs"):
        device_discovery("other", TOPICS, [VAD])


def test_entity_from_model_config() -> None:
    config = ModelConfig.from_dict(
        {
            "version": "3",
            "labels": ["empty", "occupied"],
            "homeassistant": {
                "kind": "binary_sensor",
                "name": "Kitchen occupancy",
                "icon": "mdi:sofa",
                "off_delay": 60,
                "device_class": "occupancy",
            },
        },
        default_name="occupancy",
    )
    assert ModelEntity.of(config) == ModelEntity(
        name="occupancy",
        version="3",
        labels=("empty", "occupied"),
        kind="binary_sensor",
        title="Kitchen occupancy",
        icon="mdi:sofa",
        off_delay=60,
        device_class="occupancy",
    )
    plain = ModelEntity.of(ModelConfig.from_dict({}, default_name="vad"))
    assert (plain.kind, plain.labels, plain.off_delay) == ("event", (), DEFAULT_OFF_DELAY)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        # The nearest key of any table:
        (
            {"colour": "red"},
            ' colour: unknown key; did you mean [preprocess] color (kind = "image")?',
        ),
        ({"zzzz": "red"}, " zzzz: unknown key; known: kind, name, icon, off_delay, device_class"),
        (
            {"kind": "switch"},
            ' kind: expected one of "event", "sensor", "binary_sensor", got "switch"',
        ),
        ({"kind": "binary_sensor", "off_delay": 0}, " off_delay: expected an integer >= 1, got 0"),
        (
            {"kind": "binary_sensor", "off_delay": True},
            " off_delay: expected an integer >= 1, got true",
        ),
        (
            {"kind": "binary_sensor", "off_delay": "30"},
            ' off_delay: expected an integer >= 1, got "30"',
        ),
        ({"off_delay": 30}, ' off_delay: applies to kind = "binary_sensor" only'),
        ({"name": ""}, ' name: expected a non-empty string, got ""'),
        ({"icon": 3}, " icon: expected a non-empty string, got 3"),
    ],
)
def test_bad_homeassistant_section_is_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        ModelConfig.from_dict({"homeassistant": section}, default_name="m")
    assert caught.value.message == f"model.toml: [homeassistant]{message}"


def test_sources_get_an_event_and_a_detection_that_turns_itself_off() -> None:
    porch = SourceEntity("porch", "person", ("person",), off_delay=20)
    _, payload = device_discovery("kitchen", TOPICS, [OCCUPANCY], sources=[porch])
    cmps = components(json.loads(payload))
    seen, detected = cmps["porch_seen"], cmps["porch_detected"]
    for cid, cfg in (("porch_seen", seen), ("porch_detected", detected)):
        assert REQUIRED[cfg["platform"]] <= set(cfg), cid
        assert set(cfg) <= PLATFORM_OPTIONS[cfg["platform"]], cid
    assert seen["platform"] == "event" and seen["event_types"] == ["person"]
    assert seen["state_topic"] == "edgert/node/kitchen/events/porch"
    assert detected["platform"] == "binary_sensor" and detected["off_delay"] == 20
    assert component_platforms([OCCUPANCY], [porch])["porch_detected"] == "binary_sensor"
    # A source no longer configured is removed like a model.
    _, removal = device_discovery("kitchen", TOPICS, [OCCUPANCY], ["porch_seen", "porch_detected"])
    assert json.loads(removal)["cmps"]["porch_seen"] == {"p": "event"}
    assert json.loads(removal)["cmps"]["porch_detected"] == {"p": "binary_sensor"}


def rendered(template: str, reply: bytes) -> str:
    """``template`` rendered as Home Assistant renders a state topic's value template: Jinja2's
    immutable sandbox, the message's JSON as ``value_json``."""
    environment = ImmutableSandboxedEnvironment()
    return environment.from_string(template).render(value_json=json.loads(reply))


def test_the_example_occupancy_models_replies_drive_its_entities_as_home_assistant_reads_them() -> (
    None
):
    config = ModelConfig.load(REPO / "engines" / "occupancy")
    spec = TensorSpec("probabilities", DType.FLOAT32, ("batch", 2))
    io = ModelIO((TensorSpec("readings", DType.FLOAT32, ("batch", 4)),), (spec,), {})
    post = Postprocess.of(config, io)
    assert post is not None
    cmps = components(discover(ModelEntity.of(config)))
    event, state = cmps["occupancy_event"], cmps["occupancy_state"]
    seen = []
    for probs in ([0.1, 0.9], [0.8, 0.2], [np.nan, np.nan]):
        outputs = {"probabilities": np.array([probs], np.float32)}
        reply = ok_reply(7, "occupancy", "1", outputs, post.apply(outputs))
        fired = rendered(event["value_template"], reply)
        seen.append(
            (
                json.loads(fired)["event_type"] if fired else None,
                rendered(state["value_template"], reply),
            )
        )
    # "None" is Home Assistant's unknown; an empty rendering fires no event.
    assert seen == [("occupied", "ON"), ("empty", "OFF"), (None, "None")]
    assert set(event["event_types"]) >= {"occupied", "empty"}
    refused = error_reply(7, ErrorCode.BAD_INPUT, "no")
    assert rendered(event["value_template"], refused) == ""
    assert rendered(state["value_template"], refused) == ""


def test_a_label_sensor_gets_one_of_its_options_and_a_json_object_for_every_result() -> None:
    # Home Assistant refuses an enum sensor's state outside its options (an empty one too) and
    # logs attributes that are not a JSON object: a result naming no label must give neither.
    label = components(discover(PETS))["pets_v2_label"]
    results = [
        top_k(np.array([0.2, 0.8], np.float32), ["cat", "dog"], 1),
        top_k(np.array([np.nan, np.nan], np.float32), ["cat", "dog"], 1),  # every score NaN
        [],  # a detector that found nothing
        [{"label": "cat", "score": 0.9, "box": [1.0, 2.0, 3.0, 4.0]}],
    ]
    seen = []
    for result in results:
        reply = ok_reply(3, "pets.v2", "2", {}, result)
        state = rendered(label["value_template"], reply)
        attributes = json.loads(rendered(label["json_attributes_template"], reply))
        assert state in label["options"], state
        seen.append((state, attributes))
    assert seen == [
        ("dog", {"score": 0.8, "version": "2"}),
        (NO_LABEL, {"score": None, "version": "2"}),
        (NO_LABEL, {"score": None, "version": "2"}),
        ("cat", {"score": 0.9, "version": "2"}),
    ]
    refused = error_reply(3, ErrorCode.BAD_INPUT, "no")
    assert rendered(label["value_template"], refused) == ""
    assert rendered(label["json_attributes_template"], refused) == ""
    named = ModelEntity(name="gate", labels=("none", "car"), kind="sensor")
    assert components(discover(named))["gate_label"]["options"] == ["none", "car"]
