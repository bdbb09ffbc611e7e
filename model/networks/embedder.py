"""Identity embedder E_id of Head2HeadFS (paper section 3.3, Eq. 4; Eq. 9 for fine-tuning).

E_id is FaceNet's InceptionResnetV1 (facenet-pytorch), output size n_f = 512, L2-normalised. It sees
frames with the background removed by the foreground mask, and the identity vector of a person is the
mean of the embeddings of M of their frames:

    h = (1 / M) sum_m E_id(y_m * m_m)                                                  (Eq. 4)

Weights are random unless ``EmbedderConfig.weights_path`` names a facenet-pytorch state dict (e.g. the
VGGFace2 one, ``20180402-114759-vggface2.pt``); nothing is ever downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from facenet_pytorch import InceptionResnetV1
from torch import nn

N_F = 512  # FaceNet embedding size


@dataclass(frozen=True)
class EmbedderConfig:
    """E_id settings."""

    input_px: int = 160  # FaceNet's input size; frames are resized to it (at least 75 px)
    frames_per_identity: int = 8  # M in Eq. (4), frames drawn per identity in meta-learning
    weights_path: str | None = None  # local facenet-pytorch state dict; None = random


def load_facenet_weights(model: InceptionResnetV1, weights_path: str) -> None:
    """Loads a facenet-pytorch state dict into ``model`` (classifier ``logits.*`` entries are dropped).

    Raises FileNotFoundError naming the path when it does not exist.
    """
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(
            f"E_id weights not found at {weights_path}; set embedder.weights_path to a "
            "facenet-pytorch state dict (e.g. 20180402-114759-vggface2.pt) or to null for random weights"
        )
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    model.load_state_dict(state, strict=True)


class IdentityEmbedder(nn.Module):
    """E_id: frames with background removed -> per-frame embeddings -> identity vector h (Eq. 4).

    forward(frames, masks):
        frames (B, M, 3, H, W) float in [-1, 1]; masks (B, M, 1, H, W) float in [0, 1] (foreground = 1)
        -> h (B, n_f) float32, the mean of the M unit-norm frame embeddings.
    In training mode BatchNorm needs more than one frame in the batch (B * M > 1).
    """

    n_f = N_F

    def __init__(self, cfg: EmbedderConfig = EmbedderConfig()):
        super().__init__()
        if cfg.input_px < 75:
            raise ValueError(f"embedder.input_px={cfg.input_px}: InceptionResnetV1 needs at least 75 px")
        self.cfg = cfg
        self.net = InceptionResnetV1(pretrained=None, classify=False)
        if cfg.weights_path is not None:
            load_facenet_weights(self.net, cfg.weights_path)

    def embed_frames(self, frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Per-frame embeddings: frames (N, 3, H, W) in [-1, 1], masks (N, 1, H, W) -> (N, n_f), unit norm."""
        if frames.ndim != 4 or masks.ndim != 4 or masks.shape[1] != 1:
            raise ValueError(
                f"expected frames (N,3,H,W) and masks (N,1,H,W), got {tuple(frames.shape)}, "
                f"{tuple(masks.shape)}"
            )
        # Background removed: masked-out pixels become 0, FaceNet's standardised mid-grey.
        x = frames * masks.to(frames.dtype)
        if x.shape[-2:] != (self.cfg.input_px, self.cfg.input_px):
            x = F.interpolate(
                x, size=(self.cfg.input_px, self.cfg.input_px), mode="bilinear", align_corners=False
            )
        # FaceNet's fixed_image_standardization maps [0, 255] to (v - 127.5) / 128, i.e. [-1, 1] * 127.5/128.
        return self.net(x * (127.5 / 128.0))

    def forward(self, frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        B, M = frames.shape[:2]
        embeddings = self.embed_frames(frames.flatten(0, 1), masks.flatten(0, 1))
        # Eq. (4): h = mean over the M frames of the identity.
        return embeddings.view(B, M, -1).mean(dim=1)


@torch.no_grad()
def identity_vector_all_frames(
    embedder: IdentityEmbedder, frames: torch.Tensor, masks: torch.Tensor, chunk_frames: int = 32
) -> torch.Tensor:
    """h_new of Eq. (9): the mean embedding over all T frames of the target video (eval mode, no grad).

    frames (T, 3, H, W) in [-1, 1], masks (T, 1, H, W) -> h_new (n_f,) float32.
    """
    was_training = embedder.training
    embedder.eval()
    try:
        total = torch.zeros(embedder.n_f, device=frames.device)
        for start in range(0, frames.shape[0], chunk_frames):
            stop = start + chunk_frames
            total += embedder.embed_frames(frames[start:stop], masks[start:stop]).float().sum(dim=0)
        return total / frames.shape[0]
    finally:
        embedder.train(was_training)
