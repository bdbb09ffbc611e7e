"""Face track parts: linking synthetic detections (one track, cuts at jumps and gaps, rejected parts), and
a real cut (two shared clips back to back) through the one-pass tracker and the whole per-video chain."""

from __future__ import annotations

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import FaceTooSmall, MultipleFaces, NoFace, TrackLost
from pipeline.preprocess.face_crop import crop_faces
from pipeline.preprocess.face_track import detection_frames, track_and_crop, track_and_crop_parts
from pipeline.preprocess.track_parts import (
    Detections,
    FaceTrackConfig,
    track_from_detections,
    track_parts_from_detections,
)
from tests.pipeline.preprocess.test_decode import write_video

RAW = FaceTrackConfig(smooth_sigma_frames=0.0)
HW = (240, 320)


def box(cx: float, cy: float, side: float) -> np.ndarray:
    """A square detector box (edge coordinates) whose centre is (cx, cy) in pixel-centre coordinates."""
    return np.array([cx + 0.5 - side / 2, cy + 0.5 - side / 2, cx + 0.5 + side / 2, cy + 0.5 + side / 2])


def detections(frames, boxes_per_frame, prob=0.999) -> Detections:
    boxes = tuple(np.array(b, np.float32).reshape(-1, 4) for b in boxes_per_frame)
    return Detections(np.array(frames), boxes, tuple(np.full(len(b), prob, np.float32) for b in boxes))


def spans(parts) -> list[tuple[int, int, str]]:
    """(first frame, last frame, "ok" or the reason) per part."""
    return [
        (int(p.frame_index[0]), int(p.frame_index[-1]), p.rejected.reason if p.rejected else "ok")
        for p in parts
    ]


# One track from detections.


def test_linear_motion_is_interpolated_exactly():
    frame_index = np.arange(21)
    detect_at = detection_frames(frame_index, 5)
    dets = detections(detect_at, [box(100 + 2 * t, 80 - t, 100 + t) for t in detect_at])
    track = track_from_detections(frame_index, dets, HW, RAW)
    np.testing.assert_allclose(
        track.box_center_px, np.stack([100 + 2 * frame_index, 80 - frame_index], 1), atol=1e-4
    )
    np.testing.assert_allclose(track.box_side_px, 100 + frame_index, atol=1e-4)
    np.testing.assert_allclose(track.crop_side_px, RAW.crop_scale * (100 + frame_index), atol=1e-3)
    assert track.detected.tolist() == [t in detect_at for t in frame_index]


def test_smoothing_reduces_detector_noise():
    rng = np.random.default_rng(0)
    frame_index = np.arange(200)
    noisy = [box(150 + rng.normal(0, 4), 120 + rng.normal(0, 4), 100 + rng.normal(0, 3)) for _ in frame_index]
    dets = detections(frame_index, noisy)
    raw = track_from_detections(frame_index, dets, HW, RAW)
    smooth = track_from_detections(frame_index, dets, HW, FaceTrackConfig(smooth_sigma_frames=3.0))
    jitter = lambda t: np.abs(np.diff(t.box_center_px, 2, axis=0)).mean()  # noqa: E731
    assert jitter(smooth) < 0.25 * jitter(raw)
    assert np.abs(smooth.box_center_px - [150, 120]).max() < 6


