"""The identity-conditioned sequential generator G of Head2HeadFS (paper section 3.3, Eq. 5 and 6).

    y_t, m_t = G(x_{t-2:t}, y_{t-2:t-1}, h)                                           (Eq. 5)

Encoder 1 sees the NMFC window x_{t-2..t} (channels stacked oldest first), encoder 2 the two previously
generated frames; their bottleneck features are summed and decoded into the frame (tanh, [-1, 1]) and a
foreground mask (sigmoid, [0, 1]). Every normalisation layer, in both encoders and the decoder, is AdaIN
driven by the identity vector h (Eq. 6; ``model.networks.layers.AdaptiveInstanceNorm2d``).

Sizes follow the reference implementation of the authors' previous system (Head2Head, vid2vid-style
generator, ``--ngf 64 --n_downsample_G 3 --n_blocks 9``): a 7x7 reflection-padded stem with 64 channels,
3 stride-2 3x3 convs to 512 channels, ``n_blocks - n_blocks // 2`` = 5 residual blocks at the bottleneck
of each encoder and ``n_blocks // 2`` = 4 in the decoder, 3 transposed stride-2 convs back, and a 7x7 head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from model.networks.layers import CondSequential, ConvNormAct, ResidualBlock, init_weights_normal


@dataclass(frozen=True)
class GeneratorConfig:
    """Generator sizes. Defaults: the paper / Head2Head reference at 256 px; shrink for CPU tests."""

    nmfc_channels: int = 3  # channels of one conditioning (NMFC) frame
    image_channels: int = 3  # RGB
    n_frames: int = 3  # NMFC window length; the generator also sees the n_frames - 1 previous outputs
    base_channels: int = 64  # ngf: channels of the 7x7 stem
    n_downsampling: int = 3  # stride-2 convs; bottleneck channels = base_channels * 2**n_downsampling
    n_blocks: int = 9  # residual blocks: n_blocks - n_blocks // 2 per encoder, n_blocks // 2 in the decoder
    n_f: int = 512  # identity vector size (FaceNet embedding)
    adain_gamma_offset: float = 1.0  # gamma = offset + P_gamma h (see AdaptiveInstanceNorm2d)


class GeneratorOutput(NamedTuple):
    """frame (B, 3, H, W) in [-1, 1]; mask (B, 1, H, W) foreground probability in [0, 1]."""

    frame: torch.Tensor
    mask: torch.Tensor


def _encoder(in_channels: int, cfg: GeneratorConfig) -> CondSequential:
    ngf, off = cfg.base_channels, cfg.adain_gamma_offset
    layers: list[nn.Module] = [ConvNormAct(in_channels, ngf, 7, cfg.n_f, reflect_pad=True, gamma_offset=off)]
    for i in range(cfg.n_downsampling):
        c = ngf * 2**i
        layers.append(ConvNormAct(c, 2 * c, 3, cfg.n_f, stride=2, gamma_offset=off))
    c_bottleneck = ngf * 2**cfg.n_downsampling
    layers += [ResidualBlock(c_bottleneck, cfg.n_f, off) for _ in range(cfg.n_blocks - cfg.n_blocks // 2)]
    return CondSequential(layers)


class Generator(nn.Module):
    """G(x_{t-2:t}, y_{t-2:t-1}, h) -> (y_t, m_t) (Eq. 5) with AdaIN everywhere (Eq. 6).

    forward(nmfc_window, prev_frames, h):
        nmfc_window (B, n_frames, C_nmfc, H, W) or (B, n_frames * C_nmfc, H, W) float, oldest first;
        prev_frames (B, n_frames - 1, 3, H, W) or (B, (n_frames - 1) * 3, H, W) float in [-1, 1];
        h (B, n_f) identity vector (None only after ``model.networks.finetune.convert_generator``).
        H and W must be multiples of 2**n_downsampling.
        -> GeneratorOutput(frame (B, 3, H, W), mask (B, 1, H, W)).
    """

    def __init__(self, cfg: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.cfg = cfg
        off = cfg.adain_gamma_offset
        self.encoder_nmfc = _encoder(cfg.n_frames * cfg.nmfc_channels, cfg)
        self.encoder_prev = _encoder((cfg.n_frames - 1) * cfg.image_channels, cfg)
        decoder: list[nn.Module] = [
            ResidualBlock(cfg.base_channels * 2**cfg.n_downsampling, cfg.n_f, off)
            for _ in range(cfg.n_blocks // 2)
        ]
        for i in range(cfg.n_downsampling):
            c = cfg.base_channels * 2 ** (cfg.n_downsampling - i)
            decoder.append(ConvNormAct(c, c // 2, 3, cfg.n_f, stride=2, transposed=True, gamma_offset=off))
        self.decoder = CondSequential(decoder)
        # One 7x7 head for frame (3 channels, tanh) and foreground mask (1 channel, sigmoid).
        self.head = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(cfg.base_channels, cfg.image_channels + 1, 7)
        )
        self.apply(init_weights_normal)

    def forward(
        self, nmfc_window: torch.Tensor, prev_frames: torch.Tensor, h: torch.Tensor | None
    ) -> GeneratorOutput:
        cfg = self.cfg
        if nmfc_window.ndim == 5:
            nmfc_window = nmfc_window.flatten(1, 2)
        if prev_frames.ndim == 5:
            prev_frames = prev_frames.flatten(1, 2)
        if nmfc_window.shape[1] != cfg.n_frames * cfg.nmfc_channels:
            raise ValueError(
                f"nmfc_window has {nmfc_window.shape[1]} channels, expected "
                f"{cfg.n_frames} frames x {cfg.nmfc_channels}"
            )
        if prev_frames.shape[1] != (cfg.n_frames - 1) * cfg.image_channels:
            raise ValueError(
                f"prev_frames has {prev_frames.shape[1]} channels, expected "
                f"{cfg.n_frames - 1} frames x {cfg.image_channels}"
            )
        factor = 2**cfg.n_downsampling
        if nmfc_window.shape[-2] % factor or nmfc_window.shape[-1] % factor:
            raise ValueError(f"image size {tuple(nmfc_window.shape[-2:])} is not a multiple of {factor}")
        # Eq. (5): sum of the two encoders' bottleneck features, then the decoder.
        features = self.encoder_nmfc(nmfc_window, h) + self.encoder_prev(prev_frames, h)
        out = self.head(self.decoder(features, h))
        frame = torch.tanh(out[:, : cfg.image_channels])
        mask = torch.sigmoid(out[:, cfg.image_channels :])
        return GeneratorOutput(frame, mask)


def nmfc_windows(nmfc: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Sliding NMFC windows x_{t-n+1..t} for every t, the first frame repeated before the start.

    nmfc (B, T, C, H, W) -> (B, T, n_frames, C, H, W); window t ends with frame t.
    """
    pad = nmfc[:, :1].expand(-1, n_frames - 1, -1, -1, -1)
    padded = torch.cat([pad, nmfc], dim=1)
    T = nmfc.shape[1]
    return torch.stack([padded[:, t : t + n_frames] for t in range(T)], dim=1)


