"""What a backend's ONNX importer takes, and fitting a model to it: ops, domains, string (and
other non-tensor) values, opsets. Imports ``onnx`` only: the TensorRT parser's facts are data
here, never a ``tensorrt`` import.

:func:`unsupported` lists what a backend cannot take at all (so ``--backend auto`` falls back,
and ``--backend tensorrt`` refuses naming the ops); :func:`fit_opset` converts a model whose opset
is outside the backend's range with onnx's version converter, or refuses with the range.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import onnx
import onnx.version_converter
from onnx import TensorProto

from edgert.errors import ModelCheckError, first_line

__all__ = [
    "TENSORRT_NO_IMPORTER",
    "TENSORRT_OPSETS",
    "Capability",
    "Unsupported",
    "fit_opset",
    "tensorrt_parser",
    "unsupported",
]

DEFAULT_DOMAIN = "ai.onnx"

# The ONNX opsets TensorRT's ONNX parser supports, from the TensorRT version on which a row holds
# (the newest row at or below the running version applies): (version, lowest, highest).
# - 8.6: 9..17. onnx-tensorrt release/8.5-GA docs/operators.md (commit 6d0ab7be) and
#   NVIDIA/Deep-Learning-Accelerator-SW's operators.md: "TensorRT 8.6 supports operators up to
#   Opset 17"; 9 as the lowest, as every later release states.
# - 10.0 (so 10.3, JetPack 6.1/6.2): 9..20. onnx-tensorrt docs/operators.md: "TensorRT 10.0
#   supports operators in the inclusive range of opset 9 to opset 20", unchanged on main until
#   after 10.8 (NVIDIA/TensorRT#4336, Feb 2025).
# - 10.15: 9..24. onnx-tensorrt docs/operators.md of the 10.15 GA release.
# - 11.x: 9..25. NVIDIA's "ONNX Opset Guide" (docs.nvidia.com/deeplearning/tensorrt/latest/
#   reference/onnx-opset-guide.html): maximum opset 25, minimum 9, for TensorRT 11.x.
TENSORRT_OPSETS: tuple[tuple[tuple[int, int], int, int], ...] = (
    ((8, 6), 9, 17),
    ((10, 0), 9, 20),
    ((10, 15), 9, 24),
    ((11, 0), 9, 25),
)

# Default-domain ops the parser has no importer for: those marked N in onnx-tensorrt's
# docs/operators.md of 10.15 GA. Each was N in release/8.5-GA too (commit 6d0ab7be), or not yet
# an ONNX op then; support only grows, so they hold for 8.6 and 10.3. The 11.0 GA release
# (onnx-tensorrt PR #1054) adds Swish and TRT_* custom ops only.
TENSORRT_NO_IMPORTER = frozenset(
    {
        "AffineGrid",
        "Bernoulli",
        "BitShift",
        "BitwiseAnd",
        "BitwiseNot",
        "BitwiseOr",
        "BitwiseXor",
        "CenterCropPad",
        "Col2Im",
        "Compress",
        "ConcatFromSequence",
        "ConvInteger",
        "DFT",
        "Det",
        "DynamicQuantizeLinear",
        "ImageDecoder",
        "MatMulInteger",
        "MaxRoiPool",
        "MaxUnpool",
        "MelWeightMatrix",
        "Multinomial",
        "NegativeLogLikelihoodLoss",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
        "QLinearConv",
        "QLinearMatMul",
        "RegexFullMatch",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SequenceMap",
        "SoftmaxCrossEntropyLoss",
        "SplitToSequence",
        "StringConcat",
        "StringNormalizer",
        "StringSplit",
        "TfIdfVectorizer",
        "Unique",
    }
)


@dataclass(frozen=True)
class Capability:
    """What one backend's ONNX importer takes."""

    name: str  # "TensorRT 10.3.0", "ONNX Runtime 1.20.1": how messages name it
    opsets: Mapping[str, tuple[int, int]]  # domain ("ai.onnx", "ai.onnx.ml") → inclusive range
    other_domains: bool = True  # whether ops of domains not in ``opsets`` may be used
    no_importer: frozenset[str] = field(default_factory=frozenset)  # default-domain ops
    strings: bool = True  # string tensors and non-tensor values (sequences, maps)

    def range_text(self, domain: str = DEFAULT_DOMAIN) -> str:
        low, high = self.opsets[domain]
        return f"{domain} opsets {low} to {high}"


