"""Real face crops for the metric tests: a few frames of three shared clips of three people, tracked and
cropped by the preprocessing's ``track_and_crop``, with degraded copies (blurred, shifted) and an
elliptical stand-in for the foreground mask (the metrics only need some region; the preprocessing's
masks need the 3DMM fit, which these tests do not)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from tests.conftest import TINY_CLIPS, require

EVAL_FRAMES = 8
EVAL_CROP_PX = 128
BLUR_SIGMA_PX = 2.0
SHIFT_PX = (4, 3)  # (x, y)


@dataclasses.dataclass(frozen=True)
class Clip:
    """One person's frames: crops (T, S, S, 3) uint8 and their degraded copies, mask (T, S, S) bool."""

    name: str
    crops: np.ndarray
    blurred: np.ndarray
    shifted: np.ndarray
    mask: np.ndarray
    shifted_mask: np.ndarray


def blur(video: np.ndarray, sigma_px: float = BLUR_SIGMA_PX) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(frame, (0, 0), sigma_px) for frame in video])


def shift(video: np.ndarray, dx: int = SHIFT_PX[0], dy: int = SHIFT_PX[1]) -> np.ndarray:
    """Content moved right by dx and down by dy pixels, the border repeated: (T, H, W, ...) -> same."""
    t, h, w = video.shape[:3]
    pad = [(0, 0), (dy, 0), (dx, 0)] + [(0, 0)] * (video.ndim - 3)
    return np.pad(video, pad, mode="edge")[:, :h, :w]


def ellipse_masks(count: int, size: int) -> np.ndarray:
    """(count, size, size) bool: an ellipse over the central face and hair of a track crop."""
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, (size // 2, size // 2), (size * 5 // 16, size * 7 // 16), 0, 0, 360, 1, -1)
    return np.repeat(mask[None].astype(bool), count, axis=0)


@pytest.fixture(scope="session")
def eval_clips(shared_videos) -> list[Clip]:
    """EVAL_FRAMES consecutive frames of each of TINY_CLIPS (three people), EVAL_CROP_PX px crops."""
    from pipeline.preprocess.decode import DecodeConfig
    from pipeline.preprocess.face_track import track_and_crop
    from pipeline.preprocess.track_parts import FaceTrackConfig

    clips = []
    for name in TINY_CLIPS:
        _, crops = track_and_crop(
            require(shared_videos / f"{name}.mp4"),
            DecodeConfig(max_frames=EVAL_FRAMES),
            FaceTrackConfig(crop_size=EVAL_CROP_PX, detect_every=4),
        )
        assert crops.shape == (EVAL_FRAMES, EVAL_CROP_PX, EVAL_CROP_PX, 3), crops.shape
        mask = ellipse_masks(len(crops), EVAL_CROP_PX)
        clips.append(Clip(name, crops, blur(crops), shift(crops), mask, shift(mask)))
    return clips
