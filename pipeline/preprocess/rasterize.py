"""Exact z-buffer rasterisation of triangle meshes in image space (one face per pixel): the entry point.

The NMFC conditioning images (paper section 3.2, Eq. 3) need, for every pixel, the nearest visible
triangle of the 3DMM surface. ``rasterize`` returns it PyTorch3D-style as ``Fragments`` from one of
several backends; our two give bitwise the same answer, PyTorch3D the same up to exact ties:

- ``"numba"`` (``rasterize_numba``, CPU): the rules below compiled into one loop over the triangles and
  the pixel centres of each one's bounding box; the fastest on CPU (``benchmarks/rasterize.py`` compares
  the backends, see docs/preprocessing.md).
- ``"torch"`` (``rasterize_torch``, CPU or CUDA): a batched z-buffer in plain PyTorch, vectorised over
  triangles and the centres of their bounding boxes, with no Python loop over pixels or faces.
- ``"pytorch3d"`` (``rasterize_pytorch3d``): an adapter around ``pytorch3d.renderer.mesh.rasterize_meshes``
  with ``faces_per_pixel=1``, for GPU clusters where PyTorch3D is installed (its CPU kernel loops over
  every pixel and face: far slower than ours).
- ``"auto"``: for CUDA tensors PyTorch3D when it is importable, else ``"torch"``; for CPU tensors
  ``"numba"`` when numba is importable (float32 / float64 vertices), else ``"torch"``.

``rasterize_reference`` is the slow, obvious version of the same rules, the tests' oracle. The modules:
``rasterize_types`` (``RasterizeConfig``, ``Fragments``; re-exported here), ``rasterize_triangles`` (the
per-triangle set-up the backends share), one module per backend, and this one, which only dispatches.

Conventions (``model.face3d.camera``): vertices come from ``model.face3d.camera.project``:
``verts_px (B, V, 3)`` with x, y in pixels (the centre of pixel (row i, column j) is at (x, y) = (j, i),
y down) and depth in pixels, larger = nearer the viewer. Rules every backend follows
(``rasterize_reference`` spells them out):

- Sample points are pixel centres.
- Coverage uses edge functions ``E_ab(p) = (p.x - a.x) * (b.y - a.y) - (p.y - a.y) * (b.x - a.x)``,
  always evaluated from the edge's lower vertex id to its higher one and negated as needed, so the two
  triangles sharing an edge see bitwise opposite values: no gaps and no double coverage along shared edges.
  A triangle's own arithmetic (signed area, depth sums) takes its corners in increasing vertex-id order.
- Top-left rule: a centre strictly inside is covered; a centre exactly on an edge is covered only when the
  edge's inward normal points right (+x), or exactly down (+y) for a horizontal edge. Zero-area and
  non-finite triangles cover nothing.
- Depth is the triangle's plane at the centre (exact for an orthographic camera), evaluated in the
  factored form the edge functions allow: with ``w_k = u_k(x) - v_k(y)`` (``u_k = (x - ax_k) * dy_k``,
  ``v_k = (y - ay_k) * dx_k`` for edge k's anchor and orientation-normalised direction) and ``A`` the
  triangle's doubled area, ``depth = (z_0 u_0 + z_1 u_1 + z_2 u_2) / A - (z_0 v_0 + z_1 v_1 + z_2 v_2) / A``
  (summed in that order; ``rasterize_reference`` spells it out). The nearest face (largest depth) wins;
  equal depths go to the lowest face index.
- ``cull_backfaces`` drops triangles whose image-space orientation says they face away from the camera
  (model-space triangles wound counter-clockwise seen from outside, as in ICT, face the camera when
  ``(v1 - v0) x (v2 - v0)`` has positive model z, i.e. clockwise in the y-down image).

PyTorch3D excludes centres exactly on an edge and breaks depth ties its own way, so it can differ from
our backends on exact ties only.
"""

from __future__ import annotations

import importlib.util

import torch

from pipeline.preprocess.rasterize_pytorch3d import rasterize_pytorch3d
from pipeline.preprocess.rasterize_torch import rasterize_torch
from pipeline.preprocess.rasterize_types import Backend, Fragments, RasterizeConfig

__all__ = ["Backend", "Fragments", "RasterizeConfig", "numba_available", "pytorch3d_available", "rasterize"]


def pytorch3d_available() -> bool:
    """Whether PyTorch3D's rasteriser can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("pytorch3d") is not None
    except (ImportError, ValueError):
        return False


def numba_available() -> bool:
    """Whether numba can be imported (without importing it)."""
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def rasterize(
    verts_px: torch.Tensor,
    faces: torch.Tensor,
    image_size: tuple[int, int],
    config: RasterizeConfig | None = None,
) -> Fragments:
    """The nearest triangle at every pixel centre of B images.

    verts_px (B, V, 3) float, image space from ``model.face3d.camera.project`` (x, y pixels; depth pixels,
    larger nearer); faces (F, 3) integer vertex ids shared by the batch; image_size (H, W) pixels;
    config: the settings (``RasterizeConfig()`` when None). Returns ``Fragments`` (see there). Not
    differentiable (conditioning images need none).
    """
    config = RasterizeConfig() if config is None else config
    if verts_px.ndim != 3 or verts_px.shape[-1] != 3:
        raise ValueError(f"verts_px must be (B, V, 3), got {tuple(verts_px.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    height, width = (int(s) for s in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive (H, W), got {image_size}")
    if not verts_px.is_floating_point():
        raise ValueError(f"verts_px must be floating point, got {verts_px.dtype}")
    backend = config.backend
    if backend == "auto":
        if verts_px.is_cuda:
            backend = "pytorch3d" if pytorch3d_available() else "torch"
        else:
            numba_dtype = verts_px.dtype in (torch.float32, torch.float64)
            backend = "numba" if numba_dtype and numba_available() else "torch"
    with torch.no_grad():
        if backend == "numba":
            # Imported here: numba is optional, and importing it takes a while.
            from pipeline.preprocess.rasterize_numba import rasterize_numba

            return rasterize_numba(verts_px, faces, (height, width), config)
        if backend == "torch":
            return rasterize_torch(verts_px, faces, (height, width), config)
        if backend == "pytorch3d":
            fragments = rasterize_pytorch3d(verts_px, faces, (height, width), config.cull_backfaces)
            return Fragments(
                fragments.pix_to_face.to(getattr(torch, config.index_dtype)),
                fragments.zbuf if config.zbuf else None,
                fragments.bary_coords if config.barycentrics else None,
            )
    raise ValueError(
        f"unknown rasterizer backend {config.backend!r}; use 'auto', 'numba', 'torch' or 'pytorch3d'"
    )
