"""Optical flow between consecutive real frames, for the temporal discriminator.

Backends behind one function:
- ``dis`` (default, CPU, no weights): OpenCV's DIS optical flow on grey crops, ``dis_preset``
  (``benchmarks/flow.py`` compares the presets by cost and by ``warp_error``).
- ``farneback``: OpenCV's Farneback dense flow (slower, smoother).
- ``raft``: torchvision's RAFT-small with weights from a configured local file (``weights_path``);
  never downloaded. Worth it on a GPU.

Flow ``t`` maps frame t to frame t+1 (``frame_t(p) ~ frame_{t+1}(p + flow_t(p))``), in pixels; the last
frame of a video gets zero flow so every frame has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

_DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


@dataclass(frozen=True)
class FlowConfig:
    backend: Literal["dis", "farneback", "raft"] = "dis"
    # Chosen with benchmarks/flow.py, which prints each preset's cost and warp error (numbers in
    # docs/preprocessing.md): ultrafast keeps nearly all of fast's improvement over no flow at a fraction
    # of its cost.
    dis_preset: Literal["ultrafast", "fast", "medium"] = "ultrafast"
    weights_path: str | None = None  # raft: local torchvision raft_small state dict
    device: str = "cpu"


class RaftFlow:
    """torchvision RAFT-small with weights from a local file."""

    def __init__(self, weights_path: str | None, device: str = "cpu") -> None:
        import torch
        from torchvision.models.optical_flow import raft_small

        if not weights_path:
            raise FileNotFoundError(
                "flow backend 'raft' needs weights: set flow.weights_path to a local copy of torchvision's "
                "raft_small C_T_V2 state dict, or use the offline default flow.backend=dis"
            )
        self.torch = torch
        self.net = raft_small(weights=None)
        self.net.load_state_dict(torch.load(weights_path, map_location="cpu"))
        self.net.eval().to(device)
        self.device = device

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """images (T, H, W, 3) uint8 -> flow (T-1, H, W, 2) float32."""
        torch = self.torch
        with torch.inference_mode():
            x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            flows = self.net(x[:-1], x[1:])[-1]
            return flows.permute(0, 2, 3, 1).cpu().numpy()


def optical_flow(images: np.ndarray, cfg: FlowConfig, raft: RaftFlow | None = None) -> np.ndarray:
    """Dense flow from each frame to the next.

    images (T, H, W, 3) uint8 RGB -> flow (T, H, W, 2) float32 pixels (x, y); flow[T-1] = 0.
    """
    t, h, w = images.shape[:3]
    flow = np.zeros((t, h, w, 2), np.float32)
    if t < 2:
        return flow
    if cfg.backend == "raft":
        flow[:-1] = (raft or RaftFlow(cfg.weights_path, cfg.device))(images)
        return flow
    grey = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) for image in images]
    if cfg.backend == "dis":
        dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[cfg.dis_preset])
        for k in range(t - 1):
            flow[k] = dis.calc(grey[k], grey[k + 1], None)
    else:
        for k in range(t - 1):
            flow[k] = cv2.calcOpticalFlowFarneback(grey[k], grey[k + 1], None, 0.5, 3, 15, 3, 5, 1.2, 0)
    return flow


def warp_error(images: np.ndarray, flow: np.ndarray) -> float:
    """How well the flow explains the motion: mean absolute grey-level difference between each frame and
    its successor sampled along the flow (``frame_t(p) ~ frame_{t+1}(p + flow_t(p))``, bilinear).

    images (T, H, W, 3) uint8 RGB, flow (T, H, W, 2) from ``optical_flow`` -> float (0 is a perfect fit).
    """
    if len(images) < 2:
        return 0.0
    grey = [cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) for image in images]
    h, w = grey[0].shape
    x, y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    errors = []
    for k in range(len(images) - 1):
        warped = cv2.remap(
            grey[k + 1],
            x + flow[k, ..., 0],
            y + flow[k, ..., 1],
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        errors.append(np.abs(warped - grey[k]).mean())
    return float(np.mean(errors))


def flow_to_rgb(flow: np.ndarray, max_px: float | None = None) -> np.ndarray:
    """Colour-wheel picture of a flow field (hue = direction, value = magnitude).

    flow (H, W, 2) float -> (H, W, 3) uint8 RGB.
    """
    magnitude, angle = cv2.cartToPolar(flow[..., 0], flow[..., 1])
    scale = max_px or max(float(magnitude.max()), 1e-6)
    hsv = np.zeros((*flow.shape[:2], 3), np.uint8)
    hsv[..., 0] = (angle * 90 / np.pi).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(magnitude / scale * 255, 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
