"""Load a .onnx model with its card and score items: raw score, normalised score, verdict, heatmap.

The scorer is the only place that runs models in the inspector. It validates the file once at load
(so a wrong model refuses to start with one sentence), then scores batches. Per-item problems
(undecodable or wrong-channel frames) become rejections (`ScoreResult.rejected`) in the result list; the rest of the batch
is still scored. Scores are per item: the exported graph is in eval mode, so an item scores the same
alone or in any batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .card import ImageInput, ModelCard, ScoreDefinition, card_from_metadata, check_card_matches_graph
from .errors import ItemRejected, ModelCardError
from .preprocess import TileLayout, prepare_image, stitch_tiles
from .regions import Region, RegionLayout, prepare_regions, stitch_regions

ANOMALY = "anomaly"
NORMAL = "normal"
REJECTED = "rejected"

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(slots=True)
class ScoreResult:
    """What scoring one item gives: a verdict with its score, or a rejection (reason and message set,
    verdict REJECTED, no score) for an item the model could not score."""

    raw: float
    normalised: float  # raw / threshold: 1.0 is the threshold
    verdict: str
    components: dict[str, float]
    heatmap: np.ndarray | None = field(default=None, repr=False)  # HxW float32, frame or model resolution
    reason: str | None = None  # a rejection's reason (decode_failed, non_finite_score, ...)
    message: str | None = None

    @classmethod
    def rejection(cls, reason: str, message: str) -> "ScoreResult":
        return cls(float("nan"), float("nan"), REJECTED, {}, None, reason, message)

    @property
    def rejected(self) -> bool:
        return self.reason is not None


@dataclass
class FeatureScores:
    """Scores of traffic windows as arrays (a block of rows is scored and journaled as a whole:
    inspector.sources.row_blocks). A non-finite score rejects that row (non_finite_score); the block
    as a whole is never a rejection, so `rejected` is False like a scored item's."""

    raw: np.ndarray  # float64 (n,)
    normalised: np.ndarray  # float64 (n,)
    anomaly: np.ndarray  # bool (n,)
    finite: np.ndarray  # bool (n,)
    components: dict[str, np.ndarray]
    reason = None
    rejected = False

    def __len__(self) -> int:
        return len(self.raw)

    def take(self, index: slice | np.ndarray) -> "FeatureScores":
        """The rows at `index` (a slice, or an array of positions)."""
        return FeatureScores(self.raw[index], self.normalised[index], self.anomaly[index], self.finite[index],
                             {k: v[index] for k, v in self.components.items()})

    def results(self, first_window: int = 0) -> list[ScoreResult]:
        """One ScoreResult per row, for callers and sinks that take rows one by one."""
        names = list(self.components)
        verdicts = np.where(self.anomaly, ANOMALY, NORMAL).tolist()
        components = [dict(zip(names, values)) for values in zip(*(self.components[k].tolist() for k in names))]
        if not names:
            components = [{} for _ in range(len(self))]
        results = list(map(ScoreResult, self.raw.tolist(), self.normalised.tolist(), verdicts, components))
        for k in np.flatnonzero(~self.finite):
            results[k] = ScoreResult.rejection("non_finite_score", f"window {first_window + k}: the model's score is "
                                               f"{self.raw[k]}, not a number to compare with the threshold")
        return results


@dataclass(slots=True)
class PreparedFrame:
    """A frame turned into model input, ahead of scoring (the daemon does this on the source's thread,
    so decoding and preprocessing overlap the model run). `spec` is the card input it was made for:
    after a model reload with another input geometry it is prepared again."""

    tiles: np.ndarray  # (T, C, H, W) float32
    layout: TileLayout | RegionLayout | None
    spec: ImageInput
    regions: tuple[Region, ...] = ()  # the source's regions of interest it was made for (none: the whole frame)


# input values per onnxruntime run: 64 RGB 64x64 tiles (the shipped tile batch). A whole-frame
# backbone model's memory grows with the frames of a run (activations at 512 px, the patch memory's
# distance matrices): 64 deeppcb frames of 512x512 in one run took 24 GB and were killed; 12 per run
# peaked at 7.4 GB, 3 per run at 2.1 GB, and scored 64 frames in 11 s instead of 19
RUN_VALUES = 64 * 3 * 64 * 64


