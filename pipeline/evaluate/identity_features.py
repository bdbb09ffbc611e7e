"""Face-identity embeddings of face crops, for the identity similarity and the FID / KID of the evaluation.

Two estimators behind ``identity_features`` (``IdentityConfig.backend``); every result names its
estimator and model file hash (``IdentityFeatures.provenance``):

- ``dlib_resnet_v1`` (the offline default): dlib's face-recognition ResNet, the model file
  ``dlib_face_recognition_resnet_model_v1.dat`` of the face_recognition_models package (found by its
  location; that package is never imported: it imports pkg_resources), run by the dlib package. 128-D
  embeddings; dlib calls two faces the same person below an L2 distance of 0.6 (``DLIB_SAME_PERSON_L2``,
  dlib's ``dnn_face_recognition_ex.cpp``).
  Alignment: the project's 68 landmarks (``pipeline.preprocess.landmarks.detect_landmarks``, dlib's
  68-point predictor) on each crop inside its face box, rounded to whole pixels (dlib's
  ``full_object_detection`` holds integer points), then dlib's own chip extraction inside
  ``compute_face_descriptor``: ``get_face_chip_details`` maps landmarks 17-67 (no jaw) by a similarity
  transform onto dlib's mean face in a 150 px chip with 0.25 padding, the alignment the network was
  trained with.
- ``arcface``: an ArcFace network (the paper's choice) read from ``arcface_weights_path``: a
  ``torch.export`` program (``.pt2``, e.g. insightface's arcface_torch backbone exported with a dynamic
  batch dimension), a TorchScript file (``.pt``/``.pth``/``.ts``) or an ONNX file (``.onnx``, e.g.
  insightface's ``w600k_r50.onnx``; needs onnxruntime). Never downloaded: a missing file raises
  FileNotFoundError saying what to put where.
  Alignment: five points from the 68 landmarks (eye centres, nose tip, mouth corners) mapped by a
  least-squares similarity onto insightface's 112 px ArcFace template (``ARCFACE_TEMPLATE_112PX``), input
  (RGB / 127.5 - 1), NCHW.

Face boxes: crops of the preprocessing's face track (``track_and_crop``, shard ``rgb``, generated frames in
the same crop) hold the smoothed MTCNN box as the central square of side ``crop / crop_scale``
(``FaceTrackConfig``: 1.6, no vertical shift); ``central_face_boxes`` gives it when no box is passed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.preprocess.landmarks import (
    LandmarkConfig,
    backend_description,
    detect_landmarks,
    dlib_model_file,
)
from pipeline.preprocess.track_parts import FaceTrackConfig

DLIB_RESNET = "dlib_resnet_v1"
ARCFACE = "arcface"
DLIB_RESNET_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_SAME_PERSON_L2 = 0.6  # dlib: L2 below it = same person (dlib's dnn_face_recognition_ex.cpp)
DLIB_CHIP_PX = 150  # dlib's face-recognition input chip (input_rgb_image_sized<150>)
ARCFACE_INPUT_PX = 112
# insightface's ``arcface_dst`` (python-package/insightface/utils/face_align.py): where the subject's right
# eye, left eye, nose tip, right and left mouth corners sit in a 112 px ArcFace input (image left first).
ARCFACE_TEMPLATE_112PX = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
SHA256_PREFIX = 16  # hex characters of the model file's sha256 kept in provenance


@dataclasses.dataclass(frozen=True)
class IdentityConfig:
    """Identity-embedding settings.

    backend: "dlib_resnet_v1" (offline default) or "arcface" (needs arcface_weights_path).
    dlib_model_path: dlib_face_recognition_resnet_model_v1.dat; None finds face_recognition_models' copy.
    arcface_weights_path: ArcFace torch.export (.pt2), TorchScript (.pt/.pth/.ts) or ONNX (.onnx) file;
        never downloaded.
    face_box_fraction: face box side / crop side when no boxes are given (1 / FaceTrackConfig.crop_scale).
    num_jitters: dlib's test-time augmentation (0: none; k > 1: mean over k jittered chips, k times slower).
    padding: dlib's chip padding around the landmarks' face (0.25, what the network was trained with).
    landmarks: the 68-point landmark settings (alignment of both backends).
    device: torch device for a TorchScript ArcFace.
    batch_size: crops per network call.
    """

    backend: Literal["dlib_resnet_v1", "arcface"] = DLIB_RESNET
    dlib_model_path: str | None = None
    arcface_weights_path: str | None = None
    face_box_fraction: float = 1.0 / FaceTrackConfig().crop_scale
    num_jitters: int = 0
    padding: float = 0.25
    # dlib's own 68 points: its face-recognition network was trained on crops aligned by them.
    landmarks: LandmarkConfig = LandmarkConfig(backend="dlib")
    device: str = "cpu"
    batch_size: int = 32


@dataclasses.dataclass(frozen=True)
class IdentityFeatures:
    """Embeddings of N face crops with what made them.

    embeddings (N, D) float32: dlib 128-D (L2 < 0.6 = same person), ArcFace usually 512-D (compare by
    cosine); estimator: "dlib_resnet_v1" or "arcface"; model_file: the weights file's name;
    model_sha256: the first SHA256_PREFIX hex characters of its sha256; runtime: e.g. "dlib 20.0.1";
    alignment: how the faces were aligned (a sentence for the tables).
    """

    embeddings: np.ndarray
    estimator: str
    model_file: str
    model_sha256: str
    runtime: str
    alignment: str

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def estimator_id(self) -> str:
        """The estimator and its weights in one string, e.g. "dlib_resnet_v1 sha256:55533b28a95800a5"."""
        return f"{self.estimator} sha256:{self.model_sha256}"

    @property
    def provenance(self) -> dict[str, Any]:
        """What a table needs to say about these features (JSON-ready)."""
        return {
            "estimator": self.estimator,
            "estimator_id": self.estimator_id,
            "model_file": self.model_file,
            "model_sha256": self.model_sha256,
            "runtime": self.runtime,
            "alignment": self.alignment,
            "count": len(self),
            "dim": int(self.embeddings.shape[1]),
        }


def dlib_resnet_path(config: IdentityConfig = IdentityConfig()) -> Path:
    """dlib's face-recognition ResNet: the configured file or face_recognition_models' copy."""
    return dlib_model_file(config.dlib_model_path, DLIB_RESNET_FILE, "identity.dlib_model_path")


def arcface_weights_path(config: IdentityConfig) -> Path:
    """The configured ArcFace file; never downloads."""
    hint = (
        "ArcFace weights are never downloaded: put an ArcFace model exported with torch.export (.pt2), "
        "TorchScript (.pt) or ONNX (.onnx, e.g. insightface's w600k_r50.onnx; needs onnxruntime) at a local "
        "path and set "
        "identity.arcface_weights_path, or use the offline default identity.backend=dlib_resnet_v1"
    )
    if not config.arcface_weights_path:
        raise FileNotFoundError(f"identity.backend=arcface needs identity.arcface_weights_path. {hint}")
    path = Path(config.arcface_weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"identity.arcface_weights_path={path}: no such file. {hint}")
    return path


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file (cached per path, size and modification time)."""
    stat = Path(path).stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def central_face_boxes(
    count: int, crop_px: int, fraction: float = IdentityConfig.face_box_fraction
) -> np.ndarray:
    """The face box of a track crop: the central square of side ``fraction * crop_px`` ->
    (count, 4) float32 [x0, y0, x1, y1] crop pixels (edges)."""
    half = 0.5 * fraction * crop_px
    centre = 0.5 * crop_px
    return np.tile(
        np.array([[centre - half, centre - half, centre + half, centre + half]], np.float32), (count, 1)
    )


