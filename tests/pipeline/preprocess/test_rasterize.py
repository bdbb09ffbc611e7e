"""Rasteriser: golden cases, the slow reference, tie/edge rules, backends."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from model.face3d.camera import make_camera, project
from pipeline.preprocess.rasterize import (
    RasterizeConfig,
    image_to_ndc,
    pytorch3d_available,
    rasterize,
    rasterize_pytorch3d,
    rasterize_reference,
)

TORCH = RasterizeConfig(backend="torch")


@pytest.fixture(params=["torch", "numba"])
def ours(request) -> RasterizeConfig:
    """Each of our backends (the golden cases and the reference hold for both)."""
    return RasterizeConfig(backend=request.param)


def _faces(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.int64)


def _verts(rows, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)[None]


def _mask(height: int, width: int, rule) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return rule(i, j)


def _assert_same(a, b) -> None:
    assert torch.equal(a.pix_to_face, b.pix_to_face)
    hit = a.pix_to_face >= 0
    assert torch.equal(a.zbuf[hit], b.zbuf[hit])
    assert torch.equal(a.bary_coords[hit], b.bary_coords[hit])


# --- Golden cases ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("slots", [(0, 1, 2), (0, 2, 1), (2, 1, 0)])  # both windings
@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1), (1, 2, 0)])  # vertex ids (canonical edge order)
def test_single_triangle_top_left_rule(slots, perm, ours):
    # Corners (1, 1), (5, 1), (1, 5) on pixel centres: the top edge y = 1 and the left edge x = 1 are
    # included, the hypotenuse x + y = 6 is not, so the covered centres are i, j >= 1 with i + j < 6.
    corners = [[1.0, 1.0, 1.0], [5.0, 1.0, 2.0], [1.0, 5.0, 3.0]]
    verts = _verts([corners[perm.index(v)] for v in range(3)])  # corner c is vertex perm[c]
    faces = _faces([[perm[c] for c in slots]])
    out = rasterize(verts, faces, (7, 8), ours)
    expected = _mask(7, 8, lambda i, j: (i >= 1) & (j >= 1) & (i + j < 6))
    assert int(expected.sum()) == 10
    assert torch.equal(out.pix_to_face[0] == 0, expected)
    assert torch.all(out.pix_to_face[0][~expected] == -1)
    # Centre (x, y) = (2, 2) = c0 + 0.25 (c1 - c0) + 0.25 (c2 - c0): weights (0.5, 0.25, 0.25) of the
    # corners (1, 1), (5, 1), (1, 5), in the face's slot order; depth 0.5 * 1 + 0.25 * 2 + 0.25 * 3.
    torch.testing.assert_close(out.bary_coords[0, 2, 2], torch.tensor([0.5, 0.25, 0.25])[list(slots)])
    assert out.zbuf[0, 2, 2].item() == pytest.approx(1.75)
    assert torch.isinf(out.zbuf[0, 0, 0]) and out.zbuf[0, 0, 0] < 0
    assert torch.all(out.bary_coords[0, 0, 0] == -1)


def test_two_overlapping_triangles_depth_order_and_ties(ours):
    # Face 0 covers the whole 8 x 8 image; face 1 is the small triangle of the test above.
    big = [[-10.0, -10.0], [30.0, -10.0], [-10.0, 30.0]]
    small = [[1.0, 1.0], [5.0, 1.0], [1.0, 5.0]]
    small_mask = _mask(8, 8, lambda i, j: (i >= 1) & (j >= 1) & (i + j < 6))
    faces = _faces([[0, 1, 2], [3, 4, 5]])

    def render(z_big: float, z_small: float, swap: bool = False):
        verts = _verts([[*p, z_big] for p in big] + [[*p, z_small] for p in small])
        f = faces.flip(0) if swap else faces
        return rasterize(verts, f, (8, 8), ours).pix_to_face[0]

    # Nearer = larger depth.
    assert torch.equal(render(0.0, 5.0), torch.where(small_mask, 1, 0))
    assert torch.equal(render(5.0, 0.0), torch.zeros(8, 8, dtype=torch.int64))
    # Equal depth: the lower face index wins, whichever triangle it is.
    assert torch.equal(render(2.0, 2.0), torch.zeros(8, 8, dtype=torch.int64))
    assert torch.equal(render(2.0, 2.0, swap=True), torch.where(small_mask, 0, 1))
    assert torch.equal(render(5.0, 0.0, swap=True), torch.ones(8, 8, dtype=torch.int64))


def _cube() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Cube [-1, 1]^3, two triangles per side, wound counter-clockwise seen from outside."""
    verts = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)])
    vid = {tuple(v.tolist()): i for i, v in enumerate(verts)}
    sides = {
        "+x": [(1, -1, 1), (1, -1, -1), (1, 1, -1), (1, 1, 1)],
        "-x": [(-1, -1, -1), (-1, -1, 1), (-1, 1, 1), (-1, 1, -1)],
        "+y": [(-1, 1, 1), (1, 1, 1), (1, 1, -1), (-1, 1, -1)],
        "-y": [(-1, -1, -1), (1, -1, -1), (1, -1, 1), (-1, -1, 1)],
        "+z": [(-1, -1, 1), (1, -1, 1), (1, 1, 1), (-1, 1, 1)],
        "-z": [(1, -1, -1), (-1, -1, -1), (-1, 1, -1), (1, 1, -1)],
    }
    faces, names = [], []
    for name, quad in sides.items():
        a, b, c, d = (vid[tuple(float(t) for t in p)] for p in quad)
        faces += [[a, b, c], [a, c, d]]
        names += [name, name]
    return verts, torch.tensor(faces), names


