"""The tile plan that meets a line's frame rate: `inspector train --frame-rate FPS --frame-size WxH`.

A tiled model's cost per frame is its tiles per frame: at native resolution with half overlap a
640x480 frame is 266 runs of the model. The plans below trade detail for speed, most detailed
first: less overlap (a defect on a tile border is seen by fewer tiles), then a smaller scale (the
frame is shrunk before tiling: a defect must be larger to show). The model's speed is measured once
on this machine (its untrained graph through onnxruntime: the speed does not depend on the weights)
and the first plan whose expected frames/s meets the target is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from inspector.frame_cost import frame_cost, inputs_per_second

PLANS = ((1.0, 0.5), (1.0, 0.25), (1.0, 0.0), (0.5, 0.5), (0.5, 0.25), (0.5, 0.0), (0.25, 0.5), (0.25, 0.0))


@dataclass(frozen=True)
class FramePlan:
    tile_scale: float
    tile_overlap: float
    tiles: int  # per frame of the requested size
    frames_per_s: float  # expected here, from the measured model inputs/s
    meets_target: bool

    def describe(self, height: int, width: int, target: float) -> str:
        scale = "native resolution" if self.tile_scale == 1 else f"{self.tile_scale:g} x resolution"
        text = (f"frame plan for {width}x{height} at {target:g} frames/s: tiles at {scale}, overlap "
                f"{self.tile_overlap:g} ({self.tiles:,} tiles per frame, about {self.frames_per_s:,.1f} frames/s "
                "on this machine)")
        traded = []
        if self.tile_overlap < PLANS[0][1]:
            traded.append("overlap (a defect on a tile border is seen by fewer tiles)")
        if self.tile_scale < 1:
            traded.append(f"detail (a defect must be about {1 / self.tile_scale:g} times larger to show as much)")
        if traded:
            text += "; traded: " + ", ".join(traded)
        if not self.meets_target:
            text += (f"; even the cheapest plan falls short of {target:g} frames/s here: use a region of interest "
                     "(roi:), a faster machine or a lower frame rate")
        return text


def model_inputs_per_second(config, seconds: float = 1.5, batch: int = 32) -> float:
    """Model inputs/s of the config's (untrained) scoring graph under onnxruntime on this machine."""
    import onnxruntime as ort

    from .export import to_onnx_model
    from .family import family_for
    from .items import ImageShape, items_of

    spec = config.input.to_spec()
    family = family_for(config)(config, items_of(config), ImageShape(spec.height, spec.width, spec.channels),
                                torch.device("cpu"))
    example = torch.zeros(batch, spec.channels, spec.height, spec.width)
    graph = to_onnx_model(family.scoring(None).eval(), example, config.export.opset)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return inputs_per_second(lambda probe: session.run(None, {name: probe}), np.zeros(tuple(example.shape), np.float32),
                             seconds)


def choose_plan(spec, height: int, width: int, target: float, inputs_per_s: float) -> FramePlan:
    """The most detailed plan whose frames/s meets `target` (else the cheapest, marked as short)."""
    plan = None
    for scale, overlap in PLANS:
        tiles = frame_cost(spec.model_copy(update={"tile_scale": scale, "tile_overlap": overlap}), height, width,
                           None).inputs
        plan = FramePlan(scale, overlap, tiles, inputs_per_s / tiles, inputs_per_s / tiles >= target)
        if plan.meets_target:
            return plan
    return plan
