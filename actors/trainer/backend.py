"""The fit-backend interface: where a run's fits go.

A run takes one backend at its start and keeps it to its end: the local process pool
(`pool.PoolFits`) or a Dask cluster (`cluster.ClusterFits`). Only the fits move: the quick
version, prepare, reduce, assemble and score always run in the local pool (they read the local
store and write local model folders).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # the learning code is not imported before the daemon serves
    from mliot_daemon.learn.fit import FitResult
    from mliot_daemon.learn.plan import PlanStep


class FitBackend(Protocol):
    """A run's fits: up to ``width`` of them in flight at once, each one plan step fitted on
    the features the run prepared; ``release`` when the run ends."""

    where: str  # the machine's name or dask:<address>: status `fitting_on`, manifest `fitted_on`
    width: int  # fits of one run in flight at once

    async def fit(self, directory: Path, step: PlanStep, params: dict[str, Any] | None,
                  warm: dict[str, Any] | None = None) -> FitResult:
        """Fit ``step`` on the features prepared in ``directory`` (with ``params``: refit a
        served member with its parameters; with ``warm``: search from the previous version's
        best); the artifact is written locally either way."""
        ...

    def release(self) -> None:
        """Let go of what the run holds on the backend (the scattered features); never
        raises."""
        ...
