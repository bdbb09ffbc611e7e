from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from pipeline.evaluate.distributions import fid_pooled, kid_per_identity
from pipeline.evaluate.identity_features import (
    ARCFACE_TEMPLATE_112PX,
    DLIB_SAME_PERSON_L2,
    IdentityConfig,
    arcface_align,
    central_face_boxes,
    dlib_resnet_path,
    five_points,
    identity_features,
    identity_similarity,
)


@pytest.fixture(scope="module")
def embedded(eval_clips):
    """{variant: {person: IdentityFeatures}} for the real crops and their blurred and shifted copies."""
    return {
        variant: {clip.name: identity_features(getattr(clip, variant)) for clip in eval_clips}
        for variant in ("crops", "blurred", "shifted")
    }


def pairwise_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a[:, None] - b[None], axis=-1)


def test_same_person_is_closer_than_different_people(embedded):
    real = embedded["crops"]
    names = list(real)
    within = max(pairwise_l2(real[n].embeddings, real[n].embeddings).max() for n in names)
    between = min(
        pairwise_l2(real[a].embeddings, real[b].embeddings).min() for a in names for b in names if a != b
    )
    # dlib's own rule holds on these crops: same person under 0.6, different people over it.
    assert within < DLIB_SAME_PERSON_L2 < between, (within, between)
    for a in names:
        own = identity_similarity(real[a], real[a])
        assert own.match_rate == 1.0 and own.count_generated == own.count_reference == 8
        for b in names:
            if b != a:
                other = identity_similarity(real[a], real[b])
                assert other.mean_cosine < own.mean_cosine and other.mean_l2 > own.mean_l2
                assert other.match_rate == 0.0


def test_features_state_their_estimator_and_model_file(embedded):
    import dlib

    features = next(iter(embedded["crops"].values()))
    assert features.embeddings.shape == (8, 128) and features.embeddings.dtype == np.float32
    sha256 = hashlib.sha256(dlib_resnet_path().read_bytes()).hexdigest()
    provenance = features.provenance
    assert provenance["estimator"] == "dlib_resnet_v1" and sha256.startswith(provenance["model_sha256"])
    assert provenance["estimator_id"] == f"dlib_resnet_v1 sha256:{sha256[:16]}" == features.estimator_id
    assert provenance["model_file"] == "dlib_face_recognition_resnet_model_v1.dat"
    assert provenance["runtime"] == f"dlib {dlib.__version__}" and "150 px" in provenance["alignment"]
    assert provenance["count"] == 8 and provenance["dim"] == 128


def test_identity_fid_and_kid_worse_for_blurred_and_shifted_copies(embedded):
    """Identical sets: FID and KID near 0. Blurred copies: clearly worse. Shifted copies: worse, but only
    just: the faces are re-aligned from their landmarks before embedding, so a shift of a few pixels
    moves identity features little (the pixel metrics, test_metrics.py, see it strongly)."""
    real = embedded["crops"]
    same_fid = fid_pooled(real, real)
    same_kid = kid_per_identity(real, real, subsets=10)
    assert abs(same_fid.value) < 1e-6 and same_fid.unstable and same_fid.groups == 3
    assert same_fid.estimator == real[next(iter(real))].estimator_id and (
        same_fid.count_a,
        same_fid.count_b,
    ) == (24, 24)
    assert all(abs(r.mean) < 1e-3 for r in same_kid.values())
    blurred_kid = kid_per_identity(embedded["blurred"], real, subsets=10)
    assert fid_pooled(embedded["blurred"], real).value > 0.05
    assert all(blurred_kid[n].mean > same_kid[n].mean + 1e-3 for n in real)
    shifted_kid = kid_per_identity(embedded["shifted"], real, subsets=10)
    assert fid_pooled(embedded["shifted"], real).value > 1e-5  # 100 x the rounding floor of identical sets
    assert all(shifted_kid[n].mean > same_kid[n].mean for n in real)


def test_given_landmarks_and_boxes_are_used(eval_clips):
    from pipeline.preprocess.landmarks import detect_landmarks

    crops = eval_clips[0].crops[:2]
    boxes = central_face_boxes(2, crops.shape[1])
    np.testing.assert_allclose(boxes[0], [24, 24, 104, 104])  # the track crop's MTCNN box (crop_scale 1.6)
    landmarks = detect_landmarks(crops, boxes, IdentityConfig().landmarks)
    detected = identity_features(crops)
    given = identity_features(crops, boxes, landmarks)
    np.testing.assert_array_equal(given.embeddings, detected.embeddings)
    moved = identity_features(crops, boxes, landmarks + 6.0)  # a misaligned chip changes the embedding
    assert np.abs(moved.embeddings - detected.embeddings).max() > 1e-3


def test_arcface_needs_a_local_file_and_loads_an_exported_program(tmp_path, eval_clips):
    from pipeline.preprocess.landmarks import detect_landmarks

    crops = eval_clips[0].crops[:3]
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        identity_features(crops, config=IdentityConfig(backend="arcface"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        identity_features(
            crops, config=IdentityConfig(backend="arcface", arcface_weights_path=str(tmp_path / "x.pt"))
        )

    class TinyEmbedder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 3, 112, 112) in [-1, 1] -> (N, 12)
            return torch.nn.functional.adaptive_avg_pool2d(x, (2, 2)).flatten(1)

    path = tmp_path / "arcface_stub.pt2"
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        TinyEmbedder(), (torch.zeros(2, 3, 112, 112),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(path))
    features = identity_features(
        crops, config=IdentityConfig(backend="arcface", arcface_weights_path=str(path))
    )
    assert features.embeddings.shape == (3, 12) and features.estimator == "arcface"
    assert hashlib.sha256(path.read_bytes()).hexdigest().startswith(features.model_sha256)
    assert features.runtime.endswith("(torch.export)") and "ArcFace template" in features.alignment
    aligned = arcface_align(
        crops, detect_landmarks(crops, central_face_boxes(3, crops.shape[1]), IdentityConfig().landmarks)
    )
    expected = aligned.astype(np.float32).reshape(3, 2, 56, 2, 56, 3).mean(axis=(2, 4)) / 127.5 - 1.0
    np.testing.assert_allclose(features.embeddings, expected.transpose(0, 3, 1, 2).reshape(3, 12), atol=1e-4)
    with pytest.raises(ValueError, match="different estimators"):
        identity_similarity(features, identity_features(crops))


def test_arcface_alignment_puts_five_points_on_the_template():
    # A synthetic crop whose five points are the template scaled by 1.5, rotated and moved.
    angle = 0.2
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = ARCFACE_TEMPLATE_112PX @ (1.5 * rotation).T + [20.0, 10.0]
    landmarks = np.zeros((1, 68, 2))
    landmarks[0, 36:42], landmarks[0, 42:48] = points[0], points[1]
    landmarks[0, 30], landmarks[0, 48], landmarks[0, 54] = points[2], points[3], points[4]
    np.testing.assert_allclose(five_points(landmarks)[0], points)
    crop = np.zeros((1, 200, 200, 3), np.uint8)
    for x, y in points:
        crop[0, int(round(y)), int(round(x))] = 255
    aligned = arcface_align(crop, landmarks)[0]
    assert aligned.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE_112PX:  # each point lands within a pixel of its template position
        window = aligned[int(round(y)) - 1 : int(round(y)) + 2, int(round(x)) - 1 : int(round(x)) + 2]
        assert window.max() > 0
