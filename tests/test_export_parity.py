"""The export's parity check: torch and onnxruntime must agree on every parity item, except for the
few a tie between two nearest memory patches moves (the pick flips with float32 rounding, and the
patch's local scale with it); an export bug moves most items and is refused."""

from __future__ import annotations

import numpy as np

from training.export import TIE_FACTOR, parity_holds

TOLERANCE = 1e-3


def test_every_item_within_the_tolerance_holds():
    assert parity_holds(np.full(64, 1e-6), TOLERANCE) == (True, 0)


def test_one_tie_among_the_held_out_frames_holds_and_is_counted():
    relative = np.full(48, 1e-6)
    relative[36] = 1.06e-3  # tire, seed 3: the suite run whose export this refused before
    assert parity_holds(relative, TOLERANCE) == (True, 1)


def test_a_tie_may_not_move_a_score_by_more_than_the_bounded_factor():
    relative = np.full(48, 1e-6)
    relative[5] = TIE_FACTOR * TOLERANCE * 1.5
    assert parity_holds(relative, TOLERANCE) == (False, 1)


def test_more_than_a_sixteenth_of_the_items_beyond_the_tolerance_is_an_export_bug():
    relative = np.full(64, 1e-6)
    relative[:5] = 2e-3  # 4 of 64 would pass as ties; 5 do not
    assert parity_holds(relative, TOLERANCE) == (False, 5)
    relative[4] = 1e-6
    assert parity_holds(relative, TOLERANCE) == (True, 4)


def test_a_handful_of_parity_items_still_allows_one_tie():
    assert parity_holds(np.array([1e-6, 2e-3, 1e-6]), TOLERANCE) == (True, 1)
    assert parity_holds(np.array([2e-3, 2e-3, 1e-6]), TOLERANCE) == (False, 2)
