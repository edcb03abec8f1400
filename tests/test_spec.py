"""The dataset spec: every bad spec fails with one precise line per problem; good specs round-trip.

Bad specs are run through the CLI in-process (``pipetune validate``), as a user would see them:
exit code 2, ``file:line:col: dotted.key: message`` on stderr, and no traceback.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipetune.cli import main
from pipetune.spec import (
    Cast,
    ColorJitter,
    DecodeImage,
    InputsSpec,
    MeasureSpec,
    ModelSpec,
    Normalize,
    OneHot,
    PipelineParams,
    PreprocessStep,
    RandomCrop,
    RandomFlip,
    Resize,
    ResourcesSpec,
    SearchSpace,
    SearchSpec,
    Sleep,
    Spec,
    SyntheticImagesSource,
    dump_spec,
)
from pipetune.validate import load_spec

REPO = Path(__file__).resolve().parents[1]

# A valid spec; each bad case changes one line of it. The line numbers are asserted below.
BASE = """\
name: t
source:
  kind: synthetic_images
  num_examples: 64
preprocess:
  - decode_image: {key: image}
  - normalize: {key: image}
inputs: {features: image, label: label}
model:
  builtin: small_cnn
"""
SPACE = BASE + "search:\n  space:\n"  # a dimension added after this sits on line 13

TFRECORD = """\
name: t
source:
  kind: tfrecord
  files: 'records/*.tfrecord'
  features:
    image: {type: bytes}
    label: {type: int64}
inputs: {features: image, label: label}
model:
  builtin: small_cnn
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@dataclass(frozen=True)
class Bad:
    id: str
    text: str
    line: int
    col: int
    key: str
    phrases: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)  # extra files beside the spec


BAD_SPECS = [
    Bad("yaml-syntax-indent", edit("  num_examples: 64", "   num_examples: 64"),
        4, 16, "<document>", ("YAML syntax error", "mapping values are not allowed here")),
    Bad("yaml-syntax-tab", edit("  kind: synthetic_images", "\tkind: synthetic_images"),
        3, 1, "<document>", ("YAML syntax error", "'\\t'")),
    Bad("unknown-key", edit("num_examples: 64", "num_exampels: 64"),
        4, 3, "source.num_exampels",
        ("unknown key 'num_exampels'", "did you mean 'num_examples'?")),
    Bad("unknown-op-param", edit("normalize: {key: image}", "normalize: {key: image, sdt: 2}"),
        7, 29, "preprocess.1.normalize.sdt", ("unknown key 'sdt'", "did you mean 'std'?")),
    Bad("unknown-space-dimension", SPACE + "    batch_sizes: [32]\n",
        13, 5, "search.space.batch_sizes", ("did you mean 'batch_size'?",)),
    Bad("wrong-type", edit("num_examples: 64", "num_examples: many"),
        4, 3, "source.num_examples", ("valid integer", "but got 'many'")),
    Bad("negative-count", edit("num_examples: 64", "num_examples: -5"),
        4, 3, "source.num_examples", ("greater than 0", "but got -5")),
    Bad("empty-glob", TFRECORD,
        4, 3, "source.files", ("glob 'records/*.tfrecord' matches no file",)),
    Bad("unimportable-preprocess-call",
        edit("  - normalize: {key: image}",
             "  - call: {fn: 'no_such_module_for_pipetune_tests:augment', random: false}"),
        7, 12, "preprocess.1.call.fn",
        ("cannot import module 'no_such_module_for_pipetune_tests'", "ModuleNotFoundError")),
    Bad("model-call-lacks-function",
        edit("builtin: small_cnn", "call: 'pipetune_test_models:build'"),
        10, 3, "model.call", ("module 'pipetune_test_models' has no callable 'build'",),
        files={"pipetune_test_models.py": "def other():\n    return None\n"}),
    Bad("cache-no-value", SPACE + "    cache: []\n",
        13, 5, "search.space.cache", ("at least 1 value", "but got []")),
    Bad("cache-value-not-allowed", SPACE + "    cache: [ram]\n",
        13, 13, "search.space.cache.0", ("'none', 'memory', 'disk' or 'snapshot'", "but got 'ram'")),
    Bad("batch-size-zero", SPACE + "    batch_size: [32, 0]\n",
        13, 22, "search.space.batch_size.1", ("greater than 0", "but got 0")),
    Bad("duplicate-key", BASE + "name: other\n",
        11, 1, "name", ("duplicate key", "also at line 1")),
    Bad("duplicate-nested-key", edit("  num_examples: 64", "  num_examples: 64\n  num_examples: 8"),
        5, 3, "source.num_examples", ("duplicate key", "also at line 4")),
    Bad("unknown-op", edit("  - normalize: {key: image}", "  - blur: {key: image}"),
        7, 5, "preprocess.1.blur", ("unknown key 'blur'", "known keys: decode_image, resize")),
    Bad("two-ops-in-one-step",
        edit("  - normalize: {key: image}",
             "  - normalize: {key: image}\n    resize: {key: image, size: [8, 8]}"),
        7, 5, "preprocess.1", ("exactly one op", "but got ['resize', 'normalize']")),
    Bad("missing-inputs", edit("inputs: {features: image, label: label}\n", ""),
        1, 1, "inputs", ("is required but missing",)),
    Bad("feature-not-in-source", edit("features: image,", "features: [image, mask],"),
        8, 10, "inputs.features", ("'mask' is not a feature", "['image', 'label']")),
    Bad("op-key-not-in-source", edit("normalize: {key: image}", "normalize: {key: mask}"),
        7, 5, "preprocess.1", ("key 'mask' is not a feature",)),
    Bad("model-builtin-and-step-time",
        edit("  builtin: small_cnn", "  builtin: small_cnn\n  step_time_ms: 5"),
        9, 1, "model", ("exactly one of builtin, call, step_time_ms",
                        "but got ['builtin', 'step_time_ms']")),
    Bad("call-without-random", edit("  - normalize: {key: image}", "  - call: 'os.path:join'"),
        7, 5, "preprocess.1.call.random", ("is required but missing",)),
    Bad("name-with-slash", edit("name: t", "name: a/b"),
        1, 1, "name", ("should match pattern", "but got 'a/b'")),
    Bad("name-with-quote", edit("name: t", "name: \"it's\""),
        1, 1, "name", ("should match pattern", "but got \"it's\"")),
    Bad("interleave-cycle-zero", SPACE + "    interleave_cycle: [0, 4]\n",
        13, 24, "search.space.interleave_cycle.0", ("greater than 0 or 'autotune'", "but got 0")),
    Bad("baseline-interleave-cycle-zero", BASE + "baseline:\n  interleave_cycle: 0\n",
        12, 3, "baseline.interleave_cycle", ("greater than 0 or 'autotune'", "but got 0")),
    Bad("repeated-space-values", SPACE + "    batch_size: [32, 64, 32]\n",
        13, 5, "search.space.batch_size", ("each value may appear once", "32 repeats")),
    Bad("unknown-source-kind", edit("kind: synthetic_images", "kind: synthetic"),
        3, 3, "source.kind", ("must be one of 'synthetic_images'", "but got 'synthetic'")),
    Bad("base-dir-in-file", BASE + "base_dir: /elsewhere\n",
        11, 1, "base_dir", ("set by pipetune",)),
    Bad("list-not-mapping", "- name: t\n- source: {kind: synthetic_images}\n",
        1, 1, "<document>", ("must be a mapping", "but got a list")),
    Bad("empty-file", "",
        1, 1, "<document>", ("must be a mapping", "but got an empty file")),
]

