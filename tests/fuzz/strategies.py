"""Hypothesis strategies for hostile requests: envelopes with wrong types everywhere, tensors of
wrong shapes, dtypes and values, deep nesting, broken ``.npy``, images, WAVs and raw bytes, and
odd MQTT 5 properties. Each payload strategy takes the :class:`Target` it is aimed at, so most
cases get past the first checks and reach the model's own validators."""

from __future__ import annotations

import base64
import json
import math
import pickle
import zlib
from typing import Any

import numpy as np
from hypothesis import strategies as st

from edgert.spec import DimRange, DType, TensorSpec
from edgert.transport import Message
from tests.fuzz.models import Target
from tests.fuzz.payloads import (
    bitflip,
    image_bytes,
    jpeg_claiming,
    npy_bytes,
    npy_header,
    png_claiming,
    splice,
    wav_bytes,
)

__all__ = [
    "HUGE_DIMS",
    "deep_json",
    "envelopes",
    "image_payloads",
    "json_payloads",
    "json_values",
    "messages",
    "npy_payloads",
    "payloads",
    "raw_payloads",
    "tensors",
    "wav_payloads",
]

HUGE_DIMS = (2**31, 2**32 + 1, 2**40, 2**62, 2**63, 2**64, 2**70, 10**30)
DEPTHS = (32, 63, 64, 65, 100, 999, 1000, 1500, 5000, 100_000)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from(HUGE_DIMS)
    | st.floats()  # NaN and infinities included: json.dumps writes NaN, Infinity
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=16,
)


