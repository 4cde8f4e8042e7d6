"""`inspector init`: write a commented daemon config for one model and one source, after checking
that both open, so a newcomer's first `inspector run` starts on something that works.

    inspector init runs/parts/model.onnx --camera 0 --out line.yaml
    inspector init runs/parts/model.onnx --rtsp rtsp://user:pass@192.0.2.10/stream1
    inspector init runs/parts/model.onnx --folder /srv/line1/incoming
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .errors import ConfigError
from .settings import redact_url

OPEN_TIMEOUT_S = 10.0


def add_parser(sub) -> None:
    p = sub.add_parser("init", help="write a commented daemon config for a model and a camera, stream or folder",
                       description="Check that the model loads and the source opens (one frame is read from a "
                       "camera, stream or video; a folder must exist), then write a daemon config with every "
                       "section commented. Run it with: inspector run -c FILE.")
    p.add_argument("model", type=Path, help="the model.onnx that training wrote")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--camera", type=int, metavar="INDEX", help="a USB / built-in camera: device index (0 = /dev/video0)")
    where.add_argument("--rtsp", metavar="URL", help="a network camera: rtsp:// or http(s):// URL")
    where.add_argument("--video", type=Path, metavar="FILE", help="a video file (paced at its frame rate)")
    where.add_argument("--folder", type=Path, metavar="DIR", help="a folder where images of parts arrive")
    p.add_argument("--out", type=Path, default=Path("line.yaml"), help="config file to write (default line.yaml)")
    p.add_argument("--name", default="line1", help="source name, the `source` label in metrics (default line1)")
    p.add_argument("--port", type=int, default=9108, help="port of /metrics and /healthz on 127.0.0.1 (default 9108)")
    p.add_argument("--review-port", type=int, default=9109,
                   help="port of the operator's review page on 127.0.0.1 (default 9109; 0 = no review page)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def open_capture(target, label: str) -> tuple[int, int]:
    """Read one frame, opened as the daemon's camera source opens it; (width, height), or ConfigError
    saying what did not open."""
    from .sources.camera import video_capture

    capture = video_capture(target, OPEN_TIMEOUT_S)
    try:
        if not capture.isOpened():
            hint = " (ls /dev/video* lists the cameras this machine sees)" if isinstance(target, int) else ""
            raise ConfigError(f"{label}: cannot open it{hint}")
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        while time.monotonic() < deadline:
            ok, frame = capture.read()
            if ok and frame is not None and frame.size:
                return frame.shape[1], frame.shape[0]
        raise ConfigError(f"{label}: opened, but no frame arrived within {OPEN_TIMEOUT_S:.0f} s")
    finally:
        capture.release()


def _source(args) -> tuple[list[str], str, tuple[int, int] | None]:
    """The source's YAML lines, a sentence on what was checked, and the frame size (height, width) read."""
    if args.folder is not None:
        if not args.folder.is_dir():
            raise ConfigError(f"--folder {args.folder}: no such folder (create it, or point at the one the camera "
                              f"software writes to)")
        return ["    kind: folder             # new images here are scored; then moved to done/ (rejected/ if "
                "unreadable)",
                f"    path: {args.folder.resolve()}",
                "    settle_s: 0.3            # a file unchanged this long counts as completely written",
                "    move_processed: true"], f"folder {args.folder} exists", None
    if args.camera is not None:
        target, label, uri = args.camera, f"--camera {args.camera}", str(args.camera)
        extra = ["    reconnect: {initial_s: 0.5, max_s: 30, factor: 2}   # unplugged: retried with backoff",
                 "    stale_after_s: 10        # no frame this long: /healthz answers 503 with the reason"]
    elif args.rtsp is not None:
        if "://" not in args.rtsp:
            raise ConfigError(f"--rtsp {redact_url(args.rtsp)}: expected a URL such as rtsp://HOST/PATH")
        target, label, uri = args.rtsp, f"--rtsp {redact_url(args.rtsp)}", f'"{args.rtsp}"'
        extra = ["    reconnect: {initial_s: 0.5, max_s: 30, factor: 2}   # network loss: retried with backoff",
                 "    read_timeout_s: 5        # a stream silent this long is reopened",
                 "    stale_after_s: 10        # no frame this long: /healthz answers 503 with the reason"]
    else:
        if not args.video.is_file():
            raise ConfigError(f"--video {args.video}: no such file")
        target, label, uri = str(args.video.resolve()), f"--video {args.video}", str(args.video.resolve())
        extra = ["    realtime: true           # pace frames at the file's frame rate, as a camera would",
                 "    loop: false              # true: start again at the end"]
    width, height = open_capture(target, label)
    lines = ["    kind: camera             # cv2.VideoCapture: device index, video file, or rtsp:// / http:// URL",
             f"    uri: {uri}", *extra]
    return lines, f"{label.split(' ', 1)[0].lstrip('-')} delivered a {width}x{height} frame", (height, width)


def run(args) -> int:
    from .scorer import Scorer

    if args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} exists; choose another --out or add --force to overwrite it")
    scorer = Scorer(args.model)
    card = scorer.card
    if card.input.kind != "image":
        raise ConfigError(f"{args.model}: a traffic model; init writes configs for cameras and folders (see "
                          f"configs/line1.yaml for a traffic source)")
    source, checked, size = _source(args)
    base = args.out.resolve().parent
    model_path = os.path.relpath(args.model.resolve(), base)
    text = "\n".join([
        f"# Inspector daemon config written by `inspector init` for model {card.name} {card.version}.",
        "# Run: inspector run -c " + str(args.out) + "    (relative paths are relative to this file)",
        "# Check it without starting: inspector run -c " + str(args.out) + " --check",
        "model:",
        f"  path: {model_path}",
        f"  threshold: null            # null = the calibrated {scorer.threshold:.4g} from the model card; a number "
        "overrides it",
        "  watch_interval_s: 2        # replace the file atomically (mv) to hot-swap the model",
        "sources:",
        f"  - name: {args.name}",
        *source,
        "batching: {max_batch: 32, max_wait_ms: 5, workers: 2}",
        "queue: {size: 256}           # per source; a live camera drops the oldest frames when full",
        f"metrics: {{host: 127.0.0.1, port: {args.port}}}   # /metrics for Prometheus, /healthz for the supervisor",
        "journal: {path: journal/decisions.jsonl}  # one JSON line per decision",
        "evidence: {dir: evidence, max_files: 1000}  # anomalies as PNG: the frame and its heatmap",
        "logging: {level: INFO, status_interval_s: 10}",
        *([f"review: {{port: {args.review_port}}}   # the operator's review page, http://127.0.0.1:{args.review_port}/ "
           "(labels in journal/reviews.sqlite3)"] if args.review_port else []),
        "# Verdicts to a PLC or reject gate (MQTT, OPC UA): see the README, 'Verdicts to the line'.",
        ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}: model {card.name} loads, {checked}.")
    if size is not None:
        from .frame_cost import frame_cost, measure_inputs_per_second, proportion_warning

        cost = frame_cost(card.input, *size, card.export.flops_per_item if card.export else None)
        print(f"cost: {cost.describe(measure_inputs_per_second(scorer))}")
        warning = proportion_warning(card, *size)
        if warning:
            print(f"warning: {warning}")
    page = f", review page on http://127.0.0.1:{args.review_port}/" if args.review_port else ""
    print(f"next: inspector run -c {args.out}   (metrics on http://127.0.0.1:{args.port}/metrics{page})")
    return 0
