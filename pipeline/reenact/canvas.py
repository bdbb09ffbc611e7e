"""The person's own video as the canvas: reenacted faces blended back into its full-resolution frames.

A person model knows the videos it was fine-tuned on (``PersonStatistics.sources``). The first of them that
can still be read (most frames first) is reconstructed with the source's settings (track, landmarks,
3DMM fit), and output frame t is drawn on canvas frame ``ping_pong_indices(t)``: the canvas plays forwards
and backwards when the source is longer. Its cameras stand in for the person's training cameras, so that
in ``expression`` mode the synthesised head sits exactly where the canvas frame has it.

Per frame the generator's foreground is composited over a background crop (the canvas frame's own crop in
``expression`` mode; in ``full`` mode, where the head moves away from where the canvas has it, the person's
mean background, so the canvas's own head does not show through), the crop is warped back into the frame
with the inverse of the track's crop transform, and blended in with a square whose border fades over
``feather`` of the crop's side.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from infra import storage
from model.face3d.morphable_model import MorphableModel
from pipeline.finetune.person_model import PersonModel
from pipeline.preprocess.face_crop import FaceTrack
from pipeline.preprocess.reconstruct import ReconstructConfig, reconstruct_video

_REPLICATE, _CONSTANT = cv2.BORDER_REPLICATE, cv2.BORDER_CONSTANT


@dataclass(frozen=True, eq=False)
class TargetCanvas:
    """A reconstructed video of the person: path (local), track (T rows), cameras (T, 7) float64 in the
    track's crop pixels (``track.crop_size``)."""

    path: str
    source: str
    track: FaceTrack
    cameras: np.ndarray

    def __len__(self) -> int:
        return len(self.track)

    def frames(self, rows: np.ndarray) -> np.ndarray:
        """The full-resolution frames of track rows (N,) -> (N, H, W, 3) uint8 RGB."""
        import decord

        reader = decord.VideoReader(self.path)
        return reader.get_batch(self.track.frame_index[rows].tolist()).asnumpy()

    def crop_matrix(self, row: int, size: int) -> np.ndarray:
        """Frame pixels -> pixels of a ``size`` px crop of track row ``row``: an affine map (2, 3)."""
        ratio = size / self.track.crop_size
        matrix = self.track.frame_to_crop_matrix()[row] * ratio
        matrix[:, 2] += 0.5 * ratio - 0.5  # pixel centres: u_size = (u_S + 0.5) * ratio - 0.5
        return matrix

    def crop(self, frame: np.ndarray, row: int, size: int) -> np.ndarray:
        """The track's square crop of a frame (H, W, 3) at ``size`` px -> (size, size, 3) uint8."""
        matrix = self.crop_matrix(row, size)
        return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=_REPLICATE)


def canvas_source(person: PersonModel) -> str | None:
    """The person's video to draw on: the readable source with the most frames, or None."""
    for _, source, _, _ in sorted(person.statistics.sources, key=lambda s: -s[3]):
        if source and storage.exists(source):
            return source
    return None


def load_canvas(path: str, source: str, model: MorphableModel, config: ReconstructConfig) -> TargetCanvas:
    """Reconstructs the canvas video at the local ``path`` (``source``: its URI, for messages)."""
    recon = reconstruct_video(path, model, config)
    track = recon.landmarks.track
    cameras = np.asarray(recon.fit.camera, np.float64)
    return TargetCanvas(path, source, track, cameras)


def paste(frame: np.ndarray, crop: np.ndarray, frame_to_crop: np.ndarray, feather: float) -> np.ndarray:
    """Blends a crop back into its frame.

    frame (H, W, 3) uint8; crop (P, P, 3) uint8; frame_to_crop (2, 3): frame pixels -> crop pixels;
    feather: the width of the fading border as a share of P -> (H, W, 3) uint8.
    """
    height, width = frame.shape[:2]
    size = crop.shape[0]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(crop, frame_to_crop, (width, height), flags=flags, borderMode=_REPLICATE)
    edge = np.minimum(np.arange(size) + 0.5, size - 0.5 - np.arange(size)) / max(feather * size, 1e-6)
    ramp = np.clip(edge, 0.0, 1.0).astype(np.float32)
    square = np.minimum(ramp[:, None], ramp[None, :])
    alpha = cv2.warpAffine(square, frame_to_crop, (width, height), flags=flags, borderMode=_CONSTANT)
    alpha = alpha[..., None]
    blended = alpha * warped.astype(np.float32) + (1.0 - alpha) * frame.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
