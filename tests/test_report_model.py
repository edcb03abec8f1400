"""The report's numbers, checked against values computed by hand from hand-built trials.

Throughput of a trial built here is ``batch_size / (step + wait)``: each repeat is STEPS
back-to-back steps, so its wall time is ``STEPS * (step + wait)``.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import make_spec
from pipetune.device import Device, Gpu
from pipetune.ranking import rank
from pipetune.report.diagnosis import build_diagnosis, needs_log_scale
from pipetune.report.model import build_report, build_verdict
from pipetune.report.rows import effect_rows, step_breakdown, unrun_rows
from pipetune.report.timelines import HOST_BUSY_NOTE, downsample, timeline
from pipetune.results import MonitorReport, MonitorSample, RepeatTiming, Role, TrialResult, TrialState
from pipetune.outcome import SweepOutcome
from pipetune.space import Dropped
from pipetune.spec import PipelineParams

MS = 1_000_000
STEPS = 10
STEPS_PER_EPOCH = 1000
ENV = {"python": "3.11.7", "tensorflow": "2.21.0", "keras": "3.15.1", "platform": "Linux"}
CPU_DEVICE = Device("Test CPU", 2, False, accelerator_note="No NVIDIA GPU (NVML library not found)")


def make_repeat(step_ms: float, wait_ms: float, batch_size: int, start_ns: int,
                steps: int = STEPS) -> RepeatTiming:
    step, wait = round(step_ms * MS), round(wait_ms * MS)
    return RepeatTiming(request_ns=tuple(start_ns + i * (step + wait) for i in range(steps)),
                        wait_ns=(wait,) * steps, step_ns=(step,) * steps,
                        examples=steps * batch_size)


def make_trial(key: str, step_ms: list[float], role: Role = Role.CANDIDATE, wait_ms: float = 0.0,
               state: TrialState = TrialState.COMPLETE, reason: str = "", fill_ns: int | None = None,
               monitor: MonitorReport | None = None, environment: dict | None = None,
               cpu_percent: float | None = 100.0, steps: int = STEPS,
               cpu_s_per_example: float | None = None, **params: object) -> TrialResult:
    """One repeat per entry of ``step_ms``, each after the previous one, on one clock."""
    pipeline = PipelineParams(**params)
    repeats, start = [], 1_000 * MS
    for ms in step_ms:
        repeats.append(make_repeat(ms, wait_ms, pipeline.batch_size, start, steps))
        start = repeats[-1].end_ns
    return TrialResult(
        key=key, role=role, params=pipeline.model_dump(), state=state, reason=reason,
        batch_size=pipeline.batch_size, steps_per_epoch=STEPS_PER_EPOCH, fill_ns=fill_ns,
        repeats=tuple(repeats), cpu_percent=cpu_percent, cpu_s_per_example=cpu_s_per_example,
        peak_rss_bytes=2**30,
        monitor=monitor or MonitorReport(accelerator_note=CPU_DEVICE.accelerator_note),
        environment=dict(ENV if environment is None else environment), budget_steps=steps,
    )


def make_outcome(tmp_path: Path, trials: list[TrialResult], objective: str = "throughput",
                 epochs: int = 10, dropped: list[Dropped] | None = None,
                 device: Device = CPU_DEVICE) -> SweepOutcome:
    spec = make_spec(tmp_path, measure={"warmup_steps": 1, "steps": STEPS, "repeats": 2,
                                        "epochs_planned": epochs})
    return SweepOutcome(spec, tmp_path, "grid", "train", trials, dropped or [],
                        rank(trials, objective, epochs=epochs), device, 42.0)


def references_sweep() -> list[TrialResult]:
    """A winner at 32 examples per 1 ms step, and the three references, slower."""
    return [
        make_trial("winner", [1.0, 1.0], prefetch="autotune", map_parallel="autotune"),
        make_trial("naive", [2.0, 4.0], Role.NAIVE),
        make_trial("autotune", [1.6, 1.6], Role.AUTOTUNE_DEFAULT, map_parallel="autotune"),
        make_trial("baseline", [1.25, 1.25], Role.BASELINE, prefetch=1),
    ]


# --------------------------------------------------------------------------- verdict


def test_speedups_intervals_and_time_saved_by_hand(tmp_path):
    verdict = build_verdict(make_outcome(tmp_path, references_sweep()))
    assert verdict.winner_key == "winner"
    assert verdict.winner_throughput == pytest.approx(32_000)
    by_role = {c.role: c for c in verdict.comparisons}
    assert list(by_role) == ["naive", "autotune-default", "baseline"]
    # naive: 16,000 and 8,000 examples/s, median 12,000. Resampled medians of two repeats are
    # 16,000, 12,000 or 8,000 (each end with probability 1/4), so the 95% interval of
    # 32,000 / median is exactly (32/16, 32/8).
    naive = by_role["naive"]
    assert naive.speedup == pytest.approx(32 / 12)
    assert (naive.speedup_ci_low, naive.speedup_ci_high) == pytest.approx((2.0, 4.0))
    assert naive.significant
    # 1000 steps per epoch, 10 epochs: 2 ms and 4 ms per step give 20 s and 40 s (median 30 s);
    # the winner needs 10 s.
    assert naive.reference_time_s == pytest.approx(30.0, rel=1e-3)  # less the start-up's first step
    assert naive.time_saved_s == pytest.approx(20.0, rel=1e-3)
    assert by_role["autotune-default"].speedup == pytest.approx(1.6)
    assert by_role["autotune-default"].speedup_ci_low == pytest.approx(1.6)
    baseline = by_role["baseline"]
    assert (baseline.speedup, baseline.speedup_ci_low, baseline.speedup_ci_high) == pytest.approx(
        (1.25, 1.25, 1.25))
    # The headline saving is against the user's baseline: 12.5 s - 10 s.
    saved = verdict.time_saved
    assert (saved.reference_role, saved.epochs) == ("baseline", 10)
    assert (saved.reference_s, saved.winner_s, saved.saved_s) == pytest.approx((12.5, 10.0, 2.5), rel=1e-3)
    assert saved.saved_fraction == pytest.approx(0.2)


def test_time_to_train_counts_the_cache_fill_once(tmp_path):
    trials = [make_trial("cached", [1.0, 1.0], cache="memory", fill_ns=5_000 * MS),
              make_trial("naive", [2.0, 2.0], Role.NAIVE)]
    verdict = build_verdict(make_outcome(tmp_path, trials, objective="time_to_train", epochs=10))
    # Cached: 5 s fill + 9 steady epochs of 1 s = 14 s; naive: 10 epochs of 2 s = 20 s.
    assert verdict.winner_median == pytest.approx(14.0)
    assert verdict.comparisons[0].speedup == pytest.approx(20 / 14, rel=1e-3)  # naive: less one step
    assert verdict.time_saved.saved_s == pytest.approx(6.0, abs=0.01)


@pytest.mark.parametrize("step_ms, wait_ms, fraction, band", [
    (24.0, 1.0, 0.04, "not"),
    (19.0, 1.0, 0.05, "moderately"),  # 5% is the lower edge of "moderately"
    (9.0, 1.0, 0.10, "moderately"),
    (4.0, 1.0, 0.20, "highly"),  # 20% is the lower edge of "highly"
])
def test_input_bound_band_of_the_baseline(tmp_path, step_ms, wait_ms, fraction, band):
    trials = [make_trial("winner", [1.0, 1.0], prefetch="autotune"),
              make_trial("naive", [50.0, 50.0], Role.NAIVE, wait_ms=40.0),
              make_trial("baseline", [step_ms, step_ms], Role.BASELINE, wait_ms=wait_ms, prefetch=1)]
    bound = build_verdict(make_outcome(tmp_path, trials)).input_bound
    assert (bound.role, bound.band, bound.note) == ("baseline", band, "")
    assert bound.wait_fraction == pytest.approx(fraction)


def test_input_bound_falls_back_to_naive(tmp_path):
    winner = make_trial("winner", [1.0, 1.0], prefetch="autotune")
    naive = make_trial("naive", [4.0, 4.0], Role.NAIVE, wait_ms=1.0)
    without_baseline = build_verdict(make_outcome(tmp_path, [winner, naive])).input_bound
    assert (without_baseline.role, without_baseline.band) == ("naive", "highly")
    assert "no baseline in the spec" in without_baseline.note
    failed = make_trial("baseline", [], Role.BASELINE, state=TrialState.FAILED, reason="OOM", prefetch=1)
    verdict = build_verdict(make_outcome(tmp_path, [winner, naive, failed]))
    assert verdict.input_bound.role == "naive"
    assert "OOM" in verdict.input_bound.note
    baseline = next(c for c in verdict.comparisons if c.role == "baseline")
    assert (baseline.status, baseline.reason, baseline.speedup) == ("not ranked", "OOM", None)
    assert verdict.time_saved.reference_role == "naive"


def test_a_winning_reference_is_not_compared_with_itself(tmp_path):
    trials = [make_trial("baseline", [1.0, 1.0], Role.BASELINE, prefetch=1),
              make_trial("naive", [3.0, 3.0], Role.NAIVE)]
    verdict = build_verdict(make_outcome(tmp_path, trials))
    assert verdict.winner_label == "baseline"
    assert [(c.role, c.status) for c in verdict.comparisons] == [("naive", "compared"),
                                                                  ("baseline", "winner")]
    assert verdict.time_saved.reference_role == "naive"


def test_no_completed_variant_gives_an_empty_verdict_and_report(tmp_path):
    trials = [make_trial("naive", [], Role.NAIVE, state=TrialState.FAILED, reason="crashed")]
    report = build_report(make_outcome(tmp_path, trials))
    assert report.verdict.winner_key is None
    assert report.verdict.comparisons == () and report.verdict.input_bound is None
    assert report.rows == () and report.steps == () and report.timelines == ()
    assert report.timelines_missing == (("naive", "crashed"),)
    assert [(u.state, u.reason) for u in report.unrun] == [("failed", "crashed")]


# --------------------------------------------------------------------------- rows


def test_effects_by_hand_in_the_direction_that_helps():
    trials = [  # examples/s: 16,000, 32,000, 32,000 and 128,000
        make_trial("a", [2.0], prefetch=0, cache="none"),
        make_trial("b", [1.0], prefetch="autotune", cache="none"),
        make_trial("c", [1.0], prefetch=0, cache="memory"),
        make_trial("d", [0.25], prefetch="autotune", cache="memory"),
    ]
    effects = {e.dimension: e for e in effect_rows(trials)}
    assert set(effects) == {"prefetch", "cache"}
    # prefetch: b/a = 2 and d/c = 4; cache: c/a = 2 and d/b = 4. Median 3 over 2 pairs.
    prefetch, cache = effects["prefetch"], effects["cache"]
    assert (prefetch.better_value, prefetch.worse_value) == ("autotune", 0)
    assert (cache.better_value, cache.worse_value) == ("memory", "none")
    for effect in (prefetch, cache):
        assert (effect.ratio, effect.low, effect.high, effect.pairs) == pytest.approx((3.0, 2.0, 4.0, 2))


def test_step_breakdown_and_cache_fill_by_hand(tmp_path):
    trials = [make_trial("cached", [4.0, 4.0], wait_ms=1.0, cache="memory", fill_ns=8_000 * MS),
              make_trial("naive", [6.0, 6.0], Role.NAIVE, wait_ms=3.0)]
    ranking = make_outcome(tmp_path, trials).ranking
    cached, naive = (step_breakdown(r, "cached") for r in ranking.ranked)
    assert (cached.label, cached.colour_role, naive.colour_role) == ("cached", "winner", "naive")
    assert (cached.input_wait_ms, cached.compute_ms, cached.steady_ms_per_step) == pytest.approx((1, 4, 5))
    assert (cached.fill_ms_per_step, cached.fill_s) == pytest.approx((8.0, 8.0))  # 8 s / 1000 steps
    assert cached.fill_over_steady == pytest.approx(8 / 5)
    assert (naive.input_wait_ms, naive.compute_ms, naive.fill_ms_per_step) == (pytest.approx(3),
                                                                             pytest.approx(6), None)


def test_ranking_rows_mark_ties_and_split_parameters(tmp_path):
    # A tie is broken by CPU-seconds per example (not CPU%, a rate that favours slow variants).
    trials = [make_trial("fast", [1.0, 1.2], prefetch="autotune", cpu_s_per_example=0.003),
              make_trial("frugal", [1.1, 1.05], prefetch=2, cpu_s_per_example=0.001),
              make_trial("naive", [5.0, 5.0], Role.NAIVE)]
    report = build_report(make_outcome(tmp_path, trials))
    assert [(r.label, r.tied_with_previous) for r in report.rows] == [
        ("frugal", False), ("fast", True), ("naive", False)]
    assert report.verdict.tied_for_first == 2
    assert report.varying_dimensions == ("prefetch",)
    assert ("batch_size", 32) in report.shared_parameters
    assert [r.varying_values for r in report.rows] == [(2,), ("autotune",), (0,)]
    naive = report.rows[-1]
    assert naive.throughput == pytest.approx(32 / 5e-3)
    assert naive.input_wait_fraction == 0.0 and naive.peak_rss_bytes == 2**30


def test_unranked_rows_keep_reasons_failed_first_dropped_last():
    trials = [make_trial("p", [1.0], state=TrialState.PRUNED, reason="halving: rung 0"),
              make_trial("f", [], state=TrialState.FAILED, reason="timed out after 60 s"),
              make_trial("s", [], state=TrialState.SKIPPED, reason="not run: the time budget was spent"),
              make_trial("e", [])]
    dropped = [Dropped(PipelineParams(precision="mixed_float16"), "needs a GPU")]
    rows = unrun_rows(rank(trials, "throughput").unranked, dropped)
    assert [(r.state, r.key, r.reason) for r in rows[:4]] == [
        ("failed", "f", "timed out after 60 s"), ("no timed repeats", "e", "no timed repeats"),
        ("pruned", "p", "halving: rung 0"), ("skipped", "s", "not run: the time budget was spent")]
    assert (rows[4].state, rows[4].reason, rows[4].dropped_before_sweep) == ("skipped", "needs a GPU", True)


# --------------------------------------------------------------------------- timelines


def cpu_samples(start_ns: int, values: list[float]) -> tuple[MonitorSample, ...]:
    return tuple(MonitorSample(start_ns + i * 50 * MS, "host.process_cpu_percent", v)
                 for i, v in enumerate(values))


def test_host_timeline_is_device_busy_per_step_and_says_so():
    monitor = MonitorReport(cpu_samples(0, [80.0, 120.0]), accelerator_note="No NVIDIA GPU")
    trial = make_trial("t", [4.0], wait_ms=1.0, monitor=monitor)  # repeat starts at 1 s
    line = timeline(trial, "t", "winner")
    assert (line.source, line.accelerator_note) == ("host", "No NVIDIA GPU")
    busy, cpu = line.panels
    assert "host-measured" in busy.axis_label and busy.y_max == 100.0
    assert HOST_BUSY_NOTE == "host-measured device-busy time, not NVML data"
    # Every step: 4 ms of 5 busy; placed at each step's middle, 1 s after the first sample.
    assert busy.series[0].values == pytest.approx([80.0] * STEPS)
    assert busy.series[0].times_s[:2] == pytest.approx([1.0025, 1.0075])
    assert cpu.series[0].values == (80.0, 120.0) and cpu.series[0].times_s == pytest.approx((0, 0.05))
    assert len(line.timed_windows_s) == 1
    assert line.timed_windows_s[0] == pytest.approx((1.0, 1.05))


def test_gpu_timeline_uses_nvml_samples():
    """GPU-only branch: the NVML samples are hand-made, as no GPU is available to CI."""
    samples = (MonitorSample(0, "gpu0.kernel_active_percent", 30.0),
               MonitorSample(100 * MS, "gpu0.kernel_active_percent", 90.0),
               MonitorSample(0, "gpu0.memory_used_bytes", 2 * 2**30),
               MonitorSample(0, "gpu1.memory_used_bytes", 2**29),
               MonitorSample(0, "gpu0.power_w", 250.0)) + cpu_samples(0, [100.0])
    monitor = MonitorReport(samples, (("gpu0.pcie_rx_kbps", "NVML: Not Supported"),),
                            "1 NVIDIA GPU monitored via NVML")
    line = timeline(make_trial("t", [1.0], monitor=monitor), "t", "winner")
    assert line.source == "nvml"
    assert [p.axis_label for p in line.panels] == [
        "GPU kernel-active (%)", "GPU memory used (GiB)", "GPU power (W)",
        "host CPU, this process (%; 100 = one core)"]
    kernel, memory, power, _ = line.panels
    assert kernel.series[0].values == (30.0, 90.0) and kernel.series[0].times_s == (0.0, 0.1)
    assert [(s.label, s.values) for s in memory.series] == [("gpu0", (2.0,)), ("gpu1", (0.5,))]
    assert power.series[0].values == (250.0,)
    assert line.unavailable == (("gpu0.pcie_rx_kbps", "NVML: Not Supported"),)


def test_downsample_averages_consecutive_buckets():
    times, values = downsample(list(range(10)), [float(v) for v in range(10)], max_points=4)
    # Bucket edges round(i * 10 / 4): 0, 2, 5, 8, 10.
    assert values == (0.5, 3.0, 6.0, 8.5) and times == values
    assert downsample([1.0], [2.0], max_points=4) == ((1.0,), (2.0,))
    with pytest.raises(ValueError):
        downsample([], [], max_points=0)


# --------------------------------------------------------------------------- diagnosis


def stage_document(name: str, kind: str, sequential: float | None, parallel: float | None,
                   wall_s: float, cpu_s: float, speedup: float | None, random: bool = False) -> dict:
    return {"name": name, "kind": kind, "random": random, "element_bytes": 1536.0,
            "cumulative": {"sequential": {"rate": sequential, "parallelism": 1},
                           "parallel": {"rate": parallel, "parallelism": 4}},
            "alone": {"wall_s": wall_s, "cpu_s": cpu_s, "rate_1": 1 / wall_s, "speedup": speedup,
                      "blocking": wall_s > 2 * cpu_s, "ceiling": None}}


def diagnosis_document(consumer_rate: float | None = 20_000.0) -> dict:
    """A blocking read, then a random op; as ``diagnosis_document`` + ``auto_space`` write it."""
    sentence = "blocking I/O in `read`: each element waits 1.00 ms"
    return {
        "cores": 2, "shards": 8, "measure_seconds": 12.5, "measured_rate": 900.0, "predicted_rate": 40_000.0,
        "bottleneck": {"kind": "blocking_io", "stage": "read", "sentence": sentence},
        "consumer": {"mode": "train", "batch_size": 32, "rate": consumer_rate},
        "stages": [stage_document("read", "read", 1000.0, 3900.0, 1e-3, 1e-4, 3.9),
                   stage_document("random_flip(image)", "op", 950.0, None, 5e-5, 5e-5, None, random=True)],
        "levers": [{"lever": "the consumer (training step)", "stage": None, "ceiling": consumer_rate,
                    "note": "train_on_batch"},
                   {"lever": "parallel interleave, 16 calls", "stage": "read", "ceiling": 200_000.0,
                    "note": "Little's law"},
                   {"lever": "cache after read", "stage": "read", "ceiling": 1000.0, "note": "fits"},
                   {"lever": "mixed precision for the model", "stage": None, "ceiling": None,
                    "note": "gain unknown until measured"}],
        "space": {"shards": [16], "deterministic": [True, False]},
        "reasons": [f"diagnosis: {sentence}", "blocking reads: 16 files read at once"],
        "consumer_bound": False,
    }


def test_a_hand_listed_space_has_no_diagnosis(tmp_path):
    assert build_diagnosis(None) is None
    assert build_report(make_outcome(tmp_path, references_sweep())).diagnosis is None


def test_diagnosis_section_by_hand(tmp_path):
    outcome = dataclasses.replace(make_outcome(tmp_path, references_sweep()),
                                  diagnosis=diagnosis_document())
    d = build_report(outcome).diagnosis
    assert (d.bottleneck_kind, d.bottleneck_stage) == ("blocking_io", "read")
    assert (d.cores, d.shards, d.measure_s, d.diagnosed_rate) == (2, 8, 12.5, 900.0)
    # The pick is the winner: 32 examples per 1 ms step; the diagnosis predicted 40,000/s.
    assert (d.predicted_rate, d.pick_measured_rate) == pytest.approx((40_000.0, 32_000.0))
    assert d.measured_over_predicted == pytest.approx(0.8)
    read, flip = d.stages
    assert (read.name, read.kind, read.random, read.waits) == ("read", "read", False, True)
    assert (read.sequential_rate, read.parallel_rate, read.parallelism) == (1000.0, 3900.0, 4)
    assert (read.alone_rate, read.wall_s, read.cpu_s, read.speedup) == pytest.approx((1000, 1e-3, 1e-4, 3.9))
    assert read.element_bytes == 1536.0
    assert (flip.random, flip.waits, flip.parallel_rate, flip.speedup) == (True, False, None, None)
    assert [(b.label, b.ceiling, b.lowest) for b in d.levers] == [
        ("the consumer (training step)", 20_000.0, False),
        ("parallel interleave, 16 calls: read", 200_000.0, False),
        ("cache after read", 1000.0, True),  # the stage is in the lever's name already
        ("mixed precision for the model", None, False)]  # unknown, not 0
    assert d.consumer_rate == 20_000.0 and d.consumer_mode == "train"
    assert d.log_scale  # 1,000 to 200,000: 200x
    assert d.reasons == ("blocking reads: 16 files read at once",)  # the sentence is shown once
    assert d.searched == (("deterministic", ("true", "false")),) and d.fixed == (("shards", "16"),)


def test_diagnosis_without_a_consumer_or_a_pick_says_unknown():
    document = {**diagnosis_document(consumer_rate=None), "predicted_rate": None,
                "pick_measured_rate": None, "levers": [{"lever": "x", "ceiling": float("inf")}]}
    d = build_diagnosis(document)
    assert (d.consumer_rate, d.predicted_rate, d.pick_measured_rate, d.measured_over_predicted) == (
        None, None, None, None)
    assert [(b.label, b.ceiling, b.lowest) for b in d.levers] == [("x", None, False)]
    assert not d.log_scale
    assert build_diagnosis({}).stages == () and build_diagnosis({}).levers == ()


@pytest.mark.parametrize("values, log", [
    ([1.0, 100.0], False),  # exactly 100x: linear
    ([1.0, 100.5], True),
    ([None, 0.0, 5.0, 600.0], True),  # unknown and zero values are left out
    ([None], False),
])
def test_log_scale_only_beyond_a_hundredfold_span(values, log):
    assert needs_log_scale(values) is log


# --------------------------------------------------------------------------- whole report


def test_report_of_a_gpu_sweep_lists_the_gpu_and_the_missing_driver(tmp_path):
    """GPU-only branch: the device facts are hand-made, as no GPU is available to CI."""
    device = Device("Test CPU", 8, False, gpus=(Gpu("NVIDIA A100", (8, 0)),))
    report = build_report(make_outcome(tmp_path, references_sweep(), device=device))
    facts = dict(report.environment)
    assert facts["Accelerator"] == "NVIDIA A100 (compute capability 8.0)"
    assert "not recorded" in facts["GPU driver"]
    assert (facts["Python"], facts["TensorFlow"], facts["Keras"]) == ("3.11.7", "2.21.0", "3.15.1")
    assert [t.label for t in report.timelines] == ["winner", "naive", "autotune-default", "baseline"]


def test_the_report_modules_import_no_tensorflow():
    code = ("import sys, pipetune.report, pipetune.report.html, pipetune.report.model; "
            "assert not {'tensorflow', 'keras'} & set(sys.modules), 'TensorFlow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
