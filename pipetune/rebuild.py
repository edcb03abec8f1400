"""The study as a record of its sweep: what ``results.json`` holds can be rebuilt from it.

At the start of a sweep the spec, mode, objective and device go into the study's user attrs;
every measurement is already stored with its raw TrialResult (``search._store``). So when
``results.json`` is missing or corrupt, ``emit`` and ``report`` still have the sweep.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipetune.errors import NoSweepError

FACTS_ATTR = "pipetune"  # study user attr holding the sweep's facts
STUDY_FILE = "study.sqlite3"


def remember(study: Any, spec: Any, mode: str, objective: str, strategy: str, device: Any,
             budget_s: float | None) -> None:
    """Store what a rebuild needs and what ``--resume`` compares against."""
    study.set_user_attr(FACTS_ATTR, {
        "spec": spec.model_dump(mode="json"), "base_dir": spec.base_dir, "mode": mode,
        "objective": objective, "strategy": strategy, "device": dataclasses.asdict(device),
        "budget_s": budget_s,
    })


def document_from_study(folder: Path) -> dict[str, Any]:
    """A ``results.json``-shaped document (the parts ``store.load_outcome`` reads) from the
    latest sweep in ``folder``'s study storage.

    Raises:
        NoSweepError: there is no study, or it holds no sweep recorded by ``remember``.
    """
    import optuna

    from pipetune import search
    from pipetune.race import stored_race, with_race_records
    from pipetune.serialize import trial_to_dict

    database = folder / STUDY_FILE
    if not database.is_file():
        raise NoSweepError(f"no {STUDY_FILE} in {folder} to rebuild the sweep from")
    url = f"sqlite:///{database.resolve()}"
    try:
        summaries = [s for s in optuna.get_all_study_summaries(url, include_best_trial=False)
                     if FACTS_ATTR in s.user_attrs]
    except Exception as err:  # noqa: BLE001 - a damaged database is "cannot rebuild", whatever it raised
        raise NoSweepError(f"{database} cannot be read ({type(err).__name__})") from None
    if not summaries:
        raise NoSweepError(f"{database} holds no sweep recorded by this pipetune version")
    facts = summaries[-1].user_attrs[FACTS_ATTR]
    study = optuna.load_study(study_name=summaries[-1].study_name, storage=url)
    trials = study.get_trials(deepcopy=False)
    screened = search.finalize(search.stored_results(trials), {})
    raced = stored_race(trials)  # the verdict's data: without it the ranking would differ
    results = with_race_records(screened, raced)
    return {
        "objective": facts["objective"], "strategy": facts["strategy"], "mode": facts["mode"],
        "tuning_time_s": sum(r.trial_wall_s or 0.0 for r in [*screened, *raced]),
        "budget_s": facts["budget_s"],
        "stored": {"spec": facts["spec"], "base_dir": facts["base_dir"], "device": facts["device"],
                   "dropped": [], "trials": [trial_to_dict(r) for r in results],
                   "race": [trial_to_dict(r) for r in raced]},
    }
