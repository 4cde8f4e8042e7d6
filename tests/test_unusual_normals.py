"""A good photo that scores like a defect is named: far above the other normal scores on the log
scale (the modified z-score rule, mirrored from the calibration's low-outlier rule), highest first."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from training.run_folder import RunFolder
from training.unusual_normals import (MIN_SCORES, PICTURE, NormalPhotos, note_unusual_normals, summary_line,
                                      unusual_normals)


def normal_scores(n: int, seed: int = 0) -> np.ndarray:
    """Log-normal scores with a 5% spread, as the out-of-fold scores of a clean good folder look."""
    return np.exp(np.random.default_rng(seed).normal(np.log(30.0), 0.05, n))


def names(n: int) -> list[str]:
    return [f"part_{k:03d}.png" for k in range(n)]


def test_two_far_photos_are_named_highest_first_and_the_rest_not():
    scores = normal_scores(60)
    scores[7], scores[41] = 45.0, 60.0  # 1.5x and 2x the median: about 8 and 14 spreads above it
    found = unusual_normals(scores, names(60))
    assert [u.path for u in found] == ["part_041.png", "part_007.png"]
    assert found[0].times_median == pytest.approx(60.0 / np.median(scores))


def test_a_clean_folder_names_none():
    assert unusual_normals(normal_scores(261), names(261)) == []


def test_far_below_is_not_unusual():
    scores = normal_scores(40)
    scores[3] = 5.0  # a near-empty frame: the calibration's low-outlier rule deals with it
    assert unusual_normals(scores, names(40)) == []


def test_too_few_scores_or_no_spread_name_none():
    few = normal_scores(MIN_SCORES - 1)
    few[0] = 300.0
    assert unusual_normals(few, names(len(few))) == []
    ties = np.full(30, 12.0)
    ties[0] = 50.0
    assert unusual_normals(ties, names(30)) == []


def test_scores_and_paths_must_pair():
    with pytest.raises(ValueError, match="30 scores for 29 paths"):
        unusual_normals(normal_scores(30), names(29))


def test_held_out_or_every_photo_is_what_was_scored(tmp_path):
    photos = NormalPhotos([tmp_path / n for n in names(5)], np.array([3, 1]))
    assert photos.scored(cross_fitted=False) == [str(tmp_path / "part_003.png"), str(tmp_path / "part_001.png")]
    assert photos.scored(cross_fitted=True) == [str(tmp_path / n) for n in names(5)]


def test_the_run_records_draws_and_summarises_them(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    paths = []
    for k, name in enumerate(names(40)):
        image = np.full((120, 90), 100 + k, np.uint8)
        cv2.imwrite(str(good / name), image)
        paths.append(str(good / name))
    scores = normal_scores(40)
    scores[12] = 90.0
    run = RunFolder.create(tmp_path / "run")
    (run.root / PICTURE).write_bytes(b"an older run's picture")
    found = note_unusual_normals(run, scores, paths, threshold=45.0)
    record = json.loads(run.selection.read_text())["unusual_normal"]
    assert record == found and [photo["path"] for photo in record["photos"]] == [paths[12]]
    assert record["photos"][0]["path"] == paths[12] and record["threshold_times_median"] == pytest.approx(
        45.0 / np.median(scores), rel=1e-3)
    picture = cv2.imread(str(run.root / PICTURE))
    assert picture is not None and picture.shape[0] == 340  # one captioned tile, 300 px of photo
    line = summary_line(record, run.root / PICTURE)
    assert line.startswith("check: 1 good photo(s) score far above") and "part_012.png 3.0" in line
    assert str(run.root / PICTURE) in line


def test_a_rerun_without_unusual_photos_leaves_no_stale_picture(tmp_path):
    run = RunFolder.create(tmp_path / "run")
    (run.root / PICTURE).write_bytes(b"an older run's picture")
    assert note_unusual_normals(run, normal_scores(40), names(40), threshold=40.0) is None
    assert not (run.root / PICTURE).exists() and "unusual_normal" not in run.selection_record()


def test_a_photo_gone_since_training_is_left_out_of_the_picture(tmp_path):
    scores = normal_scores(40)
    scores[0] = 90.0
    run = RunFolder.create(tmp_path / "run")
    found = note_unusual_normals(run, scores, [str(tmp_path / n) for n in names(40)], threshold=45.0)
    assert len(found["photos"]) == 1 and not (run.root / PICTURE).exists()  # named in selection.json, nothing to draw
    assert summary_line(run.selection_record()["unusual_normal"], run.root / PICTURE).count("unusual_good.png") == 0
