from __future__ import annotations

import functools
import json
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipeline import schema
from pipeline.preprocess import shard_writer


def frame_columns(t: int = 5, size: int = 32) -> dict:
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (t, size, size, 3), dtype=np.uint8)
    return {
        "identity": ["alice"] * t,
        "video_id": ["v-1"] * t,
        "frame_index": list(range(t)),
        "rgb": [schema.encode_png(c) for c in crops],
        "nmfc": [schema.encode_png(c) for c in crops[::-1]],
        "mask": [schema.encode_png(c[..., 0] > 128) for c in crops],
        "flow": schema.encode_flows(np.stack([np.full((size, size, 2), k, np.float32) for k in range(t)])),
        "landmarks_px": rng.uniform(0, size, (t, 136)).astype(np.float32).tolist(),
        "expression": rng.uniform(0, 1, (t, 53)).astype(np.float32).tolist(),
        "camera": rng.normal(size=(t, 7)).astype(np.float32).tolist(),
        "mouth_box_px": [[1, 2, 3, 4]] * t,
        "landmark_confidence": rng.uniform(0.5, 1, t).astype(np.float32).tolist(),
    }, crops


def test_shard_round_trips_through_plain_pyarrow_and_pandas(tmp_path):
    columns, crops = frame_columns()
    relative = shard_writer.write_shard(str(tmp_path), "v-1", columns)
    assert relative == "shards/v-1.parquet"
    table = pq.read_table(tmp_path / relative)
    assert table.schema.equals(schema.FRAME_SCHEMA) and table.num_rows == 5
    frame = pd.read_parquet(tmp_path / relative).iloc[3]
    assert np.array_equal(schema.decode_image(frame["rgb"]), crops[3])  # PNG is lossless
    assert np.array_equal(schema.decode_image(frame["mask"]), (crops[3][..., 0] > 128).astype(np.uint8) * 255)
    assert np.all(schema.decode_flow(frame["flow"], 32) == 3.0)
    assert np.asarray(frame["landmarks_px"]).shape == (136,)
    assert [p.name for p in (tmp_path / "shards").iterdir()] == ["v-1.parquet"]


def test_records_table_and_summary(tmp_path):
    ok = schema.VideoRecord(
        video_id="a",
        identity="a",
        status="ok",
        reason="",
        kept_frames=10,
        config_hash="h",
        stage_seconds=json.dumps({"fit": 1.0, "decode_crop": 2.0}),
        stage_cpu_seconds=json.dumps({"fit": 0.75, "decode_crop": 1.5}),
        started_at=1000.5,
        finished_at=1002.0,
    )
    bad = schema.VideoRecord(
        video_id="b",
        identity="b",
        status="failed",
        reason="no_face",
        kept_frames=0,
        config_hash="h",
        stage_seconds=json.dumps({"decode_crop": 0.5}),
        stage_cpu_seconds=json.dumps({"decode_crop": 0.25}),
        started_at=1001.0,
        finished_at=1001.5,
    )
    for record in (bad, ok):
        shard_writer.write_record(str(tmp_path), record)
    records = shard_writer.read_records(str(tmp_path))
    assert records == [ok, bad]  # every field read back as written, sorted by unit id
    shard_writer.write_videos_table(str(tmp_path), records)
    videos = pd.read_parquet(tmp_path / schema.VIDEOS_TABLE)
    assert list(videos["status"]) == ["ok", "failed"] and list(videos["reason"]) == ["", "no_face"]
    summary = shard_writer.summarise(records, {"a", "b"}, wall_s=2.0, run_started_at=1000.0)
    assert summary["videos_ok"] == 1 and summary["failed_by_reason"] == {"no_face": 1}
    assert summary["videos"] == summary["units"] == 2
    assert summary["frames_this_run"] == 10 and summary["frames_per_s"] == 5.0
    assert summary["stage_wall_s"] == {"decode_crop": 2.5, "fit": 1.0}
    assert summary["stage_cpu_s"] == {"decode_crop": 1.75, "fit": 0.75}
    assert summary["startup_s"] == 0.5 and summary["processing_s"] == 1.5
    assert summary["processing_frames_per_s"] == round(10 / 1.5, 2)
    assert json.loads(videos["stage_cpu_seconds"][0]) == {"fit": 0.75, "decode_crop": 1.5}


