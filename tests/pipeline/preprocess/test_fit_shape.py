"""The fit's shape step (Eq. 2 with cameras fixed): the linear problem, its identity Gram shortcut, the
asymmetry prior's Gram matrix, and the structured solver against the reference solver."""

from __future__ import annotations

import numpy as np
import pytest

from model.face3d.camera import project_numpy
from pipeline.preprocess.fit_3dmm import FitConfig, interocular_px
from pipeline.preprocess.fit_reference_lsq import fit_shape_bounded_lsq, stacked_system
from pipeline.preprocess.fit_shape import LandmarkBasis, build_shape_problem, identity_asymmetry_gram
from pipeline.preprocess.fit_structured import fit_shape_admm_structured
from pipeline.preprocess.synthetic_landmarks import synthetic_track


def _problem_at_truth(model, track, config=None, identity_bound_std=3.0):
    """The shape problem of a synthetic track with its true cameras and contour choice."""
    config = config or FitConfig()
    basis = LandmarkBasis.from_model(model)
    choice = basis.choose(basis.candidate_points(track.identity, track.expression), track.camera)
    iod = interocular_px(track.landmarks_px, track.weights)
    id_bounds = np.tile([-identity_bound_std, identity_bound_std], (model.n_identity, 1))
    asymmetry = config.w_asymmetry * identity_asymmetry_gram(model) if config.w_asymmetry > 0 else None
    return build_shape_problem(
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
    scale = np.sqrt(track.weights / (5 * interocular_px(track.landmarks_px, track.weights) ** 2))
    np.testing.assert_allclose(residual, (track.clean_px - track.landmarks_px) * scale[..., None], atol=1e-12)
    # The clean landmarks agree with model.face3d.camera.project on the chosen vertices.
    verts = np.stack([ict_model.vertices(track.identity, e) for e in track.expression])
    basis = LandmarkBasis.from_model(ict_model)
    ids = basis.vertex_ids(
        basis.choose(basis.candidate_points(track.identity, track.expression), track.camera)
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
    basis = LandmarkBasis.from_model(ict_model)
    choice = basis.choose(basis.candidate_points(track.identity, track.expression), track.camera)
    assert choice.any()  # the substitute rows are exercised
    a = problem.jac_identity
    np.testing.assert_allclose(problem.identity_gram, np.einsum("tri,trj->ij", a, a), rtol=1e-10, atol=1e-14)


def test_chosen_points_and_vertex_ids_agree(ict_model):
    track = synthetic_track(ict_model, 6, seed=2, max_yaw_deg=40.0)
    basis = LandmarkBasis.from_model(ict_model)
    candidates = basis.candidate_points(track.identity, track.expression)
    choice = basis.choose(candidates, track.camera)
    assert choice.any() and not choice.all()
    verts = np.stack([ict_model.vertices(track.identity, e) for e in track.expression])
    expected = np.take_along_axis(verts, basis.vertex_ids(choice)[..., None], 1)
    np.testing.assert_allclose(basis.chosen_points(candidates, choice), expected, atol=1e-4)


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
    config = FitConfig(w_smooth=w_smooth, w_asymmetry=w_asymmetry)
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


def test_asymmetry_gram_is_a_mirror_invariant_seminorm(ict_model):
    gram = identity_asymmetry_gram(ict_model)
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
