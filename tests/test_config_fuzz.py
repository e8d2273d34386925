"""Config files fuzzed: edgert.toml and model.toml files made from the shipped ones and the
tests' own, with wrong types, out-of-range values, unknown and moved keys. Each is refused in one
line naming the file, table and key, or it loads into values the daemon can rely on."""

from __future__ import annotations

import copy
import json
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import tomllib
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edgert.config import (
    INPUT_KINDS,
    PRECISIONS,
    InputConfig,
    ModelConfig,
    ModelFile,
    OutputConfig,
    ParitySection,
)
from edgert.daemon.batcher import BatchSettings
from edgert.daemon.discovery import ModelEntity
from edgert.errors import ConfigError
from edgert.sections import (
    AudioSection,
    BatchingSection,
    HomeAssistantSection,
    ImageSection,
    PostprocessSection,
    StateSection,
    TensorRTSection,
)
from edgert.settings import (
    BrokerSection,
    DaemonConfig,
    EdgertFile,
    HttpSection,
    NodeSection,
    ServeSection,
    SourceConfig,
    split_listen,
)

REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(
    max_examples=250,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def line_form(path: Path) -> re.Pattern[str]:
    """``<file>: [table][index] key: ...``, ``<file>: [table]: ...`` or ``<file>: key: ...``."""
    table = r"\[\[?[^\]]+\]\]?(\[\d+\])?"  # [serve], [inputs.x], [[sources]][1]
    return re.compile(rf"^{re.escape(str(path))}: ({table}( \S+)?|\S+): \S")


# ------------------------------------------------------------------------------ writing TOML


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    items = ", ".join(f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
    return "{ " + items + " }" if items else "{}"


def toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def to_toml(data: dict[str, Any]) -> str:
    """Top-level keys first, then each table with its values inline (a valid TOML file)."""
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"{toml_key(k)} = {toml_value(v)}" for k, v in data.items() if k not in tables]
    for name, table in tables.items():
        lines.append(f"[{toml_key(name)}]")
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- mutations


@dataclass
class Case:
    """A file's data, and the mutations made to it that no file may get away with."""

    data: dict[str, Any]
    refuse: list[str] = field(default_factory=list)
    moved: set[str] = field(default_factory=set)  # moving one back could undo the first move

    def refused(self, where: str) -> bool:
        """Note ``where`` as a mutation the file must be refused for; False if one already
        was (a second bad value there could happen to be a good one)."""
        if where in self.refuse:
            return False
        self.refuse.append(where)
        return True


TABLE = {"nested": {"deep": 1}}  # no scalar key takes a table


# Keys that take a string or a number both (so neither is a wrong type for them).
EITHER = {"version": [1.5, True, ["1"], TABLE], "protocol": [5.5, True, [5], TABLE]}
EITHER["softmax"] = [1, 0.5, [True], TABLE]


def wrong_type(key: str, value: Any) -> list[Any]:
    """Values of a type ``key``, holding ``value``, cannot take."""
    if key in EITHER:
        return EITHER[key]
    if isinstance(value, bool):
        return ["true", 1, TABLE]
    if isinstance(value, int | float):  # no float for an int: a float key may be written 60
        return [str(value), True, [value], TABLE]
    if isinstance(value, str):
        return [3, True, [value], TABLE]
    if isinstance(value, list):
        return ["x", 3, TABLE]
    return [TABLE]


def unknown_keys(known: set[str]) -> st.SearchStrategy[str]:
    """Key names no table of the file knows (so moving one elsewhere keeps it unknown)."""
    spelled = st.from_regex(r"[a-z][a-z_]{0,9}", fullmatch=True)
    typo = st.sampled_from(sorted(known)).map(lambda k: k + "x")
    return st.one_of(spelled, typo).filter(lambda k: k not in known)


def benign_first(mutations: list[Callable[[st.DrawFn, Case], None]]) -> list[Any]:
    # A good value or a dropped key applied after a bad one could undo it.
    return sorted(mutations, key=lambda m: m not in BENIGN)


def fields(table: type[msgspec.Struct]) -> set[str]:
    return set(table.__struct_fields__)


# ----------------------------------------------------------------------------- edgert.toml

EDGERT_TABLES: dict[str, type[msgspec.Struct]] = {
    "broker": BrokerSection,
    "node": NodeSection,
    "serve": ServeSection,
    "http": HttpSection,
}
EDGERT_KEYS = set().union(*map(fields, (*EDGERT_TABLES.values(), EdgertFile, SourceConfig)))
SHIPPED = tomllib.loads((REPO / "device" / "edgert.toml").read_text())
# Keys the shipped file leaves commented out, with the values it suggests.
EXTRA = {
    "serve": {"rate_limit": 5, "rate_burst": 10, "events": True, "hold_while_loading": 10},
    "node": {"share_group": "edgert"},
    "broker": {"keepalive": 30, "reconnect_min": 1, "reconnect_max": 30, "receive_maximum": 64},
    "http": {"listen": "127.0.0.1:8080"},
}
CAMERA = {
    "name": "porch",
    "model": "person",
    "url": "http://camera.local/snapshot.jpg",
    "interval": 2,
    "trigger": "zigbee2mqtt/porch_motion",
    "min_score": 0.6,
    "debounce": 30,
}
MIC = {"name": "kitchen_mic", "model": "silero_vad", "stream": "kitchen-mic-1"}
# Values a key takes, and values no file may give it.
GOOD: dict[str, list[Any]] = {
    "qos": [0, 1, 2],
    "queue_size": [1, 8, 100_000],
    "reply_cache": [1, 64],
    "max_payload": [1, 4096, 1 << 24],
    "max_elements": [1, 1 << 10],
    "stats_interval": [0.25, 1, 3600],
    "rate_limit": [0, 0.5, 20],
    "rate_burst": [0, 1, 2.5],
    "hold_while_loading": [0, 0.5, 60],
    "backend": ["auto", "onnxruntime"],
    "interim_backend": ["onnxruntime", "none"],
    "interim_budget_ms": [0.5, 250, 10_000],
    "protocol": [5, 4, "5", "3.1.1", "311"],
    "port": [1, 1883, 65535],
    "keepalive": [1, 60, 65535],
    "receive_maximum": [1, 20, 65535],
    "max_queued": [65535, 1 << 20],
    "session_expiry": [0, 3600],
    "reconnect_min": [0.1, 2],
    "reconnect_max": [5, 600],
    "models": [[], ["occupancy"]],
    "listen": ["127.0.0.1:8080", "[::1]:9100", "0.0.0.0:1"],
}
BAD: dict[str, list[Any]] = {
    "qos": [-1, 3, 7],
    "queue_size": [0, -1, "big"],
    "reply_cache": [0, -8],
    "max_payload": [0, -1],
    "max_elements": [0],
    "stats_interval": [0, -1, math.inf, math.nan],
    "rate_limit": [-1, -0.5, math.inf],
    "rate_burst": [-1],
    "hold_while_loading": [-0.1, -30, math.inf],
    "backend": ["gpu", "cuda"],
    "interim_backend": ["tensorrt", "auto", ""],
    "interim_budget_ms": [0, -1, math.inf],
    "protocol": [3, 6, "4", "3.1"],
    "port": [0, -1, 65536, 70000],
    "keepalive": [0, -5, 65536],
    "receive_maximum": [0, 65536],
    "max_queued": [0],
    "session_expiry": [-1, 1 << 32],
    "reconnect_min": [0, -1],
    "reconnect_max": [0, -2],
    "models": ["occupancy", [1]],
    "listen": ["8080", "127.0.0.1:0", "h:70000", "http://h:80", 8080],
}


def edgert_base() -> dict[str, Any]:
    data = copy.deepcopy(SHIPPED)
    for name, extra in EXTRA.items():
        data.setdefault(name, {}).update(extra)
    return data


@st.composite
def edgert_files(draw: st.DrawFn) -> Case:
    case = Case(edgert_base())
    if draw(st.booleans()):
        case.data["sources"] = [dict(CAMERA), dict(MIC)]
    mutations = draw(st.lists(st.sampled_from(EDGERT_MUTATIONS), max_size=3))
    for mutate in benign_first(mutations):
        mutate(draw, case)
    return case


def _pick(draw: st.DrawFn, case: Case) -> tuple[str, str]:
    table = draw(st.sampled_from(sorted(EDGERT_TABLES)))
    key = draw(st.sampled_from(sorted(fields(EDGERT_TABLES[table]) - {"url", "password_file"})))
    return table, key


def good_value(draw: st.DrawFn, case: Case) -> None:
    table, key = _pick(draw, case)
    if key in GOOD:
        case.data.setdefault(table, {})[key] = draw(st.sampled_from(GOOD[key]))


def bad_value(draw: st.DrawFn, case: Case) -> None:
    table = draw(st.sampled_from(sorted(EDGERT_TABLES)))
    keys = sorted(fields(EDGERT_TABLES[table]) - {"url", "password_file"})
    key = draw(prefer(sorted(set(keys) & set(BAD)), keys))
    default = getattr(EDGERT_TABLES[table](), key)
    wrong = wrong_type(key, "" if default is None else default)
    if case.refused(f"[{table}] {key}"):
        case.data.setdefault(table, {})[key] = draw(prefer(BAD.get(key, []), wrong))


def prefer(first: list[Any], then: list[Any]) -> st.SearchStrategy[Any]:
    """Mostly one of ``first`` (the values a bound refuses: the rarer find), else of ``then``."""
    if not first:
        return st.sampled_from(then)
    return st.one_of(st.sampled_from(first), st.sampled_from(first), st.sampled_from(then))


def unknown_key(draw: st.DrawFn, case: Case) -> None:
    table = draw(st.sampled_from([*sorted(EDGERT_TABLES), ""]))
    key = draw(unknown_keys(EDGERT_KEYS))
    (case.data.setdefault(table, {}) if table else case.data)[key] = draw(st.sampled_from([1, "x"]))
    case.refuse.append(f"{table} {key}")


def moved_key(draw: st.DrawFn, case: Case) -> None:
    table, key = _pick(draw, case)
    if key in case.moved:
        return
    case.moved.add(key)
    other = draw(st.sampled_from([t for t in sorted(EDGERT_TABLES) if t != table]))
    value = case.data.get(table, {}).pop(key, getattr(EDGERT_TABLES[table](), key))
    if value is None:
        value = "x"
    case.data.setdefault(other, {})[key] = value
    if key not in fields(EDGERT_TABLES[other]):
        case.refuse.append(f"[{other}] {key} (from [{table}])")


def dropped_key(draw: st.DrawFn, case: Case) -> None:
    table, key = _pick(draw, case)
    case.data.get(table, {}).pop(key, None)


def bad_source(draw: st.DrawFn, case: Case) -> None:
    sources = case.data.setdefault("sources", [dict(CAMERA)])
    index = draw(st.integers(0, len(sources) - 1)) if sources else 0
    if not sources:
        sources.append(dict(CAMERA))
    change = draw(
        st.sampled_from(
            [
                {"stream": "mic-2"} if "url" in sources[index] else {"url": "http://cam/x"},
                {"name": "front door"},
                {"interval": -1},
                {"min_score": 1.5},
                {"labels": []},
                {"timeout": 0},
                {"model": ""},
                {"trigger": "a/#/b"} if "url" in sources[index] else {"trigger": "t"},
                {"colour": "red"},
            ]
        )
    )
    sources[index] = {**sources[index], **change}
    case.refuse.append(f"[[sources]][{index}] {next(iter(change))}")


def twice_the_name(draw: st.DrawFn, case: Case) -> None:
    case.data["sources"] = [dict(CAMERA), dict(CAMERA)]
    case.refuse.append("[[sources]][1] name")


BENIGN = (good_value, dropped_key)
EDGERT_MUTATIONS: list[Callable[[st.DrawFn, Case], None]] = [
    good_value,
    good_value,
    bad_value,
    bad_value,
    unknown_key,
    moved_key,
    dropped_key,
    bad_source,
    twice_the_name,
]


def check_daemon_config(config: DaemonConfig) -> None:
    """What the daemon relies on, checked without the schema's help."""

    def whole(value: Any, low: int, high: float = math.inf) -> bool:
        return type(value) is int and low <= value <= high

    def number(value: Any, low: float, strict: bool = False) -> bool:
        return (
            type(value) is float
            and math.isfinite(value)
            and (value > low if strict else value >= low)
        )

    assert whole(config.qos, 0, 2)
    assert all(whole(v, 1) for v in (config.queue_size, config.reply_cache, config.max_payload))
    assert whole(config.max_elements, 1)
    assert number(config.stats_interval, 0, strict=True)
    assert number(config.rate_limit, 0) and number(config.rate_burst, 0)
    assert number(config.hold_while_loading, 0) and config.burst >= 1
    assert isinstance(config.repository, Path) and config.backend in (
        "auto",
        "tensorrt",
        "onnxruntime",
    )
    assert all(isinstance(m, str) for m in config.models) and isinstance(config.models, tuple)
    assert config.http_listen is None or 1 <= split_listen(config.http_listen)[1] <= 65535
    assert all(isinstance(v, str) for v in (config.node, config.prefix, config.reply_prefix))
    assert all(
        isinstance(v, bool) for v in (config.events, config.homeassistant, config.rebuild_stale)
    )
    broker = config.broker
    assert whole(broker.port, 1, 65535) and broker.protocol in (4, 5)
    assert whole(broker.keepalive, 1, 65535) and whole(broker.session_expiry, 0, 2**32 - 1)
    assert whole(broker.receive_maximum, 1, 65535) and broker.receive_maximum <= broker.max_queued
    assert number(broker.reconnect_min, 0, strict=True)
    assert number(broker.reconnect_max, 0, strict=True)
    assert broker.reconnect_min <= broker.reconnect_max
    names = [s.name for s in config.sources]
    assert len(set(names)) == len(names)
    for source in config.sources:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", source.name) and source.model
        assert (source.url is None) != (source.stream is None)
        assert 0 <= source.min_score <= 1 and source.timeout > 0 and source.interval >= 0
        assert source.labels is None or (
            source.labels and all(isinstance(x, str) for x in source.labels)
        )
        if source.url is not None:
            assert source.url.startswith(("http://", "https://"))
            assert source.interval > 0 or source.trigger is not None


@FUZZ
@given(edgert_files())
def test_edgert_toml_is_refused_in_one_line_or_loads_sound(case: Case) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "edgert.toml"
        path.write_text(to_toml(case.data))
        try:
            config = DaemonConfig.load(path)
        except ConfigError as exc:
            assert line_form(path).match(exc.message) and "\n" not in exc.message, exc.message
            event("refused")
            return
    assert not case.refuse, f"accepted despite {case.refuse}"
    event("loaded")
    check_daemon_config(config)


# ------------------------------------------------------------------------------ model.toml

MODEL_TOMLS = [
    *(REPO / "engines" / name / "model.toml" for name in ("occupancy", "person", "silero_vad")),
]
# The tests' own model.toml files (corpus, fuzz and framework models), and the tables they use.
TEST_TOMLS = [
    "[dims]\nbatch = { min = 1, opt = 2, max = 8 }\nseq = [1, 4, 16]\n"
    "[inputs.ids]\nrange = [0, 49]\n",
    '[inputs.sr]\nkind = "constant"\nvalue = 16000\n',
    '[inputs.audio]\nkind = "windowed"\ncontext = 8\nchunk = 32\n[inputs.h]\nkind = "carried"\n'
    'from_output = "hN"\nbatch_axis = 1\ninitial = 0.0\n[state]\nttl = 30\n[preprocess]\n'
    'kind = "audio"\nrate = 16000\nformat = "wav"\n',
    '[inputs.bytes]\nformat = "raw"\n',
    '[dims]\n"x.0" = 4\n[inputs.x]\nshape = ["x.0", 4]\n[outputs.y]\nshape = ["x.0", 3]\n',
    'name = "clf"\nversion = 2\nlabels = ["north", "east", "south"]\n[dims]\n'
    'batch = { min = 1, opt = 1, max = 32 }\n[postprocess]\noutput = "probabilities"\ntop_k = 1\n'
    'softmax = "probabilities"\n[parity]\natol = 1e-3\n[homeassistant]\nkind = "sensor"\n',
    'name = "det"\nlabels = ["a", "b"]\nprecision = "fp16"\n[preprocess]\nkind = "image"\n'
    'size = [64, 64]\nresize = "letterbox"\nmean = [0.5, 0.5, 0.5]\nstd = [0.25, 0.25, 0.25]\n'
    '[postprocess]\ndetect = "yolov8"\nscore_threshold = 0.3\nmax_detections = 10\n'
    "[batching]\nmax_batch = 4\nmax_queue_delay_us = 500\ninstances = 2\nthreads = 1\n"
    "[tensorrt]\nworkspace_mb = 256\noptimization_level = 3\nversion_compatible = true\n"
    "[state]\nttl = 60\nmax_streams = 8\n",
]
MODEL_BASES = [tomllib.loads(p.read_text()) for p in MODEL_TOMLS] + list(
    map(tomllib.loads, TEST_TOMLS)
)
MODEL_BAD: dict[str, list[Any]] = {
    "precision": ["int4", "fp64"],
    "kind": ["streamed", "video", "switch"],
    "top_k": [0, -1],
    "threshold": ["high"],
    "max_batch": [0],
    "instances": [0, -2],
    "threads": [-1],
    "max_queue_delay_us": [-1],
    "off_delay": [0],
    "optimization_level": [6, -1],
    "workspace_mb": [0],
    "dla_core": [-1],
    "rate": [0],
    "pad_value": [256, -1],
    "score_threshold": [1.5, -0.1],
    "iou_threshold": [2],
    "ttl": [0, -1, math.inf],
    "max_streams": [0],
    "chunk": [0],
    "context": [-1],
    "batch_axis": [-1],
    "atol": [-1e-3],
    "range": [[1.0, 0.0], [0.0]],
    "size": [[0, 64], [64]],
    "std": [[1, 0, 1]],
    "resize": ["crop"],
    "format": ["gif", "mp3"],
    "detect": ["yolov9"],
}


def model_tables(data: dict[str, Any]) -> list[tuple[str, ...]]:
    """Paths of the tables in ``data`` whose keys a struct fixes: () is the top level."""
    paths: list[tuple[str, ...]] = [()]
    for name, value in data.items():
        if name in ("inputs", "outputs") and isinstance(value, dict):
            paths += [(name, k) for k, v in value.items() if isinstance(v, dict)]
        elif isinstance(value, dict) and name != "dims":
            paths.append((name,))
    return paths


def table_at(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for step in path:
        data = data[step]
    return data


MODEL_STRUCTS: dict[str, type[msgspec.Struct]] = {
    "inputs": InputConfig,
    "outputs": OutputConfig,
    "parity": ParitySection,
    "postprocess": PostprocessSection,
    "batching": BatchingSection,
    "state": StateSection,
    "homeassistant": HomeAssistantSection,
    "tensorrt": TensorRTSection,
}
PREPROCESS = {"image": ImageSection, "audio": AudioSection}
MODEL_KEYS = set().union(*map(fields, (ModelFile, *MODEL_STRUCTS.values(), *PREPROCESS.values())))


def struct_of(path: tuple[str, ...], table: dict[str, Any]) -> type[msgspec.Struct] | None:
    """The struct whose keys ``table`` (at ``path``) may hold; None: any or none."""
    if not path:
        return ModelFile
    if path[0] == "preprocess":
        return PREPROCESS.get(table.get("kind", ""))
    return MODEL_STRUCTS.get(path[0])


@st.composite
def model_files(draw: st.DrawFn) -> Case:
    case = Case(copy.deepcopy(draw(st.sampled_from(MODEL_BASES))))
    mutations = draw(st.lists(st.sampled_from(MODEL_MUTATIONS), max_size=3))
    for mutate in benign_first(mutations):
        mutate(draw, case)
    return case


def model_bad_value(draw: st.DrawFn, case: Case) -> None:
    tables = model_tables(case.data)
    bounded = [p for p in tables if set(table_at(case.data, p)) & set(MODEL_BAD)]
    path = draw(prefer(bounded, tables))
    table = table_at(case.data, path)
    keys = sorted(k for k in table if not isinstance(table[k], dict) and k != "value")
    if not keys:
        return
    key = draw(prefer(sorted(set(keys) & set(MODEL_BAD)), keys))
    if case.refused(f"{'.'.join(path)} {key}"):
        table[key] = draw(prefer(MODEL_BAD.get(key, []), wrong_type(key, table[key])))


MODEL_GOOD: dict[str, list[Any]] = {
    "precision": ["fp32", "fp16", "int8"],
    "version": ["2", 7],
    "top_k": [1, 3],
    "threshold": [0, 0.9, 1],
    "score_threshold": [0, 1],
    "max_detections": [1, 1000],
    "instances": [1, 4],
    "threads": [0, 2],
    "max_batch": [1, 8],
    "max_queue_delay_us": [0, 10_000],
    "ttl": [0.5, 600],
    "max_streams": [1, 1000],
    "pad_value": [0, 255],
    "resize": ["stretch", "letterbox"],
    "rate": [8000, 48000],
    "optimization_level": [0, 5],
    "workspace_mb": [1, 4096],
    "off_delay": [1, 3600],
    "atol": [0, 0.5],
    "range": [[-1, 1], [0.0, 255.0]],
}


def model_good_value(draw: st.DrawFn, case: Case) -> None:
    path = draw(st.sampled_from(model_tables(case.data)))
    table = table_at(case.data, path)
    keys = sorted(k for k in table if k in MODEL_GOOD)
    if keys:
        key = draw(st.sampled_from(keys))
        table[key] = draw(st.sampled_from(MODEL_GOOD[key]))


def model_unknown_key(draw: st.DrawFn, case: Case) -> None:
    path = draw(st.sampled_from(model_tables(case.data)))
    table = table_at(case.data, path)
    struct = struct_of(path, table)
    if struct is None:
        return
    key = draw(unknown_keys(MODEL_KEYS | set(table)))
    table[key] = draw(st.sampled_from([1, "x", [1, 2]]))
    case.refuse.append(f"{'.'.join(path)} {key}")


def model_moved_key(draw: st.DrawFn, case: Case) -> None:
    tables = model_tables(case.data)
    source, target = draw(st.sampled_from(tables)), draw(st.sampled_from(tables))
    table = table_at(case.data, source)
    keys = sorted(k for k in table if not isinstance(table[k], dict))
    if not keys or source == target:
        return
    key = draw(st.sampled_from(keys))
    if key in case.moved:
        return
    case.moved.add(key)
    goal = table_at(case.data, target)
    goal[key] = table.pop(key)
    struct = struct_of(target, goal)
    if struct is not None and key not in fields(struct) and key != "kind":
        case.refuse.append(f"{'.'.join(target)} {key} (from {'.'.join(source)})")


def model_dropped_key(draw: st.DrawFn, case: Case) -> None:
    path = draw(st.sampled_from(model_tables(case.data)))
    table = table_at(case.data, path)
    if table:
        table.pop(draw(st.sampled_from(sorted(table))))


def model_unknown_table(draw: st.DrawFn, case: Case) -> None:
    name = draw(unknown_keys(MODEL_KEYS))
    case.data[name] = {"top_k": 1}
    case.refuse.append(f"[{name}]")


BENIGN += (model_dropped_key, model_good_value)
MODEL_MUTATIONS: list[Callable[[st.DrawFn, Case], None]] = [
    model_good_value,
    model_good_value,
    model_bad_value,
    model_bad_value,
    model_unknown_key,
    model_moved_key,
    model_dropped_key,
    model_unknown_table,
]


def check_model_config(config: ModelConfig) -> None:
    """What the daemon and the compiler rely on, checked without the schema's help."""
    assert isinstance(config.name, str) and config.name and isinstance(config.version, str)
    assert config.precision in PRECISIONS and all(isinstance(x, str) for x in config.labels)
    for bound in config.dims.values():
        assert (
            all(type(v) is int for v in bound.as_list())
            and 0 <= bound.min <= bound.opt <= bound.max
        )
    for conf in config.inputs.values():
        assert conf.kind in INPUT_KINDS
        assert conf.shape is None or all(
            (type(d) is int and d >= 0) or (isinstance(d, str) and d) for d in conf.shape
        )
        if conf.range is not None:
            assert conf.range[0] < conf.range[1] and all(map(math.isfinite, conf.range))
        if conf.kind == "constant":
            assert conf.value is not None
        if conf.kind == "carried":
            assert isinstance(conf.from_output, str)
        if conf.kind == "windowed":
            assert type(conf.context) is int and conf.context >= 0
            assert type(conf.chunk) is int and conf.chunk >= 1
    pre = config.preprocess
    if isinstance(pre, ImageSection):
        assert pre.size is None or all(type(v) is int and v >= 1 for v in pre.size)
        assert 0 <= pre.pad_value <= 255 and 0 not in pre.std
        assert all(map(math.isfinite, (pre.scale, *pre.mean, *pre.std)))
    elif pre is not None:
        assert type(pre.rate) is int and pre.rate >= 1
    post = config.postprocess
    if post is not None:
        assert sum(v is not None for v in (post.top_k, post.threshold, post.detect)) == 1
        for score in (post.score_threshold, post.iou_threshold):
            assert score is None or 0 <= score <= 1
    batching = BatchSettings.of(config)
    assert batching.instances >= 1 and batching.threads >= 0 and batching.max_queue_delay_us >= 0
    assert batching.max_batch is None or batching.max_batch >= 1
    assert (
        config.state.ttl > 0 and math.isfinite(config.state.ttl) and config.state.max_streams >= 1
    )
    entity = ModelEntity.of(config)
    assert entity.off_delay >= 1
    trt = config.tensorrt
    assert trt.optimization_level is None or 0 <= trt.optimization_level <= 5


@FUZZ
@given(model_files())
def test_model_toml_is_refused_in_one_line_or_loads_sound(case: Case) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "model.toml"
        path.write_text(to_toml(case.data))
        try:
            config = ModelConfig.load(Path(directory))
        except ConfigError as exc:
            assert line_form(path).match(exc.message) and "\n" not in exc.message, exc.message
            event("refused")
            return
    assert not case.refuse, f"accepted despite {case.refuse}"
    event("loaded")
    check_model_config(config)


# ---------------------------------------------------------------------- [serve] for the daemon


@st.composite
def serve_tables(draw: st.DrawFn) -> dict[str, Any]:
    """[serve] tables edgert.toml may hold (drawn from GOOD), which let a one-reading request
    to occupancy through: a payload of a few hundred bytes and 4 elements, a rate of >= 1."""
    keys = ["qos", "queue_size", "reply_cache", "stats_interval", "rate_limit", "rate_burst"]
    keys += ["hold_while_loading", "backend"]
    table = {k: draw(st.sampled_from(GOOD[k])) for k in keys if draw(st.booleans())}
    table["max_payload"] = draw(st.sampled_from([4096, 1 << 20]))
    table["max_elements"] = draw(st.sampled_from([4, 1 << 10]))
    if table.get("rate_limit", 0) and table.get("rate_limit", 0) < 1:
        table["rate_limit"] = 1
    table["events"] = draw(st.booleans())
    table["homeassistant"] = draw(st.booleans())
    return table
