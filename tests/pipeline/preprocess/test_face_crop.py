"""Crop geometry: frame <-> crop pixel maps against the pixels the crops show, and the pre-shrink of
large downscales."""

from __future__ import annotations

import cv2
import numpy as np

from pipeline.preprocess.face_crop import crop_faces
from pipeline.preprocess.track_parts import FaceTrackConfig, track_from_detections
from tests.pipeline.preprocess.test_track_parts import box, detections


def test_crop_transforms_round_trip_and_match_the_pixels():
    frame_index = np.arange(3)
    dets = detections(frame_index, [box(100.0, 70.0, 60.0)] * 3)
    config = FaceTrackConfig(smooth_sigma_frames=0.0, crop_size=64, crop_scale=2.0, min_face_px=16)
    track = track_from_detections(frame_index, dets, (160, 200), config)
    points = np.array([[[100.0, 70.0], [40.0, 10.0], [159.5, 129.5]]] * 3)
    crop_points = track.frame_to_crop(points)
    # Crop side 120 frame px -> 64 px: the box centre lands on the crop centre (31.5, 31.5).
    np.testing.assert_allclose(crop_points[0, 0], [31.5, 31.5])
    np.testing.assert_allclose(track.crop_to_frame(crop_points), points)
    matrix = track.frame_to_crop_matrix()[0]
    np.testing.assert_allclose(points[0] @ matrix[:, :2].T + matrix[:, 2], crop_points[0])
    np.testing.assert_allclose(track.face_box_crop_px()[0], [16, 16, 48, 48])
    # A bright blob at frame (x, y) = (112, 60) appears in the crop where frame_to_crop says.
    frame = np.zeros((160, 200, 3), np.uint8)
    cv2.circle(frame, (112, 60), 6, (255, 255, 255), -1)
    crops = crop_faces(np.stack([frame] * 3), np.arange(3), track)
    weights = crops[0, ..., 0].astype(float)
    ys, xs = np.mgrid[:64, :64]
    centroid = [(weights * xs).sum() / weights.sum(), (weights * ys).sum() / weights.sum()]
    np.testing.assert_allclose(
        centroid, track.frame_to_crop(np.array([[[112.0, 60.0]]]), [0])[0, 0], atol=0.15
    )


def test_large_downscale_crop_keeps_geometry():
    """The integer pre-shrink of big frames must not shift the crop."""
    frame_index = np.arange(1)
    dets = detections(frame_index, [box(600.0, 400.0, 500.0)])
    track = track_from_detections(frame_index, dets, (900, 1200), FaceTrackConfig(crop_size=64))
    frame = np.zeros((900, 1200, 3), np.uint8)
    cv2.circle(frame, (700, 330), 40, (255, 255, 255), -1)
    crop = crop_faces(frame[None], np.zeros(1, int), track)[0, ..., 0].astype(float)
    ys, xs = np.mgrid[:64, :64]
    centroid = [(crop * xs).sum() / crop.sum(), (crop * ys).sum() / crop.sum()]
    np.testing.assert_allclose(
        centroid, track.frame_to_crop(np.array([[[700.0, 330.0]]]), [0])[0, 0], atol=0.3
    )
