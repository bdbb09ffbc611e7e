"""The renderer networks on a CUDA device (skipped without one): float32 agrees with the CPU, and one
bf16 autocast adversarial step of G, D^I, D^M and D^V with every loss term stays finite and reaches
every parameter."""

from __future__ import annotations

import pytest
import torch

from model.networks.discriminators import (
    ImageDiscriminator,
    ImageDiscriminatorConfig,
    MouthDiscriminator,
    MouthDiscriminatorConfig,
    PatchGANConfig,
    TemporalDiscriminator,
    TemporalDiscriminatorConfig,
)
from model.networks.generator import Generator, GeneratorConfig
from model.networks.losses import (
    VGGConfig,
    VGGPerceptualLoss,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    mask_l1_loss,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CFG = GeneratorConfig(base_channels=16, n_downsampling=3, n_blocks=4, n_f=32)
PATCH = PatchGANConfig(ndf=16, n_layers=3, num_scales=2)


@pytest.fixture
def exact_float32():
    """cuDNN and cuBLAS in true float32 (no TF32), as the CPU computes."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_generator_float32_matches_cpu(exact_float32):
    torch.manual_seed(0)
    g = Generator(CFG).eval()
    nmfc, prev, h = torch.rand(2, 3, 3, 64, 64), torch.rand(2, 2, 3, 64, 64) * 2 - 1, torch.randn(2, 32)
    with torch.no_grad():
        cpu = g(nmfc, prev, h)
        gpu = g.cuda()(nmfc.cuda(), prev.cuda(), h.cuda())
    torch.testing.assert_close(gpu.frame.cpu(), cpu.frame, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gpu.mask.cpu(), cpu.mask, atol=1e-4, rtol=1e-4)


def test_bf16_adversarial_step_is_finite_and_reaches_every_parameter():
    adversarial_step(torch.device("cuda"))


def adversarial_step(device: torch.device) -> None:
    """One bf16 autocast step on ``device``: G's objective (hinge on D^I, D^M, D^V + feature matching +
    VGG + mask) and D's hinge losses; asserts finite losses and a finite, non-zero gradient on every
    parameter of G and of each discriminator."""
    torch.manual_seed(1)
    size, batch = 64, 2
    g = Generator(CFG).to(device, memory_format=torch.channels_last)
    d_i = ImageDiscriminator(ImageDiscriminatorConfig(PATCH, n_f=32, num_identities=3)).to(device)
    d_m = MouthDiscriminator(MouthDiscriminatorConfig(PATCH, crop_px=24)).to(device)
    d_v = TemporalDiscriminator(TemporalDiscriminatorConfig(PATCH)).to(device)
    vgg = VGGPerceptualLoss(VGGConfig(random_weights=True)).to(device)
    with torch.no_grad():  # start D away from the hinge margins' cancellation (see test_discriminators)
        d_i.projection.w_0.normal_()
        d_i.projection.c.fill_(1.5)
        for net in (d_m.patchgan, *d_v.scales):
            for patch in net.nets:
                patch.blocks[-1].bias.fill_(1.5)
    nmfc = torch.rand(batch, 3, 3, size, size, device=device)
    prev = torch.rand(batch, 2, 3, size, size, device=device) * 2 - 1
    real = torch.rand(batch, 3, size, size, device=device) * 2 - 1
    real_mask = (torch.rand(batch, 1, size, size, device=device) > 0.5).float()
    h, ids = torch.randn(batch, 32, device=device), torch.tensor([0, 2], device=device)
    centers = torch.full((batch, 2), size / 2, device=device)
    real_clip = torch.rand(batch, 9, 3, size, size, device=device) * 2 - 1
    flows = torch.randn(batch, 8, 2, size, size, device=device)

    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = g(nmfc, prev, h)
        assert out.frame.dtype == torch.bfloat16
        fake_clip = torch.cat([real_clip[:, :-1], out.frame[:, None].float()], 1)
        condition = nmfc[:, -1]
        fake_i, real_i = d_i(out.frame, condition, ids), d_i(real, condition, ids)
        fake_m, real_m = d_m(out.frame, condition, centers), d_m(real, condition, centers)
        temporal = list(zip(d_v.temporal_inputs(real_clip, flows), d_v.temporal_inputs(fake_clip, flows)))
        loss_g = hinge_generator_loss(fake_i) + hinge_generator_loss(fake_m)
        loss_g = loss_g + 10 * feature_matching_loss(real_i, fake_i)
        loss_g = loss_g + 10 * vgg(out.frame.float(), real) + 10 * mask_l1_loss(out.mask.float(), real_mask)
        loss_d = hinge_discriminator_loss(real_i, d_i(out.frame.detach(), condition, ids))
        loss_d = loss_d + hinge_discriminator_loss(real_m, d_m(out.frame.detach(), condition, centers))
        for s, ((frames_r, flows_r), (frames_f, _)) in enumerate(temporal):
            fake_v = d_v(s, frames_f, flows_r)
            loss_g = loss_g + hinge_generator_loss(fake_v)
            loss_d = loss_d + hinge_discriminator_loss(
                d_v(s, frames_r, flows_r), d_v(s, frames_f.detach(), flows_r)
            )
    assert torch.isfinite(loss_g) and torch.isfinite(loss_d)
    generator_params = list(g.parameters())
    grads = torch.autograd.grad(loss_g, generator_params, retain_graph=True)
    missing = [n for (n, _), grad in zip(g.named_parameters(), grads) if not grad.abs().sum() > 0]
    assert not missing, missing
    assert all(torch.isfinite(grad).all() for grad in grads)
    loss_d.backward()
    for net in (d_i, d_m, d_v):
        missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, (type(net).__name__, missing)
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())
