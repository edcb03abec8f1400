"""One error hierarchy; the CLI maps each class to an exit code."""

from __future__ import annotations


class PipetuneError(Exception):
    """Base class for every error pipetune raises on purpose."""

    exit_code = 1


class SpecError(PipetuneError):
    """The dataset spec is invalid. Raised before any work runs.

    Each line of ``str(err)`` reads ``file:line:col: dotted.key: what is wrong``.
    """

    exit_code = 2

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SourceError(PipetuneError):
    """The user's data cannot be read: empty glob, corrupt record, schema mismatch."""

    exit_code = 2


class UsageError(PipetuneError):
    """A command was called with options that cannot work together."""

    exit_code = 2


class MissingDependencyError(PipetuneError):
    """An optional dependency (TensorFlow) is not installed."""

    exit_code = 2


class NoSweepError(PipetuneError):
    """There is no stored sweep to read results from."""

    exit_code = 2


class StorageError(PipetuneError):
    """The study storage (``--storage`` URL or the SQLite file) cannot be used. Raised before
    any work runs; the message names the URL with its password hidden."""

    exit_code = 2


class StorageLostError(PipetuneError):
    """The study storage went away mid-sweep and did not come back within the retries.
    Finished trials are stored; ``--resume`` continues."""

    exit_code = 1


class SweepStopped(PipetuneError):
    """The sweep stopped early: its first measurements all failed with one reason, so the rest
    would too. ``outcome`` holds the results so far, for the outputs (set by the runner)."""

    exit_code = 1

    def __init__(self, message: str, outcome: object = None) -> None:
        super().__init__(message)
        self.outcome = outcome
