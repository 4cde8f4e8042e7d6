"""The Accuracy section of RESULTS.md from benchmark rows: image, traffic and latent-search tables.

Rows are the JSON objects benchmarks.accuracy appends to its JSON-lines files; `latest_rows` keeps
the newest per set and variant, so a section can be rebuilt from several runs without training.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import torch

from training.length import PLANNED
from training.score_choice import describe, exported_self_check

COMPONENTS = ("latent_distance", "latent_knn", "latent_lof", "residual_mean", "residual_max", "feature_residual",
              "patch_residual", "patch_knn")
MARK_START, MARK_END = "<!-- accuracy:start -->", "<!-- accuracy:end -->"
LATENT_SEARCH_STEPS = 200
# the harder dev suite: surfaces unlike PIPED, trained with no config at all (as `inspector train --data`)
SUITE = ("kolektor_sdd", "tire", "glass_fibre", "elpv_poly", "elpv_mono", "deeppcb")


def set_group(name: str) -> str:
    return "piped" if name.startswith("piped") else "mnist" if name.startswith("mnist") else name


def fmt(value, digits=3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def image_table(rows: list[dict]) -> list[str]:
    lines = ["| set | variant | input | MFLOPs/frame | score | image AUROC | AP | F1 @thr | FAR test/good | pixel AUROC "
             "| AUROC latent | AUROC latent kNN | AUROC latent LOF | AUROC res. mean | AUROC res. max | AUROC feat. res. "
             "| train s | steps | epochs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["components"]
        lines.append(f"| {r['set']} | {variant_label(r)} | {r['input']} | {r['mflops_per_frame']:.0f} | {score_cell(r)} | "
                     f"{fmt(r['image_auroc'])} | {fmt(r['average_precision'])} | {fmt(r['f1'])} | "
                     f"{fmt(r['false_alarm_rate'])} | {fmt(r['pixel_auroc'])} | {fmt(c.get('latent_distance'))} | "
                     f"{fmt(c.get('latent_knn'))} | {fmt(c.get('latent_lof'))} | {fmt(c.get('residual_mean'))} | "
                     f"{fmt(c.get('residual_max'))} | {fmt(c.get('feature_residual'))} | "
                     f"{r['train_seconds']:.0f} | {r['steps']} | {r['epochs']} |")
    lines += ["", "Means per group:", "", "| group | variant | rows | image AUROC | pixel AUROC | FAR test/good "
              "| AUROC latent | AUROC latent kNN | AUROC latent LOF | AUROC res. mean | AUROC res. max | AUROC feat. res. "
              "| train s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        group = set_group(r["set"])
        groups.setdefault((group, variant_label(r)), []).append(r)
    for (group, variant), rs in groups.items():
        aurocs = [r["image_auroc"] for r in rs if r["image_auroc"] is not None]
        pixels = [r["pixel_auroc"] for r in rs if r["pixel_auroc"] is not None]
        component_means = [fmt(np.mean([r["components"][c] for r in rs]) if all(c in r["components"] for r in rs)
                               else None) for c in COMPONENTS]
        lines.append(f"| {group} | {variant} | {len(rs)} | {fmt(np.mean(aurocs) if aurocs else None)} | "
                     f"{fmt(np.mean(pixels) if pixels else None)} | {fmt(np.mean([r['false_alarm_rate'] for r in rs]))} | "
                     + " | ".join(component_means) + f" | {np.mean([r['train_seconds'] for r in rs]):.0f} |")
    return lines


def table_table(rows: list[dict]) -> list[str]:
    fitted = {r["set"].split()[0]: r["train_rows"] for r in rows if r["variant"] == "isolation_forest"}
    lines = ["Every model is fitted on the same normal training rows (" + ", ".join(
                 f"{name}: {n:,}" for name, n in fitted.items()) + "; the one-class SVM on a 10,000-row subsample of "
             "them), with the same 10% of normal rows held out to calibrate its threshold.", "",
             "| test set | model | score | AUROC | AP | F1 @thr | FAR normal rows | self-check | AUROC latent "
             "| AUROC latent kNN | AUROC res. mean | AUROC res. max | AUROC feat. res. | fit s | steps | score s "
             "| rows/s scored |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r.get("components", {})
        lines.append(f"| {r['set']} | {variant_label(r)} | {r.get('score', '–')} | {fmt(r['auroc'])} | "
                     f"{fmt(r['average_precision'])} | {fmt(r['f1'])} | {fmt(r['false_alarm_rate'])} | "
                     f"{fmt(exported_check(r))} | "
                     f"{fmt(c.get('latent_distance'))} | {fmt(c.get('latent_knn'))} | {fmt(c.get('residual_mean'))} | "
                     f"{fmt(c.get('residual_max'))} | {fmt(c.get('feature_residual'))} | {r['fit_seconds']:.0f} | "
                     f"{steps_cell(r)} | {r['score_seconds']:.2f} | {r['rows_per_s']:,} |")
    return lines


def steps_cell(row: dict) -> str:
    """Training steps, with the blocks and what ended training when the length adapted (training.length)."""
    length = (row.get("selection") or {}).get("training_length")
    if not row.get("steps"):
        return "–"
    if not length or length["max_blocks"] == 1 or length["stopped_by"] == PLANNED:  # a fixed length
        return str(row["steps"])
    return f"{row['steps']} ({length['blocks']} x {length['block_steps']}; {length['stopped_by']})"


def exported_check(row: dict) -> float | None:
    """The self-check of the score the row's model was exported with (training.score_choice); None where
    its checkpoint was chosen otherwise (validation_loss records a loss, not a self-check)."""
    selection = row.get("selection") or {}
    return exported_self_check(selection) if selection.get("criterion") == "synthetic_auroc" else None


def score_cell(row: dict) -> str:
    """The row's score, with the weights the recipe chose when they are not all 1 (training.score_choice)."""
    chosen = ((row.get("selection") or {}).get("score_choice") or {}).get("chosen") or {}
    cell = row.get("score") or "–"
    if chosen and set(chosen) == set((row.get("score") or "").split("+")) and any(w != 1.0 for w in chosen.values()):
        cell = describe(dict(sorted(chosen.items())), digits=2)
    share = row.get("map_top_share")
    return f"top {100 * share:g}% of map ({cell})" if share else cell  # 1%, 0.3%: --set score.map_top_share=0.003 is not 0%