def generate_sequence(
    generator: Generator,
    nmfc: torch.Tensor,
    h: torch.Tensor | None,
    prev_frames: torch.Tensor | None = None,
    detach_prev: bool = True,
) -> GeneratorOutput:
    """Synthesises a clip frame by frame as at test time, feeding each output back in (Eq. 5).

    nmfc (B, T, C_nmfc, H, W); h (B, n_f) or None (fine-tuned generator);
    prev_frames (B, n_frames - 1, 3, H, W) to start from, zeros by default (Head2Head's ``no_first_img``);
    detach_prev: stop gradients through the fed-back frames (Head2Head's ``n_frames_backpropagate = 1``).
    -> GeneratorOutput(frame (B, T, 3, H, W), mask (B, T, 1, H, W)).
    """
    cfg = generator.cfg
    B, T, _, H, W = nmfc.shape
    if prev_frames is None:
        prev_frames = nmfc.new_zeros(B, cfg.n_frames - 1, cfg.image_channels, H, W)
    windows = nmfc_windows(nmfc, cfg.n_frames)
    frames, masks = [], []
    for t in range(T):
        prev = prev_frames.detach() if detach_prev else prev_frames
        out = generator(windows[:, t], prev, h)
        frames.append(out.frame)
        masks.append(out.mask)
        prev_frames = torch.cat([prev_frames[:, 1:], out.frame[:, None]], dim=1)
    return GeneratorOutput(torch.stack(frames, dim=1), torch.stack(masks, dim=1))
