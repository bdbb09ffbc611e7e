"""The camera conventions: torch and numpy functions agree, rotations invert, projection matches the page."""

from __future__ import annotations

import numpy as np
import torch

from model.face3d.camera import (
    PITCH,
    ROLL,
    SCALE,
    TX,
    TY,
    camera_from_rotation_numpy,
    camera_rotation_numpy,
    euler_to_matrix,
    euler_to_matrix_numpy,
    make_camera,
    matrix_to_euler,
    project,
    project_numpy,
    project_xy_numpy,
)


def _cameras(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            make_camera(*rng.uniform(-1.2, 1.2, 3), *rng.uniform(50, 200, 2), scale=rng.uniform(2, 20))
            for _ in range(n)
        ]
    )


def test_rotation_order_and_axes():
    # Yaw turns about y: the x axis goes to -z (R = Ry for pitch = roll = 0); pitch about x, roll about z.
    quarter = np.pi / 2
    np.testing.assert_allclose(euler_to_matrix_numpy([0.0, quarter, 0.0]) @ [1, 0, 0], [0, 0, -1], atol=1e-15)
    np.testing.assert_allclose(euler_to_matrix_numpy([quarter, 0.0, 0.0]) @ [0, 1, 0], [0, 0, 1], atol=1e-15)
    np.testing.assert_allclose(euler_to_matrix_numpy([0.0, 0.0, quarter]) @ [1, 0, 0], [0, 1, 0], atol=1e-15)
    # R = Rz(roll) Ry(yaw) Rx(pitch).
    pitch, yaw, roll = 0.3, -0.5, 0.2
    composed = (
        euler_to_matrix_numpy([0.0, 0.0, roll])
        @ euler_to_matrix_numpy([0.0, yaw, 0.0])
        @ euler_to_matrix_numpy([pitch, 0.0, 0.0])
    )
    np.testing.assert_allclose(euler_to_matrix_numpy([pitch, yaw, roll]), composed, atol=1e-15)


def test_numpy_rotations_equal_torch_and_invert():
    camera = _cameras(6)
    rotation = camera_rotation_numpy(camera)
    assert rotation.shape == (6, 3, 3) and rotation.dtype == np.float64
    torch_rotation = euler_to_matrix(torch.from_numpy(camera[:, PITCH : ROLL + 1])).numpy()
    np.testing.assert_array_equal(rotation, torch_rotation)
    back = camera_from_rotation_numpy(rotation, camera[:, [TX, TY]], camera[:, SCALE])
    np.testing.assert_allclose(back, camera, atol=1e-12)  # |yaw| < 90 degrees, tz = 0
    np.testing.assert_allclose(
        matrix_to_euler(torch.from_numpy(rotation)).numpy(), camera[:, PITCH : ROLL + 1], atol=1e-12
    )


def test_projections_agree_and_follow_the_page():
    camera = _cameras(4, seed=1)
    verts = np.random.default_rng(2).normal(0.0, 5.0, (4, 30, 3))
    full = project(torch.from_numpy(verts), torch.from_numpy(camera)).numpy()
    np.testing.assert_allclose(project_numpy(verts, camera), full, rtol=0, atol=1e-12)
    xy = project_xy_numpy(verts, camera)
    assert xy.shape == (4, 30, 2)
    np.testing.assert_allclose(xy, full[..., :2], rtol=0, atol=1e-10)
    # The module docstring's formulas: x = s (R v)_x + tx, y = -s (R v)_y + ty (image y points down).
    rv = np.einsum("bij,bvj->bvi", camera_rotation_numpy(camera), verts)
    s = camera[:, SCALE, None]
    np.testing.assert_allclose(xy[..., 0], s * rv[..., 0] + camera[:, TX, None], atol=1e-10)
    np.testing.assert_allclose(xy[..., 1], -s * rv[..., 1] + camera[:, TY, None], atol=1e-10)
    # One camera for a batch of point sets broadcasts like the batched call.
    single = project_xy_numpy(verts[0], camera[0])
    np.testing.assert_array_equal(single, xy[0])
    # A turned head: positive yaw moves the subject's left (model +x) away from the viewer.
    turned = project_numpy(np.array([[1.0, 0.0, 0.0]]), make_camera(yaw=0.3))
    assert turned[0, 2] < 0
