"""Identity embedder E_id of Head2HeadFS (paper section 3.3, Eq. 4; Eq. 9 for fine-tuning).

E_id maps a frame with its background removed (by the foreground mask) to a unit-norm embedding of size
n_f; the identity vector of a person is the mean of the embeddings of M of their frames:

    h = (1 / M) sum_m E_id(y_m * m_m)                                                  (Eq. 4)

Two architectures (``EmbedderConfig.arch``):
- ``facenet``: FaceNet's InceptionResnetV1 (facenet-pytorch), n_f = 512, the paper's choice. Its weights
  are random unless ``weights_path`` names a local facenet-pytorch state dict (e.g. the VGGFace2 one,
  ``20180402-114759-vggface2.pt``); nothing is ever downloaded.
- ``small``: a few strided convolutions, global pooling and a linear layer, for CPU-sized runs where
  InceptionResnetV1 (23M parameters at >= 75 px) would dominate the step.

Modes: E_id always runs with frozen batch statistics and without dropout (``train()`` leaves the network
in eval mode; its parameters still learn). h is then a deterministic function of the frames: the same in
meta-learning, at the fine-tuning conversion (Eq. 9) and in reenactment, whatever the batch or chunk
composition. FaceNet's BatchNorm statistics come from its pretraining (or stay at their initial values
with random weights); ``small`` has no normalisation or dropout to begin with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

FACENET_N_F = 512  # FaceNet embedding size
FACENET_MIN_PX = 75  # InceptionResnetV1's smallest input


@dataclass(frozen=True)
class EmbedderConfig:
    """E_id settings.

    arch: ``facenet`` (the paper's, n_f must be 512) or ``small`` (CPU-sized).
    n_f: embedding size (the identity vector h; must equal the generator's and D^I's n_f).
    input_px: frames are resized to this square size (FaceNet's is 160; at least 75 px for ``facenet``).
    small_channels: ``small``'s first layer width (doubling per layer, four layers).
    weights_path: ``facenet``'s pretrained weights, a local facenet-pytorch state dict; None = random.
    """

    arch: Literal["facenet", "small"] = "facenet"
    n_f: int = FACENET_N_F
    input_px: int = 160
    small_channels: int = 32
    weights_path: str | None = None


def load_facenet_weights(model: nn.Module, weights_path: str) -> None:
    """Loads a facenet-pytorch state dict (a local file) into an InceptionResnetV1; the classifier's
    ``logits.*`` entries are dropped. Raises FileNotFoundError naming the path when it does not exist."""
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(
            f"E_id weights not found at {weights_path}; set embedder.weights_path to a facenet-pytorch "
            "state dict (e.g. 20180402-114759-vggface2.pt) or to null for random weights"
        )
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    model.load_state_dict(state, strict=True)


class SmallEmbedderNet(nn.Module):
    """Four stride-2 3x3 convolutions (LeakyReLU), global average pooling, a linear layer, L2 norm.

    x (N, 3, H, W) -> (N, n_f) unit norm.
    """

    def __init__(self, n_f: int, channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for k in range(4):
            c_out = channels * 2**k
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.linear = nn.Linear(c_in, n_f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(self.features(x).mean(dim=(2, 3))), dim=1)


class IdentityEmbedder(nn.Module):
    """E_id: frames with background removed -> per-frame embeddings -> identity vector h (Eq. 4).

    forward(frames, masks):
        frames (B, M, 3, H, W) float in [-1, 1]; masks (B, M, 1, H, W) float in [0, 1] (foreground = 1)
        -> h (B, n_f) float32, the mean of the M unit-norm frame embeddings.
    """

    def __init__(self, cfg: EmbedderConfig = EmbedderConfig()):
        super().__init__()
        self.cfg = cfg
        self.n_f = cfg.n_f
        if cfg.arch == "facenet":
            from facenet_pytorch import InceptionResnetV1

            if cfg.input_px < FACENET_MIN_PX:
                raise ValueError(
                    f"embedder.input_px={cfg.input_px}: InceptionResnetV1 needs at least {FACENET_MIN_PX} px"
                )
            if cfg.n_f != FACENET_N_F:
                raise ValueError(f"embedder.n_f={cfg.n_f}: FaceNet embeddings have {FACENET_N_F} entries")
            self.net = InceptionResnetV1(pretrained=None, classify=False)
            if cfg.weights_path is not None:
                load_facenet_weights(self.net, cfg.weights_path)
        elif cfg.arch == "small":
            if cfg.weights_path is not None:
                raise ValueError("embedder.weights_path is for arch=facenet; the small one starts random")
            self.net = SmallEmbedderNet(cfg.n_f, cfg.small_channels)
        else:
            raise ValueError(f"embedder.arch={cfg.arch!r}: expected 'facenet' or 'small'")
        self.net.eval()

    def train(self, mode: bool = True) -> IdentityEmbedder:
        """Sets the module's flag but keeps the network in eval mode (see the module docstring)."""
        super().train(mode)
        self.net.eval()
        return self

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
        return embeddings.view(B, M, -1).float().mean(dim=1)


@torch.no_grad()
def identity_vector_all_frames(
    embedder: IdentityEmbedder, frames: torch.Tensor, masks: torch.Tensor, chunk_frames: int = 32
) -> torch.Tensor:
    """h_new of Eq. (9): the mean embedding over all T frames of the target video (no grad).

    frames (T, 3, H, W) in [-1, 1], masks (T, 1, H, W) -> h_new (n_f,) float32. The same h as
    ``embedder`` computes in training for the same frames (the network is always in eval mode).
    """
    total = torch.zeros(embedder.n_f, device=frames.device)
    for start in range(0, frames.shape[0], chunk_frames):
        stop = start + chunk_frames
        total += embedder.embed_frames(frames[start:stop], masks[start:stop]).float().sum(dim=0)
    return total / frames.shape[0]
