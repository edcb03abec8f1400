"""Imported once by the trial forkserver (see ``trial.trial_context``), never by anything else.

TensorFlow's import chatter goes nowhere (or to ``$PIPETUNE_LOG_DIR/trial-server.log`` when
that is set, for debugging) instead of the user's terminal, then TensorFlow
and Keras are imported, so every trial forks with them already loaded. No TensorFlow op runs
here: the runtime (thread pools, a GPU context) is created in each trial, after the fork.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Each trial sends its own output to its own log; the server's is the same import chatter
# every time, so by default it is not kept (no stray file per sweep in /tmp).
_log_dir = os.environ.get("PIPETUNE_LOG_DIR")
_log = open(os.path.join(_log_dir, "trial-server.log") if _log_dir else os.devnull, "ab", 0)  # noqa: SIM115
os.dup2(_log.fileno(), 2)

import keras  # noqa: E402,F401
import tensorflow  # noqa: E402,F401

import pipetune.trial_child  # noqa: E402,F401