@pytest.mark.parametrize("cull", [False, True])
@pytest.mark.parametrize(
    ("angles", "expected"),
    [
        # Frontal: the +z side spans x, y in 15.5 +- 10 -> rows and columns 6..25.
        ((0.0, 0.0, 0.0), {"+z": lambda i, j: (i >= 6) & (i <= 25) & (j >= 6) & (j <= 25)}),
        # Yaw 45 deg: -x side on the left (columns 2..15), +z on the right (16..29); 15.5 +- 10 sqrt(2).
        (
            (0.0, math.pi / 4, 0.0),
            {
                "-x": lambda i, j: (i >= 6) & (i <= 25) & (j >= 2) & (j <= 15),
                "+z": lambda i, j: (i >= 6) & (i <= 25) & (j >= 16) & (j <= 29),
            },
        ),
        # Pitch 30 deg: +y on top from y = 15.5 - 10 (cos + sin) = 1.84 to 15.5 - 10 (cos - sin) = 11.84,
        # +z below it down to 15.5 + 10 (cos + sin) = 29.16.
        (
            (math.pi / 6, 0.0, 0.0),
            {
                "+y": lambda i, j: (i >= 2) & (i <= 11) & (j >= 6) & (j <= 25),
                "+z": lambda i, j: (i >= 12) & (i <= 29) & (j >= 6) & (j <= 25),
            },
        ),
    ],
)
def test_cube_from_known_angles(angles, expected, cull):
    verts, faces, names = _cube()
    camera = torch.tensor(make_camera(*angles, tx=15.5, ty=15.5, scale=10.0))[None]
    verts_px = project(verts[None].double(), camera).float()
    out = rasterize(verts_px, faces, (32, 32), RasterizeConfig(backend="torch", cull_backfaces=cull))
    side = np.array(["" if f < 0 else names[f] for f in out.pix_to_face[0].flatten().tolist()]).reshape(
        32, 32
    )
    want = np.full((32, 32), "", dtype=object)
    for name, rule in expected.items():
        want[_mask(32, 32, rule).numpy()] = name
    assert (side == want).all()
    assert torch.equal(out.pix_to_face, rasterize_reference(verts_px, faces, (32, 32), cull).pix_to_face)


