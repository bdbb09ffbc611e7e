from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluate.metrics import (
    average_pixel_distance,
    binary_mask,
    flow_warping_errors,
    mask_iou,
    masked_average_pixel_distance,
    mean_mask_iou,
    pixel_distance_per_frame,
    warp_to_previous,
    warping_error,
)
from pipeline.preprocess.flow import FlowConfig, optical_flow


def random_video(t: int = 4, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (t, size, size, 3), dtype=np.uint8)


def reference_apd(generated: np.ndarray, real: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Head2Head's loop (michaildoukas/head2head util.get_pixel_distance + compute_pixel_distance.py):
    per frame, sum of per-pixel RGB L2 norms of |real - fake| (int32) over the counted pixels; the total
    over frames divided by the total pixel count."""
    total_distance, total_pixels = 0.0, 0
    for t in range(len(real)):
        error = np.abs(real[t].astype(np.int32) - generated[t].astype(np.int32))
        distance = np.linalg.norm(error, axis=2)
        if mask is None:
            total_distance += distance.sum()
            total_pixels += distance.size
        else:
            total_distance += (distance * mask[t]).sum()
            total_pixels += int(mask[t].sum())
    return total_distance / total_pixels


def test_apd_matches_head2heads_definition_and_a_hand_value():
    real, generated = random_video(seed=1), random_video(seed=2)
    mask = np.zeros(real.shape[:3], bool)
    mask[0, 4:20, 4:12] = True  # frames with different mask areas: pooled, not a mean of frame means
    mask[2, :, :] = True
    assert average_pixel_distance(generated, real) == pytest.approx(reference_apd(generated, real), rel=1e-6)
    assert masked_average_pixel_distance(generated, real, mask) == pytest.approx(
        reference_apd(generated, real, mask), rel=1e-6
    )
    # Every pixel off by (3, 4, 0): the distance is 5 everywhere.
    offset = np.clip(real.astype(np.int16), 0, 250).astype(np.uint8)
    moved = offset + np.array([3, 4, 0], np.uint8)
    assert average_pixel_distance(moved, offset) == pytest.approx(5.0)
    assert masked_average_pixel_distance(moved, offset, mask) == pytest.approx(5.0)
    per_frame = pixel_distance_per_frame(moved, offset, mask)
    assert per_frame[0] == pytest.approx(5.0) and np.isnan(per_frame[1])


def test_identical_videos_score_perfectly():
    video = random_video()
    mask = np.zeros(video.shape[:3], np.float32)
    mask[:, 8:24, 8:24] = 0.9
    assert average_pixel_distance(video, video) == 0.0
    assert masked_average_pixel_distance(video, video, mask) == 0.0
    np.testing.assert_array_equal(mask_iou(mask, mask), 1.0)
    errors = flow_warping_errors(video, video, mask=mask)
    assert errors.relative == 0.0 and errors.generated == errors.real and errors.pairs == len(video) - 1


def test_masks_threshold_and_iou_by_hand():
    a = np.zeros((3, 8, 8), np.float32)
    b = np.zeros((3, 8, 8), np.float32)
    a[0, :, :4] = 1.0  # 32 px
    b[0, :, 2:6] = 0.7  # 32 px, 16 shared: IoU 16 / 48
    a[1, :4] = 0.49  # below the threshold: empty
    # frame 2: both empty -> 1
    np.testing.assert_allclose(mask_iou(a, b), [1 / 3, 1.0, 1.0])
    assert mean_mask_iou(a, b) == pytest.approx((1 / 3 + 2) / 3)
    # The shards' 0/255 PNG masks threshold like soft masks.
    np.testing.assert_array_equal(binary_mask((a * 255).astype(np.uint8)), binary_mask(a))
    with pytest.raises(ValueError, match="no pixel"):
        masked_average_pixel_distance(random_video(3, 8), random_video(3, 8), np.zeros((3, 8, 8)))


def translating_texture(t: int = 5, size: int = 48, step=(2, 1)) -> np.ndarray:
    """A smooth random texture moving by ``step`` (x, y) pixels per frame."""
    import cv2

    rng = np.random.default_rng(3)
    pad = 4 * max(step) * t
    big = cv2.GaussianBlur(
        rng.uniform(0, 255, (size + 2 * pad, size + 2 * pad, 3)).astype(np.float32), (0, 0), 2
    )
    frames = [
        big[pad - k * step[1] : pad - k * step[1] + size, pad - k * step[0] : pad - k * step[0] + size]
        for k in range(t)
    ]
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def test_warping_follows_the_flow_convention():
    video = translating_texture()
    flow = np.zeros((*video.shape[:3], 2), np.float32)
    flow[..., 0], flow[..., 1] = 2.0, 1.0  # frame_t(p) = frame_{t+1}(p + (2, 1))
    warped, inside = warp_to_previous(video, flow)
    assert warped.shape == (4, 48, 48, 3) and inside.shape == (4, 48, 48)
    assert not inside[:, -1].any() and inside[:, 0, 0].all()
    np.testing.assert_allclose(warped[:, :-2, :-3], video[:-1, :-2, :-3].astype(np.float32), atol=1e-3)
    assert warping_error(video, flow) < 1e-3
    assert warping_error(video, np.zeros_like(flow)) > 5.0  # no flow: the motion is unexplained


def test_warping_error_sees_flicker_and_uses_the_real_flow():
    real = translating_texture()
    flicker = real.astype(np.int16)
    flicker[1::2] += 12  # every other frame brighter
    flicker = np.clip(flicker, 0, 255).astype(np.uint8)
    errors = flow_warping_errors(flicker, real, mask=np.ones(real.shape[:3], bool))
    assert errors.relative > 10.0 and errors.generated > errors.real + 10.0
    # flow=None computes the real video's DIS flow, the preprocessing's function.
    given = flow_warping_errors(flicker, real, optical_flow(real, FlowConfig()))
    assert flow_warping_errors(flicker, real) == given


def test_degraded_copies_of_real_clips_score_worse(eval_clips):
    """On real crops: identical = perfect; a blurred and a shifted copy are worse in APD, masked APD,
    the relative warping error, and (shifted masks) in IoU."""
    for clip in eval_clips:
        real, mask = clip.crops, clip.mask
        flow = optical_flow(real, FlowConfig())
        same = flow_warping_errors(real, real, flow, mask)
        assert same.relative == 0.0 and same.generated == same.real > 0.0  # the real video's own floor
        assert (
            average_pixel_distance(real, real) == 0.0
            and masked_average_pixel_distance(real, real, mask) == 0.0
        )
        for copy in (clip.blurred, clip.shifted):
            assert average_pixel_distance(copy, real) > 2.0
            assert masked_average_pixel_distance(copy, real, mask) > 2.0
            assert flow_warping_errors(copy, real, flow, mask).relative > 0.3
        iou = mask_iou(clip.shifted_mask, mask)
        assert np.all(iou < 0.95) and np.all(iou > 0.8) and mean_mask_iou(mask, mask) == 1.0
