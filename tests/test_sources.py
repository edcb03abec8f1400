from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipetune
from pipetune.errors import SourceError
from pipetune.sources import check_source, prepare_shards, schema_of
from pipetune.sources import tabular
from pipetune.sources.shards import MANIFEST_NAME, tf_compression
from pipetune.spec import FeatureSpec, Spec

REPO = Path(next(iter(pipetune.__path__))).parent
COMPRESSIONS = ("none", "gzip", "zlib")
PROPERTY = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# `tf` is conftest's session fixture: TensorFlow is imported once, and only by tests that use it.


def source_spec(base: Path, **source) -> Spec:
    """A minimal valid spec around ``source``, with relative paths resolving against ``base``."""
    return Spec.model_validate(
        {
            "name": "t",
            "source": source,
            "inputs": {"features": "x", "label": "y"},
            "model": {"step_time_ms": 1.0},
            "base_dir": str(base),
        }
    )


def read_shards(tf, shard_set) -> list[list[bytes]]:
    kind = tf_compression(shard_set.compression)
    return [
        list(tf.data.TFRecordDataset(path, compression_type=kind).as_numpy_iterator())
        for path in shard_set.files
    ]


def in_source_order(shards: list[list[bytes]]) -> list[bytes]:
    """Undoes round-robin: record i sits in shard i % N at position i // N."""
    total = sum(map(len, shards))
    return [shards[i % len(shards)][i // len(shards)] for i in range(total)]


def parse_all(tf, shard_set) -> list[dict]:
    dtypes = {"bytes": tf.string, "int64": tf.int64, "float32": tf.float32}
    description = {
        name: tf.io.FixedLenFeature(spec["shape"], dtypes[spec["type"]])
        for name, spec in shard_set.manifest.schema.items()
    }
    return [
        {k: v.numpy() for k, v in tf.io.parse_single_example(record, description).items()}
        for record in in_source_order(read_shards(tf, shard_set))
    ]


def bytes_example(tf, data: bytes) -> bytes:
    example = tf.train.Example()
    example.features.feature["data"].bytes_list.value.append(data)
    return example.SerializeToString()


def write_tfrecords(tf, path: Path, records: list[bytes], compression: str = "none") -> None:
    options = tf.io.TFRecordOptions(compression_type=tf_compression(compression))
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for record in records:
            writer.write(record)


def tfrecord_spec(base: Path, compression: str = "none", **features) -> Spec:
    features = features or {"data": {"type": "bytes"}}
    return source_spec(
        base, kind="tfrecord", files="in/*.tfrecord", compression=compression, features=features
    )


def problem_paths(spec: Spec) -> list[tuple[str, ...]]:
    return [path for path, _ in check_source(spec)]


# --------------------------------------------------------------------------- cheap import


def test_import_and_check_source_do_not_import_tensorflow(tmp_path):
    (tmp_path / "d.csv").write_text("a,y\n1,0\n")
    code = (
        "import sys; from pipetune.spec import Spec; import pipetune.sources as s\n"
        "assert 'pandas' not in sys.modules\n"
        f"spec = Spec.model_validate({{'name': 't', 'source': {{'kind': 'csv', 'path': 'd.csv', "
        f"'label': 'y'}}, 'inputs': {{'features': 'a', 'label': 'y'}}, "
        f"'model': {{'step_time_ms': 1}}, 'base_dir': {str(tmp_path)!r}}})\n"
        "assert s.check_source(spec) == [] and list(s.schema_of(spec)) == ['a', 'y']\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=tmp_path)


# --------------------------------------------------------------------------- resharding properties


@PROPERTY
@given(
    payloads=st.lists(st.binary(max_size=40), min_size=1, max_size=25),
    input_files=st.integers(1, 3),
    shards=st.integers(1, 7),
    source_compression=st.sampled_from(COMPRESSIONS),
    compression=st.sampled_from(COMPRESSIONS),
)
def test_resharding_keeps_every_record_once(
    tf, tmp_path, payloads, input_files, shards, source_compression, compression
):
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    (base / "in").mkdir()
    records = [bytes_example(tf, p) for p in payloads]
    for i in range(input_files):
        write_tfrecords(tf, base / f"in/{i}.tfrecord", records[i::input_files], source_compression)
    spec = tfrecord_spec(base, source_compression)

    shard_set = prepare_shards(spec, shards, compression, base / "shards")

    shards_read = read_shards(tf, shard_set)
    assert sorted(r for shard in shards_read for r in shard) == sorted(records)
    counts = shard_set.manifest.shard_counts
    assert [len(s) for s in shards_read] == list(counts) and max(counts) - min(counts) <= 1
    assert shard_set.manifest.num_examples == len(records) and shard_set.written


@PROPERTY
@given(
    payloads=st.lists(st.binary(max_size=200), min_size=1, max_size=20), shards=st.integers(1, 4)
)
def test_every_compression_gives_the_same_records_back(tf, tmp_path, payloads, shards):
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    (base / "in").mkdir()
    records = [bytes_example(tf, p) for p in payloads]
    write_tfrecords(tf, base / "in/0.tfrecord", records)
    spec = tfrecord_spec(base)

    read = {c: read_shards(tf, prepare_shards(spec, shards, c, base / "s")) for c in COMPRESSIONS}

    assert read["none"] == read["gzip"] == read["zlib"]
    assert in_source_order(read["none"]) == records


def test_compressed_shards_are_compressed(tf, tmp_path):
    spec = source_spec(tmp_path, kind="synthetic_images", num_examples=4, image_size=(16, 16))
    gzip_set = prepare_shards(spec, 1, "gzip", tmp_path / "s")
    zlib_set = prepare_shards(spec, 1, "zlib", tmp_path / "s")
    assert Path(gzip_set.files[0]).read_bytes()[:2] == b"\x1f\x8b"
    assert Path(zlib_set.files[0]).read_bytes()[:1] == b"\x78"


# --------------------------------------------------------------------------- reuse


def test_unchanged_source_is_reused_and_changed_one_rewritten(tf, tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("a,y\n1,0\n2,1\n3,0\n")
    spec = source_spec(tmp_path, kind="csv", path="d.csv", label="y")
    first = prepare_shards(spec, 2, "none", tmp_path / "s")
    mtimes = [os.stat(p).st_mtime_ns for p in first.files]

    again = prepare_shards(spec, 2, "none", tmp_path / "s")

    assert first.written and not again.written
    assert again == first  # `written` is not compared
    assert [os.stat(p).st_mtime_ns for p in again.files] == mtimes

    csv.write_text("a,y\n1,0\n2,1\n3,0\n4,1\n")
    changed = prepare_shards(spec, 2, "none", tmp_path / "s")

    assert changed.written and changed.manifest.num_examples == 4
    assert changed.manifest.content_hash != first.manifest.content_hash


def test_a_set_without_manifest_is_not_reused(tf, tmp_path):
    spec = source_spec(tmp_path, kind="synthetic_images", num_examples=6, image_size=(16, 16))
    first = prepare_shards(spec, 3, "none", tmp_path / "s")
    records = read_shards(tf, first)
    (Path(first.files[0]).parent / MANIFEST_NAME).unlink()
    Path(first.files[1]).write_bytes(b"half a shard")  # as if the writer had been killed

    again = prepare_shards(spec, 3, "none", tmp_path / "s")

    assert again.written and again.files == first.files and again.manifest == first.manifest
    assert read_shards(tf, again) == records


def test_a_stale_temporary_folder_is_removed_not_reused(tf, tmp_path):
    spec = source_spec(tmp_path, kind="synthetic_images", num_examples=4, image_size=(16, 16))
    first = prepare_shards(spec, 2, "none", tmp_path / "s")
    digest_folder = Path(first.files[0]).parents[1]
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], stdout=-1)
    stale = digest_folder / f".tmp-3-none-{int(finished.stdout)}-deadbeef"  # its writer is gone
    stale.mkdir()
    (stale / "part-00000-of-00003.tfrecord").write_bytes(b"partial")

    written = prepare_shards(spec, 3, "none", tmp_path / "s")

    assert written.written and not stale.exists()
    assert sorted(p.name for p in digest_folder.iterdir()) == ["2-none", "3-none"]


def test_a_failed_write_leaves_nothing_to_reuse(tf, tmp_path):
    (tmp_path / "in").mkdir()
    write_tfrecords(tf, tmp_path / "in/0.tfrecord", [bytes_example(tf, b"ok")] * 5)
    bad = tmp_path / "in/1.tfrecord"
    write_tfrecords(tf, bad, [bytes_example(tf, b"x" * 50)] * 5)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    spec = tfrecord_spec(tmp_path)

    with pytest.raises(SourceError, match=str(bad)):
        prepare_shards(spec, 2, "none", tmp_path / "s")

    leftovers = [p for p in (tmp_path / "s").rglob("*") if p.is_file()]
    assert leftovers == []


# --------------------------------------------------------------------------- synthetic images


def test_synthetic_images_are_deterministic_structured_and_decode(tf, tmp_path):
    def synthetic(seed: int, **more) -> Spec:
        return source_spec(tmp_path, kind="synthetic_images", num_examples=64, seed=seed, **more)

    def shard_bytes(shard_set) -> list[bytes]:
        return [Path(p).read_bytes() for p in shard_set.files]

    one = prepare_shards(synthetic(1), 2, "none", tmp_path / "a")
    same = prepare_shards(synthetic(1), 2, "none", tmp_path / "b")
    other = prepare_shards(synthetic(2), 2, "none", tmp_path / "a")
    assert shard_bytes(one) == shard_bytes(same) and shard_bytes(one) != shard_bytes(other)

    examples = parse_all(tf, one)
    images = [tf.io.decode_jpeg(e["image"]).numpy() for e in examples]
    assert {im.shape for im in images} == {(128, 128, 3)}
    labels = [int(e["label"]) for e in examples]
    assert set(labels) <= set(range(10)) and len(set(labels)) >= 5
    mean_size = np.mean([len(e["image"]) for e in examples])
    print(f"synthetic JPEG at 128 px: mean {mean_size / 1024:.1f} KB")
    assert 2_000 < mean_size < 0.2 * 128 * 128 * 3  # structured: far below raw, unlike noise
    assert min(float(np.std(im)) for im in images) > 5.0  # not flat either


def test_synthetic_png_and_non_square_sizes(tf, tmp_path):
    spec = source_spec(
        tmp_path, kind="synthetic_images", num_examples=5, image_size=(24, 40), format="png"
    )
    examples = parse_all(tf, prepare_shards(spec, 2, "gzip", tmp_path / "s"))
    assert all(e["image"].startswith(b"\x89PNG") for e in examples)
    assert {tf.io.decode_png(e["image"]).shape for e in examples} == {(24, 40, 3)}
    assert schema_of(spec) == {
        "image": FeatureSpec(type="bytes"), "label": FeatureSpec(type="int64")
    }


# --------------------------------------------------------------------------- tabular, npz, folders


def test_csv_records_parse_back_to_the_original_values(tf, tmp_path):
    (tmp_path / "d.csv").write_text(
        "count,ratio,flag,name,y\n3,0.5,True,ab,1\n-7,1.25,False,héllo,0\n9,-2.0,True,z,1\n"
    )
    spec = source_spec(tmp_path, kind="csv", path="d.csv", label="y")
    assert {k: v.type for k, v in schema_of(spec).items()} == {
        "count": "int64", "ratio": "float32", "flag": "int64", "name": "bytes", "y": "int64"
    }

    examples = parse_all(tf, prepare_shards(spec, 2, "zlib", tmp_path / "s"))

    assert [int(e["count"]) for e in examples] == [3, -7, 9]
    assert [float(e["ratio"]) for e in examples] == [0.5, 1.25, -2.0]
    assert [int(e["flag"]) for e in examples] == [1, 0, 1]
    assert [e["name"].decode() for e in examples] == ["ab", "héllo", "z"]
    assert [int(e["y"]) for e in examples] == [1, 0, 1]


def test_csv_missing_string_value_is_a_source_error(tf, tmp_path):
    (tmp_path / "d.csv").write_text("name,y\nab,1\n,0\n")
    spec = source_spec(tmp_path, kind="csv", path="d.csv", label="y")
    with pytest.raises(SourceError, match=r"d\.csv: column 'name' must have a value"):
        prepare_shards(spec, 1, "none", tmp_path / "s")


def test_csv_rows_after_the_sample_must_fit_its_types(tf, tmp_path, monkeypatch):
    monkeypatch.setattr(tabular, "SAMPLE_ROWS", 2)
    (tmp_path / "d.csv").write_text("a,y\n1,0\n2,1\n,0\n")
    spec = source_spec(tmp_path, kind="csv", path="d.csv", label="y")
    with pytest.raises(SourceError, match=r"d\.csv: a later row does not fit"):
        prepare_shards(spec, 1, "none", tmp_path / "s")


def test_parquet_records_parse_back_to_the_original_values(tf, tmp_path):
    import pandas as pd

    frame = pd.DataFrame(
        {"pixels": [1.5, 2.5, -3.0, 4.0, 0.0], "word": list("abcde"), "y": [0, 1, 2, 1, 0]},
        index=[10, 11, 12, 13, 14],  # a non-default index is stored but is not data
    )
    frame.to_parquet(tmp_path / "d.parquet")
    spec = source_spec(tmp_path, kind="parquet", path="d.parquet", label="y")

    examples = parse_all(tf, prepare_shards(spec, 3, "none", tmp_path / "s"))

    assert list(examples[0]) == ["pixels", "word", "y"]
    assert [float(e["pixels"]) for e in examples] == frame["pixels"].tolist()
    assert [e["word"].decode() for e in examples] == frame["word"].tolist()
    assert [int(e["y"]) for e in examples] == frame["y"].tolist()


def test_parquet_unsupported_column_type_is_a_problem(tmp_path):
    import pandas as pd

    pd.DataFrame({"when": pd.to_datetime(["2024-01-01"]), "y": [1]}).to_parquet(tmp_path / "d.pq")
    spec = source_spec(tmp_path, kind="parquet", path="d.pq", label="y")
    ((path, message),) = check_source(spec)
    assert path == ("source", "path") and "column 'when' must be integer, float" in message
    with pytest.raises(SourceError, match="when"):
        schema_of(spec)


def test_npz_records_parse_back_to_the_original_values(tf, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x": rng.normal(size=(7, 2, 3)).astype(np.float32),
        "count": np.arange(7, dtype=np.uint8),
        "tag": np.array([f"t{i}" for i in range(7)]),
        "y": rng.integers(0, 3, 7),
    }
    np.savez_compressed(tmp_path / "d.npz", **arrays)
    spec = source_spec(tmp_path, kind="npz", path="d.npz", label="y")
    assert schema_of(spec)["x"] == FeatureSpec(type="float32", shape=(2, 3))

    examples = parse_all(tf, prepare_shards(spec, 3, "gzip", tmp_path / "s"))

    np.testing.assert_array_equal(np.stack([e["x"] for e in examples]), arrays["x"])
    assert [int(e["count"]) for e in examples] == arrays["count"].tolist()
    assert [e["tag"].decode() for e in examples] == arrays["tag"].tolist()
    assert [int(e["y"]) for e in examples] == arrays["y"].tolist()


def test_npz_problems(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 2)), y=np.zeros(5), **{"bad name": np.zeros(4)})
    spec = source_spec(tmp_path, kind="npz", path="d.npz", label="z")
    messages = [message for _, message in check_source(spec)]
    assert any("equal first dimensions" in m and "'x': 4" in m and "'y': 5" in m for m in messages)
    assert any("'bad name' must match" in m for m in messages)
    assert "label array 'z' not in arrays ['x', 'y', 'bad name']" in messages


