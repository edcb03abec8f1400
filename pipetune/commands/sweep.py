"""``pipetune sweep SPEC``: measure the variants, rank them, write the outputs."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipetune.stats import input_bound_band

STRATEGIES = ("auto", "grid", "halving", "tpe")
MODES = ("train", "input", "simulate")


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help="measure pipeline variants and rank them")
    parser.add_argument("spec", help="path to data.yaml")
    parser.add_argument("--out", type=Path, help="output folder (default: reports/<spec name>/)")
    parser.add_argument("--budget", type=float, metavar="SECONDS", help="time budget for the search")
    parser.add_argument("--strategy", choices=STRATEGIES, help="search strategy (default: the spec's)")
    parser.add_argument("--mode", choices=MODES, help="measurement mode (default: the spec's)")
    parser.add_argument("--resume", action="store_true", help="continue the sweep stored in --out")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna RDB URL shared by several workers (default: SQLite in --out)")
    parser.add_argument("--seed", type=int, help="seed for the search order and samplers")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipetune.cli import print_json
    from pipetune.outputs import json_document, write_outputs
    from pipetune.runner import SweepOptions, run_sweep
    from pipetune.validate import load_spec

    spec = load_spec(args.spec)
    out = args.out or Path("reports") / spec.name
    options = SweepOptions(out_dir=out, budget_s=args.budget, strategy=args.strategy, mode=args.mode,
                           storage=args.storage, resume=args.resume, seed=args.seed)
    console = Console(stderr=True)
    progress = _Progress(console)
    try:
        outcome = run_sweep(spec, options, on_event=progress.event)
    except KeyboardInterrupt:
        # Plain print, one line: the command must survive copy and paste from any terminal.
        print(f"interrupted. Finished trials are kept in {out}. Resume with:\n  {resume_command(args, out)}",
              file=sys.stderr)
        return 130
    finally:
        progress.stop()
    paths = write_outputs(outcome)
    if args.json:
        print_json(json_document(outcome))
    # Piped output is not cut to 80 columns: the table is for reading in a log too.
    wide = Console(stderr=args.json, width=None if sys.stdout.isatty() else 160)
    _print_summary(wide, outcome, paths)
    return 0 if outcome.ranking.best is not None else 1


def resume_command(args: argparse.Namespace, out: Path) -> str:
    """The command that continues this sweep: everything that decides its study, plus --resume."""
    parts = ["pipetune", "sweep", args.spec, "--out", str(out)]
    for flag in ("storage", "mode", "strategy", "budget", "seed"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag}", str(value)]
    return shlex.join([*parts, "--resume"])


class _Progress:
    """A progress bar and live status on stderr, and one log line per finished measurement."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console)
        self.task = self.bar.add_task("starting", total=None)
        self.bar.start()

    def event(self, event) -> None:
        from pipetune.space import describe

        if event.kind == "planned":
            self.bar.update(self.task, total=event.planned)
            return
        label = f"{event.variant.label} ({describe(event.variant.params)})"
        burst = {0: "short burst", 2: "final race"}.get(event.rung, "full burst")
        if event.kind == "start":
            self.bar.update(self.task, description=f"measuring {event.variant.label}, {burst}")
        else:
            self.bar.advance(self.task)
            self.bar.console.log(f"measured {label}, {burst}")

    def stop(self) -> None:
        self.bar.stop()


_SHORT = {"shards": "shards", "compression": "compr.", "interleave_cycle": "inter.",
          "interleave_block": "block", "interleave_parallel": "par. il.", "map_parallel": "map",
          "cache": "cache", "shuffle_buffer": "shuffle", "batch_size": "batch",
          "drop_remainder": "drop rem.", "prefetch": "prefetch", "precision": "precision",
          "deterministic": "determ.", "private_threadpool_size": "pool",
          "map_and_batch_fusion": "fusion", "autotune_ram_budget_mb": "ram MB",
          "autotune_cpu_budget": "cpu budget"}


def _compact(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return {"autotune": "auto", "memory": "mem", "none": "-"}.get(str(value), str(value))


def _varying(trials) -> list[str]:
    """The parameters that differ between the ranked trials: the only ones worth a column."""
    return [name for name in _SHORT if len({repr(t.trial.params[name]) for t in trials}) > 1]


def _print_summary(console: Console, outcome, paths: dict) -> None:
    from pipetune.outputs import trial_metrics

    ranking = outcome.ranking
    epochs = outcome.spec.measure.epochs_planned
    unit = "ex/s" if ranking.objective == "throughput" else "time s"
    shown = ranking.ranked[:12]
    columns = _varying(shown)
    table = Table(title=f"{outcome.spec.name}: {len(ranking.ranked)} ranked trials "
                        f"({outcome.strategy}, {outcome.mode} mode, by {ranking.objective}"
                        + (f" over {epochs} epochs)" if ranking.objective == "time_to_train" else ")"))
    for column in ("#", "=", "variant", *(_SHORT[c] for c in columns), unit, "95% CI", "wait", "CPU"):
        table.add_column(column, no_wrap=True)
    for ranked in shown:
        trial = ranked.trial
        wait = trial_metrics(trial, epochs)["input_wait_fraction"]
        table.add_row(str(ranked.position), "=" if ranked.tied_with_previous else "",
                      trial.role.value if trial.role.value != "candidate" else trial.key[:8],
                      *(_compact(trial.params[c]) for c in columns),
                      f"{ranked.median:.1f}", f"{ranked.ci_low:.1f}–{ranked.ci_high:.1f}",
                      f"{wait:.0%}", f"{trial.cpu_percent:.0f}" if trial.cpu_percent is not None else "–")
    console.print(table)
    console.print("= : tied with the row above (the data cannot tell them apart; cheaper first)")
    for c in ranking.comparisons:
        verdict = "significantly faster" if c.significant else "not significantly different"
        console.print(f"best vs {c.reference.trial.role.value}: {c.speedup:.2f}x "
                      f"(95% CI {c.speedup_ci_low:.2f}–{c.speedup_ci_high:.2f}), {verdict}"
                      + (" [batch size differs from yours]" if c.batch_size_differs else ""))
    _print_verdict(console, outcome)
    failed = [r for r in outcome.results if r.state.value == "failed"]
    if failed:
        console.print(f"{len(failed)} failed trial(s): see results.csv for reasons")
    skipped = sum(r.state.value in ("skipped", "pruned") for r in outcome.results)
    console.print(f"{len(outcome.dropped)} variant(s) dropped as invalid, {skipped} skipped or pruned "
                  "(reasons in results.csv)")
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))


def _print_verdict(console: Console, outcome) -> None:
    from pipetune.outputs import trial_metrics

    for ranked in outcome.ranking.ranked:
        if ranked.trial.role.value in ("baseline", "naive"):
            wait = trial_metrics(ranked.trial, outcome.spec.measure.epochs_planned)["input_wait_fraction"]
            console.print(f"{ranked.trial.role.value} is {input_bound_band(wait)} input-bound "
                          f"(input wait {wait:.0%} of step time)")
            return
    print("no reference completed: no input-bound verdict", file=sys.stderr)
