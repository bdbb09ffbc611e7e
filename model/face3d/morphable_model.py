"""The 3D morphable model (3DMM): linear identity and expression bases over one mesh topology.

    verts = mean + sum_k identity[k] * identity_basis[k] + sum_j expression[j] * expression_basis[j]

The default model is the ICT Face Model Light (MIT), loaded either from the packed
``ict_facekit_light.npz`` or imported from a cloned ICT-FaceKit folder of OBJ files
(``model.face3d.ict_facekit``). Any other linear model (BFM, FLAME, LSFM + FaceWarehouse) is brought in by
converting it once to the open on-disk format below and loading that.

On-disk format ``head2head-3dmm/1`` (one ``.npz``; V vertices, F triangles, all arrays required unless
marked optional):

| key                  | shape, dtype        | meaning                                                     |
|----------------------|---------------------|-------------------------------------------------------------|
| format               | () str              | ``head2head-3dmm/1``                                        |
| name                 | () str              | model name, e.g. ``ict-facekit-light``                      |
| units                | () str              | length unit of the vertices, e.g. ``cm``                    |
| mean                 | (V, 3) float32      | mean (neutral) shape; y up, z towards the viewer            |
| identity_basis       | (N_id, V, 3) f32    | identity directions at unit standard deviation: a ~ N(0, I) |
| identity_names       | (N_id,) str         |                                                             |
| expression_basis     | (N_exp, V, 3) f32   | expression directions (blendshape deltas or PCA modes)      |
| expression_names     | (N_exp,) str        |                                                             |
| expression_bounds    | (N_exp, 2) float32  | box constraint [low, high] per expression weight            |
| faces                | (F, 3) int32        | triangles of the visible head surface used for conditioning |
| landmarks            | (68,) int32         | vertex ids of the 68-point Multi-PIE / iBUG markup          |
| jaw_right, jaw_left  | (J,) int32 optional | jawline substitutes for landmarks 0..J-1 and 17-J..16       |
| surface_vertex_count | () int32            | vertices 0..S-1 carry the visible surface (faces index them) |

The visible surface must occupy the first ``surface_vertex_count`` vertices (reorder vertices when
converting a model) so that cropping the model to its surface is a slice, not a gather.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch

FORMAT = "head2head-3dmm/1"
N_LANDMARKS = 68

@dataclass(frozen=True, eq=False)
class MorphableModel:
    """A linear 3DMM in numpy (see the module docstring for every array's meaning and shape)."""

    name: str
    units: str
    mean: np.ndarray  # (V, 3) float32
    identity_basis: np.ndarray  # (N_id, V, 3) float32, unit variance
    identity_names: tuple[str, ...]
    expression_basis: np.ndarray  # (N_exp, V, 3) float32
    expression_names: tuple[str, ...]
    expression_bounds: np.ndarray  # (N_exp, 2) float32
    faces: np.ndarray  # (F, 3) int32, visible surface, indices < surface_vertex_count
    landmarks: np.ndarray  # (68,) int32
    jaw_right: np.ndarray  # (J,) int32, may be empty
    jaw_left: np.ndarray  # (J,) int32, may be empty
    surface_vertex_count: int

    def __post_init__(self) -> None:
        v = self.mean.shape[0]
        if self.mean.shape != (v, 3):
            raise ValueError(f"mean must be (V, 3), got {self.mean.shape}")
        if self.identity_basis.shape[1:] != (v, 3) or self.expression_basis.shape[1:] != (v, 3):
            raise ValueError(
                f"bases must be (N, {v}, 3), got identity {self.identity_basis.shape}, "
                f"expression {self.expression_basis.shape}"
            )
        if len(self.identity_names) != self.n_identity or len(self.expression_names) != self.n_expression:
            raise ValueError("one name per basis vector is required")
        if self.expression_bounds.shape != (self.n_expression, 2):
            raise ValueError(f"expression_bounds must be ({self.n_expression}, 2)")
        if self.landmarks.shape != (N_LANDMARKS,):
            raise ValueError(f"landmarks must be ({N_LANDMARKS},), got {self.landmarks.shape}")
        if not 0 < self.surface_vertex_count <= v:
            raise ValueError(f"surface_vertex_count {self.surface_vertex_count} not in 1..{v}")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"faces must be (F, 3), got {self.faces.shape}")
        if self.faces.min() < 0 or self.faces.max() >= self.surface_vertex_count:
            raise ValueError("faces must index the surface vertices 0..surface_vertex_count-1")
        if self.landmarks.max() >= self.surface_vertex_count:
            raise ValueError("landmark vertices must lie on the visible surface")

    @property
    def n_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def n_identity(self) -> int:
        return self.identity_basis.shape[0]

    @property
    def n_expression(self) -> int:
        return self.expression_basis.shape[0]

    @property
    def normalized_mean_coords(self) -> np.ndarray:
        """NMFC colours: the surface's mean-face xyz scaled per axis to [0, 1]; (S, 3) float32.

        Computed over the visible surface only, so the colours span the full [0, 1] range on it. They
        depend on the mean face alone, never on identity or expression (paper Eq. 3).
        """
        surface = self.mean[: self.surface_vertex_count].astype(np.float64)
        low, high = surface.min(axis=0), surface.max(axis=0)
        return ((surface - low) / (high - low)).astype(np.float32)

    def vertices(
        self, identity: np.ndarray | None = None, expression: np.ndarray | None = None
    ) -> np.ndarray:
        """Vertices for one set of coefficients: identity (N_id,), expression (N_exp,) -> (V, 3) float32."""
        verts = self.mean.astype(np.float64)
        if identity is not None:
            verts = verts + np.tensordot(np.asarray(identity, np.float64), self.identity_basis, axes=1)
        if expression is not None:
            verts = verts + np.tensordot(np.asarray(expression, np.float64), self.expression_basis, axes=1)
        return verts.astype(np.float32)

    def surface(self) -> MorphableModel:
        """The same model restricted to its visible surface vertices (a slice: ids are unchanged)."""
        s = self.surface_vertex_count
        return dataclasses.replace(
            self,
            mean=self.mean[:s],
            identity_basis=self.identity_basis[:, :s],
            expression_basis=self.expression_basis[:, :s],
        )

    def torch_model(
        self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> MorphableModelTorch:
        return MorphableModelTorch(self).to(device=device, dtype=dtype)


class MorphableModelTorch(torch.nn.Module):
    """Batched torch evaluation of a MorphableModel; bases are buffers so ``.to(device)`` moves them."""

    def __init__(self, model: MorphableModel) -> None:
        super().__init__()
        v = model.n_vertices
        self.register_buffer("mean", torch.from_numpy(np.ascontiguousarray(model.mean)))
        # Bases flattened to (N, V*3) so one matmul evaluates a whole batch.
        self.register_buffer(
            "identity_basis", torch.from_numpy(np.ascontiguousarray(model.identity_basis.reshape(-1, v * 3)))
        )
        self.register_buffer(
            "expression_basis",
            torch.from_numpy(np.ascontiguousarray(model.expression_basis.reshape(-1, v * 3))),
        )
        self.register_buffer("landmarks", torch.from_numpy(model.landmarks.astype(np.int64)))

    def forward(
        self, identity: torch.Tensor, expression: torch.Tensor, vertex_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Vertices from coefficients.

        identity (B, N_id), expression (B, N_exp) -> verts (B, V, 3) in model units (or (B, len(ids), 3)
        for ``vertex_ids``, evaluating only those vertices). Differentiable in both coefficient sets.
        """
        if identity.shape[0] != expression.shape[0]:
            raise ValueError(f"batch sizes differ: identity {identity.shape}, expression {expression.shape}")
        mean, id_basis, exp_basis = self.mean, self.identity_basis, self.expression_basis
        if vertex_ids is not None:
            cols = (vertex_ids.to(mean.device)[:, None] * 3 + torch.arange(3, device=mean.device)).reshape(-1)
            mean = mean[vertex_ids]
            id_basis = id_basis[:, cols]
            exp_basis = exp_basis[:, cols]
        identity = identity.to(id_basis.dtype)
        same = len(identity) > 1 and not identity.requires_grad
        if same and torch.equal(identity, identity[:1].expand_as(identity)):
            identity = identity[:1]  # one identity for all frames (a video): its shape is computed once
        shape = mean.reshape(1, -1) + identity @ id_basis  # (1 or B, V * 3)
        offsets = expression.to(exp_basis.dtype) @ exp_basis
        return (shape + offsets).view(expression.shape[0], -1, 3)


def save_morphable_model(model: MorphableModel, path: str | os.PathLike) -> None:
    """Writes ``model`` in the open ``head2head-3dmm/1`` format (uncompressed npz)."""
    np.savez(
        path,
        format=np.array(FORMAT),
        name=np.array(model.name),
        units=np.array(model.units),
        mean=model.mean.astype(np.float32),
        identity_basis=model.identity_basis.astype(np.float32),
        identity_names=np.array(model.identity_names),
        expression_basis=model.expression_basis.astype(np.float32),
        expression_names=np.array(model.expression_names),
        expression_bounds=model.expression_bounds.astype(np.float32),
        faces=model.faces.astype(np.int32),
        landmarks=model.landmarks.astype(np.int32),
        jaw_right=model.jaw_right.astype(np.int32),
        jaw_left=model.jaw_left.astype(np.int32),
        surface_vertex_count=np.array(model.surface_vertex_count, np.int32),
    )


def from_format_npz(data: np.lib.npyio.NpzFile) -> MorphableModel:
    version = str(data["format"])
    if version != FORMAT:
        raise ValueError(f"unsupported 3DMM format {version!r}; this version reads {FORMAT!r}")
    empty = np.zeros(0, np.int32)
    return MorphableModel(
        name=str(data["name"]),
        units=str(data["units"]),
        mean=data["mean"].astype(np.float32),
        identity_basis=data["identity_basis"].astype(np.float32),
        identity_names=tuple(str(n) for n in data["identity_names"]),
        expression_basis=data["expression_basis"].astype(np.float32),
        expression_names=tuple(str(n) for n in data["expression_names"]),
        expression_bounds=data["expression_bounds"].astype(np.float32),
        faces=data["faces"].astype(np.int32),
        landmarks=data["landmarks"].astype(np.int32),
        jaw_right=data["jaw_right"].astype(np.int32) if "jaw_right" in data else empty,
        jaw_left=data["jaw_left"].astype(np.int32) if "jaw_left" in data else empty,
        surface_vertex_count=int(data["surface_vertex_count"]),
    )
