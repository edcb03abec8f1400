# best_pipeline.py: the tf.data pipeline pipetune measured fastest for 'golden-demo'
#
# Spec:        golden-demo (hash c5266f72e02685ce)
# Generated:   2026-01-02 by pipetune 0.1.0; rank 1 of 5 ranked variants (grid, train mode)
# Environment: TensorFlow 2.21.0, Keras 3.15.1, Python 3.11.7; CPU Test CPU (2 cores); No NVIDIA GPU (NVML library not found)
# Variant:     k-0b762d: 8 shards, interleave 4, parallel map autotune, memory cache, batch 32, prefetch autotune
# Objective:   projected time to train 30 epochs (lower is better); every ratio in this file is a speed-up by it (> 1: faster)
# Measured:    3047.6 examples/s (median of 3 bursts, 95% CI 2909.1-3200.0); input wait 25% of step time
# Speed-up:    3.32x vs naive (95% CI 3.12-3.54, significant)
# Speed-up:    1.72x vs autotune-default (95% CI 1.58-1.87, significant)
#
# Data:        FILE_PATTERN is pipetune's copy of your data in 8 TFRecord shard(s). For your full or a new data set, write the same layout with
#              pipetune shard <data.yaml> --shards 8 --compression none --out DIR
#              and call make_dataset(file_pattern='DIR/*.tfrecord').
# Training:    these values change training itself, keep them in mind: no shuffle, batch 32, keep the last partial batch, float32, deterministic order
#
# Use it from a training script:
#     import best_pipeline
#     best_pipeline.apply_precision_policy()  # before building the model
#     dataset = best_pipeline.make_dataset()
#     model.compile(..., jit_compile=False, steps_per_execution=1)  # as measured
from __future__ import annotations

import keras
import tensorflow as tf


FILE_PATTERN = '/data/demo/part-*.tfrecord'
COMPRESSION = ''
CACHE_PATH = 'pipetune-cache-golden-demo'  # used only by a disk or snapshot cache
PRECISION_POLICY = 'float32'
SHUFFLE_SEED = 0  # file and element order: a new order each epoch, reproducible
FEATURES = {
    'image': tf.io.FixedLenFeature([], tf.string),
    'label': tf.io.FixedLenFeature([], tf.int64),
}


def prepare(record):
    example = tf.io.parse_single_example(record, FEATURES)
    example['image'] = tf.io.decode_image(example['image'], channels=3, expand_animations=False)
    return example


def augment(example, training=True):
    example = dict(example)
    if training:
        example['image'] = tf.image.random_flip_left_right(example['image'])
    example['image'] = (tf.cast(example['image'], tf.float32) - 0.0) / 255.0
    return example


def to_model_inputs(example):
    return example['image'], example['label']


def make_options():
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_optimization.map_and_batch_fusion = True
    return options


def apply_precision_policy():
    """Set the Keras mixed-precision policy this pipeline was measured with.

    Call it once, before building the model. Keep the model's output layer float32.
    """
    keras.mixed_precision.set_global_policy(PRECISION_POLICY)


def make_dataset(file_pattern=FILE_PATTERN, training=True, cache_path=CACHE_PATH):
    """The measured tf.data pipeline; ``training=False`` skips shuffling and random ops."""
    files = tf.data.Dataset.list_files(file_pattern, shuffle=False)
    # 8 shards (not searched); interleave 4 (no measured variant differs from this one in
    # interleave_cycle only)
    ds = files.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type=COMPRESSION),
        cycle_length=4,
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    # parallel map autotune: 2.59x vs sequential map (95% CI 2.42-2.86x, 3 screening bursts)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # memory cache after the deterministic ops (filled in 0.9 s, once): 1.72x vs no cache (95% CI
    # 1.58-1.87x, 3 screening bursts)
    ds = ds.cache()
    ds = ds.map(
        lambda example: augment(example, training),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.map(to_model_inputs, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # batch 32 (not searched)
    ds = ds.batch(32, drop_remainder=False)
    # prefetch autotune: 1.19x vs no prefetch (95% CI 1.07-1.32x, 3 screening bursts)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    ds = ds.with_options(make_options())
    return ds
