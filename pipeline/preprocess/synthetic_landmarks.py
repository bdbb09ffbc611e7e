"""Landmark tracks made from known 3DMM parameters, for recovery tests and fit benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.face3d.camera import CAMERA_DIM, PITCH, ROLL, SCALE, TX, TY, YAW, project_xy_numpy
from model.face3d.morphable_model import N_LANDMARKS, MorphableModel
from pipeline.preprocess.fit_3dmm import OUTER_EYE_CORNERS
from pipeline.preprocess.fit_shape import LandmarkBasis


@dataclass(frozen=True, eq=False)
class SyntheticTrack:
    """Landmarks made from known parameters (recovery tests, benchmarks).

    landmarks_px (T, 68, 2) with noise, weights (T, 68) (0 = occluded), and the true identity (N_id,),
    expression (T, N_exp), camera (T, 7) and clean landmarks (T, 68, 2).
    """

    landmarks_px: np.ndarray
    weights: np.ndarray
    identity: np.ndarray
    expression: np.ndarray
    camera: np.ndarray
    clean_px: np.ndarray


def synthetic_track(
    model: MorphableModel,
    n_frames: int,
    seed: int = 0,
    max_yaw_deg: float = 45.0,
    noise_px: float = 0.5,
    occluded_per_frame: int = 3,
    identity_std: float = 0.8,
    iod_px: float = 60.0,
) -> SyntheticTrack:
    """A talking-head-like track: smooth sparse expressions in bounds, yaw sweeping +-max_yaw_deg, small
    pitch and roll, a 256 px crop whose inter-ocular distance is about ``iod_px``; Gaussian pixel noise of
    std ``noise_px``; ``occluded_per_frame`` random landmarks per frame get weight 0 and a wrong position."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_frames)
    identity = np.clip(identity_std * rng.standard_normal(model.n_identity), -2.5, 2.5)
    # Smooth expressions: a few active blendshapes per clip, slowly varying, inside [low, high].
    lo, hi = model.expression_bounds.T.astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, (model.n_expression, 2))
    freq = rng.uniform(0.01, 0.08, (model.n_expression, 2))
    active = rng.random(model.n_expression) < 0.4
    wave = 0.5 * np.sin(freq[:, 0] * t[:, None] + phase[:, 0]) + 0.3 * np.sin(
        freq[:, 1] * t[:, None] + phase[:, 1]
    )
    expression = np.clip(wave, 0.0, None) * active
    expression = np.clip(lo + (hi - lo) * expression, lo, hi)
    yaw = np.deg2rad(max_yaw_deg) * np.sin(2 * np.pi * t / max(n_frames, 2) + rng.uniform(0, 2 * np.pi))
    pitch = np.deg2rad(8.0) * np.sin(0.05 * t + rng.uniform(0, 6))
    roll = np.deg2rad(5.0) * np.sin(0.03 * t + rng.uniform(0, 6))
    eye_cm = np.linalg.norm(np.subtract(*model.mean[model.landmarks[list(OUTER_EYE_CORNERS)]]))
    camera = np.zeros((n_frames, CAMERA_DIM))
    camera[:, PITCH], camera[:, YAW], camera[:, ROLL] = pitch, yaw, roll
    camera[:, TX] = 128 + 3 * np.sin(0.02 * t)
    camera[:, TY] = 128 + 3 * np.cos(0.02 * t)
    camera[:, SCALE] = iod_px / eye_cm * (1 + 0.05 * np.sin(0.01 * t))
    basis = LandmarkBasis.from_model(model)
    candidates = basis.candidate_points(identity, expression)
    choice = basis.choose(candidates, camera)
    clean = project_xy_numpy(basis.chosen_points(candidates, choice), camera)
    landmarks = clean + noise_px * rng.standard_normal(clean.shape)
    weights = np.ones((n_frames, N_LANDMARKS))
    for i in range(n_frames):
        hidden = rng.choice(N_LANDMARKS, occluded_per_frame, replace=False)
        weights[i, hidden] = 0.0
        landmarks[i, hidden] += rng.uniform(-20, 20, (occluded_per_frame, 2))
    return SyntheticTrack(landmarks, weights, identity, expression, camera, clean)
