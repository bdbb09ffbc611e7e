"""Losses against hand-computed values; VGG weights handling; lambda weighting and ablation toggles."""

import os

import pytest
import torch

from model.networks.discriminators import ScaleOutput
from model.networks.losses import (
    GENERATOR_TERMS,
    LossConfig,
    ObjectiveConfig,
    VGGConfig,
    VGGPerceptualLoss,
    discriminator_objective,
    embedding_matching_loss,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    load_vgg19_features,
    mask_l1_loss,
    masked_l1_loss,
    split_objective,
    vgg19_features_architecture,
)


def _out(score, features=()):
    return ScaleOutput([torch.tensor(f) for f in features], torch.tensor(score))


def test_hinge_losses_hand_computed():
    real = [_out([[2.0, 0.5]]), _out([[-1.0]])]
    fake = [_out([[-3.0, 0.0]]), _out([[0.5]])]
    # Scale 0: real relu(1-2)=0, relu(1-0.5)=0.5 -> 0.25; fake relu(1-3)=0, relu(1+0)=1 -> 0.5.
    # Scale 1: real relu(1+1)=2; fake relu(1.5)=1.5.
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.25 + 0.5 + 2 + 1.5)
    # Generator: -mean(fake) per scale: 1.5 + (-0.5).
    assert hinge_generator_loss(fake).item() == pytest.approx(1.0)


def test_feature_matching_hand_computed():
    # Two scales, two feature layers each (weight 4/2 = 2 per layer, 1/2 per scale).
    real = [_out(0.0, [[1.0, 2.0], [0.0]]), _out(0.0, [[3.0], [1.0, 1.0]])]
    fake = [_out(0.0, [[2.0, 2.0], [2.0]]), _out(0.0, [[3.0], [0.0, 3.0]])]
    # mean|diff| per layer: 0.5, 2.0 | 0.0, 1.5 -> sum 4.0, times 2 * 1/2.
    assert feature_matching_loss(real, fake).item() == pytest.approx(4.0)
    # Gradients reach only the fake features.
    f = torch.tensor([2.0, 2.0], requires_grad=True)
    r = torch.tensor([1.0, 2.5], requires_grad=True)
    feature_matching_loss([ScaleOutput([r], torch.zeros(1))], [ScaleOutput([f], torch.zeros(1))]).backward()
    assert r.grad is None and f.grad.tolist() == [2.0, -2.0]  # 4/1 * sign / 2 elements


def test_embedding_matching_is_the_cosine_distance_of_eq_8_hand_computed():
    h = torch.tensor([[1.0, 0.0, 0.0], [3.0, 4.0, 0.0]], requires_grad=True)
    w = torch.tensor([[0.0, 2.0, 0.0], [6.0, 8.0, 0.0]], requires_grad=True)
    # Row 0: orthogonal, 1 - 0 = 1. Row 1: parallel at different lengths, 1 - 1 = 0. Mean 0.5.
    loss = embedding_matching_loss(h, w)
    assert loss.item() == pytest.approx(0.5)
    loss.backward()
    # d/dh (1 - h.w / (|h||w|)) / B = -(w/(|h||w|) - (h.w) h / (|h|^3 |w|)) / 2; row 0: -(0, 1, 0) / 2.
    torch.testing.assert_close(h.grad[0], torch.tensor([0.0, -0.5, 0.0]))
    torch.testing.assert_close(h.grad[1], torch.zeros(3), atol=1e-7, rtol=0)  # at the optimum
    assert embedding_matching_loss(torch.tensor([[1.0, 1.0]]), torch.tensor([[-2.0, -2.0]])).item() == 2.0


def test_mask_and_masked_pixel_l1_hand_computed():
    assert mask_l1_loss(torch.tensor([0.2, 1.0]), torch.tensor([0.0, 0.0])).item() == pytest.approx(0.6)
    fake = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])  # (1, 1, 2, 2)
    real = torch.zeros(1, 1, 2, 2)
    mask = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert masked_l1_loss(fake, real, mask).item() == pytest.approx(0.75)  # (1 + 0.5) / 2 pixels


