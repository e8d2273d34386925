"""ONNX handling: load, check, shape-infer, inspect IO, convert precision. Imports ``onnx`` only."""

from edgert.onnx.convert import FP16_KEEP_FP32, to_fp16
from edgert.onnx.model import (
    ModelIO,
    OnnxSource,
    external_data_files,
    io_specs,
    load_source,
    source_sha256,
    with_io_dims,
    write_prepared,
)

__all__ = [
    "FP16_KEEP_FP32",
    "ModelIO",
    "OnnxSource",
    "external_data_files",
    "io_specs",
    "load_source",
    "source_sha256",
    "to_fp16",
    "with_io_dims",
    "write_prepared",
]