def inputs_per_run(shape: tuple[int, ...], max_batch: int) -> int:
    """How many inputs of `shape` (without the batch axis) one run takes: max_batch, fewer for large
    inputs, at least one."""
    values = int(np.prod(shape)) if len(shape) else 1
    return max(1, min(max_batch, RUN_VALUES // max(values, 1)))


def combine_score(outputs: dict[str, np.ndarray], definition: ScoreDefinition) -> np.ndarray:
    """score = sum_i weight_i * component_i / scale_i, or the pooled map output where the card names
    one; shared by the inspector and training."""
    if definition.pooled_output is not None:
        return np.asarray(outputs[definition.pooled_output], dtype=np.float64).reshape(-1)
    total = None
    for name, weight in definition.weights.items():
        term = np.asarray(outputs[name], dtype=np.float64).reshape(-1) * (weight / definition.scales[name])
        total = term if total is None else total + term
    return total


class Scorer:
    """An onnxruntime session plus its card. Thread-safe for `score_*` calls (onnxruntime sessions are)."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        threshold: float | None = None,
        intra_op_threads: int = 0,
        inter_op_threads: int = 1,
        optimization: str = "all",
        spinning: bool = True,
    ):
        self.path = Path(model_path)
        if not self.path.is_file():
            raise ModelCardError(f"{self.path}: model file not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        options.graph_optimization_level = _OPT_LEVELS[optimization]
        options.log_severity_level = 3
        if not spinning:  # idle inference threads sleep instead of spinning: they share cores with the sources
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several private types for bad files
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelCardError(f"{self.path}: not a loadable ONNX model ({first_line[:200]})") from None
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.card: ModelCard = card_from_metadata(metadata, self.path)
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        check_card_matches_graph(self.card, graph_input.shape, self.output_names, self.path)
        if threshold is not None and not (threshold > 0 and np.isfinite(threshold)):
            raise ModelCardError(f"{self.path}: threshold override must be a positive number, got {threshold}")
        self.threshold = float(threshold) if threshold is not None else self.card.calibration.threshold
        self._wanted = sorted(self.card.score.graph_outputs())  # only the outputs the score and the heatmap need

    @property
    def model_version(self) -> str:
        return self.card.version

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Raw graph outputs for a preprocessed (N, C, H, W) float32 batch."""
        values = self.session.run(self._wanted, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return dict(zip(self._wanted, values))

    def score_tensor(self, batch: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Combined raw scores (N,) and the graph outputs for a preprocessed batch."""
        outputs = self.run(batch)
        return combine_score(outputs, self.card.score), outputs

    def score_feature_arrays(self, windows: np.ndarray, max_batch: int = 4096) -> FeatureScores:
        """Score encoded feature windows (N, window * features) of a tabular model, as arrays."""
        if not len(windows):
            nothing = np.zeros(0)
            return FeatureScores(nothing, nothing, nothing.astype(bool), nothing.astype(bool),
                                 {k: nothing for k in self.card.score.weights})
        scores, outputs = self.score_in_chunks(windows, max_batch)
        raw = np.asarray(scores, dtype=np.float64).reshape(-1)
        finite = np.isfinite(raw)
        return FeatureScores(raw, raw / self.threshold, finite & (raw >= self.threshold), finite,
                             {k: np.asarray(outputs[k], dtype=np.float64).reshape(-1) for k in self.card.score.weights})

    def score_features(self, windows: np.ndarray, max_batch: int = 4096) -> list[ScoreResult]:
        """Score encoded feature windows (N, window * features) of a tabular model. A non-finite score
        is a rejection (non_finite_score), never a verdict."""
        return self.score_feature_arrays(windows, max_batch).results()

    def self_test(self) -> None:
        """Score a neutral batch of two items: a graph that cannot take a batch, or that gives a
        non-finite score, is refused here, before it decides a single part."""
        spec = self.card.input
        probe = (np.zeros((2, spec.width), np.float32) if spec.kind == "tabular"
                 else np.zeros((2, spec.channels, spec.height, spec.width), np.float32))
        try:
            scores, _ = self.score_tensor(probe)
        except Exception as exc:  # onnxruntime's errors: a fixed batch size, a broken graph
            raise ModelCardError(f"{self.path}: the model fails on a batch of 2 neutral inputs "
                                 f"({str(exc).splitlines()[0][:200]})") from None
        if len(scores) != 2 or not np.all(np.isfinite(scores)):
            raise ModelCardError(f"{self.path}: the model gives a non-finite score on a neutral input ({scores})")

    def verdict(self, raw: float) -> str:
        """A score that is not a number is an anomaly: an input crafted to break the model must not pass."""
        return NORMAL if raw < self.threshold else ANOMALY

    def prepare(self, image: np.ndarray, origin: str = "image", regions: tuple[Region, ...] = ()) -> PreparedFrame:
        """Model input for one decoded frame (only its `regions` of interest, when given); raises
        ItemRejected for a frame the model cannot take."""
        if regions:
            tiles, layout = prepare_regions(image, self.card.input, regions, origin)
        else:
            tiles, layout = prepare_image(image, self.card.input, origin)
        return PreparedFrame(tiles, layout, self.card.input, regions)

    def score_images(
        self,
        images: list[np.ndarray | None],
        origins: list[str] | None = None,
        *,
        max_batch: int = 64,
        heatmaps: bool = True,
        prepared: list[PreparedFrame | None] | None = None,
        regions: list[tuple[Region, ...]] | None = None,
    ) -> list[ScoreResult]:
        """Score decoded frames (HxW or HxWxC uint8, BGR). Bad frames become Rejections, never exceptions.

        `prepared[i]`, when given and made for this model's input, is used instead of preparing
        `images[i]` again (then `images[i]` may be None). `regions[i]`: score only those rectangles
        of frame i (its heatmap stays in frame coordinates).
        """
        origins = origins or [f"item {i}" for i in range(len(images))]
        ready: list[tuple[int, PreparedFrame]] = []
        results: list[ScoreResult | None] = [None] * len(images)
        for index, (image, origin) in enumerate(zip(images, origins)):
            frame = prepared[index] if prepared is not None else None
            wanted = regions[index] if regions is not None else ()
            if (frame is None or (frame.spec is not self.card.input and frame.spec != self.card.input)
                    or frame.regions != wanted):
                try:
                    frame = self.prepare(image, origin, wanted)
                except ItemRejected as rejected:
                    results[index] = ScoreResult.rejection(rejected.reason, str(rejected))
                    continue
            ready.append((index, frame))
        if ready:
            all_tiles = ready[0][1].tiles if len(ready) == 1 else np.concatenate([f.tiles for _, f in ready])
            scores, outputs = self.score_in_chunks(all_tiles, max_batch)
            offset = 0
            for index, frame in ready:
                span = slice(offset, offset + len(frame.tiles))
                offset += len(frame.tiles)
                results[index] = self._result(scores[span], {k: v[span] for k, v in outputs.items()}, frame.layout,
                                              heatmaps, origins[index])
        return results  # type: ignore[return-value]

    def score_in_chunks(self, inputs: np.ndarray, max_batch: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """score_tensor over preprocessed inputs (at least one) in runs of at most max_batch, and of at
        most RUN_VALUES input values (inputs_per_run), joined."""
        step = inputs_per_run(inputs.shape[1:], max_batch)
        chunks = [self.score_tensor(inputs[i : i + step]) for i in range(0, len(inputs), step)]
        scores = np.concatenate([c[0] for c in chunks])
        outputs = {k: np.concatenate([c[1][k] for c in chunks]) for k in chunks[0][1]}
        return scores, outputs

    def _result(
        self, tile_scores: np.ndarray, outputs: dict[str, np.ndarray], layout: TileLayout | None, heatmaps: bool,
        origin: str = "item",
    ) -> ScoreResult:
        if not np.all(np.isfinite(tile_scores)):
            bad = tile_scores[~np.isfinite(tile_scores)][0]
            return ScoreResult.rejection("non_finite_score", f"{origin}: the model's score is {bad}, not a number to compare "
                                                 "with the threshold")
        worst = int(np.argmax(tile_scores))
        raw = float(tile_scores[worst])
        components = {k: float(np.asarray(outputs[k]).reshape(len(tile_scores), -1)[worst, 0]) for k in self.card.score.weights}
        heatmap = None
        map_name = self.card.score.map_output
        if heatmaps and map_name:
            maps = outputs[map_name][:, 0]
            if isinstance(layout, RegionLayout):
                heatmap = stitch_regions(maps, layout)
            else:
                heatmap = stitch_tiles(maps, layout) if layout is not None else maps[0]
        return ScoreResult(raw, raw / self.threshold, self.verdict(raw), components, heatmap)

    def score_files(self, paths: list[str | os.PathLike], **kwargs) -> list[ScoreResult]:
        """Read and score image files; unreadable files become Rejections naming the file."""
        from .image_files import read_image

        images: list[np.ndarray] = []
        keep: list[int] = []
        results: list[ScoreResult | None] = [None] * len(paths)
        for index, path in enumerate(paths):
            try:
                images.append(read_image(path, self.card.input.max_pixels))
                keep.append(index)
            except ItemRejected as rejected:
                results[index] = ScoreResult.rejection(rejected.reason, str(rejected))
        for index, result in zip(keep, self.score_images(images, [str(paths[i]) for i in keep], **kwargs)):
            results[index] = result
        return results  # type: ignore[return-value]
