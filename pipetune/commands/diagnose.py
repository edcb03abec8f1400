"""``pipetune diagnose SPEC``: where the pipeline's time goes, in seconds, before any search."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("diagnose", help="measure stage rates, sizes and the consumer; name the bottleneck")
    parser.add_argument("spec", help="path to data.yaml")
    parser.add_argument("--out", type=Path, help="output folder (default: reports/<spec name>/)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipetune.commands.printing import print_json
    from pipetune.device import require_tensorflow
    from pipetune.diagnose import diagnose
    from pipetune.diagnose.document import diagnosis_document
    from pipetune.validate import load_spec

    spec = load_spec(args.spec)
    require_tensorflow()
    out = args.out or Path("reports") / spec.name
    console = Console(stderr=args.json, width=None if sys.stdout.isatty() else 140)
    with console.status(f"diagnosing {spec.name}: timing each stage, then the consumer"):
        diagnosis = diagnose(spec, out)
    if args.json:
        print_json(diagnosis_document(diagnosis))
    print_diagnosis(console, diagnosis)
    console.print(f"wrote {out / 'diagnosis.json'}")
    return 0


def rate(value: float | None) -> str:
    if value is None:
        return "unknown"
    return "∞" if math.isinf(value) else f"{value:,.0f}"


def size(value: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} B"


def print_diagnosis(console: Console, diagnosis) -> None:
    m = diagnosis.measurements
    console.print(_stage_table(diagnosis))
    console.print(_memory_table(diagnosis))
    consumer = m.consumer
    console.print(f"consumer ceiling: {rate(consumer.rate)} examples/s "
                  f"({consumer.mode} mode{', measured on one batch in memory' if consumer.measured else ''})")
    console.print(f"[bold]bottleneck:[/bold] {diagnosis.bottleneck.sentence}")
    console.print(_lever_table(diagnosis))
    console.print(f"predicted rate with parallelism sized to the machine: "
                  f"{rate(diagnosis.predicted_rate)} examples/s (measured in {m.measure_seconds:.1f} s)")


def _stage_table(diagnosis) -> Table:
    m = diagnosis.measurements
    table = Table(title=f"{m.spec_name}: stage rates (examples/s; cumulative = the pipeline up to the "
                        f"stage, alone = the stage by itself; {m.cores} cores, {m.shards} shards)")
    for column in ("stage", "cumul. p=1", "cumul. max", "alone p=1", "speed-up", "wall ms", "CPU ms",
                   "waits", "element"):
        table.add_column(column, no_wrap=True, justify="left" if column == "stage" else "right")
    for stage, cost in zip(m.stages, diagnosis.costs):
        read_bytes = ""
        if stage.kind == "read":
            read_bytes = f" ({size(stage.sequential.rate * stage.element_bytes)}/s)"
        table.add_row(stage.name + (" *" if stage.random else ""),
                      rate(stage.sequential.rate) + read_bytes, rate(stage.parallel.rate),
                      rate(cost.rate_1), f"x{cost.speedup:.1f} at {cost.parallelism}",
                      f"{cost.wall_s * 1000:.3f}", f"{cost.cpu_s * 1000:.3f}",
                      "yes" if cost.blocking else "", size(stage.element_bytes))
    table.caption = "* random op: no cache at or after it. waits: wall > 2x CPU (blocking, not computing)"
    return table


def _memory_table(diagnosis) -> Table:
    m = diagnosis.measurements
    table = Table(title=f"memory for {m.num_examples:,} examples "
                        f"(RAM budget {size(m.ram_budget_bytes)})")
    for column in ("what", "after", "per element", "total", "fits"):
        table.add_column(column, no_wrap=True)
    needs = [*diagnosis.caches, *([diagnosis.shuffle] if diagnosis.shuffle else [])]
    for need in needs:
        what = need.what if need.what == "cache" else f"shuffle buffer of {need.elements:,}"
        table.add_row(what, need.position, size(need.element_bytes), size(need.total_bytes),
                      "yes" if need.fits else "[red]no[/red]")
    return table


def _lever_table(diagnosis) -> Table:
    table = Table(title="levers: predicted ceiling of the pipeline (examples/s; the lowest row wins)")
    for column in ("lever", "stage", "ceiling", "why"):
        table.add_column(column, no_wrap=column != "why")
    for lever in diagnosis.levers:
        table.add_row(lever.lever, lever.stage or "", rate(lever.ceiling), lever.note)
    return table
