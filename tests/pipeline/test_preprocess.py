"""Per-video preprocessing helpers (pipeline/preprocess.py) without Ray."""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.rasterize import random_parameters
from pipeline.nmfc import NmfcConfig, NmfcRenderer, nmfc_to_uint8
from pipeline.preprocess import nmfc_images_uint8


def test_nmfc_uint8_by_colour_table_equals_rounding_the_float_images(ict_model):
    renderer = NmfcRenderer(ict_model, NmfcConfig(image_size=(64, 64), batch_frames=3))
    with torch.inference_mode():
        images = renderer.render(*random_parameters(ict_model, 5, 64, seed=3))
    fast = nmfc_images_uint8(images, renderer)
    assert fast.dtype == np.uint8 and fast.shape == (5, 64, 64, 3)
    np.testing.assert_array_equal(fast, nmfc_to_uint8(images.image))
    covered = images.mask.numpy()
    assert covered.mean() > 0.2 and (fast[~covered] == 0).all() and fast[covered].max() > 100
