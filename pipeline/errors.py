"""Domain exceptions for data problems: one bad video is recorded with a short reason, the job goes on.

Stage wrappers catch ``VideoRejected`` (and only it, plus decoding errors they translate into it) and
record ``err.reason`` (a stable short code used in the per-video table and the run summary) and
``str(err)`` (a sentence for people).
"""

from __future__ import annotations


class VideoRejected(Exception):
    """A video (or image) cannot be used; ``reason`` is a short stable code such as ``"no_face"``."""

    reason = "rejected"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class UnreadableVideo(VideoRejected):
    reason = "unreadable"


class TooShort(VideoRejected):
    reason = "too_short"


class NoFace(VideoRejected):
    reason = "no_face"


class MultipleFaces(VideoRejected):
    reason = "multiple_faces"


class FaceTooSmall(VideoRejected):
    reason = "face_too_small"


class TrackLost(VideoRejected):
    """The face track jumps between frames (a cut, another person) or is lost for too long, where one
    track is wanted (reconstruction); the preprocessing job cuts such a track into parts instead."""

    reason = "track_jump"


class FitDiverged(VideoRejected):
    reason = "fit_diverged"
