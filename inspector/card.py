"""The model card: everything needed to score with a model, stored inside the .onnx file.

A deployed model is one file. The card travels in the ONNX `metadata_props` under `CARD_KEY` as a
versioned JSON document: input geometry and preprocessing (so the inspector transforms frames exactly
as training did), the score definition, the calibrated threshold with the normal-score quantiles it
came from, provenance, and evaluation metrics when known. Reading is strict: a card that is missing,
from a newer format, or inconsistent with the graph is refused with one sentence.
"""

from __future__ import annotations

import math

import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, ValidationError, model_validator

from .errors import ModelCardError, describe_validation_error
from .strict import FrozenStrict

CARD_KEY = "qinspector.card"
MAX_TILE_OVERLAP = 0.75  # 16 times the tiles of no overlap; 0.999 made 4,225 tiles of a 128 px frame
CARD_FORMAT_VERSION = 12  # 2: calibration.confidence; 3: .synthetic_recall; 4: .folds; 5: lineage; 6: input.tile_scale; 7: export.precision; 8: input.frame_level; 9: score.map_in_score_units; 10: export.photo_height/width; 11: score.pooled_output; 12: score.map_baseline; older cards still load
MIN_TILE_SCALE = 0.25


class ImageInput(FrozenStrict):
    """How a frame becomes the model's input tensor (N, C, H, W), float32."""

    kind: Literal["image"] = "image"
    height: Annotated[int, Field(ge=16, le=4096)]
    width: Annotated[int, Field(ge=16, le=4096)]
    channels: Literal[1, 3]
    color_order: Literal["gray", "rgb", "bgr"]
    resize: Literal["stretch", "center_crop", "tile"] = Field(
        "stretch",
        description="stretch: resize the whole frame to HxW; center_crop: resize the short side, crop "
        "the centre; tile: score at native resolution in HxW tiles (frame score = max over tiles).",
    )
    tile_overlap: Annotated[float, Field(ge=0.0, le=MAX_TILE_OVERLAP)] = 0.0
    # tile: the frame is first scaled by this factor (1 = native resolution): a cheaper tile plan
    # for fast lines, at the price of detail (a defect of d pixels becomes d * tile_scale)
    tile_scale: Annotated[float, Field(ge=MIN_TILE_SCALE, le=1.0)] = 1.0
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)
    max_pixels: Annotated[int, Field(ge=1)] = 50_000_000
    # the normal training frames' typical pixel mean (0-1 units, the median over frames): each frame
    # is first brightened or darkened to it (its own mean of unsaturated pixels, all channels), so an
    # exposure change (lamp, shutter, aperture: a gain on every pixel) is undone before the model sees
    # the frame. None: frames as they come (cards before format 8; pretrained-backbone models, whose
    # graph standardises each frame itself, training.frame_level).
    frame_level: Annotated[float, Field(gt=0, le=1)] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "ImageInput":
        if (self.channels == 1) != (self.color_order == "gray"):
            raise ValueError(f"color_order '{self.color_order}' does not fit {self.channels} channel(s)")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} needs 1 or {self.channels} values, got {len(values)}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class NumericFeature(FrozenStrict):
    """x -> (transform(x) - center) / scale; transform log1p for non-negative heavy-tailed counts."""

    name: str
    transform: Literal["none", "log1p"] = "none"
    center: float = 0.0
    scale: Annotated[float, Field(gt=0)] = 1.0


class CategoricalFeature(FrozenStrict):
    """One-hot over `vocabulary` plus one explicit unknown bucket (values never seen in training)."""

    name: str
    vocabulary: list[str]


class TabularInput(FrozenStrict):
    """How rows of a flow table become the model input (N, window * features), float32.

    `columns` is the order of fields in an incoming CSV row (or the keys of a JSON object); the
    feature vector is the numeric features in their order, then each categorical one-hot (with
    its unknown bucket). `window` consecutive rows of one source are concatenated, every
    `stride` rows.
    """

    kind: Literal["tabular"] = "tabular"
    columns: list[str]
    numeric: list[NumericFeature]
    categorical: list[CategoricalFeature] = Field(default_factory=list)
    label: str | None = None  # evaluation only; ignored at inference
    normal_values: list[str] = Field(default_factory=lambda: ["normal", "0"])  # label values of normal rows
    window: Annotated[int, Field(ge=1, le=1024)] = 1
    stride: Annotated[int, Field(ge=1, le=1024)] = 1
    max_line_bytes: Annotated[int, Field(ge=64, le=16_000_000)] = 65_536

    @property
    def row_width(self) -> int:
        return len(self.numeric) + sum(len(c.vocabulary) + 1 for c in self.categorical)

    @property
    def width(self) -> int:
        return self.row_width * self.window

    @model_validator(mode="after")
    def _consistent(self) -> "TabularInput":
        names = [f.name for f in self.numeric] + [c.name for c in self.categorical]
        missing = [n for n in names if n not in self.columns]
        if missing:
            raise ValueError(f"features {missing} are not among the columns")
        if len(set(names)) != len(names):
            raise ValueError("a column is used as a feature twice")
        if not names:
            raise ValueError("at least one feature is needed")
        return self


