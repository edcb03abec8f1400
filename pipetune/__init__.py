"""pipetune: find the fastest tf.data input pipeline for your data, model and machine.

Public API: ``sweep``, ``best_pipeline``, ``best_pipeline_info``, ``load_spec``. TensorFlow is imported only where a command needs it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from pipetune.api import best_pipeline, best_pipeline_info, load_spec, sweep

__all__ = ["__version__", "best_pipeline", "best_pipeline_info", "load_spec", "sweep"]
