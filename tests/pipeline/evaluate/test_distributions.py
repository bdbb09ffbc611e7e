from __future__ import annotations

import types

import numpy as np
import pytest
import scipy.linalg

from pipeline.evaluate.distributions import (
    FID_MIN_STABLE_SAMPLES,
    fid,
    fid_pooled,
    frechet_distance,
    gaussian_stats,
    kid,
    kid_per_identity,
    mmd2_unbiased,
    polynomial_kernel,
)


def test_frechet_distance_hand_checked():
    # 1-D: N(0, 1) vs N(1, 4): 1 + 1 + 4 - 2 * sqrt(1 * 4) = 2.
    assert frechet_distance(np.zeros(1), np.eye(1), np.ones(1), 4 * np.eye(1)) == pytest.approx(2.0)
    # 2-D diagonal: |(1, 2)|^2 + sum (sqrt(a) - sqrt(b))^2 = 5 + (1 - 3)^2 + (2 - 1)^2 = 10.
    value = frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 2.0]), np.diag([9.0, 1.0]))
    assert value == pytest.approx(10.0)
    # S1 = I against a full S2 (eigenvalues 1 and 9): tr(I + S2 - 2 S2^(1/2)) = sum (1 - sqrt(l))^2 = 4.
    rotation = np.array([[np.cos(0.4), -np.sin(0.4)], [np.sin(0.4), np.cos(0.4)]])
    s2 = rotation @ np.diag([1.0, 9.0]) @ rotation.T
    assert frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), s2) == pytest.approx(4.0)


def test_frechet_distance_matches_the_eigenvalue_form_on_random_covariances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    # tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)) = sum of sqrt of the eigenvalues of S1 S2.
    root = scipy.linalg.sqrtm(s1).real
    expected = (
        (mu1 - mu2) @ (mu1 - mu2)
        + np.trace(s1 + s2)
        - 2 * np.sqrt(np.linalg.eigvalsh(root @ s2 @ root)).sum()
    )
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_fid_of_samples_approaches_the_closed_form_and_flags_small_sets():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(20000, 2)) * [1.0, 2.0]
    b = rng.normal(size=(20000, 2)) * [3.0, 1.0] + [1.0, 2.0]
    result = fid(a, b)
    assert result.value == pytest.approx(10.0, rel=0.03)
    assert (result.count_a, result.count_b, result.dim, result.unstable) == (20000, 20000, 2, False)
    small = fid(a[: FID_MIN_STABLE_SAMPLES - 1], b)
    assert small.unstable and not fid(a[:FID_MIN_STABLE_SAMPLES], b[:FID_MIN_STABLE_SAMPLES]).unstable
    stats = gaussian_stats(a)
    assert stats.mu.shape == (2,) and stats.sigma.shape == (2, 2) and stats.count == 20000


def test_fid_identical_sets_near_zero_also_with_singular_covariances():
    rng = np.random.default_rng(2)
    for n in (24, 200):  # 24 samples in 128-D: a rank-23 covariance
        x = rng.normal(size=(n, 128)) * 0.1
        assert abs(fid(x, x).value) < 1e-6
        assert fid(x, x + 0.05).value > 0.05**2 * 128 * 0.99  # a mean shift of 0.05 in every dimension


def reference_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Slow and obvious: the unbiased MMD^2 U-statistic of Gretton et al. 2012 (Lemma 6), kernel by kernel."""
    d = x.shape[1]
    k = lambda u, v: (u @ v / d + 1.0) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_mmd2_matches_the_reference_and_kid_uses_the_cubic_kernel():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(7, 4)), rng.normal(size=(7, 4)) + 0.5
    fast = mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(x, y), polynomial_kernel(y, y))
    assert fast == pytest.approx(reference_mmd2_unbiased(x, y), rel=1e-10)
    # With subset_size = the set size every subset is the whole set (reordered): KID = that MMD^2, std 0.
    result = kid(x, y, subsets=5, subset_size=100)
    assert result.mean == pytest.approx(fast, rel=1e-10) and result.std == pytest.approx(0.0, abs=1e-12)
    assert (result.subset_size, result.count_a, result.dim) == (7, 7, 4)


def test_kid_is_unbiased_on_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(4)
    values = [kid(rng.normal(size=(60, 16)), rng.normal(size=(60, 16)), subsets=1).mean for _ in range(60)]
    spread = np.std(values) / np.sqrt(len(values))
    assert abs(np.mean(values)) < 3 * spread  # an unbiased estimator of 0
    assert min(values) < 0  # so single draws go below 0
    shifted = kid(rng.normal(size=(60, 16)), rng.normal(size=(60, 16)) + 0.5, subsets=10)
    assert shifted.mean > 20 * spread


def test_pooled_fid_and_per_identity_kid_keep_estimators_apart():
    rng = np.random.default_rng(5)
    feats = lambda n, e: types.SimpleNamespace(embeddings=rng.normal(size=(n, 8)), estimator=e)  # noqa: E731
    a = {"p1": feats(30, "dlib_resnet_v1 x"), "p2": feats(20, "dlib_resnet_v1 x")}
    b = {"p1": feats(30, "dlib_resnet_v1 x"), "p2": feats(25, "dlib_resnet_v1 x")}
    pooled = fid_pooled(a, b)
    plain = fid(
        np.concatenate([a["p1"].embeddings, a["p2"].embeddings]),
        np.concatenate([b["p1"].embeddings, b["p2"].embeddings]),
    )
    assert pooled.value == pytest.approx(plain.value) and pooled.groups == 2 and pooled.unstable
    assert pooled.estimator == "dlib_resnet_v1 x" and (pooled.count_a, pooled.count_b) == (50, 55)
    per_identity = kid_per_identity(a, b, subsets=3)
    assert list(per_identity) == ["p1", "p2"] and per_identity["p2"].subset_size == 20
    with pytest.raises(ValueError, match="different estimators"):
        fid(a["p1"], feats(30, "arcface y"))
    with pytest.raises(ValueError, match="identities differ"):
        fid_pooled(a, {"p1": b["p1"]})
    with pytest.raises(ValueError, match="dimensions differ"):
        kid(np.zeros((5, 3)), np.zeros((5, 4)))