def test_contact_sheet_layout():
    t, s = 6, 64
    crops = np.zeros((t, s, s, 3), np.uint8)
    landmarks = np.full((t, 68, 2), s / 2, np.float32)
    sheet = shard_writer.contact_sheet(
        crops,
        landmarks,
        crops,
        np.ones((t, s, s), bool),
        np.ones((t, s, s, 2), np.float32),
        frames=3,
        tile_px=40,
    )
    assert sheet.shape == (120, 160, 3)
    assert sheet[20, 20, 1] == 255  # a landmark dot on the crop tile
    assert np.all(sheet[:, 80:120] == 255)  # the mask tile is white where the mask is set


def test_flow_encoding_matches_numpy_float16_rounding():
    rng = np.random.default_rng(1)
    flow = (rng.normal(size=(3, 8, 8, 2)) * 10.0 ** rng.integers(-6, 5, (3, 8, 8, 2))).astype(np.float32)
    flow[0, 0, 0] = [65520.0, -1e-8]  # overflow to inf, underflow to -0
    encoded = schema.encode_flows(flow)
    with np.errstate(over="ignore"):  # 65520 overflows to inf on purpose
        expected = [f.astype("<f2").tobytes() for f in flow]
    assert encoded.to_pylist() == expected
    # Longer videos: the column is one view per frame of one buffer, in chunks of a row group's frames.
    long = rng.normal(size=(2 * schema.ROW_GROUP_FRAMES + 3, 4, 4, 2)).astype(np.float32)
    column = schema.encode_flows(long)
    assert column.num_chunks == 3 and len(column) == len(long)
    decoded = [schema.decode_flow(b, 4) for b in column.to_pylist()]
    assert all(np.array_equal(d, f.astype(np.float16)) for d, f in zip(decoded, long))


def test_compressed_images_and_flow_are_stored_without_parquet_compression(tmp_path):
    columns, _ = frame_columns()
    relative = shard_writer.write_shard(str(tmp_path), "v-1", columns)
    group = pq.ParquetFile(tmp_path / relative).metadata.row_group(0)
    codecs = {
        group.column(i).path_in_schema.split(".")[0]: group.column(i).compression
        for i in range(group.num_columns)
    }
    assert {codecs[name] for name in schema.UNCOMPRESSED_COLUMNS} == {"UNCOMPRESSED"}
    others = set(schema.FRAME_SCHEMA.names) - set(schema.UNCOMPRESSED_COLUMNS)
    assert {codecs[name] for name in others} == {"ZSTD"}


@pytest.mark.parametrize("isal", [True, False])
def test_png_encoding_is_lossless_and_standard(monkeypatch, isal):
    """Our PNG writer (ISA-L's deflate, or zlib's where isal is missing) decodes exactly, with OpenCV and
    with Pillow, for RGB, grey and bool images of odd sizes and a flat NMFC-like image; bad inputs are
    named."""
    import io

    import cv2
    from PIL import Image

    if not isal:
        monkeypatch.setitem(sys.modules, "isal", None)  # import isal -> ImportError
    monkeypatch.setattr(schema, "_deflate", functools.lru_cache(maxsize=1)(schema._deflate.__wrapped__))
    rng = np.random.default_rng(7)
    flat = np.zeros((40, 48, 3), np.uint8)
    cv2.circle(flat, (24, 20), 15, (200, 120, 40), -1)
    images = [
        rng.integers(0, 256, (1, 1, 3), dtype=np.uint8),
        rng.integers(0, 256, (3, 5, 3), dtype=np.uint8),
        rng.integers(0, 256, (17, 2), dtype=np.uint8),
        rng.random((9, 7)) > 0.5,
        flat,
    ]
    for image in images:
        data = schema.encode_png(image)
        want = image.astype(np.uint8) * 255 if image.dtype == bool else image
        assert np.array_equal(schema.decode_image(data), want)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), want)
    assert len(schema.encode_png(flat)) < flat.nbytes / 5  # compressed
    with pytest.raises(ValueError, match="uint8"):
        schema.encode_png(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        schema.encode_png(np.zeros((0, 4), np.uint8))
