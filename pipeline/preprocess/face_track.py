"""Face detection (MTCNN), tracking and square face crops of a video in one decoding pass (paper section
3.1, preprocessing): the preprocessing job's path.

MTCNN runs on a downscaled copy of every ``detect_every``-th kept frame (it is the costly step:
docs/preprocessing.md); the face box is interpolated in between and smoothed over time
(pipeline/preprocess/track_parts.py links the detections, cutting the track where it jumps or the face is
lost), and each frame is cropped to a square around it, resized to ``crop_size`` (256 by default;
pipeline/preprocess/face_crop.py). ``track_and_crop_parts`` (the preprocessing job) decodes a video or
segment once, tracking and cropping as the frames stream by, and returns the track's parts;
``track_and_crop`` is the same for a video that must be one track (reconstruction, benchmarks).

At a jump, MTCNN also runs on the frames between the two detections (they are still held), so the cut
falls on the first frame of the new face rather than on the next detection frame, and a fast but
continuous move, which those frames show step by step, is followed rather than cut.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import cv2
import numpy as np
import torch

from pipeline.errors import TrackLost
from pipeline.preprocess.decode import DecodeConfig, VideoInfo, check_length, iter_frames, video_info
from pipeline.preprocess.face_crop import FaceTrack, crop_faces
from pipeline.preprocess.mtcnn import Mtcnn, detect
from pipeline.preprocess.track_parts import (
    FaceTrackConfig,
    TrackLinker,
    TrackPart,
    one_track,
    smoothing_radius,
)


@functools.lru_cache(maxsize=32)
def _mtcnn(min_face_size: int) -> Mtcnn:
    return Mtcnn(min_face_size)


def load_detector() -> None:
    """Loads MTCNN's weights (once per process) ahead of the first detection."""
    _mtcnn(12)


