"""GANomaly on frozen pretrained features (`model.backbone: efficientnet_lite0`).

A from-scratch GAN on a few hundred photos learns pixels: brightness, borders and texture grain
dominate its residual, not defects. Here the generator (encoder -> decoder -> encoder, as GANomaly)
and the discriminator work on the frozen EfficientNet-Lite0 stage-3/4 feature map instead (one
120-dimensional vector per 8x8 patch, training.backbone), standardised per channel with statistics
of the normal training frames. A frame with fewer pixels than the backbone's 224 x 224 ImageNet
images is enlarged to about that before it (model.backbone_min_size, `backbone_size`). Training is
GANomaly's: adversarial feature matching + contextual reconstruction of the features + the encoder
loss; the discriminator tells real feature maps from reconstructed ones.

Score components (the exported graph outputs each; the card's weights combine them):
  patch_residual  the GAN's: the largest 3x3-averaged squared reconstruction error of the
                  standardised features over the frame's patches
  patch_knn       a memory of normal patch features (score.memory_size of the fitted frames' patches,
                  a greedy coreset as in PatchCore, training.models.coreset, drawn from the frames as
                  they are, brightened by train.augment.lighting and blurred by train.augment.focus):
                  a patch's distance to a memory patch, in units of how far apart normal patches
                  of that kind lie (score.memory_scale_neighbors, `local_scales`), the smallest over
                  the memory (score.memory_distance; `nearest`: the nearest memory patch's)
  anomaly_map     the heatmap at input size: the score's own sum of the patch maps (each times its
                  weight over its scale, set by `use_score_units` once the calibration has the
                  scales), so its value at a place reads against the threshold
  anomaly_top     with score.map_top_share (after `pool_top`): the mean of that highest share of
                  anomaly_map, the frame's score. A sum of each component's own maximum adds two
                  noise peaks of a normal frame wherever they lie; a defect raises both maps at one
                  place and over an area, which the top share of their sum keeps
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from inspector.card import ScoreDefinition

from ..backbone import FEATURE_DIM, STRIDE, StageFeatures
from ..family import Family, Phase
from ..items import blurred, brightened, focus_sigmas
from ..torch_scoring import modes_kept
from .blocks import dcgan_init, local_mean
from .coreset import greedy_coreset
from .frozen_cache import FrozenOutputs, Outputs, cache_limit
from .ganomaly_family import ganomaly_optimizers, ganomaly_step
from .scoring_module import ScoringModule

log = logging.getLogger(__name__)

POOLED_OUTPUT = "anomaly_top"

RESIDUAL_KERNEL = 3  # patches: 24x24 pixels of context around each 8x8 patch
CORESET_POOL = 8  # patches drawn at random per memory patch kept, before the coreset: its selection time grows with it
MEMORY_CHUNK = 1024  # memory patches compared at once: bounds the (patches x chunk) distance matrix
# a patch's memory distance is sqrt(d^2 + floor^2): the square root is ill-conditioned at zero, where
# a patch repeats a memory patch (a photo taken twice, a small set whose memory holds nearly every
# patch). There the float noise between torch's and onnxruntime's features was the whole distance,
# 0.006 against 0.013 on a PIPED photo held out beside its pixel-exact duplicate, and the export's
# parity check refused the model; with the floor, 0.1002 against 0.1008. A distance of 5 moves by
# 0.001, one of 15 (a normal frame's largest, there) by 0.0003
DISTANCE_FLOOR = 0.1
STATISTICS_FRAMES = 64  # fitted frames whose features set the per-channel standardisation
# bytes of frozen outputs kept while training (training.models.frozen_cache): the training frames'
# feature maps (0.7 MB each on elpv_mono's 240 frames) in every version training draws: by default
# as photographed and brightened (train.augment.lighting), 16 versions with flips and turns on
# (AugmentConfig, training.pose_check); and the feature and memory-distance maps of the held-out
# frames and their synthetic copies, which every selection round and then the calibration score.
# Each at most a quarter of the memory available (cache_limit)
TRAINING_CACHE_BYTES = 3 << 30
HELD_OUT_CACHE_BYTES = 1 << 30
# latent numbers per patch = model.latent_dim / this: 33 of 120 at the default, about the principal
# components that hold 90% of the variance of standardised normal features (DFR's rule; train/good
# of the eight image sets here: 26-50, median 33). The bottleneck must drop what normal patches vary
# little in, and no more: the earlier 25 numbers per 2x2 patches (6 per patch) held under 80%.
PATCH_LATENT_DIVISOR = 3


def _block(c_in: int, c_out: int, kernel: int, stride: int = 1, activation: nn.Module | None = None) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out),
                         activation or nn.LeakyReLU(0.2, inplace=True))


class FeatureEncoder(nn.Module):
    """(N, 120, h, w) features -> (N, latent, h, w): each patch squeezed into `latent` numbers on its own
    (1x1 convolutions, as DFR, Yang et al. 2020). A patch is reconstructed from itself, never filled in
    from its neighbours, so what the bottleneck cannot hold is what normal patches do not show."""

    def __init__(self, width: int, latent: int):
        super().__init__()
        self.body = nn.Sequential(_block(FEATURE_DIM, width, 1), _block(width, width, 1), nn.Conv2d(width, latent, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.body(features)


class FeatureDecoder(nn.Module):
    """Latent map -> features, patch by patch (1x1 convolutions: any frame size)."""

    def __init__(self, width: int, latent: int):
        super().__init__()
        self.body = nn.Sequential(_block(latent, width, 1, activation=nn.ReLU(inplace=True)),
                                  _block(width, width, 1, activation=nn.ReLU(inplace=True)),
                                  nn.Conv2d(width, FEATURE_DIM, 1))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.body(latent)


class FeatureGenerator(nn.Module):
    """GANomaly's generator over feature maps: encoder, decoder, second encoder."""

    def __init__(self, width: int, latent: int):
        super().__init__()
        self.encoder = FeatureEncoder(width, latent)
        self.decoder = FeatureDecoder(width, latent)
        self.encoder_reconstruction = FeatureEncoder(width, latent)
        dcgan_init(self)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        latent_in = self.encoder(features)
        reconstruction = self.decoder(latent_in)
        return {"reconstruction": reconstruction, "latent_in": latent_in,
                "latent_out": self.encoder_reconstruction(reconstruction)}


