"""`inspector` command line: score, run and inspect with the runtime; packages add their own
subcommands through the `qinspector.commands` entry point (training: train, evaluate, demo, whose
modules are imported only when those subcommands run: the runtime never needs torch).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from importlib.metadata import entry_points
from pathlib import Path

from . import __version__, init, publish
from .review import commands as review_commands
from .errors import ConfigError, InspectorError

COMMAND_GROUP = "qinspector.commands"
TRAIN_EXTRA_MODULES = {"torch", "onnx", "sklearn", "matplotlib", "tqdm"}
TRAIN_EXTRA_HINT = (
    "this subcommand needs the training extra (torch); install it with: pip install 'qinspector[train]' "
    "(or: bash scripts/setup.sh)"
)

EPILOG = """\
typical use:
  inspector demo                                          synthetic parts: train, calibrate, export, evaluate
  inspector train --data ../shared/data/piped/PA_BDP01_TL --out runs/bdp01
  inspector train -c configs/piped_bdp01.yaml --out runs/bdp01
  inspector evaluate runs/bdp01/model.onnx --data ../shared/data/piped/PA_BDP01_TL
  inspector evaluate runs/x/model.onnx --data DATA --latent-search 200 --limit 40   anogan: why the encoder exists
  inspector score runs/bdp01/model.onnx part1.png part2.png    one JSON line per image
  inspector card runs/bdp01/model.onnx                          print the model card
  inspector init runs/bdp01/model.onnx --camera 0 --out line.yaml   a daemon config for a camera, checked
  inspector run -c configs/line1.yaml                           the streaming daemon (metrics on :9108)
  inspector publish redis://127.0.0.1:6379/0 flows --table flows.csv    rows into a stream for redis_stream sources
  inspector reviews export journal/reviews.sqlite3 --format csv   the review page's labels
  inspector retrain runs/bdp01 --reviews journal/reviews.sqlite3   learn the reviewed false alarms: a candidate
  inspector recalibrate runs/bdp01 --good new_good_photos/         a new threshold only: a candidate
  inspector shadow report journal/shadow.jsonl --reviews journal/reviews.sqlite3
  inspector promote runs/bdp01/candidate.onnx --to line/model.onnx --reviews journal/reviews.sqlite3
