"""``pipetune emit DIR [--rank N]``: write best_pipeline.py again from stored results."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("emit", help="write best_pipeline.py from a stored sweep")
    parser.add_argument("dir", help="the sweep's output folder")
    parser.add_argument("--rank", type=int, default=1, help="emit the Nth best (default 1)")
    parser.add_argument("--output", type=Path, help="file to write (default DIR/best_pipeline.py)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipetune.emit import write_best
    from pipetune.store import load_outcome

    path = write_best(load_outcome(args.dir), args.rank, args.output)
    print(f"wrote {path}")
    return 0
