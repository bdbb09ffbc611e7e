"""Conversion of the meta-learned networks for fine-tuning on a new identity (paper section 3.4).

Given h_new (Eq. 9: the mean E_id embedding over all frames of the target video,
``model.networks.embedder.identity_vector_all_frames``):

- G: every AdaIN layer becomes an instance norm with affine parameters initialised to
  gamma = P_gamma h_new (+ the constant offset, see ``AdaptiveInstanceNorm2d``) and beta = P_beta h_new;
  everything else is copied. The converted generator ignores h (pass None), so E_id is not needed any more.
- D^I: the projection matrix W (N x n_f) becomes a single vector w initialised with h_new; w_0, c and the
  PatchGAN are copied.

Before any training step, both converted networks compute exactly what the originals compute with h_new
(and with the row w_i = h_new).
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from model.networks.discriminators import IdentityProjection, ImageDiscriminator
from model.networks.generator import Generator
from model.networks.layers import AdaptiveInstanceNorm2d, AffineInstanceNorm2d


def _replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def convert_generator(generator: Generator, h_new: torch.Tensor) -> Generator:
    """A copy of ``generator`` with each AdaIN replaced by AffineInstanceNorm2d set from h_new (n_f,).

    The input is not modified. The result's forward takes h=None.
    """
    if h_new.ndim != 1 or h_new.shape[0] != generator.cfg.n_f:
        raise ValueError(f"h_new must have shape ({generator.cfg.n_f},), got {tuple(h_new.shape)}")
    converted = copy.deepcopy(generator)
    adains = [(n, m) for n, m in converted.named_modules() if isinstance(m, AdaptiveInstanceNorm2d)]
    for name, adain in adains:
        _replace_module(converted, name, AffineInstanceNorm2d.from_adain(adain, h_new.detach()))
    return converted


def convert_image_discriminator(discriminator: ImageDiscriminator, h_new: torch.Tensor) -> ImageDiscriminator:
    """A copy of D^I whose projection has the single row w = h_new (n_f,); w_0 and c copied.

    The result's forward takes identity=None. The input is not modified.
    """
    if h_new.ndim != 1 or h_new.shape[0] != discriminator.cfg.n_f:
        raise ValueError(f"h_new must have shape ({discriminator.cfg.n_f},), got {tuple(h_new.shape)}")
    converted = copy.deepcopy(discriminator)
    converted.cfg = dataclasses.replace(discriminator.cfg, num_identities=1)
    old = discriminator.projection
    projection = IdentityProjection(1, discriminator.cfg.n_f).to(old.W.device)
    with torch.no_grad():
        projection.W.copy_(h_new.detach().reshape(1, -1))
        projection.w_0.copy_(old.w_0)
        projection.c.copy_(old.c)
    converted.projection = projection
    return converted
