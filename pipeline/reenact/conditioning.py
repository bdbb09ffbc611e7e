"""Reenactment conditioning: NMFC sequences of a target's identity driven by a source's expression and pose.

Head2HeadFS (section 3.2) transfers the source's expression and head pose to the target by rendering
NMFC images from the target's identity coefficients, the source's expression coefficients and the
source's camera adapted to the target's frame. Because NMFC colours come from the mean face (Eq. 3),
the images carry the target's face shape and the source's motion.

Pose adaptation (``adapt_pose``), per source frame t, with a = mean over frames:

- rotation: the source's own (pitch, yaw, roll);
- scale: ``s(t) = s_src(t) * a(s_tgt) / a(s_src)``. This is the ratio of mean head sizes in pixels: the
  head size of a video is ``a(s) * extent(identity)``, and rendering the target identity at
  ``s(t)`` gives ``s_src(t) * extent_src * a(size_tgt) / a(size_src)`` pixels, the source's size
  relative to its mean carried over to the target's mean size (the extents cancel);
- translation: re-centred on the target, ``t(t) = a(t_tgt) + (t_src(t) - a(t_src)) * s-ratio``, then
  clamped to the range of the target's own translations (plus a margin), so the head stays where the
  target video has it;
- scale and translation are then smoothed over time (Gaussian, ``smooth_sigma_frames``) against the fit's
  frame-to-frame jitter.

``mode="target_pose"`` keeps the target's own cameras instead (expression-only transfer), playing them
forwards and backwards when the source is longer than the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch

from model.face3d.camera import PITCH, ROLL, SCALE, TX, TY, TZ, YAW
from pipeline.preprocess.nmfc import NmfcConfig, NmfcImages, NmfcRenderer

PoseMode = Literal["source_pose", "target_pose"]
ANGLES = {"pitch_deg": PITCH, "yaw_deg": YAW, "roll_deg": ROLL}


@dataclass(frozen=True)
class PoseAdaptConfig:
    """How the source's head pose is carried over to the target (see the module docstring).

    mode: ``source_pose`` (adapted source pose) or ``target_pose`` (expression-only transfer).
    smooth_sigma_frames: standard deviation in frames of the temporal Gaussian on scale and translation
        (0 disables smoothing).
    clamp_translation: keep the translation within the target's observed range.
    translation_margin_px: widen that range by this many pixels on each side.
    """

    mode: PoseMode = "source_pose"
    smooth_sigma_frames: float = 1.5
    clamp_translation: bool = True
    translation_margin_px: float = 0.0


@dataclass(frozen=True)
class ConditioningConfig:
    pose: PoseAdaptConfig = field(default_factory=PoseAdaptConfig)
    nmfc: NmfcConfig = field(default_factory=NmfcConfig)


def pose_outside_range(pose: dict[str, list[float]], camera: np.ndarray, margin_deg: float) -> str | None:
    """A warning when a driver's head angle leaves the range the person was fine-tuned on, else None.

    pose: the person's statistics (``person.PersonStatistics.pose``: per angle [min, p1, median, p99, max]
    degrees); camera (T, 7) or (7,) radians; margin_deg widens the 1st-99th percentile range each side.
    """
    camera = np.atleast_2d(np.asarray(camera, np.float64))
    for name, index in ANGLES.items():
        _, p1, _, p99, _ = pose[name]
        angles = np.degrees(camera[:, index])
        outside = np.flatnonzero((angles < p1 - margin_deg) | (angles > p99 + margin_deg))
        if len(outside):
            worst = float(angles[outside[np.argmax(np.abs(angles[outside] - (p1 + p99) / 2))]])
            where = f" in {len(outside)} of {len(angles)} frames (first: frame {outside[0]})"
            where = where if len(angles) > 1 else ""
            return (
                f"warning: the driver's {name[:-4]} ({worst:.0f} degrees) leaves the range the person was "
                f"fine-tuned on ({p1:.0f} to {p99:.0f}){where}; expect artefacts there"
            )
    return None


class FaceParams(NamedTuple):
    """3DMM parameters of a video of T frames.

    identity (N_id,) or (T, N_id); expression (T, N_exp); camera (T, 7) (``model.face3d.camera``).
    """

    identity: torch.Tensor
    expression: torch.Tensor
    camera: torch.Tensor


def gaussian_smooth(values: torch.Tensor, sigma_frames: float) -> torch.Tensor:
    """Gaussian smoothing along time with edge-replicating borders.

    values (T, C) float, sigma_frames >= 0 -> (T, C) same dtype; the kernel spans +-3 sigma and sums to 1,
    so a constant sequence is unchanged and every output is a convex combination of inputs.
    """
    if sigma_frames <= 0 or values.shape[0] < 2:
        return values.clone()
    radius = max(1, math.ceil(3 * sigma_frames))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma_frames) ** 2)
    kernel = (kernel / kernel.sum()).to(values.dtype)
    # Edge replication via clamped indices (works for any T, even T < radius).
    index = (torch.arange(values.shape[0])[:, None] + torch.arange(-radius, radius + 1)).clamp(
        0, len(values) - 1
    )
    return (values[index] * kernel[None, :, None].to(values.device)).sum(1)


def ping_pong_indices(n_out: int, n_in: int) -> torch.Tensor:
    """Frame indices 0, 1, ..., n_in - 1, n_in - 2, ..., 1, 0, 1, ... of length n_out (n_in >= 1)."""
    if n_in < 1:
        raise ValueError("the target has no frames")
    if n_in == 1:
        return torch.zeros(n_out, dtype=torch.int64)
    period = 2 * (n_in - 1)
    phase = torch.arange(n_out) % period
    return torch.where(phase < n_in, phase, period - phase)


def adapt_pose(
    source_camera: torch.Tensor, target_camera: torch.Tensor, config: PoseAdaptConfig = PoseAdaptConfig()
) -> torch.Tensor:
    """The cameras that drive the target: source_camera (T_s, 7), target_camera (T_t, 7) -> (T_s, 7) float64.

    See the module docstring for the rules of ``source_pose`` and ``target_pose``.
    """
    source = torch.as_tensor(source_camera, dtype=torch.float64)
    target = torch.as_tensor(target_camera, dtype=torch.float64)
    if source.ndim != 2 or source.shape[-1] != 7 or target.ndim != 2 or target.shape[-1] != 7:
        raise ValueError(
            f"cameras must be (T, 7), got source {tuple(source.shape)}, target {tuple(target.shape)}"
        )
    if len(target) == 0:
        raise ValueError("the target has no frames")
    if config.mode == "target_pose":
        return target[ping_pong_indices(len(source), len(target))]
    if config.mode != "source_pose":
        raise ValueError(f"unknown pose mode {config.mode!r}; use 'source_pose' or 'target_pose'")
    if len(source) == 0:
        return source.clone()
    margin = config.translation_margin_px if config.clamp_translation else None
    adapted = carry_pose(source, source[:, SCALE].mean(), source[:, [TX, TY]].mean(0), target, margin)
    adapted[:, TZ] = target[:, TZ].mean()
    smoothed = [TX, TY, SCALE]
    adapted[:, smoothed] = gaussian_smooth(adapted[:, smoothed], config.smooth_sigma_frames)
    return adapted


def carry_pose(
    camera: torch.Tensor,
    reference_scale: torch.Tensor | float,
    reference_txy: torch.Tensor,
    target: torch.Tensor,
    margin_px: float | None,
) -> torch.Tensor:
    """A driver's cameras carried onto the target's framing by ``adapt_pose``'s rules: camera (T, 7), the
    driver's reference scale () and translation (2,), target (N, 7) the target's cameras, all float64 in
    the same pixels -> (T, 7) float64. Scale times a(s_tgt) / reference_scale; translation a(t_tgt) +
    (t - reference_txy) * that ratio, clamped to the target's range widened by ``margin_px`` (None: not
    clamped); rotation and depth the driver's own. ``adapt_pose`` takes the driver's means over the whole
    video as the reference, the live stream those of its warm-up frames."""
    ratio = target[:, SCALE].mean() / reference_scale  # ratio of mean head sizes
    adapted = camera.clone()
    adapted[:, SCALE] = camera[:, SCALE] * ratio
    xy = [TX, TY]
    adapted[:, xy] = target[:, xy].mean(0) + (camera[:, xy] - reference_txy) * ratio
    if margin_px is not None:
        low, high = target[:, xy].amin(0) - margin_px, target[:, xy].amax(0) + margin_px
        adapted[:, xy] = torch.maximum(torch.minimum(adapted[:, xy], high), low)
    return adapted


def rescale_cameras(camera: torch.Tensor, from_px: int, to_px: int) -> torch.Tensor:
    """Cameras (T, 7) of crops of ``from_px`` pixels to crops of ``to_px`` (camera.py's pixel centres)."""
    ratio = to_px / from_px
    out = camera.clone()
    out[:, SCALE] *= ratio
    out[:, [TX, TY]] = (out[:, [TX, TY]] + 0.5) * ratio - 0.5
    return out


def reenactment_parameters(
    target: FaceParams, source: FaceParams, config: PoseAdaptConfig = PoseAdaptConfig()
) -> FaceParams:
    """Parameters of the reenacted sequence, one frame per source frame.

    The target's identity (its mean over frames when given per frame), the source's expression and the
    adapted camera: -> FaceParams(identity (T_s, N_id), expression (T_s, N_exp), camera (T_s, 7)), float32.
    """
    identity = torch.as_tensor(target.identity, dtype=torch.float32)
    if identity.ndim == 2:
        identity = identity.mean(0)
    expression = torch.as_tensor(source.expression, dtype=torch.float32)
    camera = adapt_pose(source.camera, target.camera, config).float()
    if len(expression) != len(camera):
        raise ValueError(f"source has {len(expression)} expression frames but {len(camera)} cameras")
    return FaceParams(identity.expand(len(expression), -1).contiguous(), expression, camera)


def reenactment_nmfc(
    renderer: NmfcRenderer,
    target: FaceParams,
    source: FaceParams,
    config: PoseAdaptConfig = PoseAdaptConfig(),
) -> tuple[FaceParams, NmfcImages]:
    """NMFC conditioning of the target driven by the source: -> (parameters, NmfcImages of T_s frames)."""
    params = reenactment_parameters(target, source, config)
    return params, renderer.render(*params)
