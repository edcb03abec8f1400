"""``pipetune validate SPEC``: exit 0, or exit 2 with one line per problem."""

from __future__ import annotations

import argparse

from pipetune.validate import load_spec


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("validate", help="check a dataset spec without running anything")
    parser.add_argument("spec", help="path to data.yaml")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec)
    print(f"{args.spec}: ok ({spec.name}, source {spec.source.kind}, {len(spec.preprocess)} preprocess ops)")
    return 0
