"""``pipetune sweep SPEC``: measure the variants, rank them, write the outputs."""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipetune.dimensions import NAMES, short_label
from pipetune.ranking import first_screened_position
from pipetune.errors import StorageLostError
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
    parser.add_argument("--no-diagnose", action="store_true",
                        help="skip the diagnosis of a hand-listed space (its candidates are then "
                             "measured in a seeded random order, not the best predicted first)")
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.set_defaults(run=run)


class _CtrlC:
    """Ctrl-C raises KeyboardInterrupt as usual, and is also remembered: one that lands inside
    a finalizer or a callback, where Python prints "Exception ignored" and goes on, still stops
    the sweep at its next event. A SIGINT the launcher ignores (``nohup cmd &`` from a script)
    stays ignored."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: object = None

    def __enter__(self) -> _CtrlC:
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: object) -> None:
        self.pressed = True
        raise KeyboardInterrupt

    def checked(self, on_event: Callable[[object], None]) -> Callable[[object], None]:
        def event(item: object) -> None:
            if self.pressed:
                raise KeyboardInterrupt
            on_event(item)

        return event


def run(args: argparse.Namespace) -> int:
    from pipetune.commands.printing import print_json
    from pipetune.documents import json_document
    from pipetune.outputs import write_outputs
    from pipetune.errors import SweepStopped
    from pipetune.runner import SweepOptions, run_sweep
    from pipetune.storage import is_server, usable
    from pipetune.validate import load_spec

    spec = load_spec(args.spec)
    if args.storage and is_server(args.storage):  # fails in one line, before the progress bar starts
        usable(args.storage)  # (an SQLite path is checked once --out, which may hold it, exists)
    out = args.out or Path("reports") / spec.name
    options = SweepOptions(out_dir=out, budget_s=args.budget, strategy=args.strategy, mode=args.mode,
                           storage=args.storage, resume=args.resume, seed=args.seed,
                           diagnose=not args.no_diagnose)
    console = Console(stderr=True)
    progress = _Progress(console)
    ctrl_c = _CtrlC()
    try:
        with ctrl_c:
            outcome = run_sweep(spec, options, on_event=ctrl_c.checked(progress.event))
    except SweepStopped as stop:
        progress.stop()
        paths = write_outputs(stop.outcome)  # results so far, with the failures' reasons
        _show_failure_logs(stop.outcome, args.debug)
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
        raise
    except KeyboardInterrupt:
        # Plain print, one line: the command must survive copy and paste from any terminal.
        print(f"interrupted. Finished trials are kept in {out}. Resume with:\n  {resume_command(args, out)}"
              + _password_note(args), file=sys.stderr)
        return 130
    except StorageLostError as err:
        print(f"pipetune: error: {err}. Resume with:\n  {resume_command(args, out)}" + _password_note(args),
              file=sys.stderr)
        return err.exit_code
    finally:
        progress.stop()
    paths = write_outputs(outcome)
    if args.json:
        print_json(json_document(outcome))
    # Piped output is not cut to 80 columns: the table is for reading in a log too.
    wide = Console(stderr=args.json, width=None if sys.stdout.isatty() else 160)
    _print_summary(wide, outcome, paths)
    _show_failure_logs(outcome, args.debug)
    return 0 if outcome.ranking.best is not None else 1


def _show_failure_logs(outcome, debug: bool, tail: int = 20) -> None:
    """Where TensorFlow's own output of each failed trial is; with --debug, its last lines."""
    logs = [r.environment["log"] for r in outcome.results if r.environment.get("log")]
    if logs:
        print(f"TensorFlow's own output of the {len(logs)} failed trial(s) is in "
              f"{Path(logs[0]).parent}/", file=sys.stderr)
    for log in logs if debug else []:
        lines = Path(log).read_text(encoding="utf-8", errors="replace").splitlines()[-tail:]
        print(f"--- {log} (last {len(lines)} lines)", *lines, sep="\n", file=sys.stderr)


def resume_command(args: argparse.Namespace, out: Path) -> str:
    """The command that continues this sweep: everything that decides its study, plus --resume."""
    from pipetune.storage import redact

    parts = ["pipetune", "sweep", args.spec, "--out", str(out)]
    for flag in ("storage", "mode", "strategy", "budget", "seed"):
        value = getattr(args, flag)
        if value is not None:
            parts += [f"--{flag}", redact(value) if flag == "storage" else str(value)]
    return shlex.join([*parts, "--resume"])


def _password_note(args: argparse.Namespace) -> str:
    """A line under the resume command when it shows the storage password as ***."""
    from pipetune.storage import redact

    if args.storage is None or redact(args.storage) == args.storage:
        return ""
    return ("\n(the storage password is shown as ***: type it in its place, or leave it out of the "
            "URL and, for PostgreSQL, set PGPASSWORD)")


