"""Imported once by the trial forkserver (see ``trial.trial_context``), never by anything else.

TensorFlow's import chatter goes to a log file instead of the user's terminal, then TensorFlow
and Keras are imported, so every trial forks with them already loaded. No TensorFlow op runs
here: the runtime (thread pools, a GPU context) is created in each trial, after the fork.
"""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_log = open(os.path.join(tempfile.gettempdir(), f"pipetune-trial-server-{os.getpid()}.log"), "ab", 0)  # noqa: SIM115
os.dup2(_log.fileno(), 2)

import keras  # noqa: E402,F401
import tensorflow  # noqa: E402,F401

import pipetune.trial_child  # noqa: E402,F401
