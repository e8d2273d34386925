"""Topics, request envelopes, payload codecs and replies: pure values, no broker, no model."""

from __future__ import annotations

import ast
import base64
import contextlib
import io
import json
import math
import pickle
import struct
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgert import codec, jsonout, protocol, replies
from edgert.codec import PayloadError
from edgert.errors import ConfigError, EdgertError, InputError
from edgert.jsonout import tensor_to_json, to_jsonable
from edgert.onnx.model import ModelIO
from edgert.protocol import (
    PROTOCOL_VERSION,
    Envelope,
    ErrorCode,
    ProtocolError,
    Request,
    RequestTopic,
    Topics,
    catalogue,
    default_node_id,
    detect_format,
    error_code,
    error_reply,
    ok_reply,
    parse_json_request,
    parse_npy,
    peek_envelope,
    sanitize_node_id,
    tensor_request,
)
from edgert.spec import DimRange, DType, TensorSpec

ROOT = Path(__file__).resolve().parents[1]

# One float input with a bounded batch axis; the common case.
ONE = ModelIO(
    inputs=(TensorSpec("x", DType.FLOAT32, ("batch", 4)),),
    outputs=(TensorSpec("y", DType.FLOAT32, ("batch", 2)),),
    dims={"batch": DimRange(1, 1, 8)},
)
# Several inputs of several dtypes, one of them supplied by the daemon (silero-like).
MULTI = ModelIO(
    inputs=(
        TensorSpec("audio", DType.FLOAT32, (1, 3)),
        TensorSpec("ids", DType.INT64, (2,)),
        TensorSpec("mask", DType.BOOL, (2,)),
        TensorSpec("half", DType.FLOAT16, (1,)),
        TensorSpec("sr", DType.INT64, ()),
    ),
    outputs=(TensorSpec("out", DType.FLOAT32, (1,)),),
    dims={},
)
SENT = MULTI.inputs[:4]  # what a device sends: not "sr"


def parse(doc: Any, io_: ModelIO = ONE, **kwargs: Any) -> Request:
    payload = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    return parse_json_request(payload, io_, model="m", **kwargs)


def refused(doc: Any, io_: ModelIO = ONE, **kwargs: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse(doc, io_, **kwargs)
    return info.value


def b64(array: np.ndarray) -> dict[str, Any]:
    little = array.astype(array.dtype.newbyteorder("<"))
    return {
        "dtype": array.dtype.name,
        "shape": list(array.shape),
        "b64": base64.b64encode(little.tobytes()).decode(),
    }


def npy(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version, allow_pickle=True)
    return buf.getvalue()


def npy_raw(header: str, data: bytes = b"", version: tuple[int, int] = (1, 0)) -> bytes:
    """A .npy with a hand-written header (what a hostile or broken device might send)."""
    fmt = "<H" if version == (1, 0) else "<I"
    start = 6 + 2 + struct.calcsize(fmt)
    text = header.encode("latin1")
    text += b" " * (-(start + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(fmt, len(text)) + text + data


# ------------------------------------------------------------------------------- layering, names


def test_error_codes_are_exactly_the_designed_ones() -> None:
    assert [c.value for c in ErrorCode] == [
        "bad_request",
        "bad_input",
        "too_large",
        "no_model",
        "loading",
        "busy",
        "rate_limited",
        "expired",
        "internal",
    ]
    assert PROTOCOL_VERSION == 1


@pytest.mark.parametrize("module", [protocol, replies, codec, jsonout])
def test_exported_names_exist(module: Any) -> None:
    assert all(hasattr(module, name) for name in module.__all__)


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        (
            "edgert/protocol.py",
            {
                "edgert.errors",
                "edgert.spec",
                "edgert.config",
                "edgert.codec",
                "edgert.jsonout",
                "edgert.replies",
                "edgert.topics",
            },
        ),
        ("edgert/replies.py", {"edgert.errors", "edgert.codec", "edgert.jsonout"}),
        ("edgert/topics.py", {"edgert.errors"}),
        ("edgert/codec.py", {"edgert.errors", "edgert.spec", "edgert.config", "edgert.bytecodec"}),
        ("edgert/bytecodec.py", {"edgert.errors", "edgert.spec"}),
        ("edgert/jsonout.py", set()),
    ],
)
def test_layers_import_only_downward(path: str, allowed: set[str]) -> None:
    tree = ast.parse((ROOT / path).read_text())
    imported = set()
    for node in tree.body:  # top level only: the TYPE_CHECKING block is annotations
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    edgert = {m for m in imported if m.startswith("edgert")}
    assert edgert <= allowed
    assert not {m for m in imported if m.split(".")[0] in ("paho", "onnx", "socketserver")}


def test_importing_protocol_does_not_import_paho() -> None:
    code = "import sys, edgert.protocol; assert 'paho' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------ node ids


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("kitchen", "kitchen"),
        ("Jetson-Orin_1", "Jetson-Orin_1"),
        ("jetson.local", "jetson_local"),
        ("a  b..c", "a_b_c"),
        ("__x__", "x"),
        ("-x-", "x"),
        ("a_-_b", "a_-_b"),
        ("wohnzimmer-küche", "wohnzimmer-k_che"),
        ("", "edgert"),
        ("...", "edgert"),
        ("日本", "edgert"),
    ],
)
def test_sanitize_node_id(text: str, node: str) -> None:
    assert sanitize_node_id(text) == node


@given(st.text())
@settings(max_examples=300, derandomize=True, database=None)
def test_sanitized_node_ids_are_valid_and_stable(text: str) -> None:
    node = sanitize_node_id(text)
    assert node and all(c.isascii() and (c.isalnum() or c in "_-") for c in node)
    assert sanitize_node_id(node) == node
    Topics(node=node)  # always accepted


def test_default_node_id_is_the_sanitized_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "orin.home.arpa")
    assert default_node_id() == "orin_home_arpa"


# -------------------------------------------------------------------------------------- topics


def test_node_topics() -> None:
    t = Topics(node="kitchen")
    assert t.status == "edgert/node/kitchen/status"
    assert t.models == "edgert/node/kitchen/models"
    assert t.stats == "edgert/node/kitchen/stats"
    assert t.events("person") == "edgert/node/kitchen/events/person"
    assert t.discovery == "homeassistant/device/kitchen/config"
    assert t.ha_status == "homeassistant/status"
    assert t.reply_root == "edgert/reply/"


def test_subscription_filters() -> None:
    t = Topics(node="n1")
    assert t.node_infer("vad") == "edgert/node/n1/infer/vad/#"
    assert t.node_infer() == "edgert/node/n1/infer/#"
    assert t.pooled_infer("vad") == "edgert/infer/vad/#"
    shared = Topics(node="n1", share_group="home")
    assert shared.pooled_infer("vad") == "$share/home/edgert/infer/vad/#"
    assert shared.node_infer("vad") == "edgert/node/n1/infer/vad/#"  # streams are never shared
    assert t.all_infer() == shared.all_infer() == "edgert/infer/#"
    assert shared.unserved_infer() == "$share/home-unserved/edgert/infer/#"
    assert t.node_topics("models") == "edgert/node/+/models"
    assert t.node_of("edgert/node/other/models", "models") == "other"
    assert t.node_of("edgert/node/other/status", "models") is None
    assert t.node_of("edgert/node/a/b/models", "models") is None
    assert t.node_of("elsewhere/node/a/models", "models") is None


