"""The recipe's score, chosen from normal data only.

Candidates: the configured score and every score component alone, each self-checked at the
exported weights by checkpoint selection (the synthetic-defect AUROC on held-out normal images:
selection.json `selected_value` and `selected_components`; never test/).

Rule: the configured score stays unless one component alone beats its self-check by more than the
configured score's standard error: the one-standard-error rule that also picks the checkpoint
(training.selection). A difference within the noise of a few dozen held-out images is no reason to
move; a clear one is. (The rule follows the checkpoint rule, not the suite's test numbers, which
would favour taking the best self-check outright: see RESULTS.) A memory component (nearest normal
code or patch) is never chosen alone: the model is a GAN, and its score keeps one of the GAN's
residuals, a memory only beside it. The choice is made only when the config leaves the score to the
recipe (`score.choice: self_check`, the default when `score.weights` is not given); a stated score is
the user's. The decision, every candidate's value and the rule go into selection.json
(`score_choice`), and the run's config.json records the score the model was exported with, so a
fine-tuning run starts from it.
"""

from __future__ import annotations

import json
import logging

from .config import TrainConfig
from .run_folder import RunFolder

log = logging.getLogger(__name__)

MEMORY_COMPONENTS = frozenset({"latent_knn", "latent_lof", "patch_knn"})  # never the whole score
RULE = ("the configured score unless one component alone beats its self-check by more than the configured "
        "score's standard error; a memory component (latent_knn, latent_lof, patch_knn) is never the whole score")


def decide(configured: dict[str, float], configured_value: float, standard_error: float,
           components: dict[str, float]) -> dict[str, float]:
    """The score weights the rule picks: `configured`, or {component: 1.0} for a clearly better one."""
    candidates = {name: value for name, value in components.items() if name not in MEMORY_COMPONENTS}
    if not candidates:
        return dict(configured)
    best = max(sorted(candidates), key=lambda name: candidates[name])  # sorted: ties go to the first name
    if candidates[best] > configured_value + standard_error and {best: 1.0} != configured:
        return {best: 1.0}
    return dict(configured)


def exported_self_check(selection: dict) -> float | None:
    """The self-check of the score a run exported, from its selection.json record: the chosen
    component's when the choice replaced the configured score, else the configured score's."""
    choice = selection.get("score_choice")
    if choice and choice["chosen"] != choice["configured"]:
        return choice["candidates"]["+".join(choice["chosen"])]
    return selection.get("selected_value")


def choose_score(config: TrainConfig, run: RunFolder) -> TrainConfig:
    """`config` with the score the rule picks from this run's selection record (unchanged when the
    score is the user's, or nothing was self-checked); records the decision in the run folder."""
    if config.score.choice != "self_check" or not run.selection.exists():
        return config
    record = json.loads(run.selection.read_text())
    components = record.get("selected_components") or {}
    selected = [e for e in record.get("evaluations", []) if e.get("epoch") == record.get("selected_epoch")]
    if not components or not selected:
        return config
    value, error = float(record["selected_value"]), float(selected[-1].get("standard_error", 0.0))
    configured = dict(config.score.weights)
    weights = decide(configured, value, error, components)
    record["score_choice"] = {"rule": RULE, "configured": configured, "configured_value": value,
                              "standard_error": error, "candidates": components, "chosen": weights}
    run.selection.write_text(json.dumps(record, indent=2))
    if weights == configured:
        return config
    log.info("score: %s (self-check %.3f) instead of %s (%.3f +- %.3f)", "+".join(weights),
             components[next(iter(weights))], "+".join(configured), value, error)
    chosen = config.model_copy(update={"score": config.score.model_copy(update={"weights": weights})})
    run.config.write_text(chosen.model_dump_json(indent=2))
    return chosen
