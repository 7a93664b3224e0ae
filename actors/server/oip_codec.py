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


def wants_binary(request: dict[str, Any]) -> bool:
    """Whether the client asked for binary outputs (request- or output-level parameter)."""
    if (request.get("parameters") or {}).get("binary_data_output"):
        return True
    outputs = request.get("outputs") or []
    return any((o.get("parameters") or {}).get("binary_data") for o in outputs
               if isinstance(o, dict))


def encode_response(model: str, version: int, request_id: str | None, labels: Sequence[str],
                    confidences: np.ndarray, binary: bool) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when tensors follow in binary."""
    n = len(labels)
    outputs: list[dict[str, Any]] = [
        {"name": "label", "datatype": "BYTES", "shape": [n]},
        {"name": "confidence", "datatype": "FP32", "shape": [n]},
    ]
    head: dict[str, Any] = {"model_name": model, "model_version": str(version),
                            "outputs": outputs}
    if request_id is not None:
        head["id"] = request_id
    if not binary:
        outputs[0]["data"] = list(labels)
        outputs[1]["data"] = [float(c) for c in confidences]
        return orjson.dumps(head), None
    encoded = [s.encode() for s in labels]
    label_bytes = b"".join(struct.pack("<I", len(b)) + b for b in encoded)
    conf_bytes = np.asarray(confidences, dtype="<f4").tobytes()
    outputs[0]["parameters"] = {"binary_data_size": len(label_bytes)}
    outputs[1]["parameters"] = {"binary_data_size": len(conf_bytes)}
    header = orjson.dumps(head)
    return header + label_bytes + conf_bytes, len(header)
