"""``pipetune shard SPEC --shards N --out DIR``: write the source as the TFRecord layout that
``best_pipeline.py`` reads, for the full data set or a new one."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipetune.dimensions import BY_NAME


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("shard", help="write the spec's source as TFRecord shards for best_pipeline.py")
    parser.add_argument("spec", help="path to data.yaml")
    parser.add_argument("--shards", type=_positive, required=True, help="number of shard files")
    parser.add_argument("--compression", choices=BY_NAME["compression"].annotation.__args__,
                        default="none", help="record compression (default none)")
    parser.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipetune import sources
    from pipetune.device import require_tensorflow
    from pipetune.validate import load_spec

    spec = load_spec(args.spec)
    require_tensorflow()
    shard_set = sources.export_shards(spec, args.shards, args.compression, args.out)
    suffix = "".join(Path(shard_set.files[0]).suffixes)
    pattern = str(Path(shard_set.files[0]).parent / f"*{suffix}")
    print(f"{len(shard_set.files)} shard(s), {shard_set.manifest.num_examples} examples in {args.out}; "
          f"use them with make_dataset(file_pattern={pattern!r})")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, but got {value}")
    return value
