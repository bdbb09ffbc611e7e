"""A face track's crop geometry and the square face crops along it (paper section 3.1, preprocessing).

``FaceTrack`` holds, per kept frame, the smoothed face box and the square crop around it (frame pixels),
with the maps between frame and crop pixels; ``crop_faces`` resamples frames into those crops.
pipeline/preprocess/track_parts.py makes tracks from detections, pipeline/preprocess/face_track.py from
a video.

Pixel convention (model/face3d/camera.py): the centre of pixel (row i, col j) is at (x=j, y=i); an image of
width W spans x in [-0.5, W - 0.5]. A crop of side ``side_px`` (frame pixels) centred at (cx, cy)
spans [cx - side/2, cx + side/2] in x; with s = crop_size / side the crop coordinates are
``u = s * (x - cx) + crop_size / 2 - 0.5`` (and likewise v from y).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class FaceTrack:
    """One face's track over the kept frames of a video and the square crop of each frame.

    frame_index (T,) int64: frame numbers in the video.
    box_center_px (T, 2) float64, box_side_px (T,) float64: smoothed face box (frame pixels).
    crop_center_px (T, 2) float64, crop_side_px (T,) float64: the square crop region (frame pixels).
    detected (T,) bool: frames where MTCNN ran and found the face (others are interpolated).
    crop_size: crop resolution in pixels; frame_hw: (H, W) of the frames.
    """

    frame_index: np.ndarray
    box_center_px: np.ndarray
    box_side_px: np.ndarray
    crop_center_px: np.ndarray
    crop_side_px: np.ndarray
    detected: np.ndarray
    crop_size: int
    frame_hw: tuple[int, int]

    def __len__(self) -> int:
        return len(self.frame_index)

    def crop_scale_px(self) -> np.ndarray:
        """Crop pixels per frame pixel, s (T,) float64."""
        return self.crop_size / self.crop_side_px

    def frame_to_crop_matrix(self) -> np.ndarray:
        """Affine maps (T, 2, 3) float64 from frame pixel coords to crop pixel coords (u = A [x, y, 1])."""
        s = self.crop_scale_px()
        offset = self.crop_size / 2.0 - 0.5 - s[:, None] * self.crop_center_px  # (T, 2)
        matrix = np.zeros((len(self), 2, 3))
        matrix[:, 0, 0] = s
        matrix[:, 1, 1] = s
        matrix[:, :, 2] = offset
        return matrix

    def frame_to_crop(self, points_px: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """points_px (N, K, 2) frame pixels of track rows ``rows`` (N,) (default all) -> (N, K, 2) crop px."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        s = self.crop_scale_px()[rows, None, None]
        return s * (points_px - self.crop_center_px[rows, None]) + self.crop_size / 2.0 - 0.5

    def crop_to_frame(self, points_px: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Inverse of ``frame_to_crop``: crop pixels (N, K, 2) -> frame pixels (N, K, 2)."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        s = self.crop_scale_px()[rows, None, None]
        return (points_px - self.crop_size / 2.0 + 0.5) / s + self.crop_center_px[rows, None]

    def face_box_crop_px(self) -> np.ndarray:
        """The smoothed face box in crop pixels (T, 4) float64 [x0, y0, x1, y1] (edges)."""
        s = self.crop_scale_px()
        center = self.frame_to_crop(self.box_center_px[:, None], None)[:, 0] + 0.5  # edge coordinates
        half = 0.5 * s * self.box_side_px
        return np.concatenate([center - half[:, None], center + half[:, None]], 1)


def crop_faces(frames: np.ndarray, rows: np.ndarray, track: FaceTrack) -> np.ndarray:
    """Square face crops: frames (N, H, W, 3) uint8 of track rows ``rows`` (N,) -> (N, S, S, 3) uint8.

    Areas outside the frame are black. Large downscales (by k >= 2) first shrink the part of the frame
    under the crop by k with k x k block averaging, so the bilinear warp does not alias.
    """
    size = track.crop_size
    matrices = track.frame_to_crop_matrix()[np.asarray(rows)]
    crops = np.empty((len(frames), size, size, 3), np.uint8)
    for i, (frame, matrix) in enumerate(zip(frames, matrices)):
        shrink = int(np.floor(1.0 / matrix[0, 0]))
        if shrink >= 2:
            frame, matrix = _shrink_under_crop(frame, matrix, shrink, size)
        crops[i] = cv2.warpAffine(
            frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
    return crops


def _shrink_under_crop(
    frame: np.ndarray, matrix: np.ndarray, k: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The frame region under a crop, shrunk by the integer factor k (block means), and the crop's affine
    map re-expressed for it. frame (H, W, 3), matrix (2, 3) frame px -> crop px; returns (h, w, 3) and
    (2, 3). Only the region (plus a two-block margin for the bilinear taps) is shrunk, not the frame."""
    height, width = frame.shape[:2]
    s, offset = matrix[0, 0], matrix[:, 2]
    low = (-0.5 - offset) / s  # frame (x, y) of the crop's top-left edge
    high = (size - 0.5 - offset) / s
    x0, y0 = (max(0, int(np.floor(v / k)) - 2) * k for v in low)
    x1, y1 = (min(n // k, int(np.ceil(v / k)) + 2) * k for v, n in zip(high, (width, height)))
    if x1 - x0 < k or y1 - y0 < k:  # the crop lies outside the frame: nothing to shrink
        return frame, matrix
    small = cv2.resize(frame[y0:y1, x0:x1], ((x1 - x0) // k, (y1 - y0) // k), interpolation=cv2.INTER_AREA)
    # Frame pixel x maps to small pixel x' = (x - x0 + 0.5) / k - 0.5; fold that into the affine.
    to_small = np.array([[1 / k, 0, (0.5 - x0) / k - 0.5], [0, 1 / k, (0.5 - y0) / k - 0.5], [0, 0, 1]])
    return small, matrix @ np.linalg.inv(to_small)
