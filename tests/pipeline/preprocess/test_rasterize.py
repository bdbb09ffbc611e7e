"""Rasteriser rules through ``rasterize``: golden cases, the slow reference, options, edge cases and the
choice of backend. Backend-specific tests are in ``test_rasterize_{torch,numba,pytorch3d}.py``."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from model.face3d.camera import make_camera, project
from pipeline.preprocess.rasterize import RasterizeConfig, rasterize
from pipeline.preprocess.rasterize_reference import rasterize_reference
from tests.pipeline.preprocess.rasterize_inputs import assert_same_fragments, random_mesh

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
    assert_same_fragments(out, rasterize_reference(verts, _faces(faces), (11, 14)))


# --- Against the slow reference --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("integer", [False, True])
def test_matches_reference_on_random_meshes(dtype, integer, ours):
    generator = torch.Generator().manual_seed(7 + integer)
    total, agree = 0, 0
    for _ in range(3):
        verts, faces = random_mesh(generator, 2, 40, 60, 24, 30, dtype, integer)
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
    assert_same_fragments(fast, slow)
    assert (fast.pix_to_face >= 0).float().mean() > 0.5


# --- Options and edge cases ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_slim_outputs_keep_the_faces(dtype, ours):
    generator = torch.Generator().manual_seed(12)
    verts, faces = random_mesh(generator, 3, 30, 50, 20, 20, dtype)
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
    verts, faces = random_mesh(generator, 1, 20, 30, 16, 16, torch.float32)
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
    import pipeline.preprocess.rasterize_numba

    numba_calls = []
    numba_backend = pipeline.preprocess.rasterize_numba.rasterize_numba
    monkeypatch.setattr(
        pipeline.preprocess.rasterize_numba,
        "rasterize_numba",
        lambda *args: numba_calls.append(args) or numba_backend(*args),
    )
    generator = torch.Generator().manual_seed(2)
    verts, faces = random_mesh(generator, 1, 20, 20, 12, 12, torch.float32)
    want = rasterize(verts, faces, (12, 12), TORCH)
    assert not numba_calls
    assert_same_fragments(rasterize(verts, faces, (12, 12)), want)
    # Not differentiable: vertices that require grad take the same path.
    assert_same_fragments(rasterize(verts.clone().requires_grad_(), faces, (12, 12)), want)
    assert len(numba_calls) == 2
    monkeypatch.setattr(pipeline.preprocess.rasterize, "numba_available", lambda: False)
    assert_same_fragments(rasterize(verts, faces, (12, 12)), want)
    assert len(numba_calls) == 2
    # The numba kernel takes float32 / float64 CPU vertices only; auto sends anything else to torch.
    with pytest.raises(ValueError, match="numba rasterizer takes float32 / float64 CPU vertices"):
        rasterize(verts.half(), faces, (12, 12), RasterizeConfig(backend="numba"))
