"""Flow records to feature vectors: the one encoding of rows for training and for the inspector.

Rows arrive as CSV lines or JSON objects; `encode_rows` is the one function that turns parsed rows
into feature vectors, for training (all normal rows at once) and for the inspector (each chunk of
lines a source has read). A bad row is rejected with a reason, never raised past the caller:
  line_too_long, bad_csv, wrong_column_count, bad_json, non_numeric, non_finite.
A category never seen in training is not an error: it goes to the feature's unknown bucket and
is counted (a new protocol or service is exactly what an anomaly detector should see).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass

import numpy as np

from .card import TabularInput
from .errors import ItemRejected

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
    codes = [_codes([rows[r][index[f.name]] for r in kept], f.vocabulary) for f in spec.categorical]
    return _encode(numbers, codes, kept, rejected, spec, origins)


def _codes(texts: list[str], vocabulary: list[str]) -> np.ndarray:
    """Each category's index in the vocabulary; len(vocabulary) (the unknown bucket) when unseen."""
    lookup = {v: i for i, v in enumerate(vocabulary)}
    return np.array([lookup.get(v, len(vocabulary)) for v in texts], dtype=np.int64)


def _encode(numbers: np.ndarray, codes: list[np.ndarray], kept: list[int], rejected: list, spec: TabularInput,
            origins: list[str] | None) -> EncodedRows:
    """Numbers (n, numeric) and category codes (one array per categorical feature, `_codes`) of the kept
    rows -> EncodedRows: non-finite rows rejected, log1p, scaling, clipping, one-hot with unknown bucket."""
    finite = np.isfinite(numbers).all(axis=1)
    if not finite.all():
        for position in np.flatnonzero(~finite)[::-1]:
            r = kept[position]
            origin = origins[r] if origins else f"row {r}"
            rejected.append((r, ItemRejected("non_finite", f"{origin}: NaN or infinite value")))
        numbers = numbers[finite]
        kept = [r for r, ok in zip(kept, finite) if ok]
        codes = [column[finite] for column in codes]
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
    for feature, column in zip(spec.categorical, codes):
        n_unknown = int(np.sum(column == len(feature.vocabulary)))
        if n_unknown:
            unknown[feature.name] = n_unknown
        one_hot = np.zeros((len(kept), len(feature.vocabulary) + 1), dtype=np.float32)
        one_hot[np.arange(len(kept)), column] = 1.0
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
        import pyarrow.compute as pc
        import pyarrow.csv as pcsv
    except ImportError:  # pragma: no cover - pyarrow is a dependency; keep working without it
        return None
    if max(map(len, lines)) > spec.max_line_bytes:
        return None  # a wrong field count is Arrow's parse error below: that chunk goes line by line too
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
    codes = [pc.fill_null(pc.index_in(table.column(f.name), value_set=pa.array(f.vocabulary, pa.string())),
                          len(f.vocabulary)).to_numpy().astype(np.int64) for f in spec.categorical]
    return _encode(numbers, codes, list(range(len(lines))), [], spec, origins)


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
