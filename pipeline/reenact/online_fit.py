"""Per-frame 3DMM fit of a driving stream: the driver's identity fixed, camera and expression solved for
each new frame, warm-started from the previous one (the streaming counterpart of Eq. 2).

The batch fit (``pipeline.preprocess.fit_3dmm.fit_video``) needs the whole video; a stream has only the
frames so far. So the driver's identity is fitted once, on its first frames (``fit_video`` on them), and
then every frame costs two small solves: the camera by Gauss-Newton from the previous frame's
(``fit_camera.refine_camera_gauss_newton``), and the expression as a bounded linear least-squares problem
with the camera fixed, with Eq. (2)'s expression prior and, in place of its second temporal differences
(which need future frames), a pull towards the previous frame's expression.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import lsq_linear

from model.face3d.camera import SCALE, TX, TY, camera_rotation_numpy
from model.face3d.morphable_model import MorphableModel
from pipeline.preprocess.fit_3dmm import OUTER_EYE_CORNERS, FitConfig, fit_video, uses_jaw_contour
from pipeline.preprocess.fit_camera import refine_camera_gauss_newton
from pipeline.preprocess.fit_shape import LandmarkBasis, single_threaded_blas


@dataclass(frozen=True)
class OnlineFitConfig:
    """warmup_frames: frames whose batch fit gives the driver's identity.
    w_previous: weight of |exp_t - exp_{t-1}|^2 (per frame, in the units of Eq. 2's per-frame terms).
    rounds: camera / expression alternations per frame.
    """

    warmup_frames: int = 30
    w_previous: float = 5e-3
    rounds: int = 2


class OnlineFitter:
    """fit(landmarks_px (68, 2) crop pixels) -> (expression (N_exp,), camera (7,)) float64, one frame at a
    time; ``start(landmarks_px (T, 68, 2))`` fits the identity (and the warm-up frames) first."""

    def __init__(
        self, model: MorphableModel, fit: FitConfig | None = None, online: OnlineFitConfig = OnlineFitConfig()
    ):
        fit = fit or FitConfig()
        self.model, self.fit_config, self.config = model, fit, online
        self.basis = LandmarkBasis.from_model(model, uses_jaw_contour(fit))
        self.bounds = model.expression_bounds.astype(np.float64)
        self.identity: np.ndarray | None = None
        self.expression: np.ndarray | None = None
        self.camera: np.ndarray | None = None

    def start(self, landmarks_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The batch fit of the first frames: fixes the identity; -> their expressions (T, N_exp) and
        cameras (T, 7), the state the stream continues from."""
        result = fit_video(self.model, landmarks_px, config=self.fit_config)
        self.identity = np.array(result.identity)
        self.expression, self.camera = np.array(result.expression[-1]), np.array(result.camera[-1])
        return np.array(result.expression), np.array(result.camera)

    def fit(self, landmarks_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert self.identity is not None, "call start() with the first frames first"
        # Small matrices: BLAS threads only add overhead (as in the batch fit).
        with single_threaded_blas():
            return self._fit(landmarks_px)

    def _fit(self, landmarks_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        landmarks = np.asarray(landmarks_px, np.float64)[None]  # (1, 68, 2)
        weights = np.all(np.isfinite(landmarks), -1).astype(np.float64)  # (1, 68)
        landmarks = np.nan_to_num(landmarks)
        a, b = OUTER_EYE_CORNERS
        iod = max(float(np.linalg.norm(landmarks[0, a] - landmarks[0, b])), 1e-6)
        expression, camera = self.expression.copy(), self.camera[None].copy()
        for _ in range(self.config.rounds):
            candidates = self.basis.candidate_points(self.identity, expression[None])
            choice = self.basis.choose(candidates, camera)
            points = self.basis.chosen_points(candidates, choice)
            camera = refine_camera_gauss_newton(
                camera, points, landmarks, weights, self.fit_config.camera_gauss_newton_steps
            )
            choice = self.basis.choose(candidates, camera)
            expression = self._solve_expression(landmarks[0], weights[0], camera[0], choice[0], iod)
        self.expression, self.camera = expression, camera[0]
        return expression.copy(), camera[0].copy()

    def _solve_expression(
        self, landmarks: np.ndarray, weights: np.ndarray, camera: np.ndarray, choice: np.ndarray, iod: float
    ) -> np.ndarray:
        """min_e sum_k w_k |s P R (m_k + U_k id + W_k e) + t - l_k|^2 / d^2 + w_exp |e|^2
        + w_previous |e - e_prev|^2 over the expression bounds (camera and contour choice fixed)."""
        cfg = self.fit_config
        ids = np.arange(len(choice))
        mean = self.basis.mean[ids, choice]  # (68, 3)
        shape = mean + np.einsum("kdi,i->kd", self.basis.identity[ids, choice], self.identity)
        basis = self.basis.expression[ids, choice]  # (68, 3, N_exp)
        rows = camera_rotation_numpy(camera)[:2] * camera[SCALE] * np.array([1.0, -1.0])[:, None]  # (2, 3)
        projected = np.einsum("ad,kdn->kan", rows, basis).reshape(-1, basis.shape[-1])  # (136, N_exp)
        offset = (shape @ rows.T + camera[[TX, TY]]).reshape(-1)  # (136,)
        sqrt_w = np.sqrt(cfg.w_landmark * np.repeat(weights, 2)) / iod
        target = landmarks.reshape(-1) - offset
        n = basis.shape[-1]
        w_prior, w_previous = np.sqrt(cfg.w_expression), np.sqrt(self.config.w_previous)
        lhs = np.concatenate([projected * sqrt_w[:, None], w_prior * np.eye(n), w_previous * np.eye(n)])
        rhs = np.concatenate([target * sqrt_w, np.zeros(n), w_previous * self.expression])
        return lsq_linear(lhs, rhs, bounds=(self.bounds[:, 0], self.bounds[:, 1]), method="bvls").x
