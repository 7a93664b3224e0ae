"""``GET /v1/apps/{app}/export?format=npz|csv``: an app's samples and corrections, streamed.

* ``npz`` (the default): ``X`` float32, ``(n, *shape)``; an audio app's clips of several
  lengths are padded with zeros to the longest, ``(n, longest)``. ``y`` the labels. ``kind``
  ``"sample"`` or ``"correction"`` (made by feedback: a correction or a confirmation),
  ``source`` the channel it came by (``http``, ``ws``, ``mqtt``, ``file``, ``feedback``...),
  ``predicted`` what the model had said ("" for a sample), ``created`` unix time, and for an
  audio app ``lengths``, each clip's length. `mliot import` (and the import endpoint) cut
  padded clips back to their ``lengths``.
* ``csv``: a header line (``x0,...,x{d-1},label``), then one row per sample: its values flat
  (C order), its label last. That is what ``POST /v1/apps/{app}/import`` takes, and it
  reshapes the rows to the app's shape. Clips of several lengths have no one width: 422.

Rows come in id order from one snapshot of the store (``store.exports``), a page at a time:
the reading, formatting and zipping of a page run in a thread, the loop only writes it out.
The zip is written as a stream (each entry's sizes after its data, which ``np.load`` reads).
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import zipfile
from collections.abc import Iterator

import numpy as np
import structlog
from aiohttp import web

from actors.server.core import ServingCore
from mliot_daemon.errors import Invalid, Malformed
from mliot_daemon.store.exports import SampleSnapshot

log = structlog.get_logger("mliot.server")

FORMATS = {"npz": "application/x-npz", "csv": "text/csv"}


async def export_samples(core: ServingCore, request: web.Request) -> web.StreamResponse:
    """Stream the app's samples in the format asked for; 400 for an unknown format."""
    entry = core.app(request.match_info["app"])
    fmt = request.query.get("format", "npz")
    if fmt not in FORMATS:
        raise Malformed(f"format {fmt[:20]!r}: export as npz or csv")
    snap = await asyncio.to_thread(SampleSnapshot, core.store.path, entry.name)
    chunks: Iterator[bytes] | None = None
    try:
        if snap.shape is None and snap.n:
            if entry.spec.data_type != "audio" or not snap.flat_clips:
                raise Invalid(f"app {entry.name!r} has samples of several shapes")
            if fmt == "csv":
                raise Invalid("clips of several lengths make rows of several widths: export "
                              "npz, which pads them and keeps their lengths")
        audio = entry.spec.data_type == "audio"
        chunks = _npz(snap, audio) if fmt == "npz" else _csv(snap)
        response = web.StreamResponse(headers={
            "Content-Type": FORMATS[fmt],
            "Content-Disposition": f'attachment; filename="{entry.name}.{fmt}"',
            "X-Mliot-Rows": str(snap.n), "X-Mliot-Corrections": str(snap.corrections)})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                if chunk:
                    await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:  # the client went away
            log.info("export_aborted", app=entry.name, format=fmt)
        except Exception:
            # The status line is out: only a cut connection tells the client it failed.
            log.exception("export_failed", app=entry.name, format=fmt)
            if request.transport is not None:
                request.transport.close()
        return response
    finally:
        if chunks is not None:
            await asyncio.to_thread(chunks.close)  # an abandoned generator: zip left unended
        await asyncio.to_thread(snap.close)


def _csv(snap: SampleSnapshot) -> Iterator[bytes]:
    width = math.prod(snap.shape) if snap.shape is not None else snap.width
    yield (",".join([*(f"x{i}" for i in range(width)), "label"]) + "\n").encode()
    after = 0
    while True:
        after, page = snap.page(after)
        if page is None:
            return
        text = io.StringIO()
        rows = csv.writer(text, lineterminator="\n")
        for x, label in zip(page.X.reshape(len(page.X), -1), page.labels, strict=True):
            rows.writerow([*map(str, x), label])  # str(float32): the shortest exact form
        yield text.getvalue().encode()


def _npz(snap: SampleSnapshot, audio: bool) -> Iterator[bytes]:
    sink = _Sink()
    columns: dict[str, list[object]] = {k: [] for k in ("y", "source", "predicted", "created",
                                                          "lengths")}
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as zf:  # stored, as np.savez does
        shape = (snap.n, *(snap.shape if snap.shape is not None else (snap.width,)))
        big = 4 * math.prod(shape) + 1024 > zipfile.ZIP64_LIMIT
        with zf.open("X.npy", "w", force_zip64=big) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                     "shape": shape})
            after = 0
            while True:
                after, page = snap.page(after)
                if page is None:
                    break
                f.write(np.ascontiguousarray(page.X, dtype="<f4").tobytes())
                for key, values in (("y", page.labels), ("source", page.sources),
                                    ("predicted", page.predicted), ("created", page.created),
                                    ("lengths", page.lengths)):
                    columns[key].extend(values)
                yield sink.take()
        arrays = {"y": np.array(columns["y"], dtype=str),
                  "kind": np.array(["correction" if s == "feedback" else "sample"
                                    for s in columns["source"]], dtype=str),
                  "source": np.array(columns["source"], dtype=str),
                  "predicted": np.array(columns["predicted"], dtype=str),
                  "created": np.array(columns["created"], dtype=np.float64)}
        if audio:
            arrays["lengths"] = np.array(columns["lengths"], dtype=np.int64)
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w",
                         force_zip64=array.nbytes > zipfile.ZIP64_LIMIT - 1024) as f:
                np.lib.format.write_array(f, array, allow_pickle=False)
            yield sink.take()
    yield sink.take()  # the central directory


class _Sink:
    """Where the zip goes: bytes kept until taken. It has no ``tell`` or ``seek``, so zipfile
    writes a stream (each entry's sizes in a descriptor after its data)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def write(self, data: bytes) -> int:
        self._buf += data
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = bytes(self._buf)
        self._buf.clear()
        return out
