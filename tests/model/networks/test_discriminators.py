"""D^I (identity projection, Eq. 7), D^M (mouth crops), D^V (temporal scales, flows)."""

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
    centers_from_boxes,
    crop_regions,
    flows_between,
    mouth_centers_from_landmarks,
    temporal_frame_indices,
    warp_by_flow,
)
from model.networks.layers import output_size_patchgan
from model.networks.losses import hinge_discriminator_loss

SMALL_PATCH = PatchGANConfig(ndf=4, n_layers=3, num_scales=2)


def _image_d(num_identities=3, n_f=8):
    return ImageDiscriminator(ImageDiscriminatorConfig(SMALL_PATCH, n_f=n_f, num_identities=num_identities))


@pytest.mark.parametrize("size", [32, 64, 256])
def test_image_discriminator_shapes(size):
    d = _image_d()
    out = d(torch.rand(2, 3, size, size), torch.rand(2, 3, size, size), torch.tensor([0, 2]))
    assert len(out) == 2
    for s, o in enumerate(out):
        side = output_size_patchgan((size + 2**s - 1) // 2**s, 3)
        assert o.score.shape == (2, 1, side, side) and o.score.dtype == torch.float32
        assert len(o.features) == 4


def test_image_discriminator_score_is_eq7_projection():
    torch.manual_seed(0)
    d = _image_d()
    with torch.no_grad():
        d.projection.w_0.normal_()
        d.projection.c.fill_(0.3)
    frame, nmfc = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    ids = torch.tensor([1, 2])
    out = d(frame, nmfc, ids)
    raw = d.patchgan(torch.cat([frame, nmfc], dim=1))
    for o, r in zip(out, raw):
        d_vec = r.score  # (B, n_f, h, w): the vector d per patch
        assert d_vec.shape[1] == 8
        for b in range(2):
            w = d.projection.W[ids[b]] + d.projection.w_0
            expected = (d_vec[b] * w[:, None, None]).sum(0) + 0.3  # r = d^T (w_i + w_0) + c
            torch.testing.assert_close(o.score[b, 0], expected, atol=1e-5, rtol=1e-5)
    # Another identity row gives another score; the row index is required when N > 1.
    other = d(frame, nmfc, torch.tensor([0, 0]))
    assert not torch.allclose(other[0].score, out[0].score)
    with pytest.raises(ValueError, match="identity"):
        d(frame, nmfc, None)


def test_crop_regions_against_loop_and_clamps_at_borders():
    images = torch.arange(2 * 3 * 20 * 24, dtype=torch.float32).view(2, 3, 20, 24)
    centers = torch.tensor([[10.4, 7.6], [1.0, 19.0]])  # second one hits the left and bottom borders
    crops = crop_regions(images, centers, 8)
    assert crops.shape == (2, 3, 8, 8)
    torch.testing.assert_close(crops[0], images[0, :, 8 - 4 : 8 + 4, 10 - 4 : 10 + 4])
    torch.testing.assert_close(crops[1], images[1, :, 12:20, 0:8])
    with pytest.raises(ValueError, match="crop_px"):
        crop_regions(images, centers, 21)


def test_boxes_from_the_nmfc_stage_crop_exactly():
    images = torch.rand(2, 3, 32, 32)
    boxes = torch.tensor([[3, 5, 19, 21], [16, 16, 32, 32]], dtype=torch.int32)  # x0, y0, x1, y1
    crops = crop_regions(images, centers_from_boxes(boxes, 16), 16)
    torch.testing.assert_close(crops[0], images[0, :, 5:21, 3:19])
    torch.testing.assert_close(crops[1], images[1, :, 16:32, 16:32])
    d = MouthDiscriminator(MouthDiscriminatorConfig(SMALL_PATCH, crop_px=16))
    nmfc = torch.rand(2, 3, 32, 32)
    by_box = d(images, nmfc, boxes)
    by_centre = d(images, nmfc, centers_from_boxes(boxes, 16))
    torch.testing.assert_close(by_box[0].score, by_centre[0].score)
    with pytest.raises(ValueError, match="crop_px"):
        centers_from_boxes(boxes, 24)


def test_mouth_centers_from_landmarks():
    landmarks = torch.zeros(1, 68, 2)
    landmarks[0, 48:68] = torch.tensor([5.0, 9.0])
    landmarks[0, 48, 0] = 25.0  # one lip point moved by 20 px moves the mean by 1 px
    torch.testing.assert_close(mouth_centers_from_landmarks(landmarks), torch.tensor([[6.0, 9.0]]))


@pytest.mark.parametrize(("size", "crop"), [(32, 16), (64, 24), (256, 72)])
def test_mouth_discriminator_shapes(size, crop):
    d = MouthDiscriminator(MouthDiscriminatorConfig(SMALL_PATCH, crop_px=crop))
    out = d(torch.rand(2, 3, size, size), torch.rand(2, 3, size, size), torch.full((2, 2), size / 2))
    assert [o.score.shape for o in out] == [
        (2, 1, output_size_patchgan(crop, 3), output_size_patchgan(crop, 3)),
        (2, 1, output_size_patchgan((crop + 1) // 2, 3), output_size_patchgan((crop + 1) // 2, 3)),
    ]
    # Only the crop matters: changing pixels far from the mouth leaves the scores unchanged.
    frame = torch.rand(1, 3, size, size)
    nmfc = torch.rand(1, 3, size, size)
    centre = torch.tensor([[crop / 2, crop / 2]])
    frame2 = frame.clone()
    frame2[..., crop:, crop:] = 0
    torch.testing.assert_close(d(frame, nmfc, centre)[0].score, d(frame2, nmfc, centre)[0].score)


def test_temporal_frame_indices():
    assert temporal_frame_indices(9, 3, 0) == [6, 7, 8]
    assert temporal_frame_indices(9, 3, 1) == [4, 6, 8]
    assert temporal_frame_indices(9, 3, 2) == [0, 4, 8]
    with pytest.raises(ValueError, match="too few"):
        temporal_frame_indices(8, 3, 2)


def test_warp_and_compose_flows():
    torch.manual_seed(1)
    values = torch.rand(1, 2, 10, 12)
    shift = torch.zeros(1, 2, 10, 12)
    shift[:, 0] = 2.0  # sample two columns to the right
    warped = warp_by_flow(values, shift)
    torch.testing.assert_close(warped[..., :-2], values[..., 2:])
    # Constant flows compose by addition.
    flows = torch.zeros(1, 4, 2, 10, 12)
    flows[:, 0, 0], flows[:, 1, 0], flows[:, 2, 1], flows[:, 3, 1] = 1.0, 2.0, 1.5, -0.5
    composed = flows_between(flows, [0, 2, 4])
    torch.testing.assert_close(composed[0, 0, 0], torch.full((10, 12), 3.0))
    torch.testing.assert_close(composed[0, 1, 1], torch.full((10, 12), 1.0))
    # Non-constant: flow_{0->2}(p) = f0(p) + f1(p + f0(p)), checked at one interior pixel by hand.
    f = torch.zeros(1, 2, 2, 10, 12)
    f[0, 0, 0, 4, 5] = 1.0  # pixel (row 4, col 5) moves one column right ...
    f[0, 1, 1] = torch.arange(12.0)[None, :].expand(10, 12) * 0.1  # ... where frame 1 moves it down by col/10
    out = flows_between(f, [0, 2])
    assert out[0, 0, 0, 4, 5].item() == pytest.approx(1.0)
    assert out[0, 0, 1, 4, 5].item() == pytest.approx(0.6)
    assert out[0, 0, 1, 4, 7].item() == pytest.approx(0.7)


@pytest.mark.parametrize("size", [32, 64])
def test_temporal_discriminator_shapes_and_inputs(size):
    cfg = TemporalDiscriminatorConfig(SMALL_PATCH)
    d = TemporalDiscriminator(cfg)
    assert d.scales[0].nets[0].blocks[0][0].in_channels == 3 * 3 + 2 * 2
    frames, flows = torch.rand(2, 9, 3, size, size), torch.randn(2, 8, 2, size, size)
    inputs = d.temporal_inputs(frames, flows)
    assert len(inputs) == 3
    torch.testing.assert_close(inputs[2][0], frames[:, [0, 4, 8]])
    torch.testing.assert_close(inputs[0][1], flows[:, 6:8])
    for s, (f, fl) in enumerate(inputs):
        assert fl.shape == (2, 2, 2, size, size)
        out = d(s, f, fl)
        assert out[0].score.shape == (2, 1, output_size_patchgan(size, 3), output_size_patchgan(size, 3))
    with pytest.raises(ValueError, match="expects 3 frames"):
        d(0, frames[:, :4], flows[:, :3])


def test_every_discriminator_parameter_gets_a_gradient():
    torch.manual_seed(2)
    size = 32
    real, fake, nmfc = (
        torch.rand(2, 3, size, size),
        torch.rand(2, 3, size, size),
        torch.rand(2, 3, size, size),
    )
    ids = torch.tensor([0, 1])
    d_i = _image_d()
    d_m = MouthDiscriminator(MouthDiscriminatorConfig(SMALL_PATCH, crop_px=16))
    d_v = TemporalDiscriminator(TemporalDiscriminatorConfig(SMALL_PATCH))
    # At initialisation all scores are near 0, inside the hinge margins, so the real (-1 per patch) and
    # fake (+1 per patch) gradients of a final bias cancel exactly. Start from a discriminator that scores
    # about +1.5 (confident "real") so the margins differ, and give w_0 non-zero entries.
    with torch.no_grad():
        d_i.projection.w_0.normal_()
        d_i.projection.c.fill_(1.5)
        for net in (d_m.patchgan, *d_v.scales):
            for patch in net.nets:
                patch.blocks[-1].bias.fill_(1.5)
    centers = torch.full((2, 2), 16.0)
    loss = hinge_discriminator_loss(d_i(real, nmfc, ids), d_i(fake, nmfc, ids))
    loss = loss + hinge_discriminator_loss(d_m(real, nmfc, centers), d_m(fake, nmfc, centers))
    frames_r, frames_f, flows = (
        torch.rand(2, 9, 3, size, size),
        torch.rand(2, 9, 3, size, size),
        torch.randn(2, 8, 2, size, size),
    )
    for s, ((fr, fl), (ff, _)) in enumerate(
        zip(d_v.temporal_inputs(frames_r, flows), d_v.temporal_inputs(frames_f, flows))
    ):
        loss = loss + hinge_discriminator_loss(d_v(s, fr, fl), d_v(s, ff, fl))
    loss.backward()
    for net in (d_i, d_m, d_v):
        missing = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert missing == [], missing
