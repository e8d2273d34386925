"""Property-based fuzzing of every step a request payload takes from the network callback to the
queue, against the real validators of compiled models.

The contract: any input gives either a valid decoded request or a ``ProtocolError`` (codec and
pipeline steps: a ``PayloadError``) carrying one of the designed error codes; no other exception,
no hang, and memory bounded before decoding (a shape claimed in a header is refused, not
allocated). The network callback (``Service._on_message``) catches ProtocolError alone, so any
other exception escaping ``decode_request`` would reach the log as a traceback and leave the
device without an answer.
"""

from __future__ import annotations

import json
import pickle
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import numpy as np
import numpy.lib.format as npy_format
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from edgert.codec import (
    InputsDecoder,
    PayloadError,
    decode_b64,
    decode_inputs,
    decode_npy,
    decode_raw,
    sniff_format,
)
from edgert.pipeline.image import MAX_PIXELS, ImagePre, decode_image
from edgert.protocol import (
    ErrorCode,
    ProtocolError,
    Request,
    Topics,
    detect_format,
    error_reply,
    parse_json_request,
)
from edgert.transport import Message, received
from tests.fuzz.models import MAX_ELEMENTS, Target
from tests.fuzz.payloads import jpeg_claiming, npy_header, png_claiming
from tests.fuzz.strategies import (
    CONTENT_TYPES,
    HUGE_DIMS,
    REPLY_TOPICS,
    USER_KEYS,
    deep_json,
    image_payloads,
    json_payloads,
    json_values,
    messages,
    npy_payloads,
    payloads,
    raw_payloads,
    tensors,
    wav_payloads,
)

T = TypeVar("T")

# Errors decoding may give; no_model, busy, rate_limited, expired and internal are the daemon's.
DECODE_CODES = {ErrorCode.BAD_REQUEST, ErrorCode.BAD_INPUT, ErrorCode.TOO_LARGE}
SECONDS = 2.0  # far above any case here (the slowest take milliseconds): a hang, not a slow run


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


MODELS = ["occupancy", "silero_vad", "person", "bytesum", "loudness", "multi", "tokens"]


