"""What a training run shows about itself: losses plot, image grids and a mode-collapse indicator.

GAN training fails quietly (a generator that draws one image for every input still has a falling
loss), so the run folder holds:
  losses.csv / losses.png                one row per epoch, every loss and the diversity ratio
  diagnostics/samples_eNNNN.png          AnoGAN: images the generator draws from fixed latent codes
  diagnostics/reconstructions_eNNNN.png  real items (odd rows) over their reconstructions (even rows)
The diversity ratio is the mean pairwise distance of generated items divided by that of the real
items of the same training batch (the generator in training mode, as it learns), averaged over the
epoch: about 1 when the generator varies as much as the data, near 0 when it has collapsed.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from .run_folder import GRID_FOLDER, LOSSES_PLOT

log = logging.getLogger(__name__)

NOT_A_LOSS = {"phase", "epoch", "step", "seconds"}


class EpochLossLog:
    """losses.csv: per-step losses are summed, and each epoch appends one row: the leading columns
    given at flush time (epoch, step, ...), the mean of every loss field (blank if not logged in
    that epoch) and the seconds since training started."""

    def __init__(self, path: Path, leading: list[str], fields: list[str], append: bool = False):
        self.path, self.fields = path, fields
        self.sums: dict[str, float] = {}
        self.count = 0
        if not (append and path.exists()):
            with path.open("w", newline="") as handle:
                csv.writer(handle).writerow(leading + fields + ["seconds"])

    def add(self, **losses: float) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def mean(self, name: str) -> float:
        return self.sums.get(name, float("nan")) / max(1, self.count)

    def flush(self, *leading, seconds: float) -> None:
        if not self.count:
            return
        means = {k: v / self.count for k, v in self.sums.items()}
        row = list(leading) + [f"{means[k]:.6g}" if k in means else "" for k in self.fields] + [f"{seconds:.2f}"]
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow(row)
        self.sums, self.count = {}, 0


def mean_pairwise_distance(batch: torch.Tensor) -> float:
    flat = batch.detach().flatten(1).double()
    if len(flat) < 2:
        return 0.0
    distances = torch.cdist(flat, flat)
    n = len(flat)
    return float(distances.sum() / (n * (n - 1)))


def diversity_ratio(generated: torch.Tensor, real: torch.Tensor) -> float:
    """Spread of generated items relative to real ones (0 = every generated item identical)."""
    real_spread = mean_pairwise_distance(real)
    return mean_pairwise_distance(generated) / real_spread if real_spread > 0 else float("nan")


class CollapseMonitor:
    """Logs a warning when the diversity ratio falls below `threshold`, and again each time it
    recovers and falls again (not on every epoch in between)."""

    def __init__(self, threshold: float, what: str):
        self.threshold = threshold
        self.what = what
        self.collapsed = False
        self.warnings = 0

    def check(self, generated: torch.Tensor, real: torch.Tensor, epoch: int) -> float:
        return self.observe(diversity_ratio(generated, real), epoch)

    def observe(self, ratio: float, epoch: int) -> float:
        collapsed = ratio < self.threshold
        if collapsed and not self.collapsed:
            self.warnings += 1
            log.warning("mode collapse suspected at epoch %d: the %s vary %.3f times as much as real items "
                        "(threshold %.2f); see losses.png and the grids in %s/", epoch, self.what, ratio,
                        self.threshold, GRID_FOLDER)
        self.collapsed = collapsed
        return ratio


def evenly_spaced(index: int, total: int, count: int) -> bool:
    """Whether event `index` (1..total) is one of `count` evenly spaced events ending with the last."""
    if count <= 0 or index < 1:
        return False
    if index >= total:
        return True
    return index * count // total > (index - 1) * count // total


def to_uint8(batch: torch.Tensor, color_order: str) -> list[np.ndarray]:
    """Model-space items in [-1, 1] as HxWx3 (or HxW) uint8 images in OpenCV's BGR order."""
    images = []
    for item in batch.detach().float().clamp(-1, 1):
        pixels = ((item.numpy().transpose(1, 2, 0) + 1) * 127.5).round().astype(np.uint8)
        if pixels.shape[2] == 1:
            pixels = pixels[:, :, 0]
        elif color_order == "rgb":
            pixels = pixels[:, :, ::-1]
        images.append(np.ascontiguousarray(pixels))
    return images


def grid(rows: list[list[np.ndarray]], gap: int = 2) -> np.ndarray:
    height, width = rows[0][0].shape[:2]
    columns = max(len(r) for r in rows)
    shape = (len(rows) * (height + gap) - gap, columns * (width + gap) - gap) + rows[0][0].shape[2:]
    canvas = np.full(shape, 255, np.uint8)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            canvas[r * (height + gap):r * (height + gap) + height, c * (width + gap):c * (width + gap) + width] = image
    return canvas


def write_grid(path: Path, items: torch.Tensor, color_order: str, paired_with: torch.Tensor | None = None,
               title: str = "", labels: tuple[str, str] = ("real", "recon.")) -> Path:
    """A grid of items under a title line; with `paired_with`, each row of items is followed by the
    row of its partners, and every row is named in the left margin (`labels`)."""
    images = to_uint8(items, color_order)
    columns = min(8, len(images))
    rows = [images[i:i + columns] for i in range(0, len(images), columns)]
    names = [labels[0]] * len(rows)
    if paired_with is not None:
        partners = to_uint8(paired_with, color_order)
        rows = [row for i, top in enumerate(rows) for row in (top, partners[i * columns:(i + 1) * columns])]
        names = [name for _ in range(len(rows) // 2) for name in labels]
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), labelled(grid(rows), title, names)):
        raise OSError(f"could not write {path}")
    return path


def labelled(canvas: np.ndarray, title: str, row_names: list[str], gap: int = 2) -> np.ndarray:
    """The grid with a title band above and each row's name in a left margin (BGR, black on white)."""
    if canvas.ndim == 2:
        canvas = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR)
    margin, band = 56, 20
    row_height = (canvas.shape[0] + gap) // max(1, len(row_names))
    out = np.full((canvas.shape[0] + band, canvas.shape[1] + margin, 3), 255, np.uint8)
    out[band:, margin:] = canvas
    cv2.putText(out, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    for r, name in enumerate(row_names):
        y = band + r * row_height + min(row_height, 20) // 2 + 4
        cv2.putText(out, name, (2, y), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def plot_losses(csv_path: Path, png_path: Path | None = None, collapse_level: float | None = None) -> Path | None:
    """One panel per logged quantity against the training step; the diversity panel draws the level
    below which training warns of mode collapse."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return None
    names = [name for name in rows[0] if name not in NOT_A_LOSS]
    series = {}
    for name in names:
        points = [(float(r["step"]), float(r[name])) for r in rows if r.get(name) not in ("", None, "nan")]
        if points and any(math.isfinite(v) for _, v in points):
            series[name] = points
    if not series:
        return None
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 1.9 * len(series)), sharex=True, squeeze=False)
    for axis, (name, points) in zip(axes[:, 0], series.items()):
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 40 else None, lw=1)
        axis.set_ylabel(name.replace("_", "\n"), fontsize=8)
        axis.grid(alpha=0.3)
        if name == "diversity":
            axis.axhline(1.0, color="grey", lw=0.8, ls=":", label="as varied as the data")
            if collapse_level is not None:
                axis.axhline(collapse_level, color="red", lw=1.0, ls="--", label="collapse warning")
            axis.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(f"training losses per epoch ({csv_path.parent.name})", fontsize=10)
    fig.tight_layout()
    png_path = png_path or csv_path.with_name(LOSSES_PLOT)
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    return png_path
