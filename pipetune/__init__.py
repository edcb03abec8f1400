"""pipetune: find the fastest tf.data input pipeline for your data, model and machine.

Public API: ``sweep``, ``best_pipeline``, ``best_pipeline_info``, ``load_spec``, loaded on first
use. TensorFlow is imported only where a command needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["__version__", "best_pipeline", "best_pipeline_info", "load_spec", "sweep"]

if TYPE_CHECKING:
    from pipetune.api import best_pipeline, best_pipeline_info, load_spec, sweep


def __getattr__(name: str) -> Any:
    # The API (and pydantic behind it) loads on first use, so light modules such as
    # pipetune.monitors can be imported on a machine without the API's dependencies.
    if name in __all__:
        from pipetune import api

        return getattr(api, name)
    raise AttributeError(f"module 'pipetune' has no attribute {name!r}")
