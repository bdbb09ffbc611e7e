"""NMFC conditioning images (paper section 3.2, Eq. 3), visibility masks and mouth boxes.

The Normalised Mean Face Coordinate (NMFC) image colours every pixel covered by the head with the
normalised mean-face x-y-z (each in [0, 1]) of the surface point seen there, and leaves the background
at 0. The colour code is the 3DMM's *mean* face, so the same surface point has the same colour whatever
the identity or expression: that is what lets reenactment swap identities (Eq. 3).

We colour a pixel with the NMFC of the centre of its visible triangle (the mean of its three corner
colours), so each triangle is one flat colour and the image needs only ``pix_to_face`` from the
rasteriser. Geometry follows ``model.face3d.camera`` exactly: vertices are projected with
``model.face3d.camera.project`` and rasterised at pixel centres (x, y) = (column, row), so a landmark vertex
lands in the NMFC image exactly where the fit's projection puts it, and NMFC, crop and landmarks overlay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import numpy as np
import torch

from infra import storage
from model.face3d.camera import make_camera, project
from model.face3d.morphable_model import MorphableModel
from pipeline.preprocess.rasterize import Fragments, RasterizeConfig, rasterize

# Landmarks 48-67 of the 68-point iBUG markup outline the mouth (outer 48-59, inner 60-67).
MOUTH_LANDMARKS = slice(48, 68)


@dataclass(frozen=True)
class NmfcRasterizeConfig(RasterizeConfig):
    """``RasterizeConfig`` with the NMFC defaults (its own class, so that a partial override such as
    ``--set preprocess.render.rasterize.backend=torch`` keeps them).

    Back faces are culled: the 3DMM surface is open at the eyes, the mouth and the neck, and without
    culling those holes would show the inside of the back of the head (colours of the wrong surface
    points); culled, they stay background. It also halves the rasteriser's work. The colours need only
    ``pix_to_face``: no barycentrics, no depth, and int32 face ids.
    """

    cull_backfaces: bool = True
    barycentrics: bool = False
    zbuf: bool = False
    index_dtype: Literal["int64", "int32"] = "int32"


@dataclass(frozen=True)
class NmfcConfig:
    """NMFC rendering settings.

    image_size: (H, W) of the NMFC images in pixels (the face crop's size).
    mouth_box_px: side of the square mouth crop for the mouth discriminator, pixels.
    batch_frames: frames rasterised per call (bounds memory; larger is faster per frame).
    rasterize: rasteriser settings (see ``NmfcRasterizeConfig``).
    """

    image_size: tuple[int, int] = (256, 256)
    mouth_box_px: int = 72  # Head2Head's mouth ROI at 256 px; equals the mouth discriminator's crop_px
    batch_frames: int = 32
    rasterize: NmfcRasterizeConfig = field(default_factory=NmfcRasterizeConfig)


class NmfcImages(NamedTuple):
    """NMFC images of B frames.

    image (B, H, W, 3) float32 in [0, 1]: NMFC colour of the visible triangle, 0 on the background; or
        uint8 (the same colours times 255, rounded: ``nmfc_to_uint8``) when rendered with ``uint8=True``.
    mask (B, H, W) bool: pixels covered by the head surface (the visibility mask).
    pix_to_face (B, H, W) int32 (the renderer's ``rasterize.index_dtype``): visible triangle per pixel, -1
        on the background.
    """

    image: torch.Tensor
    mask: torch.Tensor
    pix_to_face: torch.Tensor


def triangle_colors(normalized_mean_coords: np.ndarray | torch.Tensor, faces: np.ndarray) -> torch.Tensor:
    """Eq. (3) colour of each triangle: the NMFC of its centre, the mean of its corners' NMFCs.

    normalized_mean_coords (S, 3) in [0, 1] (``MorphableModel.normalized_mean_coords``), faces (F, 3)
    -> (F, 3) float32 in [0, 1].
    """
    ncc = torch.as_tensor(np.asarray(normalized_mean_coords), dtype=torch.float64)
    corners = ncc[torch.as_tensor(np.asarray(faces), dtype=torch.int64)]  # (F, 3, 3)
    return corners.mean(1).float()


def encode_nmfc(pix_to_face: torch.Tensor, colors: torch.Tensor, uint8: bool = False) -> NmfcImages:
    """NMFC images from the rasteriser's visible faces.

    pix_to_face (B, H, W) int32 or int64, -1 where empty; colors (F, 3) float32 per-triangle NMFC colours.
    uint8: return the image as uint8 (``nmfc_to_uint8`` of the float image, bit for bit), the stored format.
    """
    # Row 0 of the table is the background colour, so face f is row f + 1 and -1 lands on row 0.
    table = torch.cat([torch.zeros(1, 3, dtype=colors.dtype, device=colors.device), colors])
    index = pix_to_face + 1
    if uint8:  # a row gather of 3 bytes per pixel: 4x less memory traffic than float32 colours
        table = torch.from_numpy(nmfc_to_uint8(table)).to(pix_to_face.device)
        image = table.index_select(0, index.view(-1)).view(*pix_to_face.shape, 3)
    else:
        image = torch.nn.functional.embedding(index, table.to(pix_to_face.device))  # a fast row gather
    return NmfcImages(image, pix_to_face >= 0, pix_to_face)


def mouth_boxes(landmarks_px: torch.Tensor, box_px: int, image_size: tuple[int, int]) -> torch.Tensor:
    """Square mouth crops around the mean of the mouth landmarks 48-67, shifted to lie inside the image.

    landmarks_px (B, 68, 2) (x, y) pixels (``model.face3d.camera`` convention); box_px side in pixels;
    image_size (H, W) -> (B, 4) int32 (x0, y0, x1, y1), x1 = x0 + box_px exclusive. The box is placed
    as ``model.networks.discriminators.crop_regions`` cuts it: left = round(cx) - box_px // 2, clamped.
    """
    height, width = image_size
    if not 0 < box_px <= min(height, width):
        raise ValueError(
            f"mouth_box_px={box_px} must be in 1..{min(height, width)} for a {height}x{width} image"
        )
    centre = torch.round(landmarks_px[:, MOUTH_LANDMARKS].mean(1)).long()  # (B, 2)
    left = (centre[:, 0] - box_px // 2).clamp(0, width - box_px)
    top = (centre[:, 1] - box_px // 2).clamp(0, height - box_px)
    return torch.stack([left, top, left + box_px, top + box_px], -1).int()


class NmfcRenderer:
    """Renders NMFC images, visibility masks, projected landmarks and mouth boxes from 3DMM parameters.

    Works on the model's visible surface (``MorphableModel.surface()``), batched over frames, on the
    device of ``device`` (on CPU the numba rasteriser, on CUDA the torch one or PyTorch3D; see
    ``pipeline.preprocess.rasterize``).
    """

    def __init__(
        self, model: MorphableModel, config: NmfcConfig = NmfcConfig(), device: torch.device | str = "cpu"
    ) -> None:
        self.config = config
        self.model = model.surface()
        self.device = torch.device(device)
        self.torch_model = self.model.torch_model(self.device)
        self.faces = torch.as_tensor(self.model.faces.astype(np.int64), device=self.device)
        self.colors = triangle_colors(self.model.normalized_mean_coords, self.model.faces).to(self.device)
        self.landmarks = self.torch_model.landmarks
        # One frame of the mean face now: loads the compiled rasteriser (numba's cached machine code)
        # here, at start-up, rather than inside the first video's render.
        camera = torch.as_tensor(make_camera(), dtype=torch.float32)[None]
        self.render(torch.zeros(1, model.n_identity), torch.zeros(1, model.n_expression), camera)

    def _as_inputs(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Coefficients and cameras as float32 tensors on the renderer's device."""
        return tuple(torch.as_tensor(t, dtype=torch.float32, device=self.device) for t in tensors)

    def vertices_px(
        self, identity: torch.Tensor, expression: torch.Tensor, camera: torch.Tensor
    ) -> torch.Tensor:
        """identity (B, N_id), expression (B, N_exp), camera (B, 7) -> surface verts_px (B, S, 3) float32."""
        identity, expression, camera = self._as_inputs(identity, expression, camera)
        return project(self.torch_model(identity, expression), camera)

    def landmarks_px(
        self, identity: torch.Tensor, expression: torch.Tensor, camera: torch.Tensor
    ) -> torch.Tensor:
        """Projected 68 landmark vertices: (B, N_id), (B, N_exp), (B, 7) -> (B, 68, 2) (x, y) pixels."""
        identity, expression, camera = self._as_inputs(identity, expression, camera)
        verts = self.torch_model(identity, expression, vertex_ids=self.landmarks)
        return project(verts, camera)[..., :2]

    def rasterize(self, verts_px: torch.Tensor) -> Fragments:
        """verts_px (B, S, 3) -> Fragments of the surface at ``config.image_size``."""
        return rasterize(verts_px, self.faces, self.config.image_size, self.config.rasterize)

    def render(
        self, identity: torch.Tensor, expression: torch.Tensor, camera: torch.Tensor, uint8: bool = False
    ) -> NmfcImages:
        """NMFC images of B frames: identity (B, N_id), expression (B, N_exp), camera (B, 7) -> NmfcImages.

        Frames are rasterised ``config.batch_frames`` at a time. uint8: images as uint8 (the stored
        format, ``nmfc_to_uint8`` of the float images) instead of float32.
        """
        height, width = self.config.image_size
        index_dtype = getattr(torch, self.config.rasterize.index_dtype)
        pix_to_face = torch.empty((len(camera), height, width), dtype=index_dtype, device=self.device)
        step = max(1, self.config.batch_frames)
        for first in range(0, len(camera), step):
            frames = slice(first, first + step)
            verts_px = self.vertices_px(identity[frames], expression[frames], camera[frames])
            pix_to_face[frames] = self.rasterize(verts_px).pix_to_face
        # One colour lookup for all frames: no per-batch images to concatenate (a copy of every output).
        return encode_nmfc(pix_to_face, self.colors, uint8)

    def mouth_boxes(
        self, identity: torch.Tensor, expression: torch.Tensor, camera: torch.Tensor
    ) -> torch.Tensor:
        """Mouth crop per frame from the projected mouth landmarks: -> (B, 4) int32 (x0, y0, x1, y1)."""
        return mouth_boxes(
            self.landmarks_px(identity, expression, camera), self.config.mouth_box_px, self.config.image_size
        )


def nmfc_to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """NMFC image(s) (..., H, W, 3) float in [0, 1] -> uint8 (..., H, W, 3), rounded to nearest."""
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    return np.clip(np.rint(array.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def write_nmfc_png(uri: str, image: torch.Tensor | np.ndarray) -> None:
    """Writes one NMFC image (H, W, 3), float in [0, 1] or uint8, as a lossless RGB PNG (local or s3://)."""
    from pipeline.schema import encode_png

    array = image if isinstance(image, np.ndarray) and image.dtype == np.uint8 else nmfc_to_uint8(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"an NMFC image is (H, W, 3), got {array.shape}")
    storage.write_bytes(uri, encode_png(array))


def write_nmfc_sequence(directory_uri: str, images: torch.Tensor | np.ndarray) -> list[str]:
    """Writes NMFC frames (T, H, W, 3) as ``directory_uri/nmfc_00000.png``, ... for inspection.

    Returns the written URIs in frame order.
    """
    uris = []
    for t, image in enumerate(images):
        uri = storage.join(directory_uri, f"nmfc_{t:05d}.png")
        write_nmfc_png(uri, image)
        uris.append(uri)
    return uris
