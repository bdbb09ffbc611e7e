from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from infra import storage
from infra.config import load_config, save_config


def test_local_paths_and_file_uris_are_the_same_place(tmp_path):
    storage.write_text(str(tmp_path / "a" / "b.txt"), "hello")
    assert storage.read_text(f"file://{tmp_path}/a/b.txt") == "hello"
    assert storage.exists(str(tmp_path / "a" / "b.txt"))
    assert storage.list_files(f"file://{tmp_path}", [".txt"]) == [str(tmp_path / "a" / "b.txt")]
    # Atomic writes leave no temporary files behind.
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.txt"]


def test_an_atomic_write_that_fails_leaves_nothing_and_keeps_the_old_file(tmp_path, s3_env):
    for target in (str(tmp_path / "x.bin"), storage.join(s3_env, "atomic", "x.bin")):
        storage.write_bytes(target, b"old")
        with pytest.raises(RuntimeError), storage.atomic_writer(target) as f:
            f.write(b"half of the new")
            raise RuntimeError("the writer died")
        assert storage.read_bytes(target) == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_a_partial_file_is_hidden_from_dataset_readers(tmp_path):
    """A process killed while writing a shard leaves its temporary file; readers of the folder skip it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = tmp_path / "shards"
    table = pa.table({"x": [1, 2, 3]})
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    storage.write_bytes(str(shards / "a.parquet"), buffer.getvalue().to_pybytes())
    with storage.atomic_writer(str(shards / "b.parquet")) as f:
        f.write(b"PAR1 half a shard")  # the writer is killed here: nothing below runs in that process
        (partial,) = [p for p in shards.iterdir() if p.name != "a.parquet"]
        assert partial.name.startswith(".b.parquet.tmp-")
        assert pq.read_table(shards).num_rows == 3
        assert list(shards.glob("*.parquet")) == [shards / "a.parquet"]


def test_s3_round_trip_through_a_real_s3_api(s3_env):
    bucket = s3_env
    data = np.arange(1000, dtype=np.float32).tobytes()
    storage.write_bytes(storage.join(bucket, "run", "x.bin"), data)
    storage.write_text(storage.join(bucket, "run", "videos", "a.mp4"), "not really a video")
    storage.write_text(storage.join(bucket, "run", "videos", "b.MOV"), "nor this")
    assert storage.read_bytes(f"{bucket}/run/x.bin") == data
    assert storage.exists(f"{bucket}/run/x.bin") and not storage.exists(f"{bucket}/run/y.bin")
    videos = storage.list_files(f"{bucket}/run/videos", [".mp4", ".mov"])
    assert videos == [f"{bucket}/run/videos/a.mp4", f"{bucket}/run/videos/b.MOV"]
    assert storage.list_files(f"{bucket}/nothing-here") == []


def test_credentials_never_reach_written_configs_or_printed_uris(s3_env, s3_server, tmp_path):
    @dataclass(frozen=True)
    class Job:
        output: str = ""

    cfg = load_config(Job, None, [f"output={s3_env}/out"])
    save_config(cfg, f"{s3_env}/out/config.yaml")
    written = storage.read_text(f"{s3_env}/out/config.yaml")
    for secret in (s3_server["AWS_SECRET_ACCESS_KEY"], s3_server["AWS_ACCESS_KEY_ID"]):
        assert secret not in written
    assert storage.redact("s3://AKIAXXX:verysecret@bucket/x") == "s3://***@bucket/x"
    assert storage.redact("s3://bucket/x") == "s3://bucket/x"
