"""Seeded synthetic images: structured pictures whose label means something, JPEG/PNG encoded.

Each image is a colour gradient with faint stripes, a few filled circles and rectangles whose
colour and placement depend on the class, one distractor shape, and mild pixel noise. That
gives realistic decode costs (about 4-5 KB per JPEG at 128 px, 11-12 KB at 224 px) where
uniform noise would not compress at all. Image ``i`` depends only on ``(seed, i)``, so the
same spec always gives byte-identical records.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pipetune.sources.common import IMAGE_SCHEMA, Inspection, Schema, example_encoder
from pipetune.spec import Spec, SyntheticImagesSource

JPEG_QUALITY = 90
NOISE_AMPLITUDE = 8  # uniform integer noise in [-8, 8] grey levels
STRIPE_AMPLITUDE = 12.0
_TWO_PI = 2 * np.pi


def schema_of(spec: Spec) -> Schema:
    """``{"image": bytes, "label": int64}``; nothing is generated."""
    return dict(IMAGE_SCHEMA)


def inspect(spec: Spec) -> Inspection:
    """Nothing can be wrong with a validated synthetic source, and it reads no file."""
    return Inspection(schema=schema_of(spec))


def records(spec: Spec, inspection: Inspection) -> Iterator[bytes]:
    """``num_examples`` Examples of an encoded image and its label, in index order."""
    source = _source(spec)
    encode = example_encoder(IMAGE_SCHEMA)
    for index in range(source.num_examples):
        label, image = labelled_image(source, index)
        yield encode({"image": [encode_image(image, source.format)], "label": [label]})


def labelled_image(source: SyntheticImagesSource, index: int) -> tuple[int, np.ndarray]:
    """Image ``index`` of the source as ``(label, uint8 array of shape (height, width, 3))``."""
    rng = np.random.default_rng([source.seed % 2**64, index])
    label = int(rng.integers(source.num_classes))
    height, width = source.image_size
    return label, render(height, width, label / source.num_classes, rng)


def render(height: int, width: int, class_position: float, rng: np.random.Generator) -> np.ndarray:
    """One structured image; ``class_position`` in [0, 1) sets the class hue and placement."""
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    image = _gradient(x, y, rng)
    hue = 127.5 + 110.0 * np.cos(_TWO_PI * (class_position + np.array([0.0, 1 / 3, 2 / 3])))
    angle = _TWO_PI * class_position
    centre = (0.5 + 0.25 * np.cos(angle), 0.5 + 0.25 * np.sin(angle))
    for k in range(int(rng.integers(2, 4))):
        colour = np.clip(hue + rng.normal(0.0, 20.0, 3), 0, 255)
        at = (centre[0] + rng.normal(0.0, 0.08), centre[1] + rng.normal(0.0, 0.08))
        image[_shape_mask(x, y, at, circle=k % 2 == 0, rng=rng)] = colour
    distractor = (rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9))
    image[_shape_mask(x, y, distractor, circle=bool(rng.integers(2)), rng=rng)] = rng.uniform(0, 255, 3)
    image += _stripes(x, y, rng)[..., None]
    image += rng.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1, image.shape, dtype=np.int8)
    return np.clip(image, 0, 255).astype(np.uint8)


def _gradient(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A linear blend between two random colours along a random direction, as float32 RGB."""
    angle = rng.uniform(0.0, _TWO_PI)
    ramp = np.float32(np.cos(angle)) * x + np.float32(np.sin(angle)) * y
    ramp = (ramp - ramp.min()) / (np.ptp(ramp) + np.float32(1e-6))
    start, end = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    return start + (end - start) * ramp[..., None]


def _shape_mask(
    x: np.ndarray, y: np.ndarray, at: tuple[float, float], circle: bool, rng: np.random.Generator
) -> np.ndarray:
    """Boolean (height, width) mask of a circle or rectangle centred at ``at`` (x, y in [0, 1])."""
    radius = rng.uniform(0.08, 0.2)
    if circle:
        return (x - at[0]) ** 2 + (y - at[1]) ** 2 < radius**2
    aspect = rng.uniform(0.5, 1.5)
    return (np.abs(x - at[0]) < radius) & (np.abs(y - at[1]) < radius * aspect)


def _stripes(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Faint sinusoidal texture, so the picture is not flat between shapes."""
    angle, frequency = rng.uniform(0.0, _TWO_PI), rng.uniform(4.0, 16.0)
    phase = np.float32(np.cos(angle)) * x + np.float32(np.sin(angle)) * y
    return np.float32(STRIPE_AMPLITUDE) * np.sin(np.float32(_TWO_PI * frequency) * phase)


def encode_image(image: np.ndarray, image_format: str) -> bytes:
    """JPEG (quality 90) or PNG bytes of a uint8 RGB array."""
    import tensorflow as tf

    if image_format == "png":
        return tf.io.encode_png(image).numpy()
    return tf.io.encode_jpeg(image, quality=JPEG_QUALITY).numpy()


def _source(spec: Spec) -> SyntheticImagesSource:
    assert isinstance(spec.source, SyntheticImagesSource), spec.source.kind
    return spec.source
