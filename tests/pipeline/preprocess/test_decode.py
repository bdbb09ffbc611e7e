"""Decoding: container info, chunked streaming, sampling, images as one frame, unreadable inputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.errors import TooShort, UnreadableVideo
from pipeline.preprocess.decode import (
    DecodeConfig,
    check_length,
    iter_frames,
    read_frames,
    sample_frame_indices,
    split_segments,
    video_info,
)


def write_video(path: Path, frames: np.ndarray, fps: float = 25.0) -> Path:
    """frames (N, H, W, 3) uint8 RGB -> an mp4 (mpeg4) at ``path``."""
    height, width = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def test_sample_frame_indices():
    assert sample_frame_indices(10).tolist() == list(range(10))
    assert sample_frame_indices(10, DecodeConfig(stride=3)).tolist() == [0, 3, 6, 9]
    assert sample_frame_indices(10, DecodeConfig(stride=2, max_frames=3)).tolist() == [0, 2, 4]


def test_split_segments_into_near_equal_consecutive_parts():
    frames = np.arange(0, 50, 2)  # 25 kept frames
    assert [len(s) for s in split_segments(frames, 10)] == [9, 8, 8]  # not 10 + 10 + 5
    assert np.array_equal(np.concatenate(split_segments(frames, 10)), frames)
    assert [len(s) for s in split_segments(frames, 25)] == [25]
    assert [len(s) for s in split_segments(frames, None)] == [25]
    assert [len(s) for s in split_segments(frames, 1)] == [1] * 25


def test_video_info_matches_shared_readme(shared_videos):
    info = video_info(shared_videos / "aniportrait_pose_ref_video.mp4")
    assert (info.num_frames, info.fps, info.height, info.width, info.is_image) == (125, 25.0, 512, 512, False)
    info = video_info(shared_videos / "liveportrait_d13.mp4")  # portrait: 720 wide, 1280 high
    assert (info.num_frames, info.fps, info.height, info.width) == (352, 30.0, 1280, 720)


def test_chunks_are_bounded_and_match_random_access(shared_videos):
    path = shared_videos / "liveportrait_d0.mp4"
    config = DecodeConfig(chunk_frames=16, stride=2)
    chunks = list(iter_frames(path, config))
    assert all(len(index) <= 16 and len(frames) == len(index) for index, frames in chunks)
    frame_index = np.concatenate([index for index, _ in chunks])
    assert frame_index.tolist() == list(range(0, 78, 2))
    frames = np.concatenate([f for _, f in chunks])
    assert frames.shape == (39, 512, 512, 3) and frames.dtype == np.uint8
    # Streaming and random access decode the same pixels; consecutive frames differ (real decoding).
    np.testing.assert_array_equal(read_frames(path, [10, 40], config), frames[[5, 20]])
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 1.0


def test_consecutive_frames_decode_like_random_access(shared_videos):
    """Stride 1 takes the frame-by-frame path, across chunk boundaries and from a segment's middle."""
    path = shared_videos / "liveportrait_d0.mp4"
    config = DecodeConfig(chunk_frames=16)
    segment = np.arange(30, 70)
    chunks = list(iter_frames(path, config, segment))
    assert [len(index) for index, _ in chunks] == [16, 16, 8]
    frames = np.concatenate([f for _, f in chunks])
    np.testing.assert_array_equal(read_frames(path, [30, 45, 46, 69], config), frames[[0, 15, 16, 39]])


def test_image_is_one_rgb_frame(tmp_path):
    image = np.zeros((20, 30, 3), np.uint8)
    image[..., 0] = 200  # red in RGB
    path = tmp_path / "red.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    info = video_info(path)
    assert (info.num_frames, info.height, info.width, info.is_image, info.fps) == (1, 20, 30, True, 0.0)
    (index, frames), *rest = list(iter_frames(path, DecodeConfig(min_frames=8)))  # images are exempt
    assert not rest and index.tolist() == [0] and frames.shape == (1, 20, 30, 3)
    assert frames[0, 0, 0].tolist() == [200, 0, 0]


def test_two_frame_video_is_too_short(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), np.uint8)
    path = write_video(tmp_path / "two.mp4", frames)
    info = video_info(path)
    assert info.num_frames == 2
    with pytest.raises(TooShort, match="2 frames, at least 8") as err:
        check_length(info)
    assert err.value.reason == "too_short"
    with pytest.raises(TooShort):
        next(iter_frames(path))
    assert len(next(iter_frames(path, DecodeConfig(min_frames=2)))[1]) == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.mp4", b"", "empty"),
        ("text.mp4", b"this is not a video\n" * 100, "not a decodable video"),
        ("broken.jpg", b"\xff\xd8 not really a jpeg", "not a readable image"),
    ],
)
def test_unreadable_inputs(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnreadableVideo, match=message) as err:
        list(iter_frames(path))
    assert err.value.reason == "unreadable" and str(path) in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(UnreadableVideo, match="no such file"):
        video_info(tmp_path / "missing.mp4")