@pytest.fixture(scope="module", autouse=True)
def never_unpickle() -> Iterator[None]:
    """Nothing under test may unpickle: np.load and numpy's read_array only with
    allow_pickle=False, and pickle's loaders not at all."""

    def guarded(real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            assert kwargs.get("allow_pickle") is False, f"{real.__name__} may unpickle"
            return real(*args, **kwargs)

        return call

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a payload reached pickle")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(np, "load", guarded(np.load))
        patch.setattr(npy_format, "read_array", guarded(npy_format.read_array))
        for name in ("load", "loads", "Unpickler"):
            patch.setattr(pickle, name, refuse)
        yield


def note(what: str) -> None:
    """Count outcomes in Hypothesis's statistics (pytest --hypothesis-show-statistics)."""
    if currently_in_test_context():
        event(what)


def answered(call: Callable[[], T], codes: set[ErrorCode] = DECODE_CODES) -> T | ProtocolError:
    """``call()``'s result, or the ProtocolError it raised with a designed code, which must
    make a valid error reply; any other exception fails the test. Bounded in time."""
    start = time.monotonic()
    try:
        result = call()
    except ProtocolError as exc:
        assert exc.code in codes, exc
        assert isinstance(exc.message, str) and exc.message
        reply = json.loads(error_reply(exc.request_id, exc.code, exc.message))
        assert reply["ok"] is False and reply["error"]["code"] == exc.code.value
        note(f"error {exc.code.value}")
        return exc
    finally:
        assert time.monotonic() - start < SECONDS, "decoding took too long"
    note("decoded")
    return result


def payload_error(call: Callable[[], T]) -> T | PayloadError:
    """``call()``'s result, or the PayloadError it raised (a codec or pipeline step)."""
    start = time.monotonic()
    try:
        return call()
    except PayloadError as exc:
        assert exc.code in {c.value for c in DECODE_CODES} and exc.message, exc
        note(f"error {exc.code}")
        return exc
    finally:
        assert time.monotonic() - start < SECONDS, "decoding took too long"


# ------------------------------------------------------------------ the whole of decode_request


@pytest.mark.parametrize("model", MODELS)
@given(data=st.data())
@fuzz(250)
def test_decode_request_gives_a_request_or_a_structured_error(
    targets: Mapping[str, Target], model: str, data: st.DataObject
) -> None:
    target = targets[model]
    message = data.draw(messages(target), "message")
    key = data.draw(st.none() | st.text(max_size=12), "key")
    result = answered(lambda: target.decode(message, key))
    if isinstance(result, ProtocolError):
        return
    request, transform = result
    target.check(request)
    # MQTT 5 takes precedence (an empty Response Topic names none); Correlation Data is carried
    # to the reply.
    assert not message.response_topic or request.reply_to == message.response_topic
    assert request.correlation == message.correlation
    assert transform is None or target.pre is not None


@pytest.mark.parametrize("model", MODELS)
@given(data=st.data())
@fuzz(150)
def test_json_envelopes_with_wrong_types_everywhere(
    targets: Mapping[str, Target], model: str, data: st.DataObject
) -> None:
    target = targets[model]
    payload = data.draw(json_payloads(target), "payload")
    result = answered(
        lambda: parse_json_request(
            payload,
            target.io,
            model=model,
            request_specs=target.specs,
            max_elements=MAX_ELEMENTS,
        )
    )
    if isinstance(result, Request):
        target.check(result)


@pytest.mark.parametrize(("where", "depth"), [(w, d) for w in ("inputs", "named", "ragged", "id",
    "deadline", "shape", "dict") for d in (64, 65, 999, 1000, 5000, 200_000)])  # fmt: skip
def test_deep_nesting_is_a_bad_request(
    targets: Mapping[str, Target], where: str, depth: int
) -> None:
    payload = deep_json(depth, where)
    for target in (targets["occupancy"], targets["person"]):
        message = Message("t", payload, 0, False, 0, content_type="application/json")
        result = answered(lambda t=target, m=message: t.decode(m))  # type: ignore[misc]
        assert isinstance(result, ProtocolError)


@pytest.mark.parametrize("model", ["occupancy", "silero_vad", "multi"])
@given(data=st.data())
@fuzz(300)
def test_npy_payloads_never_unpickle_and_never_overallocate(
    targets: Mapping[str, Target], model: str, data: st.DataObject
) -> None:
    target = targets[model]
    payload = data.draw(npy_payloads(target), "payload")
    message = Message("t", payload, 0, False, 0)
    tracemalloc.start()
    try:
        result = answered(lambda: target.decode(message))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Nothing much beyond a copy or two of the payload: a claimed shape is never allocated.
    assert peak < 1_000_000 + 8 * len(payload), f"{peak} bytes for a {len(payload)}-byte payload"
    if b"'descr': '|O'" in payload[:128]:
        # Never unpickled: refused as a tensor edgert does not take, or, for a .npy version it
        # does not read (3.0), as a payload it cannot parse.
        assert isinstance(result, ProtocolError)
        unread_version = payload[6:7] not in (b"\x01", b"\x02")
        expected = ErrorCode.BAD_REQUEST if unread_version else ErrorCode.BAD_INPUT
        assert result.code is expected


@given(
    st.lists(st.integers(0, 4) | st.sampled_from(HUGE_DIMS), min_size=1, max_size=4).filter(
        lambda s: np.prod([d or 1 for d in s], dtype=object) > MAX_ELEMENTS
    ),
    st.sampled_from(["float32", "uint8", "int64", "bool"]),
    st.sampled_from(["npy", "b64"]),
)
@fuzz(400)
def test_claimed_huge_shapes_are_too_large_before_allocating(
    shape: list[int], dtype: str, how: str
) -> None:
    """A JSON shape [2**40] or a .npy header claiming one is refused, with a few bytes of data
    and without allocating (zero-size shapes too: numpy cannot even make [0, 2**64])."""

    def decode() -> Any:
        if how == "npy":
            header = f"{{'descr': '{np.dtype(dtype).str}', 'fortran_order': False, "
            return decode_npy(npy_header(header + f"'shape': {tuple(shape)}, }}") + bytes(16))
        return decode_b64({"dtype": dtype, "shape": shape, "b64": "AAAA"}, "x")

    tracemalloc.start()
    try:
        result = payload_error(decode)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, PayloadError) and result.code == "too_large", result
    assert peak < 100_000


