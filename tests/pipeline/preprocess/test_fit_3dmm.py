"""Per-video 3DMM fit (Eq. 2): recovery, contour, smoothing, convergence, bounds, bad inputs.

The camera step and the shape step have their own tests (test_fit_camera.py, test_fit_shape.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from model.face3d.camera import PITCH, ROLL, SCALE, YAW, project_xy_numpy
from pipeline.errors import FitDiverged, TooShort
from pipeline.preprocess import fit_3dmm as F
from pipeline.preprocess.fit_shape import LandmarkBasis, identity_asymmetry_gram, second_difference
from pipeline.preprocess.synthetic_landmarks import synthetic_track


def test_fit_video_recovers_synthetic_track(ict_model):
    track = synthetic_track(ict_model, 40, seed=5, max_yaw_deg=45, noise_px=0.5, occluded_per_frame=3)
    landmarks_before = track.landmarks_px.copy()
    result = F.fit_video(ict_model, track.landmarks_px, track.weights)
    np.testing.assert_array_equal(track.landmarks_px, landmarks_before)
    # Fitted landmarks land on the clean (noise-free, unoccluded) ones within 1.5% of the eye distance.
    fitted = result.residuals_px + track.landmarks_px
    clean_error = np.linalg.norm(fitted - track.clean_px, axis=-1).mean() / result.iod_px
    assert clean_error < 0.015, clean_error
    # Pose within 3 degrees on every frame, turned heads (45 degrees of yaw) included.
    angle_error = np.rad2deg(np.abs(result.camera[:, PITCH : ROLL + 1] - track.camera[:, PITCH : ROLL + 1]))
    assert angle_error.max() < 3.0, angle_error.max(0)
    assert np.abs(result.camera[:, SCALE] / track.camera[:, SCALE] - 1).max() < 0.05
    # Expression recovered in the mean; every bound holds.
    assert np.abs(result.expression - track.expression).mean() < 0.1
    assert np.all(result.expression >= 0) and np.all(result.expression <= 1)
    assert np.all(np.abs(result.identity) <= 3.0)
    # The result is frozen and self-consistent.
    assert not result.expression.flags.writeable and not result.camera.flags.writeable
    assert result.energy == pytest.approx(result.energy_landmark + result.energy_prior + result.energy_smooth)
    assert result.expression.shape == (40, 53) and result.camera.shape == (40, 7)
    assert result.residuals_px.shape == (40, 68, 2) and result.landmark_vertex_ids.shape == (40, 68)


def test_converged_says_whether_more_rounds_would_still_move_the_fit(ict_model):
    track = synthetic_track(ict_model, 40, seed=5, max_yaw_deg=45, noise_px=0.5, occluded_per_frame=3)
    tolerance = F.FitConfig().converged_move_iod
    full = F.fit_video(ict_model, track.landmarks_px, track.weights)
    # A well-posed fit with the default rounds: its last round moved the model's landmarks by a small
    # fraction of the tolerance.
    assert full.iterations == F.FitConfig().iterations
    assert full.converged and full.last_move_iod < 0.5 * tolerance, full.last_move_iod
    # Cut short, the same fit is still moving: on the first round by several % of d (from the start),
    # on the second still by more than the tolerance.
    for rounds, moved_at_least in ((1, 10 * tolerance), (2, 1.5 * tolerance)):
        short = F.fit_video(ict_model, track.landmarks_px, track.weights, F.FitConfig(iterations=rounds))
        assert short.iterations == rounds and not short.converged
        assert short.last_move_iod > moved_at_least, (rounds, short.last_move_iod)
    # The flag is the measure against the configured tolerance.
    loose = F.FitConfig(iterations=2, converged_move_iod=10 * tolerance)
    assert F.fit_video(ict_model, track.landmarks_px, track.weights, loose).converged


def test_jaw_contour_follows_the_silhouette(ict_model):
    track = synthetic_track(ict_model, 24, seed=6, max_yaw_deg=45, noise_px=0.3, occluded_per_frame=0)
    with_contour = F.fit_video(ict_model, track.landmarks_px, config=F.FitConfig())
    fixed = F.fit_video(ict_model, track.landmarks_px, config=F.FitConfig(jaw_contour=False))
    jaw = list(F.LANDMARK_REGIONS["jaw"])
    jaw_error = [np.linalg.norm(r.residuals_px[:, jaw], axis=-1).mean() for r in (with_contour, fixed)]
    assert jaw_error[0] < 0.7 * jaw_error[1], jaw_error
    # Turned heads use the substitute vertices on some jaw points, frontal ones do not need to.
    used_alternative = with_contour.landmark_vertex_ids[:, :8] != ict_model.landmarks[:8]
    assert used_alternative.any()


def test_smoothness_lowers_jitter(ict_model):
    track = synthetic_track(ict_model, 40, seed=7, max_yaw_deg=20, noise_px=1.5, occluded_per_frame=0)
    smooth = F.fit_video(ict_model, track.landmarks_px, config=F.FitConfig(w_smooth=5e-2))
    rough = F.fit_video(ict_model, track.landmarks_px, config=F.FitConfig(w_smooth=0.0))
    jitter = [np.abs(second_difference(r.expression)).mean() for r in (smooth, rough)]
    assert jitter[0] < 0.6 * jitter[1], jitter
    # The pose part of E_sm: smoother angles, and closer to the (smooth) true ones.
    angle_jitter = [np.abs(second_difference(r.camera[:, PITCH : ROLL + 1])).mean() for r in (smooth, rough)]
    assert angle_jitter[0] < 0.5 * angle_jitter[1], angle_jitter
    angle_error = [
        np.abs(r.camera[:, PITCH : ROLL + 1] - track.camera[:, PITCH : ROLL + 1]).mean()
        for r in (smooth, rough)
    ]
    assert angle_error[0] < angle_error[1], angle_error
    assert rough.energy_smooth == 0.0 and smooth.energy_smooth > 0.0


def test_pose_smoothing_is_optional(ict_model):
    track = synthetic_track(ict_model, 20, seed=10, max_yaw_deg=20, noise_px=1.5, occluded_per_frame=0)
    per_frame = F.fit_video(ict_model, track.landmarks_px, config=F.FitConfig(pose_smooth_scale=0.0))
    joint = F.fit_video(ict_model, track.landmarks_px)
    jitter = [np.abs(second_difference(r.camera[:, [PITCH, YAW, ROLL]])).mean() for r in (joint, per_frame)]
    assert jitter[0] < 0.7 * jitter[1], jitter
    # Smoothing the pose costs little landmark accuracy.
    errors = [r.mean_error_iod().mean() for r in (joint, per_frame)]
    assert errors[0] < 1.1 * errors[1], errors


def test_fit_video_bad_inputs(ict_model):
    with pytest.raises(TooShort):
        F.fit_video(ict_model, np.zeros((0, 68, 2)))
    with pytest.raises(ValueError, match="landmarks_px must be"):
        F.fit_video(ict_model, np.zeros((3, 5, 2)))
    with pytest.raises(FitDiverged):
        F.fit_video(ict_model, np.full((4, 68, 2), np.nan))
    with pytest.raises(ValueError, match="iterations must be at least 1"):
        F.fit_video(ict_model, np.zeros((3, 68, 2)), config=F.FitConfig(iterations=0))
    with pytest.raises(ValueError, match="unknown solver"):
        F.solve_shape(None, None, None, "newton")  # type: ignore[arg-type]


def test_fit_video_rejects_non_face_landmarks(ict_model):
    # Random points are no face: the fit cannot explain them and says so instead of returning garbage.
    rng = np.random.default_rng(0)
    with pytest.raises(FitDiverged, match="inter-ocular"):
        F.fit_video(ict_model, rng.uniform(0, 256, (6, 68, 2)))


@pytest.mark.slow
def test_fit_video_reference_and_structured_agree(ict_model):
    track = synthetic_track(ict_model, 5, seed=8, max_yaw_deg=30, noise_px=0.7)
    config = F.FitConfig(iterations=3)
    fast = F.fit_video(ict_model, track.landmarks_px, track.weights, config)
    ref = F.fit_video(
        ict_model, track.landmarks_px, track.weights, F.FitConfig(iterations=3, solver="reference_lsq")
    )
    assert (fast.energy - ref.energy) / ref.energy <= 1e-3
    np.testing.assert_allclose(fast.camera, ref.camera, atol=1e-2)


def test_jaw_weight_zero_ignores_the_jawline(ict_model):
    track = synthetic_track(ict_model, 10, seed=9, max_yaw_deg=20, noise_px=0.3, occluded_per_frame=0)
    corrupted = track.landmarks_px.copy()
    corrupted[:, :17] += 15.0  # a jawline detector gone wrong
    config = F.FitConfig(jaw_weight=0.0)
    clean_fit = F.fit_video(ict_model, track.landmarks_px, config=config)
    corrupted_fit = F.fit_video(ict_model, corrupted, config=config)
    np.testing.assert_allclose(corrupted_fit.identity, clean_fit.identity, atol=1e-6)
    np.testing.assert_allclose(corrupted_fit.camera, clean_fit.camera, atol=1e-6)
    assert np.linalg.norm(corrupted_fit.residuals_px[:, :17], axis=-1).mean() > 10.0


@pytest.mark.parametrize("n_frames", [1, 2])
def test_fit_video_single_image_and_two_frames(ict_model, n_frames):
    # No temporal terms exist below 3 frames; a still photo (T = 1) still gets a full fit.
    track = synthetic_track(ict_model, n_frames, seed=11, max_yaw_deg=30, noise_px=0.5)
    result = F.fit_video(ict_model, track.landmarks_px, track.weights, F.FitConfig(iterations=4))
    assert result.expression.shape == (n_frames, 53) and result.energy_smooth == 0.0
    assert result.mean_error_iod(track.weights).mean() < 0.03


def test_asymmetry_prior_keeps_oppositely_turned_halves_together(ict_model):
    # A detector biased towards its frontal mean shape: every landmark of a turned head is pulled a
    # quarter of the way to where it would be at zero yaw. The first half turns left, the second right.
    track = synthetic_track(ict_model, 40, seed=14, max_yaw_deg=25, noise_px=0.3, occluded_per_frame=0)
    yaw = track.camera[:, YAW]
    assert yaw[:20].max() <= 0 <= yaw[20:].min() + np.deg2rad(1)
    basis = LandmarkBasis.from_model(ict_model)
    candidates = basis.candidate_points(track.identity, track.expression)
    choice = basis.choose(candidates, track.camera)
    points = basis.chosen_points(candidates, choice)
    frontal = track.camera.copy()
    frontal[:, YAW] = 0.0
    biased = track.landmarks_px + 0.25 * (project_xy_numpy(points, frontal) - track.clean_px)
    gram = identity_asymmetry_gram(ict_model)
    distance, asymmetry, errors = [], [], []
    for w_asymmetry in (0.0, 1.0):
        config = F.FitConfig(w_asymmetry=w_asymmetry)
        halves = [
            F.fit_video(ict_model, biased[part], config=config) for part in (slice(0, 20), slice(20, 40))
        ]
        difference = halves[0].identity - halves[1].identity
        distance.append(np.linalg.norm(difference))
        asymmetry.append(difference @ gram @ difference)
        errors.append(np.mean([h.mean_error_iod().mean() for h in halves]))
    # The bias no longer goes into a lopsided face; what is left of the distance is the halves' noise.
    assert asymmetry[1] < 0.2 * asymmetry[0], asymmetry
    assert distance[1] < 0.75 * distance[0], distance
    assert errors[1] < 1.1 * errors[0] + 1e-3, errors


def test_frames_without_landmark_weight_take_their_neighbours_camera(ict_model):
    """Frames dropped as unreliable (weight 0) have no camera of their own; an affine start fitted to
    nothing had scale 0 and the smoothing step met log(0) (the learning study's refits of generated clips
    crashed so). They start from the nearest weighted frame's camera; a track with no weight is rejected."""
    track = synthetic_track(ict_model, 30, seed=0, max_yaw_deg=20.0, noise_px=0.5)
    weights = track.weights.copy()
    weights[10:13] = 0
    gap = F.fit_video(ict_model, track.landmarks_px, weights)
    full = F.fit_video(ict_model, track.landmarks_px, track.weights)
    assert np.isfinite(gap.camera).all() and np.all(gap.camera[:, SCALE] > 0)
    scale = full.camera[:, SCALE].mean()
    assert np.abs(gap.camera[10:13, SCALE] - full.camera[10:13, SCALE]).max() < 0.02 * scale
    with pytest.raises(FitDiverged):
        F.fit_video(ict_model, track.landmarks_px, np.zeros_like(weights))
