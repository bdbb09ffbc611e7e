"""Exact z-buffer rasterisation of triangle meshes in image space (one face per pixel).

The NMFC conditioning images (paper section 3.2, Eq. 3) need, for every pixel, the nearest visible
triangle of the 3DMM surface. ``rasterize`` returns it PyTorch3D-style as ``Fragments``; our two
backends give bitwise the same answer, PyTorch3D the same up to exact ties:

- ``"numba"``: the same rules compiled with numba (``pipeline.preprocess.rasterize_numba``; CPU): one loop
  over the
  triangles and the pixel centres of each one's bounding box, bitwise equal to ``"torch"`` and about 3x
  faster on CPU (``benchmarks/rasterize.py``: 508 against 178 frames/s on one thread at 256 px).
- ``"torch"``: our batched z-buffer in plain PyTorch (CPU or CUDA). Every triangle enumerates the pixel
  centres inside its bounding box (a few pixels for a face mesh at 256 px), evaluates its three edge
  functions on them in one vectorised pass, and an exact z-buffer picks the winner per pixel with one
  ``scatter_reduce`` over a packed (depth, face) key. No Python loop over pixels or faces.
- ``"pytorch3d"``: ``pytorch3d.renderer.mesh.rasterize_meshes`` with ``faces_per_pixel=1`` (installed on
  GPU clusters; its CPU kernel is a naive per-pixel-per-face loop, ~2000x slower than ours).
- ``"auto"``: for CUDA tensors PyTorch3D when it is importable, else ``"torch"``; for CPU tensors
  ``"numba"`` when numba is importable (float32 / float64 vertices), else ``"torch"``.

Conventions (``model.face3d.camera``): vertices come from ``model.face3d.camera.project``: ``verts_px (B, V,
3)`` with
x, y in pixels (the centre of pixel (row i, column j) is at (x, y) = (j, i), y down) and depth in pixels,
larger = nearer the viewer. Rules every backend follows (``rasterize_reference`` spells them out):

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

PyTorch3D excludes centres exactly on an edge and breaks depth ties its own way, so the two backends can
differ on exact ties only.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

Backend = Literal["auto", "numba", "torch", "pytorch3d"]


@dataclass(frozen=True)
class RasterizeConfig:
    """Rasteriser settings.

    backend: which implementation runs (see the module docstring); ``auto`` picks PyTorch3D only for
        CUDA tensors, where its binned kernel is fast, and numba for CPU tensors.
    cull_backfaces: skip triangles facing away from the camera (faster; the same image for a closed or
        convex-enough surface seen from outside, but a thin open surface can show its back).
    max_candidates: upper bound on (triangle, pixel centre) candidates evaluated at once by the torch
        backend; batches are split by frames to stay under it (memory ~ 60 bytes per candidate).
    barycentrics: compute ``Fragments.bary_coords`` (None when False; NMFC colours need only
        ``pix_to_face``, and skipping them saves a third of the output memory traffic).
    zbuf: return ``Fragments.zbuf`` (None when False).
    index_dtype: dtype of ``Fragments.pix_to_face``; int32 halves the memory traffic of this image-sized
        output (torch's gathers take either).
    """

    backend: Backend = "auto"
    cull_backfaces: bool = False
    max_candidates: int = 4_000_000
    barycentrics: bool = True
    zbuf: bool = True
    index_dtype: Literal["int64", "int32"] = "int64"


class Fragments(NamedTuple):
    """Rasteriser output for B images of H x W pixels.

    pix_to_face (B, H, W) int64 (``RasterizeConfig.index_dtype``): index into ``faces`` of the visible
        triangle, -1 where empty.
    zbuf (B, H, W) float (dtype of the vertices): depth in pixels of the visible surface, -inf where empty;
        None when ``RasterizeConfig.zbuf`` is False.
    bary_coords (B, H, W, 3) float: weights of the triangle's vertices ``faces[f, 0..2]`` at the pixel
        centre (they sum to 1), -1 where empty; None when ``RasterizeConfig.barycentrics`` is False. The
        torch backend returns a permuted view of a (3, B, H, W) buffer: use ``.reshape``, not ``.view``.
    """

    pix_to_face: torch.Tensor
    zbuf: torch.Tensor | None
    bary_coords: torch.Tensor | None


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
    config: RasterizeConfig = RasterizeConfig(),
) -> Fragments:
    """The nearest triangle at every pixel centre of B images.

    verts_px (B, V, 3) float, image space from ``model.face3d.camera.project`` (x, y pixels; depth pixels,
    larger nearer); faces (F, 3) integer vertex ids shared by the batch; image_size (H, W) pixels.
    Returns ``Fragments`` (see there). Not differentiable (conditioning images need none).
    """
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
            return _rasterize_numba(verts_px, faces, (height, width), config)
        if backend == "torch":
            return _rasterize_torch(verts_px, faces, (height, width), config)
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


# --- Shared per-triangle set-up ------------------------------------------------------------------------
# Every triangle is handled with its corners sorted by vertex id (a < b < c, corners 0, 1, 2), so each
# edge's canonical anchor (its lower id) is known without a per-triangle choice: edge 0 (opposite corner 0)
# runs 1 -> 2, edge 1 runs 0 -> 2, edge 2 runs 0 -> 1, each from its anchor. ``winding`` (+1 / -1) says
# whether sorting kept the face's own corner order (an even permutation) or reversed it.


class SortedFaces(NamedTuple):
    """faces (F, 3) with each row's vertex ids sorted ascending; order (F, 3): the original corner slot of
    each sorted corner; winding (F,) +1 where the sorted order is a rotation of the original, else -1."""

    faces: torch.Tensor
    order: torch.Tensor
    winding: torch.Tensor


def sort_faces(faces: torch.Tensor) -> SortedFaces:
    """Sorts every face's corners by vertex id: faces (F, 3) integer -> ``SortedFaces``."""
    sorted_ids, order = faces.to(torch.int64).sort(1)
    swaps = (order[:, 0] > order[:, 1]).long() + (order[:, 0] > order[:, 2]) + (order[:, 1] > order[:, 2])
    return SortedFaces(sorted_ids, order, 1 - 2 * (swaps % 2))


def _sorted_area2(x: Sequence[torch.Tensor], y: Sequence[torch.Tensor]) -> torch.Tensor:
    """Twice the signed area of the sorted triangle (corners 0 -> 1 -> 2, > 0 when clockwise in the y-down
    image): edge 0's canonical function ``E_0(p) = (p.x - x1) * (y2 - y1) - (p.y - y1) * (x2 - x1)`` at
    corner 0. x, y: the sorted corners' coordinates, 3 tensors of one shape. Times ``winding`` it is the
    face's own signed area (back-face culling)."""
    return (x[0] - x[1]) * (y[2] - y[1]) - (y[0] - y[1]) * (x[2] - x[1])


class _TriangleSetup(NamedTuple):
    """Edge data of T triangles as (3 edges, T) tensors (edge k is opposite sorted corner k, so its edge
    function is the unnormalised barycentric weight of corner k), see ``_triangle_setup``."""

    ax: torch.Tensor  # anchor x: the edge's endpoint with the lower vertex id
    ay: torch.Tensor
    dx: torch.Tensor  # edge vector (higher id - lower id) times the inward sign (+-1)
    dy: torch.Tensor
    area: torch.Tensor  # (T,) twice the triangle's area (> 0 for non-degenerate triangles)


def _triangle_setup(x: Sequence[torch.Tensor], y: Sequence[torch.Tensor]) -> _TriangleSetup:
    """Edge functions in the canonical, orientation-normalised form used by the torch backend.

    x, y: the sorted corners' coordinates, 3 tensors (T,) each. With ``E_k`` edge k's canonical function
    (anchor a = lower id, other end b: ``E(p) = (p.x - a.x) * (b.y - a.y) - (p.y - a.y) * (b.x - a.x)``),
    ``w_k(p) = (p.x - ax) * dy - (p.y - ay) * dx`` equals ``E_k`` times the sign that makes it positive
    inside the triangle, bitwise (negation is exact): the two triangles sharing an edge see bitwise
    opposite values. The inward sign is s_k o with s = (+1, -1, +1) (the sorted triangle runs edge 1 from
    c to a) and o the sign of ``_sorted_area2``.
    """
    ax, ay, dx, dy = edges = x[0].new_empty(4, 3, x[0].shape[0])
    for k, (lo, hi) in enumerate(((1, 2), (0, 2), (0, 1))):
        ax[k], ay[k] = x[lo], y[lo]
        torch.sub(x[hi], x[lo], out=dx[k])
        torch.sub(y[hi], y[lo], out=dy[k])
    area2 = _sorted_area2(x, y)
    orientation = torch.where(area2 < 0, -1.0, 1.0).to(area2.dtype)
    edges[2:] *= orientation
    edges[2:, 1] *= -1.0
    return _TriangleSetup(ax, ay, dx, dy, area2 * orientation)


def _include_edge(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Top-left rule: w = n . (p - a) with inward normal n = (dy, -dx); a centre on the edge is covered
    when n points right, or exactly down (y is down in image space)."""
    return (dy > 0) | ((dy == 0) & (dx < 0))


def _gather_corners(verts_px: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """verts_px (B, V, 3), faces (F, 3) int64 -> corners (3 coords, B, 3 corners, F)."""
    batch, n_verts, _ = verts_px.shape
    coords = verts_px.permute(2, 0, 1).reshape(3 * batch, n_verts)
    corners = coords.new_empty(3 * batch, 3 * faces.shape[0])  # corner-major rows
    index = faces.t().reshape(-1)
    for row, out in zip(coords, corners):  # 1-D gathers beat one 2-D gather along dim 1 on CPU
        torch.index_select(row, 0, index, out=out)
    return corners.view(3, batch, 3, faces.shape[0])


# --- Torch backend -------------------------------------------------------------------------------------

# The order-preserving int32 image of float32 -inf (bits 0xFF800000 with the magnitude bits flipped),
# shifted into the high word of a z-buffer key.
_EMPTY_KEY = (0x807FFFFF - 2**32) << 32
# Bounding boxes are padded per axis to a size class so that the triangles of one class are evaluated
# together as a dense (rows, cols, T) grid of candidate centres: exact sizes 1-4 (most triangles of a
# face mesh at 256 px), then powers of two (< 2x padding) to keep the number of classes small.


def _box_classes(max_size: int) -> list[int]:
    """Class sizes 1, 2, 3, 4, 8, 16, ... up to the first >= max_size."""
    classes = [1, 2, 3, 4]
    while classes[-1] < max_size:
        classes.append(2 * classes[-1])
    return classes


@functools.lru_cache(maxsize=16)
def _box_class_table(max_size: int, device: torch.device) -> torch.Tensor:
    """(max_size + 1,) int64: entry n is ``_box_class_index`` of n (entry 0 unused)."""
    sizes = torch.arange(max_size + 1, dtype=torch.float64).clamp(min=1)
    return _box_class_index(sizes).to(device)


def _box_class_index(n: torch.Tensor) -> torch.Tensor:
    """Index into ``_box_classes`` of the smallest class >= n, for n >= 1 centres (float tensor).

    n <= 4: n - 1. Else n - 1 = m * 2**e with m in [0.5, 1) (exact, from frexp), so 2**(e-1) < n <= 2**e
    and the class 2**e has index e + 1.
    """
    exponent = torch.frexp(n - 1).exponent.long()
    return torch.where(n <= 4, n.long() - 1, exponent + 1)


# Groups whose triangles would add at most this many padded candidates by moving to the square class of
# their longer side are merged into it: fewer, larger groups cost fewer kernel launches (batch 1).
_MERGE_MAX_EXTRA_CANDIDATES = 16384


def _merge_sparse_groups(
    group: torch.Tensor, group_sizes: list[int], classes: list[int]
) -> tuple[torch.Tensor, list[int], set[int]]:
    """Moves sparse (rows, cols) box classes to the square class (s, s) of their longer side.

    group (T,) class ids rows_index * n + cols_index, group_sizes their counts -> the remapped ids and
    counts, and the set of groups whose members' boxes may be smaller than the class (those need masks).
    """
    n_cls = len(classes)
    remap = list(range(n_cls * n_cls))
    for g, count in enumerate(group_sizes):
        r, c = divmod(g, n_cls)
        m = max(r, c)
        extra = count * (classes[m] ** 2 - classes[r] * classes[c])
        if 0 < count and r != c and extra <= _MERGE_MAX_EXTRA_CANDIDATES:
            remap[g] = m * n_cls + m
    sizes = [0] * (n_cls * n_cls)
    for g, count in enumerate(group_sizes):
        sizes[remap[g]] += count
    # Classes up to 4 centres are exact (their members' boxes have exactly that size) unless merged into.
    padded = {g for g in range(n_cls * n_cls) if max(classes[g // n_cls], classes[g % n_cls]) > 4}
    padded |= {remap[g] for g in range(n_cls * n_cls) if remap[g] != g and group_sizes[g]}
    if remap != list(range(n_cls * n_cls)):
        group = torch.tensor(remap, device=group.device).index_select(0, group)
    return group, sizes, padded


@functools.lru_cache(maxsize=256)
def _grid(
    rows: int, cols: int, width: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, ...]:
    """Column offsets (cols, 1), row offsets (rows, 1) and pixel offsets (rows * cols,) of a box grid."""
    col = torch.arange(cols, device=device, dtype=dtype)[:, None]
    row = torch.arange(rows, device=device, dtype=dtype)[:, None]
    offsets = (row.long() * width + col.long().t()).reshape(-1)
    return col, row, offsets


def _rasterize_torch(
    verts_px: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int], config: RasterizeConfig
) -> Fragments:
    """Our batched z-buffer; splits the batch by frames to keep under ``config.max_candidates``."""
    height, width = image_size
    batch, n_faces = verts_px.shape[0], faces.shape[0]
    device, dtype = verts_px.device, verts_px.dtype
    if batch == 0 or n_faces == 0:
        return _empty_fragments(batch, height, width, device, dtype, config)
    if n_faces >= 2**31:
        raise ValueError(f"at most 2**31 - 1 faces are supported, got {n_faces}")
    faces = sort_faces(faces.to(device=device, dtype=torch.int64))
    corners = _gather_corners(verts_px, faces.faces)  # (3, B, 3 sorted corners, F)
    x, y = corners[0].unbind(1), corners[1].unbind(1)  # 3 corners, each (B, F)
    # Pixel-centre bounding boxes clamped to the image (x_lo..x_hi, y_lo..y_hi), each (B, F).
    x_lo = torch.ceil(torch.minimum(torch.minimum(x[0], x[1]), x[2])).clamp_(min=0)
    x_hi = torch.floor(torch.maximum(torch.maximum(x[0], x[1]), x[2])).clamp_(max=width - 1)
    y_lo = torch.ceil(torch.minimum(torch.minimum(y[0], y[1]), y[2])).clamp_(min=0)
    y_hi = torch.floor(torch.maximum(torch.maximum(y[0], y[1]), y[2])).clamp_(max=height - 1)
    n_x, n_y = (x_hi - x_lo + 1).clamp_(min=0), (y_hi - y_lo + 1).clamp_(min=0)
    area2 = _sorted_area2(x, y) * faces.winding  # the face's own orientation
    usable = (area2 > 0) if config.cull_backfaces else (area2 != 0)
    usable &= (n_x > 0) & (n_y > 0)
    if not bool(torch.isfinite(verts_px).all()):
        usable &= torch.isfinite(corners).all(0).all(1)
    candidates = torch.where(usable, n_x * n_y, 0).sum(-1).tolist()  # per frame
    pieces, first = [], 0
    while first < batch:
        last, total = first, 0
        while last < batch and (last == first or total + candidates[last] <= config.max_candidates):
            total += candidates[last]
            last += 1
        frames = slice(first, last)
        box = (x_lo[frames], y_lo[frames], n_x[frames], n_y[frames])
        pieces.append(_rasterize_frames(corners, first, box, usable[frames], faces, image_size, config))
        first = last
    if len(pieces) == 1:
        return pieces[0]
    return Fragments(*(torch.cat(parts) if parts[0] is not None else None for parts in zip(*pieces)))


def _rasterize_frames(
    corners: torch.Tensor,
    first: int,
    box: tuple[torch.Tensor, ...],
    usable: torch.Tensor,
    faces: SortedFaces,
    image_size: tuple[int, int],
    config: RasterizeConfig,
) -> Fragments:
    """Rasterises frames first .. first + B - 1: corners (3 coords, all frames, 3 sorted corners, F) of
    ``faces``; box = (x_lo, y_lo, n_x, n_y), each (B, F), the pixel-centre bounding boxes; usable (B, F)
    bool."""
    height, width = image_size
    frames, n_faces = usable.shape
    device, dtype = corners.device, corners.dtype
    n_pixels = frames * height * width
    # Group the usable triangles by box size class (padded rows x cols) and sort them by group, so that
    # each group is a contiguous run; tri = frame * F + face.
    classes = _box_classes(max(height, width))
    n_cls = len(classes)
    tri = usable.reshape(-1).nonzero().squeeze(1)
    class_of = _box_class_table(max(height, width), device)  # box size in centres -> class index
    n_x, n_y = (b.reshape(-1).index_select(0, tri).long() for b in box[2:])
    group = class_of.index_select(0, n_y) * n_cls + class_of.index_select(0, n_x)
    group_sizes = torch.bincount(group, minlength=n_cls * n_cls).tolist()
    group, group_sizes, padded = _merge_sparse_groups(group, group_sizes, classes)
    # A stable sort keeps each group in triangle order, so the gather below reads memory in order.
    tri = tri.index_select(0, torch.argsort(group.to(torch.int16), stable=True))
    # Per-triangle data as 1-D gathers (the fastest gather on CPU): corner (c, k) of triangle (b, f) sits at
    # ((c * B_all + first + b) * 3 + k) * F + f of the contiguous corners, i.e. at offset b * 3F + f of a
    # flat view starting at (c * B_all + first) * 3F + k * F; tri runs in increasing order within a group,
    # so these reads stream.
    frame = tri // n_faces
    face = tri - frame * n_faces
    frame_offset = frame * (3 * n_faces) + face
    flat, n_all = corners.reshape(-1), corners.shape[1]
    x, y, z = (
        [flat[((c * n_all + first) * 3 + k) * n_faces :].index_select(0, frame_offset) for k in range(3)]
        for c in range(3)
    )  # each 3 corners of (T,)
    x_lo, y_lo, n_x, n_y = (b.reshape(-1).index_select(0, tri) for b in box)
    setup = _triangle_setup(x, y)
    base = (frame * height + y_lo.long()) * width + x_lo.long()  # pixel of the first centre
    zbuffer = _ZBuffer(n_pixels, n_faces, dtype, device)
    start = 0
    for g, count in enumerate(group_sizes):
        if count == 0:
            continue
        rows, cols = classes[g // n_cls], classes[g % n_cls]
        run = slice(start, start + count)
        start += count
        col, row, offsets = _grid(rows, cols, width, device, dtype)
        # w_k at centre (r, c) of the box is u_k(c) - v_k(r): the canonical edge function, factored so
        # that the grid costs one subtraction; centres past the box get -inf so they are never inside.
        u = (x_lo[run] + col - setup.ax[:, None, run]) * setup.dy[:, None, run]  # (3, cols, n)
        v = (y_lo[run] + row - setup.ay[:, None, run]) * setup.dx[:, None, run]  # (3, rows, n)
        # Depth factors the same way (see the module docstring): zu(c) - zv(r).
        area = setup.area[run]
        zu = (z[0][run] * u[0] + z[1][run] * u[1] + z[2][run] * u[2]) / area  # (cols, n)
        zv = (z[0][run] * v[0] + z[1][run] * v[1] + z[2][run] * v[2]) / area  # (rows, n)
        if g in padded:
            u.masked_fill_(col >= n_x[run], float("-inf"))
            v.masked_fill_(row >= n_y[run], float("inf"))
        w = (u[:, None] - v[:, :, None]).view(3, -1)  # (3, rows * cols * n)
        w_min = torch.minimum(torch.minimum(w[0], w[1]), w[2])
        inside = (w_min >= 0).nonzero().squeeze(1)
        cell = inside // count  # inside = (r * cols + c) * n + (member - start)
        member = inside - cell * count + run.start
        pixel = base.index_select(0, member) + offsets.index_select(0, cell)
        depth = (zu[None] - zv[:, None]).view(-1).index_select(0, inside)
        # Centres exactly on an edge (some w_k == 0; rare) are covered only through top-left edges.
        on_edge = (w_min.index_select(0, inside) == 0).nonzero().squeeze(1)
        if len(on_edge):
            w_e, m_e = w.index_select(1, inside.index_select(0, on_edge)), member.index_select(0, on_edge)
            include = _include_edge(setup.dx.index_select(1, m_e), setup.dy.index_select(1, m_e))
            keep = torch.ones(len(pixel), dtype=torch.bool, device=device)
            keep[on_edge[~((w_e > 0) | ((w_e == 0) & include)).all(0)]] = False
            keep = keep.nonzero().squeeze(1)
            pixel, member, depth = (t.index_select(0, keep) for t in (pixel, member, depth))
        # +0.0 turns -0.0 into +0.0 for the keys.
        zbuffer.add(pixel, depth + 0.0, face.index_select(0, member))
    pix_to_face, zbuf = zbuffer.result(config.zbuf, getattr(torch, config.index_dtype))
    shape = (frames, height, width)
    bary = None
    if config.barycentrics:
        bary = _barycentrics(corners[:, first : first + frames], faces, pix_to_face, width)
        bary = bary.view(3, *shape).permute(1, 2, 3, 0)  # a (B, H, W, 3) view (use .reshape, not .view)
    return Fragments(pix_to_face.view(shape), None if zbuf is None else zbuf.view(shape), bary)


class _ZBuffer:
    """Nearest candidate per pixel: the largest depth, then the lowest face id.

    float32 depths take one ``scatter_reduce`` per batch of candidates: the depth's bits, made
    order-preserving as int32, are packed above (F - 1 - face) into an int64 key whose maximum is the
    winner, and both depth and face are decoded from it exactly. Other dtypes collect the candidates and
    reduce twice (depth, then face among the nearest).
    """

    def __init__(self, n_pixels: int, n_faces: int, dtype: torch.dtype, device: torch.device) -> None:
        self.n_pixels, self.n_faces, self.dtype, self.device = n_pixels, n_faces, dtype, device
        self.packed = dtype == torch.float32
        if self.packed:
            # Empty pixels hold the key of depth -inf and face -1, so decoding needs no mask.
            self.best = torch.full((n_pixels,), _EMPTY_KEY + n_faces, dtype=torch.int64, device=device)
        else:
            self.candidates: list[tuple[torch.Tensor, ...]] = []

    def add(self, pixel: torch.Tensor, depth: torch.Tensor, face: torch.Tensor) -> None:
        """pixel (N,) int64 flat pixel ids, depth (N,), face (N,) int64."""
        if not self.packed:
            self.candidates.append((pixel, depth, face))
            return
        bits = depth.view(torch.int32)
        bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip the magnitude bits
        self.best.scatter_reduce_(0, pixel, (bits.long() << 32) | (self.n_faces - 1 - face), "amax")

    def result(self, with_zbuf: bool, index_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """pix_to_face (P,) of index_dtype (-1 where empty) and zbuf (P,) (-inf where empty; None when
        not ``with_zbuf``)."""
        if self.packed:
            low, high = self.best.view(torch.int32).view(-1, 2).unbind(1)  # little-endian words
            if sys.byteorder == "big":
                low, high = high, low
            pix_to_face = (self.n_faces - 1 - low).to(index_dtype)
            if not with_zbuf:
                return pix_to_face, None
            bits = high ^ ((high >> 31) & 0x7FFFFFFF)  # the flip is its own inverse
            return pix_to_face, bits.view(torch.float32)
        pix_to_face, zbuf = self._two_pass()
        return pix_to_face.to(index_dtype), zbuf if with_zbuf else None

    def _two_pass(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Non-float32 depths: the largest depth per pixel, then the lowest face among those."""
        pix_to_face = torch.full((self.n_pixels,), -1, dtype=torch.int64, device=self.device)
        zbuf = torch.full((self.n_pixels,), float("-inf"), dtype=self.dtype, device=self.device)
        if not self.candidates:
            return pix_to_face, zbuf
        pixel, depth, face = (torch.cat(parts) for parts in zip(*self.candidates))
        zbuf.scatter_reduce_(0, pixel, depth, "amax")
        front = (depth == zbuf.index_select(0, pixel)).nonzero().squeeze(1)
        nearest = torch.full((self.n_pixels,), self.n_faces, dtype=torch.int64, device=self.device)
        nearest.scatter_reduce_(0, pixel[front], face[front], "amin")
        hit = nearest < self.n_faces
        pix_to_face[hit] = nearest[hit]
        return pix_to_face, zbuf


def _barycentrics(corners: torch.Tensor, faces: SortedFaces, pix_to_face: torch.Tensor, width: int):
    """Barycentric weights at the covered pixel centres, recomputed from their visible triangles with the
    very expressions of the coverage test (so bitwise what it saw), in the faces' own corner order.

    corners (3 coords, B, 3 sorted corners, F); pix_to_face (B * H * W,) -> (3, B * H * W), -1 where empty.
    """
    _, frames, _, n_faces = corners.shape
    hit = (pix_to_face >= 0).nonzero().squeeze(1)
    face = pix_to_face.index_select(0, hit)
    frame = hit // (pix_to_face.numel() // frames)
    # Corner (c, k) of triangle (b, f) sits at ((c * B + b) * 3 + k) * F + f in the contiguous corners.
    plane = torch.arange(6, device=hit.device)  # c * 3 + k for x and y
    plane = ((plane // 3) * frames * 3 + plane % 3) * n_faces
    x, y = corners.contiguous().take((frame * 3 * n_faces + face)[None] + plane[:, None]).view(2, 3, -1)
    setup = _triangle_setup(x.unbind(0), y.unbind(0))
    dtype = corners.dtype
    px = (hit % width).to(dtype)
    py = (hit // width % (pix_to_face.numel() // frames // width)).to(dtype)
    w = (px - setup.ax) * setup.dy - (py - setup.ay) * setup.dx  # (3 sorted corners, N)
    weights = w / (w[0] + w[1] + w[2])
    slots = faces.order.index_select(0, face).t()  # (3, N): the face's own slot of each sorted corner
    bary = torch.full((3, pix_to_face.numel()), -1.0, dtype=dtype, device=hit.device)
    bary.index_copy_(1, hit, torch.empty_like(weights).scatter_(0, slots, weights))
    return bary


def _empty_fragments(
    batch: int,
    height: int,
    width: int,
    device: torch.device,
    dtype: torch.dtype,
    config: RasterizeConfig = RasterizeConfig(),
) -> Fragments:
    """Fragments of B empty images with the outputs ``config`` asks for."""
    shape = (batch, height, width)
    return Fragments(
        torch.full(shape, -1, dtype=getattr(torch, config.index_dtype), device=device),
        torch.full(shape, float("-inf"), dtype=dtype, device=device) if config.zbuf else None,
        torch.full((*shape, 3), -1.0, dtype=dtype, device=device) if config.barycentrics else None,
    )


# --- Numba backend -------------------------------------------------------------------------------------


def _rasterize_numba(
    verts_px: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int], config: RasterizeConfig
) -> Fragments:
    """``pipeline.preprocess.rasterize_numba`` on CPU tensors; barycentrics as the torch backend computes
    them."""
    from pipeline.preprocess.rasterize_numba import rasterize_frames

    if verts_px.device.type != "cpu" or verts_px.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"the numba rasterizer takes float32 / float64 CPU vertices, got {verts_px.dtype} on "
            f"{verts_px.device}: use backend 'auto' or 'torch'"
        )
    height, width = image_size
    batch, n_faces = verts_px.shape[0], faces.shape[0]
    if batch == 0 or n_faces == 0:
        return _empty_fragments(batch, height, width, verts_px.device, verts_px.dtype, config)
    if n_faces >= 2**31:
        raise ValueError(f"at most 2**31 - 1 faces are supported, got {n_faces}")
    verts = verts_px.detach().contiguous()
    faces = sort_faces(faces.to(device="cpu", dtype=torch.int64))
    pix_to_face = torch.empty((batch, height * width), dtype=getattr(torch, config.index_dtype))
    zbuf = torch.empty((batch, height * width), dtype=verts.dtype)
    rasterize_frames(
        verts.numpy(),
        faces.faces.contiguous().numpy(),
        faces.winding.contiguous().numpy(),
        config.cull_backfaces,
        height,
        width,
        pix_to_face.numpy(),
        zbuf.numpy(),
    )
    shape = (batch, height, width)
    bary = None
    if config.barycentrics:
        bary = _barycentrics(_gather_corners(verts, faces.faces), faces, pix_to_face.view(-1), width)
        bary = bary.view(3, *shape).permute(1, 2, 3, 0)
    return Fragments(pix_to_face.view(shape), zbuf.view(shape) if config.zbuf else None, bary)


# --- PyTorch3D backend ---------------------------------------------------------------------------------


def rasterize_pytorch3d(
    verts_px: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int], cull_backfaces: bool = False
) -> Fragments:
    """``rasterize`` through ``pytorch3d.renderer.mesh.rasterize_meshes`` (faces_per_pixel=1, no blur).

    Image space is mapped to PyTorch3D's NDC (+X left, +Y up, z into the screen; the shorter image side
    spans [-1, 1], pixel centre (i, j) at x = (W - 1 - 2 j) / S, y = (H - 1 - 2 i) / S with S = min(H, W)),
    and depth to z = max depth - depth + 1 > 0 per frame so that nearer is smaller z. The map is affine,
    so barycentrics carry over unchanged. Same shapes and conventions as ``rasterize``; exact edge and
    depth ties may differ (PyTorch3D excludes centres on edges).
    """
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    height, width = image_size
    batch, n_faces = verts_px.shape[0], faces.shape[0]
    faces = faces.to(device=verts_px.device, dtype=torch.int64)
    if batch == 0 or n_faces == 0:
        return _empty_fragments(batch, height, width, verts_px.device, verts_px.dtype)
    depth = verts_px[..., 2]
    depth_top = torch.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0).amax(-1, keepdim=True)
    xy_ndc = image_to_ndc(verts_px[..., :2], (height, width))
    verts_ndc = torch.cat([xy_ndc, (depth_top - depth + 1.0)[..., None]], -1).float()
    finite = bool(torch.isfinite(verts_px).all())
    if cull_backfaces or not finite:
        # Our orientation test (see _sorted_area2) and finiteness, then per-frame face lists; the
        # kept faces' ids map PyTorch3D's packed face indices back below.
        sorted_faces = sort_faces(faces)
        corners = _gather_corners(verts_px, sorted_faces.faces)
        keep = torch.isfinite(corners).all(0).all(1)  # (B, F)
        if cull_backfaces:
            keep &= _sorted_area2(corners[0].unbind(1), corners[1].unbind(1)) * sorted_faces.winding > 0
        verts_ndc = torch.nan_to_num(verts_ndc, nan=0.0, posinf=0.0, neginf=0.0)
        face_lists = [faces[k] for k in keep]
        face_ids = torch.cat([k.nonzero().squeeze(1) for k in keep])
    else:
        face_lists = [faces] * batch
        face_ids = torch.arange(n_faces, device=faces.device).repeat(batch)
    meshes = Meshes(verts=list(verts_ndc), faces=face_lists)
    pix_to_face, zbuf, bary, _ = rasterize_meshes(
        meshes, image_size=(height, width), blur_radius=0.0, faces_per_pixel=1, perspective_correct=False
    )
    pix_to_face, zbuf, bary = pix_to_face[..., 0], zbuf[..., 0], bary[..., 0, :]
    hit = pix_to_face >= 0
    face = torch.where(hit, face_ids[pix_to_face.clamp(min=0)], -1)
    zbuf = torch.where(
        hit, depth_top[:, :, None].to(verts_px.dtype) + 1.0 - zbuf.to(verts_px.dtype), -torch.inf
    )
    bary = torch.where(hit[..., None], bary.to(verts_px.dtype), -1.0)
    return Fragments(face, zbuf, bary)


def image_to_ndc(xy_px: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Image space (``model.face3d.camera``: pixel centre (i, j) at (x, y) = (j, i), y down) to PyTorch3D's
    NDC (+X left, +Y up, the shorter side spanning [-1, 1], square pixels): xy_px (..., 2) -> (..., 2).

    PyTorch3D puts the centre of its pixel (i, j) at ``PixToNonSquareNdc(W - 1 - j, W, H)``,
    ``PixToNonSquareNdc(H - 1 - i, H, W)``, which is x = (W - 1 - 2 j) / S, y = (H - 1 - 2 i) / S with
    S = min(H, W); the map is affine, so it holds for any point.
    """
    height, width = image_size
    short = float(min(height, width))
    return torch.stack(
        [(width - 1 - 2 * xy_px[..., 0]) / short, (height - 1 - 2 * xy_px[..., 1]) / short], -1
    )


# --- Slow reference ------------------------------------------------------------------------------------


def rasterize_reference(
    verts_px: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int], cull_backfaces: bool = False
) -> Fragments:
    """The same rules as ``rasterize`` written the obvious way, for tests: loop over frames and faces, test
    every pixel centre of the image against each triangle, keep the nearest (strictly nearer replaces, so
    equal depths keep the lower face id). O(B F H W); use on small meshes and images only.
    """
    height, width = image_size
    batch = verts_px.shape[0]
    dtype, device = verts_px.dtype, verts_px.device
    out = _empty_fragments(batch, height, width, device, dtype)
    pix_to_face, zbuf, bary_coords = out
    py, px = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype),
        torch.arange(width, device=device, dtype=dtype),
        indexing="ij",
    )
    rotations = ([0, 1, 2], [1, 2, 0], [2, 0, 1])
    for b in range(batch):
        for f, ids in enumerate(faces.tolist()):
            order = sorted(range(3), key=lambda k: ids[k])  # the face's corner slots by increasing id
            v = verts_px[b, [ids[k] for k in order]]  # sorted corners (3, 3)
            if not torch.isfinite(v).all():
                continue
            # Edge k, opposite sorted corner k, from its lower-id end a to its higher-id end c; the sorted
            # triangle runs edges 0 and 2 that way and edge 1 backwards.
            x_parts, y_parts, normals = [], [], []
            for (a, c), direction in zip(((v[1], v[2]), (v[0], v[2]), (v[0], v[1])), (1.0, -1.0, 1.0)):
                x_parts.append((px - a[0]) * (c[1] - a[1]))
                y_parts.append((py - a[1]) * (c[0] - a[0]))
                normals.append((direction, c[1] - a[1], -(c[0] - a[0])))
            # Signed area of the sorted triangle (edge 0's function at corner 0), and of the face itself.
            area2 = (v[0, 0] - v[1, 0]) * (v[2, 1] - v[1, 1]) - (v[0, 1] - v[1, 1]) * (v[2, 0] - v[1, 0])
            own_area2 = area2 if order in rotations else -area2
            if own_area2 == 0 or (cull_backfaces and own_area2 < 0):
                continue
            orient = 1.0 if area2 > 0 else -1.0
            u = [orient * d * x_part for (d, _, _), x_part in zip(normals, x_parts)]
            v_y = [orient * d * y_part for (d, _, _), y_part in zip(normals, y_parts)]
            w = [u[k] - v_y[k] for k in range(3)]  # each (H, W), >= 0 inside
            inside = torch.ones_like(px, dtype=torch.bool)
            for k, (d, nx, ny) in enumerate(normals):
                nx, ny = orient * d * nx, orient * d * ny  # inward normal
                on_edge_ok = bool(nx > 0 or (nx == 0 and ny > 0))
                inside &= (w[k] > 0) | ((w[k] == 0) & on_edge_ok)
            # The plane depth of the module docstring.
            z, area = v[:, 2], orient * area2
            depth = (
                (z[0] * u[0] + z[1] * u[1] + z[2] * u[2]) / area
                - (z[0] * v_y[0] + z[1] * v_y[1] + z[2] * v_y[2]) / area
                + 0.0
            )
            nearer = inside & (depth > zbuf[b])
            pix_to_face[b][nearer] = f
            zbuf[b][nearer] = depth[nearer]
            w_sum = w[0] + w[1] + w[2]
            weights = torch.empty(height, width, 3, dtype=dtype, device=device)
            for k in range(3):
                weights[..., order[k]] = w[k] / w_sum  # in the face's own corner order
            bary_coords[b][nearer] = weights[nearer]
    return Fragments(pix_to_face, zbuf, bary_coords)
