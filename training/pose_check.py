"""Which flips and turns of a normal frame are themselves normal, decided from normal frames only.

A camera on a line sees most parts in one pose under one lamp: a flipped photo of a screw or a tyre
casts its shading from the other side, which no part on the line shows, and a model trained on
such photos learns it as normal (the pretrained-feature reference, its memory drawn from flipped and
turned frames, lost 0.02-0.13 image AUROC on three sets). Loose flakes and pellets (PIPED) and cells
under even light lie in any pose: there a flipped frame is one more normal frame, which a model
trained on a few dozen photos needs (the shipped PIPED configs state flips and turns; a user's own
folder does not say which kind it holds).

So a pretrained-backbone model whose config leaves train.augment's flips and turns unset asks its
frames: a memory of patch features of POSE_BANK_FRAMES fitted frames (the model's own standardised
backbone features, POSE_BANK_PATCHES of each), and up to POSE_CHECK_FRAMES held-out frames scored by
their patches' distance to it (the mean of the highest score.map_top_share, as the model pools), as
photographed and flipped or turned. A pose counts as normal where it raises the held-out frames'
scores by less than POSE_SHIFT_LIMIT robust spreads of their scores as photographed (the median of
the paired rises): no more than normal frames vary among themselves. The flags switched on are those
that make the most poses, all of them normal (flags_from_rises: two flips make a half turn, a flip
and a quarter turn every pose of a square).

On train/good, before any model used it (rises in spreads): tire flips 5.8 and 1.4, half turn 5.7:
none; glass_fibre flips 7.2, quarter turn 10.9: none (its half turn 0.9 alone no flag makes);
kolektor_sdd vertical flip 0.1, horizontal 0.3, half turn 1.2: vertical flips; elpv_mono and
elpv_poly flips and half turns -0.2..0.2, quarter turns 1.5-4.4: flips; deeppcb every pose within
0.04, mvtec_screw within 0.9: every pose; PIPED (six held-out frames each, so the rises are rough):
every pose on six classes, flips on brg01 (quarter turn 2.5), vertical flips on gla01 (horizontal
1.4). About 50 backbone passes: 25 s on deeppcb's 512 px frames on 2 cores, 1.5-6 s on the others.
The answer is written into the run's config (config.json), so calibration folds and a later
fine-tune train as the exported model did; selection.json `pose` keeps every rise.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import torch

from .backbone import StageFeatures
from .calibrate import robust_spread
from .config import TrainConfig
from .models.feature_ganomaly import PatchMemory, PretrainedFeatures, top_share_mean

log = logging.getLogger(__name__)

POSE_BANK_FRAMES = 16  # fitted frames whose patches make the check's memory
# patches of each of them at most (seeded): searching all 4,096 of a 512 px frame took longer than the passes
POSE_BANK_PATCHES = 512
POSE_CHECK_FRAMES = 10  # held-out frames scored in every pose
POSE_SHIFT_LIMIT = 1.0  # robust spreads of the photographed scores: a rise below it is normal variation
POSE_FLAGS = ("hflip", "vflip", "rot90")

POSES = {
    "horizontal flip": lambda frames: frames.flip(-1),
    "vertical flip": lambda frames: frames.flip(-2),
    "half turn": lambda frames: frames.flip(-1).flip(-2),
    "quarter turn": lambda frames: frames.rot90(1, (-2, -1)),  # square frames only, as the two below
    "transpose": lambda frames: frames.transpose(-2, -1),  # a quarter turn and a flip: a flip about the diagonal
}
SQUARE_ONLY = ("quarter turn", "transpose")


POSE_WORDS = {"hflip": "horizontal flips", "vflip": "vertical flips", "rot90": "turns"}


def describe_poses(record: dict) -> str:
    """One line for the training summary: what the pose check (its selection.json record) decided."""
    def listed(words: list[str]) -> str:
        return " and ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " and " + words[-1]

    decided = record["decided"]
    if "rises" not in record:
        return f"{listed([POSE_WORDS[name] for name in decided])} off: too few held-out good images to check them on"
    on = [POSE_WORDS[name] for name, value in decided.items() if value]
    off = [POSE_WORDS[name] for name, value in decided.items() if not value]
    text = f"{listed(on)} of held-out good images score like them as photographed: trained on" if on else ""
    if off:
        text += ("; " if text else "") + f"{listed(off)} raise their scores: not trained on"
    return text


def undecided_poses(config: TrainConfig) -> tuple[str, ...]:
    """The train.augment flips and turns this run's frames decide: those left unset with a backbone."""
    if config.model.backbone == "none" or config.data.kind == "table":
        return ()
    return tuple(name for name in POSE_FLAGS if getattr(config.train.augment, name) is None)


