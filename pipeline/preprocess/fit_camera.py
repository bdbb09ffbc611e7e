"""The camera step of the per-video 3DMM fit (Eq. 2 with the shape fixed): scaled orthographic cameras
per frame (conventions in ``model.face3d.camera``) from model points and their landmarks.

Three estimators, in the order the fit uses them:

- ``estimate_camera_affine``: a linear start, no initial guess needed (eos'
  ``estimate_orthographic_projection_linear``);
- ``refine_camera_gauss_newton``: per-frame Gauss-Newton on the exact reprojection error from that start;
- ``smooth_cameras_gauss_newton``: all frames jointly under the pose part of ``E_sm``, Gauss-Newton on
  the unitless pose ``q = (pitch, yaw, roll, tx / d, ty / d, log scale)`` (``pose_params``), so that
  angles, translations and zoom are smoothed on comparable scales whatever the crop size.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.linalg import solveh_banded

from model.face3d.camera import (
    CAMERA_DIM,
    PITCH,
    ROLL,
    SCALE,
    TX,
    TY,
    camera_from_rotation_numpy,
    camera_rotation_numpy,
    euler_to_matrix_numpy,
    project_xy_numpy,
)
from pipeline.preprocess.fit_shape import second_difference


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
    return camera_from_rotation_numpy(rotation, tx_ty, s.mean(-1).reshape(t_frames))


def refine_camera_gauss_newton(
    camera: np.ndarray, points: np.ndarray, landmarks_px: np.ndarray, weights: np.ndarray, steps: int
) -> np.ndarray:
    """Gauss-Newton on sum_k w_k |project(v_k, cam) - l_k|^2 per frame, all frames at once.

    Rotation updates are left-multiplied small rotations exp([w]x) R, so the steps never meet the Euler
    angles' singularities. camera (T, 7), points (T, K, 3), landmarks_px (T, K, 2), weights (T, K) ->
    camera (T, 7); a step is kept per frame only where it lowers that frame's error.
    """
    rotation = camera_rotation_numpy(camera)
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
        new_rotation = np.matmul(rodrigues(step[:, :3]), rotation)
        new_txy, new_scale = txy + step[:, 3:5], scale + step[:, 5]
        new_cost, new_rv, new_pred = frame_cost(new_rotation, new_txy, new_scale)
        better = new_cost <= cost
        rotation[better], txy[better], scale[better] = (
            new_rotation[better],
            new_txy[better],
            new_scale[better],
        )
        cost[better], rv[better], pred[better] = new_cost[better], new_rv[better], new_pred[better]
    return camera_from_rotation_numpy(rotation, txy, scale)


def pose_params(camera: np.ndarray, iod_px: float) -> np.ndarray:
    """The unitless pose of the pose smoothness term: camera (T, 7), the normaliser d in pixels -> q (T, 6)
    = (pitch, yaw, roll, tx / d, ty / d, log scale)."""
    return np.concatenate(
        [camera[:, PITCH : ROLL + 1], camera[:, [TX, TY]] / iod_px, np.log(camera[:, SCALE, None])], 1
    )


def camera_from_pose(q: np.ndarray, iod_px: float) -> np.ndarray:
    """Inverse of ``pose_params``: q (T, 6) -> camera (T, 7) with tz = 0."""
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
    q = ``pose_params`` by Gauss-Newton (Jacobians exact but for forward differences of the rotation
    matrix; the block-pentadiagonal normal system by a banded Cholesky solve) with step halving.
    camera (T, 7), points (T, K, 3), landmarks_px (T, K, 2), weights (T, K) -> camera (T, 7); returned
    unchanged for T < 3 or w_pose <= 0.
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
    eps = 1e-6  # forward-difference step of the angles, radians

    def residual(q):
        return ((project_xy_numpy(points, camera_from_pose(q, iod_px)) - landmarks_px) * sqrt_w).reshape(
            n_frames, -1
        )

    def jacobian(q):
        """d residual / d q (T, 2K, 6): rotation derivatives by forward differences of R, the rest exact."""
        camera_q = camera_from_pose(q, iod_px)
        rotation = camera_rotation_numpy(camera_q)
        scale = camera_q[:, SCALE, None, None, None]
        jac = np.zeros(points.shape[:2] + (2, 6))
        for i in range(3):
            angles = camera_q[:, PITCH : ROLL + 1].copy()
            angles[:, i] += eps
            d_rotation = (euler_to_matrix_numpy(angles) - rotation) / eps
            jac[..., i] = np.matmul(points, d_rotation.transpose(0, 2, 1))[..., :2] * flip
        jac[..., :3] *= scale
        jac[..., 0, 3] = iod_px  # x = ... + d q_3
        jac[..., 1, 4] = iod_px
        jac[..., 5] = scale[..., 0] * np.matmul(points, rotation.transpose(0, 2, 1))[..., :2] * flip
        return (jac * sqrt_w[..., None]).reshape(n_frames, -1, 6)

    def energy(q, r):
        return float(np.sum(r**2) + q.reshape(-1) @ (smooth @ q.reshape(-1)))

    q = pose_params(camera, iod_px)
    r = residual(q)
    cost = energy(q, r)
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
    return camera_from_pose(q, iod_px)


def pose_smoothness(camera: np.ndarray, iod_px: float) -> float:
    """sum_t |q_{t-1} - 2 q_t + q_{t+1}|^2 of the unitless pose q = ``pose_params``: camera (T, 7) -> float
    (0 for T < 3)."""
    if len(camera) < 3:
        return 0.0
    return float(np.sum(second_difference(pose_params(camera, iod_px)) ** 2))


def rodrigues(w: np.ndarray) -> np.ndarray:
    """Rotation vectors (T, 3) radians -> rotation matrices exp([w]x) (T, 3, 3)."""
    theta = np.linalg.norm(w, axis=-1)[:, None, None]
    k = np.zeros(w.shape[:1] + (3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
    k = k - k.transpose(0, 2, 1)
    small = theta < 1e-12
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0, np.sin(safe) / safe)
    b = np.where(small, 0.5, (1.0 - np.cos(safe)) / safe**2)
    return np.eye(3) + a * k + b * np.matmul(k, k)


__all__ = [
    "camera_from_pose",
    "estimate_camera_affine",
    "pose_params",
    "pose_smoothness",
    "refine_camera_gauss_newton",
    "rodrigues",
    "smooth_cameras_gauss_newton",
]
