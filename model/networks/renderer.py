"""The video renderer of Head2HeadFS as one set of networks: G, E_id, D^I, D^M and D^V (section 3.3).

``RendererConfig`` holds each network's config; ``VideoRenderer`` builds them for a vocabulary of N
training identities (the rows of D^I's W). The identity vector size n_f is shared by G's AdaIN layers,
E_id and D^I's projection, so the three configs must agree (checked, never silently overridden).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from model.networks.discriminators import (
    ImageDiscriminator,
    ImageDiscriminatorConfig,
    MouthDiscriminator,
    MouthDiscriminatorConfig,
    TemporalDiscriminator,
    TemporalDiscriminatorConfig,
    temporal_frame_indices,
)
from model.networks.embedder import EmbedderConfig, IdentityEmbedder
from model.networks.generator import Generator, GeneratorConfig


@dataclass(frozen=True)
class RendererConfig:
    """The five networks' settings (defaults: the paper / Head2Head reference at 256 px).

    ``image_discriminator.num_identities`` is set from the training vocabulary when the networks are built.
    """

    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    image_discriminator: ImageDiscriminatorConfig = field(default_factory=ImageDiscriminatorConfig)
    mouth_discriminator: MouthDiscriminatorConfig = field(default_factory=MouthDiscriminatorConfig)
    temporal_discriminator: TemporalDiscriminatorConfig = field(default_factory=TemporalDiscriminatorConfig)

    @property
    def n_f(self) -> int:
        return self.generator.n_f

    def check(self, image_px: int, clip_frames: int) -> None:
        """Raises ValueError naming the settings that disagree with each other or with the data."""
        sizes = {
            "generator.n_f": self.generator.n_f,
            "embedder.n_f": self.embedder.n_f,
            "image_discriminator.n_f": self.image_discriminator.n_f,
        }
        if len(set(sizes.values())) != 1:
            raise ValueError(f"the identity vector size n_f must agree: {sizes}")
        factor = 2**self.generator.n_downsampling
        if image_px % factor:
            raise ValueError(
                f"image_px={image_px} must be a multiple of 2**generator.n_downsampling = {factor}"
            )
        if self.mouth_discriminator.crop_px > image_px:
            raise ValueError(
                f"mouth_discriminator.crop_px={self.mouth_discriminator.crop_px} exceeds image_px={image_px}"
            )
        d_v = self.temporal_discriminator
        try:
            temporal_frame_indices(clip_frames, d_v.n_frames, d_v.num_temporal_scales - 1)
        except ValueError:
            span = 1 + (d_v.n_frames - 1) * 2 ** (d_v.num_temporal_scales - 1)
            raise ValueError(
                f"clip_frames={clip_frames}: the temporal discriminator's {d_v.num_temporal_scales} scales "
                f"of {d_v.n_frames} frames need {span} consecutive frames"
            ) from None


class VideoRenderer(nn.Module):
    """G, E_id, D^I, D^M, D^V for ``num_identities`` training identities.

    ``discriminators()`` are the modules trained by the hinge losses (D^I includes W, Eq. 7). A renderer
    fine-tuned to one person has ``embedder = None`` (its generator's normalisation holds the person).
    """

    def __init__(self, cfg: RendererConfig, num_identities: int):
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg.generator)
        self.embedder = IdentityEmbedder(cfg.embedder)
        image_cfg = dataclasses.replace(cfg.image_discriminator, num_identities=num_identities)
        self.image_discriminator = ImageDiscriminator(image_cfg)
        self.mouth_discriminator = MouthDiscriminator(cfg.mouth_discriminator)
        self.temporal_discriminator = TemporalDiscriminator(cfg.temporal_discriminator)

    def discriminators(self) -> list[nn.Module]:
        return [self.image_discriminator, self.mouth_discriminator, self.temporal_discriminator]