def pose_rises(features: PretrainedFeatures, bank: torch.Tensor, held_out: torch.Tensor,
               top_share: float) -> dict[str, float]:
    """Each pose's median paired rise of the held-out frames' scores against a memory of the `bank`
    frames' features ((N, C, h, w), as `features` gives them), in robust spreads of their scores as
    photographed (quarter turns only for square frames)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        patches = [frame.flatten(1).T for frame in bank]  # (patches, channels) of each frame
        memory = PatchMemory(torch.cat([p[torch.randperm(len(p), generator=generator)[:POSE_BANK_PATCHES]]
                                        for p in patches]))

        def scores(frames: torch.Tensor) -> np.ndarray:
            maps = torch.cat([memory(features(frames[i:i + 4])) for i in range(0, len(frames), 4)])
            return top_share_mean(maps, top_share).double().numpy()

        photographed = scores(held_out)
        spread = max(robust_spread(photographed, float(np.median(photographed))), 1e-9)
        square = held_out.shape[-1] == held_out.shape[-2]
        return {name: float(np.median(scores(turn(held_out)) - photographed) / spread)
                for name, turn in POSES.items() if square or name not in SQUARE_ONLY}


def poses_made(flags: dict[str, bool], square: bool) -> set[str]:
    """The poses training draws make with train.augment's flags (training.items.augment): quarter turns
    of a square frame, half turns of others; flips; and what they make together (two flips a half
    turn; a flip and a quarter turn every pose of the square)."""
    made = {name for flag, name in (("hflip", "horizontal flip"), ("vflip", "vertical flip")) if flags[flag]}
    if flags["hflip"] and flags["vflip"]:
        made.add("half turn")
    if flags["rot90"]:
        made |= {"half turn", "quarter turn"} if square else {"half turn"}
        if made & {"horizontal flip", "vertical flip"}:  # with a turn, one flip makes the other
            made |= set(POSES) if square else {"horizontal flip", "vertical flip"}
    return made


def flags_from_rises(rises: dict[str, float], stated: dict[str, bool] | None = None) -> dict[str, bool]:
    """train.augment's flags from the rises: the flags that make the most poses, every one of them
    normal (a rise under POSE_SHIFT_LIMIT); between as many, those whose poses rise least. Flags a
    config `stated` stay as stated, and so do the poses they make (normal or not)."""
    stated = stated or {}
    square = "quarter turn" in rises
    normal = {name for name, rise in rises.items() if rise < POSE_SHIFT_LIMIT}
    candidates = [dict(zip(POSE_FLAGS, values)) for values in itertools.product((False, True), repeat=3)]
    candidates = [flags for flags in candidates if all(flags[name] == on for name, on in stated.items())]
    given = poses_made({name: stated.get(name, False) for name in POSE_FLAGS}, square)
    allowed = [flags for flags in candidates if poses_made(flags, square) <= normal | given]
    return max(allowed, key=lambda flags: (len(poses_made(flags, square)),
                                           -max((rises[name] for name in poses_made(flags, square)), default=0.0),
                                           sum(flags.values())))  # the same poses: every flag that makes them


def check_poses(config: TrainConfig, fitted: np.ndarray, held_out: np.ndarray) -> dict:
    """The pose check's record: every pose's rise and the flags it decides (module docstring)."""
    rng = np.random.default_rng(config.train.seed)
    bank = torch.from_numpy(np.ascontiguousarray(fitted[np.sort(rng.permutation(len(fitted))[:POSE_BANK_FRAMES])],
                                                 dtype=np.float32))
    checked = torch.from_numpy(np.ascontiguousarray(
        held_out[np.sort(rng.permutation(len(held_out))[:POSE_CHECK_FRAMES])], dtype=np.float32))
    features = PretrainedFeatures(StageFeatures(config.model.backbone_weights), config.input.color_order,
                                  config.model.standardise_frames, config.model.backbone_min_size).eval()
    rises = pose_rises(features, features.fit_statistics(bank), checked, config.score.map_top_share)
    stated = {name: getattr(config.train.augment, name) for name in POSE_FLAGS
              if getattr(config.train.augment, name) is not None}
    return {"rule": f"a flip or turn is trained on where it raises held-out good frames' scores (distance to a memory "
                    f"of {len(bank)} fitted frames' patches) by less than {POSE_SHIFT_LIMIT:g} robust spread of "
                    "their scores as photographed (median of the paired rises)",
            "held_out_frames": len(checked), "rises": {name: round(rise, 3) for name, rise in rises.items()},
            "flags": flags_from_rises(rises, stated)}


def with_decided_poses(config: TrainConfig, fitted: np.ndarray,
                       held_out: np.ndarray) -> tuple[TrainConfig, dict | None]:
    """The config with its undecided flips and turns set by the pose check, and the check's record
    (None where nothing was undecided). Without held-out frames nothing can be checked: the
    photographed pose, as a camera sees parts."""
    undecided = undecided_poses(config)
    if not undecided:
        return config, None
    if len(held_out) < 2 or len(fitted) < 1:
        record = {"rule": "fewer than 2 held-out good frames to check poses on: the photographed pose",
                  "flags": {name: False for name in POSE_FLAGS}}
    else:
        record = check_poses(config, fitted, held_out)
    decided = {name: record["flags"][name] for name in undecided}
    record["decided"] = decided
    log.info("pose check: %s", ", ".join(f"{name} {'on' if on else 'off'}" for name, on in decided.items()))
    augment = config.train.augment.model_copy(update=decided)
    return config.model_copy(update={"train": config.train.model_copy(update={"augment": augment})}), record