@given(image_payloads(), st.sampled_from(["person", "loudness"]), CONTENT_TYPES)
@fuzz(600)
def test_images_decode_or_are_refused(
    targets: Mapping[str, Target], payload: bytes, model: str, content_type: str | None
) -> None:
    target = targets[model]
    answered(lambda: target.decode(Message("t", payload, 0, False, 0, content_type=content_type)))
    # The pipeline step itself: bytes → tensor, or PayloadError; huge claims refused unread.
    pre = targets["person"].pre
    assert pre is not None
    result = payload_error(lambda: pre.decode(payload))
    size = _claimed_size(payload)
    if size is not None and size[0] * size[1] > MAX_PIXELS:  # too_large, if it even opens
        assert isinstance(result, PayloadError), size
    if not isinstance(result, PayloadError):
        array, transform = result
        assert array.shape == (1, 3, 32, 32) and array.dtype == np.float32
        assert transform is not None and transform.width >= 1 and transform.height >= 1


def _claimed_size(payload: bytes) -> tuple[int, int] | None:
    if payload.startswith(b"\x89PNG\r\n\x1a\n") and payload[12:16] == b"IHDR":
        return int.from_bytes(payload[16:20], "big"), int.from_bytes(payload[20:24], "big")
    if payload.startswith(b"\xff\xd8\xff\xc0") and len(payload) >= 11:
        return int.from_bytes(payload[9:11], "big"), int.from_bytes(payload[7:9], "big")
    return None