@functools.lru_cache(maxsize=2)
def _dlib_resnet(path: str):
    import dlib

    return dlib.face_recognition_model_v1(path)


def _dlib_embeddings(
    crops: np.ndarray, landmarks_px: np.ndarray, boxes: np.ndarray, config: IdentityConfig
) -> IdentityFeatures:
    import dlib

    path = dlib_resnet_path(config)
    network = _dlib_resnet(str(path))
    out = np.empty((len(crops), 128), np.float32)
    for start in range(0, len(crops), config.batch_size):
        stop = min(start + config.batch_size, len(crops))
        images, shapes = [], []
        for i in range(start, stop):
            rect = dlib.rectangle(*(int(round(v)) for v in boxes[i]))
            points = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in landmarks_px[i]])
            images.append(np.ascontiguousarray(crops[i]))
            shapes.append(dlib.full_object_detections([dlib.full_object_detection(rect, points)]))
        descriptors = network.compute_face_descriptor(images, shapes, config.num_jitters, config.padding)
        out[start:stop] = [np.asarray(d[0]) for d in descriptors]
    alignment = (
        f"68 landmarks ({backend_description(config.landmarks)}) in the face "
        f"box, rounded to pixels -> dlib get_face_chip_details (landmarks 17-67, {DLIB_CHIP_PX} px, padding "
        f"{config.padding}); jitters {config.num_jitters}"
    )
    return IdentityFeatures(
        out, DLIB_RESNET, path.name, file_sha256(path)[:SHA256_PREFIX], f"dlib {dlib.__version__}", alignment
    )