def test_custom_prefixes() -> None:
    t = Topics(node="n", prefix="home/ml", reply_prefix="home/answers", discovery_prefix="ha")
    assert t.reply_root == "home/answers/"
    assert t.status == "home/ml/node/n/status"
    assert t.discovery == "ha/device/n/config"
    assert t.default_reply_topic("k", "m") == "home/answers/k/m"
    assert t.parse_request_topic("home/ml/infer/m/k") == RequestTopic("m", "k", False)
    assert t.parse_request_topic("edgert/infer/m") is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node": "kitchen.1"},
        {"node": ""},
        {"node": "n", "prefix": ""},
        {"node": "n", "prefix": "a//b"},
        {"node": "n", "prefix": "a/+"},
        {"node": "n", "prefix": "#"},
        {"node": "n", "prefix": "$SYS"},
        {"node": "n", "prefix": "a/"},
        {"node": "n", "share_group": "a/b"},
        {"node": "n", "share_group": ""},
        {"node": "n", "share_group": "+"},
        {"node": "n", "reply_prefix": "edgert/infer/"},  # replies would be requests
        {"node": "n", "reply_prefix": "edgert/"},
        {"node": "n", "reply_prefix": "edgert/node/x/"},
        {"node": "n", "reply_prefix": "homeassistant/"},
        {"node": "n", "reply_prefix": "r/#/"},
        {"node": "n", "discovery_prefix": "a/+/b"},
    ],
)
def test_invalid_topics_config_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        Topics(**kwargs)


@pytest.mark.parametrize("model", ["vad", "person-v2", "occupancy_3", "ünï"])
@pytest.mark.parametrize("key", [None, "esp32-1", "7"])
@pytest.mark.parametrize("pinned", [False, True])
def test_request_topic_round_trip(model: str, key: str | None, pinned: bool) -> None:
    t = Topics(node="n1")
    topic = t.request_topic(model, key, pinned=pinned)
    assert t.parse_request_topic(topic) == (model, key, pinned)


@given(
    st.text(st.characters(blacklist_characters="/+#\0"), min_size=1, max_size=20),
    st.none() | st.text(st.characters(blacklist_characters="/+#\0"), min_size=1, max_size=20),
    st.booleans(),
)
@settings(max_examples=300, derandomize=True, database=None)
def test_request_topic_round_trip_property(model: str, key: str | None, pinned: bool) -> None:
    t = Topics(node="n1")
    if model in (".", "..") or key in (".", ".."):
        with pytest.raises(ConfigError):
            t.request_topic(model, key, pinned=pinned)
        return
    assert t.parse_request_topic(t.request_topic(model, key, pinned=pinned)) == (
        model,
        key,
        pinned,
    )


@pytest.mark.parametrize(
    "topic",
    [
        "edgert",
        "edgert/infer",
        "edgert/infer/",
        "edgert/infer//k",
        "edgert/infer/m/",
        "edgert/infer/m/k/extra",
        "edgert/infer/+/k",
        "edgert/infer/m/#",
        "edgert/infer/m+/k",
        "edgert/infer/../k",
        "edgert/infer/m/..",
        "edgert/node/other/infer/m",  # pinned to another daemon
        "edgert/node/n1/infer",
        "edgert/node/n1/status",
        "edgert/reply/k/m",
        "other/infer/m",
        "edgert2/infer/m",
        "$share/g/edgert/infer/m",
        "/edgert/infer/m",
    ],
)
def test_parse_request_topic_rejects(topic: str) -> None:
    assert Topics(node="n1").parse_request_topic(topic) is None


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        ("edgert/reply/k/m", True),
        ("edgert/reply/esp32", True),
        ("edgert/reply/a/b/c/d", True),
        ("edgert/reply/ü", True),
        ("edgert/reply/", False),
        ("edgert/reply", False),
        ("edgert/replyx/k", False),
        ("edgert/infer/m", False),
        ("edgert/node/n1/status", False),
        ("homeassistant/status", False),
        ("other/reply/k", False),
        ("$SYS/x", False),
        ("edgert/reply/+", False),
        ("edgert/reply/#", False),
        ("edgert/reply/a+b", False),
        ("edgert/reply/k#", False),
        ("edgert/reply//k", False),
        ("edgert/reply/k/", False),
        ("edgert/reply/k//m", False),
        ("edgert/reply/..", False),
        ("edgert/reply/../infer/m", False),
        ("edgert/reply/./k", False),
        ("edgert/reply/k\0", False),
        ("edgert/reply/\ud800", False),  # lone surrogate: not UTF-8 encodable
        ("edgert/reply/" + "a" * (65535 - 13), True),
        ("edgert/reply/" + "a" * (65536 - 13), False),
        ("edgert/reply/" + "é" * 32762, False),  # 65537 bytes, fewer characters
    ],
)
def test_reply_allowed(topic: str, allowed: bool) -> None:
    assert Topics(node="n1").reply_allowed(topic) is allowed


def test_default_reply_topic() -> None:
    t = Topics(node="n1")
    assert t.default_reply_topic("esp32-1", "vad") == "edgert/reply/esp32-1/vad"
    assert t.reply_allowed(t.default_reply_topic("esp32-1", "vad"))
    for bad in ("", "a/b", "+", "#", ".."):
        with pytest.raises(ConfigError):
            t.default_reply_topic(bad, "vad")
        with pytest.raises(ConfigError):
            t.request_topic(bad)
        with pytest.raises(ConfigError):
            t.events(bad)
        with pytest.raises(ConfigError):
            t.pooled_infer(bad)


# ------------------------------------------------------------------------------- JSON requests


def test_minimal_request() -> None:
    req = parse({"inputs": {"x": [[1, 2, 3, 4]]}})
    assert req == Request(
        model="m",
        id=None,
        reply_to=None,
        deadline_ms=None,
        stream=None,
        reset=False,
        compact=False,
        inputs=req.inputs,
    )
    assert req.inputs["x"].dtype == np.float32
    np.testing.assert_array_equal(req.inputs["x"], [[1, 2, 3, 4]])
    with pytest.raises(TypeError):
        req.inputs["x"] = np.zeros(1)  # type: ignore[index]


def test_full_envelope() -> None:
    req = parse(
        {
            "v": 1,
            "id": "r-1",
            "reply_to": "edgert/reply/me",
            "deadline_ms": 250,
            "stream": "cam-1",
            "reset": True,
            "compact": True,
            "inputs": {"x": [[0.5] * 4, [1.5] * 4]},
        },
        correlation=b"\x00\x01",
    )
    assert (req.id, req.reply_to, req.deadline_ms) == ("r-1", "edgert/reply/me", 250.0)
    assert (req.stream, req.reset, req.compact, req.correlation) == ("cam-1", True, True, b"\0\1")
    assert req.inputs["x"].shape == (2, 4)


def test_nulls_mean_absent_and_ints_are_ids_kept_as_ints() -> None:
    req = parse(
        {
            "id": 42,
            "stream": 7,
            "reply_to": None,
            "deadline_ms": None,
            "reset": None,
            "compact": None,
            "inputs": [[1, 2, 3, 4]],
        }
    )
    assert (req.id, req.stream, req.reset, req.compact) == (42, "7", False, False)


def test_response_topic_takes_precedence_over_reply_to() -> None:
    req = parse({"reply_to": "edgert/reply/a", "inputs": [[1, 2, 3, 4]]}, response_topic="v5")
    assert req.reply_to == "v5"


def test_one_input_model_takes_a_bare_list() -> None:
    req = parse({"inputs": [[1, 2, 3, 4]]})
    assert list(req.inputs) == ["x"]


