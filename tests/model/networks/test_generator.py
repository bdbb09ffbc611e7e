"""Generator G (Eq. 5): shapes, ranges, gradients, identity conditioning, sequential synthesis, overfit."""

import pytest
import torch

from model.networks.generator import Generator, GeneratorConfig, generate_sequence, nmfc_windows
from model.networks.layers import AdaptiveInstanceNorm2d

SMALL = GeneratorConfig(base_channels=8, n_downsampling=2, n_blocks=2, n_f=16)


@pytest.mark.parametrize(
    ("size", "cfg"),
    [
        (32, SMALL),
        (64, SMALL),
        (256, GeneratorConfig(base_channels=4, n_downsampling=3, n_blocks=2, n_f=16)),
    ],
)
def test_shapes_dtypes_and_ranges(size, cfg):
    torch.manual_seed(0)
    g = Generator(cfg)
    nmfc = torch.rand(2, cfg.n_frames, 3, size, size)
    prev = torch.rand(2, cfg.n_frames - 1, 3, size, size) * 2 - 1
    out = g(nmfc, prev, torch.randn(2, cfg.n_f))
    assert out.frame.shape == (2, 3, size, size) and out.frame.dtype == torch.float32
    assert out.mask.shape == (2, 1, size, size) and out.mask.dtype == torch.float32
    assert out.frame.abs().max() <= 1 and 0 <= out.mask.min() and out.mask.max() <= 1
    # Channel-stacked inputs are the same thing.
    out2 = g(nmfc.flatten(1, 2), prev.flatten(1, 2), torch.randn(2, cfg.n_f))
    assert out2.frame.shape == out.frame.shape


def test_reference_sizes():
    """Default config = Head2Head's G (ngf 64, 3 downsamplings to 512, 5 + 5 + 4 residual blocks)."""
    g = Generator()
    bottleneck = [m for m in g.encoder_nmfc.modules() if isinstance(m, AdaptiveInstanceNorm2d)][-1]
    assert bottleneck.num_features == 512 and bottleneck.n_f == 512
    assert g.encoder_nmfc[0].conv.kernel_size == (7, 7) and g.encoder_nmfc[0].conv.out_channels == 64
    n_res = [
        sum(type(m).__name__ == "ResidualBlock" for m in part)
        for part in (g.encoder_nmfc, g.encoder_prev, g.decoder)
    ]
    assert n_res == [5, 5, 4]
    # Every normalisation layer of G is AdaIN.
    assert not any(isinstance(m, torch.nn.modules.instancenorm._InstanceNorm) for m in g.modules())
    with torch.no_grad():
        out = g(torch.rand(1, 3, 3, 256, 256), torch.zeros(1, 2, 3, 256, 256), torch.randn(1, 512))
    assert out.frame.shape == (1, 3, 256, 256) and out.mask.shape == (1, 1, 256, 256)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(1)
    g = Generator(SMALL)
    out = g(torch.rand(2, 3, 3, 32, 32), torch.rand(2, 2, 3, 32, 32), torch.randn(2, 16))
    loss = (out.frame - torch.rand_like(out.frame)).abs().mean() + (out.mask - 1).abs().mean()
    loss.backward()
    missing = [n for n, p in g.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_output_depends_on_identity_and_inputs():
    torch.manual_seed(2)
    g = Generator(SMALL)
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, AdaptiveInstanceNorm2d):
                m.P_gamma.normal_(0, 0.2)
                m.P_beta.normal_(0, 0.2)
    nmfc, prev, h = torch.rand(1, 3, 3, 32, 32), torch.rand(1, 2, 3, 32, 32), torch.randn(1, 16)
    with torch.no_grad():
        base = g(nmfc, prev, h).frame
        assert (g(nmfc, prev, torch.randn(1, 16)).frame - base).abs().mean() > 1e-3
        assert (g(torch.rand_like(nmfc), prev, h).frame - base).abs().mean() > 1e-3
        assert (g(nmfc, torch.rand_like(prev), h).frame - base).abs().mean() > 1e-3
    with pytest.raises(ValueError, match="multiple of 4"):
        g(torch.rand(1, 3, 3, 30, 30), torch.rand(1, 2, 3, 30, 30), h)
    with pytest.raises(ValueError, match="channels"):
        g(torch.rand(1, 2, 3, 32, 32), prev, h)


