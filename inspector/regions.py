"""Regions of interest: score only the rectangles of a frame where the part is.

A camera sees more than the part: conveyor, fixtures, background. A source may declare one or more
rectangles (`roi:` in frame pixels); each region is prepared as a frame of its own (tiled or
resized per the card, exactly as a whole frame would be), the frame's score is its worst region's,
and the heatmap is pasted back into frame coordinates (zero outside every region), so evidence and
the review page show the whole frame with the defect where it is. Scoring a 640x480 region of a
1920x1080 frame costs what a 640x480 frame costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import cv2
import numpy as np
from pydantic import Field

from .card import ImageInput
from .errors import ItemRejected
from .preprocess import TileLayout, model_input_bytes, prepare_image, stitch_tiles
from .strict import Strict


class Region(Strict):
    """A rectangle of the frame, in pixels from its top-left corner."""

    x: Annotated[int, Field(ge=0)]
    y: Annotated[int, Field(ge=0)]
    width: Annotated[int, Field(ge=1)]
    height: Annotated[int, Field(ge=1)]

    def describe(self) -> str:
        return f"{self.width}x{self.height} at ({self.x}, {self.y})"


@dataclass(frozen=True)
class RegionPart:
    region: Region
    inputs: int  # model inputs (tiles) this region became
    tiles: TileLayout | None  # for tiled models: where its tiles lie within the region


@dataclass(frozen=True)
class RegionLayout:
    """Which model inputs of a frame belong to which region, to paste its heatmap back."""

    frame_height: int
    frame_width: int
    parts: tuple[RegionPart, ...]


def crop(image: np.ndarray, region: Region, origin: str) -> np.ndarray:
    """The region's pixels; a region reaching past the frame is refused (a wrong ROI must be loud,
    not silently scored on what is left)."""
    height, width = image.shape[:2]
    if region.x + region.width > width or region.y + region.height > height:
        raise ItemRejected("roi_outside_frame", f"{origin}: region {region.describe()} reaches past the "
                                                f"{width}x{height} frame; fix the source's roi")
    return image[region.y:region.y + region.height, region.x:region.x + region.width]


def prepare_regions(image: np.ndarray, spec: ImageInput, regions: tuple[Region, ...],
                    origin: str = "image") -> tuple[np.ndarray, RegionLayout]:
    """Model inputs of every region, in order, and where they came from."""
    batches, parts = [], []
    for region in regions:
        inputs, tiles = prepare_image(crop(image, region, origin), spec, f"{origin} roi {region.describe()}")
        batches.append(inputs)
        parts.append(RegionPart(region, len(inputs), tiles))
    return np.concatenate(batches), RegionLayout(image.shape[0], image.shape[1], tuple(parts))


def regions_input_bytes(regions: tuple[Region, ...], spec: ImageInput) -> int:
    """Bytes of model input the regions become (what a frame of each region's size would)."""
    return sum(model_input_bytes(r.height, r.width, spec) for r in regions)


def stitch_regions(maps: np.ndarray, layout: RegionLayout) -> np.ndarray:
    """Per-input maps (T, H, W) -> one frame map: each region's map at its place, zero elsewhere."""
    out = np.zeros((layout.frame_height, layout.frame_width), dtype=np.float32)
    offset = 0
    for part in layout.parts:
        own = maps[offset:offset + part.inputs]
        offset += part.inputs
        region = part.region
        local = stitch_tiles(own, part.tiles) if part.tiles is not None else own[0]
        if local.shape != (region.height, region.width):  # a resized region: its map back to region pixels
            local = cv2.resize(local, (region.width, region.height), interpolation=cv2.INTER_LINEAR)
        place = out[region.y:region.y + region.height, region.x:region.x + region.width]
        np.maximum(place, local, out=place)
    return out
