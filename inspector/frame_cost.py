"""What one frame costs a model, and the frames/s to expect here: known before the line backs up.

A tiled model runs once per tile: a 1920x1080 frame in 64 px tiles at half overlap is 1,947 runs
(about 57 GFLOPs with a 29 MFLOP model), where the training images may have been a tenth of that.
The cost comes from the card (FLOPs per model input, the tile grid); the speed is measured on this
machine by running the model on batches of neutral inputs for about a second.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .card import ImageInput
from .preprocess import scaled_size, tile_origins


@dataclass(frozen=True)
class FrameCost:
    height: int
    width: int
    inputs: int  # model runs per frame: tiles, or 1
    flops: int | None  # per frame, when the card knows the FLOPs per input
    scope: str = ""  # what of the frame is scored, when not all of it (regions of interest)

    def describe(self, inputs_per_s: float | None = None) -> str:
        what = f"{self.inputs:,} tiles" if self.inputs > 1 else "1 model input"
        text = f"{self.width}x{self.height} frames{self.scope}: {what} per frame"
        if self.flops:
            text += f", {self.flops / 1e9:.2f} GFLOPs"
        if inputs_per_s:
            text += (f"; about {inputs_per_s / self.inputs:,.1f} frames/s on this machine "
                     f"({inputs_per_s:,.0f} model inputs/s measured)")
        return text


def frame_cost(spec: ImageInput, height: int, width: int, flops_per_input: int | None) -> FrameCost:
    """The model runs a height x width frame takes (frames smaller than a tile count as one tile)."""
    inputs = 1
    if spec.resize == "tile":
        tiled_height, tiled_width = scaled_size(height, width, spec)
        inputs = (len(tile_origins(max(tiled_height, spec.height), spec.height, spec.tile_overlap))
                  * len(tile_origins(max(tiled_width, spec.width), spec.width, spec.tile_overlap)))
    return FrameCost(height, width, inputs, flops_per_input * inputs if flops_per_input else None)


def regions_cost(spec: ImageInput, height: int, width: int, regions, flops_per_input: int | None) -> FrameCost:
    """The model runs of a height x width frame scored only in `regions` (each costs what a frame of its size would)."""
    inputs = sum(frame_cost(spec, r.height, r.width, None).inputs for r in regions)
    scope = f" scored in {', '.join(r.describe() for r in regions)}"
    return FrameCost(height, width, inputs, flops_per_input * inputs if flops_per_input else None, scope)


PROPORTION_TOLERANCE = 1.1  # frames up to 10% wider or narrower than the training photos: no warning


def proportion_warning(card, height: int, width: int, origin: tuple[int, int] = (0, 0)) -> str | None:
    """One line when a stretching model (`resize: stretch`: every frame resized to the input) would see
    height x width frames in other proportions than its training photos (the card's
    export.photo_height/width): the parts come out squeezed as they never were in training. It names
    the centred region of the photos' proportions (`origin`: where the scored box starts in the frame,
    for a region of interest). None for tiled or centre-cropped models (parts keep their
    proportions), matching proportions, or a card that does not know the photos' size."""
    spec, export = card.input, card.export
    if not isinstance(spec, ImageInput) or spec.resize != "stretch" or export is None or not export.photo_width:
        return None
    photo_aspect = export.photo_width / export.photo_height
    ratio = (width / height) / photo_aspect
    factor = max(ratio, 1 / ratio)
    if factor <= PROPORTION_TOLERANCE:
        return None
    region_w, region_h = (round(height * photo_aspect), height) if ratio > 1 else (width, round(width / photo_aspect))
    x, y = origin[0] + (width - region_w) // 2, origin[1] + (height - region_h) // 2
    return (f"{width}x{height} frames are {factor:.2f}x {'wider' if ratio > 1 else 'narrower'} in proportion than the "
            f"{export.photo_width}x{export.photo_height} training photos: each is stretched to the model's "
            f"{spec.width}x{spec.height} input, so parts look {factor:.2f}x {'narrower' if ratio > 1 else 'wider'} to "
            f"the model than in training; set a region of interest of the photos' proportions around the part "
            f"(the centred one: roi: [{{x: {x}, y: {y}, width: {region_w}, height: {region_h}}}]), or train on this "
            f"camera's frames")


def inputs_per_second(run, probe: np.ndarray, seconds: float = 1.0) -> float:
    """Inputs per second of `run(probe)` (after one warm-up run; at least three runs, about `seconds` long)."""
    run(probe)
    runs, started = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - started < seconds:
        run(probe)
        runs += 1
    return runs * len(probe) / (time.perf_counter() - started)


def measure_inputs_per_second(scorer, batch: int = 32, seconds: float = 1.0) -> float:
    """Model inputs scored per second on neutral batches, as the daemon batches them: a batch of
    large inputs goes in several onnxruntime runs (inspector.scorer.inputs_per_run), as there. One run
    of 32 whole 512x512 frames of a pretrained-backbone model peaked at 18.3 GB (1.9 GB in runs of 4,
    and 2.3 times the inputs/s): enough for the kernel to kill a measurement at the end of training."""
    spec = scorer.card.input
    return inputs_per_second(lambda probe: scorer.score_in_chunks(probe, batch),
                             np.zeros((batch, spec.channels, spec.height, spec.width), np.float32), seconds)
