"""Frame-by-frame synthesis with a person's generator, as a stream (paper Eq. 5 at test time).

``StreamingSynthesizer`` keeps the state that Eq. (5) carries from frame to frame, the last n - 1 NMFC
frames of the window and the last n - 1 generated frames, so a video synthesised in chunks, or a stream fed
one frame at a time, gives exactly the frames of one uninterrupted pass (no seam at chunk borders). Its
first window repeats the first NMFC frame and its first previous frames are zeros, as in training
(``model.networks.generator.generate_sequence``).
"""

from __future__ import annotations

import contextlib

import torch

from model.networks.generator import Generator


class StreamingSynthesizer:
    """Feeds NMFC frames through a fine-tuned generator (h None) one after another.

    step(nmfc (3, H, W) float in [-1, 1]) -> (frame (3, H, W) in [-1, 1], foreground mask (1, H, W) in
    [0, 1]), float32 on the generator's device. ``autocast_dtype`` (e.g. bfloat16) applies on CUDA only.
    """

    def __init__(self, generator: Generator, autocast_dtype: torch.dtype | None = None) -> None:
        self.generator = generator.eval()
        self.device = next(generator.parameters()).device
        self.autocast_dtype = autocast_dtype if self.device.type == "cuda" else None
        self.reset()

    def reset(self) -> None:
        """Starts a new sequence."""
        self._nmfc: list[torch.Tensor] = []
        self._prev: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, nmfc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.generator.cfg
        nmfc = nmfc.to(self.device, torch.float32)
        if not self._nmfc:  # the first window repeats the first frame (generate_sequence's padding)
            self._nmfc = [nmfc] * (cfg.n_frames - 1)
            self._prev = nmfc.new_zeros(cfg.n_frames - 1, cfg.image_channels, *nmfc.shape[-2:])
        window = torch.stack([*self._nmfc, nmfc])[None]  # (1, n, 3, H, W), oldest first
        autocast = torch.autocast("cuda", dtype=self.autocast_dtype) if self.autocast_dtype else None
        with autocast or contextlib.nullcontext():
            out = self.generator(window, self._prev[None], None)
        frame, mask = out.frame[0].float(), out.mask[0].float()
        self._nmfc = [*self._nmfc[1:], nmfc]
        self._prev = torch.cat([self._prev[1:], frame[None]])
        return frame, mask

    def run(self, nmfc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Continues the sequence over nmfc (T, 3, H, W): -> frames (T, 3, H, W), masks (T, 1, H, W)."""
        outputs = [self.step(x) for x in nmfc]
        return torch.stack([f for f, _ in outputs]), torch.stack([m for _, m in outputs])
