"""The tile plan that meets a line's frame rate: `inspector train --frame-rate FPS --frame-size WxH [--roi WxH]`.

A tiled model's cost per frame is its tiles per frame: at native resolution with half overlap a
640x480 frame is 266 runs of the model. The plans below trade detail for speed, most detailed
first: less overlap (a defect on a tile border is seen by fewer tiles), then a smaller scale (the
frame is shrunk before tiling: a defect must be larger to show). Each plan is measured through the
daemon's own pipeline on this machine (inspector.line_rate: the camera's frames decoded, the region
cropped, tiled, scored by the untrained graph -- the speed does not depend on the weights -- and
journaled), and the first plan whose frames/s meets the target is chosen. The model's speed alone
is not enough: decoding a 1920x1080 frame costs as much as 30 tiles, and it shares the cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from inspector.card import ImageInput
from inspector.frame_cost import frame_cost
from inspector.regions import Region

PLANS = ((1.0, 0.5), (1.0, 0.25), (1.0, 0.0), (0.5, 0.5), (0.5, 0.25), (0.5, 0.0), (0.25, 0.5), (0.25, 0.0))


@dataclass(frozen=True)
class FramePlan:
    tile_scale: float
    tile_overlap: float
    tiles: int  # per frame of the requested size
    frames_per_s: float  # measured here through the daemon's pipeline
    meets_target: bool

    def describe(self, height: int, width: int, target: float, camera: tuple[int, int] | None = None) -> str:
        """What was chosen and traded; `camera` (height, width) when the plan is for a region of it."""
        scale = "native resolution" if self.tile_scale == 1 else f"{self.tile_scale:g} x resolution"
        region = f" regions of {camera[1]}x{camera[0]} frames" if camera and camera != (height, width) else ""
        text = (f"frame plan for {width}x{height}{region} at {target:g} frames/s: tiles at {scale}, overlap "
                f"{self.tile_overlap:g} ({self.tiles:,} tiles per frame, {self.frames_per_s:,.1f} frames/s measured "
                "through the daemon's pipeline on this machine)")
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


def pipeline_rate_meter(config, folder: Path, camera: tuple[int, int],
                        regions: tuple[Region, ...] = ()) -> Callable[[ImageInput], float]:
    """A function giving a plan's frames/s through the daemon's pipeline here for camera frames of
    (height, width) scored in `regions` (see module docstring); `folder` receives the untrained graph
    with each measured plan's card."""
    from inspector.line_rate import line_frames_per_second

    from .export import save_atomic, timing_card, to_onnx_model, write_card
    from .family import family_for
    from .frame_level import levels_frames
    from .items import ImageShape, items_of

    spec = config.input.to_spec()
    family = family_for(config)(config, items_of(config), ImageShape(spec.height, spec.width, spec.channels),
                                torch.device("cpu"))
    graph = to_onnx_model(family.scoring(None).eval(), torch.zeros(2, spec.channels, spec.height, spec.width),
                          config.export.opset)
    weights = dict(config.score.weights)

    def rate(plan: ImageInput) -> float:
        if levels_frames(config):  # the trained card will carry a level: time measuring each frame's
            plan = plan.model_copy(update={"frame_level": 0.5})  # exposure too (any level costs the same)
        write_card(graph, timing_card("plan", config.model.family, plan, weights, "anomaly_map"))
        path = folder / f"plan_{plan.tile_scale:g}_{plan.tile_overlap:g}.onnx"
        save_atomic(graph, path)
        return line_frames_per_second(path, *camera, regions)

    return rate


def centred_region(camera: tuple[int, int], roi: tuple[int, int] | None) -> tuple[Region, ...]:
    """The region of interest (height, width) in the middle of the camera frame; none: the whole frame."""
    if roi is None or roi == camera:
        return ()
    (frame_h, frame_w), (height, width) = camera, roi
    return (Region(x=(frame_w - width) // 2, y=(frame_h - height) // 2, width=width, height=height),)


def choose_plan(spec: ImageInput, height: int, width: int, target: float,
                frames_per_s: Callable[[ImageInput], float]) -> FramePlan:
    """The most detailed plan whose frames/s (measured by `frames_per_s` for the plan's input spec)
    meets `target` for scored frames (or regions) of height x width; else the cheapest, marked short."""
    plan = None
    for scale, overlap in PLANS:
        planned = spec.model_copy(update={"tile_scale": scale, "tile_overlap": overlap})
        rate = frames_per_s(planned)
        plan = FramePlan(scale, overlap, frame_cost(planned, height, width, None).inputs, rate, rate >= target)
        if plan.meets_target:
            return plan
    return plan
