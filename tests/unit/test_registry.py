"""Retention in a real folder: the newest ``keep`` versions, the current one, the pinned ones,
and the versions that ended the two newest completed runs survive a publish; the rest go."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mliot_daemon.learn.persist import FORMAT, MANIFEST
from mliot_daemon.registry import Registry


def publish(reg: Registry, complete: bool, keep: int = 2) -> int:
    """A staged model as a worker leaves it (a manifest is all retention reads), published."""
    staging = reg.staging_path("a")
    staging.mkdir()
    (staging / MANIFEST).write_text(json.dumps({"format": FORMAT,
                                                "extra": {"complete": complete}}))
    return reg.publish("a", staging, keep, {"reason": "test"})


def run(reg: Registry, versions: int) -> list[int]:
    """One training run: lazy versions, the last one marked complete."""
    return [publish(reg, i == versions - 1) for i in range(versions)]


def test_the_previous_runs_last_version_and_pinned_ones_outlive_retention(
        tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    first = run(reg, 4)
    assert reg.versions("a") == first[-2:]  # keep = 2 within a run
    second = run(reg, 4)
    # the first run's last version is what served before the retrain: still there to activate
    assert reg.versions("a") == [first[-1], *second[-2:]]
    assert reg.run_ends("a") == [first[-1], second[-1]]
    reg.activate("a", first[-1])
    assert reg.current("a") == first[-1]

    reg.pin("a", second[-2])
    reg.pin("a", second[-2])  # twice: still one pin
    assert (tmp_path / "a" / "pinned").read_text() == f"{second[-2]}\n"
    third = run(reg, 3)
    # the first run's end is now two runs back: only the pin (and the newest) keep versions
    assert reg.versions("a") == [second[-2], second[-1], *third[-2:]]
    assert Registry(tmp_path).pinned("a") == {second[-2]}  # on disk: survives a restart

    reg.pin("a", second[-2], pinned=False)
    reg.pin("a", second[-2], pinned=False)  # unpinning what is not pinned changes nothing
    publish(reg, False)  # a new run under way: the next publish prunes the unpinned version
    assert second[-2] not in reg.versions("a")
    assert reg.versions("a")[0] == second[-1]  # the previous completed run's end stays

    with pytest.raises(KeyError):
        reg.pin("a", first[0])  # pruned long ago: nothing to pin


def test_a_run_cut_short_is_not_a_completed_run(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    done = run(reg, 3)
    cut = [publish(reg, False) for _ in range(3)]  # killed (or failed) before its last fit
    restarted = run(reg, 3)
    assert reg.run_ends("a") == [done[-1], restarted[-1]]
    assert reg.versions("a") == [done[-1], *restarted[-2:]]
    assert not set(cut) & set(reg.versions("a"))
