"""The ``torch`` backend of ``pipeline.preprocess.rasterize``: a batched z-buffer in plain PyTorch (CPU or
CUDA), following the rules of that module's docstring.

Every triangle enumerates the pixel centres inside its bounding box (a few pixels for a face mesh at
256 px), evaluates its three edge functions on them in one vectorised pass, and an exact z-buffer picks
the winner per pixel with one ``scatter_reduce`` over a packed (depth, face) key. No Python loop over
pixels or faces: triangles are grouped by bounding-box size class, and each class is one dense
(rows, cols, T) grid of candidate centres.
"""

from __future__ import annotations

import functools
import sys

import torch

from pipeline.preprocess.rasterize_triangles import (
    SortedFaces,
    gather_corners,
    include_edge,
    sort_faces,
    sorted_area2,
    triangle_setup,
    visible_barycentrics,
)
from pipeline.preprocess.rasterize_types import Fragments, RasterizeConfig, empty_fragments

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


def rasterize_torch(
    verts_px: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int], config: RasterizeConfig
) -> Fragments:
    """``rasterize`` with the torch backend (the caller checks the inputs and disables autograd).

    verts_px (B, V, 3) float, image space; faces (F, 3) integer; image_size (H, W) -> ``Fragments``.
    The batch is split by frames to keep under ``config.max_candidates``.
    """
    height, width = image_size
    batch, n_faces = verts_px.shape[0], faces.shape[0]
    device, dtype = verts_px.device, verts_px.dtype
    if batch == 0 or n_faces == 0:
        return empty_fragments(batch, height, width, device, dtype, config)
    if n_faces >= 2**31:
        raise ValueError(f"at most 2**31 - 1 faces are supported, got {n_faces}")
    faces = sort_faces(faces.to(device=device, dtype=torch.int64))
    corners = gather_corners(verts_px, faces.faces)  # (3, B, 3 sorted corners, F)
    x, y = corners[0].unbind(1), corners[1].unbind(1)  # 3 corners, each (B, F)
    # Pixel-centre bounding boxes clamped to the image (x_lo..x_hi, y_lo..y_hi), each (B, F).
    x_lo = torch.ceil(torch.minimum(torch.minimum(x[0], x[1]), x[2])).clamp_(min=0)
    x_hi = torch.floor(torch.maximum(torch.maximum(x[0], x[1]), x[2])).clamp_(max=width - 1)
    y_lo = torch.ceil(torch.minimum(torch.minimum(y[0], y[1]), y[2])).clamp_(min=0)
    y_hi = torch.floor(torch.maximum(torch.maximum(y[0], y[1]), y[2])).clamp_(max=height - 1)
    n_x, n_y = (x_hi - x_lo + 1).clamp_(min=0), (y_hi - y_lo + 1).clamp_(min=0)
    area2 = sorted_area2(x, y) * faces.winding  # the face's own orientation
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
    setup = triangle_setup(x, y)
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
            include = include_edge(setup.dx.index_select(1, m_e), setup.dy.index_select(1, m_e))
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
        bary = visible_barycentrics(corners[:, first : first + frames], faces, pix_to_face, width)
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
