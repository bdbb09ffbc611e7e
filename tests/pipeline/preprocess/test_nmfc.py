"""NMFC images: Eq. (3) colours, identity independence, conventions shared with the fit, mouth boxes, PNG."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model.face3d.camera import make_camera, project
from pipeline.preprocess.nmfc import (
    NmfcConfig,
    NmfcRenderer,
    encode_nmfc,
    mouth_boxes,
    nmfc_to_uint8,
    triangle_colors,
    write_nmfc_png,
    write_nmfc_sequence,
)
from pipeline.preprocess.rasterize import rasterize
from pipeline.schema import decode_image

SIZE = 128


@pytest.fixture(scope="module")
def renderer(ict_model):
    return NmfcRenderer(ict_model, NmfcConfig(image_size=(SIZE, SIZE), mouth_box_px=32, batch_frames=4))


def _random_params(model, n: int, seed: int, identity_scale: float = 1.0):
    """Realistic random parameters: head about 0.8 of the image, turned up to ~30 degrees."""
    rng = np.random.default_rng(seed)
    surface = model.surface().mean
    height_units = surface[:, 1].max() - surface[:, 1].min()
    identity = rng.normal(size=(n, model.n_identity)) * identity_scale
    expression = rng.uniform(0.0, 0.6, size=(n, model.n_expression))
    cameras = []
    for _ in range(n):
        pitch, yaw, roll = rng.uniform(-0.3, 0.3), rng.uniform(-0.5, 0.5), rng.uniform(-0.2, 0.2)
        scale = 0.8 * SIZE / height_units * rng.uniform(0.9, 1.1)
        tx, ty = SIZE / 2 + rng.uniform(-5, 5), SIZE / 2 + rng.uniform(-5, 5)
        cameras.append(make_camera(pitch, yaw, roll, tx, ty, scale))
    as_t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    return as_t(identity), as_t(expression), as_t(cameras)


def test_triangle_colors_are_centre_colours(ict_model):
    surface = ict_model.surface()
    colors = triangle_colors(surface.normalized_mean_coords, surface.faces)
    assert colors.shape == (len(surface.faces), 3) and colors.dtype == torch.float32
    f = 1234
    np.testing.assert_allclose(
        colors[f].numpy(), surface.normalized_mean_coords[surface.faces[f]].mean(0), rtol=1e-6
    )
    assert colors.min() >= 0 and colors.max() <= 1


def test_encode_nmfc_background_and_lookup():
    pix_to_face = torch.tensor([[[-1, 0], [2, 1]]])
    colors = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])
    out = encode_nmfc(pix_to_face, colors)
    assert torch.equal(out.mask, pix_to_face >= 0)
    assert torch.equal(out.image[0, 0, 0], torch.zeros(3))
    assert torch.equal(out.image[0, 1, 0], colors[2])
    assert torch.equal(out.image[0, 0, 1], colors[0])


@pytest.fixture(scope="module")
def hoods(renderer) -> list[set[int]]:
    """Per landmark, the triangles within three rings of its vertex (its surface neighbourhood, about a
    pixel across at 128 px)."""
    faces = renderer.model.faces
    hoods = []
    for vid in renderer.landmarks.tolist():
        ring = np.array([vid])
        for _ in range(3):
            ring = np.unique(faces[np.isin(faces, ring).any(1)])
        hoods.append(set(np.nonzero(np.isin(faces, ring).any(1))[0].tolist()))
    return hoods


def _landmark_check(renderer, hoods, identity, expression, camera):
    """Per landmark seen at its projection: (distance from the projection to the surface point shown at
    its pixel, NMFC colour error there), plus the number of landmarks in front of the surface there."""
    out = renderer.render(identity, expression, camera)
    verts_px = renderer.vertices_px(identity, expression, camera)
    landmarks_px = renderer.landmarks_px(identity, expression, camera)
    ncc = torch.as_tensor(renderer.model.normalized_mean_coords)
    faces = renderer.faces
    config = dataclasses.replace(renderer.config.rasterize, barycentrics=True, zbuf=True)
    frags = rasterize(verts_px, renderer.faces, renderer.config.image_size, config)
    assert torch.equal(frags.pix_to_face, out.pix_to_face)
    results, in_front = [], 0
    for b in range(len(camera)):
        for k, vid in enumerate(renderer.landmarks.tolist()):
            x, y = landmarks_px[b, k].tolist()
            i, j = round(y), round(x)
            f = int(out.pix_to_face[b, i, j])
            if f < 0 or verts_px[b, vid, 2] < frags.zbuf[b, i, j] - 0.5:
                continue  # hidden behind other surface
            in_front += 1
            if f not in hoods[k]:
                continue  # on the silhouette: the pixel centre falls just off the landmark's surface
            # Surface point of the pixel centre through the pixel's triangle and barycentrics.
            point = (frags.bary_coords[b, i, j][:, None] * verts_px[b, faces[f], :2]).sum(0)
            assert torch.allclose(point, torch.tensor([j, i], dtype=point.dtype), atol=1e-3)
            distance = float(torch.linalg.norm(point - landmarks_px[b, k]))
            color_error = float((out.image[b, i, j] - ncc[vid]).abs().max())
            results.append((distance, color_error))
    return results, in_front


def test_landmarks_land_where_the_fit_projects_them(renderer, hoods, ict_model):
    identity, expression, camera = _random_params(ict_model, 4, seed=1)
    results, in_front = _landmark_check(renderer, hoods, identity, expression, camera)
    # Nearly every landmark in front of the surface is seen at its projection on its own neighbourhood
    # (a wrong convention - y flip, half-pixel shift, transposed image - puts other surface there).
    assert in_front >= 4 * 40 and len(results) >= 0.9 * in_front
    distances = np.array([r[0] for r in results])
    color_errors = np.array([r[1] for r in results])
    # The surface point shown there is within half a pixel (per axis) of the projection, and its colour
    # is the landmark vertex's own NMFC (up to the colour spread of its neighbouring triangles).
    assert distances.max() <= 0.5 * np.sqrt(2) + 1e-4
    assert np.median(color_errors) < 0.01 and color_errors.max() < 0.08


def test_landmark_check_detects_a_shifted_or_flipped_image(renderer, hoods, ict_model):
    identity, expression, camera = _random_params(ict_model, 1, seed=2)
    out = renderer.render(identity, expression, camera)
    landmarks_px = renderer.landmarks_px(identity, expression, camera)

    def seen(pix_to_face):
        return np.mean(
            [
                int(pix_to_face[round(y), round(x)]) in hood
                for (x, y), hood in zip(landmarks_px[0].tolist(), hoods)
            ]
        )

    assert seen(out.pix_to_face[0]) > 0.7
    assert seen(out.pix_to_face[0].flip(0)) < 0.2  # y flipped
    assert seen(out.pix_to_face[0].roll(2, 1)) < 0.5  # two pixels off


def test_colours_depend_on_the_mean_face_only(renderer, hoods, ict_model):
    # Eq. (3): with identity != 0 the same surface points (here: the landmark vertices, seen at their
    # projections) keep the same colours, the mean face's NMFC, although the shape moved.
    _, expression, camera = _random_params(ict_model, 2, seed=3)
    zero = torch.zeros(2, ict_model.n_identity)
    other = torch.tensor(np.random.default_rng(4).normal(size=(2, ict_model.n_identity)) * 1.5).float()
    moved = renderer.landmarks_px(other, expression, camera) - renderer.landmarks_px(zero, expression, camera)
    assert moved.norm(dim=-1).mean() > 1.0  # the identity really changes the geometry
    for identity in (zero, other):
        results, _ = _landmark_check(renderer, hoods, identity, expression, camera)
        assert len(results) >= 2 * 40
        color_errors = np.array([r[1] for r in results])
        assert np.median(color_errors) < 0.01 and color_errors.max() < 0.08
    # Whole images: identity changes the silhouette a little, not the colour code.
    a = renderer.render(zero, expression, camera)
    b = renderer.render(other, expression, camera)
    both = a.mask & b.mask
    assert (a.image - b.image).abs()[both].mean() < 0.02


def test_mask_is_the_rendered_surface(renderer, ict_model):
    identity, expression, camera = _random_params(ict_model, 3, seed=5)
    out = renderer.render(identity, expression, camera)
    assert out.image.shape == (3, SIZE, SIZE, 3) and out.mask.shape == (3, SIZE, SIZE)
    assert torch.equal(out.mask, out.pix_to_face >= 0)
    assert (out.image[~out.mask] == 0).all()
    assert (out.image[out.mask].sum(-1) > 0).all()
    coverage = out.mask.float().mean((1, 2))
    assert ((coverage > 0.2) & (coverage < 0.8)).all()


def test_render_batches_give_the_same_images(ict_model):
    identity, expression, camera = _random_params(ict_model, 5, seed=6)
    small = NmfcRenderer(ict_model, NmfcConfig(image_size=(64, 48), batch_frames=2))
    large = NmfcRenderer(ict_model, NmfcConfig(image_size=(64, 48), batch_frames=32))
    a, b = small.render(identity, expression, camera), large.render(identity, expression, camera)
    assert a.image.shape == (5, 64, 48, 3)
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)


def test_uint8_render_is_the_rounded_float_render(renderer, ict_model):
    identity, expression, camera = _random_params(ict_model, 3, seed=7)
    float_out = renderer.render(identity, expression, camera)
    byte_out = renderer.render(identity, expression, camera, uint8=True)
    assert byte_out.image.dtype == torch.uint8 and byte_out.image.shape == float_out.image.shape
    assert byte_out.image.is_contiguous()
    np.testing.assert_array_equal(byte_out.image.numpy(), nmfc_to_uint8(float_out.image))
    assert torch.equal(byte_out.mask, float_out.mask)
    assert (byte_out.image[byte_out.mask].amax(-1) > 0).all() and (byte_out.image[~byte_out.mask] == 0).all()


def test_mouth_boxes_fixed_size_centred_and_clamped():
    landmarks = torch.zeros(3, 68, 2)
    landmarks[0, 48:68] = torch.tensor([50.0, 60.0]) + torch.randn(20, 2)
    landmarks[0, 48:68] -= landmarks[0, 48:68].mean(0) - torch.tensor([50.2, 60.7])
    landmarks[1, 48:68] = torch.tensor([3.0, 2.0])  # near the top-left corner
    landmarks[2, 48:68] = torch.tensor([99.0, 79.0])  # near the bottom-right corner
    boxes = mouth_boxes(landmarks, 32, (80, 100))
    assert boxes.dtype == torch.int32
    assert boxes[0].tolist() == [50 - 16, 61 - 16, 50 + 16, 61 + 16]
    assert boxes[1].tolist() == [0, 0, 32, 32]
    assert boxes[2].tolist() == [100 - 32, 80 - 32, 100, 80]
    assert ((boxes[:, 2] - boxes[:, 0]) == 32).all() and ((boxes[:, 3] - boxes[:, 1]) == 32).all()
    with pytest.raises(ValueError, match="mouth_box_px"):
        mouth_boxes(landmarks, 90, (80, 100))


def test_renderer_mouth_boxes_contain_the_mouth(renderer, ict_model):
    identity, expression, camera = _random_params(ict_model, 2, seed=7)
    boxes = renderer.mouth_boxes(identity, expression, camera)
    mouth = renderer.landmarks_px(identity, expression, camera)[:, 48:68]
    assert ((boxes[:, 2] - boxes[:, 0]) == 32).all()
    assert (mouth[..., 0] >= boxes[:, None, 0]).all() and (mouth[..., 0] < boxes[:, None, 2]).all()
    assert (mouth[..., 1] >= boxes[:, None, 1]).all() and (mouth[..., 1] < boxes[:, None, 3]).all()


def test_landmarks_px_match_camera_projection(renderer, ict_model):
    identity, expression, camera = _random_params(ict_model, 2, seed=8)
    verts = torch.tensor(
        np.stack([ict_model.vertices(i.numpy(), e.numpy()) for i, e in zip(identity, expression)])
    )
    expected = project(verts[:, ict_model.landmarks], camera)[..., :2]
    torch.testing.assert_close(
        renderer.landmarks_px(identity, expression, camera), expected, atol=1e-3, rtol=0
    )


def test_png_round_trip(tmp_path, renderer, ict_model):
    identity, expression, camera = _random_params(ict_model, 1, seed=9)
    image = renderer.render(identity, expression, camera).image[0]
    path = tmp_path / "sub" / "nmfc.png"
    write_nmfc_png(str(path), image)
    decoded = decode_image(path.read_bytes())
    assert decoded.shape == (SIZE, SIZE, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, nmfc_to_uint8(image))
    assert np.abs(decoded / 255.0 - image.numpy()).max() <= 0.5 / 255 + 1e-6
    with pytest.raises(ValueError, match="H, W, 3"):
        write_nmfc_png(str(tmp_path / "bad.png"), np.zeros((4, 4), np.uint8))


def test_config_override_keeps_nmfc_rasterizer_defaults():
    from infra.config import from_dict

    config = from_dict(NmfcConfig, {"rasterize": {"backend": "torch"}})
    assert config.rasterize.backend == "torch"
    assert config.rasterize.cull_backfaces and not config.rasterize.barycentrics


def test_write_sequence(tmp_path):
    images = torch.rand(3, 8, 10, 3)
    uris = write_nmfc_sequence(str(tmp_path / "seq"), images)
    assert [p.rsplit("/", 1)[-1] for p in uris] == ["nmfc_00000.png", "nmfc_00001.png", "nmfc_00002.png"]
    for uri, image in zip(uris, images):
        np.testing.assert_array_equal(decode_image(open(uri, "rb").read()), nmfc_to_uint8(image))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_render_matches_cpu(renderer, ict_model):
    """The preprocessing actors render on CUDA when the node has a GPU: the stored uint8 NMFC images,
    masks and mouth boxes agree with the CPU's (vertex arithmetic may differ in the last bit, so a pixel
    on a triangle edge may take the neighbouring triangle's colour)."""
    identity, expression, camera = _random_params(ict_model, 6, seed=11)
    gpu_renderer = NmfcRenderer(ict_model, renderer.config, device="cuda")
    cpu = renderer.render(identity, expression, camera, uint8=True)
    gpu = gpu_renderer.render(identity, expression, camera, uint8=True)
    assert gpu.image.device.type == "cuda"
    image, mask = gpu.image.cpu(), gpu.mask.cpu()
    assert (mask != cpu.mask).float().mean() < 1e-3
    differ = (image != cpu.image).any(-1)
    assert differ.float().mean() < 1e-3
    if differ.any():  # neighbouring triangles' colours (none differed on an H200)
        assert (image.int() - cpu.image.int()).abs()[differ].max() <= 8
    assert torch.equal(
        gpu_renderer.mouth_boxes(identity, expression, camera).cpu(),
        renderer.mouth_boxes(identity, expression, camera),
    )
