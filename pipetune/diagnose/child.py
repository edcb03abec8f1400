"""The diagnosis's isolated-process side: time every cumulative stage, size its elements, and
time the consumer on one batch held in memory.

Runs in a process forked from the trial forkserver (``trial.trial_context``), so thread pools,
the Keras precision policy and memory never leak into the parent. It sends back exactly one
message: ``("ok", (stages, cache_read, consumer))`` or ``("error", reason)``.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipetune.burst import Epoch
from pipetune.diagnose.measurements import (
    STEPS_PER_CALL,
    ConsumerLever,
    ConsumerMeasurement,
    PassTiming,
    StageMeasurement,
)
from pipetune.diagnose.memory import cache_positions
from pipetune.diagnose.render import StageInfo
from pipetune.spec import Spec
from pipetune.trial_child import enter_child, explain_failure

CHUNK_S = 0.02  # seconds of elements per hand-over to Python: its overhead stays ~1%
MAX_CHUNK = 512
# The cache-read pass holds at most this many elements, and this many bytes of them.
CACHE_READ_ELEMENTS = 512
CACHE_READ_BYTES = 64 * 2**20


@dataclass(frozen=True, slots=True)
class ChildRequest:
    """Everything the child needs. Picklable."""

    spec: Spec
    module_source: str
    stages: tuple[StageInfo, ...]
    mode: str  # train | input | simulate
    batch_size: int
    cores: int
    shards: int
    seconds_per_pass: float
    max_elements: int
    precisions: tuple[str, ...] = ()  # the mixed precisions this device runs fast (train mode)


def child_main(request: ChildRequest, scratch: str, sender: Any, environ: dict[str, str]) -> None:
    enter_child(environ, Path(scratch), Path(scratch) / "diagnose.log")
    try:
        message: tuple[str, object] = ("ok", measure_all(request, Path(scratch)))
    except BaseException as err:  # noqa: BLE001 - every failure must reach the parent as data
        message = ("error", explain_failure(err))
    sender.send(message)
    sender.close()


def measure_all(request: ChildRequest, scratch: Path
                ) -> tuple[tuple[StageMeasurement, ...], PassTiming, ConsumerMeasurement]:
    from pipetune.user_code import on_sys_path

    with on_sys_path(request.spec.base_dir):
        module = _load(request.module_source, scratch)
        stages = tuple(measure_stage(module, info, request) for info in request.stages)
        cache_read = measure_cache_read(module, request, stages)
        consumer = measure_consumer(module, request)
    return stages, cache_read, consumer


def _load(source: str, scratch: Path) -> Any:
    # A real file, not exec: AutoGraph reads a function's source (as Plan.load_module does).
    path = scratch / "diagnosed_stages.py"
    path.write_text(source, encoding="utf-8")
    loader_spec = importlib.util.spec_from_file_location("pipetune_diagnosed_stages", path)
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[loader_spec.name] = module  # AutoGraph looks a function's module up there
    loader_spec.loader.exec_module(module)
    return module


def stage_datasets(module: Any, info: StageInfo, request: ChildRequest) -> tuple[Any, Any]:
    """The pipeline up to ``info``: sequential (one element at a time, in the caller's thread)
    and parallel (interleave over every shard, a map call per core, a pool for waiting stages)."""
    import tensorflow as tf

    sequential, parallel = module.read_sequential().repeat(), module.read_parallel().repeat()
    if info.function:
        function = getattr(module, info.function)
        sequential = sequential.map(function)
        parallel = parallel.map(function, num_parallel_calls=request.cores, deterministic=False)
    wide = tf.data.Options()
    wide.threading.private_threadpool_size = 2 * max(request.cores, request.shards)
    return sequential.with_options(_one_at_a_time()), parallel.with_options(wide)


def _one_at_a_time() -> Any:
    import tensorflow as tf

    options = tf.data.Options()
    # Else tf.data parallelises a stateless map, fuses map and batch into a parallel op and
    # adds a prefetch by itself: the sequential pass would not be sequential.
    optimization = options.experimental_optimization
    optimization.map_parallelization = False
    optimization.inject_prefetch = False
    optimization.map_and_batch_fusion = False
    optimization.parallel_batch = False
    return options


def measure_stage(module: Any, info: StageInfo, request: ChildRequest) -> StageMeasurement:
    sequential, parallel = stage_datasets(module, info, request)
    read_parallelism = request.shards if info.kind == "read" else request.cores
    parallel_timing, element_bytes = time_pass(parallel, request, read_parallelism)
    sequential_timing, _ = time_pass(sequential, request, 1)
    return StageMeasurement(info.name, info.kind, info.random, sequential_timing, parallel_timing,
                            element_bytes)


def measure_cache_read(module: Any, request: ChildRequest,
                       stages: tuple[StageMeasurement, ...]) -> PassTiming:
    """Elements read back from a memory cache where the Plan puts one (after the latest stage
    before the first random op), one at a time, as the sequential passes: what a cache leaves
    of the stages before it, measured rather than taken to be a record read. A few hundred
    elements are cached first; every later iterator of the same dataset reads them from memory."""
    position = len(cache_positions(stages)) - 1
    element_bytes = max(stages[position].element_bytes, 1.0)
    count = max(16, min(CACHE_READ_ELEMENTS, int(CACHE_READ_BYTES / element_bytes)))
    _, parallel = stage_datasets(module, request.stages[position], request)
    cached = parallel.take(count).cache()
    for _ in cached:  # fills it
        pass
    timing, _ = time_pass(cached.repeat().with_options(_one_at_a_time()), request, 1)
    return timing


def time_pass(dataset: Any, request: ChildRequest, parallelism: int) -> tuple[PassTiming, float]:
    """Up to ``max_elements`` or ``seconds_per_pass``, whichever first, after one warm-up chunk
    (start-up, tracing and buffer fill are not the stage's steady rate).

    Elements are counted and sized in the graph and handed to Python in chunks of about
    ``CHUNK_S`` seconds: a Python ``next()`` per element would cost more than many stages.
    Returns the timing and the mean bytes of one element.
    """
    chunk = chunk_size(_probe_seconds_per_element(dataset))
    iterator = Epoch(sized(dataset).batch(chunk))
    next(iterator)
    count, total_bytes, chunks = 0, 0, []
    cpu_start, start = time.process_time(), time.perf_counter()
    deadline = start + request.seconds_per_pass
    while count < request.max_elements and time.perf_counter() < deadline:
        chunk_cpu, chunk_start = time.process_time(), time.perf_counter()
        sizes = next(iterator).numpy()
        chunks.append(((time.perf_counter() - chunk_start) / len(sizes),
                       (time.process_time() - chunk_cpu) / len(sizes)))
        count += len(sizes)
        total_bytes += int(sizes.sum())
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    iterator.retire()
    median_wall, median_cpu = _median_chunk(chunks)
    timing = PassTiming(count, wall, cpu, parallelism, median_wall, median_cpu)
    return timing, total_bytes / max(count, 1)


def _median_chunk(chunks: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    """Per-element wall and CPU of the chunk with the median wall time."""
    if not chunks:
        return None, None
    ordered = sorted(chunks)
    return ordered[len(ordered) // 2]


def chunk_size(seconds_per_element: float) -> int:
    return max(1, min(MAX_CHUNK, int(CHUNK_S / max(seconds_per_element, 1e-9))))


def _probe_seconds_per_element(dataset: Any, elements: int = 4) -> float:
    """A rough per-element time (Python overhead included) to size the chunks."""
    iterator = iter(dataset)
    next(iterator)  # start-up
    start = time.perf_counter()
    for _ in range(elements):
        next(iterator)
    return (time.perf_counter() - start) / elements


def sized(dataset: Any) -> Any:
    """Each element replaced by its byte count, computed from it (so nothing upstream is pruned)."""
    import tensorflow as tf

    def nbytes(*element: Any) -> Any:
        total = tf.constant(0, tf.int64)
        for tensor in tf.nest.flatten(element):
            if tensor.dtype == tf.string:
                total += tf.reduce_sum(tf.cast(tf.strings.length(tensor), tf.int64))
            else:
                total += tf.size(tensor, out_type=tf.int64) * tensor.dtype.size
        return total

    return dataset.map(nbytes)


def measure_consumer(module: Any, request: ChildRequest) -> ConsumerMeasurement:
    step_ms = request.spec.model.step_time_ms
    if request.mode == "input":
        return ConsumerMeasurement("input", request.batch_size, None, measured=False)
    if request.mode == "simulate":
        return ConsumerMeasurement("simulate", request.batch_size, step_ms / 1000.0, measured=False)
    (step_s, cpu_s), levers = time_training(module, request)
    return ConsumerMeasurement("train", request.batch_size, step_s, measured=True, levers=levers, cpu_s=cpu_s)


def time_training(module: Any, request: ChildRequest) -> tuple[tuple[float, float], tuple[ConsumerLever, ...]]:
    """Median wall and process CPU seconds per batch of the training step on one batch held in
    memory (no input wait at all): plain (float32, the spec's jit_compile, one step per call), then with each
    consumer lever changed alone: twice the batch, STEPS_PER_CALL steps per call, XLA flipped,
    and each mixed precision this device runs fast. A lever that fails to build or run is
    left out: the sweep measures it and keeps its failure."""
    import keras
    import tensorflow as tf

    from pipetune.burst import multi_step_consumer
    from pipetune.models import build_model

    last = request.stages[-1]
    _, parallel = stage_datasets(module, last, request)
    features, labels = next(iter(parallel.map(module.to_model_inputs).batch(request.batch_size)))
    features, labels = tf.identity(features), tf.identity(labels)
    batch, shape, xla = int(labels.shape[0]), tuple(features.shape[1:]), request.spec.model.jit_compile

    def model(precision: str = "float32", jit_compile: bool = xla) -> Any:
        return build_model(request.spec, shape, precision, jit_compile)

    plain = model()
    step = _seconds_per_call(lambda: plain.train_on_batch(features, labels), request)
    double = (tf.concat([features, features], 0), tf.concat([labels, labels], 0))
    repeated = Epoch(tf.data.Dataset.from_tensors((features, labels)).repeat())
    consume = multi_step_consumer(plain)
    trials = [("batch_size", 2 * batch, 2 * batch, 1, lambda: plain.train_on_batch(*double)),
              ("steps_per_execution", STEPS_PER_CALL, batch, STEPS_PER_CALL,
               lambda: consume(repeated.iterator(), STEPS_PER_CALL))]
    trials += [("jit_compile", not xla, batch, 1, _trainer(lambda: model(jit_compile=not xla), features, labels))]
    trials += [("precision", precision, batch, 1, _trainer(lambda p=precision: model(precision=p), features, labels))
               for precision in request.precisions]
    levers = []
    for dimension, value, size, steps, call in trials:
        try:
            wall_s, cpu_s = _seconds_per_call(call, request)
            levers.append(ConsumerLever(dimension, value, size, wall_s / steps, cpu_s / steps))
        except Exception:  # noqa: BLE001 - the sweep measures the lever and keeps its failure
            continue
        finally:
            keras.mixed_precision.set_global_policy("float32")
    repeated.retire()
    return step, tuple(levers)


def _trainer(build: Any, features: Any, labels: Any) -> Any:
    """A call that trains a model built at its first use (inside the lever's own try)."""
    built: list[Any] = []

    def call() -> None:
        if not built:
            built.append(build())
        built[0].train_on_batch(features, labels)

    return call


def _seconds_per_call(call: Any, request: ChildRequest, warmup: int = 2,
                      calls: int = 20) -> tuple[float, float]:
    """Median wall and process CPU seconds of ``call`` after ``warmup`` calls (tracing,
    compiling); each call returns host values, so it has finished when it returns."""
    import statistics

    for _ in range(warmup):
        call()
    walls, cpus, deadline = [], [], time.perf_counter() + 2 * request.seconds_per_pass
    while len(walls) < calls and (len(walls) < 3 or time.perf_counter() < deadline):
        cpu_start, start = time.process_time(), time.perf_counter()
        call()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu_start)
    return statistics.median(walls), statistics.median(cpus)