InputSpec = Annotated[Union[ImageInput, TabularInput], Field(discriminator="kind")]


class ScoreDefinition(FrozenStrict):
    """score = sum_i weight_i * output_i / scale_i over the graph outputs named in `weights`.

    Scales are fitted on held-out normal data so components of different units can be mixed.
    """

    weights: dict[str, float]
    scales: dict[str, float]
    map_output: str | None = "anomaly_map"
    # the map sums the score's components as the score does (weight / scale), so its values read
    # against the threshold; otherwise it is in the model's own unit (cards before format 9)
    map_in_score_units: bool = False
    # when set, an item's score is this graph output instead of the weighted sum of the components'
    # maxima: the mean of the highest share of the map in score units (the graph computes it with the
    # weights and scales above), so one stray patch in a component counts less than a defect's area
    pooled_output: str | None = None
    # the map's median cell on held-out good frames, in the map's unit: where a heatmap's colours start,
    # so a normal surface is drawn blue and only what stands out of it warms. A map on pretrained
    # features has its median cell at 0.4-0.7 of the threshold on good frames (the six harder sets,
    # mvtec_screw); drawn from 0, every frame was yellow to orange. None (cards before format 12):
    # colours start at 0
    map_baseline: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    description: str = ""

    def graph_outputs(self) -> set[str]:
        """The graph outputs this score and its heatmap read."""
        return set(self.weights) | {name for name in (self.map_output, self.pooled_output) if name}

    @model_validator(mode="after")
    def _consistent(self) -> "ScoreDefinition":
        if not self.weights:
            raise ValueError("at least one score component is needed")
        missing = set(self.weights) - set(self.scales)
        if missing:
            raise ValueError(f"no scale for component(s) {sorted(missing)}")
        if self.pooled_output is not None and not self.map_in_score_units:
            raise ValueError("pooled_output pools the map in score units: map_in_score_units must be true")
        # a zero, negative, infinite or NaN weight or scale passes the card and silences the line
        for kind, values in (("weights", self.weights), ("scales", self.scales)):
            bad = {k: v for k, v in values.items() if not (math.isfinite(v) and v > 0)}
            if bad:
                raise ValueError(f"component {kind} must be finite and positive, got {bad}")
        return self


class Calibration(FrozenStrict):
    threshold: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    # quantile_and_reviews: a retrained model's quantile threshold, lowered to catch the defects operators
    # confirmed (never below the highest held-out normal score; see training/retrain.py)
    method: Literal["quantile", "f1_optimal", "manual", "quantile_and_reviews"]
    target_false_alarm_rate: Annotated[float, Field(gt=0, lt=1)] | None = None
    # quantile: the threshold is an upper limit of the (1 - target) quantile at this confidence
    confidence: Annotated[float, Field(ge=0.5, lt=1)] | None = None
    n_samples: Annotated[int, Field(ge=0)]
    quantiles: dict[str, float] = Field(default_factory=dict)
    # share of synthetic-defect copies of the held-out images at or above the threshold (images only)
    synthetic_recall: Annotated[float, Field(ge=0, le=1)] | None = None
    # cross-fitted: the n_samples scores are out-of-fold scores of every normal training item, from
    # this many models each trained without its fold (None: the held-out split's scores)
    folds: Annotated[int, Field(ge=2)] | None = None


class Provenance(FrozenStrict):
    data: str
    steps: int
    epochs: int
    seed: int
    created: str
    train_seconds: float
    package_version: str
    torch_version: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)


