"""``pipetune report DIR``: render report.html again from a sweep's stored results."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", help="write report.html from a stored sweep")
    parser.add_argument("dir", help="the sweep's output folder")
    parser.add_argument("--output", type=Path, help="file to write (default DIR/report.html)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipetune.report import write_report
    from pipetune.store import load_outcome

    path = write_report(load_outcome(args.dir), args.output)
    print(f"wrote {path}")
    return 0
