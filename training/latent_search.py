"""Classic AnoGAN scoring (Schlegl et al., 2017): find each item's latent code by gradient descent.

For every item, z starts at a random point of the prior and takes `steps` Adam steps on
    (1 - lambda) * || x - G(z) ||^2 / s_r  +  lambda * || f(x) - f(G(z)) ||^2 / s_f
(s_r, s_f: the card's component scales, lambda: the card's feature_residual share, or 0.1 as in the
paper when the card scores no feature residual), projected back into the prior's box [-1, 1].
The item is then scored by the card's own formula on G(z) instead of G(E(x)) (latent_knn /
latent_lof, when scored, on the searched z instead of E(x)).

This is slow by design -- `steps` forward and backward passes through generator and critic per item,
against one forward pass for the trained encoder -- and exists so the benchmark and
`inspector evaluate --latent-search N` can show what the encoder buys. Torch only, never exported.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from inspector.card import ScoreDefinition

DEFAULT_FEATURE_SHARE = 0.1
SEARCH_LR = 0.05


def search_objective_weights(score: ScoreDefinition) -> tuple[float, float]:
    """(residual weight, feature weight) of the search loss, already divided by the card's scales."""
    share = DEFAULT_FEATURE_SHARE
    if "feature_residual" in score.weights:
        total = sum(abs(w) for w in score.weights.values())
        share = abs(score.weights["feature_residual"]) / total if total else share
    residual_scale = score.scales.get("residual_mean", 1.0)
    feature_scale = score.scales.get("feature_residual", 1.0)
    return (1 - share) / residual_scale, share / feature_scale


def latent_search(scoring: nn.Module, items: np.ndarray, score: ScoreDefinition, steps: int,
                  batch_size: int = 256, seed: int = 0) -> dict[str, np.ndarray]:
    """Score components of `items` (model inputs) after `steps` of latent search each.

    `scoring` is an AnoGANScoring / TabularAnoGANScoring: its generator, critic and `components`
    are used; its encoder is not. Items in one batch are optimised together but independently
    (each loss term depends on its own z only; batch norm is in eval mode)."""
    if steps < 1:
        raise ValueError("latent search needs at least one step")
    scoring.eval()
    for p in scoring.parameters():
        p.requires_grad_(False)
    model, critic = scoring.model, scoring.critic
    w_residual, w_feature = search_objective_weights(score)
    sampler = torch.Generator().manual_seed(seed)
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(items), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(items[start:start + batch_size]))
        real_features = critic(x)["features"].flatten(1)
        z = model.sample_latent(len(x), sampler).requires_grad_(True)
        optimiser = torch.optim.Adam([z], lr=SEARCH_LR)
        for _ in range(steps):
            reconstruction = model.generator(z)
            residual = (x - reconstruction).pow(2).flatten(1).mean(dim=1)
            feature = (critic(reconstruction)["features"].flatten(1) - real_features).pow(2).mean(dim=1)
            loss = (w_residual * residual + w_feature * feature).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                z.clamp_(-1, 1)
        with torch.no_grad():
            outputs = scoring.components(x, model.generator(z), z)
        for name, value in outputs.items():
            if value.dim() == 1:
                parts.setdefault(name, []).append(value.numpy())
    return {name: np.concatenate(values) for name, values in parts.items()}


def compare_with_single_pass(scoring: nn.Module, score: ScoreDefinition, threshold: float, frames: np.ndarray,
                             labels: np.ndarray, steps: int, spec=None) -> dict:
    """Metrics and seconds per item of the encoder's single pass and of latent search on the same
    items, measured in one run (`spec`: the card's image input, for tiled models; None for tables)."""
    import time

    from inspector.scorer import combine_score

    from .evaluate import image_metrics
    from .frame_scores import model_inputs, per_frame_max
    from .torch_scoring import run_scoring

    inputs, owner = model_inputs(frames, spec)
    report = {"items": int(len(labels)), "model_inputs": int(len(inputs)), "steps": steps}
    for name, run, repeats in (("single_pass", lambda: run_scoring(scoring, inputs, batch_size=256, keep_maps=False), 5),
                               ("latent_search", lambda: latent_search(scoring, inputs, score, steps), 1)):
        seconds = float("inf")
        for _ in range(repeats):  # the single pass takes well under a second: its best of 5 resists noise
            started = time.perf_counter()
            outputs = run()
            seconds = min(seconds, time.perf_counter() - started)
        scores = per_frame_max(combine_score(outputs, score), owner)
        metrics = image_metrics(scores, np.asarray(labels), threshold)
        report[name] = {"image_auroc": metrics.get("image_auroc"), "average_precision": metrics.get("average_precision"),
                        "f1": metrics["f1"], "false_alarm_rate": metrics["false_alarm_rate"],
                        "seconds": round(seconds, 3), "ms_per_item": round(1000 * seconds / max(1, len(labels)), 3)}
    report["speedup"] = round(report["latent_search"]["seconds"] / max(report["single_pass"]["seconds"], 1e-9), 1)
    return report


def load_run_scoring(model_path):
    """The torch scoring module of an AnoGAN run folder (model.onnx beside config.json and checkpoint.pt)."""
    import json
    from pathlib import Path

    from inspector.errors import InspectorError

    from .config import TrainConfig
    from .family import nearest_code_module
    from .items import TableShape, items_of
    from .models.anogan import LatentCode
    from .models.anogan_family import anogan_scoring, build_anogan
    from .run_folder import CHECKPOINT, CONFIG

    run_dir = Path(model_path).parent
    config_path, checkpoint_path = run_dir / CONFIG, run_dir / CHECKPOINT
    if not (config_path.is_file() and checkpoint_path.is_file()):
        raise InspectorError(f"latent search needs the run folder of {model_path} (config.json and {CHECKPOINT} beside it)")
    config = TrainConfig.model_validate(json.loads(config_path.read_text()))
    if config.model.family != "anogan":
        raise InspectorError(f"latent search is for anogan models; {model_path} is a {config.model.family} model")
    state = torch.load(checkpoint_path, weights_only=True, map_location="cpu")  # trained on a GPU or not
    # the exported weights: the encoder-phase epoch checkpoint selection chose (the checkpoint's own are the last)
    selected = (state.get("selection") or {}).get("best_state") or state
    items = items_of(config)
    fitted = fitted_items(config)
    shape = TableShape(state["model"]["encoder.0.weight"].shape[1]) if items.spec is None else items.shape(None)
    model, critic = build_anogan(shape, config.model.base_width, config.model.latent_dim, config.stability.spectral_norm)
    model.load_state_dict(selected["model"])
    critic.load_state_dict(state["critic"])
    return anogan_scoring(config, shape, model, critic, nearest_code_module(config, items, LatentCode(model), fitted)).eval()


def fitted_items(config) -> np.ndarray | None:
    """The items the run was fitted on (its memory of normal codes is rebuilt from them, seeded as in
    training), or None when the card scores no memory component."""
    if not {"latent_knn", "latent_lof"} & set(config.score.weights):
        return None
    from inspector.errors import InspectorError

    from .data import config_split

    try:
        if config.data.kind == "table":
            from .tabular import load_tabular

            normal = load_tabular(config)[1]
        else:
            from .fit import load_training_data

            normal = load_training_data(config, with_test=False)[0].tensors
    except OSError as error:  # moved or deleted training data
        raise InspectorError(f"latent search rebuilds the memory of normal codes (latent_knn / latent_lof) from the "
                             f"run's training data, which cannot be read: {error}") from error
    return normal[config_split(config, len(normal))[0]]