@pytest.mark.parametrize(
    ("width", "height"), [(65535, 65535), (9000, 9000), (MAX_PIXELS // 4096 + 1, 4096)]
)
@pytest.mark.parametrize("build", [png_claiming, jpeg_claiming])
def test_image_headers_claiming_too_many_pixels_are_refused_unread(
    width: int, height: int, build: Callable[[int, int, bytes], bytes]
) -> None:
    start = time.monotonic()
    with pytest.raises(PayloadError) as info:
        decode_image(build(width, height, bytes(64)), ImagePre(height=32, width=32))
    assert info.value.code == "too_large" and time.monotonic() - start < 0.5


@given(wav_payloads(), CONTENT_TYPES)
@fuzz(600)
def test_wavs_decode_or_are_refused(
    targets: Mapping[str, Target], payload: bytes, content_type: str | None
) -> None:
    target = targets["loudness"]
    result = answered(
        lambda: target.decode(Message("t", payload, 0, False, 0, content_type=content_type))
    )
    if not isinstance(result, ProtocolError):
        target.check(result[0])


@given(raw_payloads(), st.none() | st.just("application/octet-stream"))
@fuzz(400)
def test_raw_payloads_of_any_length(
    targets: Mapping[str, Target], payload: bytes, content_type: str | None
) -> None:
    target = targets["bytesum"]
    result = answered(
        lambda: target.decode(Message("t", payload, 0, False, 0, content_type=content_type))
    )
    assert isinstance(result, ProtocolError) == (len(payload) != 16)
    spec = target.specs[0]
    raw = payload_error(lambda: decode_raw(payload, spec, target.io.dims, MAX_ELEMENTS))
    if len(payload) == 16:
        assert isinstance(raw, np.ndarray) and raw.tobytes() == payload


@pytest.mark.parametrize("model", ["occupancy", "multi", "tokens", "silero_vad"])
@given(data=st.data())
@fuzz(200)
def test_decode_inputs_gives_arrays_or_a_payload_error(
    targets: Mapping[str, Target], model: str, data: st.DataObject
) -> None:
    target = targets[model]
    doc = data.draw(json_payloads(target), "payload")
    try:
        inputs = json.loads(doc).get("inputs")
    except (ValueError, RecursionError, AttributeError):
        return
    result = payload_error(lambda: decode_inputs(inputs, target.specs, target.io, MAX_ELEMENTS))
    if isinstance(result, dict):
        for spec in target.specs:
            spec.check(result[spec.name], target.io.dims)
            if spec.dtype.is_float:
                continue
            assert np.issubdtype(result[spec.name].dtype, np.integer) or spec.dtype.value == "bool"


def same_outcome(ours: object, theirs: object) -> None:
    """Two decodings agree: the same error, or the same arrays (dtype, shape, values)."""
    if isinstance(theirs, PayloadError):
        assert isinstance(ours, PayloadError), ours
        assert (ours.code, ours.message) == (theirs.code, theirs.message)
        return
    assert isinstance(ours, dict) and isinstance(theirs, dict) and ours.keys() == theirs.keys()
    for name, array in theirs.items():
        assert ours[name].dtype == array.dtype and ours[name].shape == array.shape
        np.testing.assert_array_equal(ours[name], array)  # NaN equals NaN here


@pytest.mark.parametrize("model", ["occupancy", "silero_vad", "multi", "tokens"])
@given(data=st.data())
@fuzz(300)
def test_the_daemons_input_decoder_decodes_as_decode_inputs(
    targets: Mapping[str, Target], model: str, data: st.DataObject
) -> None:
    target = targets[model]
    dims = dict(target.io.dims)
    one = tensors(target.specs[0], dims) if len(target.specs) == 1 else st.nothing()
    raw = data.draw(json_values | one, "inputs")  # json_values first: the smallest example
    decoder = InputsDecoder(target.specs, target.io)
    theirs = payload_error(lambda: decode_inputs(raw, target.specs, target.io, MAX_ELEMENTS))
    same_outcome(payload_error(lambda: decoder(raw, MAX_ELEMENTS)), theirs)


# --------------------------------------------------------------- format detection, topics, MQTT


@given(st.binary(max_size=64), CONTENT_TYPES, st.sampled_from([None, *MODELS]))
@fuzz(800)
def test_format_detection(
    targets: Mapping[str, Target], payload: bytes, content_type: str | None, model: str | None
) -> None:
    declared = targets[model].declared if model else None
    fmt = answered(lambda: detect_format(payload, content_type, declared))
    if not isinstance(fmt, ProtocolError):
        assert fmt in ("json", "npy", "raw", "jpeg", "png", "wav")
        assert fmt != "raw" or declared == "raw"
        assert sniff_format(payload, content_type, declared) == fmt


LEVELS = st.sampled_from(["edgert", "infer", "node", "testnode", "occupancy", "k1", "", "+", "#",
    ".", "..", "a\x00b", "\ud800", "$share"]) | st.text(max_size=6)  # fmt: skip


@given(st.lists(LEVELS, max_size=7).map("/".join) | st.text(max_size=40))
@fuzz(1000)
def test_request_topics_parse_to_a_route_with_an_allowed_default_reply(topic: str) -> None:
    topics = Topics(node="testnode")
    route = topics.parse_request_topic(topic)
    if route is None:
        return
    model, key, _pinned = route
    if key is not None:  # what the daemon answers a keyed request on when it names no topic
        assert topics.reply_allowed(topics.default_reply_topic(key, model))


@given(REPLY_TOPICS | st.lists(LEVELS, max_size=5).map("/".join).map("edgert/reply/".__add__))
@fuzz(800)
def test_reply_topics_are_allowed_only_under_the_prefix(topic: str) -> None:
    allowed = Topics(node="testnode").reply_allowed(topic)
    if allowed:
        assert topic.startswith("edgert/reply/") and not set(topic) & {"+", "#", "\0"}
        assert topic.encode("utf-8")  # no lone surrogates


@given(data=st.data())
@fuzz(400)
def test_mqtt5_properties_reach_the_decoder_as_edgert_values(
    targets: Mapping[str, Target], data: st.DataObject
) -> None:
    """gmqtt's view of a PUBLISH (each property a list of its values, as gmqtt parses them;
    duplicate user properties, huge correlation data, any content type) → edgert's Message →
    decode_request."""
    target = targets[data.draw(st.sampled_from(MODELS), "model")]
    payload = data.draw(payloads(target), "payload")
    props: dict[str, object] = {"retain": 0, "dup": 0}
    text = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
    for name, value in (
        ("content_type", CONTENT_TYPES.filter(lambda t: t is not None and t.isprintable())),
        ("response_topic", st.sampled_from(["edgert/reply/a/b", "elsewhere/x"])),
        ("correlation_data", st.binary(max_size=16) | st.just(bytes(65535))),
        ("message_expiry_interval", st.integers(0, 2**32 - 1)),
    ):
        if data.draw(st.booleans(), name):
            props[name] = [data.draw(value, name)]
    pairs = data.draw(st.lists(st.tuples(USER_KEYS, text | st.text(min_size=129)), max_size=4))
    if pairs:
        props["user_property"] = pairs
    message = received(f"edgert/infer/{target.name}/k", payload, 1, props, 1)
    assert isinstance(message.payload, bytes) and all(
        isinstance(v, str) for v in message.user.values()
    )
    result = answered(lambda: target.decode(message, "k"))
    if not isinstance(result, ProtocolError):
        target.check(result[0])
