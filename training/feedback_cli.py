"""Handlers of `inspector recalibrate` and `inspector retrain`: run the job, say what changed and what is next."""

from __future__ import annotations

import logging


def _next_steps(path) -> str:
    return (f"next: shadow-test it beside the active model (shadow: {{model: {path}}} in the daemon config, then "
            f"`inspector shadow report`), and `inspector promote {path} --to <active model.onnx>`")


def recalibrate(args) -> int:
    from .recalibrate import recalibrate as run

    done = run(args.model, args.good, args.out, args.target_false_alarm_rate)
    calibration = done.card.calibration
    print(f"candidate: {done.path}  (threshold {done.old_threshold:.4g} -> {calibration.threshold:.4g} from "
          f"{done.images} good photos, target false-alarm rate {calibration.target_false_alarm_rate:g})")
    print(f"the old threshold flags {done.old_false_alarms} of these {done.images} good photos")
    if done.seen_in_training:
        print(f"warning: {done.seen_in_training} of these {done.images} good photos are training photos "
              f"({done.training_folder}, or copies of them): the model was fitted on most of them, so they score "
              "lower than parts it never saw, and a threshold set on them alarms on good parts more often than "
              f"{calibration.target_false_alarm_rate:g}; recalibrate on good parts photographed since")
    if done.unusual is not None:
        from .unusual_normals import summary_line

        print(summary_line(done.unusual, done.picture, recorded_in=None,
                           take_out="take it out of the folder and recalibrate again"))
    print(_next_steps(done.path))
    return 0


def retrain(args) -> int:
    from .retrain import retrain as run

    logging.getLogger("training").setLevel(logging.INFO)
    done = run(args.run, args.reviews, args.good, args.out, args.budget_s, progress=not args.no_progress)
    card = done.card
    print(f"candidate: {done.run.model}  ({card.version}, parent {done.parent.version})")
    print(f"learned {done.false_alarms} frame(s) reviewed as false alarm and {done.good_images} new good photo(s) "
          f"in {done.steps} fine-tuning steps; {done.seconds:.0f} s in all"
          + (f"; {done.missing_frames} reviewed frame(s) were gone (evidence retention)" if done.missing_frames else ""))
    if done.kept:
        from .config import describe_kept

        print(f"recipe: the parent's as it trained, from before these fields: {describe_kept(done.kept)}; "
              "`inspector train` trains today's")
    print(f"threshold {done.parent.calibration.threshold:.4g} -> {card.calibration.threshold:.4g}; self-check: the "
          f"threshold flags {100 * (card.calibration.synthetic_recall or 0):.0f}% of synthetic defects")
    unusual = done.run.selection_record().get("unusual_normal")
    if unusual:
        from .unusual_normals import PICTURE, summary_line

        print(summary_line(unusual, done.run.root / PICTURE, take_out="take it out of the good photos (train/good, "
                           "or review it as a defect) and retrain"))
    print(_next_steps(done.run.model))
    return 0
