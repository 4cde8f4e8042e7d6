"""`inspector reviews ...`: take the labels out of the review database, and manage the page's users."""

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
