"""What the accuracy benchmark trains for each variant (the configs behind RESULTS' rows) and how its tables read them."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import DATA, require


@pytest.fixture(autouse=True)
def shared_data(monkeypatch):
    monkeypatch.setenv("QI_DATA", str(DATA))  # where the shipped configs find their sets


def test_the_plain_variant_trains_a_shipped_config_set_as_inspector_train_data_would():
    """A user with PIPED's photos and no config gets the defaults: the backbone on whole frames, the
    adaptive length, no flips; the shipped config's tiles, fixed length and augmentation are left out."""
    from benchmarks.accuracy import job_config, jobs
    from training.cli import default_config
    from training.config import load_train_config

    require(DATA / "piped")  # the plain config reads the folder's first image
    [(name, path, extra)] = [job for job in jobs(["piped"]) if job[0] == "piped_bft01"]
    plain = job_config(name, path, "plain", extra, {"train.threads": 2})
    shipped = load_train_config(path)
    assert plain == default_config(str(shipped.data.resolved_path), {"train.threads": 2})
    assert plain.model.backbone == "efficientnet_lite0" and shipped.model.backbone == "none"
    assert plain.input.resize != "tile" and shipped.input.resize == "tile"
    assert plain.train.max_blocks > 1 == shipped.train.max_blocks
    assert plain.train.augment.hflip is None and shipped.train.augment.hflip  # the plain run's frames decide
    assert job_config(name, path, "default", extra, {}) == shipped


def test_the_plain_variant_has_no_row_for_arrays_or_tables():
    from benchmarks.accuracy import job_config, jobs

    [(name, path, extra)] = jobs(["mnist"], digits=[3])
    assert job_config(name, path, "plain", extra, extra) is None
    [(name, path, extra)] = jobs(["nsl_kdd"])
    assert job_config(name, path, "plain", extra, {}) is None


def test_the_suite_table_sets_f1_at_the_threshold_beside_its_ceiling_where_rows_recorded_it():
    from benchmarks.accuracy_tables import f1_ceiling_line

    rows = [{"set": "tire", "f1": 0.2, "best_f1_within_far": 0.5},
            {"set": "glass_fibre", "f1": 0.6, "best_f1_within_far": 0.7},
            {"set": "deeppcb", "f1": 0.1}]  # measured before the ceiling was recorded
    (line,) = f1_ceiling_line("backbone", rows)
    assert "tire 0.20 / 0.50, glass_fibre 0.60 / 0.70; mean 0.400 / 0.600" in line
    assert "deeppcb" not in line
    assert f1_ceiling_line("backbone", rows[2:]) == []


def test_the_suite_table_counts_the_good_photos_each_run_named_and_skips_rows_from_before_the_check():
    from benchmarks.accuracy_tables import unusual_line

    named = {"threshold_times_median": 1.35, "photos": [{"path": "a.png", "times_median": 1.351},
                                                         {"path": "b.png", "times_median": 1.2}]}
    rows = [{"set": "kolektor_sdd", "unusual_checked": True, "selection": {"unusual_normal": named}},
            {"set": "tire", "unusual_checked": True, "selection": {}},  # checked: none named
            {"set": "deeppcb", "selection": {}}]  # measured before the check existed
    (line,) = unusual_line("backbone", rows)
    assert "kolektor_sdd 2 (top 1.35x the median, threshold 1.35x), tire none." in line and "deeppcb" not in line
    assert unusual_line("backbone", rows[2:]) == []


def test_the_score_cell_names_the_pooled_share_however_small():
    from benchmarks.accuracy_tables import score_cell

    chosen = {"score_choice": {"chosen": {"patch_knn": 1.8, "patch_residual": 0.2}}}
    row = {"score": "patch_knn+patch_residual", "map_top_share": 0.003, "selection": chosen}
    assert score_cell(row) == "top 0.3% of map (1.80 x patch_knn + 0.20 x patch_residual)"
    assert score_cell({**row, "map_top_share": 0.01}).startswith("top 1% of map (")
    assert score_cell({**row, "map_top_share": None}) == "1.80 x patch_knn + 0.20 x patch_residual"


def test_one_piped_class_is_a_set_of_its_own_with_the_rows_name():
    from benchmarks.accuracy import jobs

    assert jobs(["piped_fvn01"]) == [job for job in jobs(["piped"]) if job[0] == "piped_fvn01"]
    with pytest.raises(ValueError, match="unknown set piped_xyz01"):
        jobs(["piped_xyz01"])


def test_the_suite_table_shows_false_alarms_out_of_focus_where_rows_measured_them():
    from benchmarks.accuracy_tables import focus_line

    rows = [{"set": "tire", "false_alarm_rate": 0.04, "far_focus": {"1.0": 1.0, "2.0": 1.0}},
            {"set": "elpv_mono", "false_alarm_rate": 0.017, "far_focus": {"1.0": 0.025, "2.0": 1.0}},
            {"set": "deeppcb", "false_alarm_rate": 0.1}]  # measured before the check
    (line,) = focus_line("backbone", rows)
    assert "blurred by a Gaussian of 1.0 px / 2.0 px" in line
    assert "tire 0.04 / 1.00 / 1.00, elpv_mono 0.02 / 0.03 / 1.00." in line and "deeppcb" not in line
    assert focus_line("backbone", rows[2:]) == []


def test_focus_false_alarms_score_the_good_test_frames_blurred(tmp_path):
    import cv2
    import numpy as np

    from benchmarks.focus import SIGMAS, focus_false_alarms

    good = tmp_path / "test" / "good"
    good.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):  # sharp noise frames: blurring takes most of their fine detail away
        cv2.imwrite(str(good / f"{i}.png"), rng.integers(0, 256, (48, 48), dtype=np.uint8))

    def blurriness(frames):  # higher for a smoother frame: a score a focus change raises
        return np.array([-cv2.Laplacian(f.astype(np.float32), cv2.CV_32F).std() for f in frames])

    sharp = blurriness([cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in sorted(good.iterdir())])
    rates = focus_false_alarms(blurriness, tmp_path, threshold=float(sharp.max()) + 1.0)
    assert list(rates) == [str(s) for s in SIGMAS] and all(rate == 1.0 for rate in rates.values())
    assert focus_false_alarms(blurriness, tmp_path, threshold=0.0) == {str(s): 0.0 for s in SIGMAS}


def test_the_focus_check_finds_a_runs_data_where_training_found_it(tmp_path, monkeypatch):
    import json

    from benchmarks.focus import run_data

    monkeypatch.setenv("QI_DATA", str(tmp_path / "data"))
    (tmp_path / "config.json").write_text(json.dumps({"data": {"path": "$QI_DATA/piped/PA_BDP01_TL"}}))
    assert run_data(tmp_path) == tmp_path / "data" / "piped" / "PA_BDP01_TL"  # as the shipped configs name it
    (tmp_path / "config.json").write_text(json.dumps({"data": {"path": "/parts/my_parts"}}))
    assert run_data(tmp_path) == Path("/parts/my_parts")
