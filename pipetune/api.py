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
            ``seed``, ``diagnose`` (see ``SweepOptions``).

    Returns:
        A ``SweepResults`` with ``trials`` (a pandas DataFrame), ``ranking`` and ``paths``.
    """
    from pipetune.errors import SweepStopped
    from pipetune.outputs import write_outputs
    from pipetune.runner import SweepOptions, run_sweep

    loaded = load_spec(spec)
    options.setdefault("out_dir", Path("reports") / loaded.name)
    try:
        outcome = run_sweep(loaded, SweepOptions(**{**options, "out_dir": Path(options["out_dir"])}))
    except SweepStopped as stop:
        write_outputs(stop.outcome)  # the results so far, with the failures' reasons
        raise
    paths = write_outputs(outcome)
    return SweepResults.of(outcome, paths)


class SweepResults:
    """What ``pipetune.sweep`` returns: the trials as a DataFrame, the ranking, output paths."""

    def __init__(self, trials: Any, ranking: Any, paths: dict[str, Path], outcome: Any) -> None:
        self.trials, self.ranking, self.paths, self.outcome = trials, ranking, paths, outcome

    @classmethod
    def of(cls, outcome: Any, paths: dict[str, Path]) -> SweepResults:
        import pandas as pd

        from pipetune.documents import result_rows

        return cls(pd.DataFrame(result_rows(outcome)), outcome.ranking, paths, outcome)


class BestPipeline:
    """The Nth best variant of a stored sweep, built from the same Plan that was measured.

    Attributes:
        key: the variant's key.
        params: its ``PipelineParams`` (every knob, written out).
        precision_policy: the Keras mixed-precision policy it was measured with.
        source: the Python module text (what ``best_pipeline.py`` holds, without comments).
    """

    def __init__(self, key: str, params: Any, source: str, module: Any) -> None:
        self.key, self.params, self.source, self._module = key, params, source, module
        self.precision_policy = params.precision

    def make_dataset(self, **overrides: Any) -> Any:
        """``make_dataset(file_pattern=..., training=True, cache_path=...)`` of the module."""
        return self._module.make_dataset(**overrides)

    def apply_precision_policy(self) -> None:
        """Set Keras' global mixed-precision policy; call before building the model."""
        self._module.apply_precision_policy()


def best_pipeline_info(spec_or_dir: str | Path, rank: int = 1) -> BestPipeline:
    """The Nth best stored variant with its parameters and precision policy.

    Args:
        spec_or_dir: a sweep's output folder, or its spec (then ``reports/<name>/``).
        rank: 1 for the best.

    Raises:
        NoSweepError: there is no stored sweep; the message says which command to run.
    """
    from pipetune.device import require_tensorflow
    from pipetune.emit import chosen, plan_for
    from pipetune.store import load_outcome

    require_tensorflow()
    from pipetune.user_code import on_sys_path

    outcome = load_outcome(spec_or_dir)
    trial = chosen(outcome, rank).trial
    plan = plan_for(outcome, trial)
    folder = outcome.out_dir / "scratch" / f"best-rank{rank}"
    folder.mkdir(parents=True, exist_ok=True)
    with on_sys_path(outcome.spec.base_dir):
        module = plan.load_module(folder)
    return BestPipeline(trial.key, plan.params, plan.render(), module)


def best_pipeline(spec_or_dir: str | Path, rank: int = 1, **overrides: Any) -> Any:
    """The best stored variant as a ``tf.data.Dataset``; never starts a sweep.

    Args:
        spec_or_dir: a sweep's output folder, or its spec (then ``reports/<name>/``).
        rank: 1 for the best.
        **overrides: passed to ``make_dataset``: ``file_pattern``, ``training``, ``cache_path``.

    Use ``best_pipeline_info`` for the parameters and the precision policy.
    """
    return best_pipeline_info(spec_or_dir, rank).make_dataset(**overrides)