def test_shared_diagonal_through_centres_is_covered_once(ours):
    # Square split along the diagonal (0, 0) - (4, 4); the diagonal's centres belong to the triangle for
    # which it is a left edge (above-right of it), whatever the face order: covered once, never twice.
    verts = _verts([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [4.0, 4.0, 0.0], [0.0, 4.0, 0.0]])
    upper, lower = [0, 1, 2], [0, 2, 3]
    for faces, upper_id in ((_faces([upper, lower]), 0), (_faces([lower, upper]), 1)):
        out = rasterize(verts, faces, (6, 6), ours).pix_to_face[0]
        for k in range(4):
            assert out[k, k] == upper_id
        covered = _mask(6, 6, lambda i, j: (i < 4) & (j < 4))  # right and bottom borders are excluded
        assert torch.equal(out >= 0, covered)


def test_grid_mesh_has_no_holes(ours):
    # A jittered grid tessellating [0, 12] x [0, 9] with integer border vertices: every centre inside is
    # covered; the top and left borders are included and the bottom and right ones excluded.
    generator = torch.Generator().manual_seed(3)
    nx, ny = 7, 6
    xs, ys = torch.linspace(0, 12, nx), torch.linspace(0, 9, ny)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2)
    interior = (grid[:, 0] > 0) & (grid[:, 0] < 12) & (grid[:, 1] > 0) & (grid[:, 1] < 9)
    grid[interior] += (torch.rand(int(interior.sum()), 2, generator=generator) - 0.5) * 0.8
    grid[interior] = torch.round(grid[interior] * 2) / 2  # many vertices and edges on or through centres
    faces = []
    for r in range(ny - 1):
        for c in range(nx - 1):
            a, b, d, e = r * nx + c, r * nx + c + 1, (r + 1) * nx + c, (r + 1) * nx + c + 1
            faces += [[a, b, e], [a, e, d]] if (r + c) % 2 else [[a, b, d], [b, e, d]]
    verts = torch.cat([grid, torch.rand(len(grid), 1, generator=generator)], -1)[None]
    out = rasterize(verts, _faces(faces), (11, 14), ours)
    assert torch.equal(out.pix_to_face[0] >= 0, _mask(11, 14, lambda i, j: (i < 9) & (j < 12)))
    _assert_same(out, rasterize_reference(verts, _faces(faces), (11, 14)))


# --- Against the slow reference --------------------------------------------------------------------------


def _random_mesh(generator, batch, n_verts, n_faces, height, width, dtype, integer=False):
    scale = torch.tensor([width * 1.2, height * 1.2, 20.0], dtype=torch.float64)
    verts = torch.rand(batch, n_verts, 3, generator=generator, dtype=torch.float64) * scale - 0.1 * scale
    if integer:
        verts = torch.round(verts * 2) / 2  # exact edge and depth ties everywhere
    # Mixed triangle sizes: most faces pick nearby vertices (small), some span the image.
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("integer", [False, True])
def test_matches_reference_on_random_meshes(dtype, integer, ours):
    generator = torch.Generator().manual_seed(7 + integer)
    total, agree = 0, 0
    for _ in range(3):
        verts, faces = _random_mesh(generator, 2, 40, 60, 24, 30, dtype, integer)
        fast = rasterize(verts, faces, (24, 30), ours)
        slow = rasterize_reference(verts, faces, (24, 30))
        same = fast.pix_to_face == slow.pix_to_face
        total += same.numel()
        agree += int(same.sum())
        both = same & (fast.pix_to_face >= 0)
        torch.testing.assert_close(fast.zbuf[both], slow.zbuf[both], rtol=0, atol=0)
        torch.testing.assert_close(fast.bary_coords[both], slow.bary_coords[both])
        assert (fast.pix_to_face >= 0).float().mean() > 0.3  # the meshes do cover the images
    assert agree / total >= 0.9999


def test_matches_reference_on_ict_patch(ict_model, ours):
    # A few hundred ICT triangles around the mouth at a realistic pixel density (the reference is slow).
    surface = ict_model.surface()
    verts = torch.tensor(surface.mean, dtype=torch.float64)[None]
    camera = torch.tensor(make_camera(pitch=0.2, yaw=-0.4, roll=0.1, tx=10, ty=-140, scale=9.0))[None]
    verts_px = project(verts, camera).float()
    faces = torch.tensor(surface.faces.astype(np.int64))
    centre = verts_px[0, faces[:, 0], :2]
    keep = ((centre - torch.tensor([20.0, 20.0])).abs() < 18).all(-1)
    faces = faces[keep]
    assert 150 < len(faces) < 1500
    fast = rasterize(verts_px, faces, (40, 40), ours)
    slow = rasterize_reference(verts_px, faces, (40, 40))
    _assert_same(fast, slow)
    assert (fast.pix_to_face >= 0).float().mean() > 0.5


