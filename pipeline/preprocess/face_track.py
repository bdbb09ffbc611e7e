"""Face detection (MTCNN), tracking and square face crops (paper section 3.1, preprocessing).

MTCNN costs ~15-25 ms for a 320 px frame on one CPU core (``detect_faces``), so it runs on a
downscaled copy of every ``detect_every``-th kept frame; the face box is interpolated in between and
smoothed over time, and each frame is cropped to a square around it, resized to ``crop_size`` (256 by
default). The crop transform of every frame is kept (``FaceTrack``), so crop pixel coordinates map back
to the frame. ``track_video`` decodes only the detection frames; ``track_and_crop`` also crops every
frame in the same single decoding pass (the preprocessing job's path).

Pixel convention (model/face3d/camera.py): the centre of pixel (row i, col j) is at (x=j, y=i); an image of
width W spans x in [-0.5, W - 0.5]. A crop of side ``side_px`` (frame pixels) centred at (cx, cy)
spans [cx - side/2, cx + side/2] in x; with s = crop_size / side the crop coordinates are
``u = s * (x - cx) + crop_size / 2 - 0.5`` (and likewise v from y).

A video is rejected (a domain error with a reason) rather than guessed at when: no face is found
(``NoFace``), another sizeable face shows up (``MultipleFaces``), the face is too small
(``FaceTooSmall``), or the track jumps or is lost for too long (``TrackLost``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from pipeline.errors import FaceTooSmall, MultipleFaces, NoFace, TrackLost
from pipeline.preprocess.decode import (
    DecodeConfig,
    VideoInfo,
    check_length,
    iter_frames,
    read_frames,
    video_info,
)
from pipeline.preprocess.mtcnn import Mtcnn, detect


@dataclasses.dataclass(frozen=True)
class FaceTrackConfig:
    """Detection, tracking and cropping settings.

    detect_every: run MTCNN on every k-th kept frame (and the last one); boxes are interpolated between.
    detect_max_side_px: frames are downscaled so their longer side is at most this before detection.
    min_confidence: MTCNN probability for a detection to count as a face.
    other_face_confidence, other_face_min_ratio: a second detection at least this confident and at
        least this fraction of the tracked face's size counts as another person ...
    max_other_face_fraction: ... and the video is rejected when more than this fraction of the
        detection frames show one (a stray false positive does not reject a video; a photo, with one
        detection frame, is rejected by any).
    min_face_px: median face box side (max of width and height, frame pixels) below this is too small.
    max_missing_fraction: more detection frames without the face than this fraction -> NoFace.
    max_gap_frames: the face missing for longer than this many consecutive frames -> TrackLost.
    max_jump: centre displacement between consecutive detections, in units of the face box side,
        above which the track is taken to jump (a cut or a different person) -> TrackLost.
    max_scale_change: box side ratio between consecutive detections above which the track jumps.
    smooth_sigma_frames: standard deviation (frames) of the Gaussian smoothing of the box over time.
    crop_scale: crop side = crop_scale * face box side (MTCNN boxes span brows to chin; 1.6 keeps
        the whole head with some hair).
    crop_shift_y: crop centre moved down by this fraction of the box side.
    crop_size: output crop resolution in pixels (the training resolution).
    """

    # Every 10th frame: on the 14 shared clips the landmarks moved by 0.54% of the inter-ocular distance
    # on average against every 5th (dlib starts from the interpolated box), and the 3DMM fit's error,
    # jitter and identity consistency stayed the same (benchmarks/fit_quality.py: mean 1.579% both,
    # max 1.989% against 1.994%), for half of MTCNN's cost (~1.6 ms a frame).
    detect_every: int = 10
    detect_max_side_px: int = 320
    min_confidence: float = 0.9
    other_face_confidence: float = 0.95
    other_face_min_ratio: float = 0.4
    max_other_face_fraction: float = 0.1
    min_face_px: int = 64
    max_missing_fraction: float = 0.5
    max_gap_frames: int = 30
    max_jump: float = 0.5
    max_scale_change: float = 1.5
    smooth_sigma_frames: float = 3.0
    crop_scale: float = 1.6
    crop_shift_y: float = 0.0
    crop_size: int = 256


@dataclasses.dataclass(frozen=True)
class Detections:
    """MTCNN output for a few frames: per frame, boxes (F, 4) float32 [x0, y0, x1, y1] in frame pixels
    (edges, not pixel centres) and probs (F,) float32; F may be 0."""

    frame_index: np.ndarray
    boxes_px: tuple[np.ndarray, ...]
    probs: tuple[np.ndarray, ...]


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

    def rows(self, frame_index: Sequence[int] | np.ndarray) -> np.ndarray:
        """Positions in this track of the given frame numbers (all must be in the track)."""
        frame_index = np.asarray(frame_index, np.int64)
        rows = np.searchsorted(self.frame_index, frame_index)
        found = self.frame_index[np.minimum(rows, len(self) - 1)]
        if np.any(rows >= len(self)) or np.any(found != frame_index):
            raise ValueError(f"frames {frame_index.tolist()} are not all in the track")
        return rows

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


@functools.lru_cache(maxsize=32)
def _mtcnn(min_face_size: int) -> Mtcnn:
    return Mtcnn(min_face_size)


def load_detector() -> None:
    """Loads MTCNN's weights (once per process, ~50 ms) ahead of the first detection."""
    _mtcnn(12)


