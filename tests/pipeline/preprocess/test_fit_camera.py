"""The fit's camera step: the linear start, per-frame and joint Gauss-Newton, the pose parametrisation."""

from __future__ import annotations

import numpy as np

from model.face3d.camera import PITCH, ROLL, SCALE, YAW, euler_to_matrix_numpy, project_xy_numpy
from pipeline.preprocess.fit_camera import (
    camera_from_pose,
    estimate_camera_affine,
    pose_params,
    refine_camera_gauss_newton,
    rodrigues,
    smooth_cameras_gauss_newton,
)
from pipeline.preprocess.synthetic_landmarks import synthetic_track


def _mean_shape_points(model, n_frames):
    return np.repeat(model.mean[model.landmarks][None].astype(np.float64), n_frames, 0)


def test_camera_estimate_recovers_pose_of_turned_heads(ict_model):
    track = synthetic_track(ict_model, 12, seed=4, max_yaw_deg=45, noise_px=0.0, occluded_per_frame=0)
    points = _mean_shape_points(ict_model, 12)
    clean = project_xy_numpy(points, track.camera)
    weights = np.ones((12, 68))
    initial = estimate_camera_affine(points, clean, weights)
    refined = refine_camera_gauss_newton(initial, points, clean, weights, steps=5)
    assert np.max(np.abs(track.camera[:, YAW])) > np.deg2rad(40)
    np.testing.assert_allclose(refined[:, PITCH : ROLL + 1], track.camera[:, PITCH : ROLL + 1], atol=1e-6)
    np.testing.assert_allclose(refined[:, SCALE], track.camera[:, SCALE], rtol=1e-6)
    np.testing.assert_allclose(project_xy_numpy(points, refined), clean, atol=1e-5)


def test_joint_camera_step_reaches_the_clean_cameras(ict_model):
    # Exact landmarks and a negligible smoothness weight: the joint step must land on the true cameras
    # from a start a few degrees and pixels off.
    track = synthetic_track(ict_model, 8, seed=3, max_yaw_deg=30, noise_px=0.0, occluded_per_frame=0)
    points = _mean_shape_points(ict_model, 8)
    clean = project_xy_numpy(points, track.camera)
    start = track.camera.copy()
    start[:, PITCH : ROLL + 1] += np.deg2rad(3.0)
    start[:, SCALE] *= 1.05
    iod = 60.0
    fitted = smooth_cameras_gauss_newton(start, points, clean, np.ones((8, 68)), iod, 1e-9, steps=8)
    np.testing.assert_allclose(fitted[:, PITCH : ROLL + 1], track.camera[:, PITCH : ROLL + 1], atol=1e-5)
    np.testing.assert_allclose(project_xy_numpy(points, fitted), clean, atol=1e-3)
    # No pose smoothness term below three frames (or at weight 0): the cameras come back untouched.
    two = start[:2]
    assert smooth_cameras_gauss_newton(two, points[:2], clean[:2], np.ones((2, 68)), iod, 1.0, 4) is two
    assert smooth_cameras_gauss_newton(start, points, clean, np.ones((8, 68)), iod, 0.0, 4) is start


def test_pose_parametrisation_round_trips(ict_model):
    camera = synthetic_track(ict_model, 5, seed=1).camera
    q = pose_params(camera, iod_px=57.0)
    assert q.shape == (5, 6)
    np.testing.assert_allclose(camera_from_pose(q, iod_px=57.0), camera, rtol=1e-12, atol=1e-12)


def test_rodrigues_is_the_rotation_about_the_vector():
    angles = np.array([0.0, 1e-14, 0.3, -1.2])
    w = np.zeros((4, 3))
    w[:, 2] = angles  # about z: the camera convention's roll
    euler = np.zeros((4, 3))
    euler[:, ROLL] = angles
    np.testing.assert_allclose(rodrigues(w), euler_to_matrix_numpy(euler), atol=1e-15)
    r = rodrigues(np.random.default_rng(0).normal(size=(6, 3)))
    np.testing.assert_allclose(np.matmul(r, r.transpose(0, 2, 1)), np.tile(np.eye(3), (6, 1, 1)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
