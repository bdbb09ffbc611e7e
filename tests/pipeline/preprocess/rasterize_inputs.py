"""Meshes and comparisons shared by the rasteriser tests (``test_rasterize*.py``)."""

from __future__ import annotations

import torch


def assert_same_fragments(a, b) -> None:
    """The same visible faces everywhere, and bitwise the same depths and barycentrics where covered."""
    assert torch.equal(a.pix_to_face, b.pix_to_face)
    hit = a.pix_to_face >= 0
    assert torch.equal(a.zbuf[hit], b.zbuf[hit])
    assert torch.equal(a.bary_coords[hit], b.bary_coords[hit])


def random_mesh(generator, batch, n_verts, n_faces, height, width, dtype, integer=False):
    """B frames of a random mesh over an H x W image: verts (B, V, 3) of dtype, faces (F, 3) int64.

    Most faces pick nearby vertices (a few pixels, as a face mesh at 256 px), some span the image;
    integer: coordinates on a half-pixel grid, so that exact edge and depth ties are everywhere.
    """
    scale = torch.tensor([width * 1.2, height * 1.2, 20.0], dtype=torch.float64)
    verts = torch.rand(batch, n_verts, 3, generator=generator, dtype=torch.float64) * scale - 0.1 * scale
    if integer:
        verts = torch.round(verts * 2) / 2  # exact edge and depth ties everywhere
    faces = torch.randint(0, n_verts, (n_faces, 3), generator=generator)
    small = torch.rand(n_faces, generator=generator) < 0.7
    jitter = (torch.rand(int(small.sum()), 2, 3, generator=generator, dtype=torch.float64) - 0.5) * 4
    base = verts[:, faces[small, 0]]  # (B, n_small, 3)
    extra = base[:, :, None, :2] + jitter[None, :, :, :2]
    new_ids = torch.arange(n_verts, n_verts + 2 * int(small.sum())).view(-1, 2)
    extra = torch.cat([extra, base[:, :, None, 2:].expand(-1, -1, 2, -1) + jitter[None, :, :, 2:]], -1)
    verts = torch.cat([verts, extra.reshape(batch, -1, 3)], 1)
    faces[small, 1:] = new_ids
    return verts.to(dtype), faces
