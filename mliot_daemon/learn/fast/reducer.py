"""The shared PCA projection that reduced members read, as plain arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Reducer:
    """A fitted linear projection (PCA/IncrementalPCA without whitening) as two arrays."""

    mean: np.ndarray
    components: np.ndarray  # (k, d)

    @classmethod
    def from_pca(cls, pca: Any) -> Reducer:
        if getattr(pca, "whiten", False):
            raise ValueError("whitened PCA is not supported")
        return cls(np.asarray(pca.mean_, dtype=np.float64),
                   np.asarray(pca.components_, dtype=np.float64))

    def __call__(self, Z: np.ndarray) -> np.ndarray:
        return (Z - self.mean) @ self.components.T

    def one(self, z: np.ndarray) -> np.ndarray:
        """One 1-D row (the served case)."""
        if not hasattr(self, "_ct"):
            self._ct = np.ascontiguousarray(self.components.T)
            self._shift = self.mean @ self._ct
        out = z @ self._ct
        out -= self._shift
        return out

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])
