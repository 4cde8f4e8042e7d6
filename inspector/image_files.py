"""Reading images safely: which files are images, and decoding them with their size checked first.

A frame's width and height are read from its header (PNG, JPEG, BMP, TIFF, WebP) before OpenCV
decodes it, so a small file that claims billions of pixels is rejected (decode_bomb) instead of
allocating them; a file larger than any image of the allowed pixel count is refused unread.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import cv2
import numpy as np

from .errors import ItemRejected

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


ACCEPTED_FORMATS = "PNG, JPEG, BMP, TIFF or WebP"


def name_order(name: str) -> tuple:
    """Sort key for file names as a camera numbers them: digit runs compare as numbers, so
    frame_9 comes before frame_10 (plain string order puts frame_10 first, and a line writing
    unpadded numbers would see its frames, and data.holdout=last its newest photos, out of order)."""
    runs = re.split(r"(\d+)", name)  # text, digits, text, ...: the digit runs sit at the odd places
    return tuple((0, int(run), run) if place % 2 else (1, run, "") for place, run in enumerate(runs) if run)


def list_images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, in name order (`name_order`; none when it is not a folder)."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
                  key=lambda p: name_order(p.name))


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
