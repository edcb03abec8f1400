"""Tests for pipetune.trial, pipetune.trial_child and pipetune.burst: the measurement itself.

Known-rate checks use ``simulate`` mode, whose consumer sleeps for a fixed step time, and the
``sleep`` op, a known per-element wait: the expected effects are large (several times, tens
of percent), so they hold on a busy 2-core machine without tight timing thresholds.

Each trial spawns a process that imports TensorFlow (~5 s). Trials are run once per module
by fixtures and shared by the tests that read them; keep their number small. The
``run_burst`` tests at the end use a scripted clock and fake batches, no TensorFlow.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import make_spec
from pipetune import sources, stats
from pipetune.monitors import clip
from pipetune.plan import DataLayout
from pipetune.ranking import rank
from pipetune.results import Role, TrialResult, TrialState
from pipetune.serialize import trial_from_json, trial_to_json
from pipetune.spec import PipelineParams, Spec
from pipetune.trial import run_trial
from pipetune.trial_request import TrialRequest

pytestmark = pytest.mark.slow

USERFNS = Path(__file__).resolve().parent / "userfns"
GIB = 2**30
MS = 1_000_000
# Generous limits for trials that should complete: the machine is small and busy.
TIMEOUT_S = 180.0
RAM_BUDGET_BYTES = 6 * GIB
# A trial that sleeps forever is stopped after this; TensorFlow's import alone takes ~5 s.
SHORT_TIMEOUT_S = 20.0
SMALL_RAM_BUDGET_BYTES = int(1.5 * GIB)

SLEEP_MS = 10.0  # the input-bound pipeline's wait per element
INPUT_BOUND_EXAMPLES = 41  # 5 full batches of 8 and a last batch of 1 per epoch
# 80 ms: naive (no prefetch) waits ~2.5 ms a batch on a busy 2-core machine, and whole-epoch
# repeats include each epoch's restart: at 50 ms that came to ~5%, the band's very edge.
CONSUMER_STEP_MS = 80.0

CHEAP_PREPROCESS = [{"decode_image": {"key": "image"}}, {"normalize": {"key": "image"}}]


# --------------------------------------------------------------------------- helpers


def spec_with(*extra_ops: dict, step_time_ms: float, num_examples: int = 48) -> Spec:
    """The conftest spec in simulate mode; user functions import from ``tests/userfns``."""
    source = {"kind": "synthetic_images", "num_examples": num_examples, "image_size": [16, 16],
              "num_classes": 3, "seed": 1}
    return make_spec(USERFNS, source=source, preprocess=[*CHEAP_PREPROCESS, *extra_ops],
                     model={"step_time_ms": step_time_ms}, measure={"mode": "simulate"})


def call_op(function: str) -> dict:
    return {"call": {"fn": function, "random": False}}


def data_layout(spec: Spec, params: PipelineParams, root: Path) -> tuple[DataLayout, int]:
    """Shards for ``params`` and their layout, as ``sweep``'s layout helper builds them."""
    shard_set = sources.prepare_shards(spec, params.shards, params.compression, root)
    first = Path(shard_set.files[0])
    pattern = str(first.parent / f"*{''.join(first.suffixes)}")
    layout = DataLayout(pattern, shard_set.compression, sources.schema_of(spec))
    return layout, shard_set.manifest.num_examples


def measure(spec: Spec, params: PipelineParams, root: Path, *, key: str,
            role: Role = Role.CANDIDATE, warmup_steps: int = 2, steps: int = 4, repeats: int = 3,
            timeout_s: float = TIMEOUT_S, ram_budget_bytes: int = RAM_BUDGET_BYTES,
            layout: DataLayout | None = None, mode: str = "simulate",
            best_so_far: float | None = None) -> TrialResult:
    """One trial of ``params`` in a child process; shards live under ``root / "shards"``."""
    if layout is None:
        layout, num_examples = data_layout(spec, params, root / "shards")
    else:
        num_examples = spec.source.num_examples
    request = TrialRequest(spec=spec, params=params, role=role, key=key, data=layout,
                           num_examples=num_examples, mode=mode, warmup_steps=warmup_steps,
                           steps=steps, repeats=repeats, best_so_far=best_so_far)
    work = root / "work"
    work.mkdir(exist_ok=True)
    return run_trial(request, timeout_s, ram_budget_bytes, work)


