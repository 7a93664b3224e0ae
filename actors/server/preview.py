"""A label query's preview: what a person looks at or listens to before answering.

Images become a PNG thumbnail, audio a WAV clip at the app's sample rate, sensor windows and
vectors their numbers as JSON. The encoders are the standard library's (``zlib`` for PNG's
deflate, ``wave``): a thumbnail of at most 128 pixels is a few lines, not a dependency.
"""

from __future__ import annotations

import io
import struct
import wave
import zlib
from typing import Any

import numpy as np

THUMBNAIL_PX = 128  # the longer side at most
SMALL_PX = 64  # smaller images are scaled up (nearest neighbour) to about this
CLIP_S = 5.0  # audio previews are cut to this


def preview(sample: np.ndarray, data_type: str, sample_rate: int | None
            ) -> tuple[bytes, str]:
    """(body, content type) of a sample's preview."""
    x = np.asarray(sample, dtype=np.float64)
    if data_type == "image" and x.ndim in (2, 3):
        return png(thumbnail(x)), "image/png"
    if data_type == "audio" and x.ndim == 1 and sample_rate:
        return wav(x[:int(CLIP_S * sample_rate)], sample_rate), "audio/wav"
    import orjson

    body: Any = {"shape": list(x.shape), "values": np.round(x, 6).tolist()}
    return orjson.dumps(body), "application/json"


def thumbnail(x: np.ndarray) -> np.ndarray:
    """8-bit pixels scaled to the image's own range, (h, w) or (h, w, 3), at most
    ``THUMBNAIL_PX`` on the longer side; tiny images scaled up to about ``SMALL_PX``."""
    if x.ndim == 3:
        x = x[..., :3] if x.shape[2] >= 3 else x[..., 0]
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    pixels = np.nan_to_num((x - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(x))
    side = max(pixels.shape[:2])
    if side > THUMBNAIL_PX:
        step = -(-side // THUMBNAIL_PX)
        pixels = pixels[::step, ::step]
    elif side < SMALL_PX:
        k = SMALL_PX // side
        pixels = pixels.repeat(k, axis=0).repeat(k, axis=1)
    return np.ascontiguousarray(pixels.round().astype(np.uint8))


def png(pixels: np.ndarray) -> bytes:
    """A PNG of 8-bit grey (h, w) or RGB (h, w, 3) pixels."""
    h, w = pixels.shape[:2]
    colour = 0 if pixels.ndim == 2 else 2
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def wav(samples: np.ndarray, rate: int) -> bytes:
    """16-bit mono PCM; samples in [-1, 1] (louder ones are clipped)."""
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(pcm)
    return out.getvalue()