"""


def _add_score(sub) -> None:
    p = sub.add_parser("score", help="score image files or traffic tables; one JSON line per item on stdout",
                       description="Score image files (image model) or CSV / JSON-lines tables, gzip allowed "
                       "(traffic model) with a model.onnx. Prints one JSON object per image or window: score "
                       "(raw), normalised (1.0 = threshold), verdict; or rejected with the reason. Exit status 0 "
                       "when every item was scored, 1 when any was rejected.")
    p.add_argument("model", type=Path)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--threshold", type=float, help="override the card's threshold")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = all cores)")
    p.add_argument("--batch", type=int, default=32, help="images per inference batch")
    p.add_argument("--header", action="store_true", help="tables: the first line is a header to skip")
    p.set_defaults(handler=_score)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inspector", description=__doc__.split("\n\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in _command_plugins():
        register(sub)
    _add_score(sub)
    p = sub.add_parser("run", help="the inspector daemon: stream sources through the model, serve metrics",
                       description="Run the inspector daemon described by a YAML config (see configs/line1.yaml): "
                       "sources -> bounded queues -> micro-batches -> model -> journal, evidence, Prometheus metrics "
                       "on /metrics and /healthz. SIGTERM or Ctrl-C drains the queues and exits 0.")
    p.add_argument("-c", "--config", type=Path, required=True)
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit once every source has finished (video files without loop), after draining")
    p.add_argument("--check", action="store_true", help="validate the config and the model, read one frame from "
                   "each live camera, then exit")
    p.set_defaults(handler=_run)
    publish.add_parser(sub)
    sub.choices["publish"].set_defaults(handler=publish.run)
    review_commands.add_parser(sub)
    init.add_parser(sub)
    sub.choices["init"].set_defaults(handler=init.run)
    p = sub.add_parser("card", help="print a model's card (JSON)")
    p.add_argument("model", type=Path)
    p.set_defaults(handler=_card)
    return parser


def _score_table(scorer, path: Path, header: bool) -> int:
    """One JSON line per window of a CSV / JSON-lines table (gzip allowed); returns rejected rows."""
    import gzip

    from .card import TabularInput
    from .errors import ItemRejected
    from .features import encode_rows, parse_csv_line, parse_json_line, windows

    spec: TabularInput = scorer.card.input
    parse = parse_json_line if ".jsonl" in path.suffixes or ".json" in path.suffixes else parse_csv_line
    opener = gzip.open if path.suffix == ".gz" else open
    rows, origins, out = [], [], []  # out: (line number, JSON object), printed in line order
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if (number == 1 and header) or not line.strip():
                continue
            try:
                rows.append(parse(line, spec, f"{path}:{number}"))
                origins.append(number)
            except ItemRejected as rejected:
                out.append((number, {"file": str(path), "line": number, "rejected": rejected.reason, "error": str(rejected)}))
    encoded = encode_rows(rows, spec, [f"{path}:{n}" for n in origins])
    for row, rejected in encoded.rejected:
        out.append((origins[row], {"file": str(path), "line": origins[row], "rejected": rejected.reason, "error": str(rejected)}))
    failed = len(out)
    features, starts = windows(encoded.features, spec.window, spec.stride)
    for start, result in zip(starts, scorer.score_features(features)):
        number = origins[encoded.kept[start + spec.window - 1]]  # a window is reported at its last row
        out.append((number, {"file": str(path), "line": number, "score": round(result.raw, 6),
                             "normalised": round(result.normalised, 6), "verdict": result.verdict}))
    for _, line in sorted(out, key=lambda entry: entry[0]):
        print(json.dumps(line))
    return failed


def _score(args) -> int:
    from .card import TabularInput
    from .scorer import Scorer

    scorer = Scorer(args.model, threshold=args.threshold, intra_op_threads=args.threads)
    if isinstance(scorer.card.input, TabularInput):
        return 1 if sum(_score_table(scorer, path, args.header) for path in args.files) else 0
    files = _expand_folders(args.files)
    failed = 0
    for start in range(0, len(files), args.batch):
        chunk = files[start:start + args.batch]
        for path, result in zip(chunk, scorer.score_files(chunk, max_batch=args.batch, heatmaps=False)):
            if result.rejected:
                failed += 1
                line = {"file": str(path), "rejected": result.reason, "error": result.message}
            else:
                line = {"file": str(path), "score": round(result.raw, 6), "normalised": round(result.normalised, 6),
                        "verdict": result.verdict, "threshold": scorer.threshold}
            print(json.dumps(line), flush=True)
    return 1 if failed else 0


def _expand_folders(paths: list[Path]) -> list[Path]:
    """Each folder stands for the images directly in it, in name order; an empty one is an error."""
    from .image_files import list_images

    files = []
    for path in paths:
        if path.is_dir():
            images = list_images(path)
            if not images:
                raise InspectorError(f"{path}: a folder with no images in it")
            files += images
        else:
            files.append(path)
    return files


def _run(args) -> int:
    from .config import load_daemon_config
    from .daemon import Daemon, configure_logging

    config = load_daemon_config(args.config)
    configure_logging(config.logging.level, config.logging.format)
    try:
        daemon = Daemon(config, exit_when_done=args.exit_when_done)
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith(str(args.config)) else f"{args.config}: {message}") from None
    if args.check:
        sizes = _camera_frame_sizes(config, args.config)
        opened = [f"{name} delivered a {width}x{height} frame" for name, (width, height, live, _) in sizes.items() if live]
        print(f"{args.config}: ok (model {daemon.model.scorer.card.name} {daemon.model.version}, "
              f"{len(daemon.sources)} source(s){''.join(f'; {line}' for line in opened)})")
        for line in _frame_costs(daemon.model.scorer, sizes, config):
            print(line)
        return 0
    daemon.install_signal_handlers()
    return daemon.run()


def _camera_frame_sizes(config, path: Path) -> dict[str, tuple[int, int, bool, tuple]]:
    """--check reads one frame from every camera source: {name: (width, height, live, regions of interest)}. A live camera
    (device or URL) that does not open fails the check, where the daemon would retry it for ever."""
    from .init import open_capture
    from .settings import redact_url

    sizes = {}
    for source in config.sources:
        if source.kind == "camera":
            shown = redact_url(source.uri) if isinstance(source.uri, str) else f"camera {source.uri}"
            width, height = open_capture(source.uri, f"{path}: sources ({source.name}): {shown}")
            for region in source.regions:
                if region.x + region.width > width or region.y + region.height > height:
                    raise ConfigError(f"{path}: sources ({source.name}).roi: region {region.describe()} reaches past "
                                      f"the {width}x{height} frames {shown} delivers")
            sizes[source.name] = (width, height, not source.is_file, source.regions)
    return sizes


def _frame_costs(scorer, sizes: dict[str, tuple[int, int, bool, tuple]], config) -> list[str]:
    """Per camera: model runs and FLOPs per frame at its size (in its regions of interest, when it
    has some), the frames/s the model alone allows on this machine, and the frames/s the daemon's
    pipeline reaches with this config's batching (measured: inspector.line_rate)."""
    from .card import ImageInput
    from .frame_cost import frame_cost, measure_inputs_per_second, proportion_warning, regions_cost
    from .line_rate import line_frames_per_second

    spec = scorer.card.input
    if not sizes or not isinstance(spec, ImageInput):
        return []
    flops = scorer.card.export.flops_per_item if scorer.card.export else None
    rate = measure_inputs_per_second(scorer)
    batching = config.batching
    lines = []
    for name, (width, height, _, regions) in sizes.items():
        cost = regions_cost(spec, height, width, regions, flops) if regions else frame_cost(spec, height, width, flops)
        line_rate = line_frames_per_second(scorer.path, height, width, tuple(regions), workers=batching.workers,
                                           intra_op_threads=config.model.intra_op_threads,
                                           max_batch=batching.max_batch)
        lines.append(f"{name}: {cost.describe(rate)}; through the daemon's pipeline here {line_rate:,.1f} frames/s "
                     f"({width}x{height} JPEG frames decoded, {batching.workers} worker(s), journaled)")
        scored = [(r.height, r.width, (r.x, r.y), f" (region {r.describe()})") for r in regions] or [
            (height, width, (0, 0), "")]
        for scored_height, scored_width, origin, where in scored:
            warning = proportion_warning(scorer.card, scored_height, scored_width, origin)
            if warning:
                lines.append(f"{name}{where}: warning: {warning}")
    return lines


def _card(args) -> int:
    from .scorer import Scorer

    print(json.dumps(Scorer(args.model).card.model_dump(mode="json"), indent=2))
    return 0


def _command_plugins() -> list:
    """`register(subparsers)` functions of the packages that add subcommands (entry point group
    `qinspector.commands`; training adds train, evaluate and demo): the runtime names none of them."""
    return [entry.load() for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name)]


def _resolve(handler):
    """A subcommand's handler: a function, or "module:function" imported now (plugins load lazily)."""
    if callable(handler):
        return handler
    module, _, name = handler.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        try:
            handler = _resolve(args.handler)
        except ImportError as exc:
            if exc.name and exc.name.split(".")[0] in TRAIN_EXTRA_MODULES:
                print(f"inspector {args.command}: {TRAIN_EXTRA_HINT}", file=sys.stderr)
                return 2
            raise
        return handler(args)
    except InspectorError as exc:
        print(f"inspector {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
