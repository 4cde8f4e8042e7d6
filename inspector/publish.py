"""`inspector publish`: put a table's rows, a video's frames or a folder's images into a Redis stream.

The producer side of a `redis_stream` source, for tests, demos and replaying a recording: rows go in
field `row` (one CSV line or JSON object each), frames in field `image` (PNG or JPEG bytes) with
`camera` and `captured_at`. Entries are sent in pipelined chunks; `--rate` paces them (entries/s).
"""

from __future__ import annotations

import gzip
import os
import sys
import time
from pathlib import Path
from typing import Iterator

import cv2

from .errors import ConfigError
from .image_files import ACCEPTED_FORMATS, list_images, read_image

CHUNK = 500


def add_parser(sub) -> None:
    p = sub.add_parser("publish", help="send a table's rows, a video's frames or a folder's images into a Redis stream",
                       description="Producer for redis_stream sources: each row, frame or image becomes one stream "
                       "entry (XADD). Several inspectors in one consumer group then share the entries.")
    p.add_argument("url", help="redis://host:port/db (no password here: use --password-env)")
    p.add_argument("stream", help="stream key")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--table", type=Path, help="CSV or JSON-lines file of flow records (gzip allowed): one entry per line")
    what.add_argument("--video", help="video file or camera URL: one entry per frame")
    what.add_argument("--folder", type=Path, help="folder of images: one entry per file, in name order")
    p.add_argument("--header", action="store_true", help="--table: skip the first line")
    p.add_argument("--rate", type=float, default=0, help="entries per second (default: as fast as possible)")
    p.add_argument("--limit", type=int, default=0, help="stop after this many entries")
    p.add_argument("--camera", default="", help="frames: the camera name in each entry (default: the file name)")
    p.add_argument("--encoding", choices=("png", "jpg"), default="png", help="frames from a video: how to encode them")
    p.add_argument("--maxlen", type=int, default=0, help="trim the stream to about this many entries (XADD MAXLEN ~)")
    p.add_argument("--password-env", help="environment variable holding the Redis password")
    p.add_argument("--username", help="Redis ACL user (with --password-env)")


def _rows(path: Path, header: bool) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        handle = opener(path, "rb")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with handle:
        if header:
            handle.readline()
        for line in handle:
            line = line.rstrip(b"\r\n")
            if line:
                yield {"row": line}


def _video(uri: str, camera: str, encoding: str) -> Iterator[dict]:
    capture = cv2.VideoCapture(int(uri) if uri.isdigit() else uri)
    if not capture.isOpened():
        raise ConfigError(f"{uri}: cannot open the video")
    name = camera or Path(uri).name
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            ok, encoded = cv2.imencode(f".{encoding}", frame)
            if ok:
                yield {"image": encoded.tobytes(), "camera": name, "captured_at": repr(time.time())}
    finally:
        capture.release()


def _folder(folder: Path, camera: str) -> Iterator[dict]:
    if not folder.is_dir():
        raise ConfigError(f"{folder}: not a folder")
    paths = list_images(folder)  # the formats and name order of every other reader of image folders
    if not paths:
        raise ConfigError(f"{folder}: no images ({ACCEPTED_FORMATS}) in this folder")
    for path in paths:
        read_image(path)  # refuse what the inspector could not decode, here, with the file's name
        yield {"image": path.read_bytes(), "camera": camera or path.name, "captured_at": repr(time.time())}


def run(args) -> int:
    import redis

    password = os.environ.get(args.password_env) if args.password_env else None
    if args.password_env and password is None:
        raise ConfigError(f"--password-env: environment variable {args.password_env} is not set")
    client = redis.Redis.from_url(args.url, username=args.username, password=password)
    entries = (_rows(args.table, args.header) if args.table else _video(args.video, args.camera, args.encoding)
               if args.video else _folder(args.folder, args.camera))
    started = time.perf_counter()
    sent = 0
    chunk = 1 if args.rate and args.rate < 2 * CHUNK else CHUNK
    try:
        pipe = client.pipeline(transaction=False)
        for fields in entries:
            pipe.xadd(args.stream, fields, maxlen=args.maxlen or None, approximate=True)
            sent += 1
            if sent % chunk == 0:
                pipe.execute()
                if args.rate:
                    time.sleep(max(0.0, started + sent / args.rate - time.perf_counter()))
            if args.limit and sent >= args.limit:
                break
        pipe.execute()
    except redis.ConnectionError as exc:
        raise ConfigError(f"{args.url}: cannot reach Redis ({exc})") from None
    elapsed = time.perf_counter() - started
    print(f"published {sent} entries to {args.stream} in {elapsed:.2f} s ({sent / max(elapsed, 1e-9):.0f}/s)",
          file=sys.stderr)
    return 0