def test_nmfc_windows_repeat_first_frame():
    nmfc = torch.arange(4.0)[None, :, None, None, None].expand(1, 4, 1, 2, 2)
    w = nmfc_windows(nmfc, 3)
    assert w.shape == (1, 4, 3, 1, 2, 2)
    assert w[0, :, :, 0, 0, 0].tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]]


def test_generate_sequence_feeds_outputs_back():
    torch.manual_seed(3)
    g = Generator(SMALL)
    nmfc, h = torch.rand(1, 4, 3, 32, 32), torch.randn(1, 16)
    with torch.no_grad():
        seq = generate_sequence(g, nmfc, h)
        windows = nmfc_windows(nmfc, 3)
        prev = torch.zeros(1, 2, 3, 32, 32)
        for t in range(4):  # the obvious loop
            out = g(windows[:, t], prev, h)
            torch.testing.assert_close(seq.frame[:, t], out.frame)
            torch.testing.assert_close(seq.mask[:, t], out.mask)
            prev = torch.stack([prev[:, 1], out.frame], dim=1)
    # Without detaching, the last frame's loss reaches the first frame's computation through feedback.
    nmfc.requires_grad_(True)
    seq = generate_sequence(g, nmfc, h, detach_prev=False)
    (grad,) = torch.autograd.grad(seq.frame[:, -1].sum(), nmfc)
    assert grad[:, 0].abs().sum() > 0  # frame 0 only enters the last window via fed-back outputs
    nmfc2 = nmfc.detach().clone().requires_grad_(True)
    seq = generate_sequence(g, nmfc2, h, detach_prev=True)
    (grad,) = torch.autograd.grad(seq.frame[:, -1].sum(), nmfc2)
    assert grad[:, 0].abs().sum() == 0


def _toy_clip(T=4, S=32):
    """A moving disc: NMFC-like colours inside, a textured face and a flat background in the frame."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
    nmfc, frames, masks = [], [], []
    for t in range(T):
        m = (((xx - (-0.3 + 0.2 * t)) ** 2 + yy**2) < 0.4).float()
        nmfc.append(torch.stack([(xx + 1) / 2 * m, (yy + 1) / 2 * m, (t / T) * m]))
        face = torch.stack([torch.sin(3 * xx + t), torch.cos(2 * yy - t), 2 * xx * yy]) * 0.8 * m
        frames.append(face + (1 - m) * torch.tensor([-0.5, 0.2, 0.6])[:, None, None])
        masks.append(m[None])
    return torch.stack(nmfc)[None], torch.stack(frames)[None], torch.stack(masks)[None]


@pytest.mark.slow
def test_overfit_clip_from_nmfc():
    """G alone (L1 + mask L1) learns to reproduce a 4-frame 32 px clip, then synthesises it sequentially.

    Training sees the 4 windows of the clip as one batch with the real previous frames (zeros before
    the start, as synthesis begins); the check runs synthesis as at test time, feeding outputs back.
    About 15 s of CPU time on one thread (300 steps); wall time grows with the machine's other load.
    """
    torch.manual_seed(0)
    nmfc, frames, masks = _toy_clip()
    T = nmfc.shape[1]
    g = Generator(GeneratorConfig(base_channels=16, n_downsampling=2, n_blocks=2, n_f=16))
    h = torch.nn.functional.normalize(torch.randn(1, 16), dim=1)
    windows = nmfc_windows(nmfc, 3)[0]  # (T, 3, 3, H, W)
    padded = torch.cat([torch.zeros(2, 3, 32, 32), frames[0]])
    prev = torch.stack([padded[t : t + 2] for t in range(T)])  # (T, 2, 3, H, W): y_{t-2}, y_{t-1}
    opt = torch.optim.Adam(g.parameters(), lr=4e-3, betas=(0.5, 0.999))
    for _ in range(300):
        out = g(windows, prev, h.expand(T, -1))
        loss = (out.frame - frames[0]).abs().mean() + (out.mask - masks[0]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = generate_sequence(g, nmfc, h)
        blind = generate_sequence(g, torch.zeros_like(nmfc), h)
    # Baseline: the best time-constant answer (per-pixel mean frame) cannot follow the motion.
    # Measured here: error 0.33 x baseline, mask error 0.008.
    baseline = (frames - frames.mean(dim=1, keepdim=True)).abs().mean()
    assert (out.frame - frames).abs().mean() < 0.5 * baseline
    assert (out.mask - masks).abs().mean() < 0.03
    # The frames come from the NMFC: without it G fails.
    assert (blind.frame - frames).abs().mean() > 1.5 * baseline
