"""68-point landmarks: model lookup, FAN geometry and heatmap decoding, dlib on every shared clip."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pipeline.preprocess.decode import DecodeConfig, read_frames
from pipeline.preprocess.face_track import FaceTrackConfig
from pipeline.preprocess.landmarks import (
    FAN_INPUT_PX,
    LandmarkConfig,
    detect_landmarks,
    dlib_intensity,
    dlib_model_path,
    fan_weights_path,
    fan_window,
    heatmaps_to_points,
    landmarks_for_video,
    window_to_crop,
)

RIGHT_EYE, LEFT_EYE = slice(36, 42), slice(42, 48)  # the subject's right eye is on the image's left
NOSE_TIP, CHIN, MOUTH = 30, 8, slice(48, 68)


def have_fan_weights() -> bool:
    try:
        fan_weights_path(LandmarkConfig(backend="fan"))
    except FileNotFoundError:
        return False
    return True


def inter_ocular(landmarks_px: np.ndarray) -> np.ndarray:
    """Outer eye corner distance (..., 68, 2) -> (...,)."""
    return np.linalg.norm(landmarks_px[..., 36, :] - landmarks_px[..., 45, :], axis=-1)


def assert_face_shaped(landmarks_px: np.ndarray, name: str) -> None:
    """iBUG order on upright faces: eyes left/right of the nose, above it; mouth below; chin lowest."""
    right_eye = landmarks_px[:, RIGHT_EYE].mean(1)
    left_eye = landmarks_px[:, LEFT_EYE].mean(1)
    nose, mouth = landmarks_px[:, NOSE_TIP], landmarks_px[:, MOUTH].mean(1)
    assert np.all(right_eye[:, 0] < nose[:, 0]) and np.all(nose[:, 0] < left_eye[:, 0]), name
    assert np.all(np.maximum(right_eye[:, 1], left_eye[:, 1]) < nose[:, 1]), name
    assert np.all(nose[:, 1] < mouth[:, 1]) and np.all(mouth[:, 1] < landmarks_px[:, CHIN, 1]), name


def test_dlib_model_is_found_and_a_wrong_path_is_named(tmp_path):
    assert dlib_model_path().name == "shape_predictor_68_face_landmarks.dat"
    with pytest.raises(FileNotFoundError, match="nope.dat"):
        dlib_model_path(LandmarkConfig(dlib_model_path=str(tmp_path / "nope.dat")))


def test_missing_fan_weights_say_what_to_do(tmp_path):
    config = LandmarkConfig(backend="fan", fan_weights_path=str(tmp_path / "fan.pth.tar"))
    with pytest.raises(FileNotFoundError, match="never downloads") as err:
        detect_landmarks(np.zeros((1, 64, 64, 3), np.uint8), np.array([[16.0, 16, 48, 48]]), config)
    assert str(tmp_path / "fan.pth.tar") in str(err.value) and "backend=dlib" in str(err.value)


def test_unknown_backend():
    with pytest.raises(ValueError, match="'mediapipe', 'dlib' or 'fan'"):
        detect_landmarks(
            np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 4)), LandmarkConfig(backend="openface")
        )


def test_fan_window_follows_face_alignment_recipe():
    boxes = np.array([[100.0, 80.0, 200.0, 200.0]])  # w = 100, h = 120
    matrix = fan_window(boxes)[0]
    side = 200.0 * 220.0 / 195.0
    np.testing.assert_allclose(matrix[0, 0], FAN_INPUT_PX / side)
    # The box centre raised by 0.12 h lands on the window centre (127.5 in pixel-centre coordinates).
    centre = np.array([150.0, 140.0 - 0.12 * 120.0]) - 0.5
    np.testing.assert_allclose(matrix[:, :2] @ centre + matrix[:, 2], [127.5, 127.5])


def gaussian_heatmaps(points_px: np.ndarray, size: int = 64, sigma: float = 1.5) -> torch.Tensor:
    """Heatmaps (B, K, size, size) peaking at FAN-input pixel coordinates points_px (B, K, 2)."""
    centres = (points_px - 1.5) / 4.0  # input pixel 4j + 1.5 is heatmap pixel j's centre
    grid = np.arange(size, dtype=np.float64)
    gx = np.exp(-0.5 * ((grid - centres[..., 0, None]) / sigma) ** 2)
    gy = np.exp(-0.5 * ((grid - centres[..., 1, None]) / sigma) ** 2)
    return torch.from_numpy(gy[..., :, None] * gx[..., None, :]).float()


def test_heatmap_decoding_and_window_inverse_recover_points():
    rng = np.random.default_rng(0)
    crop_points = rng.uniform(70, 190, (3, 68, 2))
    boxes = np.array([[60.0, 50.0, 200.0, 210.0], [80.0, 70.0, 180.0, 190.0], [50.0, 40.0, 210.0, 220.0]])
    matrices = fan_window(boxes)
    window_points = np.einsum("bij,bkj->bki", matrices[:, :, :2], crop_points) + matrices[:, None, :, 2]
    decoded = heatmaps_to_points(gaussian_heatmaps(window_points)).numpy()
    # Argmax plus the quarter-pixel rule: within 1 heatmap pixel's quarter-step grid (<= 1.5 input px).
    assert np.abs(decoded - window_points).max() <= 1.5
    assert np.abs(decoded - window_points).mean() < 0.8
    back = window_to_crop(decoded, matrices)
    assert back.dtype == np.float32
    assert np.abs(back - crop_points).max() <= 1.5 / matrices[:, 0, 0].min()


def test_fan_backend_runs_batched_with_local_weights(tmp_path):
    """Randomly initialised FAN weights from a local file: the backend loads and runs in batches."""
    from face_alignment.models import FAN

    torch.manual_seed(0)
    path = tmp_path / "fan_random.pth.tar"
    torch.save(FAN(1).state_dict(), path)  # one hourglass instead of the released four: 4x cheaper
    crops = np.random.default_rng(0).integers(0, 255, (3, 96, 96, 3), np.uint8)
    boxes = np.array([[20.0, 20.0, 76.0, 76.0]] * 3)
    config = LandmarkConfig(backend="fan", fan_weights_path=str(path), fan_modules=1, batch_size=2)
    landmarks = detect_landmarks(crops, boxes, config)
    assert landmarks.shape == (3, 68, 2) and landmarks.dtype == np.float32
    # Whatever the weights, the decoded points lie in FAN's window around the box, mapped to the crop.
    corners = window_to_crop(np.array([[[-0.5, -0.5], [255.5, 255.5]]]), fan_window(boxes[:1]))[0]
    assert np.all(landmarks >= corners[0]) and np.all(landmarks <= corners[1])
    np.testing.assert_allclose(corners[1] - corners[0], 200.0 * 112.0 / 195.0, rtol=1e-5)


@pytest.fixture(scope="module")
def clip_landmarks(shared_videos):
    """dlib landmarks of the first 20 frames of every shared clip (MTCNN on 3 of them)."""
    decode = DecodeConfig(max_frames=20)
    track = FaceTrackConfig(detect_every=10)
    config = LandmarkConfig(backend="dlib")
    return {
        p.stem: landmarks_for_video(p, decode, track, config) for p in sorted(shared_videos.glob("*.mp4"))
    }


def test_every_clip_has_a_track_and_face_shaped_steady_landmarks(clip_landmarks):
    assert len(clip_landmarks) == 14
    for name, result in clip_landmarks.items():
        track, landmarks = result.track, result.landmarks_px
        height, width = track.frame_hw
        assert track.detected.sum() >= 2, name  # 3 detection frames; one miss is tolerated
        assert np.all((track.box_center_px > 0) & (track.box_center_px < [width, height])), name
        assert landmarks.shape == (20, 68, 2) and landmarks.dtype == np.float32, name
        assert result.frame_index.tolist() == list(range(20)) and result.crop_size == 256 and result.fps > 0
        assert np.all((landmarks > 0) & (landmarks < 255)), name
        assert_face_shaped(landmarks, name)
        iod = inter_ocular(landmarks)
        # The crop is 1.6 MTCNN boxes wide: eye corners ~0.45 box sides apart -> 60-90 px of 256.
        assert np.all((iod > 50) & (iod < 110)), (name, iod.min(), iod.max())
        # Talking heads move slowly: median frame-to-frame motion under 3% of the eye distance.
        motion = np.linalg.norm(np.diff(landmarks, axis=0), axis=2).mean(1) / iod[1:]
        assert np.median(motion) < 0.03, (name, np.median(motion))


def test_crop_landmarks_map_back_to_dlib_on_the_full_frame(clip_landmarks, shared_videos):
    """Landmarks found in the crop, mapped to frame pixels, agree with dlib run on the uncropped frame
    with its own detector: the crop transform and the box hand-over are right."""
    import dlib

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_path()))
    errors = []
    for name, result in clip_landmarks.items():
        frame = read_frames(shared_videos / f"{name}.mp4", [10])[0]
        scale = min(1.0, 640 / max(frame.shape[:2]))  # HOG detection on at most 640 px
        small = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        faces = detector(small, 0)
        if len(faces) != 1:
            continue
        r = faces[0]
        rect = dlib.rectangle(*[int(round(v / scale)) for v in (r.left(), r.top(), r.right(), r.bottom())])
        reference = np.array([(p.x, p.y) for p in predictor(frame, rect).parts()], np.float64)
        ours = result.track.crop_to_frame(result.landmarks_px[10:11].astype(np.float64), [10])[0]
        errors.append(np.linalg.norm(ours - reference, axis=1).mean() / inter_ocular(reference))
    assert len(errors) >= 10
    assert np.median(errors) < 0.04 and max(errors) < 0.08, errors


def test_dlib_predicts_the_same_on_its_intensity_image(shared_videos):
    """dlib's predictor reads only floor((r + g + b) / 3) of the pixels it samples, so the grey image the
    dlib backend upsamples gives exactly its prediction on the RGB frame."""
    import dlib

    predictor = dlib.shape_predictor(str(dlib_model_path()))
    frames = read_frames(shared_videos / "liveportrait_d3.mp4", [0, 30, 60])
    grey = dlib_intensity(frames)
    assert grey.shape == frames.shape[:3] and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey, frames.astype(np.int32).sum(-1) // 3)
    box = dlib.rectangle(150, 120, 370, 340)  # the face of this 512 x 512 clip

    def points(image):
        return [(p.x, p.y) for p in predictor(image, box).parts()]

    for rgb, g in zip(frames, grey):
        assert points(rgb) == points(g)


@pytest.mark.parametrize("backend", ["mediapipe", "dlib"])
def test_photo_landmarks(shared_images, backend):
    result = landmarks_for_video(
        shared_images / "face-alignment_aflw-test.jpg", config=LandmarkConfig(backend)
    )
    assert result.landmarks_px.shape == (1, 68, 2) and result.fps == 0.0
    assert_face_shaped(result.landmarks_px, "aflw-test")
    assert result.confidence.shape == (1,) and result.confidence[0] > 0.5


@pytest.mark.skipif(not have_fan_weights(), reason="FAN weights not in face-alignment's cache")
def test_fan_agrees_with_dlib(clip_landmarks, shared_videos):
    path = shared_videos / "liveportrait_d3.mp4"
    fan = landmarks_for_video(
        path, DecodeConfig(max_frames=20), FaceTrackConfig(detect_every=10), LandmarkConfig(backend="fan")
    )
    dlib_points = clip_landmarks["liveportrait_d3"].landmarks_px
    error = np.linalg.norm(fan.landmarks_px - dlib_points, axis=2).mean() / inter_ocular(dlib_points).mean()
    assert error < 0.06


@pytest.mark.slow
def test_every_frame_of_every_clip(shared_videos):
    """All frames of every shared clip: a track and face-shaped landmarks for each."""
    for path in sorted(shared_videos.glob("*.mp4")):
        result = landmarks_for_video(path, config=LandmarkConfig(backend="dlib"))
        assert len(result.frame_index) == len(result.landmarks_px) > 70, path.name
        assert np.all(np.isfinite(result.landmarks_px)), path.name
        assert np.all((result.landmarks_px > -20) & (result.landmarks_px < 275)), path.name
        iod = inter_ocular(result.landmarks_px)
        assert np.all((iod > 40) & (iod < 120)), path.name


def test_stage_configs_load_from_overrides():
    """The three stage configs are plain typed configs: YAML/--set overrides reach them, typos do not."""
    from infra.config import ConfigError, load_config

    assert load_config(LandmarkConfig, None, ["backend=fan", "batch_size=4"]) == LandmarkConfig(
        backend="fan", batch_size=4
    )
    assert load_config(FaceTrackConfig, None, ["crop_size=128"]).crop_size == 128
    assert load_config(DecodeConfig, None, ["max_frames=null"]).max_frames is None
    assert load_config(LandmarkConfig, None, ["backend=mediapipe"]) == LandmarkConfig()
    with pytest.raises(ConfigError, match="backend"):
        load_config(LandmarkConfig, None, ["backend=openface"])
    with pytest.raises(ConfigError, match="crop_sise"):
        load_config(FaceTrackConfig, None, ["crop_sise=128"])


def test_dump_writes_the_part_b_format_and_records_rejections(tmp_path, shared_videos):
    """benchmarks/track_landmarks.py --dump: one npz per accepted clip, reasons for the others, DONE last."""
    import json

    from benchmarks.track_landmarks import dump_landmarks
    from tests.pipeline.preprocess.test_decode import write_video

    clip = shared_videos / "liveportrait_d0.mp4"
    short = write_video(tmp_path / "short.mp4", np.zeros((2, 64, 64, 3), np.uint8))
    out = tmp_path / "out"
    summary = dump_landmarks([clip, short], out, DecodeConfig(max_frames=20), LandmarkConfig(backend="dlib"))
    assert summary["short"]["rejected"] == "too_short" and summary["liveportrait_d0"]["frames"] == 20
    assert json.loads((out / "summary.json").read_text()) == summary and (out / "DONE").exists()
    data = np.load(out / "liveportrait_d0.npz")
    assert data["landmarks_px"].shape == (20, 68, 2) and data["landmarks_px"].dtype == np.float32
    assert data["frame_index"].tolist() == list(range(20))
    assert int(data["crop_size"]) == 256 and float(data["fps"]) == 25.0
    assert data["crop_center_px"].shape == (20, 2) and data["frame_hw"].tolist() == [512, 512]
    assert sorted(p.name for p in out.iterdir()) == ["DONE", "liveportrait_d0.npz", "summary.json"]
