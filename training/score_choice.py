"""The recipe's score, chosen from normal data only.

Candidates: the configured score and every score component alone, each self-checked at the
exported weights by checkpoint selection (the synthetic-defect AUROC on held-out normal images:
selection.json `selected_value` and `selected_components`; never test/).

Rule for scores in median units (`score.fusion: median`, the from-scratch models): the configured
score stays unless one component alone beats its self-check by more than the configured score's
standard error: the one-standard-error rule that also picks the checkpoint (training.selection). A
difference within the noise of a few dozen held-out images is no reason to move; a clear one is.
(The rule follows the checkpoint rule, not the suite's test numbers, which would favour taking the
best self-check outright: see RESULTS.) A memory component (nearest normal code or patch) is never
chosen alone: the model is a GAN, and its score keeps one of the GAN's residuals, a memory only
beside it.

Rule for scores in spread units (`score.fusion: spread`, the pretrained-backbone models): the
configured components stay and each is weighted by the separation d' its own self-check shows.
Each component is already divided by its spread on normal frames, and for independent components
so scaled the sum weighted by d' is the one that separates best (Fisher's linear discriminant); an
equal-weight sum lets a component that barely sees the synthetic defects add its noise to one that
sees them well. d' is how far the synthetic copies' median score moved, in robust spreads of the
normal scores (selection.median_shift, `selected_component_shifts`). The earlier estimate,
sqrt(2) * Phi^-1(AUROC) (the equal-variance binormal model), is the same quantity but saturates: on
tire both components checked 1.000 and so got equal weights, whatever their shifts (24.7 and 27.1
spreads there); it stays for records without shifts, its AUROC bounded above by one swapped pair
short of perfect.
Either is bounded below by the d' of chance plus one standard error (a component at chance keeps
the smallest weight the self-check can tell from none, so the GAN's residual stays in the score).
The weights are the d' rescaled to the configured weights' total: equal separations give equal
weights, and a fine-tuning run that starts from a chosen score weighs its components afresh
instead of compounding.

The choice is made only when the config leaves the score to the recipe (`score.choice: self_check`,
the default when `score.weights` is not given); a stated score is the user's. The decision, every
candidate's value and the rule go into selection.json (`score_choice`; after export also the chosen
score's own self-check, `chosen_value`), and the run's config.json records the score the model was
exported with, so a fine-tuning run starts from it.
"""

from __future__ import annotations

import logging
import math
from statistics import NormalDist

from .config import TrainConfig
from .run_folder import RunFolder
from .selection import SYNTHETIC_COPIES, auroc_standard_error

log = logging.getLogger(__name__)

MEMORY_COMPONENTS = frozenset({"latent_knn", "latent_lof", "patch_knn"})  # never the whole score
RULE = ("the configured score unless one component alone beats its self-check by more than the configured "
        "score's standard error; a memory component (latent_knn, latent_lof, patch_knn) is never the whole score")
SPREAD_RULE = ("the configured components, each weighted by its d' on the self-check: the synthetic copies' median "
               "shift in robust spreads of the normal scores (or, unrecorded, sqrt(2) * Phi^-1(its AUROC), the AUROC "
               "at most one swapped pair short of 1), at least the d' of chance + one standard error; rescaled to the "
               "configured total")


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


def auroc_separation(auroc: float) -> float:
    """d' of an AUROC in the equal-variance binormal model (AUROC = Phi(d' / sqrt 2))."""
    return math.sqrt(2.0) * NormalDist().inv_cdf(auroc)


def separation(auroc: float, n_normal: int, n_defective: int, shift: float | None = None) -> float:
    """d' of a component's self-check on n_normal normal and n_defective synthetic-defect frames: its
    median `shift` when recorded, else from its AUROC bounded above by 1 - 1 / (n_normal * n_defective);
    at least the d' of 0.5 + the AUROC's standard error at chance."""
    low = auroc_separation(0.5 + auroc_standard_error(0.5, n_normal, n_defective))
    if shift is not None:
        return max(shift, low)
    return max(auroc_separation(min(auroc, 1.0 - 1.0 / (n_normal * n_defective))), low)


