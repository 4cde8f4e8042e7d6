"""Data sets: MVTec-layout image folders and the MNIST one-class protocol.

Images are decoded and preprocessed with `inspector.preprocess` (the one contract), once, into
memory: the dev sets are small and re-decoding PNGs every epoch would dominate training time on two
cores. Unreadable files are skipped with a warning naming the file and counted, never a crash
mid-epoch.

Layout (see ../shared/data/README.md):
    <root>/train/good/*.png, <root>/test/<good|defect type>/*.png,
    <root>/ground_truth/<defect type>/<stem>_mask.png (optional)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from inspector.card import ImageInput
from inspector.errors import ItemRejected
from inspector.image_files import ACCEPTED_FORMATS, list_images, read_image
from inspector.preprocess import frame_tensor, prepare_image

log = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = "../shared/data"


def data_root() -> Path:
    """Where the shared evaluation data lives: $QI_DATA, else shared/data beside this checkout (so a
    shipped config works from any folder), else ../shared/data from the working folder."""
    if "QI_DATA" in os.environ:
        return Path(os.environ["QI_DATA"])
    beside_checkout = Path(__file__).resolve().parents[2] / "shared" / "data"
    return beside_checkout if beside_checkout.is_dir() else Path(DEFAULT_DATA_ROOT)


@dataclass
class LoadedImages:
    """Preprocessed model-space tensors (N, C, H, W) with their files; `skipped` counts unreadable ones."""

    tensors: np.ndarray  # (N, C, H, W), or an object array of (C, Hi, Wi) frames when tiled frames differ in size
    paths: list[Path]
    labels: np.ndarray  # 1 = anomaly, 0 = normal
    defect_types: list[str]
    masks: list[np.ndarray | None] = field(default_factory=list)  # HxW bool at model resolution
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)



def _mask_path(root: Path, defect: str, image: Path) -> Path | None:
    folder = root / "ground_truth" / defect
    for candidate in (folder / f"{image.stem}_mask.png", folder / f"{image.stem}.png"):
        if candidate.is_file():
            return candidate
    return None


def _read_mask(path: Path | None, spec: ImageInput) -> np.ndarray | None:
    if path is None:
        return None
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        log.warning("skipping unreadable mask %s", path)
        return None
    return cv2.resize(mask, (spec.width, spec.height), interpolation=cv2.INTER_NEAREST) > 127


def model_space(image: np.ndarray, spec: ImageInput, origin: str = "image") -> np.ndarray:
    """The training tensor of one image: the model input, or the whole native frame for tiled models
    (training then samples random tile-sized crops from it)."""
    if spec.resize == "tile":
        return frame_tensor(image, spec, origin)
    return prepare_image(image, spec, origin)[0][0]


def load_images(
    paths: list[Path], spec: ImageInput, labels: list[int] | None = None, defect_types: list[str] | None = None,
    mask_paths: list[Path | None] | None = None,
) -> LoadedImages:
    """Decode and preprocess files; skip (warn + count) the ones that cannot be read."""
    tensors, kept, kept_labels, kept_types, masks, skipped = [], [], [], [], [], []
    for i, path in enumerate(paths):
        try:
            tensor = model_space(read_image(path, spec.max_pixels), spec, str(path))
        except ItemRejected as rejected:
            log.warning("skipping %s: %s", path, rejected)
            skipped.append((path, rejected.reason))
            continue
        tensors.append(tensor)
        kept.append(path)
        kept_labels.append(labels[i] if labels else 0)
        kept_types.append(defect_types[i] if defect_types else "good")
        masks.append(_read_mask(mask_paths[i], spec) if mask_paths else None)
    if len({t.shape for t in tensors}) > 1:
        array = np.empty(len(tensors), dtype=object)  # native frames of different sizes (tiled models)
        array[:] = tensors
    else:
        array = np.stack(tensors) if tensors else np.zeros((0, spec.channels, spec.height, spec.width), np.float32)
    return LoadedImages(array, kept, np.asarray(kept_labels, dtype=np.int64), kept_types, masks, skipped)


def training_image_paths(root: Path) -> list[Path]:
    """The images of <root>/train/good, or FileNotFoundError saying which of the usual mistakes it
    is: no such folder, images not in train/good, or no image at all."""
    root = Path(root)
    folder = root / "train" / "good"
    if root.is_file():
        table = root.name.lower().endswith((".csv", ".csv.gz", ".txt", ".txt.gz"))
        raise FileNotFoundError(f"{root}: a file, not a folder of photos" + (
            "; a table trains from a config that states its layout (inspector train -c flows.yaml; README, Network "
            "traffic)" if table else " (--data takes the folder holding train/good/)"))
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    paths = list_images(folder)
    if paths:
        return paths
    for stray in (root, root / "train"):
        loose = list_images(stray)
        if loose:
            raise FileNotFoundError(
                f"{stray}: {len(loose)} images found here, but training reads them from {folder}/ "
                f"(move them: mkdir -p {folder} && mv {stray}/*.{loose[0].suffix.lstrip('.')} {folder}/)")
    if folder.is_dir():
        raise FileNotFoundError(f"{folder}: no images ({ACCEPTED_FORMATS}) in this folder")
    raise FileNotFoundError(f"{folder}: missing; put the photos of good parts there ({ACCEPTED_FORMATS}); "
                            f"optionally test/good and test/<defect>/ for evaluation")


def first_training_image(root: Path) -> np.ndarray | None:
    """The first decodable image of <root>/train/good as stored (None when there is none): a corrupt
    file is skipped here as training skips it. Its size is what the default geometry follows, and
    the proportions a whole-frame model learned parts in."""
    for path in list_images(Path(root) / "train" / "good"):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is not None:
            return image
    return None


def load_train_good(root: Path, spec: ImageInput) -> LoadedImages:
    loaded = load_images(training_image_paths(root), spec)
    if not len(loaded):
        raise FileNotFoundError(f"{Path(root) / 'train' / 'good'}: none of the {len(loaded.skipped)} images could be "
                                f"read (first: {loaded.skipped[0][0].name}, {loaded.skipped[0][1]})")
    return loaded


def list_test_files(root: Path) -> list[tuple[Path, int, str, Path | None]]:
    """(image, label, defect type, mask or None) for every test/<type>/ image; 'good' is normal."""
    test_root = Path(root) / "test"
    if not test_root.is_dir():
        raise FileNotFoundError(f"{test_root}: no test folder (expected <root>/test/good and <root>/test/<defect>)")
    files = []
    for folder in sorted(p for p in test_root.iterdir() if p.is_dir()):
        good = folder.name == "good"
        for image in list_images(folder):
            files.append((image, 0 if good else 1, folder.name, None if good else _mask_path(Path(root), folder.name, image)))
    return files


def load_test(root: Path, spec: ImageInput) -> LoadedImages:
    """Every test/<type>/ folder; 'good' is normal, anything else a defect. Masks where present."""
    files = list_test_files(root)
    return load_images([f[0] for f in files], spec, [f[1] for f in files], [f[2] for f in files], [f[3] for f in files])


def split_holdout(n: int, fraction: float, seed: int, how: str = "random") -> tuple[np.ndarray, np.ndarray]:
    """Deterministic split of n normal items into (train, held-out) indices for calibration: a seeded
    draw, or with `how` "last" the last items in their order (data.holdout)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(n) if how == "random" else np.arange(n)[::-1]
    n_hold = max(1, int(round(n * fraction)))
    if n - n_hold < 1:
        raise ValueError(f"only {n} normal images: too few to hold out {fraction:.0%} for calibration")
    return np.sort(order[n_hold:]), np.sort(order[:n_hold])


