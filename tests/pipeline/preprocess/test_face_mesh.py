"""The face-mesh landmark backend: window geometry, the 468 -> 68 table, agreement with dlib where dlib is
reliable, robustness where it is not (a rolled head, a turned head), and unreliable frames dropped."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline import schema
from pipeline.preprocess.decode import DecodeConfig
from pipeline.preprocess.face_mesh import (
    MESH_IDS,
    MESH_INPUT_PX,
    MESH_POINTS,
    MESH_WEIGHTS,
    face_mesh_model_path,
    face_mesh_track,
    ibug68_from_mesh,
    window_from_points,
    window_matrix,
)
from pipeline.preprocess.face_track import track_and_crop
from pipeline.preprocess.landmarks import FrameLandmarks, LandmarkConfig, detect_landmarks, landmark_weights
from tests.conftest import SHARED

INNER = slice(17, 68)


def iod(landmarks_px: np.ndarray) -> np.ndarray:
    return np.linalg.norm(landmarks_px[..., 36, :] - landmarks_px[..., 45, :], axis=-1)


def test_window_maps_its_centre_to_the_input_centre_and_levels_the_eyes():
    matrix = window_matrix(np.array([120.0, 100.0]), 96.0, np.radians(30))
    np.testing.assert_allclose(matrix[:, :2] @ [120.0, 100.0] + matrix[:, 2], [95.5, 95.5])
    np.testing.assert_allclose(np.linalg.norm(matrix[:, :2], axis=0), MESH_INPUT_PX / 96.0)
    # Points of a face rolled by 30 degrees: the window's angle is the eye line's.
    rng = np.random.default_rng(0)
    points = rng.uniform(-40, 40, (MESH_POINTS, 2))
    points[33], points[263] = [-30.0, 0.0], [30.0, 0.0]
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    rolled = points @ np.array([[c, s], [-s, c]]) + 128
    centre, side, angle = window_from_points(rolled)
    np.testing.assert_allclose(np.degrees(angle), 30.0)
    assert side == pytest.approx(1.5 * 80, rel=0.05)
    # In the window, the eye corners are level.
    eyes = rolled[[33, 263]] @ window_matrix(centre, side, angle)[:, :2].T
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1e-9


def test_the_table_is_convex_combinations_of_mesh_points():
    assert MESH_IDS.shape == MESH_WEIGHTS.shape == (68, 4)
    assert MESH_IDS.min() >= 0 and MESH_IDS.max() < MESH_POINTS
    assert np.all(MESH_WEIGHTS >= 0)
    np.testing.assert_allclose(MESH_WEIGHTS.sum(1), 1.0, atol=1e-9)
    points = np.random.default_rng(1).normal(size=(2, MESH_POINTS, 3))
    expected = (points[:, MESH_IDS, :2] * MESH_WEIGHTS[None, :, :, None]).sum(2)
    np.testing.assert_allclose(ibug68_from_mesh(points), expected)


def test_a_missing_model_names_the_setting(tmp_path):
    with pytest.raises(FileNotFoundError, match="landmarks.mesh_model_path"):
        face_mesh_model_path(str(tmp_path / "face_landmark.tflite"))


@pytest.fixture(scope="module")
def frontal_clip(shared_videos):
    track, crops = track_and_crop(shared_videos / "liveportrait_d3.mp4", DecodeConfig(max_frames=20))
    return crops, track.face_box_crop_px().astype(np.float32)


def test_mesh_agrees_with_dlib_on_a_frontal_clip(frontal_clip):
    crops, boxes = frontal_clip
    mesh = detect_landmarks(crops, boxes, LandmarkConfig(backend="mediapipe"))
    dlib = detect_landmarks(crops, boxes, LandmarkConfig(backend="dlib"))
    distance = np.linalg.norm(mesh[:, INNER] - dlib[:, INNER], axis=-1).mean(1) / iod(dlib)
    assert distance.mean() < 0.04, distance
    points, presence = face_mesh_track(crops, boxes, face_mesh_model_path())
    assert points.shape == (20, MESH_POINTS, 3) and presence.dtype == np.float32
    assert presence.min() > 0.9


def test_frame_by_frame_landmarks_carry_the_window_like_the_batch(frontal_clip, monkeypatch):
    """A live stream gets its frames one at a time: ``FrameLandmarks`` keeps the previous frame's window,
    so it gives the batch job's landmarks with one network pass a frame (two on the first, from the box)."""
    from pipeline.preprocess import face_mesh

    crops, boxes = frontal_clip
    batch = detect_landmarks(crops, boxes, LandmarkConfig())
    passes = []
    run = face_mesh.run_face_mesh
    monkeypatch.setattr(face_mesh, "run_face_mesh", lambda *args: passes.append(1) or run(*args))
    stream = FrameLandmarks(LandmarkConfig())
    one_by_one = np.stack([stream(crops[k : k + 1], boxes[k : k + 1]) for k in range(len(crops))])
    assert len(passes) == len(crops) + 1
    np.testing.assert_allclose(one_by_one, batch, atol=1e-4)


