"""The CLI's table helper."""

from __future__ import annotations

from mliot_daemon.cli_output import table


def test_table_aligns_columns_and_shows_values_for_people() -> None:
    text = table([("motion", 60, None, True, 0.95312), ("a-long-name", 5, 3, False, 1.0)],
                 ("APP", "N", "VERSION", "READY", "ACC"))
    assert text.splitlines() == ["APP          N   VERSION  READY  ACC",
                                 "motion       60  -        yes    0.953",
                                 "a-long-name  5   3        no     1"]


def test_key_value_lines_and_long_cells() -> None:
    assert table([("classes", ["a", "b"]), ("version", 3)]) == "classes  a,b\nversion  3"
    assert table([("x", "y" * 100)]).endswith("y...") and len(table([("x", "y" * 100)])) == 51
    assert table([("x", "y" * 100)], max_cell=None).endswith("y" * 100)
    assert table([]) == ""
