"""Reference shape solver: the joint bounded linear least-squares problem of Eq. (2) (cameras fixed),
solved by a generic method, Coleman and Li's trust-region reflective algorithm
(``scipy.optimize.lsq_linear(method="trf")``, the method the paper used).

Slow (benchmarks/fit_3dmm.py times both solvers) and structure-blind on purpose: it is the obvious
reference the structured solver (``pipeline.preprocess.fit_structured``) is tested against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from scipy.optimize import lsq_linear

if TYPE_CHECKING:
    from pipeline.preprocess.fit_shape import ShapeProblem


def stacked_system(problem: ShapeProblem) -> tuple[sp.csr_matrix, np.ndarray]:
    """The energy as |M x - b|^2 with x = [identity (N_id), expression (T * N_exp), frame-major].

    Rows: landmark rows of every frame, L^T with L L^T = ``problem.identity_precision`` (w_id I plus the
    asymmetry prior), sqrt(w_exp) I, sqrt(w_sm) (D2 kron I) with D2 the (T-2, T) second-difference
    matrix. -> M (rows, N_id + T N_exp) CSR, b (rows,).
    """
    a, b_exp, y = problem.jac_identity, problem.jac_expression, problem.target
    t, r, n_id = a.shape
    n_exp = b_exp.shape[-1]
    data = sp.hstack([sp.csr_matrix(a.reshape(t * r, n_id)), sp.block_diag(list(b_exp), format="csr")])
    blocks = [
        data,
        sp.hstack([np.linalg.cholesky(problem.identity_precision).T, sp.csr_matrix((n_id, t * n_exp))]),
    ]
    blocks.append(
        sp.hstack([sp.csr_matrix((t * n_exp, n_id)), np.sqrt(problem.w_expression) * sp.identity(t * n_exp)])
    )
    rhs = [y.reshape(-1), np.zeros(n_id), np.zeros(t * n_exp)]
    if t >= 3 and problem.w_smooth > 0:
        d2 = sp.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(t - 2, t))
        smooth = np.sqrt(problem.w_smooth) * sp.kron(d2, sp.identity(n_exp))
        blocks.append(sp.hstack([sp.csr_matrix(((t - 2) * n_exp, n_id)), smooth]))
        rhs.append(np.zeros((t - 2) * n_exp))
    return sp.vstack(blocks, format="csr"), np.concatenate(rhs)


def fit_shape_bounded_lsq(
    problem: ShapeProblem, identity: np.ndarray, expression: np.ndarray, tol: float = 1e-10
) -> tuple[np.ndarray, np.ndarray, int]:
    """Joint bounded LSQ by trust-region reflective (lsq_linear, LSMR inner solves).

    identity (N_id,), expression (T, N_exp) are ignored starting values (lsq_linear starts inside the
    box on its own) -> (identity (N_id,), expression (T, N_exp), iterations).
    """
    del identity, expression  # lsq_linear has no warm start
    matrix, rhs = stacked_system(problem)
    n_id = problem.jac_identity.shape[-1]
    t, n_exp = problem.n_frames, problem.jac_expression.shape[-1]
    lower = np.concatenate([problem.identity_bounds[:, 0], np.tile(problem.expression_bounds[:, 0], t)])
    upper = np.concatenate([problem.identity_bounds[:, 1], np.tile(problem.expression_bounds[:, 1], t)])
    # lsq_linear's defaults (tol 1e-10, LSMR tolerance chosen per iteration) solve these problems to
    # ~1e-9 relative energy; tighter tolerances only make it slower.
    result = lsq_linear(matrix, rhs, bounds=(lower, upper), method="trf", tol=tol, max_iter=1000)
    x = np.clip(result.x, lower, upper)
    return x[:n_id], x[n_id:].reshape(t, n_exp), int(result.nit)