def test_several_inputs_and_dtypes() -> None:
    doc = {
        "inputs": {
            "audio": [[0.1, 0.2, 0.3]],
            "ids": [1, 2],
            "mask": [True, False],
            "half": [1.5],
        }
    }
    req = parse(doc, MULTI, request_specs=SENT)
    assert {k: v.dtype.name for k, v in req.inputs.items()} == {
        "audio": "float32",
        "ids": "int64",
        "mask": "bool",
        "half": "float16",
    }


@pytest.mark.parametrize("dtype", [d.value for d in DType])
def test_b64_tensors_of_every_dtype(dtype: str) -> None:
    spec = TensorSpec("t", DType(dtype), (2, 3))
    model = ModelIO((spec,), (), {})
    array = (np.arange(6).reshape(2, 3) % 2).astype(dtype)
    req = parse({"inputs": {"t": b64(array)}}, model)
    np.testing.assert_array_equal(req.inputs["t"], array)
    assert req.inputs["t"].dtype == np.dtype(dtype)
    assert req.inputs["t"].flags.c_contiguous and req.inputs["t"].flags.writeable


def test_b64_is_little_endian_and_cast_within_kind() -> None:
    array = np.array([[1.0, 2.0, 3.0, 4.0]])  # float64 on the wire, float32 model
    req = parse({"inputs": {"x": b64(array)}})
    assert req.inputs["x"].dtype == np.float32
    raw = {"dtype": "int32", "shape": [1], "b64": base64.b64encode(b"\x01\x00\x00\x00").decode()}
    model = ModelIO((TensorSpec("i", DType.INT32, (1,)),), (), {})
    assert parse({"inputs": {"i": raw}}, model).inputs["i"][0] == 1


def test_empty_tensors_take_the_model_dtype() -> None:
    model = ModelIO((TensorSpec("t", DType.INT64, ("n",)),), (), {"n": DimRange(0, 1, 4)})
    req = parse({"inputs": {"t": []}}, model)
    assert req.inputs["t"].dtype == np.int64 and req.inputs["t"].shape == (0,)
    req = parse({"inputs": {"t": b64(np.zeros(0, np.int64))}}, model)
    assert req.inputs["t"].shape == (0,)


def test_nan_and_infinity_are_accepted_for_float_inputs() -> None:
    req = parse(b'{"inputs": [[NaN, Infinity, -Infinity, 1]]}')
    x = req.inputs["x"][0]
    assert math.isnan(x[0]) and x[1] == np.inf and x[2] == -np.inf


def test_integers_beyond_64_bits_read_as_floats() -> None:
    # orjson reads them as the nearest double: a float input takes one, an integer input and an
    # id refuse it (the standard library would give a Python int of any size).
    assert parse({"inputs": [[2**70, 2, 3, 4]]}).inputs["x"][0, 0] == np.float32(2.0**70)
    ints = ModelIO((TensorSpec("t", DType.INT64, (1,)),), (), {})
    assert "has float64 values" in refused({"inputs": [2**70]}, ints).message
    too_big = refused({"id": 2**70, "inputs": [[1, 2, 3, 4]]}).message
    assert "or a 64-bit integer, got 1.1805916207174113e+21, a number beyond 64 bits" in too_big
    assert "beyond" not in refused({"id": 1.5, "inputs": [[1, 2, 3, 4]]}).message
    assert parse({"id": 2**63 - 1, "inputs": [[1, 2, 3, 4]]}).id == 2**63 - 1


@pytest.mark.parametrize("sent", [0, -(2**63), 2**64 - 1, 7, "7", "x" * 128, "é"])
def test_an_id_is_kept_as_sent(sent: int | str) -> None:
    got = parse({"id": sent, "inputs": [[1, 2, 3, 4]]}).id
    assert got == sent and type(got) is type(sent)


@pytest.mark.parametrize("sent", [1.0, 1.5, True, False, None, [], {}, [1], "", "x" * 129])
def test_an_id_of_another_type_is_bad_request_saying_what_is_taken(sent: object) -> None:
    error = refused({"id": sent, "inputs": [[1, 2, 3, 4]]})
    assert error.code is ErrorCode.BAD_REQUEST and error.request_id is None
    assert "id must be a string of 1 to 128 characters or a 64-bit integer, got" in error.message


def test_a_request_with_no_id_key_has_none() -> None:
    assert parse({"inputs": [[1, 2, 3, 4]]}).id is None


