"""The operator's loop after the review page: recalibrate on new good photos, retrain on reviewed false
alarms, and the lineage each candidate carries. Flat parts whose lighting drifted are the new normal."""

from __future__ import annotations

import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from inspector.card import ImageInput
from inspector.errors import InspectorError
from inspector.review.store import NewItem, ReviewStore
from inspector.scorer import Scorer
from training.flat_parts import flat_part, train_flat_model

pytestmark = pytest.mark.slow


def drifted_part(rng: np.random.Generator, defect: bool = False) -> np.ndarray:
    """A flat part under a brighter lamp: normal, but brighter than any training image."""
    part = flat_part(rng, defect).astype(np.int16)
    lit = part + 70
    if defect:
        lit[part < 40] = part[part < 40]  # the black patch stays black
    return np.clip(lit, 0, 255).astype(np.uint8)


def write_parts(folder, count: int, seed: int, make=drifted_part, **kwargs) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"part_{index:03d}.png"
        cv2.imwrite(str(path), make(rng, **kwargs))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A trained flat-part run (model.onnx, config.json, checkpoint.pt)."""
    # frames as they come: the lamp change below must make false alarms (exposure standardising would undo it)
    return train_flat_model(tmp_path_factory.mktemp("parent"), standardise_frames=False).parent


def normalised(model, paths) -> np.ndarray:
    return np.array([r.normalised for r in Scorer(model).score_files(paths, heatmaps=False)])


def test_recalibration_sets_the_threshold_on_new_good_photos_and_keeps_the_graph(parent, tmp_path):
    write_parts(tmp_path / "good", 40, seed=11)  # the new good photos recalibration reads
    fresh = write_parts(tmp_path / "fresh", 30, seed=12)
    assert (normalised(parent / "model.onnx", fresh) >= 1).mean() > 0.5  # the drift: most good parts alarm
    result = subprocess.run([sys.executable, "-m", "inspector.cli", "recalibrate", str(parent), "--good",
                             str(tmp_path / "good")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    candidate = parent / "candidate.onnx"
    assert f"candidate: {candidate}" in result.stdout and "good photos" in result.stdout
    old, new = Scorer(parent / "model.onnx"), Scorer(candidate)
    assert new.card.lineage.parent == old.card.version and new.card.lineage.change == "recalibrated"
    assert new.card.lineage.new_good_images == 40 and new.card.version != old.card.version
    assert new.card.calibration.n_samples == 40 and new.threshold > old.threshold
    raw_old = [r.raw for r in old.score_files(fresh, heatmaps=False)]
    raw_new = [r.raw for r in new.score_files(fresh, heatmaps=False)]
    assert raw_old == raw_new  # the same graph: only the threshold moved
    assert "warning:" not in result.stdout  # photos the model never saw
    assert (normalised(candidate, fresh) >= 1).mean() <= 0.1
    # and where the heatmap's colours start: the brighter good photos' maps lie higher, as their scores do
    fresh_cells = np.concatenate([r.heatmap.ravel() for r in new.score_files(fresh)])
    assert new.card.score.map_baseline > old.card.score.map_baseline
    assert 0.5 < np.median(fresh_cells) / new.card.score.map_baseline < 2


def test_a_defective_part_among_the_new_good_photos_is_named_and_drawn(parent, tmp_path):
    write_parts(tmp_path / "good", 40, seed=11, make=flat_part)  # parts as the model knows them: scores alike
    cv2.imwrite(str(tmp_path / "good" / "part_017.png"), flat_part(np.random.default_rng(5), defect=True))
    result = subprocess.run([sys.executable, "-m", "inspector.cli", "recalibrate", str(parent), "--good",
                             str(tmp_path / "good"), "--out", str(tmp_path / "candidate.onnx")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    check = next(line for line in result.stdout.splitlines() if line.startswith("check: "))
    assert f"({tmp_path / 'candidate_unusual_good.png'}): part_017.png " in check  # the highest first
    assert "x the median normal score" in check
    assert "take it out of the folder and recalibrate again" in check
    assert cv2.imread(str(tmp_path / "candidate_unusual_good.png")) is not None


def test_recalibrating_on_the_models_own_training_photos_is_warned_of(parent, tmp_path):
    trained = sorted((parent.parent / "data" / "train" / "good").glob("*.png"))
    good = tmp_path / "good"
    write_parts(good, 30, seed=11, make=flat_part)
    for photo in trained[:10]:  # copied under new names: found by content, not by name
        shutil.copy(photo, good / f"copy_{photo.name}")
    result = subprocess.run([sys.executable, "-m", "inspector.cli", "recalibrate", str(parent), "--good", str(good),
                             "--good", str(parent.parent / "data" / "train" / "good"), "--out", str(tmp_path / "c.onnx")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    warning = next(line for line in result.stdout.splitlines() if line.startswith("warning: "))
    assert warning.startswith(f"warning: {10 + len(trained)} of these {30 + 10 + len(trained)} good photos are "
                              f"training photos ({parent.parent / 'data' / 'train' / 'good'}, or copies of them)")
    assert "recalibrate on good parts photographed since" in warning


def test_only_byte_for_byte_copies_count_as_training_photos(parent, tmp_path):
    from training.recalibrate import seen_in_training

    folder = parent.parent / "data" / "train" / "good"
    photo = sorted(folder.glob("*.png"))[0]
    same_size = tmp_path / "same_size.png"
    data = bytearray(photo.read_bytes())
    data[-20] ^= 1  # one bit apart: the same size, another photo
    same_size.write_bytes(bytes(data))
    assert seen_in_training([photo, same_size], folder) == 1
    assert seen_in_training([photo], None) == 0  # the training folder is not on this machine


def test_recalibration_refuses_to_overwrite_the_active_model_and_names_unreadable_photos(parent, tmp_path):
    from training.recalibrate import recalibrate

    good = tmp_path / "good"
    write_parts(good, 3, seed=1)
    with pytest.raises(InspectorError, match="not over it"):
        recalibrate(parent, [good], out=parent / "model.onnx")
    (good / "broken.png").write_text("not an image")
    with pytest.raises(InspectorError, match=r"1 of 4 good photo\(s\) cannot be scored, e.g. .*broken.png"):
        recalibrate(parent, [good], out=tmp_path / "c.onnx")


def test_a_backbone_run_from_before_the_enlargement_is_fine_tuned_seeing_frames_as_it_did(tmp_path):
    import json

    from training.retrain import parent_config

    run = {"name": "old", "data": {"path": str(tmp_path)}, "input": {"resize": "stretch"},
           "model": {"backbone": "efficientnet_lite0"}}  # a config.json written before model.backbone_min_size
    (tmp_path / "config.json").write_text(json.dumps(run))
    assert parent_config(tmp_path).model.backbone_min_size == 0
    run["model"]["backbone_min_size"] = 224
    (tmp_path / "config.json").write_text(json.dumps(run))
    assert parent_config(tmp_path).model.backbone_min_size == 224


def test_a_backbone_run_from_before_the_smallest_ratio_keeps_its_nearest_memory_distance(tmp_path):
    import json

    from training.config import resumed_config, validate_train_config
    from training.retrain import parent_config

    old = {"name": "old", "data": {"path": str(tmp_path)}, "input": {"resize": "stretch"},
           "model": {"backbone": "efficientnet_lite0", "backbone_min_size": 224},
           "score": {"memory_scale_neighbors": 16}}  # written before score.memory_distance
    (tmp_path / "config.json").write_text(json.dumps(old))
    command = validate_train_config(old, "command")
    assert command.score.memory_distance == "smallest_ratio"  # the default now
    assert parent_config(tmp_path).score.memory_distance == "nearest"  # retrained as it was trained
    assert resumed_config(command, tmp_path).score.memory_distance == "nearest"
    assert resumed_config(command, tmp_path).model.backbone_min_size == 224  # a field it knew: as it was
    stated = validate_train_config({**old, "score": {"memory_distance": "smallest_ratio"}}, "command")
    assert resumed_config(stated, tmp_path).score.memory_distance == "smallest_ratio"  # the command's rule is kept
    newer = {**old, "score": {**old["score"], "memory_distance": "smallest_ratio"}}
    (tmp_path / "config.json").write_text(json.dumps(newer))
    assert parent_config(tmp_path).score.memory_distance == "smallest_ratio"
    from_scratch = {**old, "model": {"backbone": "none"}}  # no patch memory: nothing to keep
    (tmp_path / "config.json").write_text(json.dumps(from_scratch))
    assert parent_config(tmp_path).score.memory_distance == "smallest_ratio"


def test_what_an_older_run_kept_on_resume_is_named_beside_todays_default(tmp_path):
    import json

    from training.config import BACKBONE_FIELDS_SINCE, describe_kept, fields_kept_on_resume, validate_train_config

    old = {"name": "old", "data": {"path": str(tmp_path)}, "input": {"resize": "stretch"},
           "model": {"backbone": "efficientnet_lite0", "backbone_min_size": 224}}  # before score.memory_distance
    (tmp_path / "config.json").write_text(json.dumps(old))
    kept = fields_kept_on_resume(validate_train_config(old, "command"), tmp_path)
    assert kept == {("score", "memory_distance"): "nearest"}
    assert describe_kept(kept) == "score.memory_distance nearest (today's default smallest_ratio)"
    stated = validate_train_config({**old, "score": {"memory_distance": "smallest_ratio"}}, "command")
    assert fields_kept_on_resume(stated, tmp_path) == {}  # the command states it: nothing kept, nothing said
    assert fields_kept_on_resume(stated, tmp_path / "no-run-here") == {}
    every = describe_kept(BACKBONE_FIELDS_SINCE)  # each field the table lists can be named with its default
    assert every.count("today's default") == len(BACKBONE_FIELDS_SINCE)


@pytest.mark.parametrize("text", ['{"model": ', '[1, 2]', "\udcff"])
def test_a_damaged_run_config_is_one_clear_error_on_resume_and_retrain(tmp_path, text):
    from inspector.errors import ConfigError
    from training.config import resumed_config, validate_train_config
    from training.retrain import parent_config

    (tmp_path / "config.json").write_bytes(b"\xff" if text == "\udcff" else text.encode())
    command = validate_train_config({"name": "x", "data": {"path": str(tmp_path)}}, "command")
    for read in (lambda: resumed_config(command, tmp_path), lambda: parent_config(tmp_path)):
        with pytest.raises(ConfigError, match=r"config\.json: not a run's config\.json"):
            read()


def test_a_resumed_backbone_run_from_before_the_enlargement_keeps_seeing_frames_as_it_did(tmp_path):
    import json

    from training.config import resumed_config, validate_train_config

    old = {"name": "old", "data": {"path": str(tmp_path)}, "input": {"resize": "stretch"},
           "model": {"backbone": "efficientnet_lite0"}}  # the run's config.json, written before the field
    (tmp_path / "config.json").write_text(json.dumps(old))
    command = validate_train_config(old, "command")  # what `inspector train --resume` resolves today: the default
    assert command.model.backbone_min_size == 224
    assert resumed_config(command, tmp_path).model.backbone_min_size == 0
    stated = validate_train_config({**old, "model": {**old["model"], "backbone_min_size": 160}}, "command")
    assert resumed_config(stated, tmp_path).model.backbone_min_size == 160  # a size the command states is kept
    (tmp_path / "config.json").write_text(json.dumps({**old, "model": {**old["model"], "backbone_min_size": 224}}))
    assert resumed_config(command, tmp_path).model.backbone_min_size == 224  # a run that knew the field: as given


def test_training_from_warm_start_weights_begins_exactly_at_them(parent, tmp_path):
    from training.driver import train
    from training.retrain import parent_config, parent_weights

    config = parent_config(parent)
    weights = parent_weights(parent)
    frames = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32) * 2 - 1
    result = train(config, frames, tmp_path / "warm", progress=False, stop_after_steps=0, warm_start=weights)
    for name, module in result.family.modules.items():
        for key, value in module.state_dict().items():
            assert torch.equal(value, weights[name][key].to(value.device)), (name, key)


def test_warm_start_weights_of_other_layers_are_one_clear_error(parent, tmp_path):
    """A parent trained by an earlier version of the model (other layer shapes) cannot be fine-tuned."""
    from training.driver import train
    from training.retrain import parent_config, parent_weights

    weights = parent_weights(parent)
    key = next(k for k, v in weights["generator"].items() if v.dim() == 4)
    weights["generator"][key] = torch.zeros(1, *weights["generator"][key].shape[1:])
    frames = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32) * 2 - 1
    with pytest.raises(InspectorError, match="parent run's generator weights do not fit this model .*size mismatch"):
        train(parent_config(parent), frames, tmp_path / "warm", progress=False, stop_after_steps=0, warm_start=weights)


def test_resuming_from_a_checkpoint_of_other_layers_is_one_clear_error(parent, tmp_path):
    from training.driver import train
    from training.retrain import parent_config

    saved = torch.load(parent / "checkpoint.pt", weights_only=True)
    key = next(k for k, v in saved["generator"].items() if v.dim() == 4)
    saved["generator"][key] = torch.zeros(1, *saved["generator"][key].shape[1:])
    (tmp_path / "run").mkdir()
    torch.save(saved, tmp_path / "run" / "checkpoint.pt")
    frames = np.random.default_rng(0).random((8, 3, 32, 32), dtype=np.float32) * 2 - 1
    with pytest.raises(InspectorError, match="--resume: .*generator weights do not fit this model .*leave out --resume"):
        train(parent_config(parent), frames, tmp_path / "run", progress=False, resume=True)


def reviewed_store(folder, frames: list, label: str = "false_alarm") -> tuple:
    """A review database as the daemon leaves it: items with their captured frames, labelled by an operator."""
    evidence = folder / "evidence"
    evidence.mkdir(parents=True)
    store = ReviewStore(folder / "reviews.sqlite3")
    store.set_evidence_dir(evidence)
    for seq, frame in enumerate(frames, start=1):
        name = f"line_{seq:08d}.frame.png"
        cv2.imwrite(str(evidence / name), frame)
        store.add_items([NewItem("run-a", "line", seq, f"frame {seq}", 1000.0 + seq, "v1", 3.0, 1.5, 2.0, "anomaly",
                                 f"line_{seq:08d}.png", name)])
    ids = [item["id"] for item in store.items()]
    for item_id in ids:
        store.add_review(item_id, label, "ana")
    store.close()
    return folder / "reviews.sqlite3", sorted(ids)


def test_retraining_on_reviewed_false_alarms_lowers_their_scores_and_records_its_lineage(parent, tmp_path):
    rng = np.random.default_rng(21)
    database, ids = reviewed_store(tmp_path / "line", [drifted_part(rng) for _ in range(12)])
    unseen = write_parts(tmp_path / "unseen", 20, seed=22)  # drifted good parts never reviewed
    defects = write_parts(tmp_path / "defects", 10, seed=23, make=drifted_part, defect=True)
    result = subprocess.run([sys.executable, "-m", "inspector.cli", "retrain", str(parent), "--reviews", str(database),
                             "--budget-s", "10", "--out", str(tmp_path / "candidate"), "--no-progress"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "learned 12 frame(s) reviewed as false alarm" in result.stdout
    candidate = tmp_path / "candidate" / "model.onnx"
    old, new = Scorer(parent / "model.onnx"), Scorer(candidate)
    lineage = new.card.lineage
    assert (lineage.parent, lineage.change, lineage.false_alarm_reviews) == (old.card.version, "retrained", ids)
    assert lineage.reviews_database == str(database.resolve())
    assert isinstance(new.card.input, ImageInput) and new.card.input == old.card.input
    before, after = normalised(parent / "model.onnx", unseen), normalised(candidate, unseen)
    assert (before >= 1).mean() > 0.5 and (after >= 1).mean() < (before >= 1).mean() / 2
    assert (normalised(candidate, defects) >= 1).mean() >= 0.9  # the black patch is still caught


def test_retraining_without_anything_to_learn_says_what_to_do(parent, tmp_path):
    from training.retrain import retrain

    database, _ = reviewed_store(tmp_path / "line", [flat_part(np.random.default_rng(1))], label="defect")
    with pytest.raises(InspectorError, match="no frame reviewed as false alarm to learn from"):
        retrain(parent, database, [], out=tmp_path / "c", progress=False)


def test_a_time_budget_ends_training_early_as_a_complete_run_with_the_last_weights_evaluated(parent, tmp_path):
    import json

    from training.config import validate_train_config
    from training.driver import train
    from training.retrain import parent_config

    raw = parent_config(parent).model_dump(mode="json")
    raw["train"]["steps"] = 100_000
    config = validate_train_config(raw, "budget")
    frames = np.random.default_rng(0).random((16, 3, 32, 32), dtype=np.float32) * 2 - 1
    result = train(config, frames, tmp_path / "budget", validation=frames[:8], progress=False, time_budget_s=2.0)
    assert 0 < result.steps < 100_000 and not result.interrupted
    selection = json.loads((tmp_path / "budget" / "selection.json").read_text())
    assert selection["evaluations"][-1]["step"] == result.steps == result.selected_step


def test_the_threshold_comes_down_to_catch_confirmed_defects_but_never_onto_a_held_out_normal(parent, tmp_path):
    from inspector.card import Lineage
    from training.export import replace_card
    from training.retrain import keep_confirmed_defects
    from training.run_folder import RunFolder

    run = RunFolder.create(tmp_path / "candidate")
    shutil.copyfile(parent / "model.onnx", run.model)
    defects = write_parts(tmp_path / "defects", 6, seed=31, make=flat_part, defect=True)
    scores = np.sort([r.raw for r in Scorer(run.model).score_files(defects, heatmaps=False)])
    card = Scorer(run.model).card
    loose = card.calibration.model_copy(update={"threshold": float(scores[-1]) * 2,  # above every defect
                                                "quantiles": {**card.calibration.quantiles, "max": float(scores[1])}})
    card = card.with_updates(calibration=loose, lineage=Lineage(parent="p", change="retrained", created="now"))
    replace_card(run.model, card)
    kept = keep_confirmed_defects(run, card, None, np.zeros((0,)), defects, seed=0, max_items=8)
    assert kept.calibration.threshold == pytest.approx(scores[2])  # the lowest defect above the held-out normals
    assert kept.calibration.method == "quantile_and_reviews" and kept.lineage.held_out_threshold == loose.threshold
    assert kept.lineage.confirmed_defects == 6 and Scorer(run.model).threshold == pytest.approx(scores[2])
    caught = [r.verdict == "anomaly" for r in Scorer(run.model).score_files(defects, heatmaps=False)]
    assert sum(caught) == 4  # the two at or below the highest held-out normal score stay missed


def test_a_threshold_no_confirmed_defect_can_lower_still_records_them_in_the_models_card(parent, tmp_path):
    from inspector.card import Lineage
    from training.export import replace_card
    from training.retrain import keep_confirmed_defects
    from training.run_folder import RunFolder

    run = RunFolder.create(tmp_path / "candidate")
    shutil.copyfile(parent / "model.onnx", run.model)
    defects = write_parts(tmp_path / "defects", 3, seed=31, make=flat_part, defect=True)
    scores = [r.raw for r in Scorer(run.model).score_files(defects, heatmaps=False)]
    card = Scorer(run.model).card
    above_all = card.calibration.model_copy(update={"threshold": max(scores) * 2,  # a held-out normal scored
                                                    "quantiles": {**card.calibration.quantiles, "max": max(scores) * 2}})
    card = card.with_updates(calibration=above_all, lineage=Lineage(parent="p", change="retrained", created="now"))
    replace_card(run.model, card)
    kept = keep_confirmed_defects(run, card, None, np.zeros((0,)), defects, seed=0, max_items=8)
    assert kept.calibration == above_all and Scorer(run.model).card.calibration.threshold == above_all.threshold
    assert Scorer(run.model).card.lineage.confirmed_defects == kept.lineage.confirmed_defects == 3
