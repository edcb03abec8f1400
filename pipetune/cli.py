"""``pipetune`` on the command line: sweep, emit, validate, env.

Each subcommand is an ``add_parser(sub)`` plus a ``run(args) -> int``. Errors that pipetune
raises on purpose become one line and an exit code (2 for bad input); a traceback is shown
only with ``--debug``.
"""

from __future__ import annotations

import argparse
import sys

from pipetune import __version__
from pipetune.errors import PipetuneError, SpecError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.run(args)
    except PipetuneError as err:
        if getattr(args, "debug", False):
            raise
        # Spec problems are already `file:line:col: key: problem` lines; others get a prefix.
        print(str(err) if isinstance(err, SpecError) else f"pipetune: error: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        if getattr(args, "debug", False):
            raise
        # The one place an operating-system refusal (read-only file system, permission, disk
        # full) becomes a line naming the path; trials never get here (their failures are data).
        print(f"pipetune: error: {os_error_line(err)}", file=sys.stderr)
        return EXIT_USAGE


def os_error_line(err: OSError) -> str:
    """``/path: Read-only file system``: the culprit path and the system's reason."""
    reason = err.strerror or str(err) or type(err).__name__
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
    return f"{' -> '.join(paths)}: {reason}" if paths else reason


def _parser() -> argparse.ArgumentParser:
    from pipetune.commands import diagnose, emit, env, report, shard, sweep, validate

    parser = argparse.ArgumentParser(prog="pipetune", description=(
        "Find the fastest tf.data input pipeline for your data, model and machine, by measuring."))
    parser.add_argument("--version", action="version", version=f"pipetune {__version__}")
    sub = parser.add_subparsers(title="commands")
    for command in (sweep, diagnose, report, emit, shard, validate, env):
        command.add_parser(sub)
    return parser

