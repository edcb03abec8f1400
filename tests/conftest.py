"""Shared fixtures. TensorFlow takes ~5 s to import: tests that need it share one session."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipetune.spec import Spec

REPO = Path(__file__).resolve().parents[1]


def make_spec(base_dir: Path, **overrides: object) -> Spec:
    """A small valid spec (synthetic images, no random ops), with top-level keys overridden."""
    data: dict = {
        "name": "test-spec",
        "source": {"kind": "synthetic_images", "num_examples": 48, "image_size": [16, 16],
                   "num_classes": 3, "seed": 1},
        "preprocess": [{"decode_image": {"key": "image"}}, {"normalize": {"key": "image"}}],
        "inputs": {"features": "image", "label": "label"},
        "model": {"builtin": "small_cnn"},
        "measure": {"warmup_steps": 1, "steps": 3, "repeats": 2, "timeout_s": 60},
        "base_dir": str(base_dir),
    }
    data.update(overrides)
    return Spec.model_validate(data)


@pytest.fixture(scope="session")
def tf():
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow
