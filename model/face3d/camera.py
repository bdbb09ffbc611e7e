"""Scaled orthographic camera shared by the 3DMM fit, NMFC rendering and reenactment.

Conventions (every stage uses these; do not re-derive them elsewhere):

- Model space: the 3DMM's units (cm for ICT), y up, z towards the viewer, x to the subject's left
  (the viewer's right).
- A camera is a vector of 7 numbers, ``camera (..., 7) float``:
  ``(pitch, yaw, roll, tx, ty, tz, scale)``; angles in radians, ``tx, ty`` in pixels, ``tz`` a depth
  offset in pixels (0 from the fit; orthographic images ignore it), ``scale`` in pixels per model unit.
- Rotation ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` (pitch about x, nodding; yaw about y, turning;
  roll about z, tilting), applied to model-space column vectors.
- Image space: pixel coordinates with the centre of pixel (row i, column j) at ``(x, y) = (j, i)``
  (the convention of dlib, face-alignment and OpenCV landmarks); the image covers
  ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``; y points down. Depth grows towards the viewer.

      x_px = scale * (R v)_x + tx
      y_px = -scale * (R v)_y + ty
      depth = scale * (R v)_z + tz

The torch functions serve rendering and training; the ``*_numpy`` ones serve the numpy 3DMM fit
(float64, no autograd) and compute the same formulas, equal to them up to rounding.
"""

from __future__ import annotations

import numpy as np
import torch

CAMERA_DIM = 7
PITCH, YAW, ROLL, TX, TY, TZ, SCALE = range(CAMERA_DIM)


def euler_to_matrix(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from (pitch, yaw, roll): angles (..., 3) radians -> R (..., 3, 3)."""
    pitch, yaw, roll = angles.unbind(-1)
    cx, sx = torch.cos(pitch), torch.sin(pitch)
    cy, sy = torch.cos(yaw), torch.sin(yaw)
    cz, sz = torch.cos(roll), torch.sin(roll)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).unflatten(-1, (3, 3))
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).unflatten(-1, (3, 3))
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).unflatten(-1, (3, 3))
    return rz @ ry @ rx


def matrix_to_euler(rotation: torch.Tensor) -> torch.Tensor:
    """Inverse of ``euler_to_matrix`` for |yaw| < 90 degrees: R (..., 3, 3) -> (pitch, yaw, roll) (..., 3)."""
    yaw = torch.asin((-rotation[..., 2, 0]).clamp(-1.0, 1.0))
    pitch = torch.atan2(rotation[..., 2, 1], rotation[..., 2, 2])
    roll = torch.atan2(rotation[..., 1, 0], rotation[..., 0, 0])
    return torch.stack([pitch, yaw, roll], -1)


def project(verts: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """Scaled orthographic projection to image space.

    verts (B, V, 3) model units, camera (B, 7) -> verts_px (B, V, 3): x, y in pixels (y down) and depth
    in pixels (larger is nearer the viewer).
    """
    rotation = euler_to_matrix(camera[..., PITCH : ROLL + 1])  # (B, 3, 3)
    scale = camera[..., SCALE, None, None]
    # Rows of the rotation scaled by (s, -s, s): x = s r_0.v + tx, y = -s r_1.v + ty, depth = s r_2.v + tz.
    linear = rotation * torch.cat([scale, -scale, scale], -2)  # (B, 3, 3)
    return verts @ linear.mT.contiguous() + camera[..., None, TX : TZ + 1]


def project_numpy(verts: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """``project`` for numpy arrays: verts (..., V, 3), camera (..., 7) -> (..., V, 3) float64."""
    return project(
        torch.as_tensor(verts, dtype=torch.float64), torch.as_tensor(camera, dtype=torch.float64)
    ).numpy()


def euler_to_matrix_numpy(angles: np.ndarray) -> np.ndarray:
    """``euler_to_matrix`` for numpy: angles (..., 3) radians -> R (..., 3, 3) float64."""
    # torch.tensor copies: torch cannot wrap read-only arrays such as FitResult's.
    return euler_to_matrix(torch.tensor(np.asarray(angles), dtype=torch.float64)).numpy()


def camera_rotation_numpy(camera: np.ndarray) -> np.ndarray:
    """The rotation of cameras: camera (..., 7) -> R (..., 3, 3) float64."""
    return euler_to_matrix_numpy(np.asarray(camera)[..., PITCH : ROLL + 1])


def camera_from_rotation_numpy(rotation: np.ndarray, tx_ty: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Cameras from their parts: R (..., 3, 3) (|yaw| < 90 degrees), tx_ty (..., 2) pixels, scale (...,)
    pixels per model unit -> camera (..., 7) float64 with tz = 0."""
    rotation = np.asarray(rotation)
    camera = np.zeros(rotation.shape[:-2] + (CAMERA_DIM,))
    camera[..., PITCH : ROLL + 1] = matrix_to_euler(torch.tensor(rotation, dtype=torch.float64)).numpy()
    camera[..., TX : TY + 1] = tx_ty
    camera[..., SCALE] = scale
    return camera


def project_xy_numpy(points: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """x and y of ``project`` in numpy: points (..., K, 3) model units, camera (..., 7) -> (..., K, 2) float64
    pixels. Skips the depth, which the fit's many reprojection-error evaluations never need."""
    camera = np.asarray(camera)
    rotation_t = np.swapaxes(camera_rotation_numpy(camera), -1, -2)
    rotated = np.matmul(points, rotation_t)[..., :2] * np.array([1.0, -1.0])  # y down
    return camera[..., SCALE, None, None] * rotated + camera[..., None, TX : TY + 1]


def make_camera(
    pitch: float = 0.0,
    yaw: float = 0.0,
    roll: float = 0.0,
    tx: float = 0.0,
    ty: float = 0.0,
    scale: float = 1.0,
    tz: float = 0.0,
) -> np.ndarray:
    """A camera vector (7,) float64 from named parts (angles in radians)."""
    return np.array([pitch, yaw, roll, tx, ty, tz, scale], np.float64)
