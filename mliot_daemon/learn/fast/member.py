"""What every compiled member offers (:class:`FastMember`), the optional "matrix first" row
path the ensemble fuses (:class:`MatrixFirstMember`), and the block-wise ``predict`` and ``scores``
the member classes share (:class:`BlockwisePredict`)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Protocol

import numpy as np


class FastMember(Protocol):
    """One compiled member: class indices 0..K-1, the same labels as the library's ``predict``.

    ``family`` and ``reduced`` are set by ``compile_member``; a reduced member reads the shared
    PCA's features instead of the front end's. ``matrix_first`` is a class attribute: True when
    the member is also a :class:`MatrixFirstMember`, so that the ensemble can fuse it (the
    ensemble reads it once, when it plans the single-row path).
    """

    family: str
    reduced: bool
    matrix_first: ClassVar[bool]

    def predict(self, Z: np.ndarray) -> np.ndarray:
        """Class indices (intp) for the rows of the 2-D ``Z``."""
        ...

    def predict_one(self, z: np.ndarray) -> int:
        """Class index for one 1-D row: the served case, a handful of numpy calls on
        precomputed arrays and no temporaries beyond a few vectors."""
        ...

    def scores(self, Z: np.ndarray) -> np.ndarray:
        """(rows, K) per-class scores, the library's own (``learn.soft``): the soft vote's."""
        ...

    def scores_one(self, z: np.ndarray) -> np.ndarray:
        """(K,) per-class scores of one 1-D row."""
        ...

    def class_of(self, scores: np.ndarray) -> Any:
        """The class the library's ``predict`` gives, from (rows, K) or (K,) ``scores``."""
        ...


class MatrixFirstMember(FastMember, Protocol):
    """A member whose one-row work starts with one matrix-vector product ``first_rows() @ z``.

    The ensemble stacks the matrices of all such members into one product (``FusedDense``):
    the same bytes are read, with one call instead of one per member.
    """

    def first_rows(self) -> np.ndarray:
        """The (rows, features) matrix whose product with the row starts this member."""
        ...

    def finish_one(self, s: np.ndarray, z: np.ndarray, zz: float) -> int:
        """Class index for row ``z`` from ``s = first_rows() @ z`` (which this may overwrite)
        and ``zz = z @ z`` (computed once for all members)."""
        ...

    def finish_scores(self, s: np.ndarray, z: np.ndarray, zz: float) -> np.ndarray:
        """:meth:`finish_one`'s per-class scores (``FastMember.scores``) instead of a class."""
        ...


class BlockwisePredict(ABC):
    """``predict`` from a member's ``predict_one`` and ``_predict_block``: one row takes the
    single-row path, larger inputs are cut into blocks of ``_block`` rows so that every
    temporary stays in cache (each member sets the block size that suits its temporaries)."""

    _block = 4096

    def predict(self, Z: np.ndarray) -> np.ndarray:
        Z = np.asarray(Z, dtype=np.float64)
        n = Z.shape[0]
        if n == 1:
            return np.array([self.predict_one(Z[0])], dtype=np.intp)
        if n <= self._block:
            return self._predict_block(Z)
        out = np.empty(n, dtype=np.intp)
        for s in range(0, n, self._block):
            out[s:s + self._block] = self._predict_block(Z[s:s + self._block])
        return out

    def scores(self, Z: np.ndarray) -> np.ndarray:
        Z = np.asarray(Z, dtype=np.float64)
        if len(Z) <= self._block:
            return self._scores_block(Z)
        return np.concatenate([self._scores_block(Z[s:s + self._block])
                               for s in range(0, len(Z), self._block)])

    def scores_one(self, z: np.ndarray) -> np.ndarray:
        if self.matrix_first:  # the product the ensemble would have fused, then the finish
            return self.finish_scores(self.first_rows() @ z, z, float(z @ z))
        return self._scores_block(z[None])[0]

    def class_of(self, scores: np.ndarray) -> Any:
        return scores.argmax(axis=-1)

    @abstractmethod
    def _scores_block(self, Z: np.ndarray) -> np.ndarray:
        """Per-class scores for a block of at most ``_block`` rows."""

    @abstractmethod
    def predict_one(self, z: np.ndarray) -> int:
        """See :meth:`FastMember.predict_one`."""

    @abstractmethod
    def _predict_block(self, Z: np.ndarray) -> np.ndarray:
        """Class indices for a block of at most ``_block`` rows."""
