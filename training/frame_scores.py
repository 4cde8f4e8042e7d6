"""From stored frames to model inputs and back: tiles per frame, a frame's score as its worst tile,
and component scales from held-out normal outputs. Shared by fitting, checkpoint selection and the
benchmark so all three score a frame the same way as the inspector does."""

from __future__ import annotations

import numpy as np

from inspector.preprocess import tiles_from_frame


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


def component_scales(outputs: dict[str, np.ndarray], names: list[str]) -> dict[str, float]:
    """Median of each component on held-out normal data: scores become 'times a typical normal'."""
    scales = {}
    for name in names:
        values = np.asarray(outputs[name], dtype=np.float64).reshape(-1)
        median = float(np.median(values))
        scales[name] = median if median > 0 else max(float(values.mean()), 1e-12)
    return scales

