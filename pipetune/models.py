"""Burst models: the consumers of a training burst, and the precision policy they run under.

TensorFlow and Keras are imported inside functions: this module is only used in a trial's
child process, where each trial gets a fresh global policy.
"""

from __future__ import annotations

from typing import Any

from pipetune import sources
from pipetune.errors import UsageError
from pipetune.spec import Spec


def num_outputs(spec: Spec) -> int:
    """Classes for a classifier, 1 for regression: from the model section, else from the source
    (its class count, or a float label: regression).

    Raises:
        UsageError: an integer label whose number of classes only the data could tell.
    """
    if spec.model.num_classes:
        return spec.model.num_classes
    known = sources.num_classes(spec)
    if known:
        return known
    label = sources.schema_of(spec)[spec.inputs.label]
    if label.type == "float32":
        return 1
    raise UsageError(f"model.num_classes is required: the label {spec.inputs.label!r} holds class "
                     f"indices and a {spec.source.kind} source does not say how many classes there are")


def configure_tensorflow() -> None:
    """Let a trial grow GPU memory as needed instead of grabbing the whole card."""
    import tensorflow as tf

    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


def build_model(spec: Spec, input_shape: tuple[int, ...], precision: str, jit_compile: bool) -> Any:
    """A compiled Keras model for ``spec.model`` under ``precision``; the output stays float32.

    ``jit_compile`` is the variant's (the jit_compile dimension). A user model that arrives
    compiled keeps its own setting.
    """
    import keras

    keras.mixed_precision.set_global_policy(precision)
    outputs = num_outputs(spec)
    if spec.model.call:
        model = _user_model(spec, input_shape, outputs)
    else:
        model = BUILDERS[spec.model.builtin](input_shape, outputs)
    if not model.compiled:
        loss = "mse" if outputs == 1 else "sparse_categorical_crossentropy"
        model.compile(optimizer=keras.optimizers.Adam(spec.model.learning_rate), loss=loss,
                      jit_compile=jit_compile)
    return model


def _user_model(spec: Spec, input_shape: tuple[int, ...], outputs: int) -> Any:
    import importlib

    from pipetune.user_code import on_sys_path

    module_name, _, attr = spec.model.call.partition(":")
    with on_sys_path(spec.base_dir):
        build = getattr(importlib.import_module(module_name), attr)
    model = build(input_shape, outputs)
    if not hasattr(model, "train_on_batch"):
        raise UsageError(f"{spec.model.call} must return a keras.Model, but returned {type(model).__name__}")
    return model


def _head(x: Any, outputs: int) -> Any:
    import keras

    activation = None if outputs == 1 else "softmax"
    return keras.layers.Dense(outputs, activation=activation, dtype="float32")(x)


def small_cnn(input_shape: tuple[int, ...], outputs: int) -> Any:
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = layers.Conv2D(16, 3, strides=2, activation="relu")(inputs)
    x = layers.Conv2D(32, 3, strides=2, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, _head(x, outputs), name="small_cnn")


def resnet_small(input_shape: tuple[int, ...], outputs: int) -> Any:
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(inputs)
    for filters in (32, 64, 128):
        shortcut = layers.Conv2D(filters, 1, strides=2, padding="same")(x)
        y = layers.Conv2D(filters, 3, strides=2, padding="same", activation="relu")(x)
        y = layers.Conv2D(filters, 3, padding="same")(y)
        x = layers.Activation("relu")(layers.Add()([shortcut, layers.BatchNormalization()(y)]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, _head(x, outputs), name="resnet_small")


def mlp(input_shape: tuple[int, ...], outputs: int) -> Any:
    import keras
    from keras import layers

    inputs = keras.Input(input_shape)
    x = layers.Flatten()(inputs)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dense(64, activation="relu")(x)
    return keras.Model(inputs, _head(x, outputs), name="mlp")


BUILDERS = {"small_cnn": small_cnn, "resnet_small": resnet_small, "mlp": mlp}
