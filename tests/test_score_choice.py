"""The recipe chooses its score from the self-check on held-out normal images, by a fixed rule, and
only when the user left the score to it."""

from __future__ import annotations

import json

from training.config import validate_train_config
import numpy as np
import pytest

from training.score_choice import decide, weigh_by_separation
from training.selection import median_shift

from .conftest import tiny_config


def test_the_configured_score_stays_when_no_component_is_better_beyond_the_noise():
    components = {"residual_max": 0.62, "residual_mean": 0.65}
    assert decide({"residual_max": 1.0}, 0.62, 0.04, components) == {"residual_max": 1.0}


def test_a_component_clearly_better_than_the_configured_score_replaces_it():
    components = {"residual_max": 0.60, "residual_mean": 0.75}
    assert decide({"residual_max": 1.0}, 0.60, 0.04, components) == {"residual_mean": 1.0}


def test_a_combined_score_gives_way_only_to_a_component_beating_the_combination():
    weights = {"residual_max": 1.0, "latent_distance": 1.0}
    assert decide(weights, 0.80, 0.03, {"residual_max": 0.82, "latent_distance": 0.70}) == weights
    assert decide(weights, 0.70, 0.03, {"residual_max": 0.82, "latent_distance": 0.60}) == {"residual_max": 1.0}


def test_a_memory_component_is_never_the_whole_score_however_well_it_checks():
    components = {"patch_residual": 0.60, "patch_knn": 0.95}
    weights = {"patch_residual": 1.0, "patch_knn": 1.0}
    assert decide(weights, 0.70, 0.03, components) == weights
    assert decide({"residual_max": 1.0}, 0.60, 0.03, {"residual_max": 0.60, "latent_knn": 0.9}) == {"residual_max": 1.0}


def test_nothing_self_checked_keeps_the_configured_score():
    assert decide({"residual_max": 1.0}, 0.7, 0.03, {}) == {"residual_max": 1.0}


BOTH = {"patch_knn": 1.0, "patch_residual": 1.0}


def test_spread_units_weigh_each_component_by_the_separation_its_self_check_shows():
    weights = weigh_by_separation(BOTH, {"patch_knn": 0.95, "patch_residual": 0.70}, 48, 192)
    assert weights["patch_knn"] > 2 * weights["patch_residual"] > 0
    assert sum(weights.values()) == pytest.approx(2.0, abs=1e-3)  # the configured total
    # equal self-checks: the equal sum, as configured
    assert weigh_by_separation(BOTH, {"patch_knn": 0.8, "patch_residual": 0.8}, 48, 192) == BOTH
    # perfect on both: finite and equal
    assert weigh_by_separation(BOTH, {"patch_knn": 1.0, "patch_residual": 1.0}, 48, 192) == BOTH


def test_the_median_shift_is_the_separation_in_normal_spreads_and_does_not_saturate():
    rng = np.random.default_rng(1)
    normal = rng.normal(5.0, 2.0, 4000)
    assert median_shift(normal, rng.normal(9.0, 2.0, 4000)) == pytest.approx(2.0, abs=0.15)  # 4 / spread 2
    assert median_shift(normal, rng.normal(3.0, 2.0, 4000)) == pytest.approx(-1.0, abs=0.15)
    # far past the last normal score, both AUROCs read 1; their shifts still tell them apart
    near, far = rng.normal(25.0, 2.0, 4000), rng.normal(65.0, 2.0, 4000)
    assert median_shift(normal, far) > 2.5 * median_shift(normal, near) > 20


def test_recorded_shifts_set_the_weights_where_both_self_checks_saturate():
    """Both components separate every synthetic copy (AUROC 1.000): the AUROC's d' sees them equal,
    the shifts show one moved the copies three times as far."""
    perfect = {"patch_knn": 1.0, "patch_residual": 1.0}
    weights = weigh_by_separation(BOTH, perfect, 48, 192, {"patch_knn": 6.0, "patch_residual": 2.0})
    assert weights == pytest.approx({"patch_knn": 1.5, "patch_residual": 0.5}, abs=1e-3)
    # a component the copies moved down or not at all keeps the floor weight of a component at chance
    floored = weigh_by_separation(BOTH, {"patch_knn": 0.9, "patch_residual": 0.45}, 48, 192,
                                  {"patch_knn": 2.0, "patch_residual": -0.4})
    at_chance = weigh_by_separation(BOTH, {"patch_knn": 0.9, "patch_residual": 0.45}, 48, 192,
                                    {"patch_knn": 2.0, "patch_residual": 0.0})
    assert floored == at_chance and 0 < floored["patch_residual"] < 0.2
    # shifts of some components only (a record from before they were kept): the AUROCs decide
    assert weigh_by_separation(BOTH, perfect, 48, 192, {"patch_knn": 6.0}) == BOTH


