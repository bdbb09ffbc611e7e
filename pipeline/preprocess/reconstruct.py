"""3D face reconstruction of one video (paper section 3.1): decode -> track -> landmarks -> 3DMM fit.

Chains the preprocessing job's own stages (``pipeline.preprocess.landmarks.landmarks_for_video``: one
decoding pass with MTCNN face tracking and square crops, then 68 landmarks) with the per-video fit of
Eq. (2) (``pipeline.preprocess.fit_3dmm.fit_video``) in crop pixel coordinates, over the video as one face
track. A pure function without Ray (``jobs/reconstruct.py`` is its command line); bad inputs raise the
domain errors of ``pipeline/errors.py`` with their reason codes (``no_face``, ``multiple_faces``,
``too_short``, ``track_jump``, ``fit_diverged``, ...).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from model.face3d.loader import MorphableModelConfig
from model.face3d.morphable_model import MorphableModel
from pipeline.preprocess.decode import DecodeConfig
from pipeline.preprocess.face_track import FaceTrackConfig
from pipeline.preprocess.fit_3dmm import (
    LANDMARK_REGIONS,
    OUTER_EYE_CORNERS,
    FitConfig,
    FitResult,
    fit_config_for,
    fit_video,
)
from pipeline.preprocess.landmarks import (
    LandmarkConfig,
    VideoLandmarks,
    landmark_weights,
    landmarks_for_video,
)


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    """Every stage's settings for reconstructing one video."""

    decode: DecodeConfig = DecodeConfig()
    track: FaceTrackConfig = FaceTrackConfig()
    landmarks: LandmarkConfig = LandmarkConfig()
    fit: FitConfig = FitConfig()
    model: MorphableModelConfig = MorphableModelConfig()


@dataclasses.dataclass(frozen=True, eq=False)
class Reconstruction:
    """Landmarks (crop pixels, with the face track and kept frame indices) and the fit of one video.

    ``fit.expression[i]`` and ``fit.camera[i]`` belong to frame ``landmarks.frame_index[i]``; the camera
    maps model space to crop pixels (``landmarks.track.crop_to_frame`` maps crop pixels to the frame).
    """

    landmarks: VideoLandmarks
    fit: FitResult
    seconds: dict[str, float]

    def error_pct_iod(self) -> dict[str, float]:
        """Mean fitted-vs-detected landmark distance in % of each frame's outer-eye-corner distance,
        overall ("all") and per face region."""
        observed = np.asarray(self.landmarks.landmarks_px, np.float64)
        a, b = OUTER_EYE_CORNERS
        iod = np.linalg.norm(observed[:, a] - observed[:, b], axis=-1)
        dist = np.linalg.norm(self.fit.residuals_px, axis=-1) / iod[:, None] * 100.0  # (T, 68)
        out = {"all": float(dist.mean())}
        out.update({name: float(dist[:, list(ids)].mean()) for name, ids in LANDMARK_REGIONS.items()})
        return out


def reconstruct_video(
    path: str | Path,
    model: MorphableModel,
    config: ReconstructConfig = ReconstructConfig(),
    keep_crops: bool = False,
) -> Reconstruction:
    """Face track, landmarks and 3DMM fit of every kept frame of a video (or a still image, T = 1).

    Raises VideoRejected subclasses (UnreadableVideo, TooShort, NoFace, MultipleFaces, FaceTooSmall,
    TrackLost for a track cut at a jump or a long gap, FitDiverged) for inputs that cannot be
    reconstructed. ``keep_crops`` keeps the face crops in ``landmarks.crops`` for callers that show them.
    """
    start = time.perf_counter()
    landmarks = landmarks_for_video(path, config.decode, config.track, config.landmarks, keep_crops)
    tracked = time.perf_counter()
    fit = fit_video(
        model,
        np.asarray(landmarks.landmarks_px, np.float64),
        weights=landmark_weights(landmarks.confidence, config.landmarks),
        config=fit_config_for(config.fit, config.landmarks.backend),
    )
    done = time.perf_counter()
    return Reconstruction(landmarks, fit, {"landmarks_s": tracked - start, "fit_s": done - tracked})