def test_peek_envelope_reads_what_it_can_of_a_request() -> None:
    doc = {"id": 3, "reply_to": "edgert/reply/a", "deadline_ms": 50, "inputs": "junk"}
    assert peek_envelope(json.dumps(doc).encode()) == Envelope(3, "edgert/reply/a", 50.0)
    assert peek_envelope(b'{"id": 1.5, "deadline_ms": -1, "x": NaN}') == Envelope()
    assert peek_envelope(b"\x93NUMPY") == Envelope() == peek_envelope(b"{not json")
    # As a request is read: after whitespace or a byte order mark, and NaN tokens in it.
    for head in (b"\n  ", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n"):
        payload = head + b'{"id": "a", "reply_to": "edgert/reply/b", "inputs": [[NaN]]}'
        assert peek_envelope(payload) == Envelope("a", "edgert/reply/b"), head
    assert peek_envelope(b"[1]") == Envelope() == peek_envelope(b"\xef\xbb\xbf")


def test_a_request_after_a_utf8_byte_order_mark_is_read_as_json() -> None:
    # Windows tools (PowerShell's Out-File, Notepad) put one before a file's JSON; RFC 8259 lets
    # a parser ignore it, and a device's request read as not-JSON has no reply topic to be told.
    payload = b'\xef\xbb\xbf{"id": 5, "reply_to": "edgert/reply/w", "inputs": [[1, 2, 3, 4]]}'
    assert detect_format(payload, None) == "json"
    request = parse(payload)
    assert (request.id, request.reply_to) == (5, "edgert/reply/w")
    assert "not a JSON request" in refused(b"\xef\xbb\xbf").message


BAD_REQUEST = [
    (b"", "not a JSON request"),
    (b"{", "not a JSON request"),
    (b"{'id': 1}", "not a JSON request"),
    (b"\xff\xfe\xfa", "not a JSON request"),
    (b'{"inputs": [[1,2,3,4]]} trailing', "not a JSON request"),
    (b"[1, 2]", "is an object"),
    (b'"text"', "is an object"),
    (b"null", "is an object"),
    (b'{"inputs": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "not a JSON request"),
    ({"id": True, "inputs": [[1, 2, 3, 4]]}, "id must be"),
    ({"id": 1.5, "inputs": [[1, 2, 3, 4]]}, "id must be"),
    ({"id": "", "inputs": [[1, 2, 3, 4]]}, "id must be"),
    ({"id": "x" * 129, "inputs": [[1, 2, 3, 4]]}, "id must be"),
    ({"id": ["a"], "inputs": [[1, 2, 3, 4]]}, "id must be"),
    ({"reply_to": 5, "inputs": [[1, 2, 3, 4]]}, "reply_to"),
    ({"reply_to": "", "inputs": [[1, 2, 3, 4]]}, "reply_to"),
    ({"input": [[1, 2, 3, 4]]}, "unknown key(s) input"),
    ({"deadline": 5, "inputs": [[1, 2, 3, 4]]}, "unknown key(s) deadline"),
    ({"v": 2, "inputs": [[1, 2, 3, 4]]}, "protocol version 2"),
    ({"v": True, "inputs": [[1, 2, 3, 4]]}, "protocol version True"),
    ({"v": "1", "inputs": [[1, 2, 3, 4]]}, "protocol version '1'"),
    ({"deadline_ms": 0, "inputs": [[1, 2, 3, 4]]}, "deadline_ms"),
    ({"deadline_ms": -5, "inputs": [[1, 2, 3, 4]]}, "deadline_ms"),
    ({"deadline_ms": "100", "inputs": [[1, 2, 3, 4]]}, "deadline_ms"),
    ({"deadline_ms": True, "inputs": [[1, 2, 3, 4]]}, "deadline_ms"),
    (b'{"deadline_ms": Infinity, "inputs": [[1,2,3,4]]}', "deadline_ms"),
    (b'{"deadline_ms": NaN, "inputs": [[1,2,3,4]]}', "deadline_ms"),
    ({"stream": "", "inputs": [[1, 2, 3, 4]]}, "stream must be"),
    ({"stream": {}, "inputs": [[1, 2, 3, 4]]}, "stream must be"),
    ({"reset": 1, "stream": "s", "inputs": [[1, 2, 3, 4]]}, "reset must be true or false"),
    ({"compact": "yes", "inputs": [[1, 2, 3, 4]]}, "compact must be true or false"),
    ({"reset": True, "inputs": [[1, 2, 3, 4]]}, "reset needs a stream"),
    ({"id": "a"}, "missing inputs"),
    ({"inputs": None}, "missing inputs"),
    ({"inputs": "AAAA"}, "inputs must be an object"),
    ({"inputs": 5}, "inputs must be an object"),
]


@pytest.mark.parametrize(("doc", "fragment"), BAD_REQUEST)
def test_bad_requests(doc: Any, fragment: str) -> None:
    err = refused(doc)
    assert err.code is ErrorCode.BAD_REQUEST
    assert fragment in err.message


def test_nesting_deeper_than_64_is_a_bad_request() -> None:
    deep: Any = 1.0
    for _ in range(65):
        deep = [deep]
    err = refused({"inputs": {"x": deep}})
    assert err.code is ErrorCode.BAD_REQUEST and "deeper than 64" in err.message
    ok: Any = 1.0
    for _ in range(64):
        ok = [ok]
    assert refused({"inputs": {"x": ok}}).code is ErrorCode.BAD_INPUT  # parsed, wrong rank


BAD_INPUT = [
    ({"inputs": {"x": [[1, 2, 3]]}}, "shape [1, 3]"),
    ({"inputs": {"x": [1, 2, 3, 4]}}, "rank 2"),
    ({"inputs": {"x": [[1, 2, 3, 4]] * 9}}, "allowed 1..8"),
    ({"inputs": {"x": [[1, 2], [3]]}}, "not a rectangular array"),
    ({"inputs": {"x": [["a", "b", "c", "d"]]}}, "the model expects float32"),
    ({"inputs": {"x": [[1, None, 3, 4]]}}, "the model expects float32"),
    ({"inputs": {"x": [[{}, 2, 3, 4]]}}, "the model expects float32"),
    ({"inputs": {"x": "text"}}, "must be a nested list"),
    ({"inputs": {"x": None}}, "must be a nested list"),
    ({"inputs": {"x": [[1e300, 2, 3, 4]]}}, "outside float32's range"),
    ({"inputs": {"z": [[1, 2, 3, 4]]}}, "input 'z' does not exist; the model takes: x"),
    ({"inputs": {}}, "missing input(s) x"),
    ({"inputs": {"x": {"dtype": "float32", "shape": [1, 4]}}}, "exactly the keys"),
    ({"inputs": {"x": {"dtype": "float32", "shape": [1, 4], "b64": "", "z": 1}}}, "exactly"),
    ({"inputs": {"x": {"dtype": "complex64", "shape": [1], "b64": "AAAAAAAAAAA="}}}, "dtype"),
    ({"inputs": {"x": {"dtype": "object", "shape": [1], "b64": "AAAAAAAAAAA="}}}, "dtype"),
    ({"inputs": {"x": {"dtype": 5, "shape": [1], "b64": "AAAA"}}}, "dtype"),
    ({"inputs": {"x": {"dtype": "float32", "shape": [-1, 4], "b64": ""}}}, "shape must be"),
    ({"inputs": {"x": {"dtype": "float32", "shape": [True, 4], "b64": ""}}}, "shape must be"),
    ({"inputs": {"x": {"dtype": "float32", "shape": "1,4", "b64": ""}}}, "shape must be"),
    ({"inputs": {"x": {"dtype": "float32", "shape": [1] * 33, "b64": ""}}}, "shape must be"),
    ({"inputs": {"x": {"dtype": "float32", "shape": [1, 4], "b64": 5}}}, "b64 must be a string"),
    ({"inputs": {"x": {"dtype": "float32", "shape": [1, 4], "b64": "AAAA"}}}, "need 16"),
    ({"inputs": {"x": {"dtype": "float32", "shape": [1, 4], "b64": "!" * 24}}}, "invalid base64"),
    ({"inputs": {"x": {"dtype": "float32", "shape": [1, 4], "b64": "é" * 24}}}, "invalid base64"),
    ({"inputs": {"x": {"dtype": "float32", "shape": [1, 4], "b64": "A" * 24}}}, "holds 18"),
    ({"inputs": {"x": {"dtype": "float32", "shape": [1, 4], "b64": "A" * 23 + "="}}}, "holds 17"),
    ({"inputs": {"x": {"dtype": "float32", "shape": [1, 2], "b64": "AAAA\nAAAAAA="}}}, "invalid"),
    ({"inputs": {"x": b64(np.zeros((1, 3), np.float32))}}, "shape [1, 3]"),
]


@pytest.mark.parametrize(("doc", "fragment"), BAD_INPUT)
def test_bad_inputs(doc: Any, fragment: str) -> None:
    err = refused(doc)
    assert err.code is ErrorCode.BAD_INPUT
    assert fragment in err.message


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ({"inputs": {"audio": [[1, 2, 3]], "ids": [1.5, 2], "mask": [1, 0], "half": [1]}}, "ids"),
        ({"inputs": {"audio": [[1, 2, 3]], "ids": [1, 2], "mask": [1, 0], "half": [1]}}, "mask"),
        (
            b'{"inputs": {"audio": [[1,2,3]], "ids": [NaN, 2], "mask": [true,false], "half": [1]}}',
            "float64 values, the model expects int64",
        ),
        (
            {"inputs": {"audio": [[1, 2, 3]], "ids": [1, 2], "mask": [True, True], "half": [7e4]}},
            "outside float16's range",
        ),
        (
            {"inputs": {"audio": [[1, 2, 3]], "ids": [1, 2**63], "mask": [True], "half": [1]}},
            "ids",
        ),
        (
            {
                "inputs": {
                    "audio": [[1, 2, 3]],
                    "ids": b64(np.zeros(2, np.float32)),
                    "mask": [True, False],
                    "half": [1],
                }
            },
            "float32 values, the model expects int64",
        ),
        ({"inputs": [[1, 2, 3]]}, "the model takes 4 inputs"),
        ({"inputs": {"sr": 16000}}, "input 'sr' is supplied by the daemon"),
        ({"inputs": {"audio": [[1, 2, 3]]}}, "missing input(s) ids, mask, half"),
        (
            {
                "inputs": {
                    "audio": [[1, 2, 3]],
                    "ids": [1, 2],
                    "half": [1],
                    "mask": {"dtype": "bool", "shape": [2], "b64": "AQI="},
                }
            },
            "bool bytes other than 0 and 1",
        ),
    ],
)
def test_bad_inputs_of_several_dtypes(doc: Any, fragment: str) -> None:
    err = refused(doc, MULTI, request_specs=SENT)
    assert err.code is ErrorCode.BAD_INPUT
    assert fragment in err.message