# ``file:line:col: dotted.key: message``. The CLI prefixes a lone problem with "pipetune: error: ".
PROBLEM = re.compile(r"^(?:pipetune: error: )?(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): "
                     r"(?P<key>\S+): (?P<message>.+)$")


def validate(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[re.Match[str]], str]:
    """Runs ``pipetune validate`` in-process: (exit code, parsed stderr lines, stdout)."""
    code = main(["validate", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    matches = [PROBLEM.match(line) for line in lines]
    assert all(matches), f"not file:line:col: key: message lines:\n{err}"
    assert all(m["file"] == str(path) for m in matches), err
    return code, matches, out


@pytest.mark.parametrize("case", BAD_SPECS, ids=lambda case: case.id)
def test_bad_spec_gives_one_precise_line(case: Bad, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "data.yaml"
    path.write_text(case.text, encoding="utf-8")
    for name, content in case.files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    try:
        code, problems, out = validate(path, capsys)
    finally:
        for name in case.files:
            sys.modules.pop(Path(name).stem, None)
    assert code == 2
    assert out == ""
    assert len(problems) == 1, [p.group(0) for p in problems]
    problem = problems[0]
    assert (int(problem["line"]), int(problem["col"]), problem["key"]) == (
        case.line, case.col, case.key), problem.group(0)
    for phrase in case.phrases:
        assert phrase in problem["message"], problem.group(0)


def test_each_problem_gets_its_own_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = edit("num_examples: 64", "num_examples: -5", SPACE) + "    batch_size: [0]\n"
    path = tmp_path / "data.yaml"
    path.write_text(text, encoding="utf-8")
    code, problems, _ = validate(path, capsys)
    assert code == 2
    assert [(int(p["line"]), p["key"]) for p in problems] == [
        (4, "source.num_examples"), (13, "search.space.batch_size.0")]


def test_missing_file_is_a_spec_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, problems, _ = validate(tmp_path / "nope.yaml", capsys)
    assert code == 2
    assert "cannot read the spec" in problems[0]["message"]


def test_a_spec_that_is_not_utf8_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Was: a UnicodeDecodeError traceback and exit 1."""
    path = tmp_path / "x.yaml"
    path.write_bytes(bytes(range(128, 256)) * 2)
    code, problems, _ = validate(path, capsys)
    assert code == 2 and len(problems) == 1
    assert "must be UTF-8 text" in problems[0]["message"]


@pytest.mark.parametrize(("objective", "mode", "resolved"), [
    ("auto", "train", "time_to_train"), ("auto", "simulate", "time_to_train"),
    ("throughput", "train", "throughput"), ("time_to_train", "input", "time_to_train")])
def test_the_objective_is_resolved_in_one_place_and_an_explicit_one_wins(objective, mode, resolved):
    """Was: ``--mode`` silently overrode an explicit ``measure.objective``; now no mode does."""
    from pipetune.spec import MeasureSpec

    assert MeasureSpec(mode=mode, objective=objective).resolved_objective == resolved


def test_demo_spec_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(REPO / "examples" / "demo.yaml")]) == 0
    out, err = capsys.readouterr()
    assert "ok (demo-images" in out
    assert err == ""


def test_base_spec_of_the_bad_cases_is_valid(tmp_path: Path) -> None:
    """Guards the matrix: each bad case fails because of its one edit, not the base."""
    path = tmp_path / "data.yaml"
    path.write_text(BASE, encoding="utf-8")
    assert load_spec(path).name == "t"


def test_validate_checks_the_spec_without_importing_tensorflow() -> None:
    """The spec checks need no TensorFlow; only the data check that follows imports it (and
    is skipped with a line when TensorFlow is missing: see tests/test_faults.py)."""
    code = ("import sys; from pipetune.validate import load_spec; load_spec('examples/demo.yaml'); "
            "print('tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.splitlines()[-1] == "False", done.stdout + done.stderr


# --------------------------------------------------------------------------- round trip

FEATURE_KEYS = st.sampled_from(["image", "label"])  # the synthetic source's features
SIZES = st.tuples(st.integers(1, 4096), st.integers(1, 4096))
FINITE = st.floats(allow_nan=False, allow_infinity=False)
POSITIVE = st.floats(min_value=0, max_value=1e300, exclude_min=True)
POSITIVE_INT = st.integers(1, 2**31)
NON_NEGATIVE_INT = st.integers(0, 2**31)
AUTOTUNE = st.just("autotune")

OPS = st.one_of(
    st.builds(DecodeImage, key=FEATURE_KEYS, channels=st.sampled_from([1, 3, 4])),
    st.builds(Resize, key=FEATURE_KEYS, size=SIZES,
              method=st.sampled_from(["bilinear", "nearest", "bicubic", "area"])),
    st.builds(RandomCrop, key=FEATURE_KEYS, size=SIZES),
    st.builds(RandomFlip, key=FEATURE_KEYS,
              mode=st.sampled_from(["horizontal", "vertical", "both"])),
    st.builds(ColorJitter, key=FEATURE_KEYS, brightness=st.floats(0, 1),
              contrast=st.floats(0, 1, exclude_max=True)),
    st.builds(Normalize, key=FEATURE_KEYS, mean=FINITE, std=POSITIVE),
    st.builds(Cast, key=FEATURE_KEYS,
              dtype=st.sampled_from(["float32", "float16", "bfloat16", "int32", "int64"])),
    st.builds(OneHot, key=FEATURE_KEYS, depth=POSITIVE_INT),
    st.builds(Sleep, ms=st.floats(0, 10_000, exclude_min=True)),
)
NAMES = {cls: name for name, cls in [
    ("decode_image", DecodeImage), ("resize", Resize), ("random_crop", RandomCrop),
    ("random_flip", RandomFlip), ("color_jitter", ColorJitter), ("normalize", Normalize),
    ("cast", Cast), ("one_hot", OneHot), ("sleep", Sleep)]}


def choices(values: st.SearchStrategy[object], most: int = 4) -> st.SearchStrategy[list[object]]:
    return st.lists(values, min_size=1, max_size=most, unique_by=repr)


INT_OR_AUTOTUNE = st.one_of(POSITIVE_INT, AUTOTUNE)
ZERO_OR_MORE_OR_AUTOTUNE = st.one_of(NON_NEGATIVE_INT, AUTOTUNE)
COMPRESSION = st.sampled_from(["none", "gzip", "zlib"])
PRECISION = st.sampled_from(["float32", "mixed_bfloat16", "mixed_float16"])
CACHE = st.sampled_from(["none", "memory", "disk"])
DIMENSIONS = {
    "shards": POSITIVE_INT, "compression": COMPRESSION, "interleave_cycle": INT_OR_AUTOTUNE,
    "interleave_block": POSITIVE_INT, "interleave_parallel": st.booleans(),
    "map_parallel": INT_OR_AUTOTUNE, "cache": CACHE, "shuffle_buffer": NON_NEGATIVE_INT,
    "batch_size": POSITIVE_INT, "drop_remainder": st.booleans(),
    "prefetch": ZERO_OR_MORE_OR_AUTOTUNE, "precision": PRECISION, "deterministic": st.booleans(),
    "private_threadpool_size": NON_NEGATIVE_INT, "map_and_batch_fusion": st.booleans(),
    "autotune_ram_budget_mb": NON_NEGATIVE_INT, "autotune_cpu_budget": NON_NEGATIVE_INT,
}


@st.composite
def search_spaces(draw: st.DrawFn) -> SearchSpace:
    chosen = draw(st.lists(st.sampled_from(sorted(DIMENSIONS)), unique=True))
    return SearchSpace(**{name: draw(choices(DIMENSIONS[name])) for name in chosen})


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    ops = draw(st.lists(OPS, max_size=6))
    feature_tuples = st.lists(FEATURE_KEYS, min_size=1, max_size=2).map(tuple)
    features = draw(st.one_of(FEATURE_KEYS, feature_tuples))
    model = draw(st.one_of(
        st.builds(ModelSpec, builtin=st.sampled_from(["small_cnn", "resnet_small", "mlp"]),
                  jit_compile=st.booleans(), learning_rate=POSITIVE),
        st.builds(ModelSpec, step_time_ms=st.floats(0, 60_000, exclude_min=True),
                  num_classes=st.none() | POSITIVE_INT),
        st.builds(ModelSpec, call=st.just("os.path:join")),  # importable and callable
    ))
    return Spec(
        name=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)),
        source=SyntheticImagesSource(
            kind="synthetic_images", num_examples=draw(POSITIVE_INT), image_size=draw(SIZES),
            num_classes=draw(st.integers(2, 1000)), seed=draw(st.integers(-2**70, 2**70)),
            format=draw(st.sampled_from(["jpeg", "png"]))),
        preprocess=tuple(PreprocessStep(**{NAMES[type(op)]: op}) for op in ops),
        inputs=InputsSpec(features=features, label=draw(FEATURE_KEYS)),
        model=model,
        measure=draw(st.builds(
            MeasureSpec, mode=st.sampled_from(["train", "input", "simulate"]),
            warmup_steps=NON_NEGATIVE_INT, steps=POSITIVE_INT, repeats=POSITIVE_INT,
            epochs_planned=POSITIVE_INT, timeout_s=POSITIVE,
            objective=st.sampled_from(["auto", "time_to_train", "throughput"]))),
        search=SearchSpec(
            strategy=draw(st.sampled_from(["auto", "grid", "halving", "tpe"])),
            budget_s=draw(POSITIVE), seed=draw(st.integers(-2**40, 2**40)),
            space=draw(search_spaces())),
        baseline=draw(st.none() | st.builds(
            PipelineParams, shards=POSITIVE_INT, compression=COMPRESSION,
            interleave_cycle=INT_OR_AUTOTUNE, interleave_block=POSITIVE_INT,
            interleave_parallel=st.booleans(), map_parallel=INT_OR_AUTOTUNE, cache=CACHE,
            shuffle_buffer=NON_NEGATIVE_INT, batch_size=POSITIVE_INT,
            drop_remainder=st.booleans(), prefetch=ZERO_OR_MORE_OR_AUTOTUNE, precision=PRECISION,
            deterministic=st.booleans(), private_threadpool_size=NON_NEGATIVE_INT,
            map_and_batch_fusion=st.booleans(), autotune_ram_budget_mb=NON_NEGATIVE_INT,
            autotune_cpu_budget=NON_NEGATIVE_INT)),
        resources=ResourcesSpec(ram_budget_gb=draw(POSITIVE)),
    )


@settings(max_examples=40, deadline=None)
@given(spec=specs())
def test_valid_spec_survives_dump_and_load(spec: Spec) -> None:
    with tempfile.TemporaryDirectory() as folder:
        base_dir = Path(folder).resolve()
        path = base_dir / "data.yaml"
        path.write_text(dump_spec(spec), encoding="utf-8")
        loaded = load_spec(path)
    assert loaded == spec.model_copy(update={"base_dir": str(base_dir)})
    assert loaded.content_hash() == spec.content_hash()
