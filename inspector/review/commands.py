"""The operator's loop on the command line: `inspector reviews` (export labels, add page users),
`inspector shadow report` (a candidate against the active model and the reviews), `inspector shadow score`
(the same test offline, on reviewed frames and image files) and `inspector promote`."""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import sys
from pathlib import Path

from ..errors import InspectorError

EXPORT_FIELDS = ("review_id", "reviewed_at", "reviewer", "label", "note", "item_id", "run", "source", "seq", "origin",
                 "captured_at", "model_version", "score", "normalised", "threshold", "verdict", "evidence", "frame")


def add_parser(sub) -> None:
    p = sub.add_parser("reviews", help="export the review page's labels; add users who may log in to it",
                       description="The review page keeps every label in SQLite (review.database in the daemon "
                       "config, default journal/reviews.sqlite3). Export them for a spreadsheet or for retraining, "
                       "or add a user to the users file the page needs off loopback.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="every review (append-only history) with its item, as CSV or JSON lines",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  inspector reviews export journal/reviews.sqlite3 --format csv --out reviews.csv")
    export.add_argument("database", type=Path)
    export.add_argument("--format", choices=("csv", "jsonl"), default="jsonl")
    export.add_argument("--out", type=Path, help="write here instead of standard output")
    export.set_defaults(handler=export_reviews)
    user = actions.add_parser("add-user", help="add (or change the password of) a user in a users file",
                              description="The password is read from the terminal (twice), or from standard input "
                              "when it is not a terminal. Only a salted scrypt hash is written.")
    user.add_argument("users_file", type=Path)
    user.add_argument("name")
    user.set_defaults(handler=add_user_command)

    p = sub.add_parser("shadow", help="report on a shadow test: the candidate's decisions beside the active model's",
                       description="With shadow: {model: CANDIDATE} in the daemon config, the candidate scores every "
                       "item beside the active model and its decisions go to journal/shadow.jsonl. The report "
                       "counts the alarms of each and their disagreements and, with --reviews, the reviewed false "
                       "alarms the candidate fixes and the confirmed defects it still catches. `score` runs the same test "
                       "offline, without a daemon, on reviewed frames and image files.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    report = actions.add_parser("report", help="compare the candidate with the active model (and the reviews)")
    report.add_argument("journal", type=Path, help="the shadow journal (default location journal/shadow.jsonl)")
    report.add_argument("--reviews", type=Path, help="the review database, to count fixed false alarms and kept defects")
    report.add_argument("--json", action="store_true", help="print the report as one JSON object")
    report.set_defaults(handler=shadow_report_command)
    offline = actions.add_parser(
        "score", help="shadow-test offline: score reviewed frames and image files with both models, then report",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="No daemon needed: the candidate and the active model score every reviewed item's kept frame "
        "(with --reviews) and the image files given (files or folders), the lines go to a shadow journal, and the "
        "report follows: alarms of each, disagreements, reviewed false alarms fixed, confirmed defects still caught.",
        epilog="example:\n  inspector shadow score runs/my_parts/retrained-<time>/model.onnx --active runs/my_parts/model.onnx "
               "\\\n      --reviews journal/reviews.sqlite3 --photos new_good_photos/")
    offline.add_argument("candidate", type=Path)
    # an option, not a trailing positional: argparse drops positionals given after --active / --reviews
    offline.add_argument("--photos", dest="paths", type=Path, nargs="+", action="extend", default=[], metavar="PATH",
                         help="image files or folders to score as well (new photos of good parts, a recorded batch)")
    offline.add_argument("--active", type=Path, required=True, help="the active model file")
    offline.add_argument("--reviews", type=Path, help="the review database: its reviewed frames are scored and its labels joined")
    offline.add_argument("--journal", type=Path, help="where the lines go (default shadow-offline.jsonl beside the "
                         "review database, else in the current folder); overwritten")
    offline.add_argument("--json", action="store_true", help="print the report as one JSON object")
    offline.add_argument("--no-progress", action="store_true")
    offline.set_defaults(handler=shadow_score_command)

    p = sub.add_parser("promote", help="put a candidate model in the active model's place (the daemon hot-swaps it)",
                       description="Replace the active model file by the candidate with an atomic rename; a running "
                       "daemon swaps it in between batches after its self-test. With --reviews, refused when the "
                       "candidate misses a confirmed defect the active model caught (its frame is re-scored). The "
                       "replaced file is kept as <name>.previous.onnx: promote that one to undo.")
    p.add_argument("candidate", type=Path)
    p.add_argument("--to", type=Path, required=True, dest="active", help="the active model file (model.path of the daemon)")
    p.add_argument("--reviews", type=Path, help="the review database whose confirmed defects the candidate must keep catching")
    p.add_argument("--force", action="store_true", help="promote even when the candidate misses a confirmed defect")
    p.set_defaults(handler=promote_command)


def _open_existing(path: Path):
    from .store import ReviewStore, ReviewStoreError

    if not path.is_file():
        raise InspectorError(f"{path}: no review database there (the daemon creates it when review: is configured)")
    try:
        return ReviewStore(path)
    except ReviewStoreError as exc:
        raise InspectorError(str(exc)) from None


def export_reviews(args) -> int:
    store = _open_existing(args.database)
    out = args.out.open("w", newline="") if args.out else sys.stdout
    count = 0
    try:
        if args.format == "csv":
            writer = csv.DictWriter(out, fieldnames=EXPORT_FIELDS)
            writer.writeheader()
        for row in store.reviews():
            count += 1
            if args.format == "csv":
                writer.writerow(row)
            else:
                out.write(json.dumps(row) + "\n")
    finally:
        if args.out:
            out.close()
    print(f"{count} review(s) exported" + (f" to {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def add_user_command(args) -> int:
    from .security import add_user

    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            raise InspectorError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    try:
        add_user(args.users_file, args.name, password)
    except ValueError as exc:
        raise InspectorError(str(exc)) from None
    print(f"{args.users_file}: {args.name} can log in to the review page")
    return 0


def shadow_report_command(args) -> int:
    from .shadow import shadow_report

    if not args.journal.exists():
        raise InspectorError(f"{args.journal}: no shadow journal there (configure shadow: in the daemon config)")
    print_shadow_report(shadow_report(args.journal, args.reviews), args.json)
    return 0


def shadow_score_command(args) -> int:
    from ..scorer import Scorer
    from .shadow import offline_frames, offline_shadow, shadow_report

    if args.reviews is not None:
        _open_existing(args.reviews).close()
    if not args.paths and args.reviews is None:
        raise InspectorError("nothing to score: give --photos FILES/FOLDERS, or --reviews DB (its reviewed frames)")
    for path in args.paths:
        if not path.exists():
            raise InspectorError(f"{path}: no such file or folder")
    active, candidate = Scorer(args.active), Scorer(args.candidate)
    frames, missing = offline_frames(args.paths, args.reviews)
    if not frames:
        raise InspectorError("nothing to score: no reviewed frames kept and no image files found")
    journal = args.journal or (args.reviews.parent if args.reviews else Path(".")) / "shadow-offline.jsonl"
    rejected = offline_shadow(active, candidate, frames, journal, progress=not args.no_progress)
    if not args.json:
        print(f"{len(frames) - len(rejected)} frame(s) scored by both models -> {journal}"
              + (f" ({missing} reviewed item(s) without a kept frame)" if missing else ""))
    if rejected:
        print(f"{len(rejected)} frame(s) not scored, e.g. {rejected[0]}", file=sys.stderr)
    print_shadow_report(shadow_report(journal, args.reviews), args.json)
    return 0


def print_shadow_report(report: dict, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps(report))
        return
    print(f"{report['items']} items scored by both ({', '.join(report['models']) or 'no models'})")
    print(f"alarms: active {report['active_alarms']}, candidate {report['candidate_alarms']}; only the candidate "
          f"{report['candidate_only_alarms']}, only the active model {report['active_only_alarms']}")
    if "reviewed_false_alarms" in report:
        print(f"reviewed false alarms the candidate fixes: {report['false_alarms_fixed']} of {report['reviewed_false_alarms']}")
        print(f"confirmed defects the candidate still catches: {report['defects_still_caught']} of "
              f"{report['confirmed_defects']}" + "".join(f"\n  missed: {name}" for name in report["defects_missed"]))


def promote_command(args) -> int:
    from .promote import promote

    check = promote(args.candidate, args.active, args.reviews, args.force)
    print(f"promoted {args.candidate} -> {args.active} (the previous model is {args.active.stem}.previous.onnx); "
          "a running daemon swaps it in after its self-test")
    if check is not None:
        print(f"confirmed defects the active model caught: the candidate catches {check.still_caught} of "
              f"{check.confirmed_caught}" + (f" ({check.without_frame} without a frame not checked)" if check.without_frame else "")
              + ("; promoted with --force" if check.missed else ""))
    return 0
