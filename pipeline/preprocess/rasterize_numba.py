"""The ``numba`` backend of ``pipeline.preprocess.rasterize``: the same rules as the torch backend, compiled
to one loop over triangles and the pixel centres of each triangle's bounding box (CPU).

A face mesh at 256 px covers a few centres per triangle, so the vectorised torch backend spends most of
its time building, gathering and reducing candidate arrays; here each candidate is a few float operations
and a compare against the z-buffer in cache (``benchmarks/rasterize.py`` compares the backends, see
docs/preprocessing.md). Every quantity is computed with the torch backend's float expressions in its
order and precision (``pipeline.preprocess.rasterize_triangles.triangle_setup``, the factored edge
functions and depth of the ``pipeline.preprocess.rasterize`` docstring; numba does not contract them into
fused multiply-adds), so the results are bitwise the same. Triangles are visited in face order and only a
strictly nearer depth replaces the z-buffer, so equal depths keep the lowest face id, as the torch
backend's packed keys do. Barycentrics are computed afterwards by the torch code
(``visible_barycentrics``), from the faces this kernel chose.

The kernel is compiled on first use and cached next to this file (or in ``NUMBA_CACHE_DIR``), so later
processes load the machine code instead of compiling it.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from pipeline.preprocess.rasterize_triangles import gather_corners, sort_faces, visible_barycentrics
from pipeline.preprocess.rasterize_types import Fragments, RasterizeConfig, empty_fragments


def rasterize_numba(
    verts_px: torch.Tensor, faces: torch.Tensor, image_size: tuple[int, int], config: RasterizeConfig
) -> Fragments:
    """``rasterize`` with the numba backend (the caller checks the inputs and disables autograd).

    verts_px (B, V, 3) float32 or float64 on the CPU, image space; faces (F, 3) integer; image_size
    (H, W) -> ``Fragments``, barycentrics as the torch backend computes them.
    """
    if verts_px.device.type != "cpu" or verts_px.dtype not in (torch.float32, torch.float64):
        raise ValueError(
            f"the numba rasterizer takes float32 / float64 CPU vertices, got {verts_px.dtype} on "
            f"{verts_px.device}: use backend 'auto' or 'torch'"
        )
    height, width = image_size
    batch, n_faces = verts_px.shape[0], faces.shape[0]
    if batch == 0 or n_faces == 0:
        return empty_fragments(batch, height, width, verts_px.device, verts_px.dtype, config)
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
        bary = visible_barycentrics(gather_corners(verts, faces.faces), faces, pix_to_face.view(-1), width)
        bary = bary.view(3, *shape).permute(1, 2, 3, 0)
    return Fragments(pix_to_face.view(shape), zbuf.view(shape) if config.zbuf else None, bary)


@numba.njit(cache=True, nogil=True)
def rasterize_frames(
    verts: np.ndarray,
    faces: np.ndarray,
    winding: np.ndarray,
    cull_backfaces: bool,
    height: int,
    width: int,
    pix_to_face: np.ndarray,
    zbuf: np.ndarray,
) -> None:
    """verts (B, V, 3) float32 or float64 image-space vertices (``model.face3d.camera.project``); faces (F, 3)
    int64 with each row's vertex ids sorted ascending and winding (F,) int64 +-1 (``sort_faces``);
    writes pix_to_face (B, H * W) integer (-1 where empty) and zbuf (B, H * W) of verts' dtype (-inf
    where empty)."""
    dtype = verts.dtype.type
    one, zero = dtype(1.0), dtype(0.0)
    pix_to_face[:] = -1
    zbuf[:] = -np.inf
    for b in range(verts.shape[0]):
        out_face, out_depth = pix_to_face[b], zbuf[b]
        for f in range(faces.shape[0]):
            i0, i1, i2 = faces[f, 0], faces[f, 1], faces[f, 2]
            x0, x1, x2 = verts[b, i0, 0], verts[b, i1, 0], verts[b, i2, 0]
            y0, y1, y2 = verts[b, i0, 1], verts[b, i1, 1], verts[b, i2, 1]
            z0, z1, z2 = verts[b, i0, 2], verts[b, i1, 2], verts[b, i2, 2]
            if not (
                math.isfinite(x0)
                and math.isfinite(x1)
                and math.isfinite(x2)
                and math.isfinite(y0)
                and math.isfinite(y1)
                and math.isfinite(y2)
                and math.isfinite(z0)
                and math.isfinite(z1)
                and math.isfinite(z2)
            ):
                continue
            area2 = (x0 - x1) * (y2 - y1) - (y0 - y1) * (x2 - x1)  # the sorted triangle's (sorted_area2)
            own = area2 if winding[f] > 0 else -area2  # the face's own orientation
            if not (own > 0 or (own < 0 and not cull_backfaces)):  # (NaN areas cover nothing either way)
                continue
            # Pixel-centre bounding box clamped to the image, in float as the torch backend clamps.
            x_lo = max(np.ceil(min(min(x0, x1), x2)), 0.0)
            x_hi = min(np.floor(max(max(x0, x1), x2)), width - 1.0)
            y_lo = max(np.ceil(min(min(y0, y1), y2)), 0.0)
            y_hi = min(np.floor(max(max(y0, y1), y2)), height - 1.0)
            if x_hi < x_lo or y_hi < y_lo:
                continue
            # triangle_setup: edge k is opposite sorted corner k, anchored at its lower id; the inward
            # sign is (+1, -1, +1) times the sorted triangle's orientation.
            o = -one if area2 < 0 else one
            ax0, ay0, dx0, dy0 = x1, y1, (x2 - x1) * o, (y2 - y1) * o
            ax1, ay1, dx1, dy1 = x0, y0, (x2 - x0) * -o, (y2 - y0) * -o
            ax2, ay2, dx2, dy2 = x0, y0, (x1 - x0) * o, (y1 - y0) * o
            area = area2 * o
            inc0 = dy0 > 0 or (dy0 == 0 and dx0 < 0)  # top-left rule (include_edge)
            inc1 = dy1 > 0 or (dy1 == 0 and dx1 < 0)
            inc2 = dy2 > 0 or (dy2 == 0 and dx2 < 0)
            for row in range(int(y_lo), int(y_hi) + 1):
                py = dtype(row)
                v0, v1, v2 = (py - ay0) * dx0, (py - ay1) * dx1, (py - ay2) * dx2
                zv = (z0 * v0 + z1 * v1 + z2 * v2) / area
                base = row * width
                for col in range(int(x_lo), int(x_hi) + 1):
                    px = dtype(col)
                    u0, u1, u2 = (px - ax0) * dy0, (px - ax1) * dy1, (px - ax2) * dy2
                    w0, w1, w2 = u0 - v0, u1 - v1, u2 - v2
                    if not (w0 >= 0 and w1 >= 0 and w2 >= 0):  # (NaN: outside)
                        continue
                    if (w0 == 0 and not inc0) or (w1 == 0 and not inc1) or (w2 == 0 and not inc2):
                        continue
                    depth = (z0 * u0 + z1 * u1 + z2 * u2) / area - zv + zero  # + 0 turns -0 into +0
                    if depth > out_depth[base + col]:
                        out_depth[base + col] = depth
                        out_face[base + col] = f
