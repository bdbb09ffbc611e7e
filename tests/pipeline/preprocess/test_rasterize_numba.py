"""The numba backend against the torch backend on the whole ICT face, as NMFC renders it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.face3d.camera import make_camera, project
from pipeline.preprocess.rasterize import RasterizeConfig, rasterize
from tests.pipeline.preprocess.rasterize_inputs import assert_same_fragments


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
    assert_same_fragments(numba_out, torch_out)
    assert ((numba_out.pix_to_face >= 0).float().mean((1, 2)) > 0.2).all()
