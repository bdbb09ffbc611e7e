"""AdaIN (Eq. 6), its fine-tune replacement, and the PatchGAN building block."""

import pytest
import torch

from model.networks.layers import (
    AdaptiveInstanceNorm2d,
    AffineInstanceNorm2d,
    CondSequential,
    ConvNormAct,
    PatchDiscriminator,
    ResidualBlock,
    downsample_2x,
    output_size_patchgan,
)


def test_adain_matches_hand_computed_eq6():
    torch.manual_seed(0)
    adain = AdaptiveInstanceNorm2d(4, 6, gamma_offset=0.0)
    x = torch.randn(2, 4, 5, 7) * 3 + 1
    h = torch.randn(2, 6)
    y = adain(x, h)
    # Reference: per-sample, per-channel standardisation (biased variance), then gamma, beta of Eq. 6.
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    gamma = torch.einsum("cf,bf->bc", adain.P_gamma, h)[:, :, None, None]
    beta = torch.einsum("cf,bf->bc", adain.P_beta, h)[:, :, None, None]
    expected = gamma * (x - mean) / torch.sqrt(var + 1e-5) + beta
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)
    # Output statistics per channel are (beta, |gamma|).
    torch.testing.assert_close(y.mean(dim=(2, 3)), beta[:, :, 0, 0], atol=1e-5, rtol=1e-5)


def test_adain_offset_adds_to_gamma_and_is_per_sample():
    torch.manual_seed(1)
    adain = AdaptiveInstanceNorm2d(3, 5, gamma_offset=1.0)
    h = torch.zeros(1, 5)
    x = torch.randn(1, 3, 4, 4)
    # h = 0: gamma = 1, beta = 0, i.e. plain instance norm.
    torch.testing.assert_close(adain(x, h), torch.nn.functional.instance_norm(x), atol=1e-6, rtol=1e-6)
    # Sample 0's output does not depend on sample 1's identity (no mixing across the batch).
    xb = torch.randn(2, 3, 4, 4)
    h1 = torch.randn(2, 5)
    h2 = h1.clone()
    h2[1] += 5.0
    out1, out2 = adain(xb, h1), adain(xb, h2)
    torch.testing.assert_close(out1[0], out2[0])
    assert not torch.allclose(out1[1], out2[1])
    with pytest.raises(ValueError, match="h"):
        adain(x, None)
    with pytest.raises(ValueError, match=r"\(B, 5\)"):
        adain(x, torch.zeros(1, 4))


def test_affine_instance_norm_from_adain_is_exact():
    torch.manual_seed(2)
    adain = AdaptiveInstanceNorm2d(8, 16)
    with torch.no_grad():
        adain.P_gamma.normal_(0, 0.5)
        adain.P_beta.normal_(0, 0.5)
    h_new = torch.randn(16)
    norm = AffineInstanceNorm2d.from_adain(adain, h_new)
    x = torch.randn(3, 8, 6, 6)
    torch.testing.assert_close(norm(x), adain(x, h_new.expand(3, -1)), atol=1e-6, rtol=1e-6)
    assert norm.weight.requires_grad and norm.bias.requires_grad


def test_conditional_blocks_shapes_and_identity_dependence():
    torch.manual_seed(3)
    n_f = 8
    seq = CondSequential(
        [
            ConvNormAct(3, 4, 7, n_f, reflect_pad=True),
            ConvNormAct(4, 8, 3, n_f, stride=2),
            ResidualBlock(8, n_f),
            ConvNormAct(8, 4, 3, n_f, stride=2, transposed=True),
            torch.nn.Conv2d(4, 2, 1),
        ]
    )
    x = torch.randn(2, 3, 16, 16)
    h = torch.randn(2, n_f)
    y = seq(x, h)
    assert y.shape == (2, 2, 16, 16)
    with torch.no_grad():
        for m in seq.modules():
            if isinstance(m, AdaptiveInstanceNorm2d):
                m.P_gamma.normal_(0, 0.3)
    assert not torch.allclose(seq(x, h), seq(x, h + 1.0))


@pytest.mark.parametrize("size", [32, 64, 72, 256])
def test_patch_discriminator_features(size):
    net = PatchDiscriminator(6, ndf=8, n_layers=3, out_channels=5)
    feats = net(torch.randn(1, 6, size, size))
    assert len(feats) == 3 + 2
    assert [f.shape[1] for f in feats] == [8, 16, 32, 64, 5]
    assert feats[-1].shape[-1] == output_size_patchgan(size, 3)


def test_downsample_2x():
    x = torch.ones(1, 2, 9, 8)
    y = downsample_2x(x)
    assert y.shape == (1, 2, 5, 4)
    torch.testing.assert_close(y, torch.ones_like(y))  # padding is not counted