def test_image_folder_keeps_raw_bytes_and_sorted_class_labels(tf, tmp_path):
    pixels = np.full((8, 8, 3), 100, dtype=np.uint8)
    files = {
        "dog/b.png": tf.io.encode_png(pixels).numpy(),
        "cat/z.JPG": tf.io.encode_jpeg(pixels).numpy(),
        "cat/nested/a.jpeg": tf.io.encode_jpeg(pixels + 1).numpy(),
        "cat/notes.txt": b"not an image",
    }
    for name, data in files.items():
        (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "imgs" / name).write_bytes(data)
    spec = source_spec(tmp_path, kind="image_folder", root="imgs")

    examples = parse_all(tf, prepare_shards(spec, 2, "none", tmp_path / "s"))

    assert [(e["image"], int(e["label"])) for e in examples] == [
        (files["cat/nested/a.jpeg"], 0),
        (files["cat/z.JPG"], 0),
        (files["dog/b.png"], 1),
    ]
    (tmp_path / "imgs" / "ant").mkdir()  # an empty class renumbers the others
    renumbered = prepare_shards(spec, 2, "none", tmp_path / "s")
    assert renumbered.written
    assert [int(e["label"]) for e in parse_all(tf, renumbered)] == [1, 1, 2]


def test_image_folder_problems(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_images" / "cat").mkdir(parents=True)
    (tmp_path / "no_images" / "cat" / "x.txt").write_text("x")
    no_classes = check_source(source_spec(tmp_path, kind="image_folder", root="empty"))
    no_images = check_source(source_spec(tmp_path, kind="image_folder", root="no_images"))
    missing = check_source(source_spec(tmp_path, kind="image_folder", root="nowhere"))
    assert no_classes == [
        (
            ("source", "root"),
            f"{tmp_path / 'empty'} must hold one sub-folder per class, but has no sub-folder",
        )
    ]
    assert "['cat']" in no_images[0][1] and "hold none" in no_images[0][1]
    assert str(tmp_path / "nowhere") in missing[0][1]


def test_a_file_that_is_not_an_image_is_a_source_error(tf, tmp_path):
    (tmp_path / "imgs" / "cat").mkdir(parents=True)
    (tmp_path / "imgs" / "cat" / "x.jpg").write_bytes(b"GIF89a...")
    spec = source_spec(tmp_path, kind="image_folder", root="imgs")
    with pytest.raises(SourceError, match=r"x\.jpg: must be a JPEG or PNG file"):
        prepare_shards(spec, 1, "none", tmp_path / "s")


# --------------------------------------------------------------------------- bad sources


def test_empty_glob_is_a_problem_naming_the_folder(tmp_path):
    spec = tfrecord_spec(tmp_path)
    assert check_source(spec) == [
        (("source", "files"), f"glob 'in/*.tfrecord' matches no file (looked in {tmp_path / 'in'})")
    ]
    with pytest.raises(SourceError, match=r"source\.files: glob 'in/\*\.tfrecord' matches no file"):
        prepare_shards(spec, 1, "none", tmp_path / "s")


def test_missing_csv_and_missing_label_column_are_problems(tmp_path):
    missing = source_spec(tmp_path, kind="csv", path="nope.csv", label="y")
    assert problem_paths(missing) == [("source", "path")]
    assert str(tmp_path / "nope.csv") in check_source(missing)[0][1]
    (tmp_path / "d.csv").write_text("a,b,bad col\n1,2,3\n")
    problems = check_source(source_spec(tmp_path, kind="csv", path="d.csv", label="y"))
    expected = "label column 'y' not in columns ['a', 'b', 'bad col']"
    assert (("source", "label"), expected) in problems
    assert any(p == ("source", "path") and "'bad col' must match" in m for p, m in problems)


def test_tfrecord_schema_mismatch_names_file_and_feature(tf, tmp_path):
    (tmp_path / "in").mkdir()
    example = tf.train.Example()
    example.features.feature["score"].float_list.value.append(0.5)
    write_tfrecords(tf, tmp_path / "in/a.tfrecord", [example.SerializeToString()])
    wrong_type = tfrecord_spec(tmp_path, score={"type": "int64"})
    wrong_shape = tfrecord_spec(tmp_path, score={"type": "float32", "shape": [2]})
    absent = tfrecord_spec(tmp_path, label={"type": "int64"})

    for spec, expected in [
        (wrong_type, "feature 'score' is declared int64"),
        (wrong_shape, r"shape \(2,\) \(2 values\), but the first record holds float_list with 1"),
        (absent, "declared feature 'label' is not in the first record"),
    ]:
        assert check_source(spec) == []  # found when records are read
        with pytest.raises(SourceError, match=f"a.tfrecord: .*{expected}"):
            prepare_shards(spec, 1, "none", tmp_path / "s")


def test_wrong_declared_compression_is_a_source_error(tf, tmp_path):
    (tmp_path / "in").mkdir()
    write_tfrecords(tf, tmp_path / "in/a.tfrecord", [bytes_example(tf, b"x")] * 3, "gzip")
    with pytest.raises(SourceError, match=r"a\.tfrecord: corrupt record .*compression 'none'"):
        prepare_shards(tfrecord_spec(tmp_path, "none"), 1, "none", tmp_path / "s")


def test_shards_and_compression_are_checked(tmp_path):
    spec = source_spec(tmp_path, kind="synthetic_images")
    with pytest.raises(ValueError, match="`shards >= 1` must hold, but got 0"):
        prepare_shards(spec, 0, "none", tmp_path)
    with pytest.raises(ValueError, match="compression must be one of"):
        prepare_shards(spec, 1, "lz4", tmp_path)


def test_more_shards_than_records_gives_empty_shards(tf, tmp_path):
    spec = source_spec(tmp_path, kind="synthetic_images", num_examples=2, image_size=(8, 8))
    shard_set = prepare_shards(spec, 4, "none", tmp_path / "s")
    assert shard_set.manifest.shard_counts == (1, 1, 0, 0)
    assert [len(s) for s in read_shards(tf, shard_set)] == [1, 1, 0, 0]
    assert shard_set.manifest.total_bytes == sum(os.path.getsize(p) for p in shard_set.files)
