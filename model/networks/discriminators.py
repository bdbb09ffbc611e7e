"""The three discriminators of Head2HeadFS (paper section 3.3): image D^I, mouth D^M and temporal D^V.

All are multi-scale PatchGANs (pix2pixHD / vid2vid ``MultiscaleDiscriminator``: the same architecture on
the input and on 2x average-pooled copies of it) returning, per spatial scale, the intermediate features
(for the feature-matching loss) and a score map (for the hinge loss). Scales are ordered finest first.

- D^I sees (frame, NMFC) and scores with the identity projection of Eq. (7): the PatchGAN's last layer
  gives a vector d in R^{n_f} per patch and the score is r = d^T (w_i + w_0) + c, where w_i is row i of
  W in R^{N x n_f} (one row per training identity), shared by all spatial scales.
- D^M sees fixed-size (frame, NMFC) crops around the mouth (centre = mean of landmarks 48-67).
- D^V sees K consecutive frames plus the K-1 optical flows of the real sequence between them, at 3
  temporal scales (frames subsampled by 1, 2, 4), one multi-scale PatchGAN per temporal scale.

Optical flow convention: flows (B, T-1, 2, H, W) float32 in pixels, flow t maps a pixel p of frame t to
p + flow_t(p) in frame t+1, channel 0 = dx (columns), channel 1 = dy (rows) (OpenCV's
``calcOpticalFlow*(prev, next)`` convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.networks.layers import PatchDiscriminator, downsample_2x, init_weights_normal

MOUTH_LANDMARKS = slice(48, 68)  # iBUG 68-point scheme: outer and inner lip contours


class ScaleOutput(NamedTuple):
    """One spatial scale of a discriminator: features list of (B, C_l, H_l, W_l); score (B, 1, h, w)."""

    features: list[torch.Tensor]
    score: torch.Tensor


@dataclass(frozen=True)
class PatchGANConfig:
    """A multi-scale PatchGAN (Head2Head defaults: ``--ndf 64 --n_layers_D 3 --num_D 2``)."""

    ndf: int = 64
    n_layers: int = 3
    num_scales: int = 2
    spectral_norm: bool = False  # not in Head2Head; a stability option (model.networks.layers)


@dataclass(frozen=True)
class ImageDiscriminatorConfig:
    """D^I on (frame, NMFC) with the identity projection of Eq. (7)."""

    patchgan: PatchGANConfig = PatchGANConfig()
    image_channels: int = 3
    nmfc_channels: int = 3
    n_f: int = 512  # size of d, w_i, w_0 (matches the identity vector h, Eq. 8)
    num_identities: int = 1  # N, rows of W: the number of training identities


@dataclass(frozen=True)
class MouthDiscriminatorConfig:
    """D^M on mouth crops (Head2Head's ``--ROI_size 72`` at 256 px)."""

    patchgan: PatchGANConfig = PatchGANConfig()
    image_channels: int = 3
    nmfc_channels: int = 3
    crop_px: int = 72


@dataclass(frozen=True)
class TemporalDiscriminatorConfig:
    """D^V on K frames + K-1 real flows, ``num_temporal_scales`` temporal scales (Head2Head defaults)."""

    patchgan: PatchGANConfig = PatchGANConfig()
    image_channels: int = 3
    n_frames: int = 3  # K
    num_temporal_scales: int = 3  # scale s subsamples frames by 2**s
    flow_scale: float = 0.05  # flows enter D^V in pixels / 20, as in Head2Head


class MultiscalePatchGAN(nn.Module):
    """``num_scales`` PatchDiscriminators on an average-pooling pyramid of the input.

    x (B, C_in, H, W) -> list (finest first) of ScaleOutput(features, head), where ``head`` is the raw
    last-layer output (B, out_channels, h, w).
    """

    def __init__(self, in_channels: int, cfg: PatchGANConfig, out_channels: int = 1):
        super().__init__()
        self.nets = nn.ModuleList(
            PatchDiscriminator(in_channels, cfg.ndf, cfg.n_layers, out_channels, cfg.spectral_norm)
            for _ in range(cfg.num_scales)
        )
        self.apply(init_weights_normal)

    def forward(self, x: torch.Tensor) -> list[ScaleOutput]:
        outputs = []
        for i, net in enumerate(self.nets):
            if i > 0:
                x = downsample_2x(x)
            layers = net(x)
            outputs.append(ScaleOutput(layers[:-1], layers[-1]))
        return outputs


class IdentityProjection(nn.Module):
    """Eq. (7): r = d^T (w_i + w_0) + c per patch, with W (N, n_f), w_0 (n_f,), c scalar.

    forward(d (B, n_f, h, w), identity (B,) int64 row indices, or None when N == 1) -> r (B, 1, h, w).
    """

    def __init__(self, num_identities: int, n_f: int):
        super().__init__()
        # Rows start at the scale of unit-norm FaceNet embeddings, which they are matched to (Eq. 8).
        self.W = nn.Parameter(torch.randn(num_identities, n_f) / math.sqrt(n_f))
        self.w_0 = nn.Parameter(torch.zeros(n_f))
        self.c = nn.Parameter(torch.zeros(()))

    def rows(self, identity: torch.Tensor | None, batch: int) -> torch.Tensor:
        """w_i (B, n_f) for the given identities."""
        if identity is None:
            if self.W.shape[0] != 1:
                raise ValueError(f"identity indices are required: W has {self.W.shape[0]} rows")
            return self.W.expand(batch, -1)
        return self.W[identity]

    def forward(self, d: torch.Tensor, identity: torch.Tensor | None) -> torch.Tensor:
        w = self.rows(identity, d.shape[0]) + self.w_0
        return torch.einsum("bchw,bc->bhw", d, w.to(d.dtype))[:, None] + self.c


class ImageDiscriminator(nn.Module):
    """D^I: multi-scale PatchGAN on (frame, NMFC) with the identity projection (Eq. 7).

    forward(frame (B, 3, H, W), nmfc (B, C_nmfc, H, W), identity (B,) int64 or None)
    -> list of ScaleOutput; score (B, 1, h, w) = r of Eq. (7) per patch.
    """

    def __init__(self, cfg: ImageDiscriminatorConfig = ImageDiscriminatorConfig()):
        super().__init__()
        self.cfg = cfg
        self.patchgan = MultiscalePatchGAN(cfg.image_channels + cfg.nmfc_channels, cfg.patchgan, cfg.n_f)
        self.projection = IdentityProjection(cfg.num_identities, cfg.n_f)

    def forward(
        self, frame: torch.Tensor, nmfc: torch.Tensor, identity: torch.Tensor | None = None
    ) -> list[ScaleOutput]:
        outputs = self.patchgan(torch.cat([frame, nmfc], dim=1))
        return [ScaleOutput(o.features, self.projection(o.score, identity)) for o in outputs]


def mouth_centers_from_landmarks(landmarks_px: torch.Tensor) -> torch.Tensor:
    """Mouth centre = mean of the 20 lip landmarks (48-67). landmarks_px (B, 68, 2) (x, y) -> (B, 2)."""
    return landmarks_px[:, MOUTH_LANDMARKS].mean(dim=1)


def crop_regions(images: torch.Tensor, centers_px: torch.Tensor, crop_px: int) -> torch.Tensor:
    """Square crops of side ``crop_px`` centred (rounded) on ``centers_px``, shifted to stay inside.

    images (B, C, H, W); centers_px (B, 2) (x, y) in pixels (``model.face3d.camera`` convention)
    -> (B, C, crop, crop).
    Differentiable with respect to ``images``.
    """
    B, _, H, W = images.shape
    if crop_px > H or crop_px > W:
        raise ValueError(f"crop_px={crop_px} exceeds the image size {H}x{W}")
    centers = torch.round(centers_px.detach()).long()
    left = (centers[:, 0] - crop_px // 2).clamp(0, W - crop_px)
    top = (centers[:, 1] - crop_px // 2).clamp(0, H - crop_px)
    offsets = torch.arange(crop_px, device=images.device)
    rows = (top[:, None] + offsets)[:, :, None]  # (B, S, 1)
    cols = (left[:, None] + offsets)[:, None, :]  # (B, 1, S)
    batch = torch.arange(B, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def centers_from_boxes(boxes_px: torch.Tensor, crop_px: int) -> torch.Tensor:
    """Crop centres that make ``crop_regions`` cut exactly the given boxes.

    boxes_px (B, 4) int (x0, y0, x1, y1), x1 = x0 + crop_px exclusive
    (``pipeline.preprocess.nmfc.mouth_boxes``)
    -> (B, 2) float (x, y). Raises ValueError when a box side is not ``crop_px``.
    """
    sides = torch.cat([boxes_px[:, 2] - boxes_px[:, 0], boxes_px[:, 3] - boxes_px[:, 1]])
    if not bool((sides == crop_px).all()):
        raise ValueError(
            f"mouth boxes have sides {sorted(set(sides.tolist()))} px but the mouth discriminator crops "
            f"{crop_px} px: make nmfc.mouth_box_px and the mouth discriminator's crop_px equal"
        )
    return (boxes_px[:, :2] + crop_px // 2).float()


class MouthDiscriminator(nn.Module):
    """D^M: multi-scale PatchGAN on fixed-size (frame, NMFC) crops around the mouth.

    forward(frame (B, 3, H, W), nmfc (B, C_nmfc, H, W), mouth_px) -> list of ScaleOutput, where
    mouth_px is either (B, 2) mouth centres (x, y) in pixels (``mouth_centers_from_landmarks``) or
    (B, 4) boxes (x0, y0, x1, y1) of side ``crop_px`` as ``pipeline.preprocess.nmfc.mouth_boxes`` stores them.
    """

    def __init__(self, cfg: MouthDiscriminatorConfig = MouthDiscriminatorConfig()):
        super().__init__()
        self.cfg = cfg
        self.patchgan = MultiscalePatchGAN(cfg.image_channels + cfg.nmfc_channels, cfg.patchgan)

    def forward(self, frame: torch.Tensor, nmfc: torch.Tensor, mouth_px: torch.Tensor) -> list[ScaleOutput]:
        centers = centers_from_boxes(mouth_px, self.cfg.crop_px) if mouth_px.shape[-1] == 4 else mouth_px
        crops = crop_regions(torch.cat([frame, nmfc], dim=1), centers, self.cfg.crop_px)
        return self.patchgan(crops)


def temporal_frame_indices(num_frames: int, n_frames: int, temporal_scale: int) -> list[int]:
    """The K frame indices seen by D^V at a temporal scale: stride 2**scale, ending at the last frame."""
    stride = 2**temporal_scale
    first = num_frames - 1 - (n_frames - 1) * stride
    if first < 0:
        raise ValueError(f"{num_frames} frames are too few for {n_frames} frames at stride {stride}")
    return [first + k * stride for k in range(n_frames)]


def warp_by_flow(values: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Samples ``values`` at p + flow(p) (bilinear, border clamp).

    values (B, C, H, W), flow (B, 2, H, W) px -> (B, C, H, W).
    """
    B, _, H, W = flow.shape
    ys, xs = torch.meshgrid(
        torch.arange(H, device=flow.device, dtype=flow.dtype),
        torch.arange(W, device=flow.device, dtype=flow.dtype),
        indexing="ij",
    )
    x = xs + flow[:, 0]
    y = ys + flow[:, 1]
    # grid_sample with align_corners=True maps -1 / +1 to the first / last pixel centre.
    grid = torch.stack([2 * x / max(W - 1, 1) - 1, 2 * y / max(H - 1, 1) - 1], dim=-1)
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="border", align_corners=True)


def flows_between(flows: torch.Tensor, indices: list[int]) -> torch.Tensor:
    """Flows between consecutive selected frames, composing the per-frame flows in between.

    flow_{a->c}(p) = flow_{a->b}(p) + flow_{b->c}(p + flow_{a->b}(p)).
    flows (B, T-1, 2, H, W) px (or (B, T, ...) with a trailing zero flow, as ``pipeline.preprocess.flow``
    stores them), indices increasing -> (B, len(indices) - 1, 2, H, W) px.
    """
    out = []
    for a, c in zip(indices[:-1], indices[1:]):
        total = flows[:, a]
        for b in range(a + 1, c):
            total = total + warp_by_flow(flows[:, b], total)
        out.append(total)
    return torch.stack(out, dim=1)


class TemporalDiscriminator(nn.Module):
    """D^V: per temporal scale, a multi-scale PatchGAN on K frames + the K-1 real flows between them.

    forward(temporal_scale, frames (B, K, 3, H, W), flows (B, K-1, 2, H, W) px) -> list of ScaleOutput.
    ``temporal_inputs`` builds (frames, flows) for every scale from a clip.
    """

    def __init__(self, cfg: TemporalDiscriminatorConfig = TemporalDiscriminatorConfig()):
        super().__init__()
        self.cfg = cfg
        in_channels = cfg.image_channels * cfg.n_frames + 2 * (cfg.n_frames - 1)
        self.scales = nn.ModuleList(
            MultiscalePatchGAN(in_channels, cfg.patchgan) for _ in range(cfg.num_temporal_scales)
        )

    def temporal_inputs(
        self, frames: torch.Tensor, flows: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """frames (B, T, 3, H, W), flows (B, T-1 or T, 2, H, W) -> per scale (frames_K, flows_K-1)."""
        T = frames.shape[1]
        inputs = []
        for s in range(self.cfg.num_temporal_scales):
            idx = temporal_frame_indices(T, self.cfg.n_frames, s)
            inputs.append((frames[:, idx], flows_between(flows, idx)))
        return inputs

    def forward(self, temporal_scale: int, frames: torch.Tensor, flows: torch.Tensor) -> list[ScaleOutput]:
        K = self.cfg.n_frames
        if frames.shape[1] != K or flows.shape[1] != K - 1:
            raise ValueError(
                f"D^V expects {K} frames and {K - 1} flows, got {frames.shape[1]} and {flows.shape[1]}"
            )
        x = torch.cat([frames.flatten(1, 2), flows.flatten(1, 2) * self.cfg.flow_scale], dim=1)
        return self.scales[temporal_scale](x)