# --- Options and edge cases ------------------------------------------------------------------------------


def test_batch_split_by_max_candidates_gives_the_same_result(ours):
    generator = torch.Generator().manual_seed(11)
    verts, faces = _random_mesh(generator, 5, 30, 50, 20, 20, torch.float32)
    whole = rasterize(verts, faces, (20, 20), ours)
    split = rasterize(verts, faces, (20, 20), RasterizeConfig(backend="torch", max_candidates=10))
    _assert_same(whole, split)
    assert whole.pix_to_face.shape == (5, 20, 20) and whole.bary_coords.shape == (5, 20, 20, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_slim_outputs_keep_the_faces(dtype, ours):
    generator = torch.Generator().manual_seed(12)
    verts, faces = _random_mesh(generator, 3, 30, 50, 20, 20, dtype)
    whole = rasterize(verts, faces, (20, 20), ours)
    for bary in (False, True):
        slim = dataclasses.replace(ours, barycentrics=bary, zbuf=False, index_dtype="int32")
        out = rasterize(verts, faces, (20, 20), slim)
        assert out.pix_to_face.dtype == torch.int32 and out.zbuf is None
        assert torch.equal(out.pix_to_face.long(), whole.pix_to_face)
        assert (out.bary_coords is not None) == bary
        if bary:
            assert torch.equal(out.bary_coords, whole.bary_coords)
    empty = rasterize(verts, faces[:0], (20, 20), slim)
    assert empty.pix_to_face.dtype == torch.int32 and (empty.pix_to_face == -1).all() and empty.zbuf is None


def test_non_finite_vertices_cover_nothing(ours):
    generator = torch.Generator().manual_seed(5)
    verts, faces = _random_mesh(generator, 1, 20, 30, 16, 16, torch.float32)
    bad = int(faces[0, 0])
    verts_nan = verts.clone()
    verts_nan[0, bad, 0] = float("nan")
    out = rasterize(verts_nan, faces, (16, 16), ours)
    uses_bad = (faces == bad).any(-1)
    expected = rasterize(verts, faces[~uses_bad], (16, 16), ours).pix_to_face
    remap = torch.nonzero(~uses_bad).squeeze(1)
    expected = torch.where(expected >= 0, remap[expected.clamp(min=0)], -1)
    assert torch.equal(out.pix_to_face, expected)
    verts_inf = verts.clone()
    verts_inf[0, bad, 1] = float("inf")
    assert torch.equal(rasterize(verts_inf, faces, (16, 16), ours).pix_to_face, expected)


def test_cull_backfaces_drops_clockwise_model_triangles(ours):
    # Counter-clockwise in model space (y up) = clockwise in the y-down image = facing the camera.
    front = torch.tensor([[[1.0, 5.0, 0.0], [5.0, 5.0, 0.0], [1.0, 1.0, 0.0]]])  # image-space, y down
    faces = _faces([[0, 1, 2]])
    cull = dataclasses.replace(ours, cull_backfaces=True)
    assert (rasterize(front, faces, (8, 8), cull).pix_to_face == 0).sum() > 0
    assert (rasterize(front, faces.flip(1), (8, 8), cull).pix_to_face == -1).all()
    assert torch.equal(
        rasterize(front, faces.flip(1), (8, 8), ours).pix_to_face >= 0,
        rasterize(front, faces, (8, 8), ours).pix_to_face >= 0,
    )


def test_empty_inputs_and_validation(ours):
    out = rasterize(torch.zeros(2, 3, 3), torch.zeros(0, 3, dtype=torch.int64), (4, 5), ours)
    assert out.pix_to_face.shape == (2, 4, 5) and (out.pix_to_face == -1).all()
    off_image = _verts([[-9.0, -9.0, 0.0], [-5.0, -9.0, 0.0], [-9.0, -5.0, 0.0]])
    assert (rasterize(off_image, _faces([[0, 1, 2]]), (4, 4), ours).pix_to_face == -1).all()
    with pytest.raises(ValueError, match="verts_px"):
        rasterize(torch.zeros(3, 3), _faces([[0, 1, 2]]), (4, 4))
    with pytest.raises(ValueError, match="backend"):
        rasterize(off_image, _faces([[0, 1, 2]]), (4, 4), RasterizeConfig(backend="nope"))  # type: ignore[arg-type]


def test_auto_backend_on_cpu_is_numba_else_torch(monkeypatch):
    import pipeline.preprocess.rasterize

    generator = torch.Generator().manual_seed(2)
    verts, faces = _random_mesh(generator, 1, 20, 20, 12, 12, torch.float32)
    want = rasterize(verts, faces, (12, 12), TORCH)
    _assert_same(rasterize(verts, faces, (12, 12)), want)
    _assert_same(rasterize(verts.clone().requires_grad_(), faces, (12, 12)), want)  # not differentiable
    monkeypatch.setattr(pipeline.preprocess.rasterize, "numba_available", lambda: False)
    _assert_same(rasterize(verts, faces, (12, 12)), want)
    # The numba kernel takes float32 / float64 CPU vertices only; auto sends anything else to torch.
    with pytest.raises(ValueError, match="numba rasterizer takes float32 / float64 CPU vertices"):
        rasterize(verts.half(), faces, (12, 12), RasterizeConfig(backend="numba"))


@pytest.mark.parametrize("cull", [False, True])
def test_numba_equals_torch_on_whole_ict_faces(ict_model, cull):
    """The whole ICT surface (22,288 triangles) at 256 px in four realistic poses, as NMFC renders it:
    the numba and torch backends agree bitwise (faces, depths, barycentrics)."""
    surface = ict_model.surface()
    verts = torch.tensor(surface.mean, dtype=torch.float32)[None].expand(4, -1, -1)
    height = float(surface.mean[:, 1].max() - surface.mean[:, 1].min())
    cameras = torch.tensor(
        np.stack(
            [
                make_camera(pitch=p, yaw=y, roll=r, tx=128, ty=128, scale=0.8 * 256 / height)
                for p, y, r in [(0.0, 0.0, 0.0), (0.2, -0.5, 0.1), (-0.3, 0.6, -0.2), (0.1, 1.2, 0.0)]
            ]
        ),
        dtype=torch.float32,
    )
    verts_px = project(verts, cameras)
    faces = torch.tensor(surface.faces.astype(np.int64))
    numba_out = rasterize(verts_px, faces, (256, 256), RasterizeConfig(backend="numba", cull_backfaces=cull))
    torch_out = rasterize(verts_px, faces, (256, 256), RasterizeConfig(backend="torch", cull_backfaces=cull))
    _assert_same(numba_out, torch_out)
    assert ((numba_out.pix_to_face >= 0).float().mean((1, 2)) > 0.2).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(4)
    verts, faces = _random_mesh(generator, 3, 60, 120, 48, 40, torch.float32)
    cpu = rasterize(verts, faces, (48, 40), TORCH)
    gpu = rasterize(verts.cuda(), faces.cuda(), (48, 40), TORCH)
    _assert_same(cpu, type(cpu)(*(t.cpu() for t in gpu)))


@pytest.mark.skipif(not pytorch3d_available(), reason="PyTorch3D is not installed")
def test_pytorch3d_backend_agrees():
    generator = torch.Generator().manual_seed(9)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for cull in (False, True):
        verts, faces = _random_mesh(generator, 2, 40, 60, 24, 30, torch.float32)
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
    verts, faces = _random_mesh(generator, 2, 25, 30, *size, torch.float32)
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


def test_box_classes_are_the_smallest_that_fit():
    from pipeline.preprocess.rasterize import _box_class_table, _box_classes

    classes = _box_classes(300)
    table = _box_class_table(300, torch.device("cpu"))
    for n in range(1, 301):
        k = int(table[n])
        assert classes[k] >= n and (k == 0 or classes[k - 1] < n)