def assert_complete(trial: TrialResult) -> None:
    assert trial.state is TrialState.COMPLETE, f"{trial.key}: {trial.state.value}: {trial.reason}"


def median_throughput(trial: TrialResult) -> float:
    return stats.median_iqr(stats.repeat_throughputs(trial))[0]


# --------------------------------------------------------------------------- trials, run once


@pytest.fixture(scope="module")
def input_bound(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrialResult]:
    """A 10 ms wait per element, a 1 ms consumer: sequential map, then parallel map.

    The parallel variant lifts tf.data's thread-pool cap (the core count) with a private pool:
    the stage waits rather than computes (DESIGN §4).
    """
    root = tmp_path_factory.mktemp("input-bound")
    spec = spec_with({"sleep": {"ms": SLEEP_MS}}, step_time_ms=1,
                     num_examples=INPUT_BOUND_EXAMPLES)
    sequential = PipelineParams(batch_size=8, map_parallel=1, prefetch=0)
    parallel = PipelineParams(batch_size=8, map_parallel=8, private_threadpool_size=16, prefetch=0)
    # steps == steps per epoch: every repeat holds exactly one epoch's examples.
    return {
        "sequential": measure(spec, sequential, root, key="sequential", steps=6),
        "parallel": measure(spec, parallel, root, key="parallel", steps=6),
    }


@pytest.fixture(scope="module")
def consumer_bound(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrialResult]:
    """A cheap pipeline, an 80 ms consumer: naive (uncached) against tuned (autotune, cached)."""
    root = tmp_path_factory.mktemp("consumer-bound")
    # 12 batches an epoch: every epoch's start (a fresh iterator, the first batch) is real
    # input wait, and in a 6-batch epoch it alone is 5% of naive's time.
    spec = spec_with(step_time_ms=CONSUMER_STEP_MS, num_examples=96)
    naive = PipelineParams(batch_size=8)
    tuned = PipelineParams(batch_size=8, map_parallel="autotune", prefetch="autotune",
                           cache="memory")
    # More repeats than the default: they cost an epoch (1 s) each, and they make a chance "win"
    # between two equally fast variants less likely (see the ranking test).
    return {
        "naive": measure(spec, naive, root, key="naive", role=Role.NAIVE, repeats=7),
        "tuned": measure(spec, tuned, root, key="tuned", role=Role.AUTOTUNE_DEFAULT, repeats=7),
    }


@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Trials that crash, exceed the RAM budget, time out, read a corrupt shard; then a normal one.

    All in this one process, one after the other, as a sweep would run them.
    """
    root = tmp_path_factory.mktemp("failures")
    params = PipelineParams(batch_size=8)
    marker = root / "sleepy-started"
    outcome: dict[str, Any] = {"sleep_marker": marker}
    outcome["crash"] = measure(spec_with(call_op("crashy:explode"), step_time_ms=1), params,
                               root, key="crash")
    outcome["oom"] = measure(spec_with(call_op("hungry:allocate"), step_time_ms=1), params, root,
                             key="oom", ram_budget_bytes=SMALL_RAM_BUDGET_BYTES)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PIPETUNE_TEST_SLEEP_MARKER", str(marker))  # inherited by the child
        outcome["timeout"] = measure(spec_with(call_op("sleepy:stall"), step_time_ms=1), params,
                                     root, key="timeout", timeout_s=SHORT_TIMEOUT_S)
    outcome["corrupt"] = measure_corrupt_shard(root / "corrupt", params)
    outcome["leftover_children"] = big_children(SMALL_RAM_BUDGET_BYTES)
    outcome["after"] = measure(spec_with(step_time_ms=1), params, root, key="after")
    return outcome


def measure_corrupt_shard(root: Path, params: PipelineParams) -> TrialResult:
    """A trial over a shard whose middle bytes were overwritten after it was written."""
    spec = spec_with(step_time_ms=1)
    layout, _ = data_layout(spec, params, root / "shards")
    (shard,) = Path(layout.file_pattern).parent.glob(Path(layout.file_pattern).name)
    size = shard.stat().st_size
    with open(shard, "r+b") as file:
        file.seek(size // 2)
        file.write(b"\xff" * 64)
    return measure(spec, params, root, key="corrupt", layout=layout)


def big_children(threshold_bytes: int) -> list[str]:
    """Live child processes of this test process holding more than ``threshold_bytes``."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.memory_info().rss > threshold_bytes:
                found.append(f"pid {child.pid}: {child.memory_info().rss / GIB:.2f} GiB")
        except psutil.Error:
            continue
    return found


