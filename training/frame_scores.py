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