def test_objective_weights_split_per_network_and_ablations():
    terms = {name: torch.tensor(float(i + 1)) for i, name in enumerate(GENERATOR_TERMS)}
    # adv_image 1, fm_image 2, adv_mouth 3, adv_temporal 4, fm_temporal 5, vgg 6, mask 7, l1 8, mch 9
    cfg = LossConfig(lambda_l1=0.5)
    g, e, weighted = split_objective(cfg, ObjectiveConfig(), terms)
    # The paper's split: G gets everything but L_mch; E_id gets L_adv + lambda_mch L_mch (Eq. 8).
    assert g.item() == pytest.approx(1 + 10 * 2 + 3 + 4 + 10 * 5 + 10 * 6 + 10 * 7 + 0.5 * 8)
    assert e.item() == pytest.approx(1 + 3 + 4 + 10 * 9)
    assert weighted["vgg"].item() == pytest.approx(60.0)
    # One summed objective for both (the old behaviour) is a config choice.
    both = ObjectiveConfig(generator_terms=GENERATOR_TERMS, embedder_terms=GENERATOR_TERMS)
    g, e, _ = split_objective(cfg, both, terms)
    assert g.item() == e.item() == pytest.approx(1 + 20 + 3 + 4 + 50 + 60 + 70 + 4 + 90)
    ablated_cfg = LossConfig(lambda_vgg=1.0, use_mouth_discriminator=False, use_temporal_discriminator=False)
    with pytest.raises(ValueError, match="adv_mouth"):
        split_objective(ablated_cfg, ObjectiveConfig(), terms)  # an ablated discriminator's term
    with pytest.raises(ValueError, match="pixel_l1"):
        split_objective(LossConfig(), ObjectiveConfig(), terms)  # l1 at weight 0 is disabled
    left_out = ("adv_mouth", "adv_temporal", "fm_temporal", "pixel_l1")
    ablated = {k: v for k, v in terms.items() if k not in left_out}
    g, e, _ = split_objective(ablated_cfg, ObjectiveConfig(), ablated)
    assert g.item() == pytest.approx(1 + 10 * 2 + 6 + 10 * 7) and e.item() == pytest.approx(1 + 90)
    # A schedule may leave enabled terms out (e.g. no adversarial terms during a warm-up).
    g, e, _ = split_objective(cfg, ObjectiveConfig(), {"vgg": torch.tensor(1.0), "mch": torch.tensor(0.5)})
    assert g.item() == pytest.approx(10.0) and e.item() == pytest.approx(5.0)
    total, _ = discriminator_objective(ablated_cfg, {"image": torch.tensor(2.0)})
    assert total.item() == 2.0
    with pytest.raises(ValueError, match="mouth"):
        discriminator_objective(ablated_cfg, {"image": torch.tensor(2.0), "mouth": torch.tensor(1.0)})


def test_vgg_missing_weights_is_a_clear_error(tmp_path, monkeypatch):
    missing = tmp_path / "nope" / "vgg19.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_vgg19_features(VGGConfig(weights_path=str(missing)))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(
        FileNotFoundError, match=os.path.join(str(tmp_path), "torch_home", "hub", "checkpoints")
    ):
        load_vgg19_features(VGGConfig())


def test_vgg_loads_a_saved_state_dict(tmp_path):
    torch.manual_seed(0)
    reference = vgg19_features_architecture()
    path = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in reference.state_dict().items()}, path)
    loaded = load_vgg19_features(VGGConfig(weights_path=str(path)))
    assert len(loaded) == 30 and isinstance(loaded[29], torch.nn.ReLU)  # up to relu5_1
    torch.testing.assert_close(loaded[28].weight, reference[28].weight)
    assert not any(p.requires_grad for p in loaded.parameters())


def test_vgg_perceptual_loss_explicit_random_opt_out():
    torch.manual_seed(0)
    loss_fn = VGGPerceptualLoss(VGGConfig(random_weights=True)).train()
    assert not loss_fn.slices.training
    real = torch.rand(1, 3, 32, 32) * 2 - 1
    fake = (real + 0.3 * torch.randn_like(real)).requires_grad_(True)
    assert loss_fn(real, real).item() == 0.0
    loss = loss_fn(fake, real)
    assert loss.item() > 0
    loss.backward()
    assert fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_fn.parameters())
    # Hand check of the weighting: the loss is the weighted sum of per-layer L1s of the features.
    with torch.no_grad():
        ff, fr = loss_fn.features(fake), loss_fn.features(real)
        expected = sum(w * (a - b).abs().mean() for w, a, b in zip((1 / 32, 1 / 16, 1 / 8, 1 / 4, 1), ff, fr))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_configs_load_through_infra_config():
    from infra.config import ConfigError, from_dict, to_dict

    cfg = from_dict(
        LossConfig, {"use_temporal_discriminator": False, "vgg": {"weights_path": "/w/vgg19.pth"}}
    )
    assert not cfg.use_temporal_discriminator and cfg.vgg.weights_path == "/w/vgg19.pth"
    assert from_dict(LossConfig, to_dict(LossConfig())) == LossConfig()
    with pytest.raises(ConfigError, match="lambda_vgg"):
        from_dict(LossConfig, {"lambda_vgg": "ten"})