# --------------------------------------------------------------------------- known rates


def test_sequential_map_of_a_waiting_stage_is_highly_input_bound(input_bound):
    sequential = input_bound["sequential"]
    assert_complete(sequential)
    fraction = stats.trial_wait_fraction(sequential)
    assert fraction >= 0.5, f"input-wait fraction {fraction:.3f}"
    assert stats.input_bound_band(fraction) == "highly"


def test_parallel_map_with_a_private_pool_is_at_least_three_times_faster(input_bound):
    sequential, parallel = input_bound["sequential"], input_bound["parallel"]
    assert_complete(sequential)
    assert_complete(parallel)
    speedup = median_throughput(parallel) / median_throughput(sequential)
    assert speedup >= 3.0, (f"parallel {median_throughput(parallel):.0f} ex/s vs sequential "
                            f"{median_throughput(sequential):.0f} ex/s: {speedup:.2f}x")
    assert stats.trial_wait_fraction(parallel) < stats.trial_wait_fraction(sequential)


def test_throughput_counts_the_examples_of_a_partial_last_batch(input_bound):
    """41 examples in batches of 8: each epoch ends with a batch of 1, not of 8.

    Every element of the sequential variant sleeps 10 ms in turn, so no honest count can
    exceed 100 examples/s; counting the last batch as full would report about 110.
    """
    sequential = input_bound["sequential"]
    assert_complete(sequential)
    assert sequential.steps_per_epoch == 6
    # Each repeat is 6 consecutive batches of the repeated dataset: exactly one epoch.
    assert [r.examples for r in sequential.repeats] == [INPUT_BOUND_EXAMPLES] * 3
    ceiling = 1000.0 / SLEEP_MS
    assert max(stats.repeat_throughputs(sequential)) <= ceiling


def test_a_variant_far_behind_the_best_so_far_runs_one_repeat(tmp_path):
    """Sequential 10 ms per element: 41 examples an epoch are >= 0.41 s, 30 epochs >= 12 s
    projected; the sweep's best so far is 1 s, at least 12x better (FAR_BEHIND is 2)."""
    spec = spec_with({"sleep": {"ms": SLEEP_MS}}, step_time_ms=1, num_examples=INPUT_BOUND_EXAMPLES)
    assert spec.measure.resolved_objective == "time_to_train" and spec.measure.epochs_planned == 30
    trial = measure(spec, PipelineParams(batch_size=8, map_parallel=1, prefetch=0), tmp_path,
                    key="far-behind", steps=6, repeats=3, best_so_far=1.0)
    assert_complete(trial)
    assert len(trial.repeats) == 1 and trial.cut_short
    assert trial_from_json(trial_to_json(trial)).cut_short


