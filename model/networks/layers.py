"""Building blocks of the video renderer: AdaIN (paper Eq. 6), conditional conv/residual blocks, PatchGAN.

Every normalisation layer of the generator is adaptive instance normalisation driven by the identity
vector h (B, n_f): ``AdaIN(x, h) = gamma(h) * IN(x) + beta(h)`` with ``gamma = P_gamma h`` and
``beta = P_beta h`` (Eq. 6). For fine-tuning (section 3.4) each AdaIN becomes an ordinary affine instance
norm (``AffineInstanceNorm2d``) whose parameters start at ``P_gamma h_new`` and ``P_beta h_new``;
both classes take ``(x, h)`` so the generator code is the same before and after conversion.

Conditional modules (``forward(x, h)``) are chained by ``CondSequential``; plain modules in it get ``x``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AdaptiveInstanceNorm2d(nn.Module):
    """Instance norm whose per-channel scale and shift are linear in the identity vector (Eq. 6).

    gamma = gamma_offset + P_gamma h, beta = P_beta h, with P_gamma, P_beta in R^{C x n_f} (no bias).
    ``gamma_offset = 0`` is Eq. (6) literally. The default 1 keeps a freshly initialised layer close to
    plain instance norm: P is initialised small (N(0, 0.02), as vid2vid initialises its layers) and
    FaceNet embeddings have unit norm, so with offset 0 every normalised activation starts scaled by ~0.02
    and the signal dies over the ~40 normalisation layers of the generator. The offset is a constant,
    so the fine-tune conversion stays exact.

    x (B, C, H, W) float, h (B, n_f) float -> (B, C, H, W).
    """

    takes_identity = True

    def __init__(self, num_features: int, n_f: int, gamma_offset: float = 1.0, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.n_f = n_f
        self.gamma_offset = gamma_offset
        self.eps = eps
        self.P_gamma = nn.Parameter(torch.randn(num_features, n_f) * 0.02)
        self.P_beta = nn.Parameter(torch.randn(num_features, n_f) * 0.02)

    def affine_params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma (B, C), beta (B, C) for identity vectors h (B, n_f) (Eq. 6)."""
        if h.ndim != 2 or h.shape[1] != self.n_f:
            raise ValueError(f"AdaIN expects h of shape (B, {self.n_f}), got {tuple(h.shape)}")
        h = h.to(self.P_gamma.dtype)
        gamma = self.gamma_offset + h @ self.P_gamma.t()
        beta = h @ self.P_beta.t()
        return gamma, beta

    def forward(self, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        if h is None:
            raise ValueError("AdaIN needs the identity vector h; convert the generator for fine-tuning first")
        gamma, beta = self.affine_params(h)
        x_norm = F.instance_norm(x, eps=self.eps)
        return x_norm * gamma[:, :, None, None].to(x.dtype) + beta[:, :, None, None].to(x.dtype)


class AffineInstanceNorm2d(nn.InstanceNorm2d):
    """Instance norm with learned per-channel affine parameters; ignores h (fine-tuned generator, 3.4).

    x (B, C, H, W) -> (B, C, H, W).
    """

    takes_identity = True

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG002
        return super().forward(x)

    @classmethod
    def from_adain(cls, adain: AdaptiveInstanceNorm2d, h_new: torch.Tensor) -> AffineInstanceNorm2d:
        """The instance norm equal to ``adain`` fed ``h_new`` (n_f,) (section 3.4 initialisation)."""
        norm = cls(adain.num_features, eps=adain.eps).to(adain.P_gamma.device)
        with torch.no_grad():
            gamma, beta = adain.affine_params(h_new.reshape(1, -1).to(adain.P_gamma.device))
            norm.weight.copy_(gamma[0])
            norm.bias.copy_(beta[0])
        return norm


class CondSequential(nn.ModuleList):
    """Chains modules; those with ``takes_identity = True`` get ``(x, h)``, the others ``x``."""

    takes_identity = True

    def forward(self, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        for module in self:
            x = module(x, h) if getattr(module, "takes_identity", False) else module(x)
        return x


class ConvNormAct(nn.Module):
    """Conv (optionally transposed, optionally reflection padded) -> AdaIN -> ReLU.

    x (B, C_in, H, W), h (B, n_f) -> (B, C_out, H', W').
    """

    takes_identity = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        n_f: int,
        stride: int = 1,
        transposed: bool = False,
        reflect_pad: bool = False,
        gamma_offset: float = 1.0,
    ):
        super().__init__()
        pad = kernel_size // 2
        self.pad = nn.ReflectionPad2d(pad) if reflect_pad else nn.Identity()
        conv_pad = 0 if reflect_pad else pad
        if transposed:
            # Stride-2 upsampling exactly doubling H and W, as in vid2vid/pix2pixHD.
            self.conv = nn.ConvTranspose2d(
                in_channels, out_channels, kernel_size, stride=stride, padding=pad, output_padding=stride - 1
            )
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=conv_pad)
        self.norm = AdaptiveInstanceNorm2d(out_channels, n_f, gamma_offset)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        return self.act(self.norm(self.conv(self.pad(x)), h))


