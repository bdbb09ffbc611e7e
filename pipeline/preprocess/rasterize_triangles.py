"""Per-triangle set-up shared by the rasteriser's backends: corners sorted by vertex id, edge functions,
the top-left rule and barycentrics (the rules are in the ``pipeline.preprocess.rasterize`` docstring).

Every triangle is handled with its corners sorted by vertex id (a < b < c, corners 0, 1, 2), so each
edge's canonical anchor (its lower id) is known without a per-triangle choice: edge 0 (opposite corner 0)
runs 1 -> 2, edge 1 runs 0 -> 2, edge 2 runs 0 -> 1, each from its anchor. ``winding`` (+1 / -1) says
whether sorting kept the face's own corner order (an even permutation) or reversed it. The torch backend
uses these functions directly, the numba kernel spells the same expressions out in the same order, and
the PyTorch3D adapter uses the orientation test for culling: one definition, bitwise the same results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


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


def sorted_area2(x: Sequence[torch.Tensor], y: Sequence[torch.Tensor]) -> torch.Tensor:
    """Twice the signed area of the sorted triangle (corners 0 -> 1 -> 2, > 0 when clockwise in the y-down
    image): edge 0's canonical function ``E_0(p) = (p.x - x1) * (y2 - y1) - (p.y - y1) * (x2 - x1)`` at
    corner 0. x, y: the sorted corners' coordinates, 3 tensors of one shape. Times ``winding`` it is the
    face's own signed area (back-face culling)."""
    return (x[0] - x[1]) * (y[2] - y[1]) - (y[0] - y[1]) * (x[2] - x[1])


class TriangleSetup(NamedTuple):
    """Edge data of T triangles as (3 edges, T) tensors (edge k is opposite sorted corner k, so its edge
    function is the unnormalised barycentric weight of corner k), see ``triangle_setup``."""

    ax: torch.Tensor  # anchor x: the edge's endpoint with the lower vertex id
    ay: torch.Tensor
    dx: torch.Tensor  # edge vector (higher id - lower id) times the inward sign (+-1)
    dy: torch.Tensor
    area: torch.Tensor  # (T,) twice the triangle's area (> 0 for non-degenerate triangles)


def triangle_setup(x: Sequence[torch.Tensor], y: Sequence[torch.Tensor]) -> TriangleSetup:
    """Edge functions in the canonical, orientation-normalised form.

    x, y: the sorted corners' coordinates, 3 tensors (T,) each. With ``E_k`` edge k's canonical function
    (anchor a = lower id, other end b: ``E(p) = (p.x - a.x) * (b.y - a.y) - (p.y - a.y) * (b.x - a.x)``),
    ``w_k(p) = (p.x - ax) * dy - (p.y - ay) * dx`` equals ``E_k`` times the sign that makes it positive
    inside the triangle, bitwise (negation is exact): the two triangles sharing an edge see bitwise
    opposite values. The inward sign is s_k o with s = (+1, -1, +1) (the sorted triangle runs edge 1 from
    c to a) and o the sign of ``sorted_area2``.
    """
    ax, ay, dx, dy = edges = x[0].new_empty(4, 3, x[0].shape[0])
    for k, (lo, hi) in enumerate(((1, 2), (0, 2), (0, 1))):
        ax[k], ay[k] = x[lo], y[lo]
        torch.sub(x[hi], x[lo], out=dx[k])
        torch.sub(y[hi], y[lo], out=dy[k])
    area2 = sorted_area2(x, y)
    orientation = torch.where(area2 < 0, -1.0, 1.0).to(area2.dtype)
    edges[2:] *= orientation
    edges[2:, 1] *= -1.0
    return TriangleSetup(ax, ay, dx, dy, area2 * orientation)


def include_edge(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Top-left rule: w = n . (p - a) with inward normal n = (dy, -dx); a centre on the edge is covered
    when n points right, or exactly down (y is down in image space)."""
    return (dy > 0) | ((dy == 0) & (dx < 0))


def gather_corners(verts_px: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """verts_px (B, V, 3), faces (F, 3) int64 -> corners (3 coords, B, 3 corners, F)."""
    batch, n_verts, _ = verts_px.shape
    coords = verts_px.permute(2, 0, 1).reshape(3 * batch, n_verts)
    corners = coords.new_empty(3 * batch, 3 * faces.shape[0])  # corner-major rows
    index = faces.t().reshape(-1)
    for row, out in zip(coords, corners):  # 1-D gathers beat one 2-D gather along dim 1 on CPU
        torch.index_select(row, 0, index, out=out)
    return corners.view(3, batch, 3, faces.shape[0])


def visible_barycentrics(
    corners: torch.Tensor, faces: SortedFaces, pix_to_face: torch.Tensor, width: int
) -> torch.Tensor:
    """Barycentric weights at the covered pixel centres, recomputed from their visible triangles with the
    very expressions of the coverage test (so bitwise what it saw), in the faces' own corner order.

    corners (3 coords, B, 3 sorted corners, F) of ``faces.faces``; pix_to_face (B * H * W,) -> (3, B * H *
    W) of the corners' dtype, -1 where empty.
    """
    _, frames, _, n_faces = corners.shape
    hit = (pix_to_face >= 0).nonzero().squeeze(1)
    face = pix_to_face.index_select(0, hit)
    frame = hit // (pix_to_face.numel() // frames)
    # Corner (c, k) of triangle (b, f) sits at ((c * B + b) * 3 + k) * F + f in the contiguous corners.
    plane = torch.arange(6, device=hit.device)  # c * 3 + k for x and y
    plane = ((plane // 3) * frames * 3 + plane % 3) * n_faces
    x, y = corners.contiguous().take((frame * 3 * n_faces + face)[None] + plane[:, None]).view(2, 3, -1)
    setup = triangle_setup(x.unbind(0), y.unbind(0))
    dtype = corners.dtype
    px = (hit % width).to(dtype)
    py = (hit // width % (pix_to_face.numel() // frames // width)).to(dtype)
    w = (px - setup.ax) * setup.dy - (py - setup.ay) * setup.dx  # (3 sorted corners, N)
    weights = w / (w[0] + w[1] + w[2])
    slots = faces.order.index_select(0, face).t()  # (3, N): the face's own slot of each sorted corner
    bary = torch.full((3, pix_to_face.numel()), -1.0, dtype=dtype, device=hit.device)
    bary.index_copy_(1, hit, torch.empty_like(weights).scatter_(0, slots, weights))
    return bary
