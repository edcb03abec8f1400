"""Python source for each preprocess op, as lines acting on the dict ``example``.

Only validated values reach the source, and only through ``repr()``: keys are identifiers,
numbers are numbers, choices are literals. User functions are referred to by an alias that
pipetune makes (``user_fn_0``), never by a name taken from the spec.
"""

from __future__ import annotations

from collections.abc import Callable

from pipetune.spec import (
    Call,
    Cast,
    ColorJitter,
    DecodeImage,
    Normalize,
    OneHot,
    Op,
    RandomCrop,
    RandomFlip,
    Resize,
    Sleep,
)


def _decode(op: DecodeImage, alias: str) -> list[str]:
    k = repr(op.key)
    return [f"example[{k}] = tf.io.decode_image(example[{k}], channels={op.channels!r}, "
            "expand_animations=False)"]


def _resize(op: Resize, alias: str) -> list[str]:
    k = repr(op.key)
    return [f"example[{k}] = tf.image.resize(example[{k}], {tuple(op.size)!r}, method={op.method!r})"]


def _random_crop(op: RandomCrop, alias: str) -> list[str]:
    k = repr(op.key)
    height, width = op.size
    return [f"crop_size = tf.stack([{height!r}, {width!r}, tf.shape(example[{k}])[-1]])",
            f"example[{k}] = tf.image.random_crop(example[{k}], crop_size)"]


def _random_flip(op: RandomFlip, alias: str) -> list[str]:
    k = repr(op.key)
    lines = []
    if op.mode in ("horizontal", "both"):
        lines.append(f"example[{k}] = tf.image.random_flip_left_right(example[{k}])")
    if op.mode in ("vertical", "both"):
        lines.append(f"example[{k}] = tf.image.random_flip_up_down(example[{k}])")
    return lines


def _color_jitter(op: ColorJitter, alias: str) -> list[str]:
    k = repr(op.key)
    low, high = 1.0 - op.contrast, 1.0 + op.contrast
    return [f"example[{k}] = tf.image.random_brightness(example[{k}], {op.brightness!r})",
            f"example[{k}] = tf.image.random_contrast(example[{k}], {low!r}, {high!r})"]


def _normalize(op: Normalize, alias: str) -> list[str]:
    k = repr(op.key)
    return [f"example[{k}] = (tf.cast(example[{k}], tf.float32) - {op.mean!r}) / {op.std!r}"]


def _cast(op: Cast, alias: str) -> list[str]:
    k = repr(op.key)
    return [f"example[{k}] = tf.cast(example[{k}], tf.{op.dtype})"]


def _one_hot(op: OneHot, alias: str) -> list[str]:
    k = repr(op.key)
    return [f"example[{k}] = tf.one_hot(example[{k}], {op.depth!r})"]


def _sleep(op: Sleep, alias: str) -> list[str]:
    return [f"example = wait_then_pass(example, {op.ms / 1000.0!r})"]


def _call(op: Call, alias: str) -> list[str]:
    return [f"example = {alias}(example)"]


RENDERERS: dict[type[Op], Callable[..., list[str]]] = {
    DecodeImage: _decode,
    Resize: _resize,
    RandomCrop: _random_crop,
    RandomFlip: _random_flip,
    ColorJitter: _color_jitter,
    Normalize: _normalize,
    Cast: _cast,
    OneHot: _one_hot,
    Sleep: _sleep,
    Call: _call,
}


def render_op(op: Op, alias: str = "") -> list[str]:
    """Source lines for one op; ``alias`` is the local name of a user function (Call only)."""
    return RENDERERS[type(op)](op, alias)


WAIT_HELPER = '''
def wait_then_pass(element, seconds):
    """A known per-element cost that blocks without using the CPU, like a remote read."""
    done = tf.py_function(lambda: time.sleep(seconds) is None, [], tf.bool)
    with tf.control_dependencies([done]):
        return tf.nest.map_structure(tf.identity, element)
'''
