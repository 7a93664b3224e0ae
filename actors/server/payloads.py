"""Turning request payloads (HTTP, WebSocket, MQTT alike) into checked samples for an app.

Everything here is synchronous and CPU-bound: the server runs large payloads through it in a
thread so that parsing a big batch does not stall the event loop. Problems are raised as
``Malformed`` (not JSON) or ``Invalid`` (the wrong content), naming every field at fault.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import orjson

from mliot_daemon.errors import Invalid, Malformed
from mliot_daemon.messages import FeedbackIn, SamplesIn
from mliot_daemon.settings import AppSpec

MAX_DETAILS = 20
PATCH_SHAPE = (96, 64)  # one log-mel patch: audio may arrive already featurized


@dataclass(frozen=True, slots=True)
class SampleBatch:
    """Checked samples ready to store: one array per sample, labels as strings."""

    features: np.ndarray | list[np.ndarray]  # one array (n, *shape) when shapes agree
    labels: list[str]
    batch_id: str | None
    shape: tuple[int, ...] | None  # the common shape, when every sample has the same one


def parse_json(body: bytes) -> Any:
    """Decode a JSON body; 400 when it is not JSON."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Malformed(f"malformed JSON: {exc}") from exc


def version_number(text: str) -> int:
    """A model version from a URL path: 1 to 9 digits (a version folder's name has 6);
    ValueError otherwise, before anything builds a path or an int from it."""
    if not (text.isascii() and text.isdigit() and 0 < len(text) <= 9) or int(text) == 0:
        raise ValueError(f"not a version number: {text[:20]!r}")
    return int(text)