class _Progress:
    """A progress bar and live status on stderr, and one log line per finished measurement."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console)
        self.task = self.bar.add_task("starting", total=None)
        self.started = False  # the bar appears with the first event: a refused sweep shows none

    def event(self, event) -> None:
        from pipetune.space import describe

        if not self.started:
            self.bar.start()
            self.started = True

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


def _compact(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return {"autotune": "auto", "memory": "mem", "none": "-"}.get(str(value), str(value))


def _varying(trials) -> list[str]:
    """The parameters that differ between the ranked trials: the only ones worth a column."""
    return [name for name in NAMES if len({repr(t.trial.params[name]) for t in trials}) > 1]


def _print_summary(console: Console, outcome, paths: dict) -> None:
    from pipetune.documents import trial_metrics

    ranking = outcome.ranking
    epochs = outcome.spec.measure.epochs_planned
    unit = "ex/s" if ranking.objective == "throughput" else "time s"
    shown = ranking.ranked[:12]
    columns = _varying(shown)
    table = Table(title=f"{outcome.spec.name}: {len(ranking.ranked)} ranked trials "
                        f"({outcome.strategy}, {outcome.mode} mode, by {ranking.objective}"
                        + (f" over {epochs} epochs)" if ranking.objective == "time_to_train" else ")"))
    for column in ("#", "=", "variant", *(short_label(c) for c in columns), unit, "95% CI", "wait", "CPU"):
        table.add_column(column, no_wrap=True)
    for ranked in shown:
        trial = ranked.trial
        wait = trial_metrics(trial, epochs)["input_wait_fraction"]
        table.add_row(str(ranked.position), "=" if ranked.tied_with_previous else "",
                      trial.role.value if trial.role.value != "candidate" else trial.key[:8],
                      *(_compact(trial.params[c]) for c in columns),
                      f"{ranked.median:.1f}" + (" *" if ranked.one_repeat else ""),
                      f"{ranked.ci_low:.1f}–{ranked.ci_high:.1f}",
                      f"{wait:.0%}", f"{trial.cpu_percent:.0f}" if trial.cpu_percent is not None else "–")
    console.print(table)
    for line in ranking_legend(shown):
        console.print(line)
    for c in ranking.comparisons:
        console.print(f"best vs {c.reference.trial.role.value}: {c.speedup:.2f}x "
                      f"(95% CI {c.speedup_ci_low:.2f}–{c.speedup_ci_high:.2f}), {c.verdict}"
                      + (" [batch size differs from yours]" if c.batch_size_differs else ""))
    _print_verdict(console, outcome)
    _print_diagnosis(console, outcome)
    failed = [r for r in outcome.results if r.state.value == "failed"]
    if failed:
        console.print(f"{len(failed)} failed trial(s): see results.csv for reasons")
    skipped = sum(r.state.value in ("skipped", "pruned") for r in outcome.results)
    console.print(f"{len(outcome.dropped)} variant(s) dropped as invalid, {skipped} skipped or pruned "
                  "(reasons in results.csv)")
    console.print("wrote " + ", ".join(str(p) for p in paths.values()))


def ranking_legend(shown) -> list[str]:
    """What the ranked table's marks mean, and where the final race's rows end (the ranking
    puts the raced variants first; the rest keep their screening times, not comparable)."""
    lines = ["= : tied with the row above (the data cannot tell them apart; cheaper first)"]
    screened = first_screened_position(shown)
    if screened is not None:
        lines.append(f"from row {screened} on: measured in screening only, not in the final "
                     "race; the race alone ranks the rows above, and a screening time is not "
                     "comparable with theirs")
    if any(r.one_repeat for r in shown):
        lines.append("* : one repeat: 2x or more behind the sweep's best after its first, so its "
                     "other repeats were not run (its interval is that one value)")
    return lines


def _print_diagnosis(console: Console, outcome) -> None:
    """The bottleneck, why an automatic space holds what it holds, and the pick's predicted vs
    measured rate."""
    from pipetune.documents import diagnosis_summary

    summary = diagnosis_summary(outcome)
    if summary is None:
        return
    space = "automatic space" if "space" in summary else "the candidates measured best predicted first"
    console.print(f"[bold]Diagnosis[/bold] ({space}; full table in diagnosis.json and the report)")
    reasons = summary.get("reasons") or [f"diagnosis: {summary['bottleneck']['sentence']}"]
    for reason in reasons:
        console.print(f"  - {reason}", markup=False)
    predicted, measured = summary.get("pick_predicted_rate"), summary.get("pick_measured_rate")
    if predicted and measured:
        console.print(f"  predicted {predicted:,.0f} examples/s, the pick measured {measured:,.0f} "
                      f"({measured / predicted:.2f}x the prediction)")


def _print_verdict(console: Console, outcome) -> None:
    from pipetune.documents import trial_metrics

    for ranked in outcome.ranking.ranked:
        if ranked.trial.role.value in ("baseline", "naive"):
            wait = trial_metrics(ranked.trial, outcome.spec.measure.epochs_planned)["input_wait_fraction"]
            console.print(f"{ranked.trial.role.value} is {input_bound_band(wait)} input-bound "
                          f"(input wait {wait:.0%} of step time)")
            return
    print("no reference completed: no input-bound verdict", file=sys.stderr)