def config_split(config, n: int, seed_offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`split_holdout` as a training config states it (data.holdout_fraction, train.seed plus
    `seed_offset`, data.holdout): every place that redraws a run's split draws this one."""
    return split_holdout(n, config.data.holdout_fraction, config.train.seed + seed_offset, config.data.holdout)


def mnist_one_class(npz_path: Path, anomaly_digit: int, spec: ImageInput, max_train: int | None = None, seed: int = 0):
    """GANomaly paper protocol: train on the nine other digits of x_train; test on all of x_test.

    Returns (train LoadedImages, test LoadedImages). `max_train` subsamples the training digits
    (deterministically) to fit a time budget.
    """
    with np.load(npz_path) as data:
        x_train, y_train, x_test, y_test = data["x_train"], data["y_train"], data["x_test"], data["y_test"]
    normal = np.flatnonzero(y_train != anomaly_digit)
    if max_train is not None and len(normal) > max_train:
        normal = np.sort(np.random.default_rng(seed).choice(normal, max_train, replace=False))

    def prepare(images: np.ndarray) -> np.ndarray:
        return np.stack([model_space(img, spec) for img in images])

    train = LoadedImages(prepare(x_train[normal]), [Path(f"x_train[{i}]") for i in normal],
                         np.zeros(len(normal), np.int64), ["good"] * len(normal))
    labels = (y_test == anomaly_digit).astype(np.int64)
    test = LoadedImages(prepare(x_test), [Path(f"x_test[{i}]") for i in range(len(x_test))], labels,
                        [str(d) for d in y_test])
    return train, test
