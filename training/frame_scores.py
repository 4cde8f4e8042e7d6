"""From stored frames to model inputs and back: tiles per frame, a frame's score as its worst tile,
and component scales from held-out normal outputs. Shared by fitting, checkpoint selection and the
benchmark so all three score a frame the same way as the inspector does."""

from __future__ import annotations

import numpy as np

from inspector.preprocess import tiles_from_frame

from .calibrate import robust_spread


def model_inputs(tensors: np.ndarray, spec) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs for stored training tensors, and which frame each came from: the tensors
    themselves (untiled images; tables, spec None), or for tiled models the tiles of every native frame."""
    if spec is None or spec.resize != "tile":
        return np.asarray(tensors, dtype=np.float32), np.arange(len(tensors))
    tiles = [tiles_from_frame(frame, spec)[0] for frame in tensors]
    owner = np.concatenate([np.full(len(t), i) for i, t in enumerate(tiles)])
    return np.concatenate(tiles), owner


def frame_outputs(scoring, frames: np.ndarray, spec) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-item score components of `scoring` (torch, no maps) over stored frames (or table rows, spec
    None), and which frame each output row belongs to (see per_frame_max)."""
    from .torch_scoring import run_scoring

    inputs, owner = model_inputs(frames, spec)
    return run_scoring(scoring, inputs, batch_size=256 if spec is not None else 4096, keep_maps=False), owner


def copy_outputs(scoring, originals: np.ndarray, original_outputs: dict[str, np.ndarray], original_owner: np.ndarray,
                 copies: np.ndarray, spec) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Like frame_outputs for `copies`, where copies[i] is originals[i % len(originals)] with a local
    change (a synthetic defect), given the originals' own frame_outputs: only the model inputs that
    differ from the original's are run; every other tile takes its original's outputs, which it
    equals (each tile is scored on its own pixels). A patch touches a handful of a large frame's
    tiles (a 640x640 frame has 361 of 64 px at half overlap), so a selection round over the frames and
    their SYNTHETIC_COPIES costs little more than one pass instead of five; untiled models run every
    copy, as before."""
    tiles_per_original = np.bincount(original_owner, minlength=len(originals))
    first_tile = np.r_[0, np.cumsum(tiles_per_original)[:-1]]
    original_inputs = [model_inputs(originals[i:i + 1], spec)[0] for i in range(len(originals))]  # tiled once
    taken, owners, changed, changed_at = [], [], [], []
    position = 0
    for index, copy in enumerate(copies):
        original = index % len(originals)
        inputs, _ = model_inputs(copy[None], spec)
        before = original_inputs[original]
        differs = np.any((inputs != before).reshape(len(inputs), -1), axis=1)
        taken.append(first_tile[original] + np.arange(len(inputs)))
        owners.append(np.full(len(inputs), index))
        changed.append(inputs[differs])
        changed_at.append(position + np.flatnonzero(differs))
        position += len(inputs)
    rows = np.concatenate(taken)
    outputs = {name: np.asarray(values)[rows] for name, values in original_outputs.items()}
    at = np.concatenate(changed_at)
    if len(at):
        from .torch_scoring import run_scoring

        fresh = run_scoring(scoring, np.concatenate(changed), batch_size=256, keep_maps=False)
        for name in outputs:
            outputs[name][at] = fresh[name]
    return outputs, np.concatenate(owners)


def per_frame_max(scores: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """A frame scores as its worst tile (identity for untiled models)."""
    out = np.full(int(owner.max()) + 1, -np.inf)
    np.maximum.at(out, owner, scores)
    return out


SPREAD_FLOOR = 0.01  # fusion "spread": a spread is taken as at least this share of the median (values can tie)


def component_scales(outputs: dict[str, np.ndarray], names: list[str], fusion: str = "median") -> dict[str, float]:
    """Each component's unit on held-out normal data, for the weighted sum of components.

    median: its median: scores become 'times a typical normal'.
    spread: its robust spread (1.4826 x the median absolute deviation, at least SPREAD_FLOOR of the
            median): each component's normal variation counts the same in the sum, so a component that
            holds normal frames tightly is not drowned by a noisy one. Ranking by the sum of value /
            spread is ranking by the sum of z-scores (the medians only add a constant): the z-score
            normalisation of score fusion (Jain, Nandakumar and Ross 2005).
    """
    if fusion not in ("median", "spread"):
        raise ValueError(f"fusion must be 'median' or 'spread', got {fusion!r}")
    scales = {}
    for name in names:
        values = np.asarray(outputs[name], dtype=np.float64).reshape(-1)
        median = float(np.median(values))
        typical = median if median > 0 else max(float(values.mean()), 1e-12)
        if fusion == "spread":
            typical = max(robust_spread(values, median), SPREAD_FLOOR * typical, 1e-12)
        scales[name] = typical
    return scales


def scale_description(fusion: str) -> str:
    """How the card's description names the components' unit."""
    return "median" if fusion == "median" else "robust spread (1.4826 x median absolute deviation)"


BASELINE_ITEMS = 16  # held-out inputs whose heatmap cells give the map's typical level (a median of many cells)


def map_baseline(scoring, inputs: np.ndarray, map_name: str = "anomaly_map") -> float | None:
    """The median cell of `scoring`'s heatmap over up to BASELINE_ITEMS evenly spread held-out normal
    inputs, in the map's unit as exported: where the heatmap's colours start (ScoreDefinition.map_baseline).
    None where the module has no such map or its cells are not finite."""
    from .torch_scoring import run_scoring

    if not len(inputs):
        return None
    picks = np.unique(np.linspace(0, len(inputs) - 1, min(BASELINE_ITEMS, len(inputs))).round().astype(int))
    maps = run_scoring(scoring, inputs[picks], batch_size=4).get(map_name)
    if maps is None or not np.all(np.isfinite(maps)):
        return None
    return max(float(np.median(maps)), 0.0)
