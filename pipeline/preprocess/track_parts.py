"""Linking face detections into a track, cut into parts where it jumps or the face is lost (pure: no
decoding; pipeline/preprocess/face_track.py runs it on videos as they stream by).

The track is cut where it jumps (a cut, a fast turn: between two detections the face moves more than
``max_jump`` face sizes or changes size by more than ``max_scale_change``) and where the face is lost for
more than ``max_gap_frames``. Each piece is a ``TrackPart``, tracked and smoothed on its own (no smoothing
across a cut). A part runs from its first found face to its last; at the segment's start and end it
reaches up to ``max_gap_frames`` further, so a track without cuts covers the whole segment. Frames between
two parts (no face, or none that either part continues) form a rejected part (``NoFace``). A part
shorter than ``decode.min_frames`` (``TooShort``), with its face found in too few of its sampled frames
(``NoFace``) or too small (``FaceTooSmall``) is rejected while the other parts are kept.

A whole video or segment is rejected when no face is found (``NoFace``), another sizeable face shows up
in too many sampled frames (``MultipleFaces``), or no part is usable (the reason of its longest part).
``track_from_detections`` wants one track: it also rejects a cut track (``TrackLost``, the first cut).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.ndimage import gaussian_filter1d

from pipeline.errors import FaceTooSmall, MultipleFaces, NoFace, TooShort, TrackLost, VideoRejected
from pipeline.preprocess.decode import DecodeConfig
from pipeline.preprocess.face_crop import FaceTrack


@dataclasses.dataclass(frozen=True)
class FaceTrackConfig:
    """Detection, tracking and cropping settings (defaults chosen with benchmarks/fit_quality.py and
    benchmarks/track_landmarks.py; their numbers are in docs/preprocessing.md).

    detect_every: run MTCNN on every k-th kept frame (and the last one); boxes are interpolated between.
    detect_max_side_px: frames are downscaled so their longer side is at most this before detection.
    min_confidence: MTCNN probability for a detection to count as a face.
    other_face_confidence, other_face_min_ratio: a second detection at least this confident and at
        least this fraction of the tracked face's size counts as another person ...
    max_other_face_fraction: ... and the video is rejected when more than this fraction of the
        detection frames show one (a stray false positive does not reject a video; a photo, with one
        detection frame, is rejected by any).
    min_face_px: median face box side (max of width and height, frame pixels) below this is too small.
    max_missing_fraction: a track part whose face is missing from more than this fraction of its
        detection frames is rejected (NoFace).
    max_gap_frames: the face missing for longer than this many consecutive frames cuts the track.
    max_jump: centre displacement between consecutive detections, in units of the face box side,
        above which the track jumps (a cut or a different person) and is cut.
    max_scale_change: box side ratio between consecutive detections above which the track jumps.
    smooth_sigma_frames: standard deviation (frames) of the Gaussian smoothing of the box over time.
    crop_scale: crop side = crop_scale * face box side (MTCNN boxes span brows to chin; 1.6 keeps
        the whole head with some hair).
    crop_shift_y: crop centre moved down by this fraction of the box side.
    crop_size: output crop resolution in pixels (the training resolution).
    """

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


@dataclasses.dataclass(frozen=True, eq=False)
class TrackPart:
    """A run of consecutive kept frames over which the face track is continuous, or, rejected, frames
    between such runs.

    frame_index (T,) int64: source frames. track, crops (T, S, S, 3) uint8: the part's face track and
    crops when usable (crops None from ``track_parts_from_detections``, which sees no frames); both None
    when ``rejected`` (a ``VideoRejected`` with its reason) says why the part cannot be used.
    """

    frame_index: np.ndarray
    track: FaceTrack | None
    crops: np.ndarray | None
    rejected: VideoRejected | None = None


def _center_side(box: np.ndarray) -> tuple[np.ndarray, float]:
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0]) - 0.5, float(
        max(box[2] - box[0], box[3] - box[1])
    )


@dataclasses.dataclass(eq=False)
class LinkedPart:
    """One part's faces as the linker finds them: kept-frame rows [first_row, last_row] of the segment
    (last_row None while the part is open); faces found at frames found_at (ascending), box centres
    (pixel-centre coordinates) and sides (frame pixels)."""

    first_row: int
    found_at: list[int] = dataclasses.field(default_factory=list)
    centers: list[np.ndarray] = dataclasses.field(default_factory=list)
    sides: list[float] = dataclasses.field(default_factory=list)
    last_row: int | None = None
    jump: TrackLost | None = None  # the jump that ended the part (None: a gap or the segment's end)
    rejected: VideoRejected | None = None  # decided when the part is closed


class TrackLinker:
    """Links the detections of one video or segment into track parts, one MTCNN frame at a time in
    frame order: the first face of a part is the largest confident one, then each frame's face is the
    detection nearest the previous one (relative to its size). A jump or a gap longer than
    ``max_gap_frames`` closes the open part; the next face found opens a new one.

    Memory: a few numbers per frame MTCNN ran on (at most one per kept frame of the segment), no frames.
    """

    def __init__(
        self,
        config: FaceTrackConfig,
        source: str,
        frame_index: np.ndarray,
        frame_hw: tuple[int, int],
        min_frames: int,
    ) -> None:
        self.config, self.source, self.min_frames = config, source, min_frames
        self.frame_index, self.frame_hw = frame_index, frame_hw
        self.parts: list[LinkedPart] = []  # in frame order; the last one is open while ``self.open``
        self.open = False
        self.lost = False  # no part open, and none can take the frames decoded so far
        self.sampled_at: list[int] = []  # every frame MTCNN ran on
        self.other_frames = 0  # sampled frames showing another sizeable face
        self.breaks: list[TrackLost] = []  # the cuts, in frame order (set by ``finish``)

    def row(self, t: int) -> int:
        return int(np.searchsorted(self.frame_index, t))

    def _face(self, boxes: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, float, bool] | None:
        """The tracked face among one frame's detections (F, 4), (F,): (centre, side, whether another
        sizeable face is in view), or None."""
        config = self.config
        keep = probs >= config.min_confidence
        boxes, probs = boxes[keep], probs[keep]
        if len(boxes) == 0:
            return None
        cs = [_center_side(b) for b in boxes]
        if self.open:  # the detection nearest the previous face, relative to its size
            part = self.parts[-1]
            chosen = int(np.argmin([np.linalg.norm(c - part.centers[-1]) / part.sides[-1] for c, _ in cs]))
        else:
            chosen = int(np.argmax([side for _, side in cs]))
        center, side = cs[chosen]
        other = any(
            i != chosen
            and probs[i] >= config.other_face_confidence
            and s >= config.other_face_min_ratio * side
            for i, (_, s) in enumerate(cs)
        )
        return center, side, other

    def _jump(self, t: int, center: np.ndarray, side: float) -> TrackLost | None:
        """The jump from the open part's last face to this one at frame t, if it is one."""
        config, part = self.config, self.parts[-1]
        jump = np.linalg.norm(center - part.centers[-1]) / max(side, part.sides[-1])
        scale_change = max(side, part.sides[-1]) / max(min(side, part.sides[-1]), 1e-6)
        if jump <= config.max_jump and scale_change <= config.max_scale_change:
            return None
        return TrackLost(
            f"{self.source}: face track jumps at frame {t} (moved {jump:.2f} face sizes, "
            f"size changed x{scale_change:.2f}; limits {config.max_jump}, {config.max_scale_change})"
        )

    def jumps(self, t: int, boxes: np.ndarray, probs: np.ndarray) -> bool:
        """Whether adding frame t's detections would cut the open part at a jump (not at a gap)."""
        face = self._face(boxes, probs) if self.open else None
        return (
            face is not None
            and t - self.parts[-1].found_at[-1] <= self.config.max_gap_frames
            and self._jump(t, face[0], face[1]) is not None
        )

    def add(self, t: int, boxes: np.ndarray, probs: np.ndarray) -> None:
        """The detections of frame ``t`` (after those of every earlier frame MTCNN ran on, except
        ``track_and_crop_parts``' extra frames at a jump, which come after faceless detection frames):
        boxes (F, 4) [x0, y0, x1, y1] frame pixels, probs (F,)."""
        self.sampled_at.append(int(t))
        face = self._face(boxes, probs)
        if face is None:
            return
        center, side, other = face
        self.other_frames += other
        if self.open and t - self.parts[-1].found_at[-1] > self.config.max_gap_frames:
            self._close(self.row(self.parts[-1].found_at[-1]))
        elif self.open and (jump := self._jump(t, center, side)) is not None:
            self._close(self.row(self.parts[-1].found_at[-1]), jump)
        if not self.open:  # the first part reaches back to the segment's start over a short gap
            lead = not self.parts and t - self.frame_index[0] <= self.config.max_gap_frames
            self.parts.append(LinkedPart(first_row=0 if lead else self.row(t)))
            self.open, self.lost = True, False
        part = self.parts[-1]
        part.found_at.append(int(t))
        part.centers.append(center)
        part.sides.append(side)

    def lose(self, t: int) -> None:
        """Frames up to ``t`` are decoded: once the face has been missing for more than max_gap_frames,
        closes the open part (or gives up the segment's start), so that the frames since can be dropped."""
        if self.open:
            if t - self.parts[-1].found_at[-1] > self.config.max_gap_frames:
                self._close(self.row(self.parts[-1].found_at[-1]))
                self.lost = True
        elif not self.parts and t - self.frame_index[0] > self.config.max_gap_frames:
            self.lost = True

    def _close(self, last_row: int, jump: TrackLost | None = None) -> None:
        part = self.parts[-1]
        part.last_row, part.jump, self.open = last_row, jump, False
        part.rejected = self._check(part)

    def _check(self, part: LinkedPart) -> VideoRejected | None:
        """Why a closed part cannot be used, if it cannot: too short (a cut part only: an uncut one is the
        segment, long enough already), face missing from too many of its sampled frames, face too small."""
        config = self.config
        frames = self.frame_index[part.first_row : part.last_row + 1]
        whole = len(frames) == len(self.frame_index)
        source = self.source if whole else f"{self.source} frames {frames[0]}-{frames[-1]}"
        if not whole and len(frames) < self.min_frames:
            return TooShort(
                f"{source}: a {len(frames)}-frame part of the face track, at least {self.min_frames} needed"
            )
        sampled_at = np.asarray(self.sampled_at)
        sampled = int(np.count_nonzero((sampled_at >= frames[0]) & (sampled_at <= frames[-1])))
        found = len(part.found_at)
        if sampled - found > config.max_missing_fraction * sampled:
            return NoFace(f"{source}: face found in only {found} of {sampled} sampled frames")
        median_side = float(np.median(part.sides))
        if median_side < config.min_face_px:
            return FaceTooSmall(
                f"{source}: face is {median_side:.0f} px (median box side), "
                f"at least {config.min_face_px} needed"
            )
        return None

    def track(self, part: LinkedPart, last_row: int | None = None) -> FaceTrack:
        """The part's track over rows [first_row, last_row] (default: the part's own last row): linear
        interpolation between its faces (constant beyond its first and last), then temporal smoothing.

        A row's box only depends on the faces found within the smoothing radius (``smoothing_radius``
        rows) of it and the next face after those, so it is final once a face has been found at least
        that far ahead, whatever the part's last row turns out to be; ``track_and_crop_parts`` relies
        on this."""
        config = self.config
        last_row = part.last_row if last_row is None else last_row
        frame_index = self.frame_index[part.first_row : last_row + 1]
        found_at, centers, sides = (
            np.array(part.found_at, np.int64),
            np.array(part.centers),
            np.array(part.sides),
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
            frame_hw=self.frame_hw,
        )

    def finish(self) -> list[TrackPart]:
        """The parts after the last MTCNN frame, covering the segment's frames in order (crops None).
        Raises NoFace (no face at all), MultipleFaces, or the longest part's reason when none is usable;
        sets ``breaks``."""
        config, source, sampled = self.config, self.source, len(self.sampled_at)
        if not self.parts:
            raise NoFace(f"{source}: no face found in {sampled} sampled frame(s)")
        if self.other_frames > config.max_other_face_fraction * sampled:
            raise MultipleFaces(
                f"{source}: another person's face in {self.other_frames} of {sampled} sampled frame(s)"
            )
        last_row = len(self.frame_index) - 1
        if self.open:  # the last part reaches to the segment's end over a short gap
            last_found = self.parts[-1].found_at[-1]
            self._close(
                last_row
                if self.frame_index[-1] - last_found <= config.max_gap_frames
                else self.row(last_found)
            )
        parts, next_row = [], 0
        for part in self.parts:
            if part.first_row > next_row:
                parts.append(self._gap(next_row, part.first_row - 1))
            frames = self.frame_index[part.first_row : part.last_row + 1]
            parts.append(TrackPart(frames, None if part.rejected else self.track(part), None, part.rejected))
            next_row = part.last_row + 1
        if next_row <= last_row:
            parts.append(self._gap(next_row, last_row))
        if all(p.rejected for p in parts):
            raise max(parts, key=lambda p: len(p.frame_index)).rejected
        self.breaks = self._breaks()
        return parts

    def _gap(self, first_row: int, last_row: int) -> TrackPart:
        frames = self.frame_index[first_row : last_row + 1]
        rejected = NoFace(f"{self.source} frames {frames[0]}-{frames[-1]}: no face tracked there")
        return TrackPart(frames, None, None, rejected)

    def _breaks(self) -> list[TrackLost]:
        """Where the track is cut: jumps, and gaps over max_gap_frames (also at the segment's ends)."""
        limit = self.config.max_gap_frames

        def lost(gap: int) -> TrackLost:
            return TrackLost(f"{self.source}: face lost for {gap} frames (limit {limit})")

        first, last = self.parts[0], self.parts[-1]
        breaks = [lost(int(first.found_at[0] - self.frame_index[0]))] if first.first_row > 0 else []
        for part, following in zip(self.parts, self.parts[1:]):
            breaks.append(part.jump or lost(following.found_at[0] - part.found_at[-1]))
        if last.last_row < len(self.frame_index) - 1:
            breaks.append(lost(int(self.frame_index[-1] - last.found_at[-1])))
        return breaks