def test_a_component_at_chance_keeps_a_small_weight_so_the_gan_residual_stays_in_the_score():
    at_chance = weigh_by_separation(BOTH, {"patch_knn": 0.82, "patch_residual": 0.48}, 48, 192)
    below = weigh_by_separation(BOTH, {"patch_knn": 0.82, "patch_residual": 0.30}, 48, 192)
    assert 0 < at_chance["patch_residual"] == below["patch_residual"] < 0.3 * at_chance["patch_knn"]
    # fewer held-out images resolve less: the floor (chance + one standard error) is higher
    assert weigh_by_separation(BOTH, {"patch_knn": 0.82, "patch_residual": 0.48}, 8, 32)["patch_residual"] > \
        at_chance["patch_residual"]


def test_weighing_a_chosen_score_again_does_not_compound():
    """A fine-tuning run starts from the parent's chosen weights: the configured weights name the
    components and their total; the self-checks alone set the ratio."""
    checks = {"patch_knn": 0.95, "patch_residual": 0.70}
    once = weigh_by_separation(BOTH, checks, 48, 192)
    assert weigh_by_separation(once, checks, 48, 192) == pytest.approx(once, abs=1e-3)
    assert weigh_by_separation({"patch_knn": 1.0}, checks, 48, 192) == {"patch_knn": 1.0}  # one component: as given
    assert weigh_by_separation(BOTH, {"patch_knn": 0.9}, 48, 192) == BOTH  # a component without a check: as given


def test_the_separation_weighted_sum_separates_better_than_the_equal_sum():
    """Two components in spread units, one that sees the defects well and one that barely does
    (independent noise): the weights taken from their AUROCs alone beat the equal sum on fresh draws."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)

    def draw(n, shift):
        return rng.normal(0, 1, (n, 2)) + shift

    shift = np.array([2.0, 0.3])
    normal, defective = draw(200, 0), draw(200, shift)
    labels = np.r_[np.zeros(200), np.ones(200)]
    alone = {name: roc_auc_score(labels, np.r_[normal[:, i], defective[:, i]])
             for i, name in enumerate(["patch_knn", "patch_residual"])}
    weights = weigh_by_separation(BOTH, alone, 200, 200)
    fresh_normal, fresh_defective = draw(5000, 0), draw(5000, shift)
    fresh = np.r_[np.zeros(5000), np.ones(5000)]

    def auroc(w):
        return roc_auc_score(fresh, np.r_[fresh_normal @ w, fresh_defective @ w])

    weighted = auroc(np.array([weights["patch_knn"], weights["patch_residual"]]))
    equal = auroc(np.array([1.0, 1.0]))
    assert weighted > equal + 0.02 and weighted >= auroc(np.array([1.0, 0.0]))


def test_the_score_is_chosen_only_when_the_config_leaves_it_to_the_recipe(tmp_path):
    left = validate_train_config({"data": {"path": str(tmp_path)}}, "no score")
    stated = validate_train_config({"data": {"path": str(tmp_path)}, "score": {"weights": {"residual_max": 1.0}}},
                                   "stated score")
    pooled = validate_train_config({"data": {"path": str(tmp_path)}, "score": {"pool_kernel": 5}}, "pooling only")
    forced = validate_train_config({"data": {"path": str(tmp_path)}, "score": {"weights": {"residual_max": 1.0},
                                                                               "choice": "self_check"}}, "asked")
    assert (left.score.choice, stated.score.choice, pooled.score.choice, forced.score.choice) == (
        "self_check", "fixed", "self_check", "self_check")
    # a run folder's config.json states every field: a fine-tune keeps the choice its parent was trained with
    assert validate_train_config(json.loads(left.model_dump_json()), "config.json").score.choice == "self_check"


def test_a_trained_model_is_exported_with_the_score_its_selection_record_chose(piped_class, tmp_path):
    """A real (tiny) training run with the choice on: selection.json states the rule, every candidate's
    self-check and the choice, and both the card and the run's config.json carry the chosen score."""
    from inspector.scorer import Scorer
    from training.fit import fit

    config = validate_train_config(tiny_config(piped_class, **{"score.choice": "self_check",
                                                               "selection.evaluations": 2}), "tiny")
    result = fit(config, tmp_path / "run", progress=False, evaluate_test=False)
    choice = json.loads((tmp_path / "run" / "selection.json").read_text())["score_choice"]
    # what the scoring graph computes: structure_max is built as a candidate while the recipe chooses
    assert set(choice["candidates"]) == {"residual_max", "residual_mean", "structure_max"}
    assert choice["configured"] == {"residual_max": 1.0}
    assert choice["chosen"] == decide(choice["configured"], choice["configured_value"], choice["standard_error"],
                                      choice["candidates"])
    scorer = Scorer(result.model_path)
    assert scorer.card.score.weights == choice["chosen"]
    # the graph computes structure_max only when it is the score: a candidate left out costs nothing on the line
    assert ("structure_max" in scorer.output_names) == ("structure_max" in choice["chosen"])
    recorded = validate_train_config(json.loads((tmp_path / "run" / "config.json").read_text()), "config.json")
    assert recorded.score.weights == choice["chosen"]


