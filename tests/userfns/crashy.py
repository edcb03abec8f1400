"""A user function that kills its process while the pipeline runs (like a segfaulting library)."""

from __future__ import annotations

import os

import tensorflow as tf


def explode(example):
    def die():
        os._exit(1)  # no exception, no cleanup: the process is simply gone

    done = tf.py_function(die, [], tf.bool)
    with tf.control_dependencies([done]):
        return {key: tf.identity(value) for key, value in example.items()}
