"""Flow tables get the image recipe's adaptive length, checkpoint choice and self-check: synthetic
anomalies made from held-out normal windows (swapped or shifted features), never the test rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from inspector.scorer import Scorer
from training.config import TABLE_DEFAULTS, validate_train_config
from training.length import BUDGET
from training.table_defects import synthetic_windows

from .test_cli import inspector

LAYOUT = {"kind": "table", "label": "label", "normal_values": ["normal"], "normal_train_fraction": 0.6}


def flow_table(path: Path, normal: int = 3000, attacks: int = 600, seed: int = 0) -> Path:
    """Flow records whose normal rows carry about 500 bytes per packet; attacks break that (floods of
    small packets, or few packets with huge payloads) with every value alone in the normal range."""
    rng = np.random.default_rng(seed)
    lines = ["id,duration,proto,service,state,packets,bytes,label"]
    for i in range(normal + attacks):
        packets = int(rng.integers(1, 200))
        per_packet = rng.normal(500, 40) if i < normal else rng.choice([rng.normal(60, 10), rng.normal(1400, 50)])
        label = "normal" if i < normal else "attack"
        lines.append(f"{i},{rng.exponential(2.0):.3f},{rng.choice(['tcp', 'udp'])},{rng.choice(['http', 'dns'])},"
                     f"{rng.choice(['FIN', 'CON'])},{packets},{int(packets * max(per_packet, 1))},{label}")
    path.write_text("\n".join(lines) + "\n")
    return path


def readme_flow_config() -> dict:
    """The config the README shows for a new flow table (README "Network traffic")."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in readme.split("```yaml\n")[1:] if b.startswith("name: flows\n"))
    return yaml.safe_load(block.split("```")[0])


def layout_config(tmp_path: Path) -> Path:
    """The README's config for a new flow table, pointed at a generated one (its fit/test split stated)."""
    config = readme_flow_config()
    config["data"].update(path=str(flow_table(tmp_path / "flows.csv")), normal_train_fraction=0.6)
    path = tmp_path / "flows.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_every_synthetic_window_changes_an_eighth_to_a_third_of_its_features():
    windows = np.random.default_rng(1).normal(size=(50, 24)).astype(np.float32)
    kept = windows.copy()
    copies = synthetic_windows(windows, 4, seed=3)
    assert copies.shape == (200, 24) and np.array_equal(windows, kept)  # the held-out windows stay as they were
    changed = (copies != np.concatenate([windows] * 4)).sum(axis=1)
    assert changed.min() == 24 // 8 and changed.max() == 24 // 3  # 3 to 8 of 24, both ends drawn among 200
    assert np.array_equal(copies, synthetic_windows(windows, 4, seed=3))  # seeded: every round sees the same