def suite_table(rows: list[dict]) -> list[str]:
    """The harder suite per variant: every set, then the mean and the worst set of each variant."""
    lines = ["Surfaces unlike PIPED, trained with no config (as `inspector train --data DIR`, which trains the "
             "rows 'backbone' since 2026-12-05, and since 2026-12-07 the rows 'backbone (score.memory_distance"
             "=smallest_ratio...)': a row that names no memory_distance was measured with the rule then the default, "
             "nearest, but for the rows 'backbone (train.augment.focus=...)', measured after it with smallest_ratio; "
             "'from_scratch': model.backbone: none, the default before; 'autoencoder' "
             "and 'anogan': --set model.family=..., from scratch). Self-check: the "
             "label-free synthetic-defect AUROC on held-out normal images at the exported checkpoint "
             "(selection.json); the reference has none.", "",
             "| set | variant | score | image AUROC | pixel AUROC | F1 @thr | FAR test/good | FAR x0.7 | FAR x1.3 "
             "| self-check | AUROC patch res. | AUROC patch kNN | MFLOPs/frame | train s | steps |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        by_variant.setdefault(variant_label(r), []).append(r)
    for variant, rs in by_variant.items():
        for r in rs:
            check = exported_check(r)
            dark, bright = (r.get("far_brightness") or {}).get("0.7"), (r.get("far_brightness") or {}).get("1.3")
            lines.append(f"| {r['set']} | {variant} | {score_cell(r)} | {fmt(r['image_auroc'])} | "
                         f"{fmt(r['pixel_auroc'])} | "
                         f"{fmt(r['f1'])} | {fmt(r['false_alarm_rate'])} | {fmt(dark)} | {fmt(bright)} | {fmt(check)} | "
                         f"{fmt(r['components'].get('patch_residual'))} | {fmt(r['components'].get('patch_knn'))} | "
                         f"{r['mflops_per_frame']:.0f} | {r['train_seconds']:.0f} | {steps_cell(r)} |")
        aurocs = [r["image_auroc"] for r in rs]
        worst = min(rs, key=lambda r: r["image_auroc"])
        lines.append(f"| **mean of {len(rs)}** | {variant} | | **{fmt(np.mean(aurocs))}** | | "
                     f"**{fmt(np.mean([r['f1'] for r in rs]))}** | {fmt(np.mean([r['false_alarm_rate'] for r in rs]))} "
                     f"| | | | | | | {np.mean([r['train_seconds'] for r in rs]):.0f} | |")
        lines.append(f"| worst: {worst['set']} | {variant} | | {fmt(worst['image_auroc'])} | | | | | | | | | | | |")
    lines.append("")
    for variant, rs in by_variant.items():
        checked = [(exported_check(r), r["image_auroc"]) for r in rs if exported_check(r) is not None]
        if len(checked) >= 3:
            from scipy.stats import spearmanr

            rho = spearmanr([c for c, _ in checked], [a for _, a in checked]).statistic
            lines.append(f"Rank correlation (Spearman) of the self-check with the real image AUROC, {variant} rows "
                         f"({len(checked)}): {rho:.2f}.  ")
        lines += component_lines(variant, rs)
        lines += f1_ceiling_line(variant, rs)
        lines += unusual_line(variant, rs)
        lines += focus_line(variant, rs)
    return lines


def focus_line(variant: str, rows: list[dict]) -> list[str]:
    """False alarms on test/good as photographed and blurred (benchmarks/focus.py); rows measured
    before the check existed have none and are left out."""
    measured = [r for r in rows if r.get("far_focus")]
    if not measured:
        return []
    cells = ", ".join(f"{r['set']} {r['false_alarm_rate']:.2f} / "
                      + " / ".join(f"{rate:.2f}" for rate in r["far_focus"].values()) for r in measured)
    sigmas = " / ".join(f"{sigma} px" for sigma in measured[0]["far_focus"])
    return [f"False alarms on test/good as photographed / blurred by a Gaussian of {sigmas} (a focus change), "
            f"{variant} rows: {cells}.  "]


def unusual_line(variant: str, rows: list[dict]) -> list[str]:
    """How many good training photos each run's summary named as scoring like defects
    (training.unusual_normals), with the threshold over the median normal score; rows measured before
    the check existed have no record and are left out."""
    measured = [r for r in rows if r.get("unusual_checked")]
    if not measured:
        return []
    cells = []
    for r in measured:
        record = (r.get("selection") or {}).get("unusual_normal")
        cells.append(f"{r['set']} none" if record is None else
                     f"{r['set']} {len(record['photos'])} (top {record['photos'][0]['times_median']:.2f}x the median, "
                     f"threshold {record['threshold_times_median']:.2f}x)")
    return [f"Good training photos the summary names as scoring like defects, {variant} rows: {', '.join(cells)}.  "]


def f1_ceiling_line(variant: str, rows: list[dict]) -> list[str]:
    """F1 at the card's threshold beside the best F1 any threshold reaches within 2% false alarms on
    test (chosen with the labels: a ceiling, not an operating point). Rows measured before it was
    recorded have none."""
    measured = [r for r in rows if r.get("best_f1_within_far") is not None]
    if not measured:
        return []
    cells = ", ".join(f"{r['set']} {r['f1']:.2f} / {r['best_f1_within_far']:.2f}" for r in measured)
    return [f"F1 at the card's threshold / best F1 of any threshold within 2% false alarms on test/good, "
            f"{variant} rows: {cells}; mean {np.mean([r['f1'] for r in measured]):.3f} / "
            f"{np.mean([r['best_f1_within_far'] for r in measured]):.3f}.  "]


def component_lines(variant: str, rows: list[dict]) -> list[str]:
    """Each score component's self-check next to its real AUROC (rows whose selection.json recorded them),
    and whether the recorded component the self-check ranks first is the best of them on the real defects."""
    sets, matches, counted = [], 0, 0
    for r in rows:
        checks = (r.get("selection") or {}).get("selected_components") or {}
        both = {name: (check, r["components"][name]) for name, check in checks.items()
                if r["components"].get(name) is not None}
        if len(both) < 2:
            continue
        cells = ", ".join(f"{name} {check:.2f} / {real:.2f}" for name, (check, real) in sorted(both.items()))
        picked = max(both, key=lambda name: both[name][0])
        counted += 1
        matches += both[picked][1] == max(real for _, real in both.values())
        sets.append(f"{r['set']}: {cells}")
    if not sets:
        return []
    return [f"Score components, self-check / real image AUROC of each alone, {variant} rows: " + "; ".join(sets)
            + f". Of these components, the one with the best self-check is the best on real defects on {matches} of "
            f"{counted} sets.  "]


def latent_search_table(rows: list[dict]) -> list[str]:
    lines = [f"Classic AnoGAN scores each item by {LATENT_SEARCH_STEPS} Adam steps on its latent code (the paper "
             "uses about 500); f-AnoGAN's encoder does it in one forward pass. Same trained model, same seeded "
             "subset of test items (both classes), same card score and threshold, measured in one run (torch, "
             "batched).", "",
             "| set | items | AUROC single pass | AUROC latent search | F1 single pass | F1 latent search "
             "| ms/item single pass | ms/item latent search | latent search / single pass time |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ls = r["latent_search"]
        one, search = ls["single_pass"], ls["latent_search"]
        lines.append(f"| {r['set']} | {ls['items']} | {fmt(one['image_auroc'])} | {fmt(search['image_auroc'])} | "
                     f"{fmt(one['f1'])} | {fmt(search['f1'])} | {one['ms_per_item']:.2f} | {search['ms_per_item']:.1f} | "
                     f"{ls['speedup']:.0f}x |")
    return lines + ["", latent_search_summary(rows)]


def latent_search_summary(rows: list[dict]) -> str:
    """One sentence over the rows: how often the single pass is as accurate, and how much faster."""
    pairs = [(r["latent_search"]["single_pass"]["image_auroc"], r["latent_search"]["latent_search"]["image_auroc"])
             for r in rows if r["latent_search"]["latent_search"]["image_auroc"] is not None]
    speedups = [r["latent_search"]["speedup"] for r in rows]
    return (f"Single pass as accurate as latent search or more on {sum(one >= search for one, search in pairs)} of "
            f"{len(pairs)} sets (mean AUROC {np.mean([p[0] for p in pairs]):.3f} vs {np.mean([p[1] for p in pairs]):.3f}); "
            f"latent search takes {np.median(speedups):.0f} times as long (median; {min(speedups):.0f}-"
            f"{max(speedups):.0f}x).")


def table(rows: list[dict], commands: list[str], notes: list[str] = ()) -> str:
    images = [r for r in rows if r.get("kind") != "table"]
    tables = [r for r in rows if r.get("kind") == "table"]
    measured = sorted({r.get("measured", "") for r in rows} - {""})
    lines = [MARK_START, "## Accuracy", "", "Commands:", ""] + [f"    {c}" for c in commands] + [
        "", f"Machine: {platform.node()} (2 cores), torch {torch.__version__}; rows measured "
        f"{measured[0] if measured else '?'} to {measured[-1] if measured else '?'}. Train times were measured while "
        "other work shared the machine: compare them within a table, not across runs.", "",
        "Thresholds: from held-out normal scores (20% of train/good, 10% of normal rows for tables) for a 1% "
        "false-alarm target (training/calibrate.py; the notes say which rows used which confidence); the exported checkpoint is chosen on the same held-out normal data (rows with a "
        "'selection' entry by its criterion: synthetic_auroc, validation_loss, or last = the final weights; see "
        "training/selection.py); nothing is tuned or selected on "
        "test data. AUROC / AP / F1 / FAR are measured on the "
        "exported .onnx through the inspector's scorer; the component columns give the torch AUROC of each score "
        "component on the same trained model, which is how the default score of each data kind is chosen."]
    suite = [r for r in images if r["set"] in SUITE]
    images = [r for r in images if r["set"] not in SUITE]
    if suite:
        lines += ["", "### The harder suite", ""] + suite_table(suite)
    if images:
        lines += ["", "### Images", ""] + image_table(images)
    if tables:
        lines += ["", "### Network traffic (one row per connection, W = 1)", ""] + table_table(tables)
    searched = [r for r in rows if "latent_search" in r]
    if searched:
        lines += ["", "### AnoGAN: single-pass encoder vs latent search", ""] + latent_search_table(searched)
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    lines.append(MARK_END)
    return "\n".join(lines)


def variant_label(row: dict) -> str:
    """The variant, with the --set overrides it ran under: those are another configuration."""
    settings = row.get("settings")
    return row["variant"] + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(settings.items())) + ")" if settings else "")


def latest_rows(paths: list[Path]) -> list[dict]:
    """The newest recorded row (by its 'measured' time; among equals, the later one read) for every
    (set, variant and settings), in first-seen order."""
    rows: dict[tuple[str, str], dict] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            key = (row["set"], variant_label(row))
            if key not in rows or row.get("measured", "") >= rows[key].get("measured", ""):
                rows[key] = row
    return list(rows.values())