@pytest.mark.parametrize(("objective", "best", "cut"), [
    ("throughput", 1700.0, True), ("throughput", 1500.0, False),  # this variant: 800 examples/s
    ("time_to_train", 0.45, True), ("time_to_train", 0.55, False),  # this variant: 0.99 s
])
def test_far_behind_is_a_factor_of_two_behind_the_best_in_the_objectives_direction(objective, best, cut):
    from pipetune.burst import BurstTiming
    from pipetune.results import RepeatTiming
    from pipetune.trial_child import _far_behind

    spec = make_spec(USERFNS, measure={"mode": "simulate", "objective": objective, "epochs_planned": 10},
                     model={"step_time_ms": 10})
    request = TrialRequest(spec=spec, params=PipelineParams(batch_size=8), role=Role.CANDIDATE, key="k",
                           data=DataLayout("x", "none", {}), num_examples=80, mode="simulate",
                           warmup_steps=1, steps=10, repeats=3, best_so_far=best)
    # One window of 10 steps of 10 ms, 8 examples each: 800 examples/s; an epoch (10 steps)
    # 0.1 s, so 10 epochs project to 0.99 s (start-up, which holds the first step, is 0).
    window = RepeatTiming(tuple(i * 10 * MS for i in range(10)), (0,) * 10, (10 * MS,) * 10, examples=80)
    first = BurstTiming(startup_ns=0, fill_ns=None, boundary_ns=0, whole_epochs=True, repeats=(window,),
                        windows=((window.start_ns, window.end_ns),))
    assert _far_behind(request, steps_per_epoch=10)(first) is cut
    assert _far_behind(replace(request, best_so_far=None), steps_per_epoch=10) is None


def test_a_consumer_bound_pipeline_is_not_input_bound(consumer_bound):
    for trial in consumer_bound.values():
        assert_complete(trial)
        fraction = stats.trial_wait_fraction(trial)
        assert fraction < stats.MODERATELY_INPUT_BOUND, f"{trial.key}: input wait {fraction:.3f}"


def test_tuning_a_consumer_bound_pipeline_gains_nothing(consumer_bound):
    naive, tuned = consumer_bound["naive"], consumer_bound["tuned"]
    assert_complete(naive)
    assert_complete(tuned)
    ratio = median_throughput(tuned) / median_throughput(naive)
    assert 0.9 <= ratio <= 1.1, f"tuned / naive throughput = {ratio:.3f}"
    # The consumer takes 80 ms per batch of 8: neither variant can beat 100 examples/s.
    for trial in (naive, tuned):
        assert median_throughput(trial) <= 8 / (CONSUMER_STEP_MS / 1000)


def test_ranking_claims_no_real_win_between_consumer_bound_variants(consumer_bound):
    """Usually a tie. Between two equally fast variants the ranking's statistics still call a
    difference "significant" now and then (a few percent of the time with 7 repeats), so the
    test only forbids claiming a win of 10% or more, which would be a wrong measurement."""
    ranking = rank(list(consumer_bound.values()), "throughput")
    assert len(ranking.ranked) == 2
    (comparison,) = ranking.comparisons
    tied = ranking.ranked[1].tied_with_previous
    assert tied or not comparison.significant or comparison.speedup < 1.1, (
        f"speed-up {comparison.speedup:.3f} "
        f"[{comparison.speedup_ci_low:.3f}, {comparison.speedup_ci_high:.3f}] claimed")


# --------------------------------------------------------------------------- failures are data


def test_a_user_function_that_kills_its_process_is_a_crashed_trial(failures):
    crash = failures["crash"]
    assert crash.state is TrialState.FAILED
    assert "crashed" in crash.reason and "exited with code 1" in crash.reason, crash.reason
    assert crash.repeats == ()


def test_a_trial_over_the_ram_budget_is_stopped_as_out_of_memory(failures):
    oom = failures["oom"]
    assert oom.state is TrialState.FAILED
    assert "out of memory" in oom.reason, oom.reason
    assert oom.peak_rss_bytes is not None and oom.peak_rss_bytes > SMALL_RAM_BUDGET_BYTES
    assert failures["leftover_children"] == [], "the over-budget child is still alive"


def test_a_trial_that_blocks_past_the_timeout_is_timed_out(failures):
    timeout = failures["timeout"]
    assert timeout.state is TrialState.FAILED
    assert "timed out" in timeout.reason, timeout.reason
    # The child got as far as iterating the pipeline: the user function's wait timed out,
    # not TensorFlow's start-up.
    assert failures["sleep_marker"].exists(), "the user function never ran before the timeout"


def test_a_corrupt_shard_fails_the_trial_with_a_corrupt_record_reason(failures):
    corrupt = failures["corrupt"]
    assert corrupt.state is TrialState.FAILED
    assert "corrupt" in corrupt.reason.lower(), corrupt.reason
    assert "DataLossError" in corrupt.reason