class ResidualBlock(nn.Module):
    """x + [pad, conv3, AdaIN, ReLU, pad, conv3, AdaIN](x) (pix2pixHD ResnetBlock with AdaIN).

    x (B, C, H, W), h (B, n_f) -> (B, C, H, W).
    """

    takes_identity = True

    def __init__(self, channels: int, n_f: int, gamma_offset: float = 1.0):
        super().__init__()
        self.pad1 = nn.ReflectionPad2d(1)
        self.conv1 = nn.Conv2d(channels, channels, 3)
        self.norm1 = AdaptiveInstanceNorm2d(channels, n_f, gamma_offset)
        self.pad2 = nn.ReflectionPad2d(1)
        self.conv2 = nn.Conv2d(channels, channels, 3)
        self.norm2 = AdaptiveInstanceNorm2d(channels, n_f, gamma_offset)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(self.pad1(x)), h))
        y = self.norm2(self.conv2(self.pad2(y)), h)
        return x + y


class PatchDiscriminator(nn.Module):
    """pix2pixHD NLayerDiscriminator (kernel 4, padding 2) returning every intermediate feature.

    Layers: conv s2 + LReLU; (n_layers - 1) x [conv s2 + IN + LReLU]; conv s1 + IN + LReLU; final conv s1
    to ``out_channels`` (1 for a plain score, n_f for the identity projection of Eq. 7); every conv
    optionally spectrally normalised.
    x (B, C_in, H, W) -> list of n_layers + 2 tensors, the last one (B, out_channels, H', W').
    """

    def __init__(
        self,
        in_channels: int,
        ndf: int = 64,
        n_layers: int = 3,
        out_channels: int = 1,
        spectral_norm: bool = False,
    ):
        super().__init__()
        kw, padw = 4, 2

        def conv(c_in: int, c_out: int, stride: int) -> nn.Module:
            layer = nn.Conv2d(c_in, c_out, kw, stride=stride, padding=padw)
            # Spectral norm bounds each layer's Lipschitz constant (Miyato et al. 2018), a common guard
            # against a discriminator that wins too fast and leaves the generator without gradient.
            return nn.utils.parametrizations.spectral_norm(layer) if spectral_norm else layer

        blocks: list[nn.Module] = [nn.Sequential(conv(in_channels, ndf, 2), nn.LeakyReLU(0.2, True))]
        nf = ndf
        for _ in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            blocks.append(nn.Sequential(conv(nf_prev, nf, 2), nn.InstanceNorm2d(nf), nn.LeakyReLU(0.2, True)))
        nf_prev, nf = nf, min(nf * 2, 512)
        blocks.append(nn.Sequential(conv(nf_prev, nf, 1), nn.InstanceNorm2d(nf), nn.LeakyReLU(0.2, True)))
        blocks.append(conv(nf, out_channels, 1))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


def downsample_2x(x: torch.Tensor) -> torch.Tensor:
    """The multi-scale discriminators' input pyramid step (3x3 average, stride 2, pad 1, no pad count).

    x (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)).
    """
    return F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)


def init_weights_normal(module: nn.Module, std: float = 0.02) -> None:
    """vid2vid initialisation: conv weights N(0, std), biases kept at PyTorch's default (apply() hook)."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        # A spectrally normalised conv computes its weight from the stored original: initialise that.
        parametrized = nn.utils.parametrize.is_parametrized(module, "weight")
        weight = module.parametrizations.weight.original if parametrized else module.weight
        nn.init.normal_(weight, 0.0, std)


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters in ``module``."""
    return sum(p.numel() for p in module.parameters())


def output_size_patchgan(size: int, n_layers: int) -> int:
    """Spatial size of a PatchDiscriminator score map for an input of ``size`` pixels (kernel 4, pad 2)."""
    for _ in range(n_layers):
        size = math.floor((size + 4 - 4) / 2) + 1
    for _ in range(2):
        size = size + 4 - 4 + 1
    return size