def test_too_large() -> None:
    err = refused({"inputs": [[1.0] * 4] * 3}, max_elements=8)
    assert err.code is ErrorCode.TOO_LARGE and "limit is 8" in err.message
    huge = {"dtype": "float32", "shape": [1 << 20, 1 << 20], "b64": ""}
    err = refused({"inputs": {"x": huge}})  # refused before any base64 is decoded
    assert err.code is ErrorCode.TOO_LARGE
    # The limit is for all inputs together.
    doc = {"inputs": {"audio": [[1, 2, 3]], "ids": [1, 2], "mask": [True, False], "half": [1]}}
    assert parse(doc, MULTI, request_specs=SENT, max_elements=8).inputs
    err = refused(doc, MULTI, request_specs=SENT, max_elements=7)
    assert err.code is ErrorCode.TOO_LARGE


def test_errors_carry_the_request_id_and_reply_to() -> None:
    err = refused({"id": "r9", "reply_to": "edgert/reply/me", "inputs": {"z": 1}})
    assert (err.request_id, err.reply_to) == ("r9", "edgert/reply/me")
    err = refused({"id": 3, "reply_to": 5, "inputs": [[1, 2, 3, 4]]}, response_topic="t")
    assert (err.request_id, err.reply_to) == (3, "t")
    err = refused({"id": 3, "deadline_ms": -1}, response_topic="t")
    assert (err.request_id, err.reply_to) == (3, "t")
    err = refused({"id": True, "reply_to": "edgert/reply/me", "inputs": [[1, 2, 3, 4]]})
    assert (err.request_id, err.reply_to) == (None, "edgert/reply/me")
    assert refused(b"{").request_id is None


# --------------------------------------------------------------------------------- .npy payloads


@pytest.mark.parametrize("dtype", [d.value for d in DType])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_npy_round_trip(dtype: str, order: Literal["C", "F"], byteorder: Literal["<", ">"]) -> None:
    array = np.asarray(
        np.arange(12).reshape(3, 4) % 2, dtype=np.dtype(dtype).newbyteorder(byteorder)
    )
    array = np.asarray(array, order=order)
    out = parse_npy(npy(array))
    np.testing.assert_array_equal(out, array)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.flags.c_contiguous and out.flags.writeable


def test_npy_versions_and_empty_arrays() -> None:
    np.testing.assert_array_equal(parse_npy(npy(np.ones(3, np.float32), (2, 0))), np.ones(3))
    assert parse_npy(npy(np.zeros((0, 5), np.int8))).shape == (0, 5)
    assert parse_npy(npy(np.float32(2.5).reshape(()))).shape == ()


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (b"", "no \\x93NUMPY magic"),
        (b"{}", "no \\x93NUMPY magic"),
        (b"\x93NUMP", "no \\x93NUMPY magic"),
        (b"\x93NUMPY", "invalid .npy header"),
        (b"\x93NUMPY\x01", "invalid .npy header"),
        (b"\x93NUMPY\x01\x00\xff", "invalid .npy header"),
        (b"\x93NUMPY\x01\x00\xff\x00{'descr'", "invalid .npy header"),
        (npy(np.ones(4, np.float32))[:60], "invalid .npy header"),
        (npy(np.ones(4, np.float32))[:-1], "truncated"),
        (npy(np.ones(4, np.float32))[:-16], "truncated"),
        (npy(np.ones(4, np.float32)) + b"\0", "trailing bytes"),
        (
            npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", version=(3, 0)),
            "format (3, 0) is not supported",
        ),
        (b"\x93NUMPY\x09\x00" + b"\0" * 120, "format (9, 0) is not supported"),
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }"), "shape"),
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': [2], }"), "header"),
        (npy_raw("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }"), "header"),
        (npy_raw("{'descr': '<f4', 'shape': (2,), }"), "header"),
        (npy_raw("{'descr': 'zz', 'fortran_order': False, 'shape': (2,), }"), "header"),
        (npy_raw("[1, 2, 3]"), "header"),
        (npy_raw("__import__('os').system('false')"), "header"),
        (npy_raw("{'descr': '<f4', 'fortran_order': False, 'shape': (" * 300), "header"),
        (npy_raw("x" * 20000), "header"),
    ],
)
def test_npy_bad_request(payload: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_npy(payload)
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert fragment in info.value.message


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        (npy(np.array([1, None], dtype=object)), "object array"),
        (npy(np.zeros(2, dtype=[("a", "<f4"), ("b", "O")])), "object array"),
        (npy(np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])), "supported:"),
        (npy(np.array(["ab", "c"])), "supported:"),
        (npy(np.zeros(2, np.complex64)), "supported:"),
        (npy(np.zeros(2, "datetime64[s]")), "supported:"),
        (npy(np.zeros(2, "S3")), "supported:"),
        (
            npy_raw("{'descr': '|b1', 'fortran_order': False, 'shape': (2,), }", b"\x01\x07"),
            "bool bytes other than 0 and 1",
        ),
    ],
)
def test_npy_bad_input(payload: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_npy(payload)
    assert info.value.code is ErrorCode.BAD_INPUT
    assert fragment in info.value.message


def test_npy_never_unpickles(monkeypatch: pytest.MonkeyPatch) -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("unpickled!",))

    payload = npy(np.array([Boom()], dtype=object))
    assert b"unpickled!" in payload

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    with pytest.raises(ProtocolError) as info:
        parse_npy(payload)
    assert info.value.code is ErrorCode.BAD_INPUT


def test_npy_too_large() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_npy(npy(np.zeros((4, 4), np.float32)), max_elements=15)
    assert info.value.code is ErrorCode.TOO_LARGE
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 100000, 100000), }"
    with pytest.raises(ProtocolError) as info:
        parse_npy(npy_raw(header))
    assert info.value.code is ErrorCode.TOO_LARGE


def test_tensor_request() -> None:
    req = tensor_request(
        parse_npy(npy(np.ones((2, 4), np.float64))),
        ONE,
        model="m",
        id="k1",
        stream="s",
        reset=True,
        reply_to="edgert/reply/k1/m",
        correlation=b"c",
    )
    assert req.inputs["x"].dtype == np.float32 and req.inputs["x"].shape == (2, 4)
    assert (req.id, req.stream, req.reset, req.reply_to, req.correlation, req.compact) == (
        "k1",
        "s",
        True,
        "edgert/reply/k1/m",
        b"c",
        False,
    )
    model = ModelIO(MULTI.inputs, MULTI.outputs, {})
    single = tensor_request(np.zeros((1, 3), np.float32), model, model="m", request_specs=SENT[:1])
    assert list(single.inputs) == ["audio"]


@pytest.mark.parametrize(
    ("kwargs", "code", "fragment"),
    [
        ({"array": np.zeros((1, 3), np.float32)}, ErrorCode.BAD_INPUT, "shape [1, 3]"),
        ({"array": np.full((1, 4), "a")}, ErrorCode.BAD_INPUT, "the model expects float32"),
        ({"array": np.zeros((9, 4), np.float32)}, ErrorCode.BAD_INPUT, "allowed 1..8"),
        ({"io_": MULTI}, ErrorCode.BAD_INPUT, "use JSON"),
        ({"reset": True}, ErrorCode.BAD_REQUEST, "reset needs a stream"),
        ({"stream": "x" * 200}, ErrorCode.BAD_REQUEST, "stream must be"),
    ],
)
def test_tensor_request_errors(kwargs: dict[str, Any], code: ErrorCode, fragment: str) -> None:
    array = kwargs.pop("array", np.zeros((1, 4), np.float32))
    io_ = kwargs.pop("io_", ONE)
    with pytest.raises(ProtocolError) as info:
        tensor_request(array, io_, model="m", id="k", reply_to="edgert/reply/k", **kwargs)
    assert info.value.code is code and fragment in info.value.message
    assert (info.value.request_id, info.value.reply_to) == ("k", "edgert/reply/k")