@dataclass(frozen=True)
class Unsupported:
    """What a model uses that a backend cannot take (empty: nothing)."""

    ops: tuple[str, ...] = ()  # "ai.onnx.ml::TreeEnsembleClassifier", "Unique"; sorted
    values: tuple[str, ...] = ()  # "'label' (string tensor)", "'probs' (sequence)"

    def __bool__(self) -> bool:
        return bool(self.ops or self.values)

    def describe(self) -> str:
        parts = []
        if self.ops:
            parts.append(f"op(s) it has no importer for: {', '.join(self.ops)}")
        if self.values:
            parts.append(f"value(s) of types it cannot hold: {', '.join(self.values)}")
        return "; ".join(parts)


def tensorrt_parser(version: str) -> Capability:
    """TensorRT ``version``'s ONNX parser: default domain only (anything else needs a plugin
    edgert does not register), no string tensors, the opsets of :data:`TENSORRT_OPSETS`."""
    found = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    rows = [row for row in TENSORRT_OPSETS if row[0] <= found]
    _, low, high = rows[-1] if rows else TENSORRT_OPSETS[0]
    return Capability(
        f"TensorRT {version}",
        {DEFAULT_DOMAIN: (low, high)},
        other_domains=False,
        no_importer=TENSORRT_NO_IMPORTER,
        strings=False,
    )


def _domain(name: str) -> str:
    return name or DEFAULT_DOMAIN


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (If/Loop/Scan bodies), depth first."""
    stack = [graph]
    while stack:
        current = stack.pop()
        yield current
        for node in current.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def _value_problem(value: onnx.TypeProto) -> str | None:
    kind = value.WhichOneof("value")
    if kind is None:
        return None  # no type recorded: nothing to judge
    if kind != "tensor_type":
        return str(kind).removesuffix("_type")
    if value.tensor_type.elem_type == TensorProto.STRING:
        return "string tensor"
    return None


def unsupported(model: onnx.ModelProto, capability: Capability) -> Unsupported:
    """The ops (domain-qualified outside the default domain) and values of ``model`` that
    ``capability`` cannot take. Pass a shape-inferred model: values known only by inference
    (a string label inside the graph) are found through ``value_info``."""
    ops: set[str] = set()
    values: dict[str, str] = {}
    for graph in _graphs(model.graph):
        for node in graph.node:
            domain = _domain(node.domain)
            if domain == DEFAULT_DOMAIN:
                if node.op_type in capability.no_importer:
                    ops.add(node.op_type)
            elif domain not in capability.opsets and not capability.other_domains:
                ops.add(f"{domain}::{node.op_type}")
        if capability.strings:
            continue
        for value in (*graph.input, *graph.output, *graph.value_info):
            problem = _value_problem(value.type)
            if problem is not None:
                values.setdefault(value.name, problem)
        for tensor in graph.initializer:
            if tensor.data_type == TensorProto.STRING:
                values.setdefault(tensor.name, "string tensor")
    return Unsupported(
        tuple(sorted(ops)), tuple(f"'{name}' ({kind})" for name, kind in sorted(values.items()))
    )


def fit_opset(model: onnx.ModelProto, capability: Capability) -> tuple[onnx.ModelProto, str]:
    """``model`` itself and "" when its opsets are within ``capability``'s; else the default
    domain converted to the nearest end of the range (onnx's version converter, then the
    checker) and a note saying so. ModelCheckError, naming the range, when that fails or
    another domain's opset is out of range (the converter converts the default domain only)."""
    imported = {_domain(o.domain): int(o.version) for o in model.opset_import}
    for domain, version in sorted(imported.items()):
        if domain == DEFAULT_DOMAIN or domain not in capability.opsets:
            continue
        low, high = capability.opsets[domain]
        if not low <= version <= high:
            raise ModelCheckError(
                f"{capability.name} takes {capability.range_text(domain)}; the model imports "
                f"{domain} opset {version}, which onnx's version converter cannot convert "
                "(it converts the default domain only)"
            )
    if DEFAULT_DOMAIN not in imported or DEFAULT_DOMAIN not in capability.opsets:
        return model, ""
    version = imported[DEFAULT_DOMAIN]
    low, high = capability.opsets[DEFAULT_DOMAIN]
    if low <= version <= high:
        return model, ""
    target = low if version < low else high
    try:
        converted = onnx.version_converter.convert_version(model, target)
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:  # the converter's C++ assertions come back as RuntimeError
        raise ModelCheckError(
            f"{capability.name} takes {capability.range_text()}; the model is opset {version} "
            f"and onnx's version converter cannot convert it to {target}: {first_line(exc)}. "
            f"Export it at an opset from {low} to {high}"
        ) from exc
    return converted, (
        f"converted from opset {version} to {target} for {capability.name} (onnx version converter)"
    )
