"""Synthetic anomalies in feature windows: the tables' self-check, as pasted patches are the images'.

An attack in flow records rarely has one wild value. More often each value is ordinary and their
combination is not (many connections carrying few bytes, a service on an unusual flag), or a few
values leave the normal range. So each copy of a held-out normal window gets one change on a random
subset of 1/8 to 1/3 of its features (image patches cover 1/8 to 1/3 of the input side):

swapped  those features take the values of another held-out normal window: every value alone is
         normal, the combination is not (the "dependency" anomalies of Han et al., ADBench, 2022;
         the cut-paste patch's analogue);
shifted  those features get Gaussian noise of one normal standard deviation (the encoded unit:
         numeric features are centred and scaled on normal rows), the "local" anomalies of ADBench
         and the noise patch's analogue.

Like the image patches they are a guide, not real attacks: the self-check ranks checkpoints and
decides when training has stopped improving; what it predicts for a real attack mix is measured in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import numpy as np

NOISE_STD = 1.0  # in normal standard deviations


def changed_features(rng: np.random.Generator, width: int) -> np.ndarray:
    """Which features of a `width`-wide window one synthetic anomaly changes: 1/8 to 1/3 of them, at least one."""
    count = int(rng.integers(max(1, width // 8), max(1, width // 3) + 1))
    return rng.choice(width, min(count, width), replace=False)


def synthetic_windows(windows: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """`copies` changed copies of each (N, F) normal window, in the order [all windows] * copies: even
    positions swapped with another window's values, odd positions shifted (see the module docstring)."""
    rng = np.random.default_rng(seed)
    originals = np.asarray(windows, dtype=np.float32)
    n, width = originals.shape
    out = np.concatenate([originals] * copies)
    for i, window in enumerate(out):
        columns = changed_features(rng, width)
        if i % 2 == 0 and n > 1:
            donor = (i % n + int(rng.integers(1, n))) % n  # any window but its own original
            window[columns] = originals[donor, columns]
        else:
            window[columns] += rng.normal(0.0, NOISE_STD, len(columns)).astype(np.float32)
    return out