def detect_faces(
    frames: np.ndarray, config: FaceTrackConfig = FaceTrackConfig(), smallest_face_px: float = 0.0
) -> tuple[list, list]:
    """MTCNN on downscaled frames: frames (N, H, W, 3) uint8 RGB -> per frame boxes (F, 4) float32
    [x0, y0, x1, y1] in full-resolution frame pixels and probs (F,) float32 (F = 0 when none), largest
    box first.

    Faces smaller than ``max(0.7 * config.min_face_px, smallest_face_px)`` frame pixels may be missed:
    MTCNN's image pyramid starts at the scale that makes that size its 12 px window, and the first,
    largest levels cost the most, so a larger bound is much cheaper (see ``track_video``).
    """
    height, width = frames.shape[1:3]
    factor = min(1.0, config.detect_max_side_px / max(height, width))
    if factor < 1.0:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        small = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
    else:
        small = np.ascontiguousarray(frames)
    # Smallest face MTCNN looks for, in downscaled pixels; anything under min_face_px is rejected anyway.
    # Rounded down to a multiple of 4 so that few detector instances are cached.
    smallest_px = max(0.7 * config.min_face_px, smallest_face_px)
    min_face_size = max(12, int(smallest_px * factor) // 4 * 4)
    with torch.inference_mode():
        detected = detect(_mtcnn(min_face_size), small)
    out_boxes, out_probs = [], []
    scale = np.array([width / small.shape[2], height / small.shape[1]] * 2, np.float32)
    for box in detected:
        out_boxes.append(box[:, :4] * scale)
        out_probs.append(box[:, 4].copy())
    return out_boxes, out_probs


def detection_frames(frame_index: np.ndarray, detect_every: int) -> np.ndarray:
    """The kept frames MTCNN runs on: every k-th and the last; frame_index (T,) -> (D,) subset."""
    rows = np.arange(0, len(frame_index), detect_every)
    if rows[-1] != len(frame_index) - 1:
        rows = np.append(rows, len(frame_index) - 1)
    return frame_index[rows]


def _center_side(box: np.ndarray) -> tuple[np.ndarray, float]:
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0]) - 0.5, float(
        max(box[2] - box[0], box[3] - box[1])
    )


