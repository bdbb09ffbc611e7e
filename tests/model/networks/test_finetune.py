"""Section 3.4 conversion: the fine-tune networks equal the meta-learned ones fed h_new, before training."""

import pytest
import torch

from model.networks.discriminators import ImageDiscriminator, ImageDiscriminatorConfig, PatchGANConfig
from model.networks.finetune import convert_generator, convert_image_discriminator
from model.networks.generator import Generator, GeneratorConfig, generate_sequence
from model.networks.layers import AdaptiveInstanceNorm2d, AffineInstanceNorm2d

N_F = 16


def _generator():
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(base_channels=8, n_downsampling=2, n_blocks=2, n_f=N_F))
    with torch.no_grad():  # make the identity matter a lot, so a wrong conversion cannot pass
        for m in g.modules():
            if isinstance(m, AdaptiveInstanceNorm2d):
                m.P_gamma.normal_(0, 0.3)
                m.P_beta.normal_(0, 0.3)
    return g


def test_converted_generator_is_exactly_equivalent():
    g = _generator()
    h_new = torch.nn.functional.normalize(torch.randn(N_F), dim=0)
    ft = convert_generator(g, h_new)
    n_adain = sum(isinstance(m, AdaptiveInstanceNorm2d) for m in g.modules())
    assert n_adain > 0
    assert not any(isinstance(m, AdaptiveInstanceNorm2d) for m in ft.modules())
    assert sum(isinstance(m, AffineInstanceNorm2d) for m in ft.modules()) == n_adain
    # The original is untouched and the copies do not share parameters.
    assert sum(isinstance(m, AdaptiveInstanceNorm2d) for m in g.modules()) == n_adain
    assert not {id(p) for p in ft.parameters()} & {id(p) for p in g.parameters()}
    nmfc, prev = torch.rand(2, 3, 3, 32, 32), torch.rand(2, 2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = g(nmfc, prev, h_new.expand(2, -1))
        got = ft(nmfc, prev, None)
        other = g(nmfc, prev, torch.randn(2, N_F))
    torch.testing.assert_close(got.frame, expected.frame, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.mask, expected.mask, atol=1e-5, rtol=0)
    assert (other.frame - expected.frame).abs().max() > 1e-2  # h really changes the output
    with torch.no_grad():
        seq_ft = generate_sequence(ft, torch.rand(1, 4, 3, 32, 32), None)
    assert seq_ft.frame.shape == (1, 4, 3, 32, 32)


def test_converted_generator_trains_every_parameter():
    ft = convert_generator(_generator(), torch.randn(N_F))
    out = ft(torch.rand(1, 3, 3, 32, 32), torch.rand(1, 2, 3, 32, 32), None)
    ((out.frame - 0.5).abs().mean() + out.mask.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ft.parameters())
    with pytest.raises(ValueError, match="h_new"):
        convert_generator(_generator(), torch.randn(N_F + 1))


def test_converted_image_discriminator_is_exactly_equivalent():
    torch.manual_seed(1)
    d = ImageDiscriminator(ImageDiscriminatorConfig(PatchGANConfig(ndf=4), n_f=N_F, num_identities=5))
    with torch.no_grad():
        d.projection.w_0.normal_()
        d.projection.c.fill_(-0.2)
    h_new = torch.randn(N_F)
    ft = convert_image_discriminator(d, h_new)
    assert ft.projection.W.shape == (1, N_F) and ft.cfg.num_identities == 1
    torch.testing.assert_close(ft.projection.W[0], h_new)
    frame, nmfc = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    # Reference: the meta-learned D^I whose projection row 3 is h_new.
    with torch.no_grad():
        d.projection.W[3] = h_new
        expected = d(frame, nmfc, torch.tensor([3, 3]))
        got = ft(frame, nmfc, None)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g.score, e.score, atol=1e-5, rtol=0)
        for fe, fg in zip(e.features, g.features):
            torch.testing.assert_close(fg, fe, atol=1e-5, rtol=0)
    assert d.projection.W.shape == (5, N_F)  # the original keeps its N rows
