"""Pixel, mask and temporal metrics of a generated video against the real one (self-reenactment: same
frames, same crops), numpy in, floats out.

Conventions for every function here:
- Frames ``(T, H, W, 3)`` RGB, uint8 or float, values on the 0-255 scale (convert the networks' [-1, 1]
  tensors with ``(x + 1) * 127.5``); generated and real at the same size and in the same crop.
- Masks ``(T, H, W)``: bool, float in [0, 1] (a pixel is foreground at >= ``threshold``, 0.5 by default),
  or uint8 0/255 as the shards store them (compared at ``threshold * 255``).
- Flow ``(T, H, W, 2)`` float pixels (x, y) from ``pipeline.preprocess.flow.optical_flow`` (or a shard's
  ``flow`` column): flow t maps frame t to t+1, ``frame_t(p) ~ frame_{t+1}(p + flow_t(p))``; the last
  frame's flow is unused.

Definitions and sources:
- Average pixel distance (APD), Head2Head (Koujan, Doukas et al., FG 2020, arXiv:2005.10954) and
  Head2HeadFS: the Euclidean distance between the generated and the real RGB value of a pixel (0-255
  scale, so 0 to 255 * sqrt(3)), summed over all pixels of all frames and divided by the number of pixels
  summed: a pooled mean, not a mean of per-frame means. Source: the authors' code,
  michaildoukas/head2head ``util/util.py: get_pixel_distance`` (``np.linalg.norm`` over the channels of
  ``abs(real - fake)``, ``total_distance / total_pixels``) as run by
  ``preprocessing/compute_pixel_distance.py``. Their masked variant counts only the pixels under the
  NMFC (face) render; ``masked_average_pixel_distance`` counts the pixels under the real foreground mask
  instead (head, hair and shoulders: what the generator draws), pooled the same way.
- Mask IoU (paper Fig. 6): |G and R| / |G or R| per frame of the thresholded masks (michaildoukas/head2head
  ``util/util.py: get_IoU`` thresholds 0-255 masks at > 127); 1 where both masks are empty.
- Flow warping error: Lai et al., "Learning Blind Video Temporal Consistency" (ECCV 2018), as their
  ``evaluate_WarpError.py`` (phoenix104104/fast_blind_video_consistency) computes it: frame t+1 warped
  back to t with the flow of the *unprocessed* video, the error over non-occluded pixels, averaged per
  frame pair then over pairs. See ``flow_warping_errors`` for the flow chosen and the relative variant.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from pipeline.preprocess.flow import FlowConfig, optical_flow

MASK_THRESHOLD = 0.5  # foreground at >= 0.5 of a soft mask (Head2Head: > 127 of 255)


def _check_frames(generated: np.ndarray, real: np.ndarray) -> None:
    assert generated.shape == real.shape and generated.ndim == 4 and generated.shape[-1] == 3, (
        generated.shape,
        real.shape,
    )


def binary_mask(mask: np.ndarray, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """mask (T, H, W) bool / float in [0, 1] / uint8 0-255 -> (T, H, W) bool foreground."""
    mask = np.asarray(mask)
    if mask.dtype == np.bool_:
        return mask
    if mask.dtype == np.uint8:
        return mask >= threshold * 255
    return mask >= threshold


def pixel_distance_map(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per-pixel Euclidean RGB distance: generated, real (T, H, W, 3) 0-255 -> (T, H, W) float32 in
    [0, 255 * sqrt(3)] (Head2Head's per-pixel APD term; also its error heat map)."""
    _check_frames(generated, real)
    difference = generated.astype(np.float32) - real.astype(np.float32)
    return np.sqrt(np.einsum("thwc,thwc->thw", difference, difference))