class _TrackLinker:
    """Links detections into one face's track, one detection frame at a time in frame order: the first
    face is the largest confident one, then each frame's face is the detection nearest the previous
    one (relative to its size). Jumps raise ``TrackLost`` as they come; the checks that need every
    detection frame are in ``finish``."""

    def __init__(self, config: FaceTrackConfig, source: str) -> None:
        self.config, self.source = config, source
        self.centers: list[np.ndarray] = []
        self.sides: list[float] = []
        self.found_at: list[int] = []  # frames where the face was found
        self.num_detect = 0  # detection frames seen
        self.other_frames = 0  # detection frames showing another sizeable face

    def add(self, t: int, boxes: np.ndarray, probs: np.ndarray) -> None:
        """The detections of frame ``t`` (after the previous one): boxes (F, 4), probs (F,)."""
        config = self.config
        self.num_detect += 1
        keep = probs >= config.min_confidence
        boxes, probs = boxes[keep], probs[keep]
        if len(boxes) == 0:
            return
        cs = [_center_side(b) for b in boxes]
        previous = (self.centers[-1], self.sides[-1]) if self.found_at else None
        if previous is None:
            chosen = int(np.argmax([side for _, side in cs]))
        else:  # the detection nearest the previous face, relative to its size
            chosen = int(np.argmin([np.linalg.norm(c - previous[0]) / previous[1] for c, _ in cs]))
        center, side = cs[chosen]
        others = [
            i
            for i, (_, other_side) in enumerate(cs)
            if i != chosen
            and probs[i] >= config.other_face_confidence
            and other_side >= config.other_face_min_ratio * side
        ]
        self.other_frames += bool(others)
        if previous is not None:
            jump = np.linalg.norm(center - previous[0]) / max(side, previous[1])
            scale_change = max(side, previous[1]) / max(min(side, previous[1]), 1e-6)
            if jump > config.max_jump or scale_change > config.max_scale_change:
                raise TrackLost(
                    f"{self.source}: face track jumps at frame {t} (moved {jump:.2f} face sizes, "
                    f"size changed x{scale_change:.2f}; limits {config.max_jump}, {config.max_scale_change})"
                )
        self.centers.append(center)
        self.sides.append(side)
        self.found_at.append(int(t))

    def track(self, frame_index: np.ndarray, frame_hw: tuple[int, int]) -> FaceTrack:
        """The track over frame_index (T,) from the faces found so far (at least one): linear
        interpolation between them (constant beyond the ends), then temporal smoothing.

        A frame's box only depends on the found faces within the smoothing radius (``_smoothing_radius``
        kept frames) of it and the next found face after those, so it is final once a face has been
        found at least that far ahead; ``track_and_crop`` relies on this."""
        config = self.config
        found_at, centers, sides = (
            np.array(self.found_at, np.int64),
            np.array(self.centers),
            np.array(self.sides),
        )
        track = np.stack(
            [np.interp(frame_index, found_at, v) for v in (centers[:, 0], centers[:, 1], sides)], 1
        )
        if config.smooth_sigma_frames > 0 and len(frame_index) > 1:
            track = gaussian_filter1d(track, config.smooth_sigma_frames, axis=0, mode="nearest", truncate=4.0)
        box_center, box_side = track[:, :2], track[:, 2]
        crop_center = box_center + np.stack([np.zeros_like(box_side), config.crop_shift_y * box_side], 1)
        return FaceTrack(
            frame_index=frame_index,
            box_center_px=box_center,
            box_side_px=box_side,
            crop_center_px=crop_center,
            crop_side_px=config.crop_scale * box_side,
            detected=np.isin(frame_index, found_at),
            crop_size=config.crop_size,
            frame_hw=frame_hw,
        )

    def gap_since_last_face(self, frame_index: np.ndarray, t: int) -> int:
        """Frames from the last found face (or the first kept frame) to frame ``t``."""
        return int(t - (self.found_at[-1] if self.found_at else frame_index[0]))

    def finish(self, frame_index: np.ndarray, frame_hw: tuple[int, int]) -> FaceTrack:
        """The track after the last detection frame; raises NoFace, MultipleFaces, TrackLost (a gap),
        FaceTooSmall."""
        config, source, num_detect = self.config, self.source, self.num_detect
        if not self.found_at:
            raise NoFace(f"{source}: no face found in {num_detect} sampled frame(s)")
        if self.other_frames > config.max_other_face_fraction * num_detect:
            raise MultipleFaces(
                f"{source}: another person's face in {self.other_frames} of {num_detect} sampled frame(s)"
            )
        missing = num_detect - len(self.found_at)
        if missing > config.max_missing_fraction * num_detect:
            raise NoFace(f"{source}: face found in only {len(self.found_at)} of {num_detect} sampled frames")
        # Gaps: between detections, and before the first / after the last one.
        bounds = np.concatenate([[frame_index[0]], self.found_at, [frame_index[-1]]])
        gap = int(np.max(np.diff(bounds)))
        if gap > config.max_gap_frames:
            raise TrackLost(f"{source}: face lost for {gap} frames (limit {config.max_gap_frames})")
        median_side = float(np.median(self.sides))
        if median_side < config.min_face_px:
            raise FaceTooSmall(
                f"{source}: face is {median_side:.0f} px (median box side), "
                f"at least {config.min_face_px} needed"
            )
        return self.track(frame_index, frame_hw)


