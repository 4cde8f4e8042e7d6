"""The run folder's layout, named in one place: every module that writes into a run asks this one.

    run/
      config.json                 the validated training config
      checkpoint.pt               the resumable training state (weights, optimisers, data order, selection)
      checkpoint_gan_phase.pt     AnoGAN: the weights after its WGAN-GP phase
      losses.csv / losses.png     one row per epoch (training.diagnostics)
      diagnostics/<kind>_eNNNN.png  sample and reconstruction grids
      selection.json              the checkpoint criterion and every evaluation (training.selection)
      model.onnx                  the exported scorer with its card
      unusual_good.png            good photos that scored like defects, when some did (training.unusual_normals)
      model.float32.onnx          with export.precision int8: the float32 graph it was quantized from
      metrics.json, report/       the evaluation on test/ (training.evaluate)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
GAN_PHASE_CHECKPOINT = "checkpoint_gan_phase.pt"
LOSSES = "losses.csv"
LOSSES_PLOT = "losses.png"
GRID_FOLDER = "diagnostics"
SELECTION_LOG = "selection.json"
MODEL_FILE = "model.onnx"
FLOAT_MODEL_FILE = "model.float32.onnx"
METRICS = "metrics.json"


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder (created on first use)."""

    root: Path

    @classmethod
    def create(cls, root: Path | str) -> "RunFolder":
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def gan_phase_checkpoint(self) -> Path:
        return self.root / GAN_PHASE_CHECKPOINT

    @property
    def losses(self) -> Path:
        return self.root / LOSSES

    @property
    def selection(self) -> Path:
        return self.root / SELECTION_LOG

    @property
    def model(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def float_model(self) -> Path:
        return self.root / FLOAT_MODEL_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    def selection_record(self) -> dict:
        """The run's decisions so far: selection.json, or {} before the first."""
        return json.loads(self.selection.read_text()) if self.selection.exists() else {}

    def record_selection(self, key: str, value) -> None:
        """Add one decision of the run (a JSON value under `key`) to selection.json, made if missing."""
        record = self.selection_record()
        record[key] = value
        self.selection.write_text(json.dumps(record, indent=2))

    def grid(self, kind: str, epoch: int) -> Path:
        return self.root / GRID_FOLDER / f"{kind}_e{epoch:04d}.png"