def test_rejections_on_synthetic_tracks():
    frame_index = np.arange(30)
    detect_at = detection_frames(frame_index, 5)
    face = box(100, 100, 80)
    with pytest.raises(NoFace, match="no face found in 7 sampled"):
        track_from_detections(frame_index, detections(detect_at, [[]] * 7), HW)
    with pytest.raises(NoFace, match="only 3 of 7"):
        track_from_detections(frame_index, detections(detect_at, [face] * 3 + [[]] * 4), HW)
    with pytest.raises(MultipleFaces, match="another person's face in 7 of 7"):
        track_from_detections(frame_index, detections(detect_at, [[face, box(250, 100, 70)]] * 7), HW)
    with pytest.raises(FaceTooSmall, match="face is 40 px"):
        track_from_detections(frame_index, detections(detect_at, [box(100, 100, 40)] * 7), HW)
    jumping = [face] * 4 + [box(220, 100, 80)] * 3
    with pytest.raises(TrackLost, match="jumps at frame 20") as err:
        track_from_detections(frame_index, detections(detect_at, jumping), HW)
    assert err.value.reason == "track_jump"
    growing = [face] * 4 + [box(100, 100, 160)] * 3
    with pytest.raises(TrackLost, match="size changed x2.00"):
        track_from_detections(frame_index, detections(detect_at, growing), HW)
    long_index = np.arange(100)
    long_at = detection_frames(long_index, 5)
    gap = [face if t < 30 or t > 70 else [] for t in long_at]
    with pytest.raises(TrackLost, match="lost for 50 frames"):
        track_from_detections(long_index, detections(long_at, gap), HW)


def test_tolerated_imperfections():
    frame_index = np.arange(30)
    detect_at = detection_frames(frame_index, 5)
    face = box(100, 100, 80)
    # A small or unsure stray detection in one frame, and one missed detection, keep the video.
    dets = [face, [face, box(280, 200, 20)], [], face, face, face, face]
    track = track_from_detections(frame_index, detections(detect_at, dets), HW)
    assert len(track) == 30 and track.detected.sum() == 6
    np.testing.assert_allclose(track.box_center_px, [[100, 100]] * 30, atol=1e-6)
    # With two sizeable faces the track keeps the one nearest the previous position, not the largest.
    near = [face] + [[box(260, 100, 100), box(104, 100, 80)]] * 6
    config = FaceTrackConfig(max_other_face_fraction=1.0, smooth_sigma_frames=0.0)
    track = track_from_detections(frame_index, detections(detect_at, near), HW, config)
    assert np.abs(track.box_center_px[:, 0] - 102).max() < 2.5


# Parts of a cut track.


def test_a_jump_cuts_the_track_into_parts_smoothed_apart():
    """Faces at two places: two usable parts, each tracked on its own (no smoothing across the cut); the
    frames between the two detections, which nothing looked at here, are a rejected part."""
    frame_index = np.arange(60)
    detect_at = detection_frames(frame_index, 5)
    dets = detections(detect_at, [box(100, 100, 80) if t < 30 else box(220, 100, 80) for t in detect_at])
    parts = track_parts_from_detections(frame_index, dets, HW, source="clip")
    assert spans(parts) == [(0, 25, "ok"), (26, 29, "no_face"), (30, 59, "ok")]
    first, gap, second = parts
    assert first.crops is None and gap.track is None and "clip frames 26-29" in str(gap.rejected)
    # Smoothed with sigma 3 right up to the cut, yet each part stays exactly on its own face.
    np.testing.assert_allclose(first.track.box_center_px, [[100, 100]] * 26, atol=1e-9)
    np.testing.assert_allclose(second.track.box_center_px, [[220, 100]] * 30, atol=1e-9)
    assert first.track.frame_index.tolist() == list(range(26))
    assert second.track.detected.tolist() == [t in detect_at for t in range(30, 60)]


def test_a_jump_in_the_last_frames_keeps_the_long_part():
    """A jump 4 frames before the end (a clip of 183 frames once lost 180 to one at frame 180): the
    long part is kept; the short tail alone is rejected as too short."""
    frame_index = np.arange(40)
    dets = detections(frame_index, [box(100, 100, 80) if t < 36 else box(100, 100, 150) for t in frame_index])
    parts = track_parts_from_detections(frame_index, dets, HW, source="clip", min_frames=8)
    assert spans(parts) == [(0, 35, "ok"), (36, 39, "too_short")]
    assert "clip frames 36-39" in str(parts[1].rejected) and "at least 8" in str(parts[1].rejected)
    assert len(parts[0].track) == 36