def label_text(value: Any, path: str) -> str:
    """Labels are strings in every API; numbers are converted."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Invalid(f"{path}: a label must be a string or a number")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value)
    if not text or len(text) > 256:
        raise Invalid(f"{path}: a label must have 1 to 256 characters")
    return text


def check_label(spec: AppSpec, label: str, path: str) -> None:
    """An app with declared classes takes only those labels."""
    if spec.classes is not None and label not in spec.classes:
        raise Invalid(f"{path}: unknown label {label!r}; classes are {list(spec.classes)}")


_NUMBERS = frozenset({int, float})
_MAX_DEPTH = 4  # a batch of colour images: (n, h, w, c)


def numbers_only(value: Any, path: str) -> None:
    """Features are JSON numbers in (nested) lists: numpy would also take ``true`` or
    ``"1.5"`` and store them as numbers, so those are refused here, naming the field. A
    decoded tensor (an array already) is numeric by its datatype."""
    if isinstance(value, np.ndarray):
        return
    if not isinstance(value, list):
        raise Invalid(f"{path}: must be a (nested) list of numbers, got "
                            f"{_json_type(value)}")
    if _all_numbers(value):
        return
    found = _first_non_number(value, path)
    if found is not None:
        raise Invalid(f"{path}: must be a (nested) list of numbers: {found[0]} is "
                            f"{_json_type(found[1])}")
    # only ragged nesting is left: numpy's conversion names that


def _all_numbers(value: list[Any]) -> bool:
    """Whether every leaf is an int or a float: one pass in C per nesting level (the types
    of a level's items as a set), no Python work per number."""
    for depth in range(_MAX_DEPTH):
        level: Any = value
        for _ in range(depth):
            level = chain.from_iterable(level)
        kinds = set(map(type, level))
        if kinds <= _NUMBERS:
            return True
        if kinds != {list}:
            return False
    return False


def _first_non_number(value: list[Any], path: str) -> tuple[str, Any] | None:
    """The path and value of the first leaf that is neither a number nor a list."""
    for i, item in enumerate(value):
        if type(item) is list:
            found = _first_non_number(item, f"{path}[{i}]")
            if found is not None:
                return found
        elif type(item) not in _NUMBERS:
            return f"{path}[{i}]", item
    return None


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", str: "a string", dict: "an object", list: "a list",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)


def check_features(value: Any, spec: AppSpec, shape: tuple[int, ...] | None,
                   path: str = "features") -> np.ndarray:
    """One sample as a finite float32 array of the shape its app takes; 422 otherwise."""
    numbers_only(value, path)
    try:
        x = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise Invalid(f"{path}: must be a (nested) list of numbers: {exc}") from exc
    check_shape(x, spec, shape, path)
    if not np.isfinite(x).all():
        raise Invalid(f"{path}: NaN or infinite values")
    return x


def peer_instance(value: Any) -> np.ndarray:
    """A sample a peer forwards (its origin checked it against the app): finite float32."""
    numbers_only(value, "instances")
    try:
        x = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise Invalid(f"instances: must be (nested) lists of numbers: {exc}") from exc
    if x.size == 0 or x.ndim > 3 or not np.isfinite(x).all():
        raise Invalid("instances: an empty, over-deep or non-finite sample")
    return x


def check_shape(x: np.ndarray, spec: AppSpec, shape: tuple[int, ...] | None, path: str
                ) -> None:
    """One sample's shape is one its app takes (422 otherwise)."""
    kind = spec.data_type
    if kind == "vector":
        rank_ok = x.ndim == 1
    elif kind == "image":
        rank_ok = x.ndim in (2, 3)
    elif kind == "sensor":
        rank_ok = x.ndim == 2
    else:
        rank_ok = x.ndim == 1 or x.shape == PATCH_SHAPE
    if not rank_ok or x.size == 0:
        want = {"vector": "(d,)", "image": "(h, w) or (h, w, c)", "sensor": "(channels, time)",
                "audio": "(n,) raw samples or (96, 64) log-mel"}[spec.data_type]
        raise Invalid(f"{path}: shape {list(x.shape)} is not a {spec.data_type} sample "
                            f"{want}")
    if spec.data_type == "audio":
        assert spec.sample_rate is not None
        if x.ndim == 1 and x.shape[0] < spec.sample_rate // 2:
            raise Invalid(f"{path}: an audio clip needs at least 0.5 s "
                                f"({spec.sample_rate // 2} samples), got {x.shape[0]}")
        return
    if shape is not None and x.shape != shape:
        raise Invalid(f"{path}: shape {list(x.shape)} differs from the app's "
                            f"{list(shape)}")


def samples_in(payload: Any) -> SamplesIn:
    """The ``{"samples": [{"features", "label"}], "batch_id"?}`` envelope as typed input."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("samples"), list):
        raise Invalid('expected {"samples": [{"features": [...], "label": ...}, ...]}')
    unknown = set(payload) - {"samples", "batch_id"}
    if unknown:
        raise Invalid(f"unknown fields: {sorted(unknown)}")
    return SamplesIn(items=tuple(payload["samples"]), batch_id=payload.get("batch_id"))


def feedback_in(payload: Any) -> FeedbackIn:
    """The ``{"prediction_id", "label"}`` body as typed input."""
    if not isinstance(payload, Mapping) or "prediction_id" not in payload \
            or "label" not in payload:
        raise Invalid('expected {"prediction_id": "...", "label": "..."}')
    return FeedbackIn(prediction_id=payload["prediction_id"], label=payload["label"])


def parse_samples(samples: SamplesIn, spec: AppSpec, shape: tuple[int, ...] | None
                  ) -> SampleBatch:
    """Check samples against their app, listing every error."""
    batch_id = samples.batch_id
    if batch_id is not None and (not isinstance(batch_id, str) or not 0 < len(batch_id) <= 128):
        raise Invalid("batch_id: must be a string of 1 to 128 characters")
    items = samples.items
    if not items:
        raise Invalid("samples: empty")
    fast = _parse_uniform(items, spec, shape, batch_id)
    if fast is not None:
        return fast
    features: list[np.ndarray] = []
    labels: list[str] = []
    errors: list[str] = []
    fixed = shape
    for i, item in enumerate(items):
        path = f"samples[{i}]"
        try:
            if not isinstance(item, Mapping) or "features" not in item or "label" not in item:
                raise Invalid(f"{path}: needs features and label")
            label = label_text(item["label"], f"{path}.label")
            check_label(spec, label, f"{path}.label")
            x = check_features(item["features"], spec, fixed, f"{path}.features")
        except Invalid as exc:
            errors.append(exc.message)
            if len(errors) >= MAX_DETAILS:
                break
            continue
        if fixed is None and spec.data_type != "audio":
            fixed = x.shape  # the first sample fixes the shape for the rest of the batch
        features.append(x)
        labels.append(label)
    if errors:
        raise Invalid(f"{len(errors)} invalid sample(s); nothing was stored", errors)
    common = features[0].shape if all(f.shape == features[0].shape for f in features) else None
    return SampleBatch(features, labels, batch_id, common)


def _parse_uniform(items: tuple[Any, ...], spec: AppSpec, shape: tuple[int, ...] | None,
                   batch_id: str | None) -> SampleBatch | None:
    """The common case in one numpy call: well-formed samples of one shape. Returns None when
    anything is off, and the caller's per-sample pass then names every problem."""
    try:
        labels = [item["label"] for item in items]
        rows = [item["features"] for item in items]
        numbers_only(rows, "samples")
        x = np.asarray(rows, dtype=np.float32)
    except (TypeError, KeyError, ValueError, Invalid):  # the slow pass names the problem
        return None
    if not all(isinstance(label, str) and 0 < len(label) <= 256 for label in labels):
        return None
    if spec.classes is not None and not set(labels) <= set(spec.classes):
        return None
    try:
        check_shape(x[0], spec, shape, "features")
    except Invalid:
        return None
    if not np.isfinite(x).all():
        return None
    return SampleBatch(x, labels, batch_id, None if spec.data_type == "audio" else x.shape[1:])
