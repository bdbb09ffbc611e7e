"""E_id (FaceNet InceptionResnetV1): Eq. (4) averaging, background removal, gradients, weights loading."""

import pytest
import torch

from model.networks.embedder import EmbedderConfig, IdentityEmbedder, identity_vector_all_frames
from model.networks.losses import embedding_matching_loss

SMALL = EmbedderConfig(input_px=75)  # the smallest input InceptionResnetV1 accepts; keeps CPU tests fast


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    return IdentityEmbedder(SMALL)


def test_identity_vector_is_mean_of_masked_frame_embeddings(embedder):
    torch.manual_seed(1)
    embedder.eval()
    frames = torch.rand(1, 3, 3, 32, 32) * 2 - 1
    masks = torch.zeros(1, 3, 1, 32, 32)
    masks[..., 8:24, 8:24] = 1.0
    with torch.no_grad():
        h = embedder(frames, masks)
        per_frame = embedder.embed_frames(frames[0], masks[0])
        # Background removed: changing only masked-out pixels changes nothing.
        frames_bg = frames.clone()
        frames_bg[..., :8, :] = 1.0
        h_bg = embedder(frames_bg, masks)
        h_fg = embedder(torch.where(masks.bool(), -frames, frames), masks)
    assert h.shape == (1, 512) and h.dtype == torch.float32
    with torch.no_grad():  # any frame size is resized to input_px (64 and 256 px here)
        for size in (64, 256):
            e = embedder(torch.rand(1, 1, 3, size, size), torch.ones(1, 1, 1, size, size))
            assert e.shape == (1, 512) and e.norm().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(per_frame.norm(dim=1), torch.ones(3))  # FaceNet embeddings have unit norm
    torch.testing.assert_close(h[0], per_frame.mean(dim=0), atol=1e-6, rtol=1e-5)  # Eq. (4)
    torch.testing.assert_close(h_bg, h, atol=1e-6, rtol=1e-5)
    assert (h_fg - h).abs().max() > 1e-4
    # Eq. (9): all frames, in chunks; the module's mode does not matter (one treatment of h everywhere).
    embedder.train()
    h_all = identity_vector_all_frames(embedder, frames[0], masks[0], chunk_frames=2)
    assert embedder.training
    torch.testing.assert_close(h_all, h[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["facenet", "small"])
def test_identity_vector_is_the_same_in_training_and_at_fine_tuning(arch):
    """h in train mode, with any batch composition, equals Eq. (9)'s h_new in chunks: fine-tuning starts
    from the h that training used (no dropout, no batch statistics)."""
    torch.manual_seed(3)
    cfg = SMALL if arch == "facenet" else EmbedderConfig(arch="small", n_f=32, input_px=32, small_channels=4)
    net = IdentityEmbedder(cfg).train()
    frames, masks = torch.rand(2, 4, 3, 32, 32) * 2 - 1, torch.ones(2, 4, 1, 32, 32)
    h_batch = net(frames, masks)  # two identities in one training batch
    h_alone = net(frames[:1], masks[:1])  # one identity alone
    h_new = identity_vector_all_frames(net, frames[0], masks[0], chunk_frames=3)
    torch.testing.assert_close(h_alone[0], h_batch[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_new, h_batch[0], atol=1e-5, rtol=1e-5)
    assert not net.net.training and net.training


def test_every_embedder_parameter_gets_a_gradient_from_embedding_matching(embedder):
    torch.manual_seed(2)
    embedder.train()
    embedder.zero_grad()
    w_i = torch.nn.Parameter(torch.randn(2, 512) / 512**0.5)
    h = embedder(torch.rand(2, 2, 3, 32, 32) * 2 - 1, torch.ones(2, 2, 1, 32, 32))
    embedding_matching_loss(h, w_i).backward()  # Eq. (8)
    missing = [n for n, p in embedder.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing
    assert w_i.grad.abs().sum() > 0


def test_input_size_and_missing_weights_errors(tmp_path):
    with pytest.raises(ValueError, match="75"):
        IdentityEmbedder(EmbedderConfig(input_px=64))
    with pytest.raises(ValueError, match="512"):
        IdentityEmbedder(EmbedderConfig(input_px=75, n_f=64))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        IdentityEmbedder(EmbedderConfig(input_px=75, weights_path=str(tmp_path / "nope.pt")))


@pytest.mark.slow
def test_loads_facenet_state_dict_with_classifier(tmp_path, embedder):
    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in embedder.net.state_dict().items()}
    state["logits.weight"] = torch.zeros(10, 512)  # facenet-pytorch checkpoints carry a classifier
    state["logits.bias"] = torch.zeros(10)
    path = tmp_path / "facenet.pt"
    torch.save(state, path)
    loaded = IdentityEmbedder(EmbedderConfig(input_px=75, weights_path=str(path)))
    torch.testing.assert_close(loaded.net.last_linear.weight, embedder.net.last_linear.weight + 1.0)