def test_a_long_gap_cuts_the_track_and_short_gaps_at_the_ends_are_bridged():
    """The face gone for more than max_gap_frames (30): a cut, its frames a rejected part. Up to 30
    frames without the face at the start or end belong to the track (the box held), as in one track."""
    face = box(100, 100, 80)
    frame_index = np.arange(100)
    detect_at = detection_frames(frame_index, 5)
    gone = detections(detect_at, [face if t < 30 or t > 70 else [] for t in detect_at])
    assert spans(track_parts_from_detections(frame_index, gone, HW)) == [
        (0, 25, "ok"),
        (26, 74, "no_face"),
        (75, 99, "ok"),
    ]
    late = detections(detect_at, [face if 40 <= t <= 70 else [] for t in detect_at])
    assert spans(track_parts_from_detections(frame_index, late, HW)) == [
        (0, 39, "no_face"),
        (40, 99, "ok"),  # frame 99 is 29 frames after the last face at 70
    ]
    with pytest.raises(TrackLost, match="face lost for 40 frames"):
        track_from_detections(frame_index, late, HW)


def test_a_part_with_its_face_mostly_missing_is_rejected_alone():
    face, other = box(100, 100, 80), box(220, 100, 80)
    frame_index = np.arange(100)
    detect_at = detection_frames(frame_index, 5)
    # After the jump at 50 the face is found in only 3 of the second part's 11 sampled frames.
    found = [face if t < 50 else other if t in (50, 75, 99) else [] for t in detect_at]
    parts = track_parts_from_detections(frame_index, detections(detect_at, found), HW, RAW)
    assert spans(parts) == [(0, 45, "ok"), (46, 49, "no_face"), (50, 99, "no_face")]
    assert "found in only 3 of 11 sampled frames" in str(parts[2].rejected)


def test_without_a_usable_part_the_segment_is_rejected_with_the_longest_parts_reason():
    frame_index = np.arange(100)
    detect_at = detection_frames(frame_index, 5)
    # One stray detection: no usable part, and most of the segment shows no face.
    stray = detections(detect_at, [box(100, 100, 80) if t == 50 else [] for t in detect_at])
    with pytest.raises(NoFace, match="frames 0-49: no face tracked"):
        track_parts_from_detections(frame_index, stray, HW)
    # Too small on both sides of a jump: the longer part's reason.
    small = detections(detect_at, [box(100, 100, 40) if t < 60 else box(200, 100, 40) for t in detect_at])
    with pytest.raises(FaceTooSmall, match="frames 0-55: face is 40 px"):
        track_parts_from_detections(frame_index, small, HW)


# A real cut: two shared clips back to back.


def clip_frames(shared_videos, name: str, count: int, size: int = 256) -> np.ndarray:
    from pipeline.preprocess.decode import read_frames

    frames = read_frames(shared_videos / f"{name}.mp4", range(count))
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


@pytest.fixture(scope="module")
def two_clips(shared_videos):
    """30 frames of a small face (videoretalking_4, ~100 px) then 30 of a large one (Ocasio-Cortez,
    ~200 px), both at 256 x 256: the box side doubles at frame 30."""
    return clip_frames(shared_videos, "videoretalking_4", 30), clip_frames(
        shared_videos, "sadtalker_WDA_AlexandriaOcasioCortez_000", 30
    )


