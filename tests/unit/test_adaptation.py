"""Which feedback an adaptation holds out to compare the new version with the serving one."""

from __future__ import annotations

from actors.trainer.adaptation import HOLDOUT_SHARE, held_out
from mliot_daemon.messages import FeedbackAdded


def feedback(sample_id: int, wrong: bool) -> FeedbackAdded:
    return FeedbackAdded(app="a", wrong=wrong, sample_id=sample_id, label="x",
                         predicted="y" if wrong else "x")


def test_the_newest_feedback_is_held_out_right_answers_included() -> None:
    # 14 corrections, then 6 confirmations: the serving version was right on the newest rows
    rows = [feedback(i, wrong=True) for i in range(1, 15)] + [feedback(i, wrong=False)
                                                              for i in range(15, 21)]
    held, ids = held_out(rows)
    assert held == int(len(rows) * HOLDOUT_SHARE) == 6
    assert ids == tuple(range(15, 21))  # all confirmations: not only the serving version's errors


def test_a_sample_corrected_twice_is_held_out_once_and_one_row_is_the_least() -> None:
    rows = [feedback(1, wrong=True), feedback(2, wrong=False), feedback(3, wrong=True),
            feedback(3, wrong=False)]
    assert held_out(rows) == (1, (3,))
    assert held_out(rows * 3) == (3, (2, 3))  # the newest 3 of 12: rows 2, 3, 3
    assert held_out(rows[:1]) == (1, (1,))
