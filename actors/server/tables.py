"""Labelled files as samples: a CSV (one row a sample, the label last) or an npz (arrays ``X``
and ``y``, and ``lengths`` when ``X`` holds audio clips padded to one length, as an export
has them), as uploaded to ``POST /v1/apps/{app}/import`` by the dashboard or ``mliot
import``. Flat rows are reshaped to the app's shape, so a sensor or image app can be fed a
spreadsheet. Synchronous and CPU-bound: the core runs it on its parser thread."""

from __future__ import annotations

import csv
import io
import math
import zipfile
from typing import Any

import numpy as np

from actors.server.payloads import SampleBatch, check_label, check_shape, label_text
from mliot_daemon.errors import Invalid, Malformed
from mliot_daemon.settings import AppSpec

CSV_TYPES = ("text/csv", "application/csv")
NPZ_TYPES = ("application/x-npz", "application/octet-stream")
MAX_LABELS_CHECKED = 20  # distinct bad labels named in one error


def read_table(body: bytes, content_type: str
               ) -> tuple[np.ndarray | list[np.ndarray], list[Any]]:
    """(rows, labels) of an uploaded file, by its content type; padded clips come back cut
    to their lengths, as a list."""
    if content_type in CSV_TYPES:
        return _read_csv(body)
    if content_type in NPZ_TYPES:
        return _read_npz(body)
    raise Invalid(f"Content-Type {content_type or 'none'!r}: send text/csv (label last) or "
                  "application/x-npz (arrays X and y)")


def _read_csv(body: bytes) -> tuple[np.ndarray, list[Any]]:
    try:
        rows = [r for r in csv.reader(io.StringIO(body.decode("utf-8-sig"))) if r]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise Malformed(f"not a UTF-8 CSV file: {exc}") from None
    if rows and not _numeric(rows[0][0]):
        rows = rows[1:]  # a header line
    if not rows:
        raise Invalid("the file has no rows")
    width = len(rows[0])
    if width < 2 or any(len(r) != width for r in rows):
        raise Invalid("every row needs the same number of values, and a label last")
    try:
        X = np.array([[float(v) for v in r[:-1]] for r in rows], dtype=np.float32)
    except ValueError as exc:
        raise Invalid(f"a value is not a number: {exc}") from None
    return X, [r[-1] for r in rows]


def _read_npz(body: bytes) -> tuple[np.ndarray | list[np.ndarray], list[Any]]:
    try:
        with np.load(io.BytesIO(body), allow_pickle=False) as data:
            if "X" not in data or "y" not in data:
                raise Invalid("an .npz needs arrays X and y")
            X, y = data["X"], data["y"]
            lengths = data.get("lengths")
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise Malformed(f"not an .npz file (or it holds objects): {exc}") from None
    if X.dtype.kind not in "iuf":
        raise Invalid(f"X must hold numbers, not {X.dtype}")
    if y.ndim != 1 or len(y) != len(X):
        raise Invalid(f"y must be one label per row of X: {len(X)} rows, y of shape {y.shape}")
    X = X.astype(np.float32)
    if lengths is None:
        return X, y.tolist()
    longest = X.shape[1] if X.ndim > 1 else 0
    if lengths.shape != (len(X),) or lengths.dtype.kind not in "iu" or not all(
            0 < n <= longest for n in lengths.tolist()):
        raise Invalid(f"lengths must be one length per row of X, each from 1 to {longest}")
    return [x[:n] for x, n in zip(X, lengths.tolist(), strict=True)], y.tolist()


def parse_table(X: np.ndarray | list[np.ndarray], labels: list[Any], spec: AppSpec,
                shape: tuple[int, ...] | None, batch_id: str | None) -> SampleBatch:
    """Rows and labels checked against their app: flat rows reshaped to its shape (clips cut
    to their lengths are checked one by one), finite values, labels it takes."""
    n = len(X)
    if n == 0:
        raise Invalid("the file has no rows")
    if isinstance(X, list):
        if spec.data_type != "audio":
            raise Invalid("lengths: only an audio app takes rows of several lengths")
        for i, x in enumerate(X):
            check_shape(x, spec, shape, f"rows[{i}]")
        finite = all(np.isfinite(x).all() for x in X)
    else:
        X = _shaped(X, spec, shape)
        check_shape(X[0], spec, shape, "rows[0]")  # every row has its shape
        finite = bool(np.isfinite(X).all())
    if not finite:
        raise Invalid("the file holds NaN or infinite values")
    texts = [label_text(label, f"rows[{i}].label") for i, label in enumerate(labels)]
    for i, label in enumerate(sorted(set(texts))[:MAX_LABELS_CHECKED]):
        check_label(spec, label, f"labels[{i}]")
    common = None if spec.data_type == "audio" or isinstance(X, list) else X.shape[1:]
    return SampleBatch(X, texts, batch_id, common)


def _shaped(X: np.ndarray, spec: AppSpec, shape: tuple[int, ...] | None) -> np.ndarray:
    if shape is not None and X.shape[1:] == shape:
        return X
    flat = X.reshape(len(X), -1)
    if shape is not None:
        if flat.shape[1] != math.prod(shape):
            raise Invalid(f"rows of {flat.shape[1]} values do not fit the app's shape "
                          f"{list(shape)} ({math.prod(shape)} values)")
        return flat.reshape(len(X), *shape)
    if spec.data_type in ("vector", "audio"):
        return flat
    raise Invalid(f"a {spec.data_type} app needs its shape to take flat rows: declare "
                  "`shape` in its spec (or send samples of that shape first)")


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