@pytest.mark.slow
def test_full_objective_reaches_every_network():
    """One meta-learning step at 32 px: every parameter of G, E_id, D^I, D^M, D^V gets its gradient."""
    from model.networks.discriminators import (
        ImageDiscriminator,
        ImageDiscriminatorConfig,
        MouthDiscriminator,
        MouthDiscriminatorConfig,
        PatchGANConfig,
        TemporalDiscriminator,
        TemporalDiscriminatorConfig,
    )
    from model.networks.embedder import EmbedderConfig, IdentityEmbedder
    from model.networks.generator import Generator, GeneratorConfig, generate_sequence

    torch.manual_seed(0)
    B, T, S, n_f = 2, 9, 32, 512
    patch = PatchGANConfig(ndf=4)
    embedder = IdentityEmbedder(EmbedderConfig(input_px=75))
    g = Generator(GeneratorConfig(base_channels=4, n_downsampling=2, n_blocks=2, n_f=n_f))
    d_i = ImageDiscriminator(ImageDiscriminatorConfig(patch, n_f=n_f, num_identities=2))
    d_m = MouthDiscriminator(MouthDiscriminatorConfig(patch, crop_px=16))
    d_v = TemporalDiscriminator(TemporalDiscriminatorConfig(patch))
    vgg = VGGPerceptualLoss(VGGConfig(random_weights=True))
    real = torch.rand(B, T, 3, S, S) * 2 - 1
    nmfc, masks = torch.rand(B, T, 3, S, S), (torch.rand(B, T, 1, S, S) > 0.3).float()
    flows, ids, centers = torch.randn(B, T - 1, 2, S, S), torch.tensor([0, 1]), torch.full((B, 2), 16.0)

    # G and E_id step: h from M = 2 frames (Eq. 4), the clip synthesised sequentially (Eq. 5).
    h = embedder(real[:, :2], masks[:, :2])
    fake = generate_sequence(g, nmfc, h, detach_prev=False)
    t = T - 1
    real_i, fake_i = d_i(real[:, t], nmfc[:, t], ids), d_i(fake.frame[:, t], nmfc[:, t], ids)
    terms = {
        "adv_image": hinge_generator_loss(fake_i),
        "fm_image": feature_matching_loss(real_i, fake_i),
        "adv_mouth": hinge_generator_loss(d_m(fake.frame[:, t], nmfc[:, t], centers)),
        "adv_temporal": 0.0,
        "fm_temporal": 0.0,
        "vgg": vgg(fake.frame[:, t], real[:, t]),
        "mask_l1": mask_l1_loss(fake.mask, masks),
        "mch": embedding_matching_loss(h, d_i.projection.W[ids]),  # Eq. (8)
    }
    for s, ((fr, fl), (ff, _)) in enumerate(
        zip(d_v.temporal_inputs(real, flows), d_v.temporal_inputs(fake.frame, flows))
    ):
        real_v, fake_v = d_v(s, fr, fl), d_v(s, ff, fl)
        terms["adv_temporal"] = terms["adv_temporal"] + hinge_generator_loss(fake_v)
        terms["fm_temporal"] = terms["fm_temporal"] + feature_matching_loss(real_v, fake_v)
    g_total, e_total, _ = split_objective(LossConfig(), ObjectiveConfig(), terms)
    grads = torch.autograd.grad(g_total, list(g.parameters()), retain_graph=True)
    assert [n for (n, _), gr in zip(g.named_parameters(), grads) if gr.abs().sum() == 0] == []
    grads = torch.autograd.grad(e_total, list(embedder.parameters()))
    assert [n for (n, _), gr in zip(embedder.named_parameters(), grads) if gr.abs().sum() == 0] == []

    # Discriminator step on detached fakes.
    fake_frames = fake.frame.detach()
    loss_i = hinge_discriminator_loss(
        d_i(real[:, t], nmfc[:, t], ids), d_i(fake_frames[:, t], nmfc[:, t], ids)
    )
    loss_m = hinge_discriminator_loss(
        d_m(real[:, t], nmfc[:, t], centers), d_m(fake_frames[:, t], nmfc[:, t], centers)
    )
    loss_v = sum(
        hinge_discriminator_loss(d_v(s, fr, fl), d_v(s, ff, fl))
        for s, ((fr, fl), (ff, _)) in enumerate(
            zip(d_v.temporal_inputs(real, flows), d_v.temporal_inputs(fake_frames, flows))
        )
    )
    total_d, _ = discriminator_objective(LossConfig(), {"image": loss_i, "mouth": loss_m, "temporal": loss_v})
    d_side = [(n, p) for net in (d_i, d_m, d_v) for n, p in net.named_parameters()]
    grads = torch.autograd.grad(total_d, [p for _, p in d_side], allow_unused=True)
    # Final-layer biases cancel exactly between the real and fake hinge terms while all scores sit
    # inside the margins (see test_discriminators); everything else must receive a gradient.
    missing = [n for (n, _), gr in zip(d_side, grads) if gr is None or gr.abs().sum() == 0]
    assert all(n.endswith("blocks.4.bias") or n == "projection.c" for n in missing), missing