def five_points(landmarks_px: np.ndarray) -> np.ndarray:
    """ArcFace's five points from 68 iBUG landmarks: (N, 68, 2) -> (N, 5, 2) in ``ARCFACE_TEMPLATE_112PX``
    order (eye centres = means of points 36-41 and 42-47, nose tip 30, mouth corners 48 and 54)."""
    return np.stack(
        [
            landmarks_px[:, 36:42].mean(axis=1),
            landmarks_px[:, 42:48].mean(axis=1),
            landmarks_px[:, 30],
            landmarks_px[:, 48],
            landmarks_px[:, 54],
        ],
        axis=1,
    )


def similarity_lsq(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (Umeyama 1991, no reflection) taking source (K, 2) points to
    target (K, 2) -> (2, 3) float64 affine matrix [sR | t]; what insightface's ``estimate_norm`` fits."""
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    s, t = source - mean_s, target - mean_t
    u, singular, vt = np.linalg.svd(t.T @ s / len(source))
    d = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ d @ vt
    scale = np.trace(np.diag(singular) @ d) / (s**2).sum(axis=1).mean()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mean_t - scale * rotation @ mean_s
    return matrix


def arcface_align(crops: np.ndarray, landmarks_px: np.ndarray) -> np.ndarray:
    """crops (N, S, S, 3) uint8, landmarks_px (N, 68, 2) -> ArcFace inputs (N, 112, 112, 3) uint8."""
    import cv2

    points = five_points(landmarks_px.astype(np.float64))
    out = np.empty((len(crops), ARCFACE_INPUT_PX, ARCFACE_INPUT_PX, 3), np.uint8)
    for i, crop in enumerate(crops):
        matrix = similarity_lsq(points[i], ARCFACE_TEMPLATE_112PX)
        out[i] = cv2.warpAffine(crop, matrix, (ARCFACE_INPUT_PX, ARCFACE_INPUT_PX), flags=cv2.INTER_LINEAR)
    return out


@functools.lru_cache(maxsize=2)
def _arcface_network(path: str, device: str):
    """(callable NCHW float32 array -> (N, D) array, runtime string) for a torch.export, TorchScript or
    ONNX file."""
    if path.endswith(".onnx"):
        try:
            import onnxruntime
        except ImportError as error:
            raise ImportError(
                f"{path} is an ONNX model: install onnxruntime, or export it to TorchScript"
            ) from error
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return (lambda x: session.run(None, {name: x})[0]), f"onnxruntime {onnxruntime.__version__}"
    import torch

    if path.endswith(".pt2"):
        module, kind = torch.export.load(path).module().to(device), "torch.export"
    else:
        module, kind = torch.jit.load(path, map_location=device).eval(), "TorchScript"

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return run, f"torch {torch.__version__} ({kind})"


def _arcface_embeddings(
    crops: np.ndarray, landmarks_px: np.ndarray, config: IdentityConfig
) -> IdentityFeatures:
    path = arcface_weights_path(config)
    network, runtime = _arcface_network(str(path), config.device)
    aligned = arcface_align(crops, landmarks_px)
    chunks = []
    for start in range(0, len(aligned), config.batch_size):
        x = aligned[start : start + config.batch_size].astype(np.float32) / np.float32(127.5) - 1.0
        chunks.append(np.asarray(network(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), np.float32))
    alignment = (
        f"68 landmarks ({backend_description(config.landmarks)}) -> 5 points -> "
        f"least-squares similarity onto insightface's {ARCFACE_INPUT_PX} px ArcFace template"
    )
    return IdentityFeatures(
        np.concatenate(chunks).reshape(len(crops), -1),
        ARCFACE,
        path.name,
        file_sha256(path)[:SHA256_PREFIX],
        runtime,
        alignment,
    )


def identity_features(
    crops: np.ndarray,
    face_boxes_px: np.ndarray | None = None,
    landmarks_px: np.ndarray | None = None,
    config: IdentityConfig = IdentityConfig(),
) -> IdentityFeatures:
    """Face-identity embeddings of face crops with the configured estimator.

    crops (N, S, S, 3) uint8 RGB, square face crops (64-256 px) with one face; face_boxes_px (N, 4)
    [x0, y0, x1, y1] crop pixels, the MTCNN-style face box (None: ``central_face_boxes``, the track
    crop's); landmarks_px (N, 68, 2) crop pixels (None: detected with ``config.landmarks``; pass the
    shard's ``landmarks_px`` for real frames to reuse them) -> ``IdentityFeatures`` (N, D).
    """
    assert crops.ndim == 4 and crops.shape[-1] == 3 and crops.dtype == np.uint8, (crops.shape, crops.dtype)
    if len(crops) == 0:
        raise ValueError("identity_features: no crops")
    if face_boxes_px is None:
        assert crops.shape[1] == crops.shape[2], f"central face boxes need square crops, got {crops.shape}"
        face_boxes_px = central_face_boxes(len(crops), crops.shape[1], config.face_box_fraction)
    face_boxes_px = np.asarray(face_boxes_px, np.float32)
    if landmarks_px is None:
        landmarks_px = detect_landmarks(crops, face_boxes_px, config.landmarks)
    assert landmarks_px.shape == (len(crops), 68, 2), landmarks_px.shape
    if config.backend == DLIB_RESNET:
        return _dlib_embeddings(crops, landmarks_px, face_boxes_px, config)
    if config.backend == ARCFACE:
        return _arcface_embeddings(crops, landmarks_px, config)
    raise ValueError(f"identity.backend={config.backend!r}: expected {DLIB_RESNET!r} or {ARCFACE!r}")


@dataclasses.dataclass(frozen=True)
class IdentitySimilarity:
    """Identity agreement of generated frames with a reference set (the target's own frames, or for a
    cross-identity run also the source's), over all (generated, reference) pairs.

    mean_cosine: mean cosine similarity of the embeddings, in [-1, 1] (higher = more alike).
    mean_l2: mean L2 distance of the embeddings (dlib: < 0.6 = same person).
    match_rate: fraction of pairs under the estimator's same-person distance (dlib's 0.6); None for an
        estimator without a published one (ArcFace: model-specific).
    count_generated, count_reference: frames on each side; estimator: ``IdentityFeatures.estimator_id``.
    """

    mean_cosine: float
    mean_l2: float
    match_rate: float | None
    count_generated: int
    count_reference: int
    estimator: str


def identity_similarity(generated: IdentityFeatures, reference: IdentityFeatures) -> IdentitySimilarity:
    """Mean cosine and L2 over all N_g x N_r pairs of generated and reference embeddings (same estimator)."""
    if generated.estimator_id != reference.estimator_id:
        raise ValueError(
            "identity_similarity: features of different estimators: "
            f"{generated.estimator_id} vs {reference.estimator_id}"
        )
    g = generated.embeddings.astype(np.float64)
    r = reference.embeddings.astype(np.float64)
    g_unit = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    r_unit = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-12)
    squared = (g**2).sum(1)[:, None] + (r**2).sum(1)[None, :] - 2.0 * g @ r.T
    distance = np.sqrt(np.maximum(squared, 0.0))
    match_rate = (
        float((distance < DLIB_SAME_PERSON_L2).mean()) if generated.estimator == DLIB_RESNET else None
    )
    return IdentitySimilarity(
        float((g_unit @ r_unit.T).mean()),
        float(distance.mean()),
        match_rate,
        len(g),
        len(r),
        generated.estimator_id,
    )
