"""Fast shape solver for Eq. (2) with cameras fixed: consensus ADMM on the problem's structure.

The bounded least-squares problem of ``ShapeProblem`` (one identity block shared by all frames,
per-frame expression blocks, coupled across frames only by the banded second-difference term) is split
into three parts that are each cheap to minimise exactly:

    f(id, exp)  landmark term + priors: an "arrow" Hessian (identity block, frame blocks, identity-frame
                couplings) solved by a Schur complement on the identity, with every per-frame 53x53
                factor computed once per call, batched;
    g(exp)      smoothness: the same pentadiagonal (T, T) matrix for each expression coefficient, one
                banded Cholesky per coefficient;
    h(id, exp)  the box constraints: a clip.

ADMM (Boyd et al. 2011, section 7.1, consensus form, over-relaxed) alternates the three proximal steps
with per-coordinate penalties rho_i = rho * H_ii (diagonal scaling of the problem). The returned iterate
(the box copy) is feasible by construction. Everything per iteration is a batched matrix-vector product
or banded solve, O(T (N_exp^2 + N_exp N_id)) flops and no Python loop over frames; the one-off cost is
the per-frame Gram blocks and 53x53 inverses. The default tolerance is checked against a much tighter
run by benchmarks/fit_3dmm.py (``structured_gap_vs_tight``).
A fit's later rounds pass the previous round's multipliers back in (``AdmmMultipliers``): the cameras
move little between rounds, so ADMM starts near its new solution and needs fewer iterations for the
same fit (docs/preprocessing.md, "The 3DMM fit").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.linalg import cholesky_banded
from scipy.linalg.lapack import dpbtrs

from pipeline.preprocess.fit_shape import single_threaded_blas

if TYPE_CHECKING:
    from pipeline.preprocess.fit_shape import ShapeProblem


@dataclass(frozen=True)
class StructuredSolverConfig:
    """ADMM settings: penalty scale, over-relaxation, iteration cap and relative stopping tolerance."""

    rho: float = 0.1  # times each coordinate's Hessian diagonal
    relaxation: float = 1.6  # over-relaxation in (1, 2), Boyd et al. section 3.4.3
    max_iterations: int = 400
    tolerance: float = 1e-3  # on primal and dual residuals, relative to the iterate's scale


class _ArrowSolver:
    """Solves (H_f + diag(rho)) x = r for the landmark+prior Hessian H_f, identity by Schur complement.

    H_f = 2 [[G_aa + P_id, G_ea^T], [G_ea, G_ee + w_exp I]] with G_ea (T, N_exp, N_id) and G_ee
    (T, N_exp, N_exp) per frame (identity-frame couplings, frame blocks), P_id (N_id, N_id) the identity
    prior's quadratic form; rho_a (N_id,), rho_e (T, N_exp).
    """

    def __init__(self, g_aa, g_ea, g_ee, prior_id, w_exp, rho_a, rho_e):
        n_exp = g_ee.shape[-1]
        frame = 2.0 * (g_ee + w_exp * np.eye(n_exp)) + rho_e[:, :, None] * np.eye(n_exp)
        t, n_id = g_ea.shape[0], g_ea.shape[-1]
        frame_inv = np.linalg.inv(frame)  # (T, N_exp, N_exp)
        coupling = 2.0 * g_ea  # (T, N_exp, N_id)
        y = np.matmul(frame_inv, coupling)  # (T, N_exp, N_id)
        schur = 2.0 * (g_aa + prior_id) + np.diag(rho_a)
        schur -= coupling.reshape(-1, n_id).T @ y.reshape(-1, n_id)
        self.schur_inv = np.linalg.inv(schur)
        # The per-iteration products only read these: single precision halves the memory traffic that
        # bounds their speed; ADMM tolerates the ~1e-7 relative error of an inexact proximal step (the
        # energy is always evaluated in double precision on the returned, feasible iterate).
        self.frame_inv = frame_inv.astype(np.float32)
        self.coupling_t = np.ascontiguousarray(
            coupling.reshape(-1, n_id).astype(np.float32)
        )  # (T N_exp, N_id)
        self.y = np.ascontiguousarray(y.reshape(-1, n_id).astype(np.float32))
        self.shape = (t, g_ee.shape[-1])

    def solve(self, r_a: np.ndarray, r_e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = np.einsum("tij,tj->ti", self.frame_inv, r_e.astype(np.float32))
        x_a = self.schur_inv @ (r_a - (q.reshape(-1) @ self.coupling_t).astype(np.float64))
        x_e = q.astype(np.float64) - (self.y @ x_a.astype(np.float32)).reshape(self.shape)
        return x_a, x_e


class _SmoothSolver:
    """Solves (2 w_sm D2^T D2 + diag(rho_e[:, j])) x_j = r_j for every expression coefficient j."""

    def __init__(self, w_smooth: float, rho_e: np.ndarray):
        t, n_exp = rho_e.shape
        # Upper banded storage (row 2 = diagonal) of 2 w_sm D2^T D2: each row (1, -2, 1) of D2 adds the
        # outer product of (1, -2, 1) to a 3x3 window of the pentadiagonal matrix.
        stencil = np.array([1.0, -2.0, 1.0])
        band = np.zeros((3, t))
        for start in range(t - 2):
            for k in range(3):  # superdiagonal offset
                band[2 - k, start + k : start + 3] += stencil[: 3 - k] * stencil[k:]
        band *= 2.0 * w_smooth
        self.factors = []
        for j in range(n_exp):
            b = band.copy()
            b[2] += rho_e[:, j]
            self.factors.append(cholesky_banded(b))

    def solve(self, r_e: np.ndarray) -> np.ndarray:
        out = np.empty_like(r_e)
        for j, factor in enumerate(self.factors):
            out[:, j], info = dpbtrs(factor, r_e[:, j])
            assert info == 0, f"dpbtrs failed with info={info}"
        return out


@dataclass
class AdmmMultipliers:
    """ADMM's Lagrange multipliers (unscaled) of the consensus constraints x = z: identity (N_id,), the
    landmark copy's and the smoothness copy's expressions (T, N_exp). Carried from one shape step to
    the next of a fit, they start ADMM near its previous solution: the cameras move little between
    rounds, so the multipliers of the box constraints that bind barely change."""

    identity: np.ndarray
    landmark_expression: np.ndarray
    smooth_expression: np.ndarray


def fit_shape_admm_structured(
    problem: ShapeProblem,
    identity: np.ndarray,
    expression: np.ndarray,
    config: StructuredSolverConfig = StructuredSolverConfig(),
    multipliers: AdmmMultipliers | None = None,
) -> tuple[np.ndarray, np.ndarray, int, AdmmMultipliers]:
    """Minimises ``problem.energy`` within its bounds: identity (N_id,), expression (T, N_exp) starting
    values (projected into the box), multipliers from an earlier call on a similar problem (None: zero)
    -> (identity, expression, ADMM iterations, final multipliers). Inputs are not modified.
    Single-threaded BLAS (batches of small per-frame products, where threads only add overhead)."""
    with single_threaded_blas():
        return _admm(problem, identity, expression, config, multipliers)


def _admm(problem, identity, expression, config, multipliers):
    g_aa, g_ea, g_ee, r_a, r_e = problem.gram
    lo_a, hi_a = problem.identity_bounds.T
    lo_e, hi_e = problem.expression_bounds.T
    prior_id, w_exp, w_sm = problem.identity_precision, problem.w_expression, problem.w_smooth
    t, n_exp = r_e.shape

    # Diagonal of the full Hessian 2 (G + priors + smoothness) sets the per-coordinate penalties.
    smooth_diag = np.zeros(t)
    for k, c in enumerate((1.0, 4.0, 1.0)):  # D2^T D2's diagonal: sum of squared stencil entries
        smooth_diag[k : t - 2 + k] += c
    diag_a = 2.0 * (np.diagonal(g_aa) + np.diagonal(prior_id))
    diag_e = 2.0 * (np.diagonal(g_ee, axis1=1, axis2=2) + w_exp + w_sm * smooth_diag[:, None])
    rho_a, rho_e = config.rho * diag_a, config.rho * diag_e
    arrow = _ArrowSolver(g_aa, g_ea, g_ee, prior_id, w_exp, rho_a, rho_e)
    smooth = _SmoothSolver(w_sm, rho_e) if w_sm > 0 and t >= 3 else None

    h_a, h_e = 2.0 * r_a, 2.0 * r_e
    z_a = np.clip(identity, lo_a, hi_a)
    z_e = np.clip(expression, lo_e, hi_e)
    if multipliers is None:
        u_a, u1_e, u2_e = np.zeros_like(z_a), np.zeros_like(z_e), np.zeros_like(z_e)
    else:  # scaled form u = y / rho, under this problem's penalties
        u_a = multipliers.identity / rho_a
        u1_e = multipliers.landmark_expression / rho_e
        u2_e = multipliers.smooth_expression / rho_e
    relax = config.relaxation
    iterations = 0
    for iterations in range(1, config.max_iterations + 1):  # noqa: B007
        x_a, x1_e = arrow.solve(h_a + rho_a * (z_a - u_a), h_e + rho_e * (z_e - u1_e))
        x_a = relax * x_a + (1 - relax) * z_a
        x1_e = relax * x1_e + (1 - relax) * z_e
        if smooth is not None:
            x2_e = smooth.solve(rho_e * (z_e - u2_e))
            x2_e = relax * x2_e + (1 - relax) * z_e
            new_z_e = np.clip(0.5 * (x1_e + u1_e + x2_e + u2_e), lo_e, hi_e)
        else:
            x2_e = None
            new_z_e = np.clip(x1_e + u1_e, lo_e, hi_e)
        new_z_a = np.clip(x_a + u_a, lo_a, hi_a)
        u_a += x_a - new_z_a
        u1_e += x1_e - new_z_e
        primal = np.sum((x_a - new_z_a) ** 2) + np.sum((x1_e - new_z_e) ** 2)
        if x2_e is not None:
            u2_e += x2_e - new_z_e
            primal += np.sum((x2_e - new_z_e) ** 2)
        dual = np.sum((new_z_a - z_a) ** 2) + np.sum((new_z_e - z_e) ** 2)
        z_a, z_e = new_z_a, new_z_e
        scale = np.sum(z_a**2) + np.sum(z_e**2) + 1e-12
        if primal <= config.tolerance**2 * scale and dual <= config.tolerance**2 * scale:
            break
    return z_a, z_e, iterations, AdmmMultipliers(rho_a * u_a, rho_e * u1_e, rho_e * u2_e)
