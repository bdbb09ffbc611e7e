"""The ``pytorch3d`` backend of ``pipeline.preprocess.rasterize``: an adapter around
``pytorch3d.renderer.mesh.rasterize_meshes`` with ``faces_per_pixel=1``.

PyTorch3D is installed on GPU clusters, where its binned CUDA kernel is fast; its CPU kernel loops over
every pixel and face, far slower than our backends (``benchmarks/rasterize.py`` measures it where
PyTorch3D is installed). The adapter maps our image space to PyTorch3D's NDC and back, so its output has
``rasterize``'s shapes and conventions; PyTorch3D excludes centres exactly on an edge and breaks depth
ties its own way, so it can differ from our backends on exact ties only. PyTorch3D is imported only when
the adapter runs.
"""

from __future__ import annotations

import torch

from pipeline.preprocess.rasterize_triangles import gather_corners, sort_faces, sorted_area2
from pipeline.preprocess.rasterize_types import Fragments, empty_fragments


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
        return empty_fragments(batch, height, width, verts_px.device, verts_px.dtype)
    depth = verts_px[..., 2]
    depth_top = torch.nan_to_num(depth, nan=0.0, posinf=0.0, neginf=0.0).amax(-1, keepdim=True)
    xy_ndc = image_to_ndc(verts_px[..., :2], (height, width))
    verts_ndc = torch.cat([xy_ndc, (depth_top - depth + 1.0)[..., None]], -1).float()
    finite = bool(torch.isfinite(verts_px).all())
    if cull_backfaces or not finite:
        # Our orientation test (see sorted_area2) and finiteness, then per-frame face lists; the
        # kept faces' ids map PyTorch3D's packed face indices back below.
        sorted_faces = sort_faces(faces)
        corners = gather_corners(verts_px, sorted_faces.faces)
        keep = torch.isfinite(corners).all(0).all(1)  # (B, F)
        if cull_backfaces:
            keep &= sorted_area2(corners[0].unbind(1), corners[1].unbind(1)) * sorted_faces.winding > 0
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
