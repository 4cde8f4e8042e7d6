"""The command line as a user meets it: train -> evaluate -> score on a real PIPED class, and one clear
line for every bad input."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.data import list_images

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def inspector(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inspector.cli", *args], capture_output=True, text=True,
                          env=ENV, cwd=cwd, timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(piped_class, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = inspector("--log-level", "WARNING", "train", "--data", str(piped_class), "--out", str(out),
                       "--steps", "3", "--no-progress", "--set", "input.height=32", "--set", "input.width=32",
                       "--set", "input.resize=stretch", "--set", "model.backbone_min_size=0",  # tiny: 32 px as it is
                       "--set", "model.base_width=8", "--set", "train.threads=1")
    assert result.returncode == 0, result.stderr
    return out, result


def test_train_exports_a_calibrated_model_and_evaluates_it(trained):
    out, result = trained
    assert "model: " in result.stdout and "image_auroc" in result.stdout
    for name in ("model.onnx", "checkpoint.pt", "losses.csv", "metrics.json", "config.json",
                 "report/roc.png", "report/score_histogram.png", "report/examples.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_normal"] == 16 and metrics["n_anomalous"] == 48 and 0 <= metrics["image_auroc"] <= 1
    # the self-check is stated with what it can and cannot say (it does not forecast the real AUROC)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("self-check: the model ranks")]
    assert "barely separates even made-up flaws" in line or "no forecast of the real AUROC" in line


def test_evaluate_writes_metrics_for_an_exported_model(trained, piped_class, tmp_path):
    out, _ = trained
    result = inspector("--log-level", "WARNING", "evaluate", str(out / "model.onnx"), "--data", str(piped_class),
                       "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_anomalous"] == 48
    assert f"at most 2% false alarms on these photos: {metrics['best_f1_within_far']:.3f}" in result.stdout
    if metrics["false_alarm_rate"] <= 0.02:  # the card's threshold is one of those the ceiling ranges over
        assert metrics["f1"] <= metrics["best_f1_within_far"]
    assert (tmp_path / "report" / "roc.png").stat().st_size > 1000
    with open(tmp_path / "report" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 64 and sum(r["label"] == "defect" for r in rows) == 48
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    verdicts = {r["verdict"] for r in rows}
    assert verdicts <= {"caught", "missed", "passed", "false alarm"}
    caught = sum(r["verdict"] == "caught" for r in rows)
    assert caught == metrics["true_positives"]


def test_score_prints_one_json_line_per_image_and_rejects_bad_files(trained, piped_class, tmp_path):
    out, _ = trained
    good = list_images(piped_class / "test" / "good")[:2]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good[0].read_bytes()[:64])
    result = inspector("score", str(out / "model.onnx"), *map(str, good), str(corrupt))
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(good[0]), str(good[1]), str(corrupt)]
    assert {"score", "normalised", "verdict"} <= set(lines[0])
    assert lines[2]["rejected"] == "decode_failed" and "corrupt.png" in lines[2]["error"]
    assert result.returncode == 1  # a file could not be scored


def test_card_command_prints_the_card(trained):
    out, _ = trained
    result = inspector("card", str(out / "model.onnx"))
    card = json.loads(result.stdout)
    assert card["family"] == "ganomaly" and card["input"]["height"] == 32


def test_a_non_onnx_model_file_is_one_clear_line(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_text("hello")
    result = inspector("score", str(fake), "x.png")
    assert result.returncode == 2
    assert "not a loadable ONNX model" in error_line(result)


def test_a_misspelled_config_key_is_one_line_naming_it(tmp_path):
    config = tmp_path / "line.yaml"
    config.write_text("name: x\ndata: {path: somewhere}\ntrain: {stpes: 10}\n")
    result = inspector("train", "-c", str(config))
    assert result.returncode == 2
    line = error_line(result)
    assert str(config) in line and "unknown field 'train.stpes'; did you mean 'steps'?" in line


@pytest.mark.parametrize("source, expected", [
    ({"name": "a", "kind": "folders", "path": "in"},
     "field 'sources.0.kind': unknown value 'folders'; did you mean 'folder'? (one of camera, folder, traffic, redis_stream)"),
    ({"name": "a", "kind": "folder", "pth": "in"},
     "field 'sources.0.folder.path' is required but missing; found 'pth' instead: a misspelling?"),
])
def test_a_daemon_config_mistake_is_one_line_with_what_was_meant(tmp_path, source, expected):
    from inspector.config import parse_daemon_config
    from inspector.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        parse_daemon_config({"model": {"path": "m.onnx"}, "sources": [source]}, "line.yaml", check_files=False)
    assert str(caught.value) == f"line.yaml: {expected}"


def test_a_yaml_alias_bomb_under_a_known_field_is_refused_quickly_in_one_short_line(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]  # 9^9 leaves
    config = tmp_path / "bomb.yaml"
    config.write_text("\n".join(lines + ["model: {path: m.onnx, threshold: *a8}", "sources: []"]) + "\n")
    result = inspector("run", "-c", str(config), "--check")
    assert result.returncode == 2
    line = error_line(result)
    assert "field 'model.threshold'" in line and len(line) < 400


def test_steps_on_the_command_line_sets_both_anogan_phases(piped_class):
    from inspector.cli import build_parser
    from training.cli import resolve_config

    args = build_parser().parse_args(["train", "--data", str(piped_class), "--steps", "40", "--set", "model.family=anogan"])
    config = resolve_config(args)
    assert (config.anogan.gan_steps, config.anogan.encoder_steps, config.train.steps) == (40, 40, 40)
    assert config.selection.criterion == "synthetic_auroc"  # images: chosen on synthetic defects by default
