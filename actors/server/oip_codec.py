"""Open Inference Protocol v2 (KServe / Triton) request and response bodies, without HTTP.

Supports JSON tensors and Triton's binary tensor data extension: the body starts with a JSON
header of ``Inference-Header-Content-Length`` bytes, followed by raw little-endian tensors in
input order, each sized by its ``parameters.binary_data_size``. Stock ``tritonclient`` sends
inputs that way and asks for binary outputs (``binary_data_output``) by default.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from actors.server.payloads import numbers_only
from mliot_daemon.errors import Invalid, Malformed

DTYPES = {
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
}


MAX_RANK = 5  # [n, h, w, c] and one more to spare
MAX_JSON_EXPANSION = 8  # a JSON number takes at least 2 bytes ("0,"): 8 bytes of FP64 at most 4x


def decode_request(body: bytes, header_length: int | None) -> tuple[dict[str, Any], np.ndarray]:
    """The request's JSON and its one input as an array of shape [n, ...sample shape]."""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise Malformed("Inference-Header-Content-Length is out of range")
        head, binary = body[:header_length], body[header_length:]
    else:
        head, binary = body, b""
    try:
        request = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"malformed JSON: {exc}") from exc
    inputs = request.get("inputs") if isinstance(request, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise Invalid("inputs: exactly one input tensor is expected")
    tensor = inputs[0]
    shape, datatype = tensor.get("shape"), tensor.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise Invalid(f"inputs[0].datatype: {str(datatype)[:40]!r} is not one of "
                            f"{sorted(DTYPES)}")
    if not isinstance(shape, list) or not 2 <= len(shape) <= MAX_RANK or not all(
            type(d) is int and d > 0 for d in shape):
        raise Invalid(f"inputs[0].shape: must be [n, ...sample shape] of 2 to {MAX_RANK} "
                            "positive sizes")
    dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
    elements = math.prod(shape)  # Python ints: numpy's product would wrap around at 2**63
    if elements * dtype.itemsize > len(body) * MAX_JSON_EXPANSION:
        raise Invalid(f"inputs[0].shape: {shape} holds {elements} values, more than the "
                            "request carries")
    for where, value in (("parameters", request.get("parameters")),
                         ("inputs[0].parameters", tensor.get("parameters"))):
        if value is not None and not isinstance(value, dict):
            raise Invalid(f"{where}: must be an object")
    if request.get("outputs") is not None and not (
            isinstance(request["outputs"], list)
            and all(isinstance(o, dict) and isinstance(o.get("parameters") or {}, dict)
                    for o in request["outputs"])):
        raise Invalid("outputs: must be a list of objects")
    if request.get("id") is not None and not isinstance(request["id"], str):
        raise Invalid("id: must be a string")
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int):
            raise Invalid("inputs[0].parameters.binary_data_size: must be an integer")
        expected = elements * dtype.itemsize
        if size != expected or len(binary) != size:
            raise Invalid(f"inputs[0]: binary data of {len(binary)} bytes, expected "
                                f"{expected}")
        array = np.frombuffer(binary, dtype=dtype).reshape(shape)
    else:
        if "data" not in tensor:
            raise Invalid("inputs[0].data: missing")
        numbers_only(tensor["data"], "inputs[0].data")
        try:
            array = np.asarray(tensor["data"], dtype=dtype).reshape(shape)
        except (ValueError, TypeError) as exc:
            raise Invalid(f"inputs[0].data: does not fit shape {shape}: {exc}") from exc
    return request, array


OUTPUTS = ("label", "confidence", "probabilities", "prediction_id")


@dataclass(frozen=True, slots=True)
class Output:
    """One output tensor a request asked for."""

    name: str
    binary: bool  # Triton's binary tensor extension: raw bytes after the JSON header
    class_count: int = 0  # Triton's classification extension: the top k as "p:index:label"


def requested_outputs(request: dict[str, Any]) -> list[Output]:
    """The outputs a request selects (all of them when it names none, as the spec says), each
    binary when it asks so or the request-level ``binary_data_output`` does."""
    default = (request.get("parameters") or {}).get("binary_data_output", False)
    if not isinstance(default, bool):
        raise Invalid("parameters.binary_data_output: must be true or false")
    asked = request.get("outputs")
    if not asked:
        return [Output(name, default) for name in OUTPUTS]
    out: list[Output] = []
    for i, o in enumerate(asked):
        name, params = o.get("name"), o.get("parameters") or {}
        if name not in OUTPUTS:
            raise Invalid(f"outputs[{i}].name: {str(name)[:40]!r} is not one of "
                          f"{list(OUTPUTS)}")
        if any(seen.name == name for seen in out):
            raise Invalid(f"outputs[{i}].name: {name!r} is asked for twice")
        binary, k = params.get("binary_data", default), params.get("classification", 0)
        if not isinstance(binary, bool):
            raise Invalid(f"outputs[{i}].parameters.binary_data: must be true or false")
        if type(k) is not int or k < 0:
            raise Invalid(f"outputs[{i}].parameters.classification: must be a count >= 0")
        if k and name != "probabilities":
            raise Invalid(f"outputs[{i}].parameters.classification: only the probabilities "
                          "output is a classification")
        out.append(Output(name, binary, k))
    return out


def _top_classes(probabilities: np.ndarray, classes: Sequence[str], k: int) -> list[str]:
    """Triton's classification strings, row by row: the k likeliest "p:index:label"."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [f"{probabilities[r, i]:.6f}:{i}:{classes[i]}"
            for r, row in enumerate(order) for i in row]


def _bytes_tensor(items: Sequence[str]) -> bytes:
    """BYTES in binary: each element's length (4 bytes, little-endian), then the element."""
    encoded = [s.encode() for s in items]
    return b"".join(struct.pack("<I", len(b)) + b for b in encoded)


def encode_response(model: str, version: int, request_id: str | None,
                    outputs: Sequence[Output], columns: dict[str, Any],
                    classes: Sequence[str]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow.
    ``columns``: label and prediction_id (lists of str), confidence ([n]) and probabilities
    ([n, classes], in ``classes`` order) as arrays, for the outputs asked for."""
    head: dict[str, Any] = {"model_name": model, "model_version": str(version), "outputs": []}
    if request_id is not None:
        head["id"] = request_id
    binary_parts: list[bytes] = []
    for o in outputs:
        data = columns[o.name]
        n = len(data)
        if o.name in ("label", "prediction_id"):
            tensor: dict[str, Any] = {"name": o.name, "datatype": "BYTES", "shape": [n]}
            items: list[str] | np.ndarray = list(data)
        elif o.class_count:
            k = min(o.class_count, len(classes))
            items = _top_classes(np.asarray(data), classes, k)
            tensor = {"name": o.name, "datatype": "BYTES", "shape": [n, k]}
        else:
            items = np.asarray(data, dtype="<f4")
            tensor = {"name": o.name, "datatype": "FP32", "shape": list(items.shape)}
        if o.binary:
            raw = items.tobytes() if isinstance(items, np.ndarray) else _bytes_tensor(items)
            tensor["parameters"] = {"binary_data_size": len(raw)}
            binary_parts.append(raw)
        else:
            tensor["data"] = items.ravel().tolist() if isinstance(items, np.ndarray) else items
        head["outputs"].append(tensor)
    header = orjson.dumps(head)
    if not binary_parts:
        return header, None
    return header + b"".join(binary_parts), len(header)
