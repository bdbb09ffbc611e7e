"""The shape step of the per-video 3DMM fit: Eq. (2) with the cameras fixed, the problem both shape
solvers (``fit_structured``, ``fit_reference_lsq``) minimise.

With cameras and landmark correspondences fixed the model's projection is linear in (identity,
expression), so the energy is a bounded linear least-squares problem, ``ShapeProblem``, built by
``build_shape_problem`` from the model's rows at the landmark candidates (``LandmarkBasis``).

Jawline: 2D detectors put landmarks 0-7 and 9-16 on the face's silhouette. Each of those has two
candidate vertices (the model's ``landmarks`` and its ``jaw_right``/``jaw_left`` substitute, further back
on the cheek); per frame the one projecting further outwards (the silhouette under that frame's pose) is
used (``LandmarkBasis.choose``), so a turned head slides its contour instead of bending the jaw. A finer
silhouette search was tried and rejected (docs/preprocessing.md, "The 3DMM fit").

Asymmetry prior (``identity_asymmetry_gram``): a 2D detector's landmarks of a turned head are biased in
a way that depends on the sign of the yaw (plausibly its pull towards a frontal mean shape, and the
perspective the camera model leaves out). Within one head pose that bias cannot be told apart from a
lopsided face, so on a clip turned mostly to one side the PCA prior alone lets the identity absorb it,
and the identities of a clip's halves turned to opposite sides drift apart. Penalising the
antisymmetric part of the identity's displacement keeps them together (benchmarks/fit_quality.py's
identity consistency; numbers in docs/preprocessing.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.spatial import cKDTree
from threadpoolctl import ThreadpoolController

from model.face3d.camera import ROLL, SCALE, TX, TY, camera_rotation_numpy
from model.face3d.morphable_model import N_LANDMARKS, MorphableModel


@functools.lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def single_threaded_blas():
    """A context manager running BLAS on one thread, for the fit's batches of small per-frame matrix
    products, where BLAS threads only add overhead. The library scan behind it is done once per process
    (``threadpool_limits`` repeats it on every call, a noticeable share of a short video's fit)."""
    return _blas_controller().limit(limits=1, user_api="blas")


class ShapeWeights(Protocol):
    """The weights of Eq. (2) that the shape problem needs (``fit_3dmm.FitConfig`` has them)."""

    @property
    def w_landmark(self) -> float: ...

    @property
    def w_identity(self) -> float: ...

    @property
    def w_expression(self) -> float: ...

    @property
    def w_smooth(self) -> float: ...


@dataclass(frozen=True, eq=False)
class ShapeProblem:
    """Eq. (2) with cameras fixed: bounded linear least squares in x = (identity, expression).

        E(id, exp) = sum_t |A_t id + B_t exp_t - y_t|^2 + id^T P id + w_exp sum_t |exp_t|^2
                     + w_sm sum_t |exp_{t-1} - 2 exp_t + exp_{t+1}|^2

    with P = ``identity_precision`` = w_id I + ``identity_asymmetry`` (already weighted; None = 0).

    jac_identity A (T, R, N_id), jac_expression B (T, R, N_exp), target y (T, R) (R = 2 * 68 rows,
    already scaled by sqrt of each row's weight); w_* already include the 1/T of the per-frame average;
    bounds (N, 2) [low, high]. The energy is the full weighted Eq. (2) including the landmark weight.
    """

    jac_identity: np.ndarray
    jac_expression: np.ndarray
    target: np.ndarray
    w_identity: float
    w_expression: float
    w_smooth: float
    identity_bounds: np.ndarray
    expression_bounds: np.ndarray
    identity_asymmetry: np.ndarray | None = None  # (N_id, N_id) weighted asymmetry prior, or none
    # A^T A (N_id, N_id) when the builder has it more cheaply than from jac_identity; None: computed.
    identity_gram: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return self.jac_expression.shape[0]

    @functools.cached_property
    def identity_precision(self) -> np.ndarray:
        """The identity prior's quadratic form (N_id, N_id): w_id I + the asymmetry prior."""
        prior = self.w_identity * np.eye(self.jac_identity.shape[-1])
        return prior if self.identity_asymmetry is None else prior + self.identity_asymmetry

    def energy_terms(self, identity: np.ndarray, expression: np.ndarray) -> dict[str, float]:
        """Weighted terms of Eq. (2): identity (N_id,), expression (T, N_exp) -> landmark, prior, smooth."""
        residual = self.residual(identity, expression)
        d2 = second_difference(expression)
        return {
            "landmark": float(np.sum(residual**2)),
            "prior": float(
                identity @ self.identity_precision @ identity + self.w_expression * np.sum(expression**2)
            ),
            "smooth": float(self.w_smooth * np.sum(d2**2)),
        }

    def energy(self, identity: np.ndarray, expression: np.ndarray) -> float:
        return sum(self.energy_terms(identity, expression).values())

    def residual(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """Weighted landmark residual rows (T, R)."""
        pred = self.jac_identity @ identity + np.matmul(self.jac_expression, expression[..., None])[..., 0]
        return pred - self.target

    def is_feasible(self, identity: np.ndarray, expression: np.ndarray, atol: float = 1e-9) -> bool:
        lo_i, hi_i = self.identity_bounds.T
        lo_e, hi_e = self.expression_bounds.T
        return bool(
            np.all(identity >= lo_i - atol)
            and np.all(identity <= hi_i + atol)
            and np.all(expression >= lo_e - atol)
            and np.all(expression <= hi_e + atol)
        )

    @functools.cached_property
    def gram(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Normal-equation blocks of the landmark term: A^T A (N_id, N_id), B_t^T A (T, N_exp, N_id),
        B_t^T B_t (T, N_exp, N_exp), A^T y (N_id,), B_t^T y_t (T, N_exp)."""
        a, b, y = self.jac_identity, self.jac_expression, self.target
        bt = b.transpose(0, 2, 1)
        g_aa = self.identity_gram
        if g_aa is None:
            g_aa = np.einsum("tri,trj->ij", a, a, optimize=True)
        g_ea = np.matmul(bt, a)
        g_ee = np.matmul(bt, b)
        r_a = np.einsum("tri,tr->i", a, y, optimize=True)
        r_e = np.matmul(bt, y[..., None])[..., 0]
        return g_aa, g_ea, g_ee, r_a, r_e


def second_difference(x: np.ndarray) -> np.ndarray:
    """x (T, ...) -> x[t-1] - 2 x[t] + x[t+1] for t = 1..T-2: (T-2, ...)."""
    return x[:-2] - 2.0 * x[1:-1] + x[2:]


@dataclass(frozen=True, eq=False)
class LandmarkBasis:
    """The model restricted to landmark candidates: rows of [mean | identity | expression] per vertex.

    standard_ids (68,) and alternative_ids (68,) (equal where a landmark has no substitute);
    side (68,) -1 for the subject's right jaw (model x < 0), +1 left, 0 none; mean (68, 2, 3),
    identity (68, 2, 3, N_id), expression (68, 2, 3, N_exp): [:, 0] standard, [:, 1] alternative.
    """

    standard_ids: np.ndarray
    alternative_ids: np.ndarray
    side: np.ndarray
    mean: np.ndarray
    identity: np.ndarray
    expression: np.ndarray

    @classmethod
    def from_model(cls, model: MorphableModel, jaw_contour: bool = True) -> LandmarkBasis:
        standard = model.landmarks.astype(np.int64)
        alternative = standard.copy()
        side = np.zeros(N_LANDMARKS, np.int64)
        j = len(model.jaw_right)
        if jaw_contour and j:
            alternative[:j] = model.jaw_right
            alternative[17 - j : 17] = model.jaw_left
            side[:j], side[17 - j : 17] = -1, 1
            side[alternative == standard] = 0
        ids = np.stack([standard, alternative], 1)  # (68, 2)
        return cls(
            standard_ids=standard,
            alternative_ids=alternative,
            side=side,
            mean=model.mean[ids].astype(np.float64),
            identity=np.moveaxis(model.identity_basis[:, ids], 0, -1).astype(np.float64),
            expression=np.moveaxis(model.expression_basis[:, ids], 0, -1).astype(np.float64),
        )

    def candidate_points(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """Model-space candidates per frame: identity (N_id,), expression (T, N_exp) -> (T, 68, 2, 3)."""
        base = self.mean + self.identity @ identity  # (68, 2, 3)
        return base + np.einsum("kcde,te->tkcd", self.expression, expression, optimize=True)

    def choose(self, candidates: np.ndarray, camera: np.ndarray) -> np.ndarray:
        """Silhouette choice per frame: candidates (T, 68, 2, 3), camera (T, 7) -> choice (T, 68) in {0, 1}.

        Outwards is measured along the face's own horizontal axis in the image (roll removed), so a
        tilted head does not flip the choice.
        """
        rotation = camera_rotation_numpy(camera)
        roll = camera[:, ROLL]
        c, s = np.cos(roll), np.sin(roll)
        # First row of Rz(roll)^T R: the horizontal image axis of the un-rolled face.
        axis = c[:, None] * rotation[:, 0] + s[:, None] * rotation[:, 1]  # (T, 3)
        horizontal = np.einsum("tkcd,td->tkc", candidates, axis)
        outward = horizontal * self.side[None, :, None]
        choice = (outward[..., 1] > outward[..., 0]).astype(np.int64)
        return np.where(self.side[None] == 0, 0, choice)

    def vertex_ids(self, choice: np.ndarray) -> np.ndarray:
        """The vertex used per landmark: choice (T, 68) in {0, 1} -> vertex ids (T, 68) int64."""
        return np.where(choice == 1, self.alternative_ids[None], self.standard_ids[None])

    def chosen_points(self, candidates: np.ndarray, choice: np.ndarray) -> np.ndarray:
        """The chosen candidate per landmark: candidates (T, 68, 2, 3), choice (T, 68) -> (T, 68, 3)."""
        n_frames = len(candidates)
        return candidates[np.arange(n_frames)[:, None], np.arange(N_LANDMARKS)[None], choice]


# identity_asymmetry_gram per model (the model is kept referenced, so its id stays unique).
_ASYMMETRY_CACHE: dict[int, tuple[MorphableModel, np.ndarray]] = {}


def identity_asymmetry_gram(model: MorphableModel) -> np.ndarray:
    """G (N_id, N_id) with id^T G id = mean over surface vertices of |(U id - mirror(U id)) / 2|^2, cm^2.

    mirror(v) reflects a displacement field in the model's x = 0 plane (vertex i takes the reflected
    offset of the vertex nearest to i's mirror image in the mean shape), so G measures the antisymmetric
    part of the identity's displacement. Computed once per model (a nearest-neighbour search over the
    surface) and cached.
    """
    cached = _ASYMMETRY_CACHE.get(id(model))
    if cached is not None and cached[0] is model:
        return cached[1]
    surface = model.mean[: model.surface_vertex_count].astype(np.float64)
    _, mirror = cKDTree(surface).query(surface * np.array([-1.0, 1.0, 1.0]))
    basis = model.identity_basis[:, : model.surface_vertex_count].astype(np.float64)  # (N_id, S, 3)
    anti = 0.5 * (basis - basis[:, mirror] * np.array([-1.0, 1.0, 1.0]))
    anti = anti.reshape(len(basis), -1)
    gram = anti @ anti.T / len(surface)
    gram.setflags(write=False)
    if len(_ASYMMETRY_CACHE) >= 4:
        _ASYMMETRY_CACHE.clear()
    _ASYMMETRY_CACHE[id(model)] = (model, gram)
    return gram


def build_shape_problem(
    basis: LandmarkBasis,
    choice: np.ndarray,
    camera: np.ndarray,
    landmarks_px: np.ndarray,
    weights: np.ndarray,
    iod_px: float,
    config: ShapeWeights,
    identity_bounds: np.ndarray,
    expression_bounds: np.ndarray,
    identity_asymmetry: np.ndarray | None = None,
) -> ShapeProblem:
    """Linearises the projection for fixed cameras and contour choice (exact: the model is linear).

    x_tk = s_t P R_t (mean_k + U_k id + W_k exp_t) + t_t with P = diag(1, -1) on the first two rows.
    choice (T, 68) from ``basis.choose``, camera (T, 7), landmarks_px (T, 68, 2) (NaN read as 0 where the
    weight is 0), weights (T, 68), iod_px the normaliser d, config the weights of Eq. (2) (per-frame
    averages), identity_bounds (N_id, 2), expression_bounds (N_exp, 2), identity_asymmetry (N_id, N_id)
    already weighted, or None.
    """
    n_frames = camera.shape[0]
    rotation = camera_rotation_numpy(camera)
    proj = rotation[:, :2] * camera[:, SCALE, None, None] * np.array([1.0, -1.0])[None, :, None]  # (T,2,3)
    sqrt_w = np.sqrt(config.w_landmark * np.repeat(weights, 2, axis=1) / (n_frames * iod_px**2))  # (T, R)
    jaw = np.flatnonzero(basis.side != 0)
    use_alt = choice[:, jaw, None] == 1  # (T, J, 1)

    def project_basis(rows: np.ndarray, row_weight: np.ndarray) -> np.ndarray:
        """Basis rows (68, 2, 3, N) -> s P R rows (T, 2 * 68, N) times row_weight (T, 2 * 68), contour
        choice applied. One (T, 3) x (3, 68 N) product per image axis, written in place: a batched
        einsum over frames is several times slower here (it reshapes through copies)."""
        n = rows.shape[-1]
        standard = np.ascontiguousarray(rows[:, 0].transpose(1, 0, 2)).reshape(3, -1)  # (3, 68 N)
        alternative = np.ascontiguousarray(rows[jaw, 1].transpose(1, 0, 2)).reshape(3, -1)  # (3, J N)
        out = np.empty((n_frames, N_LANDMARKS, 2, n))
        for axis in range(2):
            out[:, :, axis] = (proj[:, axis] @ standard).reshape(n_frames, N_LANDMARKS, n)
            alt = (proj[:, axis] @ alternative).reshape(n_frames, len(jaw), n)
            out[:, jaw, axis] = np.where(use_alt, alt, out[:, jaw, axis])
        out = out.reshape(n_frames, 2 * N_LANDMARKS, n)
        out *= row_weight[..., None]
        return out

    # A^T A = sum_t A_t^T A_t without the (T * 136, N_id) product: row (k, axis) of A_t is
    # sqrt_w * P_t[axis] U_kv (U_kv the (3, N_id) basis rows of landmark k's chosen candidate v), so the
    # sum is sum_{k, v} U_kv^T M_kv U_kv with M_kv = sum over frames choosing v of sum_axis w P^T P (3x3).
    row_weight = (sqrt_w**2).reshape(n_frames, N_LANDMARKS, 2)
    frame_blocks = np.einsum("tka,tac,tad->tkcd", row_weight, proj, proj, optimize=True)  # (T, 68, 3, 3)
    chosen = np.stack([choice == 0, choice == 1], -1).astype(np.float64)  # (T, 68, 2)
    blocks = np.einsum("tkv,tkcd->kvcd", chosen, frame_blocks, optimize=True)  # (68, 2, 3, 3)
    rows = basis.identity.reshape(-1, basis.identity.shape[-1])  # (68 * 2 * 3, N_id)
    identity_gram = rows.T @ np.matmul(blocks, basis.identity).reshape(rows.shape)

    offset = project_basis(basis.mean[..., None], np.ones_like(sqrt_w))[..., 0]
    offset += np.tile(camera[:, [TX, TY]], N_LANDMARKS)
    target = np.nan_to_num(landmarks_px).reshape(n_frames, -1) - offset
    return ShapeProblem(
        jac_identity=project_basis(basis.identity, sqrt_w),
        jac_expression=project_basis(basis.expression, sqrt_w),
        target=target * sqrt_w,
        w_identity=config.w_identity,
        w_expression=config.w_expression / n_frames,
        w_smooth=config.w_smooth / n_frames,
        identity_bounds=identity_bounds,
        expression_bounds=expression_bounds,
        identity_asymmetry=identity_asymmetry,
        identity_gram=identity_gram,
    )


__all__ = [
    "LandmarkBasis",
    "ShapeProblem",
    "ShapeWeights",
    "build_shape_problem",
    "identity_asymmetry_gram",
    "second_difference",
    "single_threaded_blas",
]
