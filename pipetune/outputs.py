"""What a sweep leaves behind: ``results.csv``, ``results.json``, ``best_pipeline.py``, ``report.html``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipetune.documents import json_document, result_rows
from pipetune.emit import write_best
from pipetune.outcome import SweepOutcome
from pipetune.report import write_report


def write_outputs(outcome: SweepOutcome) -> dict[str, Path]:
    """Write results.csv, results.json (raw trials, for ``pipetune report``/``emit``),
    best_pipeline.py when a variant completed, and report.html."""
    out = outcome.out_dir
    paths = {"results_csv": out / "results.csv", "results_json": out / "results.json"}
    frame = pd.DataFrame(result_rows(outcome))
    frame.sort_values(["rank", "state", "key"], na_position="last").to_csv(paths["results_csv"], index=False)
    paths["results_json"].write_text(json.dumps(json_document(outcome, raw=True), indent=1, default=str))
    best_code = None
    if outcome.ranking.best is not None:
        paths["best_pipeline"] = write_best(outcome)
        best_code = paths["best_pipeline"].read_text(encoding="utf-8")
    paths["report"] = write_report(outcome, best_code=best_code)
    return paths
