"""Output helpers shared by the subcommands."""

from __future__ import annotations

import json
import sys


def print_json(document: object) -> None:
    """One JSON document on stdout (``--json``); progress and logs go to stderr."""
    json.dump(document, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")
