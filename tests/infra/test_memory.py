"""retain_freed_memory: a renderer's repeated large temporaries stop costing fresh pages."""

from __future__ import annotations

import resource
import sys

import numpy as np
import pytest
import torch

from infra.memory import retain_freed_memory
from model.face3d.camera import make_camera
from pipeline.preprocess.nmfc import NmfcConfig, NmfcRenderer


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_repeated_renders_reuse_freed_memory(ict_model):
    assert retain_freed_memory()
    assert retain_freed_memory()  # idempotent
    frames, size = 32, 256
    renderer = NmfcRenderer(ict_model, NmfcConfig(image_size=(size, size), batch_frames=frames))
    rng = np.random.default_rng(0)
    head_height = float(np.ptp(ict_model.surface().mean[:, 1]))
    camera = torch.tensor(
        np.stack(
            [
                make_camera(yaw=y, tx=size / 2, ty=size / 2, scale=0.8 * size / head_height)
                for y in rng.uniform(-0.5, 0.5, frames)
            ]
        ),
        dtype=torch.float32,
    )
    identity = torch.zeros(frames, ict_model.n_identity)
    expression = torch.full((frames, ict_model.n_expression), 0.1)
    renderer.render(identity, expression, camera, uint8=True)  # the heap grows to its working size
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        renderer.render(identity, expression, camera, uint8=True)
    faults_per_render = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
    # Measured here: ~18,000 fresh pages per 32-frame render with glibc's defaults, 250-1,300 with the
    # setting (freed memory is reused).
    assert faults_per_render < 6000
