"""The PyTorch3D adapter: against PyTorch3D where it is installed, and its glue (NDC mapping, depth, face
ids, culling) against a slow stand-in written from PyTorch3D's documented semantics everywhere."""

from __future__ import annotations

import pytest
import torch

from pipeline.preprocess.rasterize import RasterizeConfig, pytorch3d_available, rasterize
from pipeline.preprocess.rasterize_pytorch3d import image_to_ndc, rasterize_pytorch3d
from tests.pipeline.preprocess.rasterize_inputs import random_mesh


@pytest.mark.skipif(not pytorch3d_available(), reason="PyTorch3D is not installed")
def test_pytorch3d_backend_agrees():
    generator = torch.Generator().manual_seed(9)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for cull in (False, True):
        verts, faces = random_mesh(generator, 2, 40, 60, 24, 30, torch.float32)
        ours = rasterize(verts, faces, (24, 30), RasterizeConfig(backend="torch", cull_backfaces=cull))
        theirs = rasterize_pytorch3d(verts.to(device), faces.to(device), (24, 30), cull)
        same = ours.pix_to_face == theirs.pix_to_face.cpu()
        assert same.float().mean() >= 0.999
        both = same & (ours.pix_to_face >= 0)
        torch.testing.assert_close(theirs.zbuf.cpu()[both], ours.zbuf[both], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(
            theirs.bary_coords.cpu()[both], ours.bary_coords[both], rtol=1e-3, atol=1e-3
        )


@pytest.mark.parametrize(("height", "width"), [(4, 4), (3, 5), (6, 2)])
def test_image_to_ndc_matches_pytorch3d_pixel_centres(height, width):
    # PyTorch3D (csrc/utils/float_math / rasterize_meshes): the centre of its pixel (yi, xi) lies at
    # x = PixToNonSquareNdc(W - 1 - xi, W, H), y = PixToNonSquareNdc(H - 1 - yi, H, W).
    def pix_to_non_square_ndc(i, s1, s2):
        ndc_range = 2.0 * s1 / s2 if s1 > s2 else 2.0
        offset = ndc_range / 2.0
        return -offset + (ndc_range * i + offset) / s1

    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centres = torch.stack([j, i], -1).double()  # our pixel centres (x, y) = (j, i)
    ndc = image_to_ndc(centres, (height, width))
    for yi in range(height):
        for xi in range(width):
            expected = (
                pix_to_non_square_ndc(width - 1 - xi, width, height),
                pix_to_non_square_ndc(height - 1 - yi, height, width),
            )
            assert ndc[yi, xi].tolist() == pytest.approx(expected, abs=1e-12)


def _pytorch3d_stand_in(monkeypatch):
    """A slow stand-in for ``pytorch3d.renderer.mesh.rasterize_meshes`` and ``pytorch3d.structures.Meshes``
    written from PyTorch3D's documented semantics (NDC pixel centres via PixToNonSquareNdc, +X left, +Y
    up; the smallest z >= 0 wins; strict inside test; packed face indices), to test our adapter's glue
    (coordinate, depth and face-id mapping, culling) where PyTorch3D itself is not installed."""
    import sys
    import types

    class Meshes:
        def __init__(self, verts, faces):
            self.verts, self.faces = verts, faces

    def pix_to_ndc(i, s1, s2):
        ndc_range = 2.0 * s1 / s2 if s1 > s2 else 2.0
        return -ndc_range / 2 + (ndc_range * i + ndc_range / 2) / s1

    def rasterize_meshes(meshes, image_size, blur_radius, faces_per_pixel, perspective_correct):
        assert blur_radius == 0.0 and faces_per_pixel == 1 and not perspective_correct
        height, width = image_size
        n = len(meshes.verts)
        yi, xi = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        px = pix_to_ndc(width - 1 - xi.double(), width, height)
        py = pix_to_ndc(height - 1 - yi.double(), height, width)
        pix_to_face = torch.full((n, height, width, 1), -1, dtype=torch.int64)
        zbuf = torch.full((n, height, width, 1), -1.0)
        bary = torch.full((n, height, width, 1, 3), -1.0)
        first = 0
        for m, (verts, faces) in enumerate(zip(meshes.verts, meshes.faces)):
            best = torch.full((height, width), float("inf"), dtype=torch.float64)
            for f, (a, b, c) in enumerate(verts.double()[faces].tolist()):

                def edge(p_x, p_y, v0, v1):
                    return (p_x - v0[0]) * (v1[1] - v0[1]) - (p_y - v0[1]) * (v1[0] - v0[0])

                area = edge(c[0], c[1], a, b)
                if area == 0:
                    continue
                w = torch.stack([edge(px, py, b, c), edge(px, py, c, a), edge(px, py, a, b)], -1) / area
                z = (w * torch.tensor([a[2], b[2], c[2]], dtype=torch.float64)).sum(-1)
                better = (w > 0).all(-1) & (z >= 0) & (z < best)
                best[better] = z[better]
                pix_to_face[m, ..., 0][better] = first + f
                zbuf[m, ..., 0][better] = z[better].float()
                bary[m, :, :, 0][better] = w[better].float()
            first += len(faces)
        return pix_to_face, zbuf, bary, torch.zeros_like(zbuf)

    modules = {
        "pytorch3d": types.ModuleType("pytorch3d"),
        "pytorch3d.renderer": types.ModuleType("pytorch3d.renderer"),
        "pytorch3d.renderer.mesh": types.ModuleType("pytorch3d.renderer.mesh"),
        "pytorch3d.renderer.mesh.rasterize_meshes": types.ModuleType(
            "pytorch3d.renderer.mesh.rasterize_meshes"
        ),
        "pytorch3d.structures": types.ModuleType("pytorch3d.structures"),
    }
    modules["pytorch3d.renderer.mesh.rasterize_meshes"].rasterize_meshes = rasterize_meshes
    modules["pytorch3d.structures"].Meshes = Meshes
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)


@pytest.mark.parametrize("cull", [False, True])
@pytest.mark.parametrize("size", [(16, 20), (18, 12)])
def test_pytorch3d_adapter_glue_against_a_stand_in(monkeypatch, cull, size):
    _pytorch3d_stand_in(monkeypatch)
    generator = torch.Generator().manual_seed(13)
    verts, faces = random_mesh(generator, 2, 25, 30, *size, torch.float32)
    verts[1, int(faces[0, 0]), 0] = float("nan")  # a non-finite vertex: its faces cover nothing
    ours = rasterize(verts, faces, size, RasterizeConfig(backend="torch", cull_backfaces=cull))
    theirs = rasterize(verts, faces, size, RasterizeConfig(backend="pytorch3d", cull_backfaces=cull))
    same = ours.pix_to_face == theirs.pix_to_face
    assert same.float().mean() >= 0.995  # exact edge/depth ties may differ
    assert (ours.pix_to_face >= 0).float().mean() > 0.3
    both = same & (ours.pix_to_face >= 0)
    torch.testing.assert_close(theirs.zbuf[both], ours.zbuf[both], rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(theirs.bary_coords[both], ours.bary_coords[both], rtol=1e-3, atol=1e-3)
    assert (theirs.zbuf[theirs.pix_to_face < 0] == float("-inf")).all()
