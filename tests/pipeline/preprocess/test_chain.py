"""Per-video preprocessing without Ray (pipeline/preprocess/chain.py): a long video in segments."""

from __future__ import annotations

import pyarrow.parquet as pq

from infra.config import config_hash, load_config
from pipeline import schema
from pipeline.preprocess.chain import process_video
from pipeline.preprocess.manifest import discover_videos
from pipeline.preprocess.nmfc import NmfcRenderer
from pipeline.preprocess.ray_preprocess import PreprocessJobConfig, plan


def test_long_video_is_processed_whole_in_segments_and_counts_as_done(tmp_path, ict_model, shared_videos):
    clip = shared_videos / "videoretalking_5.mp4"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path\n{clip}\n")
    overrides = [
        "preprocess.decode.max_frames=26",  # the first 26 frames stand in for a long video
        "preprocess.decode.segment_frames=12",
        "preprocess.mask.key_frames=1",
        "preprocess.track.detect_every=6",
    ]
    cfg = load_config(PreprocessJobConfig, None, overrides)
    (source,) = discover_videos(str(manifest))
    out = str(tmp_path / "out")
    renderer = NmfcRenderer(ict_model, cfg.preprocess.render)
    records = process_video(source, cfg.preprocess, out, config_hash(cfg.preprocess), ict_model, renderer)

    # 26 frames in segments of at most 12: 9 + 9 + 8, each its own unit with its own shard and fit.
    assert [r.status for r in records] == ["ok"] * 3, [r.message for r in records]
    assert [r.video_id for r in records] == [f"{source.video_id}_seg{k:03d}" for k in range(3)]
    assert {r.source_video_id for r in records} == {source.video_id}
    assert [(r.segment, r.segments, r.kept_frames) for r in records] == [(0, 3, 9), (1, 3, 9), (2, 3, 8)]
    assert [(r.first_frame_index, r.last_frame_index) for r in records] == [(0, 8), (9, 17), (18, 25)]
    frame_index = []
    for r in records:
        shard = pq.read_table(tmp_path / "out" / r.shard).to_pandas()
        assert (shard[schema.VIDEO_ID] == r.video_id).all() and len(r.identity_coefficients) > 0
        frame_index += shard[schema.FRAME_INDEX].tolist()
    assert frame_index == list(range(26))  # the whole video, in order, each frame once

    # A rerun with the same config finds the video done; one missing segment record makes it pending.
    assert plan(cfg, str(manifest), out)[1] == []
    (tmp_path / "out" / schema.RECORDS_DIR / f"{records[1].video_id}.json").unlink()
    assert plan(cfg, str(manifest), out)[1] == [source]


def test_models_load_ahead_and_a_missing_model_is_left_to_the_stage(tmp_path):
    """Actors load the detector and landmark model in their constructors; a missing landmark file does
    not fail the actor (each video then fails its landmarks stage with the file named)."""
    from pipeline.preprocess import face_mesh, face_track, landmarks
    from pipeline.preprocess.chain import PreprocessConfig, load_models
    from pipeline.preprocess.shape_predictor import load_shape_predictor

    face_track._mtcnn.cache_clear()  # other tests in this process may have loaded them already
    load_shape_predictor.cache_clear()
    face_mesh.tflite_interpreter.cache_clear()
    missing = PreprocessConfig(
        landmarks=landmarks.LandmarkConfig(backend="dlib", dlib_model_path=str(tmp_path / "no.dat"))
    )
    load_models(missing)
    assert face_track._mtcnn.cache_info().currsize == 1
    assert load_shape_predictor.cache_info().currsize == 0
    load_models(PreprocessConfig(landmarks=landmarks.LandmarkConfig(backend="dlib")))
    assert load_shape_predictor.cache_info().currsize == 1
    load_models(
        PreprocessConfig(landmarks=landmarks.LandmarkConfig(mesh_model_path=str(tmp_path / "no.tflite")))
    )
    assert face_mesh.tflite_interpreter.cache_info().currsize == 0
    load_models(PreprocessConfig())  # the default backend: the face mesh
    assert face_mesh.tflite_interpreter.cache_info().currsize == 1