def test_tensor_request_checks_the_id() -> None:
    with pytest.raises(ProtocolError) as info:
        tensor_request(np.zeros((1, 4), np.float32), ONE, model="m", id="", reply_to="r")
    assert info.value.code is ErrorCode.BAD_REQUEST
    assert (info.value.request_id, info.value.reply_to) == (None, "r")


# ------------------------------------------------------------------------------ payload formats

NPY = npy(np.ones(2, np.float32))


@pytest.mark.parametrize(
    ("payload", "content_type", "declared", "fmt"),
    [
        (b"{}", "application/json", None, "json"),
        (b"{}", "Application/JSON; charset=utf-8", "jpeg", "json"),
        (NPY, "application/x-npy", None, "npy"),
        (b"\xff\xd8", "image/jpeg", None, "jpeg"),
        (b"\x89PNG", "image/png", "raw", "png"),
        (b"RIFF", "audio/wav", None, "wav"),
        (b"RIFF", "audio/x-wav", None, "wav"),
        (b"{raw", "application/octet-stream", "raw", "raw"),
        (b"{raw", None, "raw", "raw"),  # a raw payload may start with '{'
        (b"\xff\xd8", None, "jpeg", "jpeg"),
        (b"{}", None, "png", "png"),  # the declared format comes before sniffing
        (b"RIFF", None, "wav", "wav"),
        (NPY, None, "npy", "npy"),
        (b'  \n\t{"inputs": 1}', None, None, "json"),
        (b"{}", None, "json", "json"),
        (NPY, None, None, "npy"),
        (NPY, None, "json", "npy"),
        (b"{", "", None, "json"),  # an empty content type is no content type
    ],
)
def test_detect_format(
    payload: bytes, content_type: str | None, declared: str | None, fmt: str
) -> None:
    assert detect_format(payload, content_type, declared) == fmt


@pytest.mark.parametrize(
    ("payload", "content_type", "declared", "fragment"),
    [
        (b"\x00\x01", "application/octet-stream", None, "declare a raw input"),
        (b"\x00\x01", "application/octet-stream", "jpeg", "declare a raw input"),
        (b"{}", "text/plain", None, "is not served"),
        (b"{}", "application/xml", "raw", "is not served"),
        (b"\xff\xd8\xff", None, None, "neither a JSON object nor .npy"),
        (b"[1, 2]", None, None, "neither a JSON object nor .npy"),
        (b"", None, None, "neither a JSON object nor .npy"),
        (b"  ", None, "json", "neither a JSON object nor .npy"),
    ],
)
def test_detect_format_refuses(
    payload: bytes, content_type: str | None, declared: str | None, fragment: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        detect_format(payload, content_type, declared)
    assert info.value.code is ErrorCode.BAD_REQUEST and fragment in info.value.message


def test_detect_format_unknown_declared_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="one of json"):
        detect_format(b"{}", None, "gif")


# The daemon's InputsDecoder takes a short path for one float input: near its limits (sizes at
# and past the bounds, values past float16/float32's range, NaN, ints, bools, junk) it must
# answer exactly as decode_inputs does.
SHORT = [
    ModelIO((TensorSpec("x", dt, ("batch", 3)),), (), {"batch": DimRange(1, 1, 4)})
    for dt in (DType.FLOAT16, DType.FLOAT32, DType.FLOAT64)
] + [ModelIO((TensorSpec("x", DType.FLOAT32, (2, "n")),), (), {})]
short_values = (
    st.floats()
    | st.sampled_from([65504.0, 65520.0, 3.4028234e38, 3.5e38, 1e300, -1e300, 2**63, 2**64])
    | st.integers(-(2**64), 2**64)
    | st.booleans()
    | st.sampled_from([None, "1", [], [1.0]])
)


@st.composite
def short_cases(draw: st.DrawFn) -> tuple[ModelIO, Any]:
    """A model of SHORT and an ``inputs`` value: half the time of a shape that fits it (so the
    short path's arrays are compared, not only its fallbacks), else one near it."""
    io_ = draw(st.sampled_from(SHORT))
    if draw(st.booleans()):  # fits: fixed dims as they are, named ones within their bounds
        dims = io_.dims
        shape = [
            d
            if isinstance(d, int)
            else draw(st.integers(dims[d].min, dims[d].max))
            if d in dims
            else draw(st.integers(0, 5))
            for d in io_.inputs[0].shape
        ]
    else:
        rank = draw(st.sampled_from([2, 2, 1, 3]))
        shape = draw(st.lists(st.sampled_from([2, 3, 1, 4, 5, 0]), min_size=rank, max_size=rank))
    plain = st.floats(-10, 10) | st.integers(-5, 5)  # half the time, the usual request
    leaf = plain if draw(st.booleans()) else short_values

    def nest(dims: list[int]) -> st.SearchStrategy[Any]:
        if not dims:
            return leaf
        return st.lists(nest(dims[1:]), min_size=dims[0], max_size=dims[0])

    return io_, draw(nest(shape))


@given(short_cases(), st.sampled_from([6, 1 << 20]))
@settings(max_examples=3000, derandomize=True, database=None)
def test_the_short_path_decodes_as_decode_inputs(case: tuple[ModelIO, Any], limit: int) -> None:
    io_, raw = case

    def outcome(call: Any) -> Any:
        try:
            return call()
        except PayloadError as exc:
            return exc

    theirs = outcome(lambda: codec.decode_inputs(raw, io_.inputs, io_, limit))
    ours = outcome(lambda: codec.InputsDecoder(io_.inputs, io_)(raw, limit))
    if isinstance(theirs, PayloadError):
        assert isinstance(ours, PayloadError) and ours.message == theirs.message
        assert ours.code == theirs.code
    else:
        assert not isinstance(ours, PayloadError), ours.message
        assert list(ours) == list(theirs)
        for name, array in theirs.items():
            assert ours[name].dtype == array.dtype
            np.testing.assert_array_equal(ours[name], array)


def test_the_short_path_is_taken() -> None:
    """The short path is there: a plain request takes it, a huge value does not."""
    decoder = codec.InputsDecoder(SHORT[1].inputs, SHORT[1])
    assert decoder._short([[1, 2.5, 3]], 100) is not None
    assert decoder._short([[1, 2.5, 3.5e38]], 100) is None  # past float32: the general path
    assert decoder._short([[1, 2.5, 3]] * 5, 100) is None  # past the batch bound
    half = codec.InputsDecoder(SHORT[0].inputs, SHORT[0])
    assert half._short([[0, 0, 65520]], 100) is None  # an int past float16's range: general


# ------------------------------------------------------------------------------------ replies


