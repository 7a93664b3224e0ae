"""Which CPU the event loop keeps and which the fitting workers get."""

from __future__ import annotations

from mliot_daemon.cpus import split


def test_the_loop_takes_the_highest_cpu_when_the_workers_leave_one() -> None:
    assert split({0, 1}, 1) == (1, frozenset({0}))
    assert split({0, 1, 2, 3}, 3) == (3, frozenset({0, 1, 2}))
    assert split({2, 5, 7}, 1) == (7, frozenset({2, 5}))  # the CPUs it was started on


def test_nothing_is_reserved_without_a_cpu_to_spare() -> None:
    assert split({0}, 1) is None  # one CPU
    assert split({0, 1}, 2) is None  # workers on every CPU: the user asked for them all
    assert split({0, 1, 2, 3}, 8) is None
