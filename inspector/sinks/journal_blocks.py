"""Journal lines of a block of traffic rows, formatted column-wise by Apache Arrow.

A block's rows share everything but their sequence number, line number, scores and verdict, so the
line is a template: the shared parts are JSON-encoded once (orjson, as for single items) and Arrow's
compute kernels cast the varying columns to text and join them, row by row, in C. About 0.4 us a
row against 3.7 us for a dict and orjson.dumps per row; the values are the same as the per-row
`journal.record` gives (numbers rounded to 6 decimals), which the tests check line by line.
"""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ..scorer import ANOMALY, NORMAL, FeatureScores
from ..sources.base import Item

_VERDICTS = pa.array([NORMAL, ANOMALY])


def _json(value) -> str:
    return orjson.dumps(value).decode()


def _text(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values), pa.string())


def block_lines(item: Item, scores: FeatureScores, latency_s: float, model_version: str, now_iso: str) -> bytes:
    """The newline-terminated journal lines of a block whose scores are all finite."""
    block = item.rows
    origin = _json(f"{block.origin_prefix}line ")[:-1]  # the open string; the line number and quote follow
    parts = [
        pa.scalar(f'{{"time":{_json(now_iso)},"source":{_json(item.source)},"seq":'),
        _text(np.arange(block.first_seq, block.first_seq + len(block), dtype=np.int64)),
        pa.scalar(f',"origin":{origin}'), _text(block.line_numbers),
        pa.scalar(f'","captured_at":{_json(round(item.captured_at, 6))},"latency_ms":'
                  f'{_json(round(latency_s * 1000, 3))},"model_version":{_json(model_version)},"score":'),
        _text(np.round(scores.raw, 6)), pa.scalar(',"normalised":'), _text(np.round(scores.normalised, 6)),
        pa.scalar(',"verdict":"'), _VERDICTS.take(pa.array(scores.anomaly.astype(np.int8))), pa.scalar('"}\n'),
    ]
    joined = pc.binary_join_element_wise(*parts, "")
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)
    start, stop = offsets[joined.offset], offsets[joined.offset + len(joined)]
    return joined.buffers()[2].to_pybytes()[start:stop]
