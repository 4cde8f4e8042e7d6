"""THE preprocessing contract: how a frame becomes model input. Training imports this module.

There is exactly one implementation, driven by the card's `ImageInput`, so a model sees the same
tensor in training, in evaluation and beside the production line. Everything here is deterministic
and per-item (no batch statistics).

Channel policy: a colour frame given to a grayscale model is converted to gray (a mono camera
delivers BGR frames with equal channels); a grayscale frame given to a colour model is rejected,
because colour cannot be invented and silently tripling the channel would score garbage.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .card import ImageInput
from .errors import ItemRejected
from .image_files import ensure_uint8_image

def to_model_channels(image: np.ndarray, spec: ImageInput, origin: str = "image") -> np.ndarray:
    """HxWxC uint8 in the model's channel order (C = 1 or 3)."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if spec.channels == 1:
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return image[:, :, None]
    if image.ndim == 2:
        raise ItemRejected(
            "wrong_channels",
            f"{origin}: grayscale image given to a colour model (the model expects 3 channels, {spec.color_order})",
        )
    if spec.color_order == "rgb":
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    shrinking = image.shape[0] * image.shape[1] > height * width
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return resized if resized.ndim == 3 else resized[:, :, None]


def _center_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
    scale = max(height / image.shape[0], width / image.shape[1])
    h = max(height, round(image.shape[0] * scale))
    w = max(width, round(image.shape[1] * scale))
    image = _resize(image, h, w)
    top, left = (h - height) // 2, (w - width) // 2
    return image[top : top + height, left : left + width]


MAX_EXPOSURE_GAIN = 2.0  # a frame is brightened or darkened by at most this factor to the level
STATISTICS_PIXELS = 65_536  # about this many pixels (an even grid of them) measure a frame's level


def frame_mean(pixels: np.ndarray) -> float:
    """Mean of a uint8 HxWxC frame's unsaturated pixels (no channel at 0 or 255), channels together,
    0-255 units, on an even grid of about STATISTICS_PIXELS pixels (a 1080p frame costs 2 ms, not 10).
    Saturated pixels say only "at least this bright": a brighter lamp clips more of them, and counting
    them would shift the level of every other pixel."""
    step = max(1, int((pixels.shape[0] * pixels.shape[1] / STATISTICS_PIXELS) ** 0.5))
    grid = pixels[::step, ::step]
    channels = grid.shape[2]
    unsaturated = cv2.inRange(grid, (1,) * channels, (254,) * channels)
    means = cv2.mean(grid, mask=unsaturated if cv2.countNonZero(unsaturated) >= 16 else None)
    return float(sum(means[:channels]) / channels)  # plain Python: numpy's call costs more on a small frame


def _normalise(pixels: np.ndarray, spec: ImageInput) -> np.ndarray:
    """uint8 HxWxC -> float32 CxHxW with the card's mean/std: (x / 255 - mean) / std, after bringing
    the frame to the card's frame_level when it has one: x -> x * level / frame mean, which undoes
    an exposure change (a lamp, the shutter, the aperture: a gain on every pixel, which gamma encoding
    keeps a gain), clipped to 0-1 pixel units as frames without a level are. The gain is bounded to 1/2 - 2
    (MAX_EXPOSURE_GAIN): a frame that differs more (another object, a blank view) must not be made to
    look normal. Contrast is left alone: defects change it, and frame-wide contrast normalisation cost
    detection on the dev sets (the notes of RESULTS say which).

    Every step is a function of the 8-bit value alone, so each channel goes through one 256-entry
    float32 table (cv2.LUT), straight into its channel-first plane: about half the time of one
    multiply-add per pixel, and no full-size temporaries, which matters when the daemon runs beside
    onnxruntime on two cores.
    """
    channels = pixels.shape[2]
    std, offset, white = _channel_constants(tuple(spec.mean), tuple(spec.std), channels)
    level = getattr(spec, "frame_level", None)
    if level is None:
        tables = _fixed_tables(tuple(spec.mean), tuple(spec.std), channels)
    else:
        exposure = 255.0 * level / max(frame_mean(pixels), 1e-6)
        gain = min(max(exposure, 1 / MAX_EXPOSURE_GAIN), MAX_EXPOSURE_GAIN) / 255.0
        tables = _PIXEL_VALUES * (gain / std).astype(np.float32)[:, None] + offset[:, None]
        # kept inside 0-1 pixel units: the model's range (its generator ends in tanh)
        np.clip(tables, offset[:, None], white[:, None], out=tables)
    out = np.empty((channels, pixels.shape[0], pixels.shape[1]), dtype=np.float32)
    for channel, plane in enumerate(cv2.split(pixels) if channels > 1 else [pixels[:, :, 0]]):
        cv2.LUT(np.ascontiguousarray(plane), tables[channel], dst=out[channel])
    return out


_PIXEL_VALUES = np.arange(256, dtype=np.float32)