def test_one_pass_cuts_on_the_frame_of_the_cut(tmp_path, two_clips):
    """Detection every 7th frame (0, 7, ..., 28, 35): the jump shows at 35, MTCNN on the held frames
    29-34 puts the cut at 30 exactly; each part's crops are its own track's crops of its frames."""
    from pipeline.preprocess.decode import DecodeConfig, iter_frames

    path = write_video(tmp_path / "cut.mp4", np.concatenate(two_clips))
    decode = DecodeConfig(chunk_frames=16)
    config = FaceTrackConfig(detect_every=7)
    parts = track_and_crop_parts(path, decode, config)
    assert spans(parts) == [(0, 29, "ok"), (30, 59, "ok")]
    sides = [np.median(p.track.box_side_px) for p in parts]
    assert 80 < sides[0] < 130 and 160 < sides[1] < 260, sides
    assert parts[1].track.detected[0], "the new face was found on the cut's frame"
    frames = np.concatenate([f for _, f in iter_frames(path, decode)])
    for part in parts:
        rows = np.arange(len(part.frame_index))
        expected = crop_faces(frames[part.frame_index], rows, part.track)
        assert part.crops.shape == (len(rows), 256, 256, 3) and np.array_equal(part.crops, expected)
    with pytest.raises(TrackLost, match="jumps at frame 30"):
        track_and_crop(path, decode, config)


def chain_records(tmp_path, shared_ict_model, video, overrides):
    from infra.config import config_hash, load_config
    from pipeline.preprocess.chain import process_video
    from pipeline.preprocess.manifest import discover_videos
    from pipeline.preprocess.nmfc import NmfcRenderer
    from pipeline.preprocess.ray_preprocess import PreprocessJobConfig

    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"path\n{video}\n")
    cfg = load_config(PreprocessJobConfig, None, ["preprocess.mask.key_frames=1", *overrides])
    (source,) = discover_videos(str(manifest))
    out = tmp_path / "out"
    renderer = NmfcRenderer(shared_ict_model, cfg.preprocess.render)
    records = process_video(
        source, cfg.preprocess, str(out), config_hash(cfg.preprocess), shared_ict_model, renderer
    )
    return source, out, records


def test_chain_makes_one_unit_per_part(tmp_path, ict_model, two_clips):
    """Through the per-video chain: two ok units, own fits and shards, whose frames meet at the cut."""
    from pipeline import schema

    video = write_video(tmp_path / "cut.mp4", np.concatenate(two_clips))
    source, out, records = chain_records(tmp_path, ict_model, video, ["preprocess.track.detect_every=7"])
    assert [r.status for r in records] == ["ok", "ok"], [r.message for r in records]
    assert [r.video_id for r in records] == [f"{source.video_id}_part{p:02d}" for p in range(2)]
    assert [(r.track_part, r.track_parts) for r in records] == [(0, 2), (1, 2)]
    assert [(r.first_frame_index, r.last_frame_index, r.kept_frames) for r in records] == [
        (0, 29, 30),
        (30, 59, 30),
    ]
    assert records[0].identity_coefficients != records[1].identity_coefficients  # two people, two fits
    frame_index = []
    for r in records:
        shard = pq.read_table(out / r.shard).to_pandas()
        assert (shard[schema.VIDEO_ID] == r.video_id).all()
        frame_index += shard[schema.FRAME_INDEX].tolist()
    assert frame_index == list(range(60))


def test_chain_keeps_the_long_part_before_a_jump_in_the_last_frames(tmp_path, ict_model, two_clips):
    """A jump 4 frames before the end: the 36-frame part is an ok unit, the 4-frame tail a failed one
    with its reason; the per-unit table shows both."""
    from pipeline import schema
    from pipeline.preprocess import shard_writer

    first, second = two_clips
    frames = np.concatenate([np.concatenate([first, first[::-1]])[:36], second[:4]])
    video = write_video(tmp_path / "late_cut.mp4", frames)
    _, out, records = chain_records(tmp_path, ict_model, video, ["preprocess.track.detect_every=6"])
    shard_writer.write_videos_table(str(out), records)
    table = pq.read_table(out / schema.VIDEOS_TABLE).to_pandas()
    assert table[
        ["track_part", "status", "reason", "first_frame_index", "last_frame_index"]
    ].values.tolist() == [
        [0, "ok", "", 0, 35],
        [1, "failed", "too_short", 36, 39],
    ]
    assert table.kept_frames.tolist() == [36, 0] and table.shard[1] == ""
    assert "frames 36-39" in table.message[1]
