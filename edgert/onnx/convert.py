"""Precision conversion of an ONNX graph (FP32 → FP16), keeping overflow-prone ops in FP32."""

from __future__ import annotations

import heapq
import warnings
from collections.abc import Iterator
from typing import Any

import onnx
from onnx import TensorProto, helper

from edgert.errors import ModelCheckError, first_line

__all__ = ["FP16_KEEP_FP32", "to_fp16"]

_FLOAT, _FP16 = TensorProto.FLOAT, TensorProto.FLOAT16

# Ops whose FP16 results overflow or lose too much: exponentials, normalisations and reductions.
# The parity check after the build decides whether what remains is close enough.
FP16_KEEP_FP32: tuple[str, ...] = (
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceL1",
    "ReduceL2",
    "ReduceProd",
    "Exp",
    "Pow",
    "Sqrt",
    "Reciprocal",
)
_CONTROL_FLOW = {"If", "Loop", "Scan"}


def to_fp16(model: onnx.ModelProto, keep_fp32: tuple[str, ...] = FP16_KEEP_FP32) -> onnx.ModelProto:
    """Convert float32 weights and activations to float16; IO types stay as they were.

    Uses onnxconverter-common's converter (its own block list of ONNX-ML and shape ops plus ours).
    A model with no float32 left (already FP16) comes back unchanged.
    """
    from onnxconverter_common import float16

    if not _has_float32(model):
        return model
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_fp32))
    try:
        with warnings.catch_warnings():
            # The converter warns for every value it clips to FP16's range; parity judges that.
            warnings.simplefilter("ignore")
            # Not keep_io_types: it misses outer-scope uses of inputs inside If/Loop bodies and
            # turns outputs of blocked ops into FP16; _restore_io_types casts at the edges instead.
            converted: onnx.ModelProto = float16.convert_float_to_float16(
                model, keep_io_types=False, op_block_list=block, disable_shape_infer=False
            )
    except Exception as exc:
        raise ModelCheckError(f"FP16 conversion failed: {exc}") from exc
    _restore_io_types(converted, model)
    _sort_topologically(converted.graph)
    # The converter leaves stale float32 value_info inside If/Loop bodies; it is optional (a
    # runtime infers it), so drop it rather than let it contradict the converted types.
    for g in _graphs(converted.graph):
        del g.value_info[:]
    try:
        onnx.shape_inference.infer_shapes(converted, check_type=True, strict_mode=True)
    except Exception as exc:
        flow = sorted({n.op_type for g in _graphs(model.graph) for n in g.node} & _CONTROL_FLOW)
        # onnxconverter-common can mistype values shared between an If/Loop body and its outer
        # graph (in silero VAD: a Conv bound to both float and float16).
        where = f" with control flow ({', '.join(flow)})" if flow else ""
        raise ModelCheckError(
            f"FP16 conversion of this graph{where} produced an invalid model; build it in fp32 "
            f"(or export it in FP16 yourself): {first_line(exc)}"
        ) from exc
    return converted


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _has_float32(model: onnx.ModelProto) -> bool:
    graph = onnx.shape_inference.infer_shapes(model).graph
    for g in _graphs(graph):
        values = [*g.input, *g.output, *g.value_info]
        if any(v.type.tensor_type.elem_type == _FLOAT for v in values):
            return True
        if any(t.data_type == _FLOAT for t in g.initializer):
            return True
    return False


def _restore_io_types(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Give the graph inputs and outputs that were float32 their type back, with Casts."""
    graph = model.graph
    taken = {n for g in _graphs(graph) for node in g.node for n in (*node.input, *node.output)}
    taken |= {v.name for v in (*graph.input, *graph.output)}
    was_fp32 = {
        v.name
        for v in (*original.graph.input, *original.graph.output)
        if v.type.tensor_type.elem_type == _FLOAT
    }
    inputs = {v.name for v in graph.input}
    produced = {n for node in graph.node for n in node.output}
    rename: dict[str, str] = {}
    head: list[onnx.NodeProto] = []
    tail: list[onnx.NodeProto] = []
    for value in (*graph.input, *graph.output):
        tensor_type = value.type.tensor_type
        if value.name not in was_fp32 or tensor_type.elem_type != _FP16:
            continue
        tensor_type.elem_type = _FLOAT
        if value.name in rename or (value.name not in inputs and value.name not in produced):
            continue
        half = value.name + "_fp16"
        while half in taken:
            half += "_"
        taken.add(half)
        rename[value.name] = half
        if value.name in inputs:
            head.append(helper.make_node("Cast", [value.name], [half], to=_FP16))
        else:
            tail.append(helper.make_node("Cast", [half], [value.name], to=_FLOAT))
    for g in _graphs(graph):
        for node in g.node:
            _rename(node.input, rename)
            if g is graph:
                _rename(node.output, rename)
        for value in g.value_info:
            value.name = rename.get(value.name, value.name)
    nodes = [*head, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(nodes)


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _uses(node: onnx.NodeProto) -> set[str]:
    """Every value ``node`` reads, including outer-scope values its If/Loop bodies read."""
    names = set(node.input)
    for sub in _subgraphs(node):
        for inner in sub.node:
            names |= _uses(inner)
    return names - {""}


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Order every graph's nodes so each comes after what it reads (stable otherwise).

    The converter appends its Casts inside If/Loop bodies after their readers, which ONNX Runtime
    refuses ("Nodes in a graph must be topologically sorted").
    """
    nodes = list(graph.node)
    for node in nodes:
        for sub in _subgraphs(node):
            _sort_topologically(sub)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    waiting = [
        {producer[n] for n in _uses(node) if n in producer and producer[n] != i}
        for i, node in enumerate(nodes)
    ]
    readers: dict[int, list[int]] = {}
    for i, deps in enumerate(waiting):
        for dep in deps:
            readers.setdefault(dep, []).append(i)
    ready = [i for i, deps in enumerate(waiting) if not deps]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for reader in readers.get(i, []):
            waiting[reader].discard(i)
            if not waiting[reader]:
                heapq.heappush(ready, reader)
    if len(order) == len(nodes) and order != sorted(order):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def _rename(names: Any, rename: dict[str, str]) -> None:
    for i, name in enumerate(names):
        names[i] = rename.get(name, name)