def _distance_sums(
    generated: np.ndarray, real: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: (sum of the per-pixel distances over the counted pixels (T,) float64, their count (T,)
    int64), one frame at a time so that memory stays at one frame's distances."""
    _check_frames(generated, real)
    selected = None if mask is None else binary_mask(mask)
    assert selected is None or selected.shape == real.shape[:3], (selected.shape, real.shape)
    totals = np.empty(len(real))
    counts = np.full(len(real), real.shape[1] * real.shape[2], np.int64)
    for t in range(len(real)):
        distance = pixel_distance_map(generated[t : t + 1], real[t : t + 1])[0].astype(np.float64)
        if selected is None:
            totals[t] = distance.sum()
        else:
            totals[t] = distance[selected[t]].sum()
            counts[t] = selected[t].sum()
    return totals, counts


def average_pixel_distance(generated: np.ndarray, real: np.ndarray, mask: np.ndarray | None = None) -> float:
    """APD (Head2Head's definition, module docstring): generated, real (T, H, W, 3) 0-255, optional mask
    (T, H, W) selecting the pixels counted -> float, 0-255 RGB units (0 for identical frames, at most
    255 * sqrt(3) = 441.7). Pooled over pixels and frames: sum of distances / number of pixels counted."""
    totals, counts = _distance_sums(generated, real, mask)
    if counts.sum() == 0:
        raise ValueError("average_pixel_distance: the mask selects no pixel in any frame")
    return float(totals.sum() / counts.sum())


def masked_average_pixel_distance(generated: np.ndarray, real: np.ndarray, real_mask: np.ndarray) -> float:
    """Masked APD: APD over the pixels of the real foreground mask only: generated, real (T, H, W, 3)
    0-255, real_mask (T, H, W) -> float, 0-255 RGB units, pooled over the masked pixels of all frames."""
    return average_pixel_distance(generated, real, real_mask)


def pixel_distance_per_frame(
    generated: np.ndarray, real: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """APD of each frame (for plots and frame strips): (T, H, W, 3) pairs, optional mask (T, H, W) ->
    (T,) float64, 0-255 RGB units; NaN for a frame whose mask is empty."""
    totals, counts = _distance_sums(generated, real, mask)
    return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def mask_iou(
    generated_mask: np.ndarray, real_mask: np.ndarray, threshold: float = MASK_THRESHOLD
) -> np.ndarray:
    """Foreground mask IoU per frame (paper Fig. 6): masks (T, H, W), thresholded at ``threshold`` ->
    (T,) float64 in [0, 1]; 1 for a frame where both masks are empty (nothing to disagree on)."""
    g = binary_mask(generated_mask, threshold)
    r = binary_mask(real_mask, threshold)
    assert g.shape == r.shape and g.ndim == 3, (g.shape, r.shape)
    intersection = np.logical_and(g, r).sum(axis=(1, 2))
    union = np.logical_or(g, r).sum(axis=(1, 2))
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def mean_mask_iou(
    generated_mask: np.ndarray, real_mask: np.ndarray, threshold: float = MASK_THRESHOLD
) -> float:
    """Mean over frames of ``mask_iou``: float in [0, 1]."""
    return float(mask_iou(generated_mask, real_mask, threshold).mean())


def warp_to_previous(video: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame t+1 sampled along flow t, ``warped_t(p) = video_{t+1}(p + flow_t(p))`` (bilinear), which is
    frame t again where the flow is right.

    video (T, H, W, C) or (T, H, W), flow (T, H, W, 2) -> (warped (T-1, H, W[, C]) float32,
    inside (T-1, H, W) bool: p + flow_t(p) lies within frame t+1's pixel centres).
    """
    t, h, w = video.shape[:3]
    assert flow.shape[:3] == (t, h, w) and flow.shape[-1] == 2, (video.shape, flow.shape)
    x, y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = np.empty((t - 1, *video.shape[1:]), np.float32)
    inside = np.empty((t - 1, h, w), bool)
    for k in range(t - 1):
        map_x = x + flow[k, ..., 0].astype(np.float32)
        map_y = y + flow[k, ..., 1].astype(np.float32)
        warped[k] = cv2.remap(
            video[k + 1].astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        inside[k] = (map_x >= 0) & (map_x <= w - 1) & (map_y >= 0) & (map_y <= h - 1)
    return warped, inside


def _pair_masks(flow: np.ndarray, mask: np.ndarray | None, inside: np.ndarray) -> np.ndarray:
    """Pixels of pair (t, t+1) that count: inside, and foreground in frame t and, carried by the flow, in
    frame t+1 (a pixel that enters or leaves the foreground has no counterpart): (T-1, H, W) bool."""
    if mask is None:
        return inside
    foreground = binary_mask(mask).astype(np.float32)
    warped, _ = warp_to_previous(foreground, flow)
    return inside & (foreground[:-1] >= 0.5) & (warped >= 0.5)


def _mean_per_pair(error: np.ndarray, valid: np.ndarray) -> float:
    """error, valid (T-1, H, W) -> mean over pairs of the mean over each pair's valid pixels (Lai et al.);
    pairs without a valid pixel are skipped; NaN when none has one."""
    count = valid.sum(axis=(1, 2))
    total = np.where(valid, error, 0.0).sum(axis=(1, 2), dtype=np.float64)
    used = count > 0
    return float(np.mean(total[used] / count[used])) if used.any() else float("nan")


def warping_error(video: np.ndarray, flow: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Lai et al.'s flow warping error of one video, with L1 instead of their squared error:
    video (T, H, W, 3) 0-255, flow (T, H, W, 2), optional foreground mask (T, H, W) -> float, mean
    absolute difference per channel between frame t and frame t+1 warped back (0-255 units), over the
    counted pixels (``_pair_masks``) of each pair, averaged over the T-1 pairs."""
    if len(video) < 2:
        return float("nan")
    warped, inside = warp_to_previous(video, flow)
    error = np.abs(warped - video[:-1].astype(np.float32)).mean(axis=-1)
    return _mean_per_pair(error, _pair_masks(flow, mask, inside))


@dataclasses.dataclass(frozen=True)
class WarpingErrors:
    """Temporal metrics of a generated video against the real one, all with the real video's flow
    (0-255 units, mean absolute difference per channel; lower is better).

    relative: warping error of the difference video G - R: mean |(G_t - W G_{t+1}) - (R_t - W R_{t+1})|
        (W = warp back with the real flow). 0 exactly when the generated video changes from frame to
        frame as the real one does, whatever the flow's own errors (they cancel); the headline number.
    generated: Lai et al.'s warping error of the generated video (comparable across papers in kind).
    real: the same of the real video: the floor that flow errors and occlusions leave; ``generated`` of a
        perfect reproduction equals it. Note that blurring lowers ``generated`` below ``real`` (a blurred
        video hides the flow's misalignments), which is why ``relative`` is the headline.
    pairs: frame pairs counted (T - 1).
    """

    relative: float
    generated: float
    real: float
    pairs: int


def flow_warping_errors(
    generated: np.ndarray,
    real: np.ndarray,
    flow: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    flow_config: FlowConfig | None = None,
) -> WarpingErrors:
    """Temporal consistency of a generated video, warped with the optical flow of the REAL video.

    generated, real (T, H, W, 3) 0-255 (T >= 2); flow (T, H, W, 2): the real video's flow at the frames'
    resolution, e.g. the shards' ``flow`` column (resized with its vectors scaled, as
    ``pipeline.train.data.decode_frames`` does, for frames at another size; None computes it with
    ``optical_flow(real, flow_config)``, the preprocessing's flow, DIS by default); mask (T, H, W): the
    real foreground mask (None counts every pixel) -> ``WarpingErrors``.

    Why the real video's flow: in self-reenactment the real motion is what the generated video should
    show; one reference motion serves every method compared; and a flow estimated on the generated
    frames partly explains flicker and swimming textures away as motion, rewarding them. (For a
    cross-identity result, which has no real counterpart, pass the generated video as ``real`` too:
    then only ``generated`` means something.)
    """
    _check_frames(generated, real)
    if len(real) < 2:
        raise ValueError(f"flow_warping_errors needs at least 2 frames, got {len(real)}")
    if flow is None:
        flow = optical_flow(np.ascontiguousarray(real, dtype=np.uint8), flow_config or FlowConfig())
    warped_g, inside = warp_to_previous(generated, flow)
    warped_r, _ = warp_to_previous(real, flow)
    valid = _pair_masks(flow, mask, inside)
    residual_g = warped_g - generated[:-1].astype(np.float32)
    residual_r = warped_r - real[:-1].astype(np.float32)
    return WarpingErrors(
        relative=_mean_per_pair(np.abs(residual_g - residual_r).mean(axis=-1), valid),
        generated=_mean_per_pair(np.abs(residual_g).mean(axis=-1), valid),
        real=_mean_per_pair(np.abs(residual_r).mean(axis=-1), valid),
        pairs=len(real) - 1,
    )