def test_failed_trials_keep_their_identity(failures):
    for name in ("crash", "oom", "timeout", "corrupt"):
        trial = failures[name]
        assert (trial.key, trial.role, trial.batch_size) == (name, Role.CANDIDATE, 8)
        assert trial.params == PipelineParams(batch_size=8).model_dump()


def test_the_trial_after_the_failures_runs_normally(failures):
    after = failures["after"]
    assert_complete(after)
    assert len(after.repeats) == 3


# --------------------------------------------------------------------------- raw data


def test_raw_timings_and_monitor_samples_survive_json(consumer_bound):
    for trial in consumer_bound.values():
        assert_complete(trial)
        assert trial.monitor.samples, f"{trial.key}: no monitor samples"
        restored = trial_from_json(trial_to_json(trial))
        assert restored == trial
        assert restored.repeats == trial.repeats
        assert restored.monitor.samples == trial.monitor.samples


def test_repeats_hold_exactly_the_timed_steps(consumer_bound):
    for trial in consumer_bound.values():
        assert_complete(trial)
        assert len(trial.repeats) == 7
        # 96 examples = 12 batches of 80 ms an epoch: under 3 s, so every repeat is one whole
        # epoch from a fresh iterator (not a 4-step window).
        assert trial.whole_epochs
        for repeat in trial.repeats:
            assert len(repeat.request_ns) == len(repeat.wait_ns) == len(repeat.step_ns) == 12
            assert repeat.examples == 12 * 8
            # Every recorded step is a consumer step: time.sleep never returns early.
            assert min(repeat.step_ns) >= CONSUMER_STEP_MS * MS
            assert min(repeat.wait_ns) >= 0
            for i in range(3):
                end_of_step = repeat.request_ns[i] + repeat.wait_ns[i] + repeat.step_ns[i]
                assert repeat.request_ns[i + 1] >= end_of_step
        for earlier, later in zip(trial.repeats, trial.repeats[1:]):
            assert later.start_ns >= earlier.end_ns


def test_start_up_is_recorded_and_fill_only_for_a_cached_variant(consumer_bound):
    naive, tuned = consumer_bound["naive"], consumer_bound["tuned"]
    assert_complete(naive)
    assert_complete(tuned)
    assert naive.startup_ns is not None and naive.startup_ns > 0
    assert tuned.startup_ns is not None and tuned.startup_ns > 0
    assert naive.fill_ns is None
    # The fill is the first epoch after its first batch (start-up): 11 batches of >= 80 ms.
    assert tuned.fill_ns is not None
    assert tuned.fill_ns >= (tuned.steps_per_epoch - 1) * CONSUMER_STEP_MS * MS
    assert tuned.startup_ns >= CONSUMER_STEP_MS * MS  # start-up holds the first step
    assert tuned.steps_per_epoch == 12


def test_monitor_samples_share_the_burst_clock(consumer_bound):
    """Samples are stamped on the burst's clock: they bracket and fall inside the windows."""
    for trial in consumer_bound.values():
        assert_complete(trial)
        stamps = [sample.t_ns for sample in trial.monitor.samples]
        windows = [(r.start_ns, r.end_ns) for r in trial.repeats]
        assert min(stamps) < windows[0][0] and max(stamps) > windows[-1][1]
        assert clip(trial.monitor, windows).samples, "no sample inside any timed window"


# --------------------------------------------------------------------------- train mode


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrialResult]:
    """A real Keras model (builtin small_cnn) consumes the batches: uncached and cached."""
    root = tmp_path_factory.mktemp("train")
    source = {"kind": "synthetic_images", "num_examples": 96, "image_size": [16, 16],
              "num_classes": 3, "seed": 1}
    spec = make_spec(USERFNS, source=source, preprocess=CHEAP_PREPROCESS,
                     model={"builtin": "small_cnn"}, measure={"mode": "train"})
    return {cache: measure(spec, PipelineParams(batch_size=8, cache=cache, shuffle_buffer=32), root,
                           key=f"train-{cache}", mode="train", steps=3, repeats=3)
            for cache in ("none", "memory")}