def smoothing_radius(config: FaceTrackConfig) -> int:
    """Kept frames on each side that the temporal smoothing reads (``gaussian_filter1d``, truncate 4)."""
    return int(4.0 * config.smooth_sigma_frames + 0.5) if config.smooth_sigma_frames > 0 else 0


def one_track(parts: list[TrackPart], breaks: list[TrackLost]) -> TrackPart:
    """The one part of an uncut track; a cut track raises its first cut (TrackLost)."""
    if len(parts) > 1:
        raise breaks[0]
    return parts[0]


def _link_detections(
    frame_index: np.ndarray,
    detections: Detections,
    frame_hw: tuple[int, int],
    config: FaceTrackConfig,
    source: str,
    min_frames: int,
) -> tuple[list[TrackPart], list[TrackLost]]:
    linker = TrackLinker(config, source, np.asarray(frame_index, np.int64), frame_hw, min_frames)
    for t, boxes, probs in zip(detections.frame_index, detections.boxes_px, detections.probs):
        linker.add(int(t), boxes, probs)
    return linker.finish(), linker.breaks


def track_parts_from_detections(
    frame_index: np.ndarray,
    detections: Detections,
    frame_hw: tuple[int, int],
    config: FaceTrackConfig = FaceTrackConfig(),
    source: str = "video",
    min_frames: int = DecodeConfig.min_frames,
) -> list[TrackPart]:
    """Links per-frame detections into track parts over all kept frames (pure; no decoding, no crops).

    frame_index (T,) int64: the kept frames; detections on a subset of them, ascending. Nothing looks
    between two detections at a jump here, so the frames between them form a rejected part. Raises
    NoFace, MultipleFaces, or the longest part's reason when no part is usable.
    """
    return _link_detections(frame_index, detections, frame_hw, config, source, min_frames)[0]


def track_from_detections(
    frame_index: np.ndarray,
    detections: Detections,
    frame_hw: tuple[int, int],
    config: FaceTrackConfig = FaceTrackConfig(),
    source: str = "video",
) -> FaceTrack:
    """One face track over all kept frames from per-frame detections (pure; no decoding).

    frame_index (T,) int64: the kept frames; detections on a subset of them. Box centres are in
    pixel-centre coordinates (model/face3d/camera.py). Raises NoFace, MultipleFaces, FaceTooSmall, and
    TrackLost for a track that jumps or loses the face for longer than max_gap_frames.
    """
    parts, breaks = _link_detections(
        frame_index, detections, frame_hw, config, source, DecodeConfig.min_frames
    )
    return one_track(parts, breaks).track
