"""Per-video 3DMM fit to 68 tracked landmarks (paper section 3.1, Eq. 2): the per-video loop.

    Eq. (2): E = w_l E_l + w_pr E_pr + w_sm E_sm

- ``E_l``: landmark reprojection error of the scaled orthographic camera of every frame
  (``model.face3d.camera``), in units of the video's inter-ocular distance ``d`` (median over frames
  of the distance between outer eye corners 36 and 45) and averaged over frames:
  ``E_l = 1/T sum_t sum_k v_tk |x_tk(id, exp_t, cam_t) - l_tk|^2 / d^2`` with visibility ``v_tk`` in [0, 1].
- ``E_pr``: quadratic prior ``w_id |id|^2 + w_asym id^T G id + w_exp 1/T sum_t |exp_t|^2`` (identity at
  unit variance, its left-right asymmetry (``fit_shape.identity_asymmetry_gram``), ICT blendshape
  weights towards neutral).
- ``E_sm``: ``1/T sum_t |exp_{t-1} - 2 exp_t + exp_{t+1}|^2``, second temporal differences; extended
  here (``pose_smooth_scale``, 0 = the paper's per-frame cameras) by the same term on the unitless pose
  ``q = (pitch, yaw, roll, tx / d, ty / d, log scale)``, which the camera step then solves for jointly.

Every term is a per-frame average, so the weights do not depend on the video's length and the identity
prior acts like one frame's worth of evidence per frame (identity estimates from halves of a clip are
comparable to the whole clip's). Box constraints: identity in ``+-identity_bound_std``, expression in
``model.expression_bounds``.

The fit alternates (``FitConfig.iterations`` rounds) between the cameras (``fit_camera``: a linear
affine estimate and per-frame Gauss-Newton to start with, then Gauss-Newton on all frames jointly under
the pose smoothness term) and the shape (``fit_shape``: with cameras fixed the energy is a linear
least-squares problem in (identity, expression) with box bounds, solved by one of two solvers that reach
the same minimum: the generic reference ``fit_reference_lsq`` and the structure-exploiting
``fit_structured``). The jawline's silhouette correspondence and the asymmetry prior are explained in
``fit_shape``.

Imports point one way: this module uses ``fit_camera`` and the solvers, which use ``fit_shape``; the
camera conventions (rotation, projection) are ``model.face3d.camera``'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import numpy as np

from model.face3d.camera import project_xy_numpy
from model.face3d.morphable_model import N_LANDMARKS, MorphableModel
from pipeline.errors import FitDiverged, TooShort
from pipeline.preprocess.fit_camera import (
    estimate_camera_affine,
    pose_smoothness,
    refine_camera_gauss_newton,
    smooth_cameras_gauss_newton,
)
from pipeline.preprocess.fit_reference_lsq import fit_shape_bounded_lsq
from pipeline.preprocess.fit_shape import (
    LandmarkBasis,
    ShapeProblem,
    build_shape_problem,
    identity_asymmetry_gram,
    single_threaded_blas,
)
from pipeline.preprocess.fit_structured import fit_shape_admm_structured

# Outer eye corners (iBUG 68 markup) defining the inter-ocular distance.
OUTER_EYE_CORNERS = (36, 45)
# Face regions of the iBUG 68 markup, for per-region error reports.
LANDMARK_REGIONS = {
    "jaw": tuple(range(0, 17)),
    "brows": tuple(range(17, 27)),
    "nose": tuple(range(27, 36)),
    "eyes": tuple(range(36, 48)),
    "mouth": tuple(range(48, 68)),
}


@dataclass(frozen=True)
class FitConfig:
    """Weights and schedule of the per-video fit (Eq. 2); weights are for per-frame-averaged terms.

    The defaults were chosen with benchmarks/fit_quality.py on the shared clips (landmark error, identity
    magnitude, jitter, identity consistency between a clip's halves); docs/preprocessing.md ("The 3DMM
    fit") has the numbers behind each choice.
    """

    solver: Literal["structured", "reference_lsq"] = "structured"
    w_landmark: float = 1.0
    # The identity prior is as weak as keeps the identity plausible for N(0, I) coefficients (RMS near 1
    # std) while every shared clip stays within 2% landmark error; a stronger one costs landmark error.
    w_identity: float = 1e-4  # prior on identity coefficients (unit variance)
    w_expression: float = 1e-3  # prior on blendshape weights
    w_smooth: float = 5e-3  # second temporal differences of expression (and of pose, scaled below)
    # Weight of the pose's second differences (radians, translation / d, log scale) relative to the
    # expression's inside E_sm; 0 leaves the cameras per frame as in the paper's Eq. (2). Trades a little
    # landmark error for much less pose jitter, which the rendered conditioning images show as shake.
    pose_smooth_scale: float = 300.0
    # Prior on the identity's left-right asymmetry, per cm^2 of mean squared antisymmetric displacement of
    # the surface (fit_shape.identity_asymmetry_gram, which says why); 0 = the PCA prior alone.
    w_asymmetry: float = 1.0
    identity_bound_std: float = 3.0  # box |id_k| <= this many standard deviations
    # Camera <-> shape rounds, all of them run. The alternation converges slowly (each round still lowers
    # the error a little), so the number of rounds is the trade of fit time against landmark error.
    iterations: int = 7
    camera_gauss_newton_steps: int = 4
    # FitResult.converged: the last round moved the model's landmarks by less than this fraction of d on
    # average, so further rounds would change the fit by far less than its landmark error (about 1.5% of
    # d) and the detector's noise; a fit cut short or still sliding (a hard track) stays above it.
    converged_move_iod: float = 1e-3
    # Silhouette correspondence for landmarks 0-7 and 9-16: right for detectors whose jawline is the visible
    # outline (dlib, FAN), wrong for the face mesh, whose points are fixed on the surface. None follows the
    # landmark backend (``fit_config_for``); a fit given None uses the silhouette.
    jaw_contour: bool | None = None
    jaw_weight: float = 1.0  # weight of the jawline landmarks 0-16 relative to the inner-face ones
    max_mean_error_iod: float = 0.25  # a fit worse than this (fraction of d) raises FitDiverged


SILHOUETTE_JAW_BACKENDS = ("dlib", "fan")  # landmark backends whose jawline follows the face's outline


def fit_config_for(config: FitConfig, landmark_backend: str) -> FitConfig:
    """``config`` for landmarks from ``landmark_backend``: an unset ``jaw_contour`` becomes True for dlib and
    FAN and False for the face mesh (fixed surface points, docs/preprocessing.md)."""
    if config.jaw_contour is not None:
        return config
    return dataclasses.replace(config, jaw_contour=landmark_backend in SILHOUETTE_JAW_BACKENDS)


def uses_jaw_contour(config: FitConfig) -> bool:
    return config.jaw_contour is not False


@dataclass(frozen=True, eq=False)
class FitResult:
    """The fit of one video (arrays read-only).

    identity (N_id,) float64; expression (T, N_exp) float64 in the model's bounds; camera (T, 7) float64
    (pitch, yaw, roll, tx, ty, tz=0, scale; see model.face3d.camera); landmark_vertex_ids (T, 68) int64 (the
    vertex used per landmark after the jaw contour choice); residuals_px (T, 68, 2) float64 = projected
    model landmark - observed landmark, pixels; iod_px: the normaliser d; energy terms are the weighted
    terms of Eq. (2) at the returned parameters; iterations: camera <-> shape rounds run;
    solver_iterations: the shape solver's iterations, summed over rounds; last_move_iod: mean distance
    the model's 68 landmarks (standard vertices, projected) moved in the last round (from the start for
    one round), fraction of d; converged: last_move_iod < ``FitConfig.converged_move_iod`` (False: more
    ``iterations`` would still move the fit noticeably).
    """

    identity: np.ndarray
    expression: np.ndarray
    camera: np.ndarray
    landmark_vertex_ids: np.ndarray
    residuals_px: np.ndarray
    iod_px: float
    energy: float
    energy_landmark: float
    energy_prior: float
    energy_smooth: float
    iterations: int
    solver_iterations: int
    last_move_iod: float
    converged: bool

    def mean_error_iod(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Mean landmark distance per frame as a fraction of d: (T,) float64 (weights (T, 68) optional)."""
        dist = np.linalg.norm(self.residuals_px, axis=-1)
        w = np.ones_like(dist) if weights is None else np.asarray(weights, np.float64)
        return (dist * w).sum(-1) / np.maximum(w.sum(-1), 1e-12) / self.iod_px


