"""The Python API behind ``import pipetune``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipetune.validate import load_spec


def sweep(spec: str | Path, **options: Any) -> Any:
    """Run a sweep as ``pipetune sweep`` does and return its outcome.

    Args:
        spec: path to data.yaml.
        **options: ``out_dir``, ``budget_s``, ``strategy``, ``mode``, ``storage``, ``resume``,
            ``seed`` (see ``SweepOptions``).

    Returns:
        A ``SweepResults`` with ``trials`` (a pandas DataFrame), ``ranking`` and ``paths``.
    """
    from pipetune.outputs import write_outputs
    from pipetune.sweep import SweepOptions, run_sweep

    loaded = load_spec(spec)
    options.setdefault("out_dir", Path("reports") / loaded.name)
    outcome = run_sweep(loaded, SweepOptions(**{**options, "out_dir": Path(options["out_dir"])}))
    paths = write_outputs(outcome)
    return SweepResults.of(outcome, paths)


class SweepResults:
    """What ``pipetune.sweep`` returns: the trials as a DataFrame, the ranking, output paths."""

    def __init__(self, trials: Any, ranking: Any, paths: dict[str, Path], outcome: Any) -> None:
        self.trials, self.ranking, self.paths, self.outcome = trials, ranking, paths, outcome

    @classmethod
    def of(cls, outcome: Any, paths: dict[str, Path]) -> SweepResults:
        import pandas as pd

        from pipetune.outputs import result_rows

        return cls(pd.DataFrame(result_rows(outcome)), outcome.ranking, paths, outcome)