def test_train_mode_records_every_part_of_the_objective(trained):
    epochs = 10
    for cache, trial in trained.items():
        assert_complete(trial)
        assert trial.environment["mode"] == "train"
        parts = stats.objective_parts(trial, epochs)
        steady_step_s = parts.steady_epoch_s / trial.steps_per_epoch
        # Start-up holds Keras' tracing of the first step: far slower than a steady step.
        assert parts.startup_s > 3 * steady_step_s, (parts, steady_step_s)
        assert parts.steady_epoch_s > 0 and trial.boundary_ns is not None
        assert trial.cpu_s_per_example is not None and trial.cpu_s_per_example > 0
        assert (trial.fill_ns is not None) == (cache == "memory")
        # A cache's start-up and fill are its first epoch; otherwise start-up holds the first
        # epoch's first step, so the steady epochs are one step short of ``epochs``.
        steady_epochs = epochs - 1 if cache == "memory" else epochs - 1 / trial.steps_per_epoch
        assert parts.time_to_train_s == pytest.approx(
            parts.startup_s + (parts.fill_s or 0) + parts.boundary_s * epochs
            + parts.steady_epoch_s * steady_epochs)
        # 96 examples, batch 8: 12 steps an epoch; a buffer of 32 = 4 steps to fill and drain.
        assert trial.steps_per_epoch == 12


def test_the_fill_excludes_start_up_in_train_mode(trained):
    cached = trained["memory"]
    # The fill is 11 training steps (the first epoch without its first batch); start-up, with
    # the tracing, is not in it: the fill is far shorter than 11 start-ups.
    assert cached.fill_ns < 11 * cached.startup_ns
    assert cached.fill_ns > 0


class _StartedProcess:
    """Stands in for a multiprocessing.Process whose start takes a Ctrl-C."""

    def __init__(self) -> None:
        self.pid, self.killed = None, False

    def start(self) -> None:
        import signal
        import threading

        self.pid = 12345
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # lands mid-start

    def is_alive(self) -> bool:
        return not self.killed

    def kill(self) -> None:
        self.killed = True

    def join(self, timeout: float | None = None) -> None:
        pass


def test_a_ctrl_c_during_a_trials_start_is_not_lost():
    """It stays pending while the child starts, then stops that child and interrupts (it was
    dropped while SIGINT was ignored around the start)."""
    import signal

    from pipetune.trial import start_ignoring_sigint

    process = _StartedProcess()
    with pytest.raises(KeyboardInterrupt):
        start_ignoring_sigint(process)
    assert process.killed
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # unblocked again
    assert signal.SIGINT not in signal.sigpending()


_CHILD_THAT_CONVERTS = """
import os, sys
from pathlib import Path
from pipetune.trial_child import enter_child
scratch = Path(sys.argv[1])
enter_child(dict(os.environ), scratch, scratch / "child.log")
import tensorflow as tf


def plus_one(x):
    if x > 0:  # control flow, which AutoGraph rewrites
        return x + 1
    return x


list(tf.data.Dataset.range(3).map(plus_one))
os._exit(0)  # how a forked trial leaves: no atexit, so AutoGraph never deletes its files
"""


def test_a_childs_autograph_files_stay_in_its_scratch_folder(tmp_path):
    """AutoGraph's generated modules go to the scratch folder the parent removes, not to the
    system temp dir, where a forked child (which skips atexit) would leave them for good."""
    import os
    import subprocess
    import sys

    system_tmp, scratch = tmp_path / "tmp", tmp_path / "scratch"
    system_tmp.mkdir()
    scratch.mkdir()
    script = tmp_path / "child.py"  # a file: AutoGraph reads a function's source
    script.write_text(_CHILD_THAT_CONVERTS, encoding="utf-8")
    subprocess.run([sys.executable, str(script), str(scratch)], check=True, timeout=120,
                   env={**os.environ, "TMPDIR": str(system_tmp)})
    assert list(scratch.glob("__autograph_generated_file*"))  # it did write some
    assert not list(system_tmp.glob("__autograph_generated_file*"))