def _smoothing_radius(config: FaceTrackConfig) -> int:
    """Kept frames on each side that the temporal smoothing reads (``gaussian_filter1d``, truncate 4)."""
    return int(4.0 * config.smooth_sigma_frames + 0.5) if config.smooth_sigma_frames > 0 else 0


def track_from_detections(
    frame_index: np.ndarray,
    detections: Detections,
    frame_hw: tuple[int, int],
    config: FaceTrackConfig = FaceTrackConfig(),
    source: str = "video",
) -> FaceTrack:
    """Links per-frame detections into one face track over all kept frames (pure; no decoding).

    frame_index (T,) int64: the kept frames; detections on a subset of them. Box centres are in
    pixel-centre coordinates (model/face3d/camera.py). Raises NoFace, MultipleFaces, FaceTooSmall, TrackLost.
    """
    frame_index = np.asarray(frame_index, np.int64)
    linker = _TrackLinker(config, source)
    for t, boxes, probs in zip(detections.frame_index, detections.boxes_px, detections.probs):
        linker.add(int(t), boxes, probs)
    return linker.finish(frame_index, frame_hw)


def _kept_frames(
    path, decode_config: DecodeConfig, frame_index: np.ndarray | None, info: VideoInfo | None = None
):
    """(video info, the kept frames to track: all, or ``frame_index`` (T,) ascending)."""
    info = info or video_info(path, decode_config)
    all_kept = check_length(info, decode_config)
    frame_index = all_kept if frame_index is None or info.is_image else np.asarray(frame_index, np.int64)
    return info, frame_index


def _smallest_face_bound(boxes: np.ndarray, probs: np.ndarray, config: FaceTrackConfig) -> float:
    """The smallest face later detection frames need to find, from the first one's detections.

    The first detection frame is searched for faces down to the smallest accepted size; once the face
    is known, later frames only need faces down to a fraction of its size (another person counts only
    from other_face_min_ratio of it, and the tracked face may shrink by max_scale_change per step),
    which halves MTCNN's cost on typical clips. A face that later shrinks below that bound is lost, and
    the video is rejected (NoFace / TrackLost) rather than tracked wrongly.
    """
    confident = boxes[probs >= config.min_confidence]
    face_px = float(np.max(confident[:, 2:] - confident[:, :2])) if len(confident) else 0.0
    return min(config.other_face_min_ratio, 1.0 / config.max_scale_change) * 0.8 * face_px


def track_video(
    path: str | Path,
    decode_config: DecodeConfig | None = None,
    config: FaceTrackConfig = FaceTrackConfig(),
    frame_index: np.ndarray | None = None,
) -> FaceTrack:
    """Detects and tracks the face of a video (or image) over its kept frames, or over ``frame_index``
    (T,) ascending (e.g. one segment); decodes only the detection frames (``track_and_crop`` also
    crops, in one pass). Raises UnreadableVideo, TooShort and the tracking errors."""
    decode_config = decode_config or DecodeConfig()
    info, frame_index = _kept_frames(path, decode_config, frame_index)
    detect_at = detection_frames(frame_index, config.detect_every)
    boxes, probs = list(detect_faces(read_frames(path, detect_at[:1], decode_config), config))
    smallest_face_px = _smallest_face_bound(boxes[0], probs[0], config)
    for start in range(1, len(detect_at), decode_config.chunk_frames):
        chunk = detect_at[start : start + decode_config.chunk_frames]
        b, p = detect_faces(read_frames(path, chunk, decode_config), config, smallest_face_px)
        boxes += b
        probs += p
    detections = Detections(detect_at, tuple(boxes), tuple(probs))
    return track_from_detections(frame_index, detections, (info.height, info.width), config, str(path))


