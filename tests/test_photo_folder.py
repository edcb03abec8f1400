"""The plainest use: a folder of the user's own photos and a builtin model, in train mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipetune.errors import SpecError
from pipetune.results import TrialState
from pipetune.runner import ShardLayouts, measure_variant
from pipetune.space import Variant
from pipetune.spec import PipelineParams
from pipetune.validate import load_spec

CLASSES = ("cat", "dog", "fox", "owl")
SIZES = ((40, 30), (64, 48), (33, 57), (80, 60))


def write_photos(root: Path) -> None:
    """Four class folders of JPEGs of varied sizes, as a camera folder would hold."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for index, (width, height) in enumerate(SIZES * 2):
            pixels = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
            pixels[..., label % 3] //= 2  # a little class signal
            Image.fromarray(pixels).save(folder / f"img_{index}.jpg", quality=85)


def write_spec(folder: Path, model: str) -> Path:
    write_photos(folder / "photos")
    path = folder / "data.yaml"
    path.write_text(f"""name: photos
source: {{kind: image_folder, root: photos}}
preprocess:
  - decode_image: {{key: image, channels: 3}}
  - resize: {{key: image, size: [32, 32]}}
  - random_flip: {{key: image}}
  - normalize: {{key: image}}
inputs: {{features: image, label: label}}
model: {model}
measure: {{mode: train, warmup_steps: 1, steps: 2, repeats: 1, timeout_s: 90}}
""", encoding="utf-8")
    return path


def train_trial(tmp_path: Path, model: str):
    spec = load_spec(write_spec(tmp_path, model))
    variant = Variant(PipelineParams(shards=2, batch_size=8, shuffle_buffer=16))
    layouts = ShardLayouts(spec, tmp_path / "shards")
    return measure_variant(spec, variant, spec.measure.steps, "train", layouts, tmp_path)


@pytest.mark.slow
def test_a_photo_folder_trains_a_builtin_model_with_one_class_per_folder(tmp_path):
    """Was: every trial failed, since the model fell back to 2 classes for 4 class folders."""
    trial = train_trial(tmp_path, "{builtin: small_cnn}")
    assert trial.state is TrialState.COMPLETE, trial.reason
    assert trial.steps_per_epoch == 4  # 32 photos in batches of 8
    assert trial.whole_epochs and trial.repeats[0].examples == 32  # a short epoch is timed whole


@pytest.mark.slow
def test_a_failed_train_step_keeps_tensorflows_own_message(tmp_path):
    """Too few classes declared: the reason is TensorFlow's message, not a traceback's head."""
    trial = train_trial(tmp_path, "{builtin: small_cnn, num_classes: 2}")
    assert trial.state is TrialState.FAILED
    assert "outside the valid range" in trial.reason, trial.reason
    assert "File " not in trial.reason and "forkserver" not in trial.reason
    assert "\n" not in trial.reason


def test_an_integer_label_of_unknown_classes_needs_num_classes(tmp_path):
    """A source that cannot tell its classes gets a spec error before any work, not 2 classes."""
    (tmp_path / "rows.csv").write_text("x,y\n" + "".join(f"{i},{i % 5}\n" for i in range(20)))
    path = tmp_path / "data.yaml"
    path.write_text("name: t\nsource: {kind: csv, path: rows.csv, label: y}\n"
                    "inputs: {features: x, label: y}\nmodel: {builtin: mlp}\n", encoding="utf-8")
    with pytest.raises(SpecError, match=r"data.yaml:\d+:\d+: model: model.num_classes is required"):
        load_spec(path)