class FeatureDiscriminator(nn.Module):
    """Real vs reconstructed feature maps; forward returns its features (feature matching) and one logit per map."""

    def __init__(self, width: int, spectral_norm: bool = False):
        super().__init__()
        wrap = nn.utils.spectral_norm if spectral_norm else (lambda m: m)
        self.body = nn.Sequential(wrap(nn.Conv2d(FEATURE_DIM, width, 1)), nn.LeakyReLU(0.2, inplace=True),
                                  wrap(nn.Conv2d(width, width, 3, 2, 1)), nn.LeakyReLU(0.2, inplace=True))
        self.head = wrap(nn.Conv2d(width, 1, 3, 1, 1))
        dcgan_init(self)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.body(features)
        return {"features": hidden, "logit": self.head(hidden).flatten(1).mean(dim=1)}


def frame_means(images: torch.Tensor) -> torch.Tensor:
    """Each frame's pixel mean, (N, 1, 1, 1), reduced row by row: one float32 sum over a whole 512 px
    frame rounds differently in onnxruntime and torch (1.5e-4 apart on deeppcb's boards, 0.1% in the
    score after the backbone: past the export's parity check)."""
    return images.mean(dim=-1, keepdim=True).mean(dim=(1, 2), keepdim=True)


def frame_levels(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each frame's dark and bright level, (N, 1, 1, 1) each: the mean of its pixels at or below its
    mean and of those above it (one step of 2-means; both the mean where a frame is blank).

    A lamp's gain or offset moves both levels with the pixels, so mapping them to fixed values undoes
    it, as the mean and standard deviation do. Unlike those, the levels of a two-level frame are its
    two values whatever share of it each covers: on a binarised board (deeppcb) the mean and spread
    follow how much copper a frame shows (train/good: their coefficients of variation 0.30 and 0.23,
    while the darkest and brightest 2% sit at 0.01 and 1.00 on every board), so standardising by them
    gave the same track a different grey on every board. On a frame of one mode the levels sit about
    0.8 standard deviations either side of the mean (a normal's half-means), as before up to a factor,
    and a bright blob weighs by its area, not its squared contrast."""
    mean = frame_means(images)
    above = (images > mean).to(images.dtype)
    share = frame_means(above)  # of the pixels above the mean
    bright = frame_means(images * above) / share.clamp_min(1e-12)
    dark = frame_means(images * (1.0 - above)) / (1.0 - share).clamp_min(1e-12)
    blank = (share <= 0) | (share >= 1)  # all at one value (the mean's rounding may put them above it)
    return torch.where(blank, mean, dark), torch.where(blank, mean, bright)


def backbone_size(height: int, width: int, min_size: int) -> tuple[int, int]:
    """The size a height x width frame is shown to the backbone at: as it is, or where it has fewer
    pixels than a `min_size` x `min_size` square (min_size > 0), enlarged until it has about as many,
    aspect kept, each side rounded to a multiple of the backbone's stride (128 x 128 -> 224 x 224;
    a 320 x 128 strip -> 352 x 144)."""
    if min_size <= 0 or height * width >= min_size * min_size:
        return height, width
    scale = min_size / math.sqrt(height * width)
    return tuple(max(STRIDE, STRIDE * round(side * scale / STRIDE)) for side in (height, width))


class PretrainedFeatures(nn.Module):
    """Model-space images (normalised with mean = std = 0.5, gray / RGB / BGR) -> standardised backbone
    features. The per-channel statistics are buffers set once from normal frames (`fit_statistics`).

    With `standardise_frames`, each frame's pixels are first shifted and scaled so that its dark and
    bright level (`frame_levels`) land on the normal frames' typical ones: a line whose lighting drifts
    brighter or darker (a global gain and offset) shows the backbone the same picture, so the score
    does not follow the lamp."""

    def __init__(self, backbone: StageFeatures, color_order: str, standardise_frames: bool = True,
                 min_size: int = 0):
        super().__init__()
        self.backbone = backbone
        self.color_order = color_order
        self.standardise_frames = standardise_frames
        self.min_size = min_size  # model.backbone_min_size: smaller frames are enlarged (backbone_size)
        self.register_buffer("mean", torch.zeros(1, FEATURE_DIM, 1, 1))
        self.register_buffer("std", torch.ones(1, FEATURE_DIM, 1, 1))
        # the normal frames' median dark and bright level (frame_levels); named apart from the mean and
        # standard deviation kept before, so a checkpoint of those fails to load instead of misreading
        self.register_buffer("frame_levels", torch.tensor([0.3, 0.7]))

    def rgb(self, image: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (beyond it after frame standardisation), as the backbone expects."""
        rgb = image * 0.5 + 0.5
        if self.standardise_frames:
            dark, bright = frame_levels(rgb)
            typical_dark, typical_bright = self.frame_levels[0], self.frame_levels[1]
            rgb = ((rgb - (dark + bright) / 2) / (bright - dark).clamp_min(1e-4) * (typical_bright - typical_dark)
                   + (typical_dark + typical_bright) / 2)  # a blank frame becomes the typical mid-grey
        if self.color_order == "gray":
            rgb = rgb.expand(-1, 3, -1, -1)
        elif self.color_order == "bgr":
            rgb = torch.cat([rgb[:, 2:3], rgb[:, 1:2], rgb[:, 0:1]], dim=1)
        return rgb

    def raw(self, image: torch.Tensor) -> torch.Tensor:
        rgb = self.rgb(image)
        height, width = (int(v) for v in rgb.shape[-2:])  # constants in the graph: a model's input size is fixed
        size = backbone_size(height, width, self.min_size)
        if size != (height, width):
            rgb = nn.functional.interpolate(rgb, size=size, mode="bilinear", align_corners=False)
        return self.backbone(rgb)

    @torch.no_grad()
    def fit_statistics(self, frames: torch.Tensor) -> torch.Tensor:
        """Set the statistics from `frames`; their standardised features, (N, C, h, w), which a caller
        that needs them (training.pose_check) takes instead of running the backbone over them again."""
        dark, bright = frame_levels(frames * 0.5 + 0.5)
        self.frame_levels.copy_(torch.stack([dark.median(), bright.median()]))
        maps = torch.cat([self.raw(frames[i:i + 8]) for i in range(0, len(frames), 8)])  # bounded activations
        features = maps.transpose(0, 1).flatten(1)
        self.mean.copy_(features.mean(dim=1).view(1, -1, 1, 1))
        self.std.copy_(features.std(dim=1).clamp_min(1e-3).view(1, -1, 1, 1))
        return self.standardised(maps)

    def standardised(self, raw: torch.Tensor) -> torch.Tensor:
        return (raw - self.mean) / self.std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.standardised(self.raw(image))


class PatchMemory(nn.Module):
    """Nearest-memory distance of every patch: (N, C, h, w) -> (N, 1, h, w). The nearest memory patch is
    found by |m|^2 - 2 f.m in chunks of the memory (one matrix product each, so the exported graph never
    holds a (patches x memory) matrix at once); its distance is then taken directly, because the
    expanded form cancels badly near zero: for patches that repeat memory patches beside feature norms
    in the hundreds it was 0.4 off (a test), where the latent memory already measured directly. The
    distance has a floor (DISTANCE_FLOOR) that keeps it well-conditioned where it nears zero.

    With `scale_neighbors` > 0 the distance is divided by the nearest memory patch's local scale
    (`local_scales`, score.memory_scale_neighbors): how far normal patches of that kind lie apart.
    With `smallest_ratio` (score.memory_distance smallest_ratio) it is the smallest distance-over-scale
    over every memory patch instead: the same where the nearest patch also gives the smallest ratio,
    and continuous everywhere. The nearest patch's ratio jumps where two memory patches of different
    scales trade places, and float rounding there can pick one in torch and the other in onnxruntime
    (training.export's parity allowance)."""

    def __init__(self, memory: torch.Tensor, scale_neighbors: int = 0, smallest_ratio: bool = False):
        super().__init__()
        self.register_buffer("memory", memory.detach().float().contiguous())
        self.register_buffer("memory_sq", self.memory.pow(2).sum(dim=1))
        self.scaled = scale_neighbors > 0 and len(self.memory) > 1
        self.smallest_ratio = self.scaled and smallest_ratio
        if self.scaled:
            self.register_buffer("scale", local_scales(self.memory, scale_neighbors))
        self.patches_per_item = 0  # of the last batch scored: the search's cost depends on the frame size

    @property
    def flops_per_item(self) -> int:
        """The search's work outside layers (training.flops): a multiply-add per feature channel for every
        (patch, memory patch) pair of the last item scored, 2 FLOPs each as for the layers."""
        return 2 * self.patches_per_item * self.memory.numel()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        n, c, h, w = features.shape
        self.patches_per_item = int(h) * int(w)
        flat = features.permute(0, 2, 3, 1).reshape(-1, c)
        # the ratio's ranking needs the whole squared distance (each memory patch has its own scale)
        flat_sq = flat.pow(2).sum(dim=1, keepdim=True) + DISTANCE_FLOOR ** 2 if self.smallest_ratio else None
        best = nearest = None
        for start in range(0, len(self.memory), MEMORY_CHUNK):
            chunk = slice(start, start + MEMORY_CHUNK)
            ranking = self.memory_sq[chunk] - 2 * flat @ self.memory[chunk].t()
            if self.smallest_ratio:
                ranking = (ranking + flat_sq) / self.scale[chunk].pow(2)
            value, index = ranking.min(dim=1)
            if best is None:
                best, nearest = value, index
            else:
                closer = value < best
                best, nearest = torch.where(closer, value, best), torch.where(closer, index + start, nearest)
        distance = ((flat - self.memory[nearest]).pow(2).sum(dim=1) + DISTANCE_FLOOR ** 2).sqrt()
        if self.scaled:
            distance = distance / self.scale[nearest]
        return distance.view(n, 1, h, w)


@torch.no_grad()
def local_scales(memory: torch.Tensor, neighbors: int, chunk: int = 2048) -> torch.Tensor:
    """Each memory patch's mean distance to its `neighbors` nearest other memory patches, at least
    DISTANCE_FLOOR (the distance's own floor, so a ratio of two floors is 1 where patches repeat).
    (M, C) -> (M,), positive. Measured before choosing (throwaway script, patch_knn alone with the
    model's memory, self-check and test AUROC): 16 neighbours beat 1 and 4 on kolektor_sdd and tire on both, and
    adding the memory's median scale as a floor lowered the self-check on both (0.658 -> 0.611,
    0.996 -> 0.993), so there is none."""
    k = min(neighbors, len(memory) - 1)
    spread = []
    for start in range(0, len(memory), chunk):
        distances = torch.cdist(memory[start:start + chunk], memory)
        rows = torch.arange(len(distances))
        distances[rows, rows + start] = float("inf")  # not its own neighbour
        spread.append(distances.topk(k, dim=1, largest=False).values.mean(dim=1))
    return torch.cat(spread).clamp_min(DISTANCE_FLOOR)


class FeatureGANomalyScoring(ScoringModule):
    """Exportable scorer: images in; patch_residual, patch_knn (with a memory) and anomaly_map out."""

    map_in_score_units = True

    def __init__(self, features: PretrainedFeatures, generator: FeatureGenerator, memory: PatchMemory | None,
                 map_factors: dict[str, float] | None = None, frozen_cache: FrozenOutputs | None = None):
        """`map_factors`: what each patch map is multiplied by before the heatmap's sum (a map not
        named is left out); default: each map as it is."""
        super().__init__()
        self.features, self.generator, self.memory = features, generator, memory
        names = ("patch_residual",) + (() if memory is None else ("patch_knn",))
        self.map_factors = {name: 1.0 for name in names} if map_factors is None else dict(map_factors)
        self.frozen_cache = frozen_cache  # while training only: an exported scorer computes everything
        self.top_share = 0.0  # > 0 after pool_top: anomaly_top is an output

    def exportable(self) -> "FeatureGANomalyScoring":
        """The same scorer without the training-time cache: what is exported and counted (FLOPs)."""
        scoring = FeatureGANomalyScoring(self.features, self.generator, self.memory, self.map_factors)
        scoring.top_share = self.top_share
        return scoring

    def input_description(self, height: int, width: int) -> str:
        shown = backbone_size(height, width, self.features.min_size)
        if shown == (height, width):
            return ""
        return (f"; the backbone sees each {width}x{height} frame enlarged to {shown[1]}x{shown[0]} "
                "(model.backbone_min_size)")

    def pool_top(self, share: float) -> str:
        """From now on also output the mean of the highest `share` of anomaly_map (in score units once
        use_score_units ran); returns that output's name."""
        if not 0 < share <= 1:
            raise ValueError(f"the pooled share of the map must be in (0, 1], got {share}")
        self.top_share = share
        return POOLED_OUTPUT

    def use_score_units(self, score: ScoreDefinition) -> None:
        """The heatmap from now on sums the score's components as the score does (weight / scale),
        so where it reaches the threshold a patch alone would alarm; a component outside the score is
        left out of it. (With `pool_top` a frame's score is the mean of the heatmap's highest share,
        so at most its maximum; without, the sum of each map's maximum, at least the heatmap's
        maximum: equal when both maxima fall on one patch.)"""
        self.map_factors = {name: score.weights[name] / score.scales[name] for name in score.weights}

    def frozen_maps(self, image: torch.Tensor) -> Outputs:
        """What no training step changes: the standardised features and the memory distances."""
        features = self.features(image)
        return {"features": features, **({} if self.memory is None else {"patch_knn": self.memory(features)})}

    def patch_maps(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        frozen = self.frozen_maps(image) if self.frozen_cache is None else self.frozen_cache(image)
        features = frozen["features"]
        reconstruction = self.generator.decoder(self.generator.encoder(features))
        maps = {"patch_residual": local_mean((features - reconstruction).pow(2).mean(dim=1, keepdim=True),
                                             RESIDUAL_KERNEL)}
        if "patch_knn" in frozen:
            maps["patch_knn"] = frozen["patch_knn"]
        return maps

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.patch_maps(image)
        outputs = {name: value.flatten(1).amax(dim=1) for name, value in maps.items()}
        combined = sum(maps[name] * factor for name, factor in self.map_factors.items())
        outputs["anomaly_map"] = nn.functional.interpolate(combined, size=image.shape[-2:], mode="bilinear",
                                                           align_corners=False)
        if self.top_share > 0:
            outputs[POOLED_OUTPUT] = top_share_mean(outputs["anomaly_map"], self.top_share)
        return outputs


def top_share_mean(maps: torch.Tensor, share: float) -> torch.Tensor:
    """Each map's mean of its highest `share` of values (at least one), (N,): how a frame's score
    pools its heatmap (score.map_top_share)."""
    values = maps.flatten(1)
    highest = max(1, round(share * int(values.shape[1])))  # a constant in the graph: the input size is fixed
    return values.topk(highest, dim=1).values.mean(dim=1)


def patch_memory(features: PretrainedFeatures, frames: np.ndarray, size: int, seed: int, sampling: str = "coreset",
                 lighting: float = 0.0, batch_size: int = 8,
                 compute: Callable[[torch.Tensor], torch.Tensor] | None = None, focus: float = 0.0) -> torch.Tensor:
    """`size` normal patch features from the frames: a greedy coreset of a random pool of
    CORESET_POOL x size patches (about evenly per frame), or with `sampling` "random" a random sample
    of that size; seeded. With `lighting` > 0 each frame also enters brightened by 1 + lighting
    (train.augment.lighting), on top of that pool: the frames as they are keep their whole share
    (sharing it halved their patches, and patch_knn alone fell on screws, 0.905 -> 0.866). With
    `focus` > 0 each frame also enters blurred (train.augment.focus), every other frame by each of
    focus_sigmas, as one more share. `compute` gives a batch's feature maps in place of `features`
    itself (the training draws' cache: the same frames, as photographed, brightened and blurred alike)."""
    rng = np.random.default_rng(seed)
    pool = size * CORESET_POOL if sampling == "coreset" else size
    shown: list[Callable[[torch.Tensor, int], torch.Tensor]] = [lambda batch, start: batch]
    if lighting > 0:
        shown.append(lambda batch, start: brightened(batch, 1.0 + lighting))
    if focus > 0:
        sigmas = focus_sigmas(focus)
        shown.append(lambda batch, start: blurred(batch, torch.tensor(
            [sigmas[(start + i) % len(sigmas)] for i in range(len(batch))], dtype=batch.dtype)))
    per_frame = -(-pool // len(frames))  # of each share
    kept = []
    device = features.mean.device
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(frames[start:start + batch_size], dtype=np.float32))
            for show in shown:
                patches = (compute or features)(show(batch, start).to(device)).permute(0, 2, 3, 1).flatten(1, 2).cpu()
                for item in patches:
                    kept.append(item[torch.from_numpy(rng.permutation(len(item))[:per_frame])])
    patches = torch.cat(kept)
    if sampling == "coreset":
        started = time.perf_counter()
        memory = patches[greedy_coreset(patches, size, seed)]
        log.info("patch memory: coreset of %d from %d normal patches in %.0f s", len(memory), len(patches),
                 time.perf_counter() - started)
        return memory
    return patches[torch.from_numpy(rng.permutation(len(patches))[:size])]


class FeatureGANomalyFamily(Family):
    """GANomaly's training step on standardised pretrained features (see the module docstring)."""

    loss_fields = ["discriminator", "adversarial", "contextual", "encoder", "generator"]

    def __init__(self, config, items, shape, device):
        super().__init__(config, items, shape, device)
        width, latent = 4 * config.model.base_width, max(4, config.model.latent_dim // PATCH_LATENT_DIVISOR)
        backbone = StageFeatures(config.model.backbone_weights)
        self.features = PretrainedFeatures(backbone, config.input.color_order, config.model.standardise_frames,
                                           config.model.backbone_min_size).to(device)
        self.generator = FeatureGenerator(width, latent).to(device)
        self.discriminator = FeatureDiscriminator(width, config.stability.spectral_norm).to(device)
        self._memory: PatchMemory | None = None  # frozen features: built once, reused by every selection round
        # frozen outputs computed once per distinct input: of the training draws (dropped by end_phase),
        # and of the held-out frames (built by the first selection round; never in the exported scorer)
        self._training_features: FrozenOutputs | None = FrozenOutputs(
            lambda batch: {"features": self.features(batch)}, cache_limit(TRAINING_CACHE_BYTES))
        self._held_out_maps: FrozenOutputs | None = None
        self._fitted: np.ndarray | None = None

    def prepare(self, fitted: np.ndarray) -> None:
        """Per-channel feature statistics of (a seeded sample of) the fitted frames."""
        pick = np.sort(np.random.default_rng(self.config.train.seed).permutation(len(fitted))[:STATISTICS_FRAMES])
        frames = [torch.from_numpy(np.ascontiguousarray(fitted[i], dtype=np.float32)) for i in pick]
        crops = self.items.shown(frames, self.config.train.seed).to(self.device)
        self.features.fit_statistics(crops)
        self._fitted = fitted  # the patch memory's frames, drawn at the latest when training ends (end_phase)

    @property
    def modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator, "features": self.features}

    @property
    def selected_modules(self) -> dict[str, nn.Module]:
        return {"generator": self.generator}

    @property
    def model(self) -> nn.Module:
        return self.generator

    @property
    def trained_components(self) -> tuple[str, ...]:
        """patch_knn is frozen: the same in every checkpoint, and on synthetic defects it ranks nearly
        perfectly (self-check 0.96-0.97 on elpv_mono and elpv_poly), so the sum's self-check moved
        within a few standard errors and fell as the GAN's residual improved (elpv_poly over 300 steps:
        sum 0.944 -> 0.915, residual 0.60 -> 0.76), choosing the 75-step weights. Checkpoints are
        judged, and training extended, by the residual: the part that differs between them."""
        return ("patch_residual",) if "patch_residual" in self.config.score.weights else ()

    def phases(self) -> list[Phase]:
        return [Phase("train", self.config.train.steps)]

    def begin(self, phase: Phase) -> dict[str, torch.optim.Optimizer]:
        return ganomaly_optimizers(self.generator, self.discriminator, self.config)

    def step(self, phase: Phase, next_batch: Callable[[], torch.Tensor], sampler: torch.Generator,
             optimizers: dict[str, torch.optim.Optimizer]) -> dict[str, float]:
        with torch.no_grad():  # steps run before end_phase, while the training draws' cache exists
            x = self._training_features(next_batch())["features"]
        # standardised features: a squared error (the pixel model's L1 would treat them as bounded pixels)
        logged, _ = ganomaly_step(self.generator, self.discriminator, x, lambda real, fake: (fake - real).pow(2).mean(),
                                  self.config, optimizers)
        return logged

    def postfix(self, phase: Phase, logged: dict[str, float]) -> dict[str, str]:
        return {"d": f"{logged['discriminator']:.3f}", "con": f"{logged['contextual']:.4f}"}

    def end_phase(self, phase: Phase, run) -> None:
        """Training is over: the patch memory is drawn now if no selection round drew it (a calibration
        fold's model), while the training draws' cache can serve it; then that cache goes (its memory
        too). The held-out frames' cache stays for the calibration, which scores them again."""
        if self._memory is None and "patch_knn" in self.config.score.weights and self._fitted is not None:
            self._draw_memory(self._fitted)
        cache = self._training_features
        if cache is not None:
            log.info("frozen features of training draws: %d of %d reused (%.0f MB kept)", cache.hits,
                     cache.hits + cache.misses, cache.bytes / 1e6)
        self._training_features = None

    def _draw_memory(self, fitted: np.ndarray) -> float:
        """The patch memory of the fitted frames; the seconds it took. While training, through the
        training draws' cache: the memory's frames as photographed, brightened and blurred are the draws' own,
        so neither computes what the other did (deeppcb: 480 maps of 512 px frames, 18 GFLOPs each)."""
        started = time.perf_counter()
        cache = self._training_features
        with modes_kept(self.features):
            self.features.eval()
            self._memory = PatchMemory(patch_memory(
                self.features, fitted, self.config.score.memory_size, self.config.train.seed,
                self.config.score.memory_sampling, self.config.train.augment.lighting,
                compute=None if cache is None else (lambda batch: cache(batch)["features"]),
                focus=self.config.train.augment.focus),
                self.config.score.memory_scale_neighbors, self.config.score.memory_distance == "smallest_ratio")
        return time.perf_counter() - started

    def scoring(self, fitted: np.ndarray | None) -> ScoringModule:
        self.features.to(next(self.generator.parameters()).device)
        build_seconds = 0.0  # one-time work for the selection rounds: 0 when the memory is reused
        if "patch_knn" in self.config.score.weights and self._memory is None:
            if fitted is None:
                raise ValueError("score component patch_knn needs the fitted frames for its memory of normal patches")
            build_seconds = self._draw_memory(fitted)
        if self._memory is not None:
            self._memory.to(self.features.mean.device)
        scoring = FeatureGANomalyScoring(self.features, self.generator, self._memory)
        scoring.memory_build_seconds = build_seconds
        if self._held_out_maps is None and self._training_features is not None:  # the first selection round
            self._held_out_maps = FrozenOutputs(scoring.frozen_maps, cache_limit(HELD_OUT_CACHE_BYTES))
        scoring.frozen_cache = self._held_out_maps
        return scoring
