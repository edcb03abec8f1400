"""A user function that blocks far longer than any trial timeout, after leaving a marker."""

from __future__ import annotations

import os
import time
from pathlib import Path

import tensorflow as tf

MARKER_ENV = "PIPETUNE_TEST_SLEEP_MARKER"


def stall(example):
    def wait():
        marker = os.environ.get(MARKER_ENV)
        if marker:
            Path(marker).write_text("started")  # proves the trial got as far as iterating
        time.sleep(3600)
        return True

    done = tf.py_function(wait, [], tf.bool)
    with tf.control_dependencies([done]):
        return {key: tf.identity(value) for key, value in example.items()}