def weigh_by_separation(configured: dict[str, float], components: dict[str, float], n_normal: int,
                        n_defective: int, shifts: dict[str, float] | None = None) -> dict[str, float]:
    """The components of `configured`, each weighted by its d' (see `separation`; from `shifts` when
    every component has one) rescaled to the configured total; `configured` itself when a component
    has no self-check."""
    if len(configured) < 2 or any(name not in components for name in configured):
        return dict(configured)
    shifts = shifts if shifts and all(name in shifts for name in configured) else {}
    raw = {name: separation(components[name], n_normal, n_defective, shifts.get(name)) for name in configured}
    factor = sum(configured.values()) / sum(raw.values())
    return {name: round(value * factor, 4) for name, value in raw.items()}


def exported_self_check(selection: dict) -> float | None:
    """The self-check of the score a run exported, from its selection.json record: the chosen score's
    own (`chosen_value`, measured at export) when recorded, else the chosen component's when the choice
    replaced the configured score, else the configured score's."""
    choice = selection.get("score_choice")
    if choice and choice.get("chosen_value") is not None:
        return choice["chosen_value"]
    if choice and choice["chosen"] != choice["configured"]:
        return choice["candidates"]["+".join(choice["chosen"])]
    return selection.get("selected_value")


def record_chosen_value(run: RunFolder, value: float | None) -> None:
    """Add the exported score's own self-check to the run's score_choice record (when there is one)."""
    choice = run.selection_record().get("score_choice")
    if value is not None and choice is not None:
        run.record_selection("score_choice", {**choice, "chosen_value": value})


def describe(weights: dict[str, float], digits: int | None = None) -> str:
    """A score's components as a line shows them: names alone when every weight is 1, else each
    weight (to `digits` decimals when given) before its name."""
    if all(w == 1.0 for w in weights.values()):
        return "+".join(weights)
    shown = "g" if digits is None else f".{digits}f"
    return " + ".join(f"{w:{shown}} x {name}" for name, w in weights.items())


def choose_score(config: TrainConfig, run: RunFolder) -> TrainConfig:
    """`config` with the score the rule picks from this run's selection record (unchanged when the
    score is the user's, or nothing was self-checked); records the decision in the run folder."""
    if config.score.choice != "self_check":
        return config
    record = run.selection_record()
    components = record.get("selected_components") or {}
    selected = [e for e in record.get("evaluations", []) if e.get("epoch") == record.get("selected_epoch")]
    if not components or not selected:
        return config
    value, error = float(record["selected_value"]), float(selected[-1].get("standard_error", 0.0))
    configured = dict(config.score.weights)
    if config.score.fusion == "spread":
        n_normal = int(record.get("held_out_items") or 0)  # a record without it: the weights stay as configured
        weights = (weigh_by_separation(configured, components, n_normal, SYNTHETIC_COPIES * n_normal,
                                       record.get("selected_component_shifts")) if n_normal else dict(configured))
        rule = SPREAD_RULE
    else:
        weights, rule = decide(configured, value, error, components), RULE
    run.record_selection("score_choice", {
        "rule": rule, "configured": configured, "configured_value": value, "standard_error": error,
        "candidates": components, "chosen": weights,
        **({"shifts": record["selected_component_shifts"]}
           if config.score.fusion == "spread" and "selected_component_shifts" in record else {})})
    if weights == configured:
        return config
    log.info("score: %s (self-checks %s) instead of %s (%.3f +- %.3f)", describe(weights),
             ", ".join(f"{components[name]:.3f}" for name in weights), describe(configured), value, error)
    chosen = config.model_copy(update={"score": config.score.model_copy(update={"weights": weights})})
    run.config.write_text(chosen.model_dump_json(indent=2))
    return chosen