def test_a_score_at_chance_on_the_self_check_is_replaced_in_the_card_and_the_run_config(piped_class, tmp_path):
    """The switch end to end: after 4 steps the code difference (latent_distance) cannot tell a
    synthetic patch from a clean frame (self-check 0.5), the local residual and structure can; asked to
    choose, the recipe exports the best of them, with its own scale and threshold."""
    from inspector.scorer import Scorer
    from training.fit import fit

    config = validate_train_config(tiny_config(piped_class, **{
        "score.weights": {"latent_distance": 1.0}, "score.choice": "self_check", "selection.evaluations": 2}), "tiny")
    result = fit(config, tmp_path / "run", progress=False, evaluate_test=False)
    choice = json.loads((tmp_path / "run" / "selection.json").read_text())["score_choice"]
    best = max(choice["candidates"], key=choice["candidates"].get)
    assert best != "latent_distance"
    assert choice["configured_value"] + choice["standard_error"] < choice["candidates"][best]
    card = Scorer(result.model_path).card
    assert card.score.weights == choice["chosen"] == {best: 1.0}
    assert set(card.score.scales) == {best}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["score"]["weights"] == {best: 1.0}


def test_inspector_train_says_when_it_chose_another_score(piped_class, tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "inspector.cli", "--log-level", "WARNING", "train", "--data", str(piped_class),
         "--out", str(tmp_path / "run"), "--steps", "4", "--no-progress", "--no-evaluate",
         "--set", "input.height=32", "--set", "input.width=32", "--set", "input.resize=stretch",
         "--set", "model.base_width=8", "--set", "train.threads=1", "--set", "selection.evaluations=2",
         "--set", "score.weights={latent_distance: 1.0}", "--set", "score.choice=self_check"],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    chosen = json.loads((tmp_path / "run" / "selection.json").read_text())["score_choice"]["chosen"]
    assert chosen != {"latent_distance": 1.0}
    assert f"score: {'+'.join(chosen)} (self-check " in result.stdout and " instead of latent_distance (" in result.stdout


def test_structure_scores_a_changed_texture_above_a_uniform_brightness_offset():
    """structure_max (1 - SSIM) is the candidate that looks at local structure: a reconstruction off by
    a uniform offset is nearly perfect to it, one with the texture scrambled is not."""
    import torch

    from training.models.ganomaly import structure_map

    torch.manual_seed(0)
    texture = torch.rand(1, 3, 32, 32) * 1.6 - 0.8
    offset = texture + 0.2
    scrambled = texture.flatten(2)[..., torch.randperm(32 * 32)].view_as(texture) * 0.5
    assert float(structure_map(texture, texture).abs().max()) < 1e-6
    assert float(structure_map(texture, offset).mean()) < 0.1 < float(structure_map(texture, scrambled).mean())


def test_structure_is_an_image_score_a_table_config_cannot_ask_for(tmp_path):
    import pytest

    from inspector.errors import ConfigError

    with pytest.raises(ConfigError, match="structure_max is scored on images only"):
        validate_train_config({"data": {"kind": "table", "path": str(tmp_path / "rows.csv"), "label": "label",
                                        "normal_values": ["normal"]},
                               "score": {"weights": {"structure_max": 1.0}}}, "table.yaml")


def test_the_cost_of_structure_is_counted_only_when_it_is_exported():
    import torch

    from training.flops import count_flops
    from training.models.ganomaly import STRUCTURE_WINDOW, GANomaly, GANomalyScoring, GANomalyShape

    generator = GANomaly(GANomalyShape(32, 32, 3, base_width=4, latent_dim=8))
    example = torch.rand(1, 3, 32, 32) * 2 - 1
    without = count_flops(GANomalyScoring(generator, with_latent=False), example)
    with_structure = count_flops(GANomalyScoring(generator, with_latent=False, with_structure=True), example)
    # five box means of STRUCTURE_WINDOW^2 multiply-adds (2 FLOPs each, as every layer) + 35 element-wise
    assert with_structure - without == 32 * 32 * 3 * (2 * 5 * STRUCTURE_WINDOW ** 2 + 35)