class ExportInfo(FrozenStrict):
    opset: int
    parity_max_abs_diff: float
    parity_tolerance: float
    flops_per_item: int | None = None
    # what one training-size frame costs (tiles x FLOPs per item) and the frames/s measured at export,
    # on the machine named: read it before pointing a camera of another resolution at the model
    frame_height: int | None = None
    frame_width: int | None = None
    inputs_per_frame: int | None = None
    frames_per_s: float | None = None
    measured_on: str | None = None
    # a whole-frame model (stretch, center_crop): the size of the photos it was trained on, before they
    # were resized to the input; a camera of other proportions shows a stretching model parts squeezed
    # (inspector.frame_cost.proportion_warning). None: unknown (a card before format 10, a tiled model)
    photo_height: int | None = None
    photo_width: int | None = None
    # int8: the graph's convolutions are quantized; parity against the float32 graph it came from, on
    # held-out normal images and their synthetic-defect copies: score rank correlation, and the change
    # of the synthetic-defect AUROC (int8 - float32)
    precision: Literal["float32", "int8"] = "float32"
    int8_rank_correlation: float | None = None
    int8_synthetic_auroc_change: float | None = None


class Lineage(FrozenStrict):
    """Where a model that was not trained from scratch comes from: its parent, and what changed."""

    parent: str  # the parent model's version
    change: Literal["recalibrated", "retrained"]
    created: str
    new_good_images: Annotated[int, Field(ge=0)] = 0  # newly photographed good parts it used
    reviews_database: str | None = None
    false_alarm_reviews: list[int] = Field(default_factory=list)  # review items learned from as normal
    confirmed_defects: Annotated[int, Field(ge=0)] = 0  # reviewed defects the threshold was checked against
    held_out_threshold: float | None = None  # the threshold from held-out normal images alone, when lowered


class ModelCard(FrozenStrict):
    format_version: Literal[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12] = CARD_FORMAT_VERSION
    name: str
    # the training family that made the graph (training.models.registry); the runtime only shows it
    family: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
    version: str
    input: InputSpec
    score: ScoreDefinition
    calibration: Calibration
    training: Provenance
    export: ExportInfo | None = None
    evaluation: dict[str, Any] | None = None
    lineage: Lineage | None = None  # recalibrated or retrained from a parent model

    def to_json(self) -> str:
        return self.model_dump_json()

    def with_updates(self, **changes: Any) -> "ModelCard":
        """A validated copy with top-level fields replaced (cards are immutable)."""
        data = self.model_dump()
        data.update({k: (v.model_dump() if isinstance(v, BaseModel) else v) for k, v in changes.items()})
        return ModelCard.model_validate(data)


def parse_card(text: str | bytes, source: str | Path = "model card") -> ModelCard:
    """Parse and validate card JSON; every failure is a ModelCardError with one sentence."""
    try:
        data = json.loads(text)
    except (ValueError, TypeError) as exc:
        raise ModelCardError(f"{source}: the model card is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ModelCardError(f"{source}: the model card must be a JSON object")
    version = data.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > CARD_FORMAT_VERSION:
        raise ModelCardError(
            f"{source}: model card format {version} is newer than this inspector supports "
            f"({CARD_FORMAT_VERSION}); upgrade the inspector"
        )
    try:
        return ModelCard.model_validate(data)
    except ValidationError as exc:
        raise ModelCardError(describe_validation_error(exc, source, prefix="card")) from None


def card_from_metadata(metadata: dict[str, str], source: str | Path) -> ModelCard:
    if CARD_KEY not in metadata:
        raise ModelCardError(
            f"{source}: the ONNX file has no model card (metadata key '{CARD_KEY}'); "
            "only 'inspector train' writes models the inspector can run (the card carries the threshold and "
            "the preprocessing)"
        )
    return parse_card(metadata[CARD_KEY], source)


def check_card_matches_graph(
    card: ModelCard, input_shape: list[Any], output_names: list[str], source: str | Path
) -> None:
    """Refuse a card that describes a different graph than the one in the file."""
    spec = card.input
    if isinstance(spec, TabularInput):
        expected, what = [spec.width], "(window x features)"
    else:
        expected, what = [spec.channels, spec.height, spec.width], "(C, H, W)"
    actual = list(input_shape[1:])
    if len(actual) != len(expected) or any(isinstance(a, int) and a != e for a, e in zip(actual, expected)):
        raise ModelCardError(
            f"{source}: the model card says input {what} = {tuple(expected)} but the graph takes "
            f"{tuple(input_shape)}"
        )
    missing = sorted(card.score.graph_outputs() - set(output_names))
    if missing:
        raise ModelCardError(
            f"{source}: the model card scores output(s) {missing} that the graph does not have "
            f"(graph outputs: {sorted(output_names)})"
        )
