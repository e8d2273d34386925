"""The emulated plan: what ``build_serialized_network`` writes and ``deserialize_cuda_engine``
checks (magic, checksum, TensorRT version, GPU, DLA), and IHostMemory construction.

See :mod:`tests.trt.emulator` for what the emulator is (and is not).
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

from tests.trt.emulator_core import State, api_error

__all__ = [
    "JETSON_SMS",
    "PLAN_MAGIC",
    "check_plan",
    "decode_plan",
    "encode_plan",
    "host_memory",
    "sm_loads",
    "version_loads",
]

PLAN_MAGIC = b"EDGERT-EMULATED-TRT-PLAN\x00"
JETSON_SMS = frozenset({"sm_53", "sm_62", "sm_72", "sm_87"})  # integrated GPUs (Tegra)


def encode_plan(header: dict[str, Any], model: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True).encode()
    body = PLAN_MAGIC + struct.pack("<II", len(head), len(model)) + head + model
    return body + hashlib.sha256(body).digest()


def decode_plan(data: bytes) -> tuple[dict[str, Any], bytes]:
    """The header and ONNX bytes of a plan; ValueError naming the failed check."""
    if not data.startswith(PLAN_MAGIC):
        raise ValueError("Serialization assertion plan->header.magicTag == rt::kPLAN_MAGIC_TAG")
    start = len(PLAN_MAGIC) + 8
    if len(data) < start + 32:
        raise ValueError("Serialization assertion size >= sizeof(PlanHeader) (truncated plan)")
    body, digest = data[:-32], data[-32:]
    head_len, model_len = struct.unpack("<II", data[len(PLAN_MAGIC) : start])
    if start + head_len + model_len != len(body) or hashlib.sha256(body).digest() != digest:
        raise ValueError("Serialization assertion checksum == expected (corrupt plan)")
    header = json.loads(body[start : start + head_len])
    return header, body[start + head_len :]


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:3])


def version_loads(plan_version: str, runtime_version: str, compatible: bool) -> bool:
    """Whether a runtime loads a plan: the same version, or a later one for a
    version-compatible plan (NVIDIA's docs: 8.6 plans run on 9 and 10; 11 names only 10)."""
    plan, runtime = _version_tuple(plan_version), _version_tuple(runtime_version)
    if plan == runtime:
        return True
    oldest = (10,) if runtime[0] >= 11 else (8, 6)
    return compatible and oldest <= plan < runtime


def sm_loads(plan: dict[str, Any], sm: str) -> bool:
    """Whether a plan built on ``plan["sm"]`` runs on ``sm``."""
    if plan["sm"] == sm:
        return True
    if plan["hardware_compatibility"] == "NONE" or plan["dla_core"] >= 0:
        return False
    return int(sm[3:]) >= 80 and sm not in JETSON_SMS


def host_memory(rt: State, data: bytes) -> Any:
    return rt.trt.IHostMemory.__new__(rt.trt.IHostMemory, data)


_WHERE = "runtime.cpp::deserializeCudaEngine"


def check_plan(
    rt: State, data: bytes, host_code_allowed: bool
) -> tuple[str | None, dict[str, Any], bytes]:
    """(error line or None, header, ONNX bytes) for a serialized plan on this runtime."""
    try:
        header, model = decode_plan(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return api_error(1, "Serialization", _WHERE, f"{exc} failed."), {}, b""
    return _refusal(rt, header, host_code_allowed), header, model


def _refusal(rt: State, header: dict[str, Any], host_code_allowed: bool) -> str | None:
    built = header["trt_version"]
    if not version_loads(built, rt.version, header["version_compatible"]):
        return api_error(
            6,
            "API Usage Error",
            _WHERE,
            "The engine plan file is not compatible with this version of TensorRT, expecting "
            f"library version {rt.version} got {built}, please rebuild.",
        )
    if built != rt.version and header["lean_runtime"] and not host_code_allowed:
        return api_error(
            1,
            "Serialization",
            _WHERE,
            "the version-compatible plan carries a lean runtime, which runs only with "
            "IRuntime::setEngineHostCodeAllowed(true)",
        )
    sm = rt.current_sm()
    if not sm_loads(header, sm):
        plan_cc, here = header["sm"][3:], sm[3:]
        return api_error(
            6,
            "API Usage Error",
            _WHERE,
            "The engine plan file is generated on an incompatible device, expecting compute "
            f"{plan_cc[:-1]}.{plan_cc[-1]} got compute {here[:-1]}.{here[-1]}, please rebuild.",
        )
    if header["dla_core"] >= rt.num_dla_cores():
        text = f"the plan runs on DLA core {header['dla_core']}, which this platform lacks"
        return api_error(1, "Internal Error", _WHERE, text)
    return None