def interocular_px(landmarks_px: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The normaliser d: median over frames of |l_36 - l_45|; landmarks_px (T, 68, 2)."""
    a, b = OUTER_EYE_CORNERS
    dist = np.linalg.norm(landmarks_px[:, a] - landmarks_px[:, b], axis=-1)
    if weights is not None:
        dist = dist[(weights[:, a] > 0) & (weights[:, b] > 0)]
    dist = dist[np.isfinite(dist)]
    if dist.size == 0 or np.median(dist) <= 0:
        raise FitDiverged("no frame with both outer eye corners visible; cannot normalise the fit")
    return float(np.median(dist))


def solve_shape(
    problem: ShapeProblem, identity: np.ndarray, expression: np.ndarray, solver: str, warm_start=None
):
    """Dispatches to a solver: -> (identity (N_id,), expression (T, N_exp), solver iterations, the
    solver's state to warm-start its next call on a similar problem: ``warm_start``)."""
    if solver == "structured":
        return fit_shape_admm_structured(problem, identity, expression, multipliers=warm_start)
    if solver == "reference_lsq":
        return (*fit_shape_bounded_lsq(problem, identity, expression), None)
    raise ValueError(f"unknown solver {solver!r}; use 'structured' or 'reference_lsq'")


# ---------------------------------------------------------------------------------------------------
# The per-video fit.


def fit_video(
    model: MorphableModel,
    landmarks_px: np.ndarray,
    weights: np.ndarray | None = None,
    config: FitConfig = FitConfig(),
) -> FitResult:
    """Fits one identity, per-frame expressions and cameras to a landmark track (Eq. 2).

    landmarks_px (T, 68, 2) float, image pixels (model.face3d.camera conventions; NaN = missing);
    weights (T, 68) in [0, 1] (0 = occluded or missing; default 1 where finite). Inputs are not modified.
    Raises TooShort for T < 1 and FitDiverged when the fit is non-finite or its mean landmark error
    exceeds ``config.max_mean_error_iod``. Runs on one core: every product here is a batch of small
    per-frame matrices, where BLAS threads only add overhead.
    """
    if config.iterations < 1:
        raise ValueError(f"FitConfig.iterations must be at least 1, got {config.iterations}")
    with single_threaded_blas():
        return _fit_video(model, landmarks_px, weights, config)


def _fit_video(
    model: MorphableModel, landmarks_px: np.ndarray, weights: np.ndarray | None, config: FitConfig
) -> FitResult:
    landmarks_px = np.array(landmarks_px, dtype=np.float64, copy=True)
    if landmarks_px.ndim != 3 or landmarks_px.shape[1:] != (N_LANDMARKS, 2):
        raise ValueError(f"landmarks_px must be (T, {N_LANDMARKS}, 2), got {landmarks_px.shape}")
    n_frames = landmarks_px.shape[0]
    if n_frames < 1:
        raise TooShort("no frames to fit")
    finite = np.all(np.isfinite(landmarks_px), -1)
    weights = finite.astype(np.float64) if weights is None else np.where(finite, weights, 0.0).astype(float)
    if weights.shape != (n_frames, N_LANDMARKS) or np.any(weights < 0):
        raise ValueError(f"weights must be (T, 68) non-negative, got shape {weights.shape}")
    landmarks_px = np.nan_to_num(landmarks_px)
    iod = interocular_px(landmarks_px, weights)
    weights = weights.copy()
    weights[:, list(LANDMARK_REGIONS["jaw"])] *= config.jaw_weight

    basis = LandmarkBasis.from_model(model, uses_jaw_contour(config))
    identity_bounds = np.tile([-config.identity_bound_std, config.identity_bound_std], (model.n_identity, 1))
    expression_bounds = model.expression_bounds.astype(np.float64)
    asymmetry = config.w_asymmetry * identity_asymmetry_gram(model) if config.w_asymmetry > 0 else None
    identity = np.zeros(model.n_identity)
    expression = np.clip(np.zeros((n_frames, model.n_expression)), *expression_bounds.T)

    candidates = basis.candidate_points(identity, expression)
    camera = estimate_camera_affine(candidates[:, :, 0], landmarks_px, weights)
    # A frame without landmark weight (dropped as unreliable) has no camera of its own: it starts from the
    # nearest weighted frame's, and the pose smoothness carries it (an affine fit to nothing has scale 0).
    weighted = np.flatnonzero(weights.sum(1) > 0)
    if len(weighted) == 0:
        raise FitDiverged("no frame has landmark weight: every frame was dropped as unreliable")
    if len(weighted) < n_frames:
        frames = np.arange(n_frames)
        right = np.clip(np.searchsorted(weighted, frames), 0, len(weighted) - 1)
        left = np.clip(right - 1, 0, len(weighted) - 1)
        closer = np.where(np.abs(weighted[left] - frames) <= np.abs(weighted[right] - frames), left, right)
        camera = camera[weighted[closer]]
    # The model's landmarks in the image, at their standard vertices: parameters moving, not the jaw
    # contour's choice of vertices switching, is what the convergence measure counts.
    model_px = project_xy_numpy(candidates[:, :, 0], camera)
    solver_iterations, warm_start = 0, None
    w_pose = config.w_smooth * config.pose_smooth_scale
    for rounds in range(1, config.iterations + 1):
        # Camera step (shape fixed), then the contour choice under the new pose.
        choice = basis.choose(candidates, camera)
        points = basis.chosen_points(candidates, choice)
        # Per-frame Gauss-Newton from the affine start; later rounds start from a fitted pose, where the
        # joint smoothing step alone reaches the same cameras.
        if rounds == 1 or w_pose <= 0 or n_frames < 3:
            camera = refine_camera_gauss_newton(
                camera, points, landmarks_px, weights, config.camera_gauss_newton_steps
            )
        camera = smooth_cameras_gauss_newton(
            camera,
            points,
            landmarks_px,
            weights * config.w_landmark,
            iod,
            w_pose,
            config.camera_gauss_newton_steps,
        )
        choice = basis.choose(candidates, camera)
        # Shape step (cameras fixed): bounded linear least squares.
        problem = build_shape_problem(
            basis,
            choice,
            camera,
            landmarks_px,
            weights,
            iod,
            config,
            identity_bounds,
            expression_bounds,
            asymmetry,
        )
        identity, expression, its, warm_start = solve_shape(
            problem, identity, expression, config.solver, warm_start
        )
        solver_iterations += its
        candidates = basis.candidate_points(identity, expression)
        previous_px, model_px = model_px, project_xy_numpy(candidates[:, :, 0], camera)

    # How far the last round moved the fit: the convergence measure (see FitConfig.converged_move_iod).
    last_move_iod = float(np.linalg.norm(model_px - previous_px, axis=-1).mean() / iod)
    fitted_px = project_xy_numpy(basis.chosen_points(candidates, choice), camera)
    terms = problem.energy_terms(identity, expression)
    terms["smooth"] += w_pose / n_frames * pose_smoothness(camera, iod)
    result = FitResult(
        identity=_frozen(identity),
        expression=_frozen(expression),
        camera=_frozen(camera),
        landmark_vertex_ids=_frozen(basis.vertex_ids(choice)),
        residuals_px=_frozen(fitted_px - landmarks_px),
        iod_px=iod,
        energy=sum(terms.values()),
        energy_landmark=terms["landmark"],
        energy_prior=terms["prior"],
        energy_smooth=terms["smooth"],
        iterations=rounds,
        solver_iterations=solver_iterations,
        last_move_iod=last_move_iod,
        converged=bool(last_move_iod < config.converged_move_iod),
    )
    error = result.mean_error_iod(weights)
    if not np.all(np.isfinite(result.camera)) or not np.isfinite(result.energy):
        raise FitDiverged("3DMM fit produced non-finite parameters")
    if np.mean(error) > config.max_mean_error_iod:
        raise FitDiverged(
            f"3DMM fit mean landmark error {100 * np.mean(error):.1f}% of the inter-ocular distance "
            f"exceeds {100 * config.max_mean_error_iod:.0f}%"
        )
    return result


def _frozen(x: np.ndarray) -> np.ndarray:
    x = np.array(x, copy=True)
    x.setflags(write=False)
    return x


__all__ = [
    "LANDMARK_REGIONS",
    "OUTER_EYE_CORNERS",
    "FitConfig",
    "FitResult",
    "fit_video",
    "interocular_px",
    "solve_shape",
]