def track_and_crop(
    path: str | Path,
    decode_config: DecodeConfig | None = None,
    config: FaceTrackConfig = FaceTrackConfig(),
    frame_index: np.ndarray | None = None,
    info: VideoInfo | None = None,
) -> tuple[FaceTrack, np.ndarray]:
    """``track_video`` and the crops of every tracked frame, in one decoding pass: (track, crops (T, S,
    S, 3) uint8). The same track and crops as ``track_video`` then ``crop_faces`` over ``iter_frames``,
    at one decode of the video instead of two (3 ms less CPU per frame over the shared clips). MTCNN
    sees other batches here (each chunk's detection frames), which moves boxes by float noise (< 1e-3
    px) except where two candidates nearly tie: over 150 frames of each shared clip, one detection
    frame of 420 got a box 12 px wider, moving that clip's smoothed crop centre by up to 3 px.

    Frames stream by in ``decode_config.chunk_frames`` chunks; MTCNN runs on each chunk's detection
    frames, and a frame is cropped as soon as its box is final (``_TrackLinker.track``): a face found
    at least the smoothing radius (12 frames at sigma 3) ahead of it. So at most a chunk plus that
    radius plus the frames since the last found face are held, and once the face has been missing for
    more than ``max_gap_frames`` (the video is then rejected whatever follows) no frames are kept;
    detection goes on to the end, so a rejected video gets the same reason as with ``track_video``.
    ``info``: the video's ``video_info``, when the caller has read it already.
    """
    decode_config = decode_config or DecodeConfig()
    info, frame_index = _kept_frames(path, decode_config, frame_index, info)
    frame_hw = (info.height, info.width)
    if info.is_image:
        track = track_video(path, decode_config, config)
        return track, crop_faces(read_frames(path, [0], decode_config), np.zeros(1, np.int64), track)
    linker = _TrackLinker(config, str(path))
    detect_at = detection_frames(frame_index, config.detect_every)
    radius, last_row = _smoothing_radius(config), len(frame_index) - 1
    crops = np.empty((len(frame_index), config.crop_size, config.crop_size, 3), np.uint8)
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # (rows (N,), frames (N, H, W, 3)) not yet cropped
    smallest_face_px: float | None = None
    for chunk, frames in iter_frames(path, decode_config, frame_index, info):
        detect = np.flatnonzero(np.isin(chunk, detect_at))
        if smallest_face_px is None and len(detect):  # the first detection frame: faces of any size
            boxes, probs = detect_faces(frames[detect[:1]], config)
            linker.add(int(chunk[detect[0]]), boxes[0], probs[0])
            smallest_face_px = _smallest_face_bound(boxes[0], probs[0], config)
            detect = detect[1:]
        if len(detect):
            boxes, probs = detect_faces(frames[detect], config, smallest_face_px)
            for t, b, p in zip(chunk[detect], boxes, probs):
                linker.add(int(t), b, p)
        if linker.gap_since_last_face(frame_index, int(chunk[-1])) > config.max_gap_frames:
            pending = []  # rejected at the end whatever follows (TrackLost, or an earlier reason)
            continue
        pending.append((np.searchsorted(frame_index, chunk), frames))
        if linker.found_at:
            final_up_to = int(np.searchsorted(frame_index, linker.found_at[-1])) - radius
            pending = _crop_final(pending, final_up_to, linker.track(frame_index, frame_hw), crops)
    track = linker.finish(frame_index, frame_hw)
    _crop_final(pending, last_row, track, crops)
    return track, crops


def _crop_final(
    pending: list[tuple[np.ndarray, np.ndarray]], final_up_to: int, track: FaceTrack, crops: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Crops the pending frames of rows <= final_up_to into ``crops`` (T, S, S, 3); returns the rest.

    Each pending entry is a run of ascending rows, so its final rows are a prefix: split by slicing
    (views, no copies of the frames)."""
    rest = []
    for rows, frames in pending:
        done = int(np.searchsorted(rows, final_up_to, side="right"))
        if done:
            crops[rows[:done]] = crop_faces(frames[:done], rows[:done], track)
        if done < len(rows):
            rest.append((rows[done:], frames[done:]))
    return rest


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
