from __future__ import annotations

import numpy as np
import pytest

from pipeline.preprocess.flow import FlowConfig, RaftFlow, flow_to_rgb, optical_flow, warp_error


def textured_pair(shift_x: int, shift_y: int, size: int = 96) -> np.ndarray:
    """Two frames of smooth random texture, the second moved by (shift_x, shift_y) pixels."""
    import cv2

    rng = np.random.default_rng(0)
    big = cv2.GaussianBlur(rng.uniform(0, 255, (size + 40, size + 40)).astype(np.float32), (0, 0), 2.0)
    big = cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    first = big[20 : 20 + size, 20 : 20 + size]
    second = big[20 - shift_y : 20 - shift_y + size, 20 - shift_x : 20 - shift_x + size]
    return np.stack([np.repeat(first[..., None], 3, 2), np.repeat(second[..., None], 3, 2)])


@pytest.mark.parametrize(
    "config", [FlowConfig(backend="farneback")] + [FlowConfig(dis_preset=p) for p in ("ultrafast", "fast")]
)
def test_flow_recovers_a_known_translation(config):
    frames = textured_pair(3, -2)
    flow = optical_flow(frames, config)
    assert flow.shape == (2, 96, 96, 2) and flow.dtype == np.float32
    inner = flow[0, 20:-20, 20:-20].reshape(-1, 2)
    np.testing.assert_allclose(np.median(inner, axis=0), [3.0, -2.0], atol=0.3)
    assert np.all(flow[1] == 0)  # the last frame has no successor
    # The flow explains the motion: warping the second frame back matches the first far better.
    assert warp_error(frames, flow) < 0.3 * warp_error(frames, np.zeros_like(flow))


def test_single_frame_gets_zero_flow_and_picture_is_rgb():
    frames = textured_pair(1, 1)[:1]
    assert np.all(optical_flow(frames, FlowConfig()) == 0)
    picture = flow_to_rgb(np.ones((8, 8, 2), np.float32))
    assert picture.shape == (8, 8, 3) and picture.dtype == np.uint8 and picture.max() > 0


def test_raft_without_weights_says_what_to_do():
    with pytest.raises(FileNotFoundError, match="flow.weights_path"):
        RaftFlow(None)
