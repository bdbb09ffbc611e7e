"""The rasteriser's settings (``RasterizeConfig``) and output (``Fragments``).

They live apart from ``pipeline.preprocess.rasterize`` because both sides need them: the dispatcher
imports the backends, and every backend returns ``Fragments``. Import them from
``pipeline.preprocess.rasterize``, which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

Backend = Literal["auto", "numba", "torch", "pytorch3d"]


@dataclass(frozen=True)
class RasterizeConfig:
    """Rasteriser settings.

    backend: which implementation runs (see ``pipeline.preprocess.rasterize``); ``auto`` picks PyTorch3D
        only for CUDA tensors, where its binned kernel is fast, and numba for CPU tensors.
    cull_backfaces: skip triangles facing away from the camera (less work; the same image for a closed or
        convex-enough surface seen from outside, but a thin open surface can show its back).
    max_candidates: upper bound on (triangle, pixel centre) candidates evaluated at once by the torch
        backend; batches are split by frames to stay under it (memory ~ 60 bytes per candidate).
    barycentrics: compute ``Fragments.bary_coords`` (None when False; NMFC colours need only
        ``pix_to_face``, and skipping them saves a third of the output memory traffic).
    zbuf: return ``Fragments.zbuf`` (None when False).
    index_dtype: dtype of ``Fragments.pix_to_face``; int32 halves the memory traffic of this image-sized
        output (torch's gathers take either).
    """

    backend: Backend = "auto"
    cull_backfaces: bool = False
    max_candidates: int = 4_000_000
    barycentrics: bool = True
    zbuf: bool = True
    index_dtype: Literal["int64", "int32"] = "int64"


class Fragments(NamedTuple):
    """Rasteriser output for B images of H x W pixels.

    pix_to_face (B, H, W) int64 (``RasterizeConfig.index_dtype``): index into ``faces`` of the visible
        triangle, -1 where empty.
    zbuf (B, H, W) float (dtype of the vertices): depth in pixels of the visible surface, -inf where empty;
        None when ``RasterizeConfig.zbuf`` is False.
    bary_coords (B, H, W, 3) float: weights of the triangle's vertices ``faces[f, 0..2]`` at the pixel
        centre (they sum to 1), -1 where empty; None when ``RasterizeConfig.barycentrics`` is False. The
        torch and numba backends return a permuted view of a (3, B, H, W) buffer: use ``.reshape``, not
        ``.view``.
    """

    pix_to_face: torch.Tensor
    zbuf: torch.Tensor | None
    bary_coords: torch.Tensor | None


def empty_fragments(
    batch: int,
    height: int,
    width: int,
    device: torch.device,
    dtype: torch.dtype,
    config: RasterizeConfig = RasterizeConfig(),
) -> Fragments:
    """Fragments of B empty H x W images with the outputs ``config`` asks for; dtype of zbuf and
    bary_coords."""
    shape = (batch, height, width)
    return Fragments(
        torch.full(shape, -1, dtype=getattr(torch, config.index_dtype), device=device),
        torch.full(shape, float("-inf"), dtype=dtype, device=device) if config.zbuf else None,
        torch.full((*shape, 3), -1.0, dtype=dtype, device=device) if config.barycentrics else None,
    )
