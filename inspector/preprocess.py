"""THE preprocessing contract: how a frame becomes model input. Training imports this module.

There is exactly one implementation, driven by the card's `ImageInput`, so a model sees the same
tensor in training, in evaluation and beside the production line. Everything here is deterministic
and per-item (no batch statistics).

Channel policy: a colour frame given to a grayscale model is converted to gray (a mono camera
delivers BGR frames with equal channels); a grayscale frame given to a colour model is rejected,
because colour cannot be invented and silently tripling the channel would score garbage.
"""

from __future__ import annotations

import csv
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .card import ImageInput, TabularInput
from .errors import ItemRejected

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


ACCEPTED_FORMATS = "PNG, JPEG, BMP, TIFF or WebP"


def list_images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, in name order (none when it is not a folder)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _header_dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height from the header of the format the bytes are (never the file's name), read
    before decoding so a huge image is refused without allocating it. None when the bytes are no
    format accepted here or their size cannot be read: such data is never handed to a decoder."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data[:2] == b"BM" and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return abs(width), abs(height)
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_dimensions(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        return _webp_dimensions(data)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                i += 1
                continue
            while i + 2 < len(data) and data[i + 1] == 0xFF:  # fill bytes before a marker
                i += 1
            marker = data[i + 1]
            if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return width, height
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            i += 2 + length
    return None


def _tiff_dimensions(data: bytes) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) of the first image's directory."""
    order = "<" if data[:2] == b"II" else ">"
    try:
        (offset,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[offset:offset + 2])
        size = {}
        for k in range(min(count, 512)):
            tag, kind, _, value = struct.unpack(order + "HHI4s", data[offset + 2 + 12 * k: offset + 14 + 12 * k])
            if tag in (256, 257):
                size[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[:2 if kind == 3 else 4])[0]
        return (size[256], size[257]) if len(size) == 2 else None
    except (struct.error, KeyError):
        return None


def _webp_dimensions(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def decode_image(data: bytes, origin: str, max_pixels: int = 50_000_000) -> np.ndarray:
    """Decode encoded image bytes to an HxW or HxWxC uint8 array (OpenCV's BGR order)."""
    if len(data) == 0:
        raise ItemRejected("empty_file", f"{origin}: the file is empty (0 bytes)")
    dims = _header_dimensions(data)
    if dims is None:
        # the same reason as a corrupt file: a file still being written has no readable header yet either
        raise ItemRejected("decode_failed", f"{origin}: not a readable image: its bytes are none of "
                                            f"{ACCEPTED_FORMATS} with a readable size (the name does not count)")
    if dims[0] * dims[1] > max_pixels:
        raise ItemRejected(
            "too_large", f"{origin}: image of {dims[0]}x{dims[1]} pixels exceeds the limit of {max_pixels}"
        )
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ItemRejected("decode_failed", f"{origin}: not a readable image (corrupt or unsupported format)")
    return ensure_uint8_image(image, origin, max_pixels)


def ensure_uint8_image(image: np.ndarray, origin: str, max_pixels: int = 50_000_000) -> np.ndarray:
    """Check an in-memory frame's shape and bring 16-bit or float frames to uint8."""
    if not isinstance(image, np.ndarray) or image.size == 0:
        raise ItemRejected("empty_frame", f"{origin}: empty frame")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ItemRejected("bad_shape", f"{origin}: unsupported image shape {image.shape}")
    if image.shape[0] * image.shape[1] > max_pixels:
        raise ItemRejected(
            "too_large", f"{origin}: image of {image.shape[1]}x{image.shape[0]} pixels exceeds the limit of {max_pixels}"
        )
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        if not np.all(np.isfinite(image)):
            raise ItemRejected("non_finite", f"{origin}: frame contains NaN or infinite values")
        image = np.clip(image, 0, 255).astype(np.uint8)
    return image


def max_file_bytes(max_pixels: int) -> int:
    """No encoded image of at most `max_pixels` pixels needs more than 4 bytes a pixel (16-bit RGBA
    uncompressed would, and is refused too): a larger file is refused before it is read."""
    return 4 * max_pixels + (1 << 20)


def read_image(path: str | os.PathLike, max_pixels: int = 50_000_000) -> np.ndarray:
    """Read an image file; every failure is an ItemRejected naming the file."""
    origin = str(path)
    try:
        size, limit = os.stat(path).st_size, max_file_bytes(max_pixels)
        if size > limit:
            raise ItemRejected("too_large", f"{origin}: file of {size:,} bytes exceeds the limit of {limit:,} "
                                            "(4 bytes per allowed pixel)")
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ItemRejected("file_missing", f"{origin}: no such file") from None
    except OSError as exc:
        raise ItemRejected("read_error", f"{origin}: cannot read file ({exc.strerror or exc})") from None
    return decode_image(data, origin, max_pixels)


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


def _normalise(pixels: np.ndarray, spec: ImageInput) -> np.ndarray:
    """uint8 HxWxC -> float32 CxHxW with the card's mean/std: (x / 255 - mean) / std.

    Written as one multiply-add per pixel into one new array (x * scale + offset, channel-first):
    the obvious chain of numpy expressions makes five full-size float temporaries, which is most
    of the preprocessing time when the daemon runs beside onnxruntime on two cores.
    """
    std = np.asarray(spec.std, dtype=np.float64)
    scale = (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    offset = (-np.asarray(spec.mean, dtype=np.float64) / std).astype(np.float32)[:, None, None]
    out = np.empty((pixels.shape[2], pixels.shape[0], pixels.shape[1]), dtype=np.float32)
    np.multiply(pixels.transpose(2, 0, 1), scale, out=out, dtype=np.float32)
    out += offset
    return out


@dataclass(frozen=True)
class TileLayout:
    """Where each tile of one frame came from, to stitch the heatmap back at native resolution."""

    frame_height: int
    frame_width: int
    origins: tuple[tuple[int, int], ...]  # (top, left) per tile


def tile_origins(length: int, tile: int, overlap: float) -> list[int]:
    """Tile starts covering [0, length): stride = tile * (1 - overlap), last tile flush with the edge."""
    if length <= tile:
        return [0]
    stride = max(1, int(round(tile * (1.0 - overlap))))
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def frame_tensor(image: np.ndarray, spec: ImageInput, origin: str = "image") -> np.ndarray:
    """For `resize: tile`: the whole frame at native resolution, normalised, (C, Hf, Wf) float32.
    A frame smaller than one tile is brought up to tile size (only upscaling, never downscaling)."""
    image = ensure_uint8_image(image, origin, spec.max_pixels)
    pixels = to_model_channels(image, spec, origin)
    if pixels.shape[0] < spec.height or pixels.shape[1] < spec.width:
        pixels = _resize(pixels, max(spec.height, pixels.shape[0]), max(spec.width, pixels.shape[1]))
    return _normalise(pixels, spec)


def model_input_bytes(height: int, width: int, spec: ImageInput) -> int:
    """Bytes of float32 model input a height x width frame becomes, computed before any allocation:
    the tile grid for `resize: tile` (a 1920x1080 frame in 64 px tiles at half overlap: 1,947 tiles,
    96 MB), one model input otherwise. Frames smaller than a tile are brought up to one tile."""
    one = 4 * spec.channels * spec.height * spec.width
    if spec.resize != "tile":
        return one
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
        return tiles_from_frame(frame_tensor(image, spec, origin), spec)
    image = ensure_uint8_image(image, origin, spec.max_pixels)
    pixels = to_model_channels(image, spec, origin)
    if spec.resize == "stretch":
        return _normalise(_resize(pixels, spec.height, spec.width), spec)[None], None
    return _normalise(_center_crop(pixels, spec.height, spec.width), spec)[None], None


def stitch_tiles(maps: np.ndarray, layout: TileLayout) -> np.ndarray:
    """Per-tile maps (T, H, W) -> one frame map, the maximum where tiles overlap."""
    out = np.full((layout.frame_height, layout.frame_width), -np.inf, dtype=np.float32)
    h, w = maps.shape[1:]
    for tile_map, (top, left) in zip(maps, layout.origins):
        region = out[top : top + h, left : left + w]
        np.maximum(region, tile_map, out=region)
    return out


# --- tabular rows (flow records) -------------------------------------------------------------------
#
# Rows arrive as CSV lines or JSON objects; `encode_rows` is the one function that turns parsed rows
# into feature vectors, for training (all normal rows at once) and for the inspector (each chunk of
# lines a source has read). A bad row is rejected with a reason, never raised past the caller:
#   line_too_long, bad_csv, wrong_column_count, bad_json, non_numeric, non_finite.
# A category never seen in training is not an error: it goes to the feature's unknown bucket and
# is counted (a new protocol or service is exactly what an anomaly detector should see).


def parse_csv_line(line: str, spec: TabularInput, origin: str = "row") -> list[str]:
    if len(line) > spec.max_line_bytes:
        raise ItemRejected("line_too_long", f"{origin}: line of {len(line)} bytes exceeds {spec.max_line_bytes}")
    try:
        fields = next(csv.reader([line.rstrip("\r\n")]), [])
    except csv.Error as exc:  # stray carriage return, NUL byte, ...
        raise ItemRejected("bad_csv", f"{origin}: not a CSV row ({exc})") from None
    if len(fields) != len(spec.columns):
        raise ItemRejected("wrong_column_count", f"{origin}: {len(fields)} fields, expected {len(spec.columns)}")
    return fields


def parse_json_line(line: str, spec: TabularInput, origin: str = "row") -> list[str]:
    """A JSON object with the feature columns as keys (others ignored), or an array in column order."""
    if len(line) > spec.max_line_bytes:
        raise ItemRejected("line_too_long", f"{origin}: line of {len(line)} bytes exceeds {spec.max_line_bytes}")
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: 40,000 nested '[' in one line
        raise ItemRejected("bad_json", f"{origin}: not a JSON object") from None
    if isinstance(value, list):
        if len(value) != len(spec.columns):
            raise ItemRejected("wrong_column_count", f"{origin}: {len(value)} fields, expected {len(spec.columns)}")
        return ["" if v is None else str(v) for v in value]
    if not isinstance(value, dict):
        raise ItemRejected("bad_json", f"{origin}: expected a JSON object or array")
    needed = [f.name for f in spec.numeric] + [c.name for c in spec.categorical]
    missing = [name for name in needed if name not in value]
    if missing:
        raise ItemRejected("wrong_column_count", f"{origin}: missing field(s) {missing[:3]}")
    return ["" if value.get(c) is None else str(value.get(c)) for c in spec.columns]


FEATURE_LIMIT = 1e6


@dataclass
class EncodedRows:
    features: np.ndarray  # (n_ok, row_width) float32
    kept: list[int]  # index of each encoded row in the input
    rejected: list[tuple[int, ItemRejected]]
    unknown: dict[str, int]  # categorical column -> rows that fell into its unknown bucket


def _signed_log1p(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))


def encode_rows(rows: list[list[str]], spec: TabularInput, origins: list[str] | None = None) -> EncodedRows:
    """Parsed rows (fields in `spec.columns` order) -> feature vectors; bad rows rejected per row."""
    index = {name: i for i, name in enumerate(spec.columns)}
    numeric_idx = [index[f.name] for f in spec.numeric]
    kept, rejected = list(range(len(rows))), []
    fields = [[row[i] for i in numeric_idx] for row in rows]
    try:  # fast path: numpy parses the whole chunk at C speed
        numbers = np.array(fields, dtype=np.float64).reshape(len(rows), len(numeric_idx))
    except ValueError:  # some row has a non-numeric field: find it, row by row
        values, kept = [], []
        for r, row_fields in enumerate(fields):
            try:
                values.append([float(v) for v in row_fields])
                kept.append(r)
            except ValueError:
                origin = origins[r] if origins else f"row {r}"
                bad = next(spec.numeric[j].name for j, v in enumerate(row_fields) if not _is_float(v))
                rejected.append((r, ItemRejected("non_numeric", f"{origin}: field '{bad}' is not a number")))
        numbers = np.asarray(values, dtype=np.float64).reshape(len(kept), len(numeric_idx))
    categories = [[rows[r][index[f.name]] for r in kept] for f in spec.categorical]
    return _encode(numbers, categories, kept, rejected, spec, origins)


def _encode(numbers: np.ndarray, categories: list[list[str]], kept: list[int], rejected: list, spec: TabularInput,
            origins: list[str] | None) -> EncodedRows:
    """Numbers (n, numeric) and category texts (one list per categorical feature) of the kept rows ->
    EncodedRows: non-finite rows rejected, log1p, scaling, clipping, one-hot with unknown bucket."""
    finite = np.isfinite(numbers).all(axis=1)
    if not finite.all():
        for position in np.flatnonzero(~finite)[::-1]:
            r = kept[position]
            origin = origins[r] if origins else f"row {r}"
            rejected.append((r, ItemRejected("non_finite", f"{origin}: NaN or infinite value")))
        numbers = numbers[finite]
        kept = [r for r, ok in zip(kept, finite) if ok]
        categories = [[v for v, ok in zip(column, finite) if ok] for column in categories]
        rejected.sort(key=lambda item: item[0])
    log_columns = [j for j, f in enumerate(spec.numeric) if f.transform == "log1p"]
    if log_columns:
        numbers[:, log_columns] = _signed_log1p(numbers[:, log_columns])
    center = np.array([f.center for f in spec.numeric])
    scale = np.array([f.scale for f in spec.numeric])
    # An absurd but finite value (1e300 bytes) must score as a strong anomaly, not overflow float32
    # into inf and then NaN inside the model: features are clipped to +-FEATURE_LIMIT.
    parts = [np.clip((numbers - center) / scale, -FEATURE_LIMIT, FEATURE_LIMIT).astype(np.float32)]
    unknown: dict[str, int] = {}
    for feature, column in zip(spec.categorical, categories):
        lookup = {v: i for i, v in enumerate(feature.vocabulary)}
        codes = np.array([lookup.get(v, len(feature.vocabulary)) for v in column], dtype=np.int64)
        n_unknown = int(np.sum(codes == len(feature.vocabulary)))
        if n_unknown:
            unknown[feature.name] = n_unknown
        one_hot = np.zeros((len(kept), len(feature.vocabulary) + 1), dtype=np.float32)
        one_hot[np.arange(len(kept)), codes] = 1.0
        parts.append(one_hot)
    features = np.concatenate(parts, axis=1) if kept else np.zeros((0, spec.row_width), np.float32)
    return EncodedRows(features, kept, rejected, unknown)


def encode_lines(lines: list[str], spec: TabularInput, fmt: str = "csv", origins: list[str] | None = None) -> EncodedRows:
    """Text lines (CSV or JSON) -> EncodedRows: the same result as parsing every line
    (parse_csv_line / parse_json_line) and calling encode_rows, bad lines rejected with their reason.

    A chunk of plain CSV lines (right field counts, no quotes, NUL or carriage return) is parsed by
    Apache Arrow's C++ CSV reader, about five times faster than Python and without holding the
    GIL, so a traffic source keeps up with tens of thousands of rows per second. Anything Arrow
    does not parse exactly as Python would -- a quoted field, an empty or odd number -- sends the
    whole chunk down the line-by-line path, so the output never depends on which path ran."""
    if fmt == "csv":
        fast = _encode_csv_arrow(lines, spec, origins)
        if fast is not None:
            return fast
    parse = parse_json_line if fmt == "jsonl" else parse_csv_line
    parsed, positions, rejected = [], [], []
    for k, line in enumerate(lines):
        try:
            parsed.append(parse(line, spec, origins[k] if origins else f"row {k}"))
            positions.append(k)
        except ItemRejected as exc:
            rejected.append((k, exc))
    encoded = encode_rows(parsed, spec, [origins[k] for k in positions] if origins else
                          [f"row {k}" for k in positions])
    rejected += [(positions[r], exc) for r, exc in encoded.rejected]
    rejected.sort(key=lambda item: item[0])
    return EncodedRows(encoded.features, [positions[r] for r in encoded.kept], rejected, encoded.unknown)


_PLAIN_CSV_FORBIDDEN = ('"', "\0", "\r")


def _encode_csv_arrow(lines: list[str], spec: TabularInput, origins: list[str] | None) -> EncodedRows | None:
    """The Arrow fast path of encode_lines, or None when this chunk must go line by line."""
    if not lines:
        return None
    try:
        import pyarrow as pa
        import pyarrow.csv as pcsv
    except ImportError:  # pragma: no cover - pyarrow is a dependency; keep working without it
        return None
    commas = len(spec.columns) - 1
    if any(line.count(",") != commas or len(line) > spec.max_line_bytes for line in lines):
        return None
    text = "\n".join(lines) + "\n"
    if any(mark in text for mark in _PLAIN_CSV_FORBIDDEN):
        return None
    numeric = [f.name for f in spec.numeric]
    categorical = [f.name for f in spec.categorical]
    data = text.encode("utf-8")
    try:
        table = pcsv.read_csv(
            pa.py_buffer(data),
            read_options=pcsv.ReadOptions(column_names=list(spec.columns), use_threads=False,
                                          block_size=max(1 << 20, len(data) + 1)),
            parse_options=pcsv.ParseOptions(quote_char=False, double_quote=False, newlines_in_values=False),
            convert_options=pcsv.ConvertOptions(
                column_types={**{name: pa.float64() for name in numeric}, **{name: pa.string() for name in categorical}},
                include_columns=numeric + categorical, null_values=[], true_values=[], false_values=[],
                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeEncodeError):
        return None
    if table.num_rows != len(lines):
        return None
    numbers = np.empty((len(lines), len(numeric)), dtype=np.float64)
    for j, name in enumerate(numeric):
        numbers[:, j] = table.column(name).to_numpy()
    categories = [table.column(name).to_pylist() for name in categorical]
    return _encode(numbers, categories, list(range(len(lines))), [], spec, origins)


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def windows(features: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive rows (N, F) -> windows (M, window * F) every `stride` rows, and each window's
    first row index. A stream shorter than `window` gives no window."""
    n = len(features)
    if n < window:
        return np.zeros((0, window * features.shape[1]), np.float32), np.zeros(0, np.int64)
    starts = np.arange(0, n - window + 1, stride)
    stacked = np.stack([features[s:s + window].reshape(-1) for s in starts])
    return stacked.astype(np.float32, copy=False), starts
