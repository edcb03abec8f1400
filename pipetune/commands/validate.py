"""``pipetune validate SPEC``: exit 0, or exit 2 with one line per problem."""

from __future__ import annotations

import argparse

from pipetune.validate import load_spec


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("validate", help="check a dataset spec and a sample of its data")
    parser.add_argument("spec", help="path to data.yaml")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipetune.datacheck import NEEDS_TENSORFLOW, cheap_check, check_data, tensorflow_available

    spec = load_spec(args.spec)
    if tensorflow_available():
        check_data(spec)
        checked = "data sample parsed"
    else:
        cheap_check(spec)
        print(NEEDS_TENSORFLOW)
        checked = "data not parsed"
    print(f"{args.spec}: ok ({spec.name}, source {spec.source.kind}, {len(spec.preprocess)} "
          f"preprocess ops, {checked})")
    return 0
