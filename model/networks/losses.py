"""Losses of the Head2HeadFS video renderer (paper section 3.3), their weighting and who they train.

- Hinge adversarial losses for G / E_id and every discriminator (D^I, D^M, D^V), summed over spatial
  scales: L_D = mean(relu(1 - r_real)) + mean(relu(1 + r_fake)), L_G = -mean(r_fake).
- VGG19 perceptual loss (pix2pixHD weights 1/32 ... 1 on relu1_1 ... relu5_1, L1 distance); ImageNet
  weights from a configured path or the torch hub cache, never downloaded and never silently random.
- Feature matching on D^I and D^V intermediate features (pix2pixHD weighting 1/num_scales * 4/(n_layers+1)).
- Mask L1 between the generated and the real foreground mask.
- Embedding matching (Eq. 8): L_mch = 1 - h . w_i / (|h| |w_i|), the cosine distance between E_id's
  identity vector and D^I's row w_i, averaged over the batch.
- Optionally (beyond the paper, off by default) a pixel L1 between the generated and the real frame inside
  the real foreground mask, a reconstruction term that steadies small, short runs.

Who each term trains (``ObjectiveConfig``): the paper gives E_id its own objective, L_adv + lambda_mch
L_mch, and G the adversarial, feature-matching, VGG and mask terms; W is a discriminator parameter (the
hinge loss of D^I trains it), so L_mch reaches E_id and not W. ``split_objective`` returns the two sums.
Terms of an ablated discriminator (without D^M, without D^V) must not be given at all.

Discriminator outputs are lists (one per spatial scale) of ``ScaleOutput(features, score)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

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
    FileNotFoundError naming both places. ``random_weights = True`` explicitly skips loading: a randomly
    initialised VGG19, whose term then compares random features (it still exercises the code and acts as a
    weak multi-scale reconstruction term, but it is not the paper's perceptual loss; runs say so).
    """

    weights_path: str | None = None
    random_weights: bool = False


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (paper: all lambdas 10; lambda_l1 is not in the paper) and the ablation toggles."""

    lambda_vgg: float = 10.0
    lambda_feat: float = 10.0
    lambda_mask: float = 10.0
    lambda_mch: float = 10.0
    lambda_l1: float = 0.0
    use_mouth_discriminator: bool = True  # False: the paper's ablation "w/o D^M"
    use_temporal_discriminator: bool = True  # False: the paper's ablation "w/o D^V"
    vgg: VGGConfig = VGGConfig()


# Every term of the G / E_id side, unweighted, by name.
GENERATOR_TERMS = (
    "adv_image",
    "fm_image",
    "adv_mouth",
    "adv_temporal",
    "fm_temporal",
    "vgg",
    "mask_l1",
    "pixel_l1",
    "mch",
)
ADVERSARIAL_TERMS = ("adv_image", "adv_mouth", "adv_temporal")


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which terms train which network (see the module docstring): names from ``GENERATOR_TERMS``.

    The defaults follow the paper; listing every term under both makes one summed objective for G and
    E_id together (what a single ``backward()`` of the total gives).
    """

    generator_terms: tuple[str, ...] = tuple(t for t in GENERATOR_TERMS if t != "mch")
    embedder_terms: tuple[str, ...] = (*ADVERSARIAL_TERMS, "mch")


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
    if not cfg.random_weights:
        candidates = vgg19_weights_candidates(cfg)
        found = [p for p in candidates if os.path.isfile(p)]
        if not found:
            raise FileNotFoundError(
                f"VGG19 ImageNet weights not found (looked in: {', '.join(candidates)}). Put torchvision's "
                f"{os.path.basename(torchvision.models.VGG19_Weights.IMAGENET1K_V1.url)} there or set "
                "loss.vgg.weights_path; or set loss.vgg.random_weights=true (random features) or "
                "loss.lambda_vgg=0 (no VGG term)"
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


def embedding_matching_loss(h: torch.Tensor, w_i: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. (8): mean over the batch of 1 - h . w_i / (|h| |w_i|). h (B, n_f) from E_id; w_i (B, n_f) rows
    of W. In [0, 2]: 0 when h and w_i point the same way, whatever their lengths."""
    h, w_i = h.float(), w_i.float()
    cosine = (h * w_i).sum(dim=1) / (h.norm(dim=1) * w_i.norm(dim=1)).clamp_min(eps)
    return (1.0 - cosine).mean()


def masked_l1_loss(fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |fake - real| over the foreground: fake, real (B, C, H, W); mask (B, 1, H, W) in [0, 1].

    Normalised by the mask's area (times C), so the value is a per-pixel distance inside the face and
    head whatever their size; 0 for an empty mask.
    """
    weight = mask.float().expand_as(fake)
    return ((fake.float() - real.float()).abs() * weight).sum() / weight.sum().clamp_min(1.0)


def generator_term_weights(cfg: LossConfig) -> dict[str, float]:
    """The weight of every enabled G / E_id term (adversarial terms weigh 1; L1 only when weighted)."""
    weights = {
        "adv_image": 1.0,
        "fm_image": cfg.lambda_feat,
        "vgg": cfg.lambda_vgg,
        "mask_l1": cfg.lambda_mask,
        "mch": cfg.lambda_mch,
    }
    if cfg.lambda_l1 > 0:
        weights["pixel_l1"] = cfg.lambda_l1
    if cfg.use_mouth_discriminator:
        weights["adv_mouth"] = 1.0
    if cfg.use_temporal_discriminator:
        weights["adv_temporal"] = 1.0
        weights["fm_temporal"] = cfg.lambda_feat
    return weights


class Objectives(NamedTuple):
    """generator: the sum that trains G; embedder: the sum that trains E_id; weighted: every given term
    times its weight (for logging)."""

    generator: torch.Tensor
    embedder: torch.Tensor
    weighted: dict[str, torch.Tensor]


def split_objective(
    cfg: LossConfig, objective: ObjectiveConfig, terms: Mapping[str, torch.Tensor]
) -> Objectives:
    """Weights the given unweighted terms and sums them per network.

    terms: scalars keyed by ``GENERATOR_TERMS``; any subset of the enabled ones (a training schedule may
    leave some out), but never a term that the config disables (an ablated discriminator's, or ``l1``
    with weight 0), so an ablation cannot silently keep training it.
    """
    weights = generator_term_weights(cfg)
    unknown = sorted(set(terms) - set(weights))
    if unknown:
        raise ValueError(f"generator loss terms {unknown} are not enabled by the loss config")
    for side in (objective.generator_terms, objective.embedder_terms):
        if not set(side) <= set(GENERATOR_TERMS):
            raise ValueError(f"objective lists unknown terms {sorted(set(side) - set(GENERATOR_TERMS))}")
    weighted = {name: weights[name] * value for name, value in terms.items()}
    zero = next(iter(terms.values())).new_zeros(()) if terms else torch.zeros(())

    def total(names: Sequence[str]) -> torch.Tensor:
        return sum((weighted[n] for n in names if n in weighted), zero)

    return Objectives(total(objective.generator_terms), total(objective.embedder_terms), weighted)


def discriminator_objective(
    cfg: LossConfig, terms: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total hinge loss of the discriminators: keys "image", "mouth", "temporal", a subset of the enabled
    ones (a disabled discriminator's term is an error)."""
    enabled = {"image"}
    if cfg.use_mouth_discriminator:
        enabled.add("mouth")
    if cfg.use_temporal_discriminator:
        enabled.add("temporal")
    if not set(terms) <= enabled:
        raise ValueError(f"discriminator loss terms {sorted(set(terms) - enabled)} are not enabled")
    return sum(terms.values()), dict(terms)
