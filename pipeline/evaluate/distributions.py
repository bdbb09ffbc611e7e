"""Distances between two sets of features (generated vs real frames): FID and KID, numpy/scipy.

Features are ``(N, D)`` arrays of any dimension D, or objects with ``embeddings (N, D)`` and
``estimator_id`` attributes (``identity_features.IdentityFeatures``: e.g. "dlib_resnet_v1
sha256:55533b28a95800a5"), whose estimator is then recorded in the result and must be the same on both
sides: distances between features of different networks mean nothing.
The evaluation uses face-identity features (pipeline/evaluate/identity_features.py), not Inception's, so
these numbers are not comparable with image-generation FIDs; the tables say which estimator made them.

- FID (Heusel et al. 2017): the Fréchet distance between the Gaussians fitted to the two sets,
  ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``, with ``scipy.linalg.sqrtm`` handled as the reference
  implementations do (bioinf-jku/TTUR ``fid.py``, mseitzer/pytorch-fid ``calculate_frechet_distance``):
  a non-finite root is recomputed with ``eps`` added to both diagonals, and a complex root keeps its real
  part once its diagonal's imaginary part is below 1e-3. Biased for small N and noisy: with fewer than
  ``FID_MIN_STABLE_SAMPLES`` samples on a side the result is flagged ``unstable``; with N <= D the
  covariances are singular.
- KID (Bińkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimator of the squared MMD with the
  cubic polynomial kernel ``k(x, y) = (x.y / D + 1)^3``, averaged over random subsets of equal size m
  drawn without replacement from each set, as torch-fidelity's ``metric_kid.py`` (after the authors'
  MMD-GAN code). Unbiased: near 0, and possibly slightly negative, for two samples of one distribution;
  usable for the ~100 frames of one identity, where FID is not.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.linalg
from threadpoolctl import ThreadpoolController

FID_MIN_STABLE_SAMPLES = 1000  # the bound (FID's bias falls with N: Chong & Forsyth, CVPR 2020)
FID_EPS = 1e-6  # added to the covariance diagonals when sqrtm fails (TTUR / pytorch-fid's default)
KID_SUBSETS = 100  # torch-fidelity's default
KID_SUBSET_SIZE = 1000  # torch-fidelity's default; clipped to the smaller set's size


def _features(features: Any) -> tuple[np.ndarray, str]:
    """(N, D) array, or an object with ``embeddings`` and ``estimator_id`` (or ``estimator``) ->
    ((N, D) float64, the estimator's id or "")."""
    if hasattr(features, "embeddings"):
        estimator = getattr(features, "estimator_id", None) or getattr(features, "estimator", "")
        return np.asarray(features.embeddings, np.float64), str(estimator)
    array = np.asarray(features, np.float64)
    if array.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {array.shape}")
    return array, ""


def _pair(features_a: Any, features_b: Any) -> tuple[np.ndarray, np.ndarray, str]:
    a, estimator_a = _features(features_a)
    b, estimator_b = _features(features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if estimator_a and estimator_b and estimator_a != estimator_b:
        raise ValueError(f"features of different estimators: {estimator_a!r} vs {estimator_b!r}")
    return a, b, estimator_a or estimator_b


@dataclasses.dataclass(frozen=True)
class GaussianStats:
    """A Gaussian fitted to features: mu (D,) float64, sigma (D, D) float64 (unbiased covariance), count N."""

    mu: np.ndarray
    sigma: np.ndarray
    count: int


def gaussian_stats(features: Any) -> GaussianStats:
    """features (N, D), N >= 2 -> their mean and unbiased covariance (``np.cov``, as TTUR)."""
    array, _ = _features(features)
    if len(array) < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {len(array)}")
    return GaussianStats(array.mean(axis=0), np.atleast_2d(np.cov(array, rowvar=False)), len(array))


@functools.lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    """scipy's sqrtm on one BLAS thread: feature covariances (D of 128-512) gain nothing from BLAS
    threads, and threads waiting on busy cores can make it a hundred times slower."""
    with _blas_controller().limit(limits=1, user_api="blas"), warnings.catch_warnings():
        # A singular product (N <= D) makes sqrtm warn; its root is still usable, checked by the caller.
        warnings.simplefilter("ignore")
        return scipy.linalg.sqrtm(matrix)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = FID_EPS
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): mu (D,), sigma (D, D) -> float
    (squared feature units; >= 0 up to rounding, which can leave about -1e-8 for identical inputs).

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))`` (Dowson & Landau 1982; FID's
    Eq. in Heusel et al. 2017), sqrtm handled as TTUR / pytorch-fid do (module docstring).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    assert mu1.shape == mu2.shape and sigma1.shape == sigma2.shape == (len(mu1), len(mu1)), (
        mu1.shape,
        mu2.shape,
        sigma1.shape,
        sigma2.shape,
    )
    diff = mu1 - mu2
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imaginary = np.abs(np.diagonal(covmean).imag).max()
        if imaginary > 1e-3:
            raise ValueError(f"frechet_distance: sqrtm has an imaginary component of {imaginary:.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


@dataclasses.dataclass(frozen=True)
class FidResult:
    """value: FID (squared feature units, lower is better); count_a, count_b: samples per side; dim: D;
    unstable: fewer than ``FID_MIN_STABLE_SAMPLES`` on a side (report, but do not rank by it);
    estimator: the features' estimator ("" for plain arrays); groups: identities pooled (0: not pooled)."""

    value: float
    count_a: int
    count_b: int
    dim: int
    unstable: bool
    estimator: str = ""
    groups: int = 0


def fid(features_a: Any, features_b: Any, eps: float = FID_EPS) -> FidResult:
    """FID between two feature sets: (N_a, D) and (N_b, D) (or ``IdentityFeatures``), N >= 2 each."""
    a, b, estimator = _pair(features_a, features_b)
    stats_a, stats_b = gaussian_stats(a), gaussian_stats(b)
    value = frechet_distance(stats_a.mu, stats_a.sigma, stats_b.mu, stats_b.sigma, eps)
    unstable = min(len(a), len(b)) < FID_MIN_STABLE_SAMPLES
    return FidResult(value, len(a), len(b), a.shape[1], unstable, estimator)


def fid_pooled(
    features_a: Mapping[str, Any], features_b: Mapping[str, Any], eps: float = FID_EPS
) -> FidResult:
    """FID on features pooled over identities (the issue's protocol: ~100 frames per identity are too few
    for FID): {identity: (N_i, D)} on each side, the same identities -> ``FidResult`` with ``groups``."""
    if set(features_a) != set(features_b) or not features_a:
        raise ValueError(
            f"fid_pooled: identities differ or none: {sorted(features_a)} vs {sorted(features_b)}"
        )
    names = sorted(features_a)
    pairs = [_pair(features_a[n], features_b[n]) for n in names]
    estimators = {e for _, _, e in pairs if e}
    if len(estimators) > 1:
        raise ValueError(f"fid_pooled: features of different estimators: {sorted(estimators)}")
    a = np.concatenate([p[0] for p in pairs])
    b = np.concatenate([p[1] for p in pairs])
    result = fid(a, b, eps)
    return dataclasses.replace(result, estimator=estimators.pop() if estimators else "", groups=len(names))


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """KID's kernel k(x, y) = (x.y / D + coef0)^degree: x (N, D), y (M, D) -> (N, M) float64."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Unbiased squared MMD from kernel matrices (m, m) of two samples of equal size m >= 2:
    mean of k_xx and of k_yy off their diagonals, minus twice the mean of k_xy (Gretton et al. 2012,
    Lemma 6; torch-fidelity's ``mmd2(..., mmd_est="unbiased")``)."""
    m = len(k_xx)
    assert k_xx.shape == k_xy.shape == k_yy.shape == (m, m) and m >= 2, (k_xx.shape, k_xy.shape, k_yy.shape)
    off_xx = k_xx.sum() - np.trace(k_xx)
    off_yy = k_yy.sum() - np.trace(k_yy)
    return float((off_xx + off_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


@dataclasses.dataclass(frozen=True)
class KidResult:
    """mean, std: KID over the subsets (squared-MMD units; lower is better, ~0 for one distribution, may be
    slightly negative); subsets, subset_size: how it was sampled; count_a, count_b, dim: the sets;
    estimator: the features' estimator ("" for plain arrays)."""

    mean: float
    std: float
    subsets: int
    subset_size: int
    count_a: int
    count_b: int
    dim: int
    estimator: str = ""


def kid(
    features_a: Any,
    features_b: Any,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> KidResult:
    """KID between two feature sets (N_a, D), (N_b, D) (or ``IdentityFeatures``): the mean and std over
    ``subsets`` draws of the unbiased polynomial-kernel MMD^2 of m = min(subset_size, N_a, N_b) samples per
    side, drawn without replacement (numpy ``default_rng(seed)``: the same seed, the same subsets)."""
    a, b, estimator = _pair(features_a, features_b)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"kid needs at least 2 samples per side, got {len(a)} and {len(b)}")
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        values[i] = mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(x, y), polynomial_kernel(y, y))
    return KidResult(
        float(values.mean()), float(values.std()), subsets, m, len(a), len(b), a.shape[1], estimator
    )


def kid_per_identity(
    features_a: Mapping[str, Any],
    features_b: Mapping[str, Any],
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    seed: int = 0,
) -> dict[str, KidResult]:
    """KID of each identity: {identity: (N_i, D)} on each side (the identities of ``features_a`` must all
    be in ``features_b``) -> {identity: KidResult}, in sorted identity order."""
    missing = sorted(set(features_a) - set(features_b))
    if missing:
        raise ValueError(f"kid_per_identity: no reference features for {missing}")
    return {n: kid(features_a[n], features_b[n], subsets, subset_size, seed) for n in sorted(features_a)}
