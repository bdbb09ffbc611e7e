"""Reenactment conditioning: pose adaptation, expression-only transfer, NMFC of the reenacted sequence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.face3d.camera import PITCH, ROLL, SCALE, TX, TY, TZ, YAW, make_camera
from pipeline.preprocess.nmfc import NmfcConfig, NmfcRenderer
from pipeline.reenact.conditioning import (
    FaceParams,
    PoseAdaptConfig,
    adapt_pose,
    carry_pose,
    gaussian_smooth,
    ping_pong_indices,
    pose_outside_range,
    reenactment_nmfc,
    reenactment_parameters,
)

NO_SMOOTH = PoseAdaptConfig(smooth_sigma_frames=0.0)


def _cameras(n, seed, scale, centre, wander, jitter=0.0):
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, n)
    rows = []
    for k in range(n):
        rows.append(
            make_camera(
                pitch=0.1 * np.sin(t[k]),
                yaw=0.3 * np.cos(t[k]),
                roll=0.05 * np.sin(2 * t[k]),
                tx=centre[0] + wander * np.sin(t[k]) + jitter * rng.normal(),
                ty=centre[1] + wander * np.cos(t[k]) + jitter * rng.normal(),
                scale=scale * (1 + 0.05 * np.sin(t[k])) + jitter * 0.01 * rng.normal(),
                tz=rng.normal(),
            )
        )
    return torch.tensor(np.stack(rows))


def test_source_pose_scale_rotation_and_recentred_translation():
    source = _cameras(40, 0, scale=4.0, centre=(300.0, 200.0), wander=10.0)
    target = _cameras(25, 1, scale=8.0, centre=(128.0, 120.0), wander=30.0)
    adapted = adapt_pose(source, target, NO_SMOOTH)
    assert adapted.shape == (40, 7) and adapted.dtype == torch.float64
    ratio = target[:, SCALE].mean() / source[:, SCALE].mean()
    torch.testing.assert_close(adapted[:, PITCH : ROLL + 1], source[:, PITCH : ROLL + 1])
    torch.testing.assert_close(adapted[:, SCALE], source[:, SCALE] * ratio)
    # Re-centred on the target (no clamping needed: the scaled wander 20 px < the target's 30 px).
    torch.testing.assert_close(adapted[:, [TX, TY]].mean(0), target[:, [TX, TY]].mean(0))
    torch.testing.assert_close(
        adapted[:, [TX, TY]] - adapted[:, [TX, TY]].mean(0),
        (source[:, [TX, TY]] - source[:, [TX, TY]].mean(0)) * ratio,
    )
    assert torch.allclose(adapted[:, TZ], target[:, TZ].mean())


def test_translation_clamped_to_the_target_range():
    source = _cameras(40, 2, scale=8.0, centre=(128.0, 128.0), wander=40.0)
    target = _cameras(30, 3, scale=8.0, centre=(100.0, 140.0), wander=5.0)
    adapted = adapt_pose(source, target, NO_SMOOTH)
    low, high = target[:, [TX, TY]].amin(0), target[:, [TX, TY]].amax(0)
    xy = adapted[:, [TX, TY]]
    assert (xy >= low - 1e-9).all() and (xy <= high + 1e-9).all()
    assert (xy == low).any() and (xy == high).any()  # the clamp is active on both sides
    wide = adapt_pose(source, target, PoseAdaptConfig(smooth_sigma_frames=0.0, translation_margin_px=10.0))
    assert (wide[:, [TX, TY]] >= low - 10 - 1e-9).all() and (wide[:, [TX, TY]] < low - 1).any()
    free = adapt_pose(source, target, PoseAdaptConfig(smooth_sigma_frames=0.0, clamp_translation=False))
    assert (free[:, [TX, TY]] < low - 20).any()


def test_carry_pose_frame_by_frame_with_a_reference_as_the_live_stream_does():
    source = _cameras(40, 4, scale=4.0, centre=(300.0, 200.0), wander=10.0)
    target = _cameras(25, 5, scale=8.0, centre=(128.0, 120.0), wander=30.0)
    batch = adapt_pose(source, target, NO_SMOOTH)
    scale, txy = source[:, SCALE].mean(), source[:, [TX, TY]].mean(0)
    # One frame at a time with the whole video's means as the reference: the batch path's cameras (but the
    # depth, which adapt_pose alone sets to the target's).
    kept = [PITCH, YAW, ROLL, TX, TY, SCALE]
    for t in (0, 17, 39):
        frame = carry_pose(source[t : t + 1], scale, txy, target, margin_px=0.0)[0]
        torch.testing.assert_close(frame[kept], batch[t, kept])
        assert frame[TZ] == source[t, TZ]
    # A reference 2 px to the right puts the head 2 * ratio px further left; a larger reference scale
    # shrinks it.
    ratio = target[:, SCALE].mean() / scale
    moved = carry_pose(source, scale, txy + torch.tensor([2.0, 0.0], dtype=torch.float64), target, None)
    unclamped = carry_pose(source, scale, txy, target, None)
    torch.testing.assert_close(moved[:, TX], unclamped[:, TX] - 2 * ratio)
    smaller = carry_pose(source, 2 * scale, txy, target, None)
    torch.testing.assert_close(smaller[:, SCALE], unclamped[:, SCALE] / 2)


def test_smoothing_removes_jitter_and_keeps_the_trajectory():
    source = _cameras(80, 4, scale=5.0, centre=(128.0, 128.0), wander=10.0, jitter=2.0)
    target = _cameras(50, 5, scale=5.0, centre=(128.0, 128.0), wander=30.0)
    rough = adapt_pose(source, target, NO_SMOOTH)
    smooth = adapt_pose(source, target, PoseAdaptConfig(smooth_sigma_frames=2.0))
    for column in (TX, TY, SCALE):
        assert smooth[:, column].diff().std() < 0.5 * rough[:, column].diff().std()
        assert (smooth[:, column] - rough[:, column]).abs().mean() < 0.5 * rough[:, column].std()
    torch.testing.assert_close(smooth[:, PITCH : ROLL + 1], rough[:, PITCH : ROLL + 1])


def test_gaussian_smooth_properties():
    values = torch.tensor([[1.0, 5.0]] * 7)
    torch.testing.assert_close(gaussian_smooth(values, 2.0), values)  # constants unchanged
    step = torch.tensor([0.0] * 5 + [1.0] * 5)[:, None]
    out = gaussian_smooth(step, 1.0)
    assert (out >= 0).all() and (out <= 1).all() and (out.diff(dim=0) >= -1e-7).all()
    assert 0 < out[4, 0] < 0.5 < out[5, 0] < 1
    torch.testing.assert_close(gaussian_smooth(step, 0.0), step)
    torch.testing.assert_close(gaussian_smooth(torch.ones(2, 1), 5.0), torch.ones(2, 1))


def test_target_pose_mode_plays_the_target_cameras():
    source = _cameras(12, 6, scale=4.0, centre=(300.0, 200.0), wander=10.0)
    target = _cameras(4, 7, scale=8.0, centre=(128.0, 120.0), wander=30.0)
    adapted = adapt_pose(source, target, PoseAdaptConfig(mode="target_pose"))
    assert ping_pong_indices(12, 4).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1]
    torch.testing.assert_close(adapted, target[ping_pong_indices(12, 4)])
    assert ping_pong_indices(3, 1).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="mode"):
        adapt_pose(source, target, PoseAdaptConfig(mode="other"))  # type: ignore[arg-type]


def test_reenactment_parameters_take_identity_from_target_and_expression_from_source():
    n_id, n_exp = 5, 4
    target = FaceParams(torch.randn(6, n_id), torch.rand(6, n_exp), _cameras(6, 8, 8.0, (64, 64), 3.0))
    source = FaceParams(torch.randn(n_id), torch.rand(9, n_exp), _cameras(9, 9, 4.0, (30, 30), 3.0))
    params = reenactment_parameters(target, source)
    assert params.identity.shape == (9, n_id) and params.expression.shape == (9, n_exp)
    assert params.camera.shape == (9, 7) and params.camera.dtype == torch.float32
    torch.testing.assert_close(params.identity, target.identity.mean(0).expand(9, -1))
    torch.testing.assert_close(params.expression, source.expression)


@pytest.fixture(scope="module")
def renderer(ict_model):
    return NmfcRenderer(ict_model, NmfcConfig(image_size=(96, 96)))


def _head_params(model, n, seed, scale_px, centre):
    rng = np.random.default_rng(seed)
    height = np.ptp(model.surface().mean[:, 1])
    cams = _cameras(n, seed, scale=scale_px / height, centre=centre, wander=2.0).float()
    return FaceParams(
        torch.tensor(rng.normal(size=model.n_identity) * 0.7).float(),
        torch.tensor(rng.uniform(0, 0.5, size=(n, model.n_expression))).float(),
        cams,
    )


def test_self_reenactment_reproduces_the_target(renderer, ict_model):
    target = _head_params(ict_model, 6, 10, scale_px=70.0, centre=(48.0, 50.0))
    params, images = reenactment_nmfc(renderer, target, target, NO_SMOOTH)
    own = renderer.render(target.identity.expand(6, -1), target.expression, target.camera)
    keep = [PITCH, YAW, ROLL, TX, TY, SCALE]  # tz (unused by the orthographic camera) is the target's mean
    torch.testing.assert_close(params.camera[:, keep], target.camera[:, keep], atol=1e-4, rtol=1e-5)
    assert (images.pix_to_face == own.pix_to_face).float().mean() > 0.999


def test_reenacted_head_sits_where_the_target_is(renderer, ict_model):
    # A small head at the top-left drives a large head at the centre: the NMFC sequence keeps the
    # target's size and place (mask IoU with the target's own NMFC), moving with the source's pose.
    source = _head_params(ict_model, 5, 11, scale_px=30.0, centre=(20.0, 25.0))
    target = _head_params(ict_model, 5, 12, scale_px=70.0, centre=(48.0, 50.0))
    _, images = reenactment_nmfc(renderer, target, source)
    own = renderer.render(target.identity.expand(5, -1), target.expression, target.camera)
    inter = (images.mask & own.mask).sum((1, 2)).float()
    union = (images.mask | own.mask).sum((1, 2)).float()
    assert (inter / union > 0.7).all()
    source_own = renderer.render(source.identity.expand(5, -1), source.expression, source.camera)
    assert ((images.mask & source_own.mask).sum((1, 2)) < 0.5 * source_own.mask.sum((1, 2))).all()
    # Expression-only transfer uses the target's own cameras.
    params, _ = reenactment_nmfc(renderer, target, source, PoseAdaptConfig(mode="target_pose"))
    torch.testing.assert_close(params.camera, target.camera)


def test_pose_outside_range_names_the_angle_and_the_frames():
    pose = {name: [-40.0, -10.0, 0.0, 10.0, 40.0] for name in ("pitch_deg", "yaw_deg", "roll_deg")}
    camera = np.zeros((6, 7))
    assert pose_outside_range(pose, camera, margin_deg=5.0) is None
    camera[[2, 4], YAW] = np.radians([14.0, 30.0])  # 14 is inside 10 + 5; 30 is not
    warning = pose_outside_range(pose, camera, margin_deg=5.0)
    assert warning is not None and "yaw (30 degrees)" in warning and "1 of 6 frames" in warning
    assert "frame 4" in warning
    assert pose_outside_range(pose, camera[2], margin_deg=5.0) is None  # one frame (7,) works too