def field(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly (7 in 8) a valid value, else any JSON value at all."""
    return st.integers(0, 7).flatmap(lambda i: valid if i else json_values)


# ------------------------------------------------------------------------------------ tensors


def _dim(dim: int | str, dims: dict[str, DimRange]) -> st.SearchStrategy[int]:
    if isinstance(dim, int):
        return st.just(dim)
    rng = dims.get(dim, DimRange(1, 1, 4))
    return st.integers(rng.min, min(rng.max, rng.min + 3))


def _values(dtype: DType) -> st.SearchStrategy[Any]:
    if dtype.is_float:
        return st.floats(width=32) | st.floats()  # NaN, inf, and 1e300 (beyond float32)
    if dtype is DType.BOOL:
        return st.booleans()
    info = np.iinfo(dtype.numpy)
    return st.integers(int(info.min), int(info.max))


def _bad_values() -> st.SearchStrategy[Any]:
    """What a numeric tensor must not hold, or (for an integer input) not as its kind."""
    return (
        st.sampled_from(
            [math.nan, math.inf, -math.inf, 1e300, 0.5, 2**64, -(2**63) - 1, 2**70, True, None, "1"]
        )
        | st.just([])
        | st.just({})
    )


def _nested(shape: tuple[int, ...], leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    if not shape:
        return leaf
    return st.lists(_nested(shape[1:], leaf), min_size=shape[0], max_size=shape[0])


@st.composite
def valid_lists(draw: st.DrawFn, spec: TensorSpec, dims: dict[str, DimRange]) -> Any:
    """A nested list of ``spec``'s shape (batch dims within bounds), values of its kind, with
    now and then one value that is not (NaN in an int input, 2**64, a string)."""
    shape = tuple(draw(_dim(d, dims)) for d in spec.shape)
    doc = draw(_nested(shape, _values(spec.dtype)))
    if shape and math.prod(shape) and draw(st.integers(0, 3)) == 0:
        where = doc
        for size in shape[:-1]:
            where = where[draw(st.integers(0, size - 1))]
        where[draw(st.integers(0, shape[-1] - 1))] = draw(_bad_values())
    return doc


def wrong_lists() -> st.SearchStrategy[Any]:
    """Nested lists of any shape (rank 0 to 5, ragged or not), of numbers or junk."""
    leaf = st.floats() | st.integers(-(2**65), 2**65) | st.booleans() | _bad_values()
    shaped = st.lists(st.integers(0, 5), max_size=5).flatmap(lambda s: _nested(tuple(s), leaf))
    ragged = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
    return shaped | ragged


DTYPE_NAMES = [d.value for d in DType] + [
    "float128", "complex64", "object", "O", "<f4", ">f4", "str", "U3", "V8", "", "datetime64",
]  # fmt: skip


@st.composite
def b64_tensors(draw: st.DrawFn, spec: TensorSpec, dims: dict[str, DimRange]) -> Any:
    """``{"dtype", "shape", "b64"}``: mostly right for ``spec``, with wrong dtypes, negative or
    huge dims, bad lengths, bad base64, missing or extra keys."""
    right_shape = [draw(_dim(d, dims)) for d in spec.shape]
    dtype = draw(st.sampled_from([spec.dtype.value] * 4 + DTYPE_NAMES) | json_values)
    shape = draw(
        st.just(right_shape)
        | st.lists(st.integers(-3, 6) | st.sampled_from(HUGE_DIMS), max_size=6)
        | st.lists(st.integers(0, 3), min_size=30, max_size=40)  # rank beyond numpy's
        | json_values
    )
    try:
        itemsize = np.dtype(dtype).itemsize if isinstance(dtype, str) and dtype else 4
        count = math.prod(shape) if all(isinstance(d, int) for d in shape) else 1
    except (TypeError, ValueError):
        itemsize, count = 4, 1
    size = max(0, min(count * itemsize, 4096))
    if draw(st.booleans()):
        data = draw(st.binary(min_size=size, max_size=size))
        if spec.dtype is DType.BOOL or dtype == "bool":
            data = bytes(b & 1 for b in data)
        text = base64.b64encode(data).decode()
    else:
        text = base64.b64encode(draw(st.binary(max_size=64))).decode()
    text = draw(
        st.just(text)
        | st.just(text[:-1])
        | st.just(text + "=")
        | st.just(text.replace("=", ""))
        | st.just("!" + text[1:])
        | st.text(max_size=24)
        | json_values
    )
    doc = {"dtype": dtype, "shape": shape, "b64": text}
    extra = draw(st.sampled_from([None, "drop", "add"]))
    if extra == "drop":
        del doc[draw(st.sampled_from(sorted(doc)))]
    elif extra == "add":
        doc["order"] = "F"
    return doc


def tensors(spec: TensorSpec, dims: dict[str, DimRange]) -> st.SearchStrategy[Any]:
    """Any value a device might send for ``spec``: mostly close to right."""
    return st.one_of(
        valid_lists(spec, dims),
        valid_lists(spec, dims),
        b64_tensors(spec, dims),
        wrong_lists(),
        json_values,
    )


# ----------------------------------------------------------------------------------- envelopes

IDS = st.text(min_size=1, max_size=128) | st.integers() | st.text(min_size=129, max_size=140)
REPLY_TOPICS = st.sampled_from(
    ["edgert/reply/dev1/x", "edgert/reply/", "elsewhere/x", "edgert/reply/+/x", "edgert/reply/../x",
     "edgert/reply/\ud800", "edgert/reply/a\x00b", "", "edgert/replyx"]
) | st.text(max_size=20)  # fmt: skip


@st.composite
def envelopes(draw: st.DrawFn, target: Target) -> dict[str, Any]:
    """A JSON request for ``target`` with wrong types anywhere in the envelope."""
    dims = dict(target.io.dims)
    named = {s.name: tensors(s, dims) for s in target.specs}
    others = [s.name for s in target.io.inputs if s.name not in named] + ["nope"]
    inputs = st.fixed_dictionaries(named, optional={n: json_values for n in others})
    choices = [inputs, inputs, json_values]
    if len(target.specs) == 1:
        choices.append(tensors(target.specs[0], dims))
    clean = draw(st.booleans())  # half the time, the envelope is right: tensors are checked
    wrong = (lambda valid: valid) if clean else field
    optional = {
        "v": wrong(st.just(1)),
        "id": wrong(IDS if not clean else st.text(min_size=1, max_size=128) | st.integers()),
        "reply_to": wrong(REPLY_TOPICS if not clean else st.just("edgert/reply/dev1/x")),
        "deadline_ms": wrong(st.floats(min_value=1e-3, max_value=1e9) | st.integers(1, 2**70)),
        "stream": wrong(IDS if not clean else st.text(min_size=1, max_size=128)),
        "compact": wrong(st.booleans()),
    }
    if not clean:
        optional["reset"] = field(st.booleans())
        optional["deadline"] = json_values  # a typo, refused as an unknown key
    doc = draw(st.fixed_dictionaries({"inputs": wrong(st.one_of(choices))}, optional=optional))
    if not clean and draw(st.integers(0, 15)) == 0:
        del doc["inputs"]
    return doc


def deep_json(depth: int, where: str) -> bytes:
    """A request whose ``where`` holds lists nested ``depth`` levels (built as text: json.dumps
    itself cannot write what is deeper than the recursion limit)."""
    deep = "[" * depth + "1" + "]" * depth
    template = {
        "inputs": '{"inputs": %s}',
        "named": '{"inputs": {"readings": %s, "image": %s}}',
        "ragged": '{"inputs": [[1, 2, 3, 4], %s]}',
        "id": '{"id": %s, "inputs": []}',
        "deadline": '{"deadline_ms": %s, "inputs": [[1, 2, 3, 4]]}',
        "shape": '{"inputs": {"dtype": "float32", "shape": %s, "b64": ""}}',
        "dict": '{"inputs": %s}',
    }[where]
    if where == "dict":
        deep = '{"a": ' * depth + "1" + "}" * depth
    return (template % ((deep,) * template.count("%s"))).encode()


@st.composite
def json_payloads(draw: st.DrawFn, target: Target) -> bytes:
    """JSON bytes for ``target``: envelopes (whole, truncated or bit-flipped), deep nesting,
    non-objects, and ``{`` followed by garbage."""
    kind = draw(st.sampled_from(["envelope"] * 6 + ["truncated", "flipped", "deep", "other"]))
    if kind == "deep":
        where = ["inputs", "named", "ragged", "id", "deadline", "shape", "dict"]
        return deep_json(draw(st.sampled_from(DEPTHS)), draw(st.sampled_from(where)))
    if kind == "other":
        return draw(
            st.binary(max_size=64).map(lambda b: b"{" + b)
            | json_values.map(lambda v: json.dumps(v).encode())
            | st.text(max_size=32).map(lambda t: ("{" + t).encode("utf-8", "surrogatepass"))
        )
    payload = json.dumps(draw(envelopes(target))).encode()
    if kind == "truncated":
        return payload[: draw(st.integers(0, max(0, len(payload) - 1)))]
    if kind == "flipped":
        return bitflip(payload, draw(st.lists(st.integers(0, 1 << 20), min_size=1, max_size=4)))
    return payload


# --------------------------------------------------------------------------------------- .npy

NPY_DESCRS = [
    "<f4", ">f4", "<f2", "<f8", "|u1", "|i1", "<i8", ">i8", "<i4", "<u8", "|b1",
    "|O", "<U2", "|S3", "|V4", "<M8[s]", "<c8", "<f16", "[('a', '<f4')]", "('<f4', (2,))", "x",
]  # fmt: skip
NPY_SHAPES = (
    st.lists(st.integers(-2, 6), max_size=4).map(lambda s: repr(tuple(s)))
    | st.lists(st.integers(0, 3) | st.sampled_from(HUGE_DIMS), min_size=1, max_size=4).map(
        lambda s: repr(tuple(s))
    )
    | st.sampled_from(["(1.5,)", "(True,)", "None", "'x'", "(" + "0," * 40 + ")", "[1, 4]", "()"])
)


def _npy_array(spec: TensorSpec, dims: dict[str, DimRange]) -> st.SearchStrategy[np.ndarray]:
    """A real array: ``spec``'s shape or another, its dtype or another, C or Fortran order."""
    shape = st.tuples(*[_dim(d, dims) for d in spec.shape]) | st.lists(
        st.integers(0, 4), max_size=4
    ).map(tuple)
    dtype = st.sampled_from(
        [spec.dtype.value, spec.dtype.value, ">f4", "<f2", "u1", "i8", ">i8", "bool", "f8", "c8"]
    )

    def build(args: tuple[tuple[int, ...], str, int, bool]) -> np.ndarray:
        shape, name, seed, fortran = args
        values = np.random.default_rng(seed).standard_normal(shape) * 100
        array = values.astype(np.dtype(name)) if name != "bool" else values > 0
        return np.asfortranarray(array) if fortran else array

    return st.tuples(shape, dtype, st.integers(0, 1 << 16), st.booleans()).map(build)


@st.composite
def npy_payloads(draw: st.DrawFn, target: Target) -> bytes:
    """``.npy`` bytes: real arrays (whole, truncated, bit-flipped, spliced), hand-made headers
    with any dtype, shape and version, and object arrays that carry a pickle."""
    spec = draw(st.sampled_from(target.specs))
    kind = draw(st.sampled_from(["array", "array", "truncated", "flipped", "header", "pickle"]))
    if kind == "header":
        descr = draw(st.sampled_from(NPY_DESCRS))
        descr = descr if descr.startswith(("[", "(")) else repr(descr)
        fortran = draw(st.sampled_from(["False", "True", "1", "'x'"]))
        shape = draw(NPY_SHAPES)
        text = draw(
            st.just(f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}")
            | st.just(f"{{'descr': {descr}, 'shape': {shape}}}")
            | st.just(f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, 'x': 1}}")
            | st.text(max_size=40)
            | st.just("{" * 500 + "}" * 500)
            | st.just("__import__('os').system('false')")
        )
        version = draw(st.sampled_from([(1, 0), (2, 0), (3, 0), (0, 0), (255, 255)]))
        return npy_header(text, version) + draw(st.binary(max_size=64))
    if kind == "pickle":
        header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
        return npy_header(header) + pickle.dumps(np.array([{"x": 1}], dtype=object), protocol=2)
    payload = npy_bytes(draw(_npy_array(spec, dict(target.io.dims))))
    if kind == "truncated":
        return payload[: draw(st.integers(0, len(payload) - 1))]
    if kind == "flipped":
        flips = draw(st.lists(st.integers(0, 8 * 128), min_size=1, max_size=3))  # header bits
        return bitflip(payload, flips)
    return payload


# ---------------------------------------------------------------------------- images, audio, raw


@st.composite
def image_payloads(draw: st.DrawFn) -> bytes:
    """JPEG and PNG: real images of odd sizes and modes (whole, truncated, bit-flipped, with
    garbage after a valid header), and headers that claim any size, up to 65535 x 65535."""
    kind = draw(st.sampled_from(["image", "truncated", "flipped", "spliced", "claim"]))
    if kind == "claim":
        width, height = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
        body = draw(st.binary(max_size=64) | st.just(zlib.compress(bytes(4096))))
        build = draw(st.sampled_from([png_claiming, jpeg_claiming]))
        return build(width, height, body)
    fmt = draw(st.sampled_from(["JPEG", "PNG"]))
    modes = ["RGB", "L", "CMYK"] if fmt == "JPEG" else ["RGB", "L", "RGBA", "P", "I;16", "1"]
    payload = image_bytes(
        draw(st.integers(1, 40)),
        draw(st.integers(1, 40)),
        fmt,
        draw(st.sampled_from(modes)),
        draw(st.integers(0, 1000)),
    )
    if kind == "truncated":
        return payload[: draw(st.integers(0, len(payload) - 1))]
    if kind == "flipped":
        flips = draw(st.lists(st.integers(0, 8 * len(payload)), min_size=1, max_size=6))
        return bitflip(payload, flips)
    if kind == "spliced":
        at = draw(st.integers(2, 200))
        return splice(payload, at, draw(st.binary(max_size=32)), draw(st.integers(0, 64)))
    return payload


@st.composite
def wav_payloads(draw: st.DrawFn) -> bytes:
    """WAVs whose header says anything (rate, channels, bits, format tag, chunk sizes) in front
    of samples or garbage; truncated now and then."""
    data = draw(st.binary(max_size=256) | st.just(np.zeros(600, "<i2").tobytes()))
    payload = wav_bytes(
        data,
        rate=draw(st.sampled_from([16000, 16000, 8000, 0, 2**32 - 1])),
        channels=draw(st.sampled_from([1, 1, 2, 0])),
        bits=draw(st.sampled_from([16, 16, 8, 24, 32, 0])),
        tag=draw(st.sampled_from([1, 1, 3, 0xFFFE, 0])),
        fmt_size=draw(st.sampled_from([16, 16, 18, 40, 0, 15, 2**32 - 1])),
        data_size=draw(
            st.none() | st.sampled_from([0, 1, 0xFFFFFFFF, 2**31]) | st.integers(0, 600)
        ),
        riff_size=draw(st.none() | st.integers(0, 2**32 - 1)),
    )
    if draw(st.integers(0, 3)) == 0:
        payload = payload[: draw(st.integers(0, len(payload)))]
    return payload


def raw_payloads() -> st.SearchStrategy[bytes]:
    """Raw bytes of any length near the 16 a raw model takes; some look like JSON or JPEG."""
    return st.one_of(
        st.binary(min_size=16, max_size=16),
        st.binary(max_size=40),
        st.binary(min_size=15, max_size=15).map(lambda b: b"{" + b),
        st.binary(min_size=13, max_size=13).map(lambda b: b"\xff\xd8\xff" + b),
    )


def payloads(target: Target) -> st.SearchStrategy[bytes]:
    """Any payload at all, most of them aimed at ``target``."""
    return st.one_of(
        st.binary(max_size=256),
        json_payloads(target),
        json_payloads(target),
        npy_payloads(target),
        image_payloads(),
        wav_payloads(),
        raw_payloads(),
    )


# --------------------------------------------------------------------------- MQTT 5 properties

CONTENT_TYPES = st.none() | st.none() | st.none() | st.sampled_from(
    ["application/json", "application/x-npy", "application/octet-stream", "image/jpeg",
     "image/png", "audio/wav", "audio/x-wav", "IMAGE/PNG", "application/json; charset=utf-8",
     " image/jpeg ;q=1", "text/plain", "application/xml", ";", ""]
) | st.text(max_size=30)  # fmt: skip
USER_KEYS = st.sampled_from(["id", "stream", "reset", "compact", "x"]) | st.text(max_size=5)


@st.composite
def messages(draw: st.DrawFn, target: Target) -> Message:
    """A request to ``target`` with any payload and any MQTT 5 properties."""
    return Message(
        topic=f"edgert/infer/{target.name}",
        payload=draw(payloads(target)),
        qos=draw(st.integers(0, 1)),
        retain=False,
        mid=0,
        response_topic=draw(st.none() | REPLY_TOPICS),
        correlation=draw(st.none() | st.binary(max_size=32) | st.just(bytes(65535))),
        content_type=draw(CONTENT_TYPES),
        user=draw(
            st.dictionaries(USER_KEYS, st.text(max_size=10) | st.text(min_size=129), max_size=3)
        ),
        expiry=draw(st.none() | st.integers(0, 2**32 - 1)),
    )
