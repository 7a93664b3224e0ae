"""How a sample is kept on disk: its float32 bytes in C order, and its shape as text ("64",
"8,8"). The store writes samples this way, and pool workers, which read the SQLite file
directly, decode them with the same module."""

from __future__ import annotations

import numpy as np


def encode(x: np.ndarray) -> tuple[bytes, str]:
    """A sample as (float32 bytes, shape text)."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    return a.tobytes(), ",".join(map(str, a.shape))


def decode(blob: bytes, shape: str) -> np.ndarray:
    """The sample ``encode`` gave these for (a read-only view of ``blob``)."""
    return np.frombuffer(blob, dtype=np.float32).reshape(tuple(int(s) for s in shape.split(",")))
