"""Losses of the Head2HeadFS video renderer (paper section 3.3) and their weighting.

- Hinge adversarial losses for G / E_id and every discriminator (D^I, D^M, D^V), summed over spatial
  scales: L_D = mean(relu(1 - r_real)) + mean(relu(1 + r_fake)), L_G = -mean(r_fake).
- VGG19 perceptual loss (pix2pixHD weights 1/32 ... 1 on relu1_1 ... relu5_1, L1 distance); ImageNet
  weights from a configured path or the torch hub cache, never downloaded and never silently random.
- Feature matching on D^I and D^V intermediate features (pix2pixHD weighting 1/num_scales * 4/(n_layers+1)).
- Mask L1 between the generated and the real foreground mask.
- Embedding matching (Eq. 8): L_EM = |h - w_i|_1 between E_id's identity vector and D^I's row w_i
  (averaged over the n_f entries, so lambda does not scale with n_f); gradients reach both E_id and W.
- ``generator_objective`` weights the terms with the lambdas (all 10 by default) and implements the
  ablations without D^M and without D^V.

Discriminator outputs are lists (one per spatial scale) of ``ScaleOutput(features, score)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from model.networks.discriminators import ScaleOutput

VGG19_SLICE_ENDS = (2, 7, 12, 21, 30)  # torchvision vgg19.features indices after relu1_1 ... relu5_1
VGG19_LAYER_WEIGHTS = (1.0 / 32, 1.0 / 16, 1.0 / 8, 1.0 / 4, 1.0)  # pix2pixHD / vid2vid VGGLoss
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class VGGConfig:
    """Where the ImageNet VGG19 weights come from.

    weights_path: a torchvision vgg19 state dict (``vgg19-dcbb9e9d.pth``; only ``features.*`` are used);
    None looks in the torch hub cache (``$TORCH_HOME/hub/checkpoints``). Missing weights raise
    FileNotFoundError naming both places. ``random_weights_for_tests = True`` explicitly skips loading
    (a randomly initialised VGG, only meaningful in tests).
    """

    weights_path: str | None = None
    random_weights_for_tests: bool = False


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (paper: all lambdas 10) and the ablation toggles."""

    lambda_vgg: float = 10.0
    lambda_feat: float = 10.0
    lambda_mask: float = 10.0
    lambda_em: float = 10.0
    use_mouth_discriminator: bool = True  # False: the paper's ablation "w/o D^M"
    use_temporal_discriminator: bool = True  # False: the paper's ablation "w/o D^V"
    vgg: VGGConfig = VGGConfig()


def vgg19_weights_candidates(cfg: VGGConfig) -> list[str]:
    """The files tried for the VGG19 weights, in order."""
    if cfg.weights_path is not None:
        return [cfg.weights_path]
    filename = os.path.basename(torchvision.models.VGG19_Weights.IMAGENET1K_V1.url)
    return [os.path.join(torch.hub.get_dir(), "checkpoints", filename)]


def vgg19_features_architecture() -> nn.Sequential:
    """torchvision's vgg19 ``features[:30]`` (up to relu5_1), randomly initialised.

    Built with torchvision's own ``make_layers`` and layer table ("E" = VGG19), which is what
    ``torchvision.models.vgg19().features`` is, without allocating the 120M-parameter classifier.
    """
    return torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])[: VGG19_SLICE_ENDS[-1]]


def load_vgg19_features(cfg: VGGConfig) -> nn.Sequential:
    """torchvision vgg19 ``features[:30]`` (up to relu5_1) with ImageNet weights, frozen, eval mode."""
    state = None
    if not cfg.random_weights_for_tests:
        candidates = vgg19_weights_candidates(cfg)
        found = [p for p in candidates if os.path.isfile(p)]
        if not found:
            raise FileNotFoundError(
                f"VGG19 ImageNet weights not found (looked in: {', '.join(candidates)}). Put torchvision's "
                f"{os.path.basename(torchvision.models.VGG19_Weights.IMAGENET1K_V1.url)} there or set "
                "loss.vgg.weights_path; tests may set loss.vgg.random_weights_for_tests=true"
            )
        state = torch.load(found[0], map_location="cpu", weights_only=True)
    features = vgg19_features_architecture()
    if state is not None:
        prefix = "features."
        state = {
            k[len(prefix) :]: v
            for k, v in state.items()
            if k.startswith(prefix) and int(k[len(prefix) :].split(".")[0]) < VGG19_SLICE_ENDS[-1]
        }
        features.load_state_dict(state, strict=True)
    features.eval()
    for p in features.parameters():
        p.requires_grad_(False)
    return features


