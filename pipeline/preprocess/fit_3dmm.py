"""Per-video 3DMM fit to 68 tracked landmarks (paper section 3.1, Eq. 2).

    Eq. (2): E = w_l E_l + w_pr E_pr + w_sm E_sm

- ``E_l``: landmark reprojection error of the scaled orthographic camera of every frame
  (``model.face3d.camera.project``), in units of the video's inter-ocular distance ``d`` (median over frames
  of the distance between outer eye corners 36 and 45) and averaged over frames:
  ``E_l = 1/T sum_t sum_k v_tk |x_tk(id, exp_t, cam_t) - l_tk|^2 / d^2`` with visibility ``v_tk`` in [0, 1].
- ``E_pr``: quadratic prior ``w_id |id|^2 + w_asym id^T G id + w_exp 1/T sum_t |exp_t|^2`` (identity at
  unit variance, its left-right asymmetry (below), ICT blendshape weights towards neutral).
- ``E_sm``: ``1/T sum_t |exp_{t-1} - 2 exp_t + exp_{t+1}|^2``, second temporal differences; extended
  here (``pose_smooth_scale``, 0 = the paper's per-frame cameras) by the same term on the unitless pose
  ``q = (pitch, yaw, roll, tx / d, ty / d, log scale)``, which the camera step then solves for jointly.

Every term is a per-frame average, so the weights do not depend on the video's length and the identity
prior acts like one frame's worth of evidence per frame (identity estimates from halves of a clip are
comparable to the whole clip's). Box constraints: identity in ``+-identity_bound_std``, expression in
``model.expression_bounds``.

The fit alternates (``FitConfig.iterations`` rounds) between the cameras (a linear affine estimate
projected to a scaled rotation and per-frame Gauss-Newton on the exact reprojection error to start with,
then Gauss-Newton on all frames jointly under the pose smoothness term) and the shape.
With cameras fixed the energy is a linear least-squares problem in (identity, expression) with box bounds,
``ShapeProblem``, solved by one of two solvers that reach the same minimum: the generic reference
``pipeline.preprocess.fit_reference_lsq`` and the structure-exploiting ``pipeline.preprocess.fit_structured``.

Asymmetry prior: ``id^T G id`` is the mean squared antisymmetric part (cm^2) of the identity's
displacement of the surface (``identity_asymmetry_gram``). A 2D detector's landmarks of a turned head
are biased in a way that depends on the sign of the yaw (plausibly its pull towards a frontal mean
shape, and the perspective the camera model leaves out). Within one head pose that bias cannot be
told apart from a lopsided face, so on a clip (or half clip) turned mostly to one side the PCA prior
alone let the identity absorb it. On the shared clip whose halves turn to opposite sides (mean yaw
-8 and +5 degrees), 74% of the difference between the halves' identities was antisymmetric (5% for
random N(0, I) differences, at most 25% on the other 13 clips), and the halves were further apart
than other people's clips. With ``w_asymmetry = 1`` the halves of every shared clip agree
(benchmarks/fit_quality.py) for +0.04% of the inter-ocular distance in mean landmark error.

Jawline: 2D detectors put landmarks 0-7 and 9-16 on the face's silhouette. Each of those has two
candidate vertices (the model's ``landmarks`` and its ``jaw_right``/``jaw_left`` substitute, further back
on the cheek); per frame the one projecting further outwards (the silhouette under that frame's pose) is
used, so a turned head slides its contour instead of bending the jaw. (A finer silhouette search, points
where mesh edges cross each jaw landmark's horizontal plane up to 4 cm in front of it, changed neither
the landmark error nor the halves' identity agreement on the shared clips, at up to 20 degrees of yaw.)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
from scipy.linalg import solveh_banded
from scipy.spatial import cKDTree

from model.face3d.camera import CAMERA_DIM, PITCH, ROLL, SCALE, TX, TY, euler_to_matrix, matrix_to_euler
from model.face3d.morphable_model import N_LANDMARKS, MorphableModel
from pipeline.errors import FitDiverged, TooShort
from pipeline.preprocess.fit_structured import single_threaded_blas

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
    """Weights and schedule of the per-video fit (Eq. 2); weights are for per-frame-averaged terms."""

    solver: Literal["structured", "reference_lsq"] = "structured"
    w_landmark: float = 1.0
    # Weights chosen on the 14 shared clips (benchmarks/fit_quality.py): every clip <= 2% landmark error
    # with identity RMS 0.7-1.05 std (plausible for N(0, I) coefficients); 2e-4 gave 1.5-2.1%.
    w_identity: float = 1e-4  # prior on identity coefficients (unit variance)
    w_expression: float = 1e-3  # prior on blendshape weights
    w_smooth: float = 5e-3  # second temporal differences of expression (and of pose, scaled below)
    # Weight of the pose's second differences (radians, translation / d, log scale) relative to the
    # expression's inside E_sm; 0 leaves the cameras per frame as in the paper's Eq. (2).
    pose_smooth_scale: float = 300.0  # on the shared clips: pose jitter /3-4, landmark error +0.5%
    # Prior on the identity's left-right asymmetry, per cm^2 of mean squared antisymmetric displacement of
    # the surface (identity_asymmetry_gram): see the module docstring; 0 = the PCA prior alone.
    w_asymmetry: float = 1.0
    identity_bound_std: float = 3.0  # box |id_k| <= this many standard deviations
    # Camera <-> shape alternations. On the 14 shared clips (benchmarks/fit_quality.py), 7 against 10:
    # mean landmark error 1.579% against 1.562% of the inter-ocular distance, max 1.994% against 1.986%,
    # identity consistent on 14/14 either way, for 30% less fit time; 6 reaches a max of 1.999%, 5 2.003%.
    iterations: int = 7
    camera_gauss_newton_steps: int = 4
    tolerance: float = 1e-5  # relative energy decrease under which the alternation has converged
    jaw_contour: bool = True  # silhouette correspondence for landmarks 0-7 and 9-16
    jaw_weight: float = 1.0  # weight of the jawline landmarks 0-16 relative to the inner-face ones
    max_mean_error_iod: float = 0.25  # a fit worse than this (fraction of d) raises FitDiverged


@dataclass(frozen=True, eq=False)
class FitResult:
    """The fit of one video (arrays read-only).

    identity (N_id,) float64; expression (T, N_exp) float64 in the model's bounds; camera (T, 7) float64
    (pitch, yaw, roll, tx, ty, tz=0, scale; see model.face3d.camera); landmark_vertex_ids (T, 68) int64 (the
    vertex used per landmark after the jaw contour choice); residuals_px (T, 68, 2) float64 = projected
    model landmark - observed landmark, pixels; iod_px: the normaliser d; energy terms are the weighted
    terms of Eq. (2) at the returned parameters.
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
    converged: bool

    def mean_error_iod(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Mean landmark distance per frame as a fraction of d: (T,) float64 (weights (T, 68) optional)."""
        dist = np.linalg.norm(self.residuals_px, axis=-1)
        w = np.ones_like(dist) if weights is None else np.asarray(weights, np.float64)
        return (dist * w).sum(-1) / np.maximum(w.sum(-1), 1e-12) / self.iod_px


@dataclass(frozen=True, eq=False)
class ShapeProblem:
    """Eq. (2) with cameras fixed: bounded linear least squares in x = (identity, expression).

        E(id, exp) = sum_t |A_t id + B_t exp_t - y_t|^2 + id^T P id + w_exp sum_t |exp_t|^2
                     + w_sm sum_t |exp_{t-1} - 2 exp_t + exp_{t+1}|^2

    with P = ``identity_precision`` = w_id I + ``identity_asymmetry`` (already weighted; None = 0).

    jac_identity A (T, R, N_id), jac_expression B (T, R, N_exp), target y (T, R) (R = 2 * 68 rows,
    already scaled by sqrt of each row's weight); w_* already include the 1/T of the per-frame average;
    bounds (N, 2) [low, high]. The energy is the full weighted Eq. (2) including the landmark weight.
    """

    jac_identity: np.ndarray
    jac_expression: np.ndarray
    target: np.ndarray
    w_identity: float
    w_expression: float
    w_smooth: float
    identity_bounds: np.ndarray
    expression_bounds: np.ndarray
    identity_asymmetry: np.ndarray | None = None  # (N_id, N_id) weighted asymmetry prior, or none
    # A^T A (N_id, N_id) when the builder has it more cheaply than from jac_identity; None: computed.
    identity_gram: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return self.jac_expression.shape[0]

    @functools.cached_property
    def identity_precision(self) -> np.ndarray:
        """The identity prior's quadratic form (N_id, N_id): w_id I + the asymmetry prior."""
        prior = self.w_identity * np.eye(self.jac_identity.shape[-1])
        return prior if self.identity_asymmetry is None else prior + self.identity_asymmetry

    def energy_terms(self, identity: np.ndarray, expression: np.ndarray) -> dict[str, float]:
        """Weighted terms of Eq. (2): identity (N_id,), expression (T, N_exp) -> landmark, prior, smooth."""
        residual = self.residual(identity, expression)
        d2 = second_difference(expression)
        return {
            "landmark": float(np.sum(residual**2)),
            "prior": float(
                identity @ self.identity_precision @ identity + self.w_expression * np.sum(expression**2)
            ),
            "smooth": float(self.w_smooth * np.sum(d2**2)),
        }

    def energy(self, identity: np.ndarray, expression: np.ndarray) -> float:
        return sum(self.energy_terms(identity, expression).values())

    def residual(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """Weighted landmark residual rows (T, R)."""
        pred = self.jac_identity @ identity + np.matmul(self.jac_expression, expression[..., None])[..., 0]
        return pred - self.target

    def is_feasible(self, identity: np.ndarray, expression: np.ndarray, atol: float = 1e-9) -> bool:
        lo_i, hi_i = self.identity_bounds.T
        lo_e, hi_e = self.expression_bounds.T
        return bool(
            np.all(identity >= lo_i - atol)
            and np.all(identity <= hi_i + atol)
            and np.all(expression >= lo_e - atol)
            and np.all(expression <= hi_e + atol)
        )

    @functools.cached_property
    def gram(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Normal-equation blocks of the landmark term: A^T A (N_id, N_id), B_t^T A (T, N_exp, N_id),
        B_t^T B_t (T, N_exp, N_exp), A^T y (N_id,), B_t^T y_t (T, N_exp)."""
        a, b, y = self.jac_identity, self.jac_expression, self.target
        bt = b.transpose(0, 2, 1)
        g_aa = self.identity_gram
        if g_aa is None:
            g_aa = np.einsum("tri,trj->ij", a, a, optimize=True)
        g_ea = np.matmul(bt, a)
        g_ee = np.matmul(bt, b)
        r_a = np.einsum("tri,tr->i", a, y, optimize=True)
        r_e = np.matmul(bt, y[..., None])[..., 0]
        return g_aa, g_ea, g_ee, r_a, r_e


def second_difference(x: np.ndarray) -> np.ndarray:
    """x (T, ...) -> x[t-1] - 2 x[t] + x[t+1] for t = 1..T-2: (T-2, ...)."""
    return x[:-2] - 2.0 * x[1:-1] + x[2:]


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


# ---------------------------------------------------------------------------------------------------
# Cameras: affine estimate -> scaled orthographic, then Gauss-Newton on the reprojection error.


def _rotation_to_camera(rotation: np.ndarray, tx_ty: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """R (T, 3, 3), (T, 2), (T,) -> camera (T, 7) with tz = 0."""
    camera = np.zeros((rotation.shape[0], CAMERA_DIM))
    camera[:, PITCH : ROLL + 1] = matrix_to_euler(torch.from_numpy(rotation)).numpy()
    camera[:, [TX, TY]] = tx_ty
    camera[:, SCALE] = scale
    return camera


def camera_rotation(camera: np.ndarray) -> np.ndarray:
    """camera (T, 7) -> R (T, 3, 3) float64 (model.face3d.camera's convention)."""
    angles = torch.tensor(np.asarray(camera)[..., PITCH : ROLL + 1], dtype=torch.float64)
    return euler_to_matrix(angles).numpy()


def estimate_camera_affine(points: np.ndarray, landmarks_px: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Linear scaled-orthographic camera per frame (eos' estimate_orthographic_projection_linear).

    A weighted least-squares affine map [x, y]^T = M v + t is projected to the nearest scaled rotation
    (SVD, scale = mean singular value). points (T, K, 3) model units, landmarks_px (T, K, 2), weights
    (T, K) -> camera (T, 7).
    """
    t_frames = points.shape[0]
    homog = np.concatenate([points, np.ones_like(points[..., :1])], -1)  # (T, K, 4)
    wx = homog * weights[..., None]
    normal = np.matmul(wx.transpose(0, 2, 1), homog) + 1e-9 * np.eye(4)
    # Image y points down: flip it so that the 2x3 block is s * (rows 0, 1 of R).
    target = landmarks_px * np.array([1.0, -1.0])
    affine = np.linalg.solve(normal, np.matmul(wx.transpose(0, 2, 1), target))  # (T, 4, 2)
    m = affine[:, :3].transpose(0, 2, 1)  # (T, 2, 3)
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    rows = np.matmul(u, vt)  # (T, 2, 3) orthonormal rows
    rotation = np.concatenate([rows, np.cross(rows[:, 0], rows[:, 1])[:, None]], 1)
    tx_ty = affine[:, 3] * np.array([1.0, -1.0])
    return _rotation_to_camera(rotation, tx_ty, s.mean(-1).reshape(t_frames))


def refine_camera_gauss_newton(
    camera: np.ndarray, points: np.ndarray, landmarks_px: np.ndarray, weights: np.ndarray, steps: int
) -> np.ndarray:
    """Gauss-Newton on sum_k w_k |project(v_k, cam) - l_k|^2 per frame, all frames at once.

    Rotation updates are left-multiplied small rotations exp([w]x) R, so the steps never meet the Euler
    angles' singularities. camera (T, 7), points (T, K, 3), landmarks_px (T, K, 2), weights (T, K) ->
    camera (T, 7); a step is kept per frame only where it lowers that frame's error.
    """
    rotation = camera_rotation(camera)
    txy = camera[:, [TX, TY]].copy()
    scale = camera[:, SCALE].copy()
    flip = np.array([1.0, -1.0])

    def frame_cost(rot, t, s):
        rv = np.matmul(points, rot.transpose(0, 2, 1))
        pred = s[:, None, None] * rv[..., :2] * flip + t[:, None]
        return np.sum(weights * np.sum((pred - landmarks_px) ** 2, -1), -1), rv, pred

    cost, rv, pred = frame_cost(rotation, txy, scale)
    for _ in range(steps):
        res = (pred - landmarks_px).reshape(len(points), -1)  # (T, 2K), x/y interleaved
        # d(R v)/dw = -[R v]_x; only the x and y rows are projected (y flipped).
        x, y, z = rv[..., 0], rv[..., 1], rv[..., 2]
        zero = np.zeros_like(x)
        d_rot_x = np.stack([zero, z, -y], -1)  # d(Rv)_x / dw
        d_rot_y = np.stack([-z, zero, x], -1)  # d(Rv)_y / dw
        s = scale[:, None, None]
        jac = np.zeros(rv.shape[:2] + (2, 6))
        jac[..., 0, :3] = s * d_rot_x
        jac[..., 1, :3] = -s * d_rot_y
        jac[..., 0, 3] = 1.0
        jac[..., 1, 4] = 1.0
        jac[..., 0, 5] = x
        jac[..., 1, 5] = -y
        jac = jac.reshape(len(points), -1, 6)
        w = np.repeat(weights, 2, axis=1)
        jtw = jac.transpose(0, 2, 1) * w[:, None]
        normal = np.matmul(jtw, jac) + 1e-9 * np.eye(6)
        step = -np.linalg.solve(normal, np.matmul(jtw, res[..., None]))[..., 0]
        new_rotation = np.matmul(_rodrigues(step[:, :3]), rotation)
        new_txy, new_scale = txy + step[:, 3:5], scale + step[:, 5]
        new_cost, new_rv, new_pred = frame_cost(new_rotation, new_txy, new_scale)
        better = new_cost <= cost
        rotation[better], txy[better], scale[better] = (
            new_rotation[better],
            new_txy[better],
            new_scale[better],
        )
        cost[better], rv[better], pred[better] = new_cost[better], new_rv[better], new_pred[better]
    return _rotation_to_camera(rotation, txy, scale)


def _pose_params(camera: np.ndarray, iod_px: float) -> np.ndarray:
    """camera (T, 7) -> q (T, 6) = (pitch, yaw, roll, tx / d, ty / d, log scale): unitless pose."""
    return np.concatenate(
        [camera[:, PITCH : ROLL + 1], camera[:, [TX, TY]] / iod_px, np.log(camera[:, SCALE, None])], 1
    )


def _camera_from_pose(q: np.ndarray, iod_px: float) -> np.ndarray:
    camera = np.zeros((len(q), CAMERA_DIM))
    camera[:, PITCH : ROLL + 1] = q[:, :3]
    camera[:, [TX, TY]] = q[:, 3:5] * iod_px
    camera[:, SCALE] = np.exp(q[:, 5])
    return camera


def smooth_cameras_gauss_newton(
    camera: np.ndarray,
    points: np.ndarray,
    landmarks_px: np.ndarray,
    weights: np.ndarray,
    iod_px: float,
    w_pose: float,
    steps: int,
) -> np.ndarray:
    """Cameras of all frames jointly under the pose part of Eq. (2)'s E_sm (cameras per frame otherwise).

    Minimises 1/T sum_t [sum_k w_tk |x_tk - l_tk|^2 / d^2 + w_pose |q_{t-1} - 2 q_t + q_{t+1}|^2] over
    q = (pitch, yaw, roll, tx / d, ty / d, log scale) by Gauss-Newton (Jacobians exact but for forward
    differences of the rotation matrix; the block-pentadiagonal normal system by a banded Cholesky solve)
    with step halving. camera (T, 7), points (T, K, 3),
    landmarks_px (T, K, 2), weights (T, K) -> camera (T, 7).
    """
    n_frames = len(camera)
    if n_frames < 3 or w_pose <= 0:
        return camera
    sqrt_w = np.sqrt(weights / (n_frames * iod_px**2))[..., None]  # (T, K, 1)
    d2 = sp.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(n_frames - 2, n_frames))
    smooth_frames = (w_pose / n_frames) * (d2.T @ d2)  # (T, T) pentadiagonal
    smooth = sp.kron(smooth_frames, sp.identity(6)).tocsr()
    # Upper banded storage of the 6T x 6T normal matrix (half bandwidth 17: frames t and t +- 2 couple);
    # the smoothness part is fixed, the per-frame 6x6 blocks are added every step.
    half_band = 17
    smooth_band = np.zeros((half_band + 1, 6 * n_frames))
    for offset in range(3):
        diagonal = np.repeat(smooth_frames.diagonal(offset), 6)
        smooth_band[half_band - 6 * offset, 6 * offset :] = diagonal
    smooth_band[half_band] += 1e-12
    flip = np.array([1.0, -1.0])

    def residual(q):
        return ((project_points(points, _camera_from_pose(q, iod_px)) - landmarks_px) * sqrt_w).reshape(
            n_frames, -1
        )

    def jacobian(q):
        """d residual / d q (T, 2K, 6): rotation derivatives by forward differences of R, the rest exact."""
        camera_q = _camera_from_pose(q, iod_px)
        rotation = camera_rotation(camera_q)
        scale = camera_q[:, SCALE, None, None, None]
        jac = np.zeros(points.shape[:2] + (2, 6))
        for i in range(3):
            angles = camera_q[:, PITCH : ROLL + 1].copy()
            angles[:, i] += eps
            d_rotation = (euler_to_matrix(torch.from_numpy(angles)).numpy() - rotation) / eps
            jac[..., i] = np.matmul(points, d_rotation.transpose(0, 2, 1))[..., :2] * flip
        jac[..., :3] *= scale
        jac[..., 0, 3] = iod_px  # x = ... + d q_3
        jac[..., 1, 4] = iod_px
        jac[..., 5] = scale[..., 0] * np.matmul(points, rotation.transpose(0, 2, 1))[..., :2] * flip
        return (jac * sqrt_w[..., None]).reshape(n_frames, -1, 6)

    def energy(q, r):
        return float(np.sum(r**2) + q.reshape(-1) @ (smooth @ q.reshape(-1)))

    q = _pose_params(camera, iod_px)
    r = residual(q)
    cost = energy(q, r)
    eps = 1e-6
    upper = [(a, a + offset) for offset in range(6) for a in range(6 - offset)]
    for _ in range(steps):
        jac = jacobian(q)
        blocks = np.matmul(jac.transpose(0, 2, 1), jac)  # (T, 6, 6)
        band = smooth_band.copy()
        for a, b in upper:  # entry (6t + a, 6t + b) sits in row half_band + a - b, column 6t + b
            band[half_band + a - b, b::6] += blocks[:, a, b]
        grad = np.matmul(jac.transpose(0, 2, 1), r[..., None]).reshape(-1) + smooth @ q.reshape(-1)
        step = -solveh_banded(band, grad).reshape(n_frames, 6)
        for _halving in range(6):
            new_q = q + step
            new_r = residual(new_q)
            new_cost = energy(new_q, new_r)
            if new_cost < cost:
                q, r, cost = new_q, new_r, new_cost
                break
            step = 0.5 * step
        else:
            break
    return _camera_from_pose(q, iod_px)


def pose_smoothness(camera: np.ndarray, iod_px: float) -> float:
    """sum_t |q_{t-1} - 2 q_t + q_{t+1}|^2 of the unitless pose q (see smooth_cameras_gauss_newton)."""
    if len(camera) < 3:
        return 0.0
    return float(np.sum(second_difference(_pose_params(camera, iod_px)) ** 2))


def _rodrigues(w: np.ndarray) -> np.ndarray:
    """Rotation vectors (T, 3) -> rotation matrices (T, 3, 3)."""
    theta = np.linalg.norm(w, axis=-1)[:, None, None]
    k = np.zeros(w.shape[:1] + (3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    k = k - k.transpose(0, 2, 1)
    small = theta < 1e-12
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0, np.sin(safe) / safe)
    b = np.where(small, 0.5, (1.0 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * k + b * np.matmul(k, k)


# ---------------------------------------------------------------------------------------------------
# Landmark correspondence and the linear shape problem.


@dataclass(frozen=True, eq=False)
class LandmarkBasis:
    """The model restricted to landmark candidates: rows of [mean | identity | expression] per vertex.

    standard_ids (68,) and alternative_ids (68,) (equal where a landmark has no substitute);
    side (68,) -1 for the subject's right jaw (model x < 0), +1 left, 0 none; mean (68, 2, 3),
    identity (68, 2, 3, N_id), expression (68, 2, 3, N_exp): [:, 0] standard, [:, 1] alternative.
    """

    standard_ids: np.ndarray
    alternative_ids: np.ndarray
    side: np.ndarray
    mean: np.ndarray
    identity: np.ndarray
    expression: np.ndarray

    @classmethod
    def from_model(cls, model: MorphableModel, jaw_contour: bool = True) -> LandmarkBasis:
        standard = model.landmarks.astype(np.int64)
        alternative = standard.copy()
        side = np.zeros(N_LANDMARKS, np.int64)
        j = len(model.jaw_right)
        if jaw_contour and j:
            alternative[:j] = model.jaw_right
            alternative[17 - j : 17] = model.jaw_left
            side[:j], side[17 - j : 17] = -1, 1
            side[alternative == standard] = 0
        ids = np.stack([standard, alternative], 1)  # (68, 2)
        return cls(
            standard_ids=standard,
            alternative_ids=alternative,
            side=side,
            mean=model.mean[ids].astype(np.float64),
            identity=np.moveaxis(model.identity_basis[:, ids], 0, -1).astype(np.float64),
            expression=np.moveaxis(model.expression_basis[:, ids], 0, -1).astype(np.float64),
        )

    def candidate_points(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """Model-space candidates per frame: identity (N_id,), expression (T, N_exp) -> (T, 68, 2, 3)."""
        base = self.mean + self.identity @ identity  # (68, 2, 3)
        return base + np.einsum("kcde,te->tkcd", self.expression, expression, optimize=True)

    def choose(self, candidates: np.ndarray, camera: np.ndarray) -> np.ndarray:
        """Silhouette choice per frame: candidates (T, 68, 2, 3), camera (T, 7) -> choice (T, 68) in {0, 1}.

        Outwards is measured along the face's own horizontal axis in the image (roll removed), so a
        tilted head does not flip the choice.
        """
        rotation = camera_rotation(camera)
        roll = camera[:, ROLL]
        c, s = np.cos(roll), np.sin(roll)
        # First row of Rz(roll)^T R: the horizontal image axis of the un-rolled face.
        axis = c[:, None] * rotation[:, 0] + s[:, None] * rotation[:, 1]  # (T, 3)
        horizontal = np.einsum("tkcd,td->tkc", candidates, axis)
        outward = horizontal * self.side[None, :, None]
        choice = (outward[..., 1] > outward[..., 0]).astype(np.int64)
        return np.where(self.side[None] == 0, 0, choice)

    def vertex_ids(self, choice: np.ndarray) -> np.ndarray:
        return np.where(choice == 1, self.alternative_ids[None], self.standard_ids[None])


# identity_asymmetry_gram per model (the model is kept referenced, so its id stays unique).
_ASYMMETRY_CACHE: dict[int, tuple[MorphableModel, np.ndarray]] = {}


def identity_asymmetry_gram(model: MorphableModel) -> np.ndarray:
    """G (N_id, N_id) with id^T G id = mean over surface vertices of |(U id - mirror(U id)) / 2|^2, cm^2.

    mirror(v) reflects a displacement field in the model's x = 0 plane (vertex i takes the reflected
    offset of the vertex nearest to i's mirror image in the mean shape), so G measures the antisymmetric
    part of the identity's displacement. Computed once per model (about 0.1 s).
    """
    cached = _ASYMMETRY_CACHE.get(id(model))
    if cached is not None and cached[0] is model:
        return cached[1]
    surface = model.mean[: model.surface_vertex_count].astype(np.float64)
    _, mirror = cKDTree(surface).query(surface * np.array([-1.0, 1.0, 1.0]))
    basis = model.identity_basis[:, : model.surface_vertex_count].astype(np.float64)  # (N_id, S, 3)
    anti = 0.5 * (basis - basis[:, mirror] * np.array([-1.0, 1.0, 1.0]))
    anti = anti.reshape(len(basis), -1)
    gram = anti @ anti.T / len(surface)
    gram.setflags(write=False)
    if len(_ASYMMETRY_CACHE) >= 4:
        _ASYMMETRY_CACHE.clear()
    _ASYMMETRY_CACHE[id(model)] = (model, gram)
    return gram


def build_shape_problem(
    basis: LandmarkBasis,
    choice: np.ndarray,
    camera: np.ndarray,
    landmarks_px: np.ndarray,
    weights: np.ndarray,
    iod_px: float,
    config: FitConfig,
    identity_bounds: np.ndarray,
    expression_bounds: np.ndarray,
    identity_asymmetry: np.ndarray | None = None,
) -> ShapeProblem:
    """Linearises the projection for fixed cameras and contour choice (exact: the model is linear).

    x_tk = s_t P R_t (mean_k + U_k id + W_k exp_t) + t_t with P = diag(1, -1) on the first two rows.
    """
    n_frames = camera.shape[0]
    rotation = camera_rotation(camera)
    proj = rotation[:, :2] * camera[:, SCALE, None, None] * np.array([1.0, -1.0])[None, :, None]  # (T,2,3)
    sqrt_w = np.sqrt(config.w_landmark * np.repeat(weights, 2, axis=1) / (n_frames * iod_px**2))  # (T, R)
    jaw = np.flatnonzero(basis.side != 0)
    use_alt = choice[:, jaw, None] == 1  # (T, J, 1)

    def project_basis(rows: np.ndarray, row_weight: np.ndarray) -> np.ndarray:
        """Basis rows (68, 2, 3, N) -> s P R rows (T, 2 * 68, N) times row_weight (T, 2 * 68), contour
        choice applied. One (T, 3) x (3, 68 N) product per image axis, written in place: a batched
        einsum over frames is 5-10x slower here (it reshapes through copies)."""
        n = rows.shape[-1]
        standard = np.ascontiguousarray(rows[:, 0].transpose(1, 0, 2)).reshape(3, -1)  # (3, 68 N)
        alternative = np.ascontiguousarray(rows[jaw, 1].transpose(1, 0, 2)).reshape(3, -1)  # (3, J N)
        out = np.empty((n_frames, N_LANDMARKS, 2, n))
        for axis in range(2):
            out[:, :, axis] = (proj[:, axis] @ standard).reshape(n_frames, N_LANDMARKS, n)
            alt = (proj[:, axis] @ alternative).reshape(n_frames, len(jaw), n)
            out[:, jaw, axis] = np.where(use_alt, alt, out[:, jaw, axis])
        out = out.reshape(n_frames, 2 * N_LANDMARKS, n)
        out *= row_weight[..., None]
        return out

    # A^T A = sum_t A_t^T A_t without the (T * 136, N_id) product: row (k, axis) of A_t is
    # sqrt_w * P_t[axis] U_kv (U_kv the (3, N_id) basis rows of landmark k's chosen candidate v), so the
    # sum is sum_{k, v} U_kv^T M_kv U_kv with M_kv = sum over frames choosing v of sum_axis w P^T P (3x3).
    row_weight = (sqrt_w**2).reshape(n_frames, N_LANDMARKS, 2)
    frame_blocks = np.einsum("tka,tac,tad->tkcd", row_weight, proj, proj, optimize=True)  # (T, 68, 3, 3)
    chosen = np.stack([choice == 0, choice == 1], -1).astype(np.float64)  # (T, 68, 2)
    blocks = np.einsum("tkv,tkcd->kvcd", chosen, frame_blocks, optimize=True)  # (68, 2, 3, 3)
    rows = basis.identity.reshape(-1, basis.identity.shape[-1])  # (68 * 2 * 3, N_id)
    identity_gram = rows.T @ np.matmul(blocks, basis.identity).reshape(rows.shape)

    offset = project_basis(basis.mean[..., None], np.ones_like(sqrt_w))[..., 0]
    offset += np.tile(camera[:, [TX, TY]], N_LANDMARKS)
    target = np.nan_to_num(landmarks_px).reshape(n_frames, -1) - offset
    return ShapeProblem(
        jac_identity=project_basis(basis.identity, sqrt_w),
        jac_expression=project_basis(basis.expression, sqrt_w),
        target=target * sqrt_w,
        w_identity=config.w_identity,
        w_expression=config.w_expression / n_frames,
        w_smooth=config.w_smooth / n_frames,
        identity_bounds=identity_bounds,
        expression_bounds=expression_bounds,
        identity_asymmetry=identity_asymmetry,
        identity_gram=identity_gram,
    )


def solve_shape(
    problem: ShapeProblem, identity: np.ndarray, expression: np.ndarray, solver: str, warm_start=None
):
    """Dispatches to a solver: -> (identity (N_id,), expression (T, N_exp), solver iterations, the
    solver's state to warm-start its next call on a similar problem: ``warm_start``)."""
    if solver == "structured":
        from pipeline.preprocess.fit_structured import fit_shape_admm_structured

        return fit_shape_admm_structured(problem, identity, expression, multipliers=warm_start)
    if solver == "reference_lsq":
        from pipeline.preprocess.fit_reference_lsq import fit_shape_bounded_lsq

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
    per-frame matrices, where BLAS threads only add overhead (10x slower on a loaded machine).
    """
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

    basis = LandmarkBasis.from_model(model, config.jaw_contour)
    identity_bounds = np.tile([-config.identity_bound_std, config.identity_bound_std], (model.n_identity, 1))
    expression_bounds = model.expression_bounds.astype(np.float64)
    asymmetry = config.w_asymmetry * identity_asymmetry_gram(model) if config.w_asymmetry > 0 else None
    identity = np.zeros(model.n_identity)
    expression = np.clip(np.zeros((n_frames, model.n_expression)), *expression_bounds.T)

    candidates = basis.candidate_points(identity, expression)
    camera = estimate_camera_affine(candidates[:, :, 0], landmarks_px, weights)
    previous, converged, solver_iterations, rounds, warm_start = np.inf, False, 0, 0, None
    w_pose = config.w_smooth * config.pose_smooth_scale
    for rounds in range(1, config.iterations + 1):  # noqa: B007 (rounds is reported)
        # Camera step (shape fixed), then the contour choice under the new pose.
        choice = basis.choose(candidates, camera)
        points = candidates[np.arange(n_frames)[:, None], np.arange(N_LANDMARKS)[None], choice]
        # Per-frame Gauss-Newton from the affine start; later rounds start from a fitted pose, where the
        # joint smoothing step alone reaches the same cameras (energies equal to 1e-7 on the shared clips).
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
        energy = problem.energy(identity, expression) + w_pose / n_frames * pose_smoothness(camera, iod)
        if previous - energy <= config.tolerance * energy:
            converged = True
            break
        previous = energy

    terms = problem.energy_terms(identity, expression)
    terms["smooth"] += w_pose / n_frames * pose_smoothness(camera, iod)
    points = candidates[np.arange(n_frames)[:, None], np.arange(N_LANDMARKS)[None], choice]
    residuals = project_points(points, camera) - landmarks_px
    result = FitResult(
        identity=_frozen(identity),
        expression=_frozen(expression),
        camera=_frozen(camera),
        landmark_vertex_ids=_frozen(basis.vertex_ids(choice)),
        residuals_px=_frozen(residuals),
        iod_px=iod,
        energy=sum(terms.values()),
        energy_landmark=terms["landmark"],
        energy_prior=terms["prior"],
        energy_smooth=terms["smooth"],
        iterations=rounds,
        solver_iterations=solver_iterations,
        converged=converged,
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


def project_points(points: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """model.face3d.camera's projection, x and y only: points (T, K, 3), camera (T, 7) -> (T, K, 2) pixels."""
    rotation = camera_rotation(camera)
    rotated = np.matmul(points, rotation.transpose(0, 2, 1))[..., :2] * np.array([1.0, -1.0])
    return camera[:, SCALE, None, None] * rotated + camera[:, None, [TX, TY]]


def _frozen(x: np.ndarray) -> np.ndarray:
    x = np.array(x, copy=True)
    x.setflags(write=False)
    return x


__all__ = [
    "LANDMARK_REGIONS",
    "OUTER_EYE_CORNERS",
    "FitConfig",
    "FitResult",
    "LandmarkBasis",
    "ShapeProblem",
    "build_shape_problem",
    "estimate_camera_affine",
    "fit_video",
    "identity_asymmetry_gram",
    "interocular_px",
    "project_points",
    "refine_camera_gauss_newton",
    "second_difference",
    "solve_shape",
]
