"""Flow tables: read CSV (gzip transparently), fit the feature spec on normal rows, make windows.

The spec is fitted on normal training rows only: categorical vocabularies (plus the unknown bucket
the preprocessing adds), the log1p decision and the centre/scale of every numeric column. The
encoding itself is `inspector.features.encode_rows`, the same function the inspector runs.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inspector.card import CategoricalFeature, NumericFeature, TabularInput
from inspector.errors import InspectorError
from inspector.features import encode_rows, windows

from .config import TrainConfig, expand_data_path

LOG1P_AUTO_MAX = 100.0
MIN_NORMAL_ROWS = 2  # one to learn from, one to set the threshold


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]


def read_table(path: Path, header: bool, columns: list[str] | None = None) -> Table:
    """All rows of a CSV file as strings; `.gz` files are decompressed on the fly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: table not found")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        names = next(reader) if header else None
        rows = [row for row in reader if row]
    if columns is None:
        if names is None:
            raise ValueError(f"{path}: no header row and no column names given")
        columns = [n.strip() for n in names]
    width = len(columns)
    bad = sum(1 for row in rows if len(row) != width)
    if bad:
        rows = [row for row in rows if len(row) == width]
    return Table(columns, rows)


def label_column(table: Table, label: str, path: Path | str) -> int:
    """The label column's position; one clear error naming the columns when the table has none of that name."""
    if label not in table.columns:
        shown = ", ".join(table.columns[:12]) + (", ..." if len(table.columns) > 12 else "")
        raise InspectorError(f"{path}: no column '{label}' (data.label); its columns: {shown}")
    return table.columns.index(label)


def normal_mask(table: Table, label: str, normal_values: list[str]) -> np.ndarray:
    column = table.columns.index(label)
    normal = set(normal_values)
    return np.array([row[column].strip() in normal for row in table.rows])


def fit_spec(config: TrainConfig, table: Table, normal_rows: list[list[str]]) -> TabularInput:
    features = config.features
    label = config.data.label
    excluded = set(features.ignore) | set(features.categorical) | {label}
    unknown = (set(features.ignore) | set(features.categorical)) - set(table.columns)
    if unknown:
        raise InspectorError(f"features.categorical / features.ignore name columns that the table does not have: "
                             f"{', '.join(sorted(unknown))}")
    numeric_names = [c for c in table.columns if c not in excluded]
    index = {name: i for i, name in enumerate(table.columns)}
    numeric = []
    for name in numeric_names:
        values = np.array([float(row[index[name]]) for row in normal_rows], dtype=np.float64)
        values = values[np.isfinite(values)]
        if features.log1p == "auto":
            log = values.size > 0 and values.min() >= 0 and values.max() > LOG1P_AUTO_MAX
        else:
            log = features.log1p != "none" and name in features.log1p
        transformed = np.sign(values) * np.log1p(np.abs(values)) if log else values
        center = float(transformed.mean()) if transformed.size else 0.0
        scale = float(transformed.std()) if transformed.size else 1.0
        numeric.append(NumericFeature(name=name, transform="log1p" if log else "none", center=center,
                                      scale=scale if scale > 1e-6 else 1.0))
    categorical = []
    for name in features.categorical:
        seen = sorted({row[index[name]] for row in normal_rows})
        categorical.append(CategoricalFeature(name=name, vocabulary=seen))
    return TabularInput(columns=table.columns, numeric=numeric, categorical=categorical, label=label,
                        normal_values=list(config.data.normal_values), window=features.window, stride=features.stride, max_line_bytes=features.max_line_bytes)


@dataclass
class TabularSet:
    """Windows (M, window * F) with labels (1 = any attack row in the window) and the attack kind."""

    features: np.ndarray
    labels: np.ndarray
    kinds: list[str]


def make_windows(table_rows: list[list[str]], spec: TabularInput, label_index: int,
                 normal_values: list[str]) -> TabularSet:
    encoded = encode_rows(table_rows, spec)
    kept_rows = [table_rows[i] for i in encoded.kept]
    normal = set(normal_values)
    row_labels = np.array([0 if row[label_index].strip() in normal else 1 for row in kept_rows], dtype=np.int64)
    row_kinds = [row[label_index].strip() for row in kept_rows]
    features, starts = windows(encoded.features, spec.window, spec.stride)
    labels = np.array([row_labels[s:s + spec.window].max() for s in starts], dtype=np.int64)
    kinds = []
    for s in starts:
        attacks = [k for k in row_kinds[s:s + spec.window] if k not in normal]
        kinds.append(attacks[0] if attacks else "normal")
    return TabularSet(features, labels, kinds)


def load_tabular(config: TrainConfig) -> tuple[TabularInput, np.ndarray, dict[str, TabularSet]]:
    """(spec fitted on normal training rows, normal training windows, test sets by name)."""
    data = config.data
    table = read_table(data.resolved_path, data.header, data.columns)
    label_at = label_column(table, data.label, data.resolved_path)
    mask = normal_mask(table, data.label, data.normal_values)
    normal_rows = [row for row, is_normal in zip(table.rows, mask) if is_normal]
    if len(normal_rows) < MIN_NORMAL_ROWS:
        seen = sorted({row[label_at].strip() for row in table.rows})
        raise InspectorError(f"{data.resolved_path}: {len(normal_rows)} of its {len(table.rows)} rows are normal "
                             f"(column '{data.label}' in data.normal_values {list(data.normal_values)}); training "
                             f"needs at least {MIN_NORMAL_ROWS}. Values seen there: "
                             f"{', '.join(seen[:10])}{', ...' if len(seen) > 10 else ''}")
    tests: dict[str, list[list[str]]] = {}
    if data.normal_train_fraction is not None:
        order = np.random.default_rng(config.train.seed).permutation(len(normal_rows))
        n_fit = int(round(len(normal_rows) * data.normal_train_fraction))
        fit_rows = [normal_rows[i] for i in np.sort(order[:n_fit])]
        rest = set(order[n_fit:].tolist())
        held = [row for i, row in enumerate(normal_rows) if i in rest]
        attacks = [row for row, is_normal in zip(table.rows, mask) if not is_normal]
        tests["rest"] = held + attacks
        normal_rows = fit_rows
    if data.max_train is not None and len(normal_rows) > data.max_train:
        keep = np.sort(np.random.default_rng(config.train.seed).choice(len(normal_rows), data.max_train, replace=False))
        normal_rows = [normal_rows[i] for i in keep]
    spec = fit_spec(config, table, normal_rows)
    train = make_windows(normal_rows, spec, label_at, data.normal_values)
    for name, path in data.test_paths.items():
        test_table = read_table(expand_data_path(path), data.header, data.columns)
        tests[name] = test_table.rows
    test_sets = {name: make_windows(rows, spec, label_at, data.normal_values) for name, rows in tests.items()}
    return spec, train.features, test_sets