def test_a_swapped_window_takes_its_changed_values_from_one_other_normal_window():
    windows = np.arange(40 * 16, dtype=np.float32).reshape(40, 16)  # every value unique: its window is known
    copies = synthetic_windows(windows, 2, seed=0)
    for i in range(0, len(copies), 2):  # even positions: swapped
        original = windows[i % 40]
        moved = copies[i] != original
        donors = {int(v) // 16 for v in copies[i][moved]}
        assert len(donors) == 1 and donors != {i % 40}
        assert np.array_equal(copies[i][moved] % 16, np.flatnonzero(moved))  # each value stays in its own column
    shifted = copies[1::2] - np.concatenate([windows] * 2)[1::2]
    assert set((shifted != 0).sum(axis=1)) <= {2, 3, 4, 5}  # odd positions: noise on 16 // 8 = 2 to 16 // 3 = 5


def test_the_readme_config_for_a_new_flow_table_states_layout_facts_only():
    config = readme_flow_config()
    assert set(config) == {"name", "data", "features"}
    assert validate_train_config(config, "README").selection.criterion == "synthetic_auroc"


def test_a_table_config_that_states_only_its_layout_gets_the_table_recipe():
    config = validate_train_config({"data": {**LAYOUT, "path": "flows.csv"}}, "flows.yaml")
    assert config.selection.criterion == "synthetic_auroc" and config.train.max_blocks == 8
    assert config.train.budget_s == 600.0 and config.score.choice == "self_check"
    for section, values in TABLE_DEFAULTS.items():
        for name, value in values.items():
            assert getattr(getattr(config, section), name) == value, f"{section}.{name}"
    stated = validate_train_config({"data": {**LAYOUT, "path": "flows.csv"}, "train": {"batch_size": 32},
                                    "score": {"weights": {"residual_mean": 1.0}}}, "flows.yaml")
    assert stated.train.batch_size == 32 and stated.train.lr == TABLE_DEFAULTS["train"]["lr"]
    assert stated.score.weights == {"residual_mean": 1.0} and stated.score.choice == "fixed"
    image = validate_train_config({"data": {"path": "parts"}}, "parts.yaml")
    assert (image.train.batch_size, image.model.base_width, image.selection.max_items) == (16, 16, 64)


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    """A tiny model trained by `inspector train -c` on the README's flow config: (run folder, its output)."""
    folder = tmp_path_factory.mktemp("flows")
    run = folder / "run"
    result = inspector("train", "-c", str(layout_config(folder)), "--out", str(run), "--no-progress",
                       "--set", "train.steps=10", "--set", "train.max_blocks=3", "--set", "model.base_width=16",
                       "--set", "train.threads=1")
    assert result.returncode == 0, result.stderr
    return run, result


@pytest.mark.parametrize("family", ["ganomaly", "anogan", "autoencoder"])
def test_a_layout_only_table_config_names_a_score_its_family_has(family):
    from training.models.registry import FAMILIES

    config = validate_train_config({"data": {**LAYOUT, "path": "flows.csv"}, "model": {"family": family}}, "flows.yaml")
    assert set(config.score.weights) <= FAMILIES[family].components
    assert config.train.batch_size == TABLE_DEFAULTS["train"]["batch_size"]


def test_a_flow_table_trains_block_by_block_on_its_self_check_and_states_it(flow_run):
    run, result = flow_run
    selection = json.loads((run / "selection.json").read_text())
    assert selection["criterion"] == "synthetic_auroc" and selection["held_out_items"] == 360  # 20% of 1,800 fitted
    length = selection["training_length"]
    assert length["block_steps"] == 10 and 1 <= length["blocks"] <= 3 and length["stopped_by"]
    assert {"latent_distance", "residual_mean", "residual_max"} <= set(selection["selected_components"])
    assert "ranks synthetic anomalies (swapped or shifted features) above the held-out normal windows" in result.stdout
    card = Scorer(run / "model.onnx").card
    assert 0.0 <= card.calibration.synthetic_recall <= 1.0
    assert "flags" in result.stdout and "made from the held-out normal windows" in result.stdout
    metrics = json.loads((run / "metrics.json").read_text())["rest"]
    # the broken bytes-per-packet relation, after at most 30 steps: a random score's AUROC on these 1,200
    # normal and 600 attack rows has a standard deviation of about 0.014
    assert metrics["auroc"] > 0.7


def test_the_budget_ends_a_table_run_after_its_first_epoch(tmp_path):
    run = tmp_path / "run"
    result = inspector("train", "-c", str(layout_config(tmp_path)), "--out", str(run), "--no-progress",
                       "--no-evaluate", "--set", "train.budget_s=1", "--set", "model.base_width=16",
                       "--set", "train.threads=1")
    assert result.returncode == 0, result.stderr
    length = json.loads((run / "selection.json").read_text())["training_length"]
    assert length["stopped_by"] == BUDGET and length["steps"] == 1440 // 256  # one epoch of the fitted windows
    assert "ended by time budget" in result.stdout


@pytest.mark.parametrize("field, value, message", [
    ("selection.max_items", 1, "selection.max_items"),
    ("train.steps", 0, "train.steps"),
])
def test_a_table_recipe_setting_out_of_range_is_one_line(tmp_path, field, value, message):
    result = inspector("train", "-c", str(layout_config(tmp_path)), "--no-progress", "--set", f"{field}={value}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("rows, config, message", [
    ("id,proto,bytes,label\n1,tcp,100,attack\n2,udp,200,attack\n", {},
     "0 of its 2 rows are normal (column 'label' in data.normal_values ['normal']); training needs at least 2. "
     "Values seen there: attack"),
    ("id,proto,bytes,verdict\n1,tcp,100,normal\n", {},
     "no column 'label' (data.label); its columns: id, proto, bytes, verdict"),
    ("id,proto,bytes,label\n1,tcp,100,normal\n2,udp,200,normal\n3,tcp,50,normal\n", {"categorical": ["protocol"]},
     "features.categorical / features.ignore name columns that the table does not have: protocol"),
])
def test_a_table_that_does_not_fit_its_config_is_one_line_saying_how(tmp_path, rows, config, message):
    (tmp_path / "flows.csv").write_text(rows)
    flows = readme_flow_config()
    flows["data"]["path"] = str(tmp_path / "flows.csv")
    flows["features"] = {"categorical": ["proto"], "ignore": ["id"], **config}
    (tmp_path / "flows.yaml").write_text(yaml.safe_dump(flows))
    result = inspector("train", "-c", str(tmp_path / "flows.yaml"), "--out", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(message)


@pytest.mark.parametrize("rows, header, message", [
    ("1,2,3\n4,5,6\n", False, "no window of 1 row(s) with the model's 8 columns could be read from it (no --header;"),
    ("id,duration,proto,service,state,packets,bytes,verdict\n1,0.5,tcp,http,FIN,10,5000,normal\n", True,
     "no column 'label' (data.label); its columns: id, duration, proto, service, state, packets, bytes, verdict"),
])
def test_an_evaluation_table_the_model_cannot_read_is_one_line(flow_run, tmp_path, rows, header, message):
    (tmp_path / "test.csv").write_text(rows)
    result = inspector("evaluate", str(flow_run[0] / "model.onnx"), "--data", str(tmp_path / "test.csv"),
                       "--out", str(tmp_path / "eval"), *(["--header"] if header else []))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_a_run_that_keeps_its_last_weights_still_says_so_in_selection_json(tmp_path):
    run = tmp_path / "run"
    result = inspector("train", "-c", str(layout_config(tmp_path)), "--out", str(run), "--no-progress", "--no-evaluate",
                       "--steps", "5", "--set", "selection.criterion=last", "--set", "model.base_width=16")
    assert result.returncode == 0, result.stderr
    record = json.loads((run / "selection.json").read_text())
    assert record["criterion"] == "last" and record["evaluations"] == []
    assert record["rule"] == "the final weights, nothing evaluated (selection.criterion last)"
    assert record["training_length"]["steps"] == 5
    assert "self-check: the model ranks" not in result.stdout  # no AUROC was measured to state
