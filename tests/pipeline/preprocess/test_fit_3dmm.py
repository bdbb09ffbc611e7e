"""Per-video 3DMM fit (Eq. 2): linearisation, cameras, both shape solvers, recovery, bounds, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from model.face3d.camera import PITCH, ROLL, SCALE, YAW, project_numpy
from pipeline.errors import FitDiverged, TooShort
from pipeline.preprocess import fit_3dmm as F
from pipeline.preprocess.fit_reference_lsq import fit_shape_bounded_lsq, stacked_system
from pipeline.preprocess.fit_structured import fit_shape_admm_structured
from pipeline.preprocess.synthetic_landmarks import synthetic_track


def _problem_at_truth(model, track, config=None, identity_bound_std=3.0):
    """The shape problem of a synthetic track with its true cameras and contour choice."""
    config = config or F.FitConfig()
    basis = F.LandmarkBasis.from_model(model)
    choice = basis.choose(basis.candidate_points(track.identity, track.expression), track.camera)
    iod = F.interocular_px(track.landmarks_px, track.weights)
    id_bounds = np.tile([-identity_bound_std, identity_bound_std], (model.n_identity, 1))
    asymmetry = config.w_asymmetry * F.identity_asymmetry_gram(model) if config.w_asymmetry > 0 else None
    return F.build_shape_problem(
        basis,
        choice,
        track.camera,
        track.landmarks_px,
        track.weights,
        iod,
        config,
        id_bounds,
        model.expression_bounds.astype(np.float64),
        asymmetry,
    )


def test_shape_problem_is_the_exact_projection(ict_model):
    track = synthetic_track(ict_model, 5, seed=3)
    problem = _problem_at_truth(ict_model, track)
    # At the true parameters the weighted residual is (clean - observed) landmarks times sqrt(weight).
    residual = problem.residual(track.identity, track.expression).reshape(5, 68, 2)
    scale = np.sqrt(track.weights / (5 * F.interocular_px(track.landmarks_px, track.weights) ** 2))
    np.testing.assert_allclose(residual, (track.clean_px - track.landmarks_px) * scale[..., None], atol=1e-12)
    # The clean landmarks agree with model.face3d.camera.project on the chosen vertices.
    verts = np.stack([ict_model.vertices(track.identity, e) for e in track.expression])
    ids = F.LandmarkBasis.from_model(ict_model).vertex_ids(
        F.LandmarkBasis.from_model(ict_model).choose(
            F.LandmarkBasis.from_model(ict_model).candidate_points(track.identity, track.expression),
            track.camera,
        )
    )
    projected = project_numpy(np.take_along_axis(verts, ids[..., None], 1), track.camera)[..., :2]
    np.testing.assert_allclose(projected, track.clean_px, atol=1e-3)
    # Energy terms equal the stacked least-squares system's squared norm.
    matrix, rhs = stacked_system(problem)
    x = np.concatenate([track.identity, track.expression.reshape(-1)])
    assert problem.energy(track.identity, track.expression) == pytest.approx(np.sum((matrix @ x - rhs) ** 2))


def test_identity_gram_from_landmark_blocks_equals_the_jacobian_product(ict_model):
    # A turned head (some jaw landmarks on their silhouette substitutes) with uneven weights.
    track = synthetic_track(ict_model, 12, seed=5, max_yaw_deg=40.0)
    problem = _problem_at_truth(ict_model, track)
    basis = F.LandmarkBasis.from_model(ict_model)
    choice = basis.choose(basis.candidate_points(track.identity, track.expression), track.camera)
    assert choice.any()  # the substitute rows are exercised
    a = problem.jac_identity
    np.testing.assert_allclose(problem.identity_gram, np.einsum("tri,trj->ij", a, a), rtol=1e-10, atol=1e-14)


def test_camera_estimate_recovers_pose_of_turned_heads(ict_model):
    track = synthetic_track(ict_model, 12, seed=4, max_yaw_deg=45, noise_px=0.0, occluded_per_frame=0)
    points = np.repeat(ict_model.mean[ict_model.landmarks][None].astype(np.float64), 12, 0)
    clean = F.project_points(points, track.camera)
    weights = np.ones((12, 68))
    initial = F.estimate_camera_affine(points, clean, weights)
    refined = F.refine_camera_gauss_newton(initial, points, clean, weights, steps=5)
    assert np.max(np.abs(track.camera[:, YAW])) > np.deg2rad(40)
    np.testing.assert_allclose(refined[:, PITCH : ROLL + 1], track.camera[:, PITCH : ROLL + 1], atol=1e-6)
    np.testing.assert_allclose(refined[:, SCALE], track.camera[:, SCALE], rtol=1e-6)
    np.testing.assert_allclose(F.project_points(points, refined), clean, atol=1e-5)


@pytest.mark.parametrize(
    ("seed", "max_yaw_deg", "identity_bound_std", "w_smooth", "w_asymmetry"),
    # The second makes identity bounds active, the third has the identity prior diagonal (no asymmetry
    # term), the first a strong asymmetry prior.
    [(0, 45.0, 3.0, 5e-3, 100.0), (1, 20.0, 0.3, 5e-2, 1.0), (2, 30.0, 3.0, 5e-3, 0.0)],
)
def test_structured_solver_matches_reference_energy(
    ict_model, seed, max_yaw_deg, identity_bound_std, w_smooth, w_asymmetry
):
    track = synthetic_track(ict_model, 6, seed=seed, max_yaw_deg=max_yaw_deg, noise_px=1.0)
    config = F.FitConfig(w_smooth=w_smooth, w_asymmetry=w_asymmetry)
    problem = _problem_at_truth(ict_model, track, config, identity_bound_std)
    assert (problem.identity_asymmetry is None) == (w_asymmetry == 0)
    start_id, start_exp = np.zeros(ict_model.n_identity), np.zeros_like(track.expression)
    ref_id, ref_exp, _ = fit_shape_bounded_lsq(problem, start_id, start_exp)
    fast_id, fast_exp, iters, multipliers = fit_shape_admm_structured(problem, start_id, start_exp)
    assert not start_id.any() and not start_exp.any()  # inputs untouched
    e_ref, e_fast = problem.energy(ref_id, ref_exp), problem.energy(fast_id, fast_exp)
    assert (e_fast - e_ref) / e_ref <= 1e-3, (e_fast, e_ref)
    assert problem.is_feasible(ref_id, ref_exp, atol=0) and problem.is_feasible(fast_id, fast_exp, atol=0)
    # Bounds are really active in these problems (else the test would not exercise them).
    assert np.mean(fast_exp == 0.0) > 0.1
    if identity_bound_std < 1:
        assert np.any(np.abs(fast_id) == identity_bound_std)
    assert iters < 400
    # Warm-started with its own solution's multipliers, ADMM stops at once with the same energy; from
    # the solution with zero multipliers it has to find the binding constraints' forces again.
    warm_id, warm_exp, warm_iters, _ = fit_shape_admm_structured(
        problem, fast_id, fast_exp, multipliers=multipliers
    )
    _, _, cold_iters, _ = fit_shape_admm_structured(problem, fast_id, fast_exp)
    assert warm_iters < cold_iters and warm_iters <= 3, (warm_iters, cold_iters)
    assert (problem.energy(warm_id, warm_exp) - e_ref) / e_ref <= 1e-3
    assert problem.is_feasible(warm_id, warm_exp, atol=0)


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
    jitter = [np.abs(F.second_difference(r.expression)).mean() for r in (smooth, rough)]
    assert jitter[0] < 0.6 * jitter[1], jitter
    # The pose part of E_sm: smoother angles, and closer to the (smooth) true ones.
    angle_jitter = [
        np.abs(F.second_difference(r.camera[:, PITCH : ROLL + 1])).mean() for r in (smooth, rough)
    ]
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
    jitter = [np.abs(F.second_difference(r.camera[:, [PITCH, YAW, ROLL]])).mean() for r in (joint, per_frame)]
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


def test_asymmetry_gram_is_a_mirror_invariant_seminorm(ict_model):
    gram = F.identity_asymmetry_gram(ict_model)
    assert gram.shape == (ict_model.n_identity,) * 2 and not gram.flags.writeable
    np.testing.assert_allclose(gram, gram.T, atol=1e-12)
    eigenvalues = np.linalg.eigvalsh(gram)
    assert eigenvalues.min() > -1e-12
    # Direct evaluation on a random identity: mean squared antisymmetric displacement of the surface,
    # the mirror partner of each vertex found by brute force on a sample of vertices.
    identity = np.random.default_rng(0).standard_normal(ict_model.n_identity)
    surface = ict_model.mean[: ict_model.surface_vertex_count].astype(np.float64)
    offset = np.einsum("nvd,n->vd", ict_model.identity_basis[:, : len(surface)].astype(np.float64), identity)
    sample = np.random.default_rng(1).choice(len(surface), 400, replace=False)
    reflected = surface[sample] * [-1.0, 1.0, 1.0]
    partner = np.argmin(((reflected[:, None] - surface[None]) ** 2).sum(-1), axis=1)
    anti = 0.5 * (offset[sample] - offset[partner] * [-1.0, 1.0, 1.0])
    direct = np.mean(np.sum(anti**2, -1))
    assert identity @ gram @ identity == pytest.approx(direct, rel=0.25)  # 400 of ~11k vertices
    # The prior only acts on part of identity space: most directions are nearly symmetric.
    assert eigenvalues[-1] > 100 * np.median(eigenvalues)


def test_asymmetry_prior_keeps_oppositely_turned_halves_together(ict_model):
    # A detector biased towards its frontal mean shape: every landmark of a turned head is pulled a
    # quarter of the way to where it would be at zero yaw. The first half turns left, the second right.
    track = synthetic_track(ict_model, 40, seed=14, max_yaw_deg=25, noise_px=0.3, occluded_per_frame=0)
    yaw = track.camera[:, YAW]
    assert yaw[:20].max() <= 0 <= yaw[20:].min() + np.deg2rad(1)
    basis = F.LandmarkBasis.from_model(ict_model)
    candidates = basis.candidate_points(track.identity, track.expression)
    choice = basis.choose(candidates, track.camera)
    points = candidates[np.arange(40)[:, None], np.arange(68)[None], choice]
    frontal = track.camera.copy()
    frontal[:, YAW] = 0.0
    biased = track.landmarks_px + 0.25 * (F.project_points(points, frontal) - track.clean_px)
    gram = F.identity_asymmetry_gram(ict_model)
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
