"""A second look at the good photos: what taking out the ones the training summary names does.

`inspector train --data DIR` names the good photos that score far above the rest
(training.unusual_normals), because a part with a flaw sorted into train/good can set the threshold
by itself. This benchmark follows a user who acts on it: it trains the default recipe on the set as
it is, checks that every photo given with --take-out is among those the run named (the user looks
at unusual_good.png and takes out the ones that show a flaw they would reject; that look is theirs,
so the names are an argument, stated in the command), trains again on a copy of the set without
them (symlinks, nothing copied), and reports both on test/: threshold over the median normal
score, image AUROC, F1, recall and false-alarm rate at the card's threshold. test/ is only
evaluated; the photos are chosen from the training summary.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.results import section_header, section_main

MARK_START, MARK_END = "<!-- unusual-good:start -->", "<!-- unusual-good:end -->"


def without(data: Path, take_out: list[str], into: Path) -> Path:
    """A copy of the set `data` made of symlinks, train/good without the files named in `take_out`."""
    good = into / "train" / "good"
    good.mkdir(parents=True)
    for photo in sorted((data / "train" / "good").iterdir()):
        if photo.name not in take_out:
            (good / photo.name).symlink_to(photo.resolve())
    for entry in sorted(data.iterdir()):
        if entry.name != "train":
            (into / entry.name).symlink_to(entry.resolve())
    return into


def trained(data: Path, run: Path) -> dict:
    """Train the default recipe on `data` into `run`; what the summary and the evaluation say."""
    from training.cli import default_config
    from training.fit import fit
    from training.run_folder import RunFolder

    started = time.perf_counter()
    result = fit(default_config(str(data), {}), run, progress=False)
    seconds = time.perf_counter() - started
    record = RunFolder(run).selection_record()
    unusual = record.get("unusual_normal", {"photos": [], "threshold_times_median": None})
    scores = np.asarray(record["calibration"]["normal_scores"])
    metrics = result.metrics or {}
    return {"photos": len(list((data / "train" / "good").iterdir())), "named": [Path(p["path"]).name for p in unusual["photos"]],
            "threshold_x_median": result.card.calibration.threshold / float(np.median(scores)),
            "auroc": metrics.get("image_auroc"), "f1": metrics.get("f1"), "recall": metrics.get("recall"),
            "far": metrics.get("false_alarm_rate"), "n_normal": metrics.get("n_normal"), "seconds": seconds}


def run(args) -> str:
    from training.data import data_root

    data = data_root() / args.set
    if not (data / "train" / "good").is_dir() or not (data / "test").is_dir():
        raise SystemExit(f"{data}: needs train/good and test/ (set QI_DATA to the shared data folder)")
    take_out = [name.strip() for name in args.take_out.split(",") if name.strip()]
    work = Path(tempfile.mkdtemp(prefix="qi_unusual_good_"))
    first = trained(data, work / "as_shipped")
    print("as shipped:", first, flush=True)
    unnamed = [name for name in take_out if name not in first["named"]]
    if unnamed:
        raise SystemExit(f"--take-out {', '.join(unnamed)}: not among the photos this run named "
                         f"({', '.join(first['named']) or 'none'}); take out only what the summary showed")
    second = trained(without(data, take_out, work / "set"), work / "second_look")
    print("second look:", second, flush=True)
    lines = section_header(MARK_START, "Good photos that score like defects: a second look", "benchmarks.unusual_good")
    lines += ["", f"`{args.set}` trained with no config (`inspector train --data`), then again without the photos "
              f"taken out after looking at the first run's unusual_good.png ({', '.join(take_out)}). test/ "
              "evaluated only; F1, recall and false alarms at the card's threshold.", "",
              "| train/good | photos | named by the summary | threshold / median normal score | image AUROC | F1 | "
              "recall | false alarms on test/good | train s |", "|---|---|---|---|---|---|---|---|---|"]
    for label, row in (("as shipped", first), ("photos taken out", second)):
        named = ", ".join(row["named"][:6]) + (f" and {len(row['named']) - 6} more" if len(row["named"]) > 6 else "")
        lines.append(f"| {label} | {row['photos']} | {len(row['named'])}: {named or '-'} | {row['threshold_x_median']:.2f} | "
                     f"{row['auroc']:.3f} | {row['f1']:.3f} | {row['recall']:.3f} | "
                     f"{row['far']:.3f} ({round(row['far'] * row['n_normal'])} of {row['n_normal']}) | {row['seconds']:.0f} |")
    return "\n".join(lines + ["", MARK_END])


def add_arguments(parser) -> None:
    parser.add_argument("--set", default="kolektor_sdd", help="a folder under $QI_DATA (default kolektor_sdd)")
    parser.add_argument("--take-out", required=True,
                        help="comma-separated file names in train/good to take out: only ones the first run names")


if __name__ == "__main__":
    sys.exit(section_main(__doc__, run, MARK_START, MARK_END, add_arguments))