def detect_faces(
    frames: np.ndarray, config: FaceTrackConfig | None = None, smallest_face_px: float = 0.0
) -> tuple[list, list]:
    """MTCNN on downscaled frames: frames (N, H, W, 3) uint8 RGB -> per frame boxes (F, 4) float32
    [x0, y0, x1, y1] in full-resolution frame pixels and probs (F,) float32 (F = 0 when none), largest
    box first.

    Faces smaller than ``max(0.7 * config.min_face_px, smallest_face_px)`` frame pixels may be missed:
    MTCNN's image pyramid starts at the scale that makes that size its 12 px window, and the first,
    largest levels cost the most, so a larger bound is much cheaper (``_smallest_face_bound``).
    """
    config = config or FaceTrackConfig()
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
    which costs MTCNN much less (its first, finest pyramid levels are skipped). A face that later
    shrinks below that bound is lost, and cuts the track, rather than being tracked wrongly.
    """
    confident = boxes[probs >= config.min_confidence]
    face_px = float(np.max(confident[:, 2:] - confident[:, :2])) if len(confident) else 0.0
    return min(config.other_face_min_ratio, 1.0 / config.max_scale_change) * 0.8 * face_px


def track_and_crop_parts(
    path: str | Path,
    decode_config: DecodeConfig | None = None,
    config: FaceTrackConfig | None = None,
    frame_index: np.ndarray | None = None,
    info: VideoInfo | None = None,
) -> list[TrackPart]:
    """The face track parts of a video (or image) over its kept frames, or over ``frame_index`` (T,)
    ascending (one segment), with the crops of every usable part, in one decoding pass; the parts cover
    the frames in order, each frame once (pipeline/preprocess/track_parts.py). ``info``: the video's
    ``video_info``, when the caller has read it already.

    Frames stream by in ``decode_config.chunk_frames`` chunks; MTCNN runs on each chunk's detection
    frames (and, at a jump, on the frames since the last face, which are still held), and a frame is
    cropped as soon as its box is final (``TrackLinker.track``): its part is closed, or a face was
    found at least the smoothing radius (12 frames at sigma 3) ahead of it. So at most a chunk plus that
    radius plus the frames since the last found face are held, and none once the face has been missing
    for more than ``max_gap_frames`` (those frames belong to no part); besides, the crops (T, S, S, 3).
    Raises UnreadableVideo, TooShort, NoFace, MultipleFaces, or the longest part's reason when no part
    is usable.
    """
    decode_config, config = decode_config or DecodeConfig(), config or FaceTrackConfig()
    return _track_and_crop(path, decode_config, config, frame_index, info)[0]


def track_and_crop(
    path: str | Path,
    decode_config: DecodeConfig | None = None,
    config: FaceTrackConfig | None = None,
    frame_index: np.ndarray | None = None,
    info: VideoInfo | None = None,
) -> tuple[FaceTrack, np.ndarray]:
    """``track_and_crop_parts`` for a video that must be one track: (track, crops (T, S, S, 3) uint8).
    A cut track raises TrackLost naming its first cut (after the whole video is tracked)."""
    decode_config, config = decode_config or DecodeConfig(), config or FaceTrackConfig()
    part = one_track(*_track_and_crop(path, decode_config, config, frame_index, info))
    return part.track, part.crops


def _track_and_crop(
    path: str | Path,
    decode_config: DecodeConfig,
    config: FaceTrackConfig,
    frame_index: np.ndarray | None,
    info: VideoInfo | None,
) -> tuple[list[TrackPart], list[TrackLost]]:
    info, frame_index = _kept_frames(path, decode_config, frame_index, info)
    linker = TrackLinker(config, str(path), frame_index, (info.height, info.width), decode_config.min_frames)
    detect_at = detection_frames(frame_index, config.detect_every)
    crops = np.empty((len(frame_index), config.crop_size, config.crop_size, 3), np.uint8)
    pending: list[tuple[np.ndarray, np.ndarray]] = []  # (rows (N,), frames (N, H, W, 3)) not yet cropped
    cropped_to: list[int] = []  # per part of the linker: the last row cropped (or dropped) so far
    smallest_face_px: float | None = None
    for chunk, frames in iter_frames(path, decode_config, frame_index, info):
        pending.append((np.searchsorted(frame_index, chunk), frames))
        detect = np.flatnonzero(np.isin(chunk, detect_at))
        if smallest_face_px is None and len(detect):  # the first detection frame: faces of any size
            boxes, probs = detect_faces(frames[detect[:1]], config)
            linker.add(int(chunk[detect[0]]), boxes[0], probs[0])
            smallest_face_px = _smallest_face_bound(boxes[0], probs[0], config)
            detect = detect[1:]
        if len(detect):
            boxes, probs = detect_faces(frames[detect], config, smallest_face_px)
            for t, b, p in zip(chunk[detect].tolist(), boxes, probs):
                if linker.jumps(t, b, p):
                    _look_between(linker, pending, detect_at, t, smallest_face_px)
                linker.add(t, b, p)
        linker.lose(int(chunk[-1]))
        pending = _crop_final(linker, pending, crops, cropped_to)
    parts = linker.finish()
    _crop_final(linker, pending, crops, cropped_to)
    rows = np.cumsum([0] + [len(p.frame_index) for p in parts])
    parts = [
        p if p.rejected else dataclasses.replace(p, crops=crops[start:stop])
        for p, start, stop in zip(parts, rows, rows[1:])
    ]
    return parts, linker.breaks


def _look_between(
    linker: TrackLinker,
    pending: list[tuple[np.ndarray, np.ndarray]],
    detect_at: np.ndarray,
    t: int,
    smallest_face_px: float,
) -> None:
    """Before a jump at detection frame t: MTCNN on the held frames between the open part's last face
    and t (those not sampled yet), linked in order, so that the cut falls where the face changes."""
    rows = np.arange(linker.row(linker.parts[-1].found_at[-1]) + 1, linker.row(t))
    rows = rows[~np.isin(linker.frame_index[rows], detect_at)]
    if not len(rows):
        return
    frames = np.concatenate([f[np.isin(r, rows)] for r, f in pending])
    assert len(frames) == len(rows), "frames since the last face are held until it is found again"
    boxes, probs = detect_faces(frames, linker.config, smallest_face_px)
    for row, b, p in zip(rows.tolist(), boxes, probs):
        linker.add(int(linker.frame_index[row]), b, p)


def _crop_final(
    linker: TrackLinker,
    pending: list[tuple[np.ndarray, np.ndarray]],
    crops: np.ndarray,
    cropped_to: list[int],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Crops the pending frames whose box is final into ``crops`` (T, S, S, 3) and drops those that
    belong to no usable part; returns the frames still needed. ``cropped_to``: per part, the last row
    done so far (updated)."""
    radius = smoothing_radius(linker.config)
    cropped_to += [-1] * (len(linker.parts) - len(cropped_to))
    for k, part in enumerate(linker.parts):
        is_open = linker.open and k == len(linker.parts) - 1
        final_to = linker.row(part.found_at[-1]) - radius if is_open else part.last_row
        if final_to <= cropped_to[k]:
            continue
        if part.rejected is not None:
            track = None
        else:  # the open part's boxes so far, over the rest of the segment (final up to final_to)
            track = linker.track(part, len(linker.frame_index) - 1 if is_open else None)
        pending = _crop_rows(pending, part.first_row, final_to, track, crops)
        cropped_to[k] = final_to
    return [] if linker.lost else pending


def _crop_rows(
    pending: list[tuple[np.ndarray, np.ndarray]],
    first_row: int,
    last_row: int,
    track: FaceTrack | None,
    crops: np.ndarray,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Crops the pending frames of rows [first_row, last_row] with ``track`` (whose row 0 is first_row;
    None: drops them), drops those before first_row, returns the rest.

    Each pending entry is a run of ascending rows, so the rows up to last_row are a prefix: split by
    slicing (views, no copies of the frames)."""
    rest = []
    for rows, frames in pending:
        done = int(np.searchsorted(rows, last_row, side="right"))
        start = min(int(np.searchsorted(rows, first_row)), done)
        if track is not None and start < done:
            crops[rows[start:done]] = crop_faces(frames[start:done], rows[start:done] - first_row, track)
        if done < len(rows):
            rest.append((rows[done:], frames[done:]))
    return rest