def test_ok_reply() -> None:
    outputs: dict[str, np.ndarray] = {
        "probs": np.array([[0.1, 0.7, np.nan, np.inf]], np.float32),
        "ids": np.array([3, -1], np.int64),
        "flag": np.array([True]),
        "half": np.array([0.1], np.float16),
        "wide": np.array([0.1, -np.inf]),
    }
    result = {"label": "person", "score": np.float32(0.7), "boxes": (np.int32(1), 2.5, math.nan)}
    payload = ok_reply(
        "r1", "det", "3", outputs, result, {"queue": 0.12345, "infer": 2, "total": 3}
    )
    assert payload.isascii() and b" " not in payload
    reply = json.loads(payload)
    assert list(reply) == ["id", "ok", "model", "version", "outputs", "result", "latency_ms"]
    assert reply["id"] == "r1" and reply["ok"] is True
    assert (reply["model"], reply["version"]) == ("det", "3")
    assert reply["outputs"] == {
        "probs": [[0.1, 0.7, None, None]],
        "ids": [3, -1],
        "flag": [True],
        "half": [0.1],
        "wide": [0.1, None],
    }
    assert b"0.10000000149" not in payload  # float32 written compactly
    assert reply["result"] == {"label": "person", "score": 0.7, "boxes": [1, 2.5, None]}
    assert reply["latency_ms"] == {"queue": 0.123, "infer": 2.0, "total": 3.0}


def test_a_reply_takes_the_memory_of_its_size() -> None:
    """The ledger keeps 4,096 replies: each must hold its own bytes, not an encoder's buffer
    (orjson's output keeps 4 KiB for a 124-byte reply)."""
    import tracemalloc

    outputs = {"p": np.array([[0.1, 0.9]], np.float32)}
    tracemalloc.start()
    try:
        kept = [ok_reply(f"r{i}", "m", "1", outputs, {"state": True}) for i in range(1000)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held / len(kept) < 2 * max(len(r) for r in kept) + 100


def test_compact_reply_drops_outputs_and_latency() -> None:
    payload = ok_reply(
        None, "vad", "1", {"p": np.zeros((1, 1000), np.float32)}, 0.93, {"total": 1}, compact=True
    )
    assert json.loads(payload) == {
        "id": None,
        "ok": True,
        "model": "vad",
        "version": "1",
        "result": 0.93,
    }
    assert len(payload) < 100


def test_a_reply_names_the_backend_that_answered_even_compact() -> None:
    outputs = {"p": np.array([[0.25]], np.float32)}
    full = json.loads(ok_reply("r1", "vad", "1", outputs, None, {"total": 1}, backend="tensorrt"))
    assert list(full)[:5] == ["id", "ok", "model", "version", "backend"]
    assert full["backend"] == "tensorrt"
    compact = json.loads(
        ok_reply("r1", "vad", "1", outputs, 0.5, compact=True, backend="onnxruntime")
    )
    assert compact["backend"] == "onnxruntime" and "outputs" not in compact
    assert "backend" not in json.loads(ok_reply("r1", "vad", "1", outputs))


def test_result_is_null_without_one_and_odd_strings_survive() -> None:
    reply = json.loads(ok_reply("\ud800", "m", "1", {}, None))
    assert reply["result"] is None and "latency_ms" not in reply and reply["outputs"] == {}


def test_error_reply() -> None:
    payload = error_reply("r1", ErrorCode.BUSY, "queue for 'vad' is full (64)")
    assert payload == (
        b'{"id":"r1","ok":false,"error":{"code":"busy","message":"queue for \'vad\' is full (64)"}}'
    )
    long = json.loads(error_reply(None, ErrorCode.BAD_INPUT, "é" * 5000))
    assert long["id"] is None and len(long["error"]["message"]) == 400
    assert long["error"]["message"].endswith("...")


@pytest.mark.parametrize("code", list(ErrorCode))
def test_error_reply_for_every_code(code: ErrorCode) -> None:
    assert json.loads(error_reply(None, code, "m"))["error"]["code"] == code.value


def test_error_code_mapping() -> None:
    assert error_code(ProtocolError(ErrorCode.EXPIRED, "late")) is ErrorCode.EXPIRED
    assert error_code(InputError("bad")) is ErrorCode.BAD_INPUT
    assert error_code(PayloadError("too_large", "big")) is ErrorCode.TOO_LARGE
    assert error_code(ConfigError("x")) is ErrorCode.INTERNAL
    assert error_code(RuntimeError("x")) is ErrorCode.INTERNAL


def _hand_mappings(tree: ast.AST) -> list[int]:
    """Lines that turn an error into a protocol code by hand: ``ErrorCode(...)`` built from a
    value, or an error's ``.code`` compared with a protocol code."""
    codes = {code.value for code in ErrorCode}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("ErrorCode"):
            found.append(node.lineno)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            named = any(isinstance(x, ast.Attribute) and x.attr == "code" for x in sides)
            if named and any(isinstance(x, ast.Constant) and x.value in codes for x in sides):
                found.append(node.lineno)
    return found


def test_errors_become_codes_only_in_error_code() -> None:
    """One mapping from exceptions to error codes (replies.error_code); the daemon, the decoders
    and the client use it rather than one of their own."""
    assert _hand_mappings(ast.parse('code = ErrorCode(exc.code)\nif exc.code == "bad_input": 0'))
    found = {
        str(path.relative_to(ROOT)): lines
        for path in sorted((ROOT / "edgert").rglob("*.py"))
        if path.name != "replies.py" and (lines := _hand_mappings(ast.parse(path.read_text())))
    }
    assert found == {}


def test_protocol_error_is_an_edgert_error() -> None:
    err = ProtocolError(ErrorCode.BUSY, "full")
    assert isinstance(err, EdgertError) and err.message == "full" and err.code == "busy"


def test_catalogue() -> None:
    entry = {
        "name": "vad",
        "version": "5",
        "backend": "onnxruntime",
        "precision": "fp32",
        "io": ONE.to_dict(),
        "parity": {"max_abs": np.float32(1e-6), "ok": np.bool_(True)},
    }
    doc = json.loads(catalogue("kitchen", [entry]))
    assert doc["v"] == 1 and doc["node"] == "kitchen"
    assert doc["models"][0]["io"]["dims"] == {"batch": [1, 1, 8]}
    assert doc["models"][0]["parity"] == {"max_abs": 1e-6, "ok": True}


def test_to_jsonable_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError):
        to_jsonable({"x": object()})
    assert to_jsonable({1: (np.str_("a"), np.uint8(3))}) == {"1": ["a", 3]}


@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=50))
@settings(max_examples=500, derandomize=True, database=None)
def test_float32_outputs_read_back_exactly(values: list[float]) -> None:
    array = np.array(values, np.float32)
    back = np.array(json.loads(json.dumps(tensor_to_json(array))), np.float32)
    np.testing.assert_array_equal(back, array)
    for ours, theirs in zip(tensor_to_json(array), array, strict=True):
        if 1e-15 < abs(theirs) < 1e15:  # where 10**p is exact, as short as numpy's shortest
            assert len(repr(ours)) <= len(repr(float(str(theirs))))


def test_every_float16_reads_back_exactly() -> None:
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    finite = every[np.isfinite(every)]
    back = np.array(json.loads(json.dumps(tensor_to_json(finite))), np.float16)
    np.testing.assert_array_equal(back, finite)


# ------------------------------------------------------- arbitrary bytes: a result or ProtocolError