def test_mesh_follows_a_rolled_head(frontal_clip):
    """The same crops rotated by 35 degrees about their centre: the levelled window finds the rotated
    points (within 3 % of the eye distance on the inner face)."""
    crops, boxes = frontal_clip
    upright = detect_landmarks(crops, boxes, LandmarkConfig())
    size = crops.shape[1]
    rotation = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), 35, 1.0)
    rolled = np.stack(
        [cv2.warpAffine(c, rotation, (size, size), borderMode=cv2.BORDER_REPLICATE) for c in crops]
    )
    found = detect_landmarks(rolled, boxes, LandmarkConfig())
    expected = upright @ rotation[:, :2].T + rotation[:, 2]
    distance = np.linalg.norm(found[:, INNER] - expected[:, INNER], axis=-1).mean(1) / iod(upright)
    assert distance.mean() < 0.03, distance


@pytest.mark.slow
def test_a_turned_head_fits_better_on_the_mesh_than_on_dlib(ict_model):
    """skyreels-a1_1 turns its head far to the side: dlib's points collapse onto the visible half and the
    3DMM fit cannot follow them (over 2.3 % of the eye distance); the mesh's fit stays under 2 %."""
    from pipeline.preprocess.fit_3dmm import FitConfig, fit_config_for, fit_video

    clip = SHARED / "data" / "corpus" / "skyreels-a1_1.mp4"
    if not clip.exists():
        pytest.skip(f"{clip} not found")
    track, crops = track_and_crop(clip, DecodeConfig())
    boxes = track.face_box_crop_px().astype(np.float32)
    errors = {}
    for backend in ("dlib", "mediapipe"):
        landmarks = detect_landmarks(crops, boxes, LandmarkConfig(backend=backend))
        fit = fit_video(ict_model, landmarks, config=fit_config_for(FitConfig(), backend))
        errors[backend] = 100 * fit.mean_error_iod().mean()
    assert errors["mediapipe"] < 2.0 < 2.3 < errors["dlib"], errors


def test_unreliable_frames_are_dropped_and_counted(frontal_clip):
    """Frames where the mesh finds no face (blank crops here) leave the unit: a frame_index gap that
    training clips never span, and the unit's record counts them."""
    from pipeline.preprocess.chain import (
        ROW_CROPS,
        ROW_FACE_BOXES_PX,
        ROW_RECORD,
        PreprocessConfig,
        landmarks,
    )

    crops, boxes = frontal_clip
    crops = crops.copy()
    crops[8:11] = 128
    row = {
        ROW_RECORD: schema.VideoRecord(video_id="clip"),
        ROW_CROPS: crops,
        ROW_FACE_BOXES_PX: boxes,
        schema.FRAME_INDEX: np.arange(20, dtype=np.int64),
    }
    row = landmarks(row, PreprocessConfig())
    assert row[schema.FRAME_INDEX].tolist() == [*range(8), *range(11, 20)]
    assert row[ROW_RECORD].dropped_frames == 3
    assert len(row[ROW_CROPS]) == len(row[schema.LANDMARKS_PX]) == len(row[schema.LANDMARK_CONFIDENCE]) == 17
    weights = landmark_weights(row[schema.LANDMARK_CONFIDENCE], LandmarkConfig())
    assert weights.shape == (17, 68) and weights.min() > 0.5
