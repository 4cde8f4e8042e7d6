"""Training progress in a log file: one readable line per epoch, never a carriage-return bar."""

from __future__ import annotations

import io

from training.progress import MAX_LINES, EpochLines


def test_a_log_gets_one_line_per_epoch_with_the_losses_and_a_last_line_at_the_end():
    stream = io.StringIO()
    lines = EpochLines(total=95, initial=0, desc="train", steps_per_epoch=30, stream=stream)
    for _ in range(95):
        lines.update(1)
        lines.set_postfix(d="0.100", div="0.74")
    lines.close()
    text = stream.getvalue()
    assert "\r" not in text
    printed = text.splitlines()
    assert [line.split(",")[0] for line in printed] == ["train: step 30/95 (32%)", "train: step 60/95 (63%)",
                                                        "train: step 90/95 (95%)", "train: step 95/95 (100%)"]
    assert printed[-1].endswith("d=0.100 div=0.74")


def test_one_step_epochs_are_thinned_to_a_bounded_number_of_lines():
    stream = io.StringIO()
    lines = EpochLines(total=1000, initial=0, desc="train", steps_per_epoch=1, stream=stream)
    for _ in range(1000):
        lines.update(1)
    lines.close()
    assert len(stream.getvalue().splitlines()) == MAX_LINES