FUZZ = settings(
    max_examples=2500,
    derandomize=True,
    database=None,
    deadline=timedelta(seconds=1),
    suppress_health_check=[HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=30,
)
numbers = st.floats(width=32) | st.integers(-(2**70), 2**70) | st.booleans()


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly (7 in 8) a valid value, else any JSON value at all."""
    return st.integers(0, 7).flatmap(lambda i: valid if i else json_values)


# Mostly right for the model: rows of 4 numbers, a batch of 1 to 8.
one_tensor = field(
    st.lists(st.lists(numbers, min_size=4, max_size=4), min_size=1, max_size=8)
) | st.lists(st.lists(numbers, max_size=5), max_size=9)
multi_inputs = st.fixed_dictionaries(
    {
        "audio": field(st.lists(st.lists(numbers, min_size=3, max_size=3), min_size=1, max_size=1)),
        "ids": field(st.lists(st.integers(-(2**64), 2**64), min_size=2, max_size=2)),
        "mask": field(st.lists(st.booleans(), min_size=2, max_size=2)),
        "half": field(st.lists(numbers, min_size=1, max_size=1)),
    },
    optional={"sr": json_values, "other": json_values},
)
ids = st.text(min_size=1, max_size=128) | st.integers()


def structured(inputs: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {"inputs": field(inputs)},
        optional={
            "v": field(st.just(1)),
            "id": field(ids),
            "reply_to": field(st.text(min_size=1)),
            "deadline_ms": field(st.floats(min_value=1e-3, max_value=1e9) | st.integers(1)),
            "stream": field(ids),
            "reset": field(st.booleans()),
            "compact": field(st.booleans()),
        },
    )


garbage = st.dictionaries(st.sampled_from(["id", "inputs", "v", "reset", "extra"]), json_values)
requests = st.one_of(
    st.tuples(structured(one_tensor | st.fixed_dictionaries({"x": one_tensor})), st.just(ONE)),
    st.tuples(structured(multi_inputs), st.just(MULTI)),
    st.tuples(garbage, st.sampled_from([ONE, MULTI])),
)


def _assert_valid(req: Request, specs: tuple[TensorSpec, ...], io_: ModelIO) -> None:
    assert req.model == "m" and set(req.inputs) == {s.name for s in specs}
    for spec in specs:
        spec.check(req.inputs[spec.name], io_.dims)
    assert (
        req.id is None
        or (type(req.id) is str and 0 < len(req.id) <= 128)
        or (type(req.id) is int and -(2**63) <= req.id < 2**64)
    )
    assert req.deadline_ms is None or req.deadline_ms > 0
    assert not req.reset or req.stream is not None


@given(st.binary(max_size=512))
@FUZZ
def test_parse_json_request_on_arbitrary_bytes(payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        _assert_valid(parse_json_request(payload, ONE, model="m"), ONE.inputs, ONE)


@given(requests)
@FUZZ
def test_parse_json_request_on_arbitrary_envelopes(case: tuple[dict[str, Any], ModelIO]) -> None:
    doc, io_ = case
    payload = json.dumps(doc).encode()
    specs = SENT if io_ is MULTI else io_.inputs
    with contextlib.suppress(ProtocolError):
        req = parse_json_request(payload, io_, model="m", request_specs=specs, max_elements=64)
        _assert_valid(req, specs, io_)


npy_like = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(lambda b: b"\x93NUMPY" + b),
    st.tuples(
        st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00"]), st.binary(max_size=300)
    ).map(lambda t: b"\x93NUMPY" + t[0] + t[1]),
    st.tuples(
        st.sampled_from(["<f4", ">i8", "|b1", "<f2", "|O", "<U2", "|u1", "[('a', '<f4')]"]),
        st.booleans(),
        st.lists(st.integers(-2, 5), max_size=3),
        st.binary(max_size=100),
    ).map(
        lambda t: npy_raw(
            f"{{'descr': {t[0]!r}, 'fortran_order': {t[1]}, 'shape': {tuple(t[2])}, }}", t[3]
        )
    ),
    st.tuples(st.sampled_from([np.float32, np.int64, np.bool_, np.uint8]), st.integers(0, 40)).map(
        lambda t: npy(np.zeros(t[1] % 7, t[0]))[: max(0, 128 + t[1] - 20)]
    ),
)


@given(npy_like)
@FUZZ
def test_parse_npy_on_arbitrary_bytes(payload: bytes) -> None:
    try:
        array = parse_npy(payload, max_elements=1000)
    except ProtocolError:
        return
    assert isinstance(array, np.ndarray) and array.dtype.isnative and array.flags.c_contiguous
    DType.of(array)


def test_shared_batch_axis_must_agree_across_inputs() -> None:
    # Like silero: audio [batch, 3] and state [2, batch, 4] share one batch axis.
    shared = ModelIO(
        inputs=(
            TensorSpec("audio", DType.FLOAT32, ("batch", 3)),
            TensorSpec("state", DType.FLOAT32, (2, "batch", 4)),
        ),
        outputs=(),
        dims={"batch": DimRange(1, 1, 8)},
    )
    ok = {"audio": np.zeros((2, 3)).tolist(), "state": np.zeros((2, 2, 4)).tolist()}
    assert parse({"inputs": ok}, shared).inputs["state"].shape == (2, 2, 4)
    bad = {"audio": np.zeros((2, 3)).tolist(), "state": np.zeros((2, 1, 4)).tolist()}
    with pytest.raises(ProtocolError) as info:
        parse({"inputs": bad}, shared)
    assert info.value.code is ErrorCode.BAD_INPUT
    assert "axis 'batch' is 2 in input 'audio' but 1 in input 'state'" in info.value.message


# ------------------------------------------------------------------------------------ raw bytes


def test_raw_bytes_fill_a_fixed_input_little_endian() -> None:
    from edgert.codec import decode_raw

    spec = TensorSpec("pcm", DType.INT32, (1, 3))
    payload = np.array([[1, -2, 70000]], "<i4").tobytes()
    np.testing.assert_array_equal(decode_raw(payload, spec, {}), [[1, -2, 70000]])
    with pytest.raises(
        PayloadError, match=r"raw payload is 11 bytes; input 'pcm' int32\[1, 3\] takes 12"
    ):
        decode_raw(payload[:-1], spec, {})


def test_raw_bytes_tell_one_dynamic_dim_within_its_bounds() -> None:
    from edgert.codec import decode_raw

    spec = TensorSpec("samples", DType.UINT8, (1, "n"))
    bounds = {"n": DimRange(1, 8, 16)}
    assert decode_raw(bytes(range(10)), spec, bounds).shape == (1, 10)
    with pytest.raises(PayloadError, match=r"axis 1 \('n'\) is 17, allowed 1..16"):
        decode_raw(bytes(17), spec, bounds)
    two = TensorSpec("img", DType.UINT8, ("h", "w"))
    with pytest.raises(PayloadError, match="cannot tell the shape"):
        decode_raw(bytes(4), two, {"h": DimRange(1, 2, 4), "w": DimRange(1, 2, 4)})


def test_catalogue_lists_every_model_with_its_state_sorted_by_name() -> None:
    doc = json.loads(
        catalogue(
            "n1",
            [
                {"name": "vad", "state": "failed", "reason": "stale"},
                {"name": "cam", "state": "loading"},
                {"name": "amp", "state": "ready", "version": "2"},
            ],
        )
    )
    assert [m["name"] for m in doc["models"]] == ["amp", "cam", "vad"]
    assert doc["models"][2] == {"name": "vad", "state": "failed", "reason": "stale"}
    assert "failed" not in doc


@pytest.mark.parametrize("size", [1, 2, 47, 48, 49, 500])  # both sides of the small-array path
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_floats_in_replies_are_short_and_read_back_exactly(size: int, dtype: type) -> None:
    rng = np.random.default_rng(size)
    values = (rng.standard_normal(size) * 10.0 ** rng.integers(-6, 4, size)).astype(dtype)
    values[0] = dtype(0.1)
    encoded = json.loads(json.dumps(tensor_to_json(values)))
    np.testing.assert_array_equal(np.array(encoded, dtype), values)
    assert repr(encoded[0]) == "0.1"  # the shortest decimal, not 0.10000000149011612
