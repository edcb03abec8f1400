"""A user function that allocates memory without bound (up to a safety cap) while it runs."""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

CHUNK_BYTES = 64 * 2**20
SAFETY_CAP_BYTES = 6 * 2**30  # never endanger the test machine if the watchdog fails
_hoard: list[np.ndarray] = []


def allocate(example):
    def grab():
        while len(_hoard) * CHUNK_BYTES < SAFETY_CAP_BYTES:
            _hoard.append(np.ones(CHUNK_BYTES, dtype=np.uint8))  # ones: pages really touched
            time.sleep(0.01)
        time.sleep(3600)  # at the cap: wait for the watchdog (or the timeout)
        return True

    done = tf.py_function(grab, [], tf.bool)
    with tf.control_dependencies([done]):
        return {key: tf.identity(value) for key, value in example.items()}