class VGGPerceptualLoss(nn.Module):
    """sum_l w_l * mean|VGG_l(fake) - VGG_l(real)| over relu1_1 ... relu5_1 (real side detached).

    fake, real (B, 3, H, W) in [-1, 1] -> scalar.
    """

    def __init__(self, cfg: VGGConfig = VGGConfig()):
        super().__init__()
        features = load_vgg19_features(cfg)
        starts = (0, *VGG19_SLICE_ENDS[:-1])
        self.slices = nn.ModuleList(features[a:b] for a, b in zip(starts, VGG19_SLICE_ENDS))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGGPerceptualLoss:
        super().train(mode)
        self.slices.eval()  # the VGG stays frozen and in eval mode
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, 3, H, W) in [-1, 1] -> the five relu_1 activations."""
        x = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for s in self.slices:
            x = s(x)
            out.append(x)
        return out

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake_features = self.features(fake)
        with torch.no_grad():
            real_features = self.features(real)
        return sum(w * F.l1_loss(f, r) for w, f, r in zip(VGG19_LAYER_WEIGHTS, fake_features, real_features))


def hinge_discriminator_loss(real: Sequence[ScaleOutput], fake: Sequence[ScaleOutput]) -> torch.Tensor:
    """sum over scales of mean(relu(1 - r_real)) + mean(relu(1 + r_fake)); pass detached fakes."""
    return sum(
        F.relu(1 - r.score).mean() + F.relu(1 + f.score).mean() for r, f in zip(real, fake, strict=True)
    )


def hinge_generator_loss(fake: Sequence[ScaleOutput]) -> torch.Tensor:
    """sum over scales of -mean(r_fake)."""
    return sum(-f.score.mean() for f in fake)


def feature_matching_loss(real: Sequence[ScaleOutput], fake: Sequence[ScaleOutput]) -> torch.Tensor:
    """pix2pixHD feature matching: sum_s sum_l (1/S) (4/L) mean|F_l(fake) - F_l(real)| (real detached).

    S = number of spatial scales, L = number of intermediate feature layers per scale (n_layers + 1).
    """
    total = 0.0
    for r, f in zip(real, fake, strict=True):
        layer_weight = 4.0 / len(f.features)
        for fr, ff in zip(r.features, f.features, strict=True):
            total = total + layer_weight / len(fake) * F.l1_loss(ff, fr.detach())
    return total


def mask_l1_loss(mask_pred: torch.Tensor, mask_real: torch.Tensor) -> torch.Tensor:
    """mean|m_pred - m_real|; both (B, 1, H, W) (or any equal shapes) in [0, 1]."""
    return F.l1_loss(mask_pred, mask_real)


def embedding_matching_loss(h: torch.Tensor, w_i: torch.Tensor) -> torch.Tensor:
    """Eq. (8): mean over batch and entries of |h - w_i|. h (B, n_f) from E_id; w_i (B, n_f) rows of W."""
    return F.l1_loss(h, w_i)


GENERATOR_TERMS = ("adv_image", "fm_image", "adv_mouth", "adv_temporal", "fm_temporal", "vgg", "mask", "em")


def generator_term_weights(cfg: LossConfig) -> dict[str, float]:
    """The weight of every enabled generator / E_id loss term (adversarial terms weigh 1)."""
    weights = {
        "adv_image": 1.0,
        "fm_image": cfg.lambda_feat,
        "vgg": cfg.lambda_vgg,
        "mask": cfg.lambda_mask,
        "em": cfg.lambda_em,
    }
    if cfg.use_mouth_discriminator:
        weights["adv_mouth"] = 1.0
    if cfg.use_temporal_discriminator:
        weights["adv_temporal"] = 1.0
        weights["fm_temporal"] = cfg.lambda_feat
    return weights


def generator_objective(
    cfg: LossConfig, terms: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss of G and E_id: sum of lambda * term over the enabled terms.

    terms: unweighted scalars keyed by GENERATOR_TERMS; exactly the enabled ones must be present (a
    disabled discriminator's term is an error, so an ablation cannot silently keep training it).
    -> (total scalar, weighted terms).
    """
    weights = generator_term_weights(cfg)
    missing = sorted(set(weights) - set(terms))
    extra = sorted(set(terms) - set(weights))
    if missing or extra:
        raise ValueError(f"generator loss terms: missing {missing}, not enabled or unknown {extra}")
    weighted = {name: weights[name] * terms[name] for name in weights}
    return sum(weighted.values()), weighted


def discriminator_objective(
    cfg: LossConfig, terms: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total hinge loss of the enabled discriminators: keys "image", "mouth", "temporal" (as enabled)."""
    enabled = {"image"}
    if cfg.use_mouth_discriminator:
        enabled.add("mouth")
    if cfg.use_temporal_discriminator:
        enabled.add("temporal")
    if set(terms) != enabled:
        raise ValueError(f"discriminator loss terms {sorted(terms)} != enabled {sorted(enabled)}")
    return sum(terms.values()), dict(terms)
