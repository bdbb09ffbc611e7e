"""Video -> track -> landmarks -> 3DMM fit on the shared real clips (part A's stages + the Eq. 2 fit)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from pipeline.errors import NoFace, TooShort, VideoRejected
from pipeline.preprocess.fit_3dmm import fit_config_for, fit_video
from pipeline.preprocess.fit_shape import second_difference
from pipeline.preprocess.reconstruct import ReconstructConfig, reconstruct_video

pytestmark = pytest.mark.shared_data


@pytest.mark.slow
def test_reconstruct_one_clip(ict_model, shared_videos):
    result = reconstruct_video(shared_videos / "liveportrait_d0.mp4", ict_model)
    n = len(result.landmarks.frame_index)
    assert n >= 70  # every kept frame of the 78-frame clip has a face track
    assert result.fit.expression.shape == (n, 53) and result.fit.camera.shape == (n, 7)
    error = result.error_pct_iod()
    assert error["all"] <= 2.0, error
    assert set(error) == {"all", "jaw", "brows", "nose", "eyes", "mouth"}
    # Plausible coefficients, not bought with extreme identities.
    assert np.sqrt(np.mean(result.fit.identity**2)) < 1.5
    assert np.all((result.fit.expression >= 0) & (result.fit.expression <= 1))


@pytest.mark.slow
def test_reconstruct_photo_and_bad_inputs(ict_model, shared_images, tmp_path):
    photo = reconstruct_video(shared_images / "liveportrait_d8.jpg", ict_model)
    assert photo.fit.expression.shape == (1, 53)
    assert photo.error_pct_iod()["all"] <= 3.0
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), np.full((256, 256, 3), 128, np.uint8))
    with pytest.raises(NoFace):
        reconstruct_video(grey, ict_model)
    # A 2-frame video is too short.
    short = tmp_path / "short.mp4"
    writer = cv2.VideoWriter(str(short), cv2.VideoWriter_fourcc(*"mp4v"), 25, (128, 128))
    for _ in range(2):
        writer.write(np.full((128, 128, 3), 90, np.uint8))
    writer.release()
    with pytest.raises(VideoRejected) as err:
        reconstruct_video(short, ict_model)
    assert isinstance(err.value, TooShort) or err.value.reason in ("too_short", "unreadable")


@pytest.mark.slow
def test_fit_quality_on_every_shared_clip(ict_model, shared_videos):
    """Issue 3's targets on all shared clips: <= 2% landmark error, smoothing lowers jitter at <= 10%
    more error, and a clip's two halves give closer identities than any other clip's (all but 3 of 14
    with the default face-mesh landmarks)."""
    config = ReconstructConfig()
    clips = sorted(shared_videos.glob("*.mp4"))
    assert len(clips) >= 10
    halves, report = {}, {}
    for path in clips:
        rec = reconstruct_video(path, ict_model, config)
        landmarks = np.asarray(rec.landmarks.landmarks_px, np.float64)
        fit_config = fit_config_for(config.fit, config.landmarks.backend)
        rough = fit_video(ict_model, landmarks, config=dataclasses.replace(fit_config, w_smooth=0.0))
        error = rec.error_pct_iod()["all"]
        residual_rough = np.linalg.norm(rough.residuals_px, axis=-1)
        iod = np.linalg.norm(landmarks[:, 36] - landmarks[:, 45], axis=-1)
        error_rough = float((residual_rough / iod[:, None]).mean() * 100)
        jitter = np.abs(second_difference(rec.fit.expression)).mean()
        jitter_rough = np.abs(second_difference(rough.expression)).mean()
        angle_jitter = np.abs(second_difference(rec.fit.camera[:, :3])).mean()
        angle_jitter_rough = np.abs(second_difference(rough.camera[:, :3])).mean()
        assert angle_jitter < 0.7 * angle_jitter_rough, (path.stem, angle_jitter, angle_jitter_rough)
        half = len(landmarks) // 2
        halves[path.stem] = [
            fit_video(ict_model, part, config=fit_config).identity for part in np.split(landmarks, [half])
        ]
        report[path.stem] = (error, error_rough, jitter, jitter_rough)
    for name, (error, error_rough, jitter, jitter_rough) in report.items():
        assert error <= 2.0, (name, error)
        assert error <= 1.1 * error_rough, (name, error, error_rough)
        assert jitter < 0.6 * jitter_rough, (name, jitter, jitter_rough)
    consistent = {}
    for name, (first, second) in halves.items():
        own = np.linalg.norm(first - second)
        others = [v for other, pair in halves.items() if other != name for v in pair]
        nearest = min(min(np.linalg.norm(first - o), np.linalg.norm(second - o)) for o in others)
        consistent[name] = (own < nearest, own, nearest)
    # With dlib's points every clip's halves agree (14 of 14); the face mesh's shapes lean towards an
    # average face (identity norm 6.5 against 8.3), so 11 of 14 do (docs/preprocessing.md).
    failures = {k: v for k, v in consistent.items() if not v[0]}
    assert len(failures) <= 3, failures
