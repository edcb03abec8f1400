"""Importing the user's own code (preprocess ``call`` ops, ``model.call``) from the spec's folder."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def on_sys_path(folder: str) -> Iterator[None]:
    """Make the spec's folder importable, as the user expects, for the duration of a block."""
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        yield
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
