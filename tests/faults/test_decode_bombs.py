"""Files built to make a decoder allocate gigabytes are refused from their first bytes: the size is
read from the header of the format the bytes really are (not the name), formats whose size cannot be
read are never decoded, and a file larger than any allowed image is refused before it is read."""

from __future__ import annotations

import struct
import time

import cv2
import numpy as np
import pytest

from inspector.errors import ItemRejected
from inspector.image_files import read_image

LIMIT = 50_000_000  # the default pixel limit


def small_jpeg() -> bytes:
    ok, data = cv2.imencode(".jpg", np.full((8, 8, 3), 100, np.uint8))
    return data.tobytes()


def jpeg_claiming(width: int, height: int, fill_bytes: int) -> bytes:
    """A JPEG whose start-of-frame says width x height, with 0xFF fill bytes before the SOF marker."""
    data = small_jpeg()
    sof = data.index(b"\xff\xc0")
    claimed = data[:sof] + b"\xff" * fill_bytes + data[sof:sof + 5] + struct.pack(">HH", height, width) + data[sof + 9:]
    return claimed


def tiff_claiming(width: int, height: int) -> bytes:
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 6 + 4), (279, 4, 1, 1)][:6]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 16


BOMBS = {
    "a GIF named .png (no size check for GIF: never decoded)":
        (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\xf7\x00\x00" + b"\0" * 24, "decode_failed"),
    "an RLE BMP of 30000 x 30000": (b"BM" + b"\0" * 16 + struct.pack("<ii", 30000, 30000) + struct.pack("<HHI", 1, 8, 1)
                                    + b"\0" * 1024, "too_large"),
    "a TIFF named .png of 20000 x 20000": (tiff_claiming(20000, 20000), "too_large"),
    "a JPEG hiding 60000 x 60000 behind fill bytes": (jpeg_claiming(60000, 60000, 3), "too_large"),
}


@pytest.mark.parametrize("what", list(BOMBS))
def test_a_decode_bomb_is_refused_from_its_header(tmp_path, what):
    data, reason = BOMBS[what]
    path = tmp_path / "part.png"
    path.write_bytes(data)
    started = time.perf_counter()
    with pytest.raises(ItemRejected) as caught:
        read_image(path, LIMIT)
    assert caught.value.reason == reason
    if reason == "decode_failed":  # refused for its format, before any decoder saw it
        assert "none of PNG, JPEG, BMP, TIFF or WebP with a readable size" in str(caught.value)
    assert time.perf_counter() - started < 1.0


def test_a_jpeg_with_fill_bytes_still_decodes_when_it_is_small(tmp_path):
    path = tmp_path / "ok.jpg"
    path.write_bytes(jpeg_claiming(8, 8, 2))
    assert read_image(path, LIMIT).shape[:2] == (8, 8)


def test_a_file_larger_than_any_allowed_image_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "x.png"
    with open(path, "wb") as handle:
        handle.truncate(2 << 30)  # 2 GiB, sparse: reading it would take the memory, not the disk
    with pytest.raises(ItemRejected) as caught:
        read_image(path, LIMIT)
    assert caught.value.reason == "too_large" and "bytes exceeds the limit" in str(caught.value)


def test_a_json_row_nested_forty_thousand_deep_is_a_bad_row_not_a_crash(nsl_model):
    from inspector.features import parse_json_line
    from inspector.scorer import Scorer

    spec = Scorer(nsl_model).card.input
    with pytest.raises(ItemRejected) as caught:
        parse_json_line("[" * 40_000, spec.model_copy(update={"max_line_bytes": 100_000}), "row 1")
    assert caught.value.reason == "bad_json"
