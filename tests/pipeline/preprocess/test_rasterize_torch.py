"""The torch backend: batches split by ``max_candidates``, bounding-box size classes, CUDA."""

from __future__ import annotations

import pytest
import torch

from pipeline.preprocess.rasterize import RasterizeConfig, rasterize
from pipeline.preprocess.rasterize_torch import _box_class_table, _box_classes
from tests.pipeline.preprocess.rasterize_inputs import assert_same_fragments, random_mesh

TORCH = RasterizeConfig(backend="torch")


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_batch_split_by_max_candidates_gives_the_same_result(backend):
    generator = torch.Generator().manual_seed(11)
    verts, faces = random_mesh(generator, 5, 30, 50, 20, 20, torch.float32)
    whole = rasterize(verts, faces, (20, 20), RasterizeConfig(backend=backend))
    split = rasterize(verts, faces, (20, 20), RasterizeConfig(backend="torch", max_candidates=10))
    assert_same_fragments(whole, split)
    assert whole.pix_to_face.shape == (5, 20, 20) and whole.bary_coords.shape == (5, 20, 20, 3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    generator = torch.Generator().manual_seed(4)
    verts, faces = random_mesh(generator, 3, 60, 120, 48, 40, torch.float32)
    cpu = rasterize(verts, faces, (48, 40), TORCH)
    gpu = rasterize(verts.cuda(), faces.cuda(), (48, 40), TORCH)
    assert_same_fragments(cpu, type(cpu)(*(t.cpu() for t in gpu)))


def test_box_classes_are_the_smallest_that_fit():
    classes = _box_classes(300)
    table = _box_class_table(300, torch.device("cpu"))
    for n in range(1, 301):
        k = int(table[n])
        assert classes[k] >= n and (k == 0 or classes[k - 1] < n)