@lru_cache(maxsize=64)
def _channel_constants(mean: tuple[float, ...], std: tuple[float, ...],
                       channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per channel: std (float64, for the gain), the normalised value of pixel 0 and of pixel 1 (float32).
    Computed once per card: the numpy calls cost more than the table lookups on a small frame."""
    std64 = np.broadcast_to(np.asarray(std, dtype=np.float64), (channels,))
    mean64 = np.broadcast_to(np.asarray(mean, dtype=np.float64), (channels,))
    constants = std64, (-mean64 / std64).astype(np.float32), ((1 - mean64) / std64).astype(np.float32)
    for array in constants[1:]:
        array.flags.writeable = False  # shared by every frame of the card
    return constants


@lru_cache(maxsize=64)
def _fixed_tables(mean: tuple[float, ...], std: tuple[float, ...], channels: int) -> np.ndarray:
    """The (channels, 256) tables of a card without a frame level: the same for every frame."""
    std64, offset, _ = _channel_constants(mean, std, channels)
    tables = _PIXEL_VALUES * (1.0 / 255.0 / std64).astype(np.float32)[:, None] + offset[:, None]
    tables.flags.writeable = False
    return tables


@dataclass(frozen=True)
class TileLayout:
    """Where each tile of one frame came from, to stitch the heatmap back at native resolution."""

    frame_height: int  # of the tiled frame (scaled by the card's tile_scale)
    frame_width: int
    origins: tuple[tuple[int, int], ...]  # (top, left) per tile
    native_height: int | None = None  # the frame as it came, when tile_scale changed its size
    native_width: int | None = None


def tile_origins(length: int, tile: int, overlap: float) -> list[int]:
    """Tile starts covering [0, length): stride = tile * (1 - overlap), last tile flush with the edge."""
    if length <= tile:
        return [0]
    stride = max(1, int(round(tile * (1.0 - overlap))))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def scaled_size(height: int, width: int, spec: ImageInput) -> tuple[int, int]:
    """The size a height x width frame is tiled at (the card's tile_scale, at least one pixel)."""
    scale = getattr(spec, "tile_scale", 1.0)
    if scale == 1.0:
        return height, width
    return max(1, round(height * scale)), max(1, round(width * scale))


def model_pixels(image: np.ndarray, spec: ImageInput, origin: str = "image") -> np.ndarray:
    """The uint8 HxWxC pixels that are normalised into the model's input: for `resize: tile` the whole
    frame (scaled by tile_scale; one smaller than a tile brought up to tile size, only upscaling),
    otherwise the frame stretched or centre-cropped to the model input."""
    image = ensure_uint8_image(image, origin, spec.max_pixels)
    pixels = to_model_channels(image, spec, origin)
    if spec.resize == "stretch":
        return _resize(pixels, spec.height, spec.width)
    if spec.resize == "center_crop":
        return _center_crop(pixels, spec.height, spec.width)
    height, width = scaled_size(pixels.shape[0], pixels.shape[1], spec)
    if (height, width) != pixels.shape[:2]:
        pixels = _resize(pixels, height, width)
    if pixels.shape[0] < spec.height or pixels.shape[1] < spec.width:
        pixels = _resize(pixels, max(spec.height, pixels.shape[0]), max(spec.width, pixels.shape[1]))
    return pixels


def frame_tensor(image: np.ndarray, spec: ImageInput, origin: str = "image") -> np.ndarray:
    """For `resize: tile`: the whole frame at native resolution (scaled by tile_scale), normalised,
    (C, Hf, Wf) float32."""
    return _normalise(model_pixels(image, spec, origin), spec)


def model_input_bytes(height: int, width: int, spec: ImageInput) -> int:
    """Bytes of float32 model input a height x width frame becomes, computed before any allocation:
    the tile grid for `resize: tile` (a 1920x1080 frame in 64 px tiles at half overlap: 1,947 tiles,
    96 MB), one model input otherwise. Frames smaller than a tile are brought up to one tile."""
    one = 4 * spec.channels * spec.height * spec.width
    if spec.resize != "tile":
        return one
    height, width = scaled_size(height, width, spec)
    tops = tile_origins(max(height, spec.height), spec.height, spec.tile_overlap)
    lefts = tile_origins(max(width, spec.width), spec.width, spec.tile_overlap)
    return one * len(tops) * len(lefts) + 4 * spec.channels * max(height, spec.height) * max(width, spec.width)


def tiles_from_frame(frame: np.ndarray, spec: ImageInput) -> tuple[np.ndarray, TileLayout]:
    """(C, Hf, Wf) normalised frame -> (T, C, H, W) tiles on the card's grid, and their layout."""
    tops = tile_origins(frame.shape[1], spec.height, spec.tile_overlap)
    lefts = tile_origins(frame.shape[2], spec.width, spec.tile_overlap)
    origins = tuple((t, l) for t in tops for l in lefts)
    tiles = np.stack([frame[:, t : t + spec.height, l : l + spec.width] for t, l in origins])
    return tiles, TileLayout(frame.shape[1], frame.shape[2], origins)


def prepare_image(image: np.ndarray, spec: ImageInput, origin: str = "image") -> tuple[np.ndarray, TileLayout | None]:
    """One frame -> model input tiles (T, C, H, W) float32, and their layout for `resize: tile`.

    For `stretch` and `center_crop`, T = 1 and the layout is None.
    """
    if spec.resize == "tile":
        tiles, layout = tiles_from_frame(frame_tensor(image, spec, origin), spec)
        if (layout.frame_height, layout.frame_width) != image.shape[:2]:  # scaled (or a small frame brought up)
            layout = TileLayout(layout.frame_height, layout.frame_width, layout.origins, *image.shape[:2])
        return tiles, layout
    return _normalise(model_pixels(image, spec, origin), spec)[None], None


def stitch_tiles(maps: np.ndarray, layout: TileLayout) -> np.ndarray:
    """Per-tile maps (T, H, W) -> one frame map, the maximum where tiles overlap."""
    out = np.full((layout.frame_height, layout.frame_width), -np.inf, dtype=np.float32)
    h, w = maps.shape[1:]
    for tile_map, (top, left) in zip(maps, layout.origins):
        region = out[top : top + h, left : left + w]
        np.maximum(region, tile_map, out=region)
    if layout.native_height is not None:  # back to the frame's own pixels
        out = cv2.resize(out, (layout.native_width, layout.native_height), interpolation=cv2.INTER_LINEAR)
    return out
