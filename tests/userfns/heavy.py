"""A user op that computes hard (CPU-bound matrix products), for the diagnosis's compute verdict."""

from __future__ import annotations

import tensorflow as tf


def burn(example):
    # Seeded by the label so the work depends on the element: nothing can be constant-folded.
    seed = tf.stack([tf.cast(example["label"], tf.int64), tf.constant(1, tf.int64)])
    matrix = tf.random.stateless_normal([256, 256], seed=seed)
    for _ in range(8):
        matrix = tf.linalg.matmul(matrix, matrix) / 256.0
    example = dict(example)
    example["label"] = example["label"] + tf.cast(tf.reduce_sum(matrix) * 0.0, example["label"].dtype)
    return example
