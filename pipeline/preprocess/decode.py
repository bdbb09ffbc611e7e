"""Video (and image) decoding with decord: container info, frames in bounded-memory chunks, sampling.

Frames are ``(N, H, W, 3) uint8`` RGB, indexed by their position in the video (``frame_index (N,)
int64``). A still image is a one-frame input (``fps = 0.0``), so photos go through the same face
tracking and landmark stages as videos. Inputs that cannot be decoded (missing, zero bytes, not a
video) raise ``UnreadableVideo``; videos shorter than ``DecodeConfig.min_frames`` raise ``TooShort``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from pipeline.errors import TooShort, UnreadableVideo

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How frames are read.

    chunk_frames: frames decoded per chunk; bounds memory at chunk_frames * H * W * 3 bytes.
    max_frames: keep at most this many frames (after ``stride``) from the start; None keeps all.
    segment_frames: the preprocessing job splits the kept frames of a longer video into consecutive
        segments of at most this many frames, each tracked, fitted and written as its own unit, which
        bounds a worker's memory (about 0.5 GB per 900 frames at 256 px); None: one segment.
    stride: keep every stride-th frame (1 keeps all).
    min_frames: a video with fewer frames (after stride and max_frames) is rejected as too short; a
        still image is always one frame and exempt.
    num_threads: decoder threads (0 lets FFmpeg decide).
    """

    chunk_frames: int = 64
    max_frames: int | None = None
    segment_frames: int | None = 900
    stride: int = 1
    min_frames: int = 8
    num_threads: int = 1


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a container holds: ``num_frames`` decodable frames of ``height x width`` at ``fps``."""

    path: str
    num_frames: int
    fps: float
    height: int
    width: int
    is_image: bool


def _check_file(path: Path) -> None:
    if not path.exists():
        raise UnreadableVideo(f"{path}: no such file")
    if not path.is_file():
        raise UnreadableVideo(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise UnreadableVideo(f"{path}: file is empty (0 bytes)")


def _load_image(path: Path) -> np.ndarray:
    """One still image as (H, W, 3) uint8 RGB (grey and RGBA images are converted)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UnreadableVideo(f"{path}: not a readable image (cv2.imread failed)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _open_video(path: Path, num_threads: int):
    # decord brings its own zlib; cv2, imported at the top of this module, must be loaded first or OpenCV's
    # PNG codec binds to decord's zlib and cannot decode PNGs ("libpng error: bad parameters to zlib").
    import decord

    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
    except Exception as err:  # decord raises its own DECORDError and RuntimeError for bad containers
        raise UnreadableVideo(f"{path}: not a decodable video ({type(err).__name__}: {err})") from err
    if len(reader) == 0:
        raise UnreadableVideo(f"{path}: video has no frames")
    return reader


def is_image_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def video_info(path: str | Path, config: DecodeConfig = DecodeConfig()) -> VideoInfo:
    """Reads the container header (and the first frame's size) of a video or image."""
    path = Path(path)
    _check_file(path)
    if is_image_path(path):
        height, width = _load_image(path).shape[:2]
        return VideoInfo(str(path), 1, 0.0, height, width, True)
    reader = _open_video(path, config.num_threads)
    height, width = reader[0].shape[:2]
    fps = float(reader.get_avg_fps())
    return VideoInfo(str(path), len(reader), fps, int(height), int(width), False)


def sample_frame_indices(num_frames: int, config: DecodeConfig = DecodeConfig()) -> np.ndarray:
    """The frames ``config`` keeps from a video of ``num_frames``: frame_index (N,) int64, ascending."""
    assert config.stride >= 1, f"stride must be >= 1, got {config.stride}"
    indices = np.arange(0, num_frames, config.stride, dtype=np.int64)
    if config.max_frames is not None:
        indices = indices[: config.max_frames]
    return indices


def split_segments(frame_index: np.ndarray, segment_frames: int | None) -> list[np.ndarray]:
    """Consecutive segments of at most ``segment_frames`` kept frames, as equal in length as possible
    (so that no short remainder is left): frame_index (T,) -> [(T_1,), ..., (T_n,)], n = ceil(T / max).
    """
    if segment_frames is None or len(frame_index) <= segment_frames:
        return [np.asarray(frame_index)]
    assert segment_frames >= 1, f"segment_frames must be >= 1, got {segment_frames}"
    return np.array_split(np.asarray(frame_index), -(-len(frame_index) // segment_frames))


def read_frames(
    path: str | Path, frame_index: Sequence[int], config: DecodeConfig = DecodeConfig()
) -> np.ndarray:
    """Decodes the given frames at once, by random access: frame_index (N,) -> frames (N, H, W, 3) uint8
    RGB.

    For a few frames (and the obvious reference for ``iter_frames``' streaming in the tests); stream
    whole videos with ``iter_frames``.
    """
    path = Path(path)
    _check_file(path)
    frame_index = np.asarray(frame_index, dtype=np.int64)
    if is_image_path(path):
        if np.any(frame_index != 0):
            raise ValueError(f"{path}: an image has only frame 0, asked for {frame_index.tolist()}")
        return np.repeat(_load_image(path)[None], len(frame_index), axis=0)
    reader = _open_video(path, config.num_threads)
    if len(frame_index) and (frame_index.min() < 0 or frame_index.max() >= len(reader)):
        raise ValueError(f"{path}: frame indices outside [0, {len(reader)})")
    try:
        return reader.get_batch(frame_index.tolist()).asnumpy()
    except Exception as err:
        raise UnreadableVideo(f"{path}: decoding failed ({type(err).__name__}: {err})") from err


def iter_frames(
    path: str | Path,
    config: DecodeConfig = DecodeConfig(),
    frame_index: np.ndarray | None = None,
    info: VideoInfo | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Streams the kept frames in chunks: yields (frame_index (N,) int64, frames (N, H, W, 3) uint8 RGB).

    frame_index: which frames to stream (ascending, e.g. one segment); None: all kept frames.
    info: ``video_info(path)`` when the caller has it (saves reading the header and first frame again).
    At most ``config.chunk_frames`` frames are in memory per chunk. Raises ``UnreadableVideo`` before
    the first chunk for undecodable inputs and ``TooShort`` for videos with fewer than
    ``config.min_frames`` kept frames.
    """
    path = Path(path)
    info = info or video_info(path, config)
    if info.is_image:
        yield np.zeros(1, np.int64), _load_image(path)[None]
        return
    indices = check_length(info, config) if frame_index is None else np.asarray(frame_index, np.int64)
    reader = _open_video(path, config.num_threads)
    for start in range(0, len(indices), config.chunk_frames):
        chunk = indices[start : start + config.chunk_frames]
        try:
            frames = _decode_chunk(reader, chunk)
        except Exception as err:
            raise UnreadableVideo(f"{path}: decoding failed at frame {chunk[0]} ({err})") from err
        yield chunk, frames


def _decode_chunk(reader, chunk: np.ndarray) -> np.ndarray:
    """Frames ``chunk`` (N,) ascending of an open decord reader -> (N, H, W, 3) uint8.

    Consecutive frames are read one by one: decord then decodes the next frame without seeking, which
    costs less CPU than ``get_batch`` for the same frames (its batch path checks and seeks per frame;
    docs/preprocessing.md); sparse frames go through ``get_batch``, which is cheaper there. Same pixels
    either way.
    """
    if len(chunk) > 1 and np.all(np.diff(chunk) == 1):
        first = reader[int(chunk[0])].asnumpy()
        frames = np.empty((len(chunk), *first.shape), first.dtype)
        frames[0] = first
        for k, index in enumerate(chunk[1:].tolist(), start=1):
            frames[k] = reader[index].asnumpy()
        return frames
    return reader.get_batch(chunk.tolist()).asnumpy()


def check_length(info: VideoInfo, config: DecodeConfig = DecodeConfig()) -> np.ndarray:
    """The kept frame indices of ``info``'s video, raising ``TooShort`` when too few remain."""
    if info.is_image:
        return np.zeros(1, np.int64)
    indices = sample_frame_indices(info.num_frames, config)
    if len(indices) < config.min_frames:
        raise TooShort(f"{info.path}: {len(indices)} frames, at least {config.min_frames} needed")
    return indices
