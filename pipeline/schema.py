"""The preprocessing output's one definition: layout under the output URI, frame and per-video columns.

Layout (``OUT`` is the job's ``--output`` URI; docs/preprocessing.md explains it for readers, and a test
keeps that page in step with this module):

    OUT/config.yaml                    resolved config of the last run
    OUT/summary.json                   run summary (units ok / failed by reason, frames, frames/s)
    OUT/videos.parquet                 per-unit table: one ``VideoRecord`` per unit, ok or failed
    OUT/shards/<video_id>.parquet      frame shard of one unit (one row per kept frame, in order)
    OUT/records/<video_id>.json        the unit's ``VideoRecord``; written last, it marks the unit done
    OUT/contact_sheets/<video_id>.png  crop + landmarks | NMFC | mask | flow, a few frames

Units: a video's kept frames are cut into consecutive segments of at most ``decode.segment_frames``
frames (memory stays bounded whatever the video's length), and a segment's face track is cut where it
jumps (a cut, another person) or the face is lost for long into track parts (the frames between two parts
are a failed part of their own, so the parts cover the segment once). Each (segment, part) is a unit with
its own 3DMM fit, shard and record, ``video_id = <source video id>[_segNNN][_partNN]`` (suffixes only
where a video has several); ``frame_index`` stays the index in the source video, so a clip sampled inside
one unit never spans a jump or a segment border. A rerun counts a video as done when every part of every
segment has a record.

Why one shard per unit with one row per frame: training samples T consecutive frames of one unit, a
contiguous row range of one file (row groups of ``ROW_GROUP_FRAMES`` frames keep such reads small);
per-clip rows would store every frame T times over. A shard is written in one atomic put (S3) or rename
(local), so readers never see a partial shard; its record is written after it, so a rerun redoes exactly
the units without a record for the current config hash, overwriting any shard a crash left behind (same
name, same content): no duplicate rows.

Frame images decode with ``decode_image``, flow with ``decode_flow``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import struct
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

ROW_GROUP_FRAMES = 64
SHARDS_DIR = "shards"
RECORDS_DIR = "records"
CONTACT_SHEETS_DIR = "contact_sheets"
VIDEOS_TABLE = "videos.parquet"
SUMMARY = "summary.json"
CONFIG = "config.yaml"

# Columns of an input manifest (CSV or Parquet): the video's path or URI, an optional identity, and an
# optional licence or consent note that travels with the video's units into the people's models.
MANIFEST_PATH = "path"
MANIFEST_IDENTITY = "identity"
MANIFEST_NOTE = "note"

STATUS_OK = "ok"
STATUS_FAILED = "failed"

# Frame shard columns (one row per kept frame; S = crop size).
IDENTITY = "identity"  # string: identity label (manifest, or the file stem)
VIDEO_ID = "video_id"  # string: the unit's id (see the module docstring)
FRAME_INDEX = "frame_index"  # int32: index of the frame in the source video
RGB = "rgb"  # binary: face crop, JPEG or PNG (config output.rgb_format), S x S x 3
NMFC = "nmfc"  # binary: NMFC image (Eq. 3), lossless 8-bit RGB PNG
MASK = "mask"  # binary: foreground mask, PNG, 0/255 grey
FLOW = "flow"  # binary: flow to the next frame, float16 (S, S, 2) little-endian (zeros for the last)
LANDMARKS_PX = "landmarks_px"  # 68 (x, y) landmarks in crop pixels (model/face3d/camera.py)
EXPRESSION = "expression"  # 3DMM expression coefficients of the frame (N_exp,)
CAMERA = "camera"  # (pitch, yaw, roll, tx, ty, tz, scale), crop pixels (model/face3d/camera.py)
MOUTH_BOX_PX = "mouth_box_px"  # mouth crop (x0, y0, x1, y1) for the mouth discriminator
LANDMARK_CONFIDENCE = "landmark_confidence"  # float32 in [0, 1]: the landmark backend's face-presence score

FRAME_SCHEMA = pa.schema(
    [
        (IDENTITY, pa.string()),
        (VIDEO_ID, pa.string()),
        (FRAME_INDEX, pa.int32()),
        (RGB, pa.binary()),
        (NMFC, pa.binary()),
        (MASK, pa.binary()),
        (FLOW, pa.binary()),
        (LANDMARKS_PX, pa.list_(pa.float32(), 136)),
        (EXPRESSION, pa.list_(pa.float32())),
        (CAMERA, pa.list_(pa.float32(), 7)),
        (MOUTH_BOX_PX, pa.list_(pa.int32(), 4)),
        (LANDMARK_CONFIDENCE, pa.float32()),
    ]
)

# Frame columns written without Parquet compression (the rest use zstd): PNG/JPEG bytes are compressed
# already, and zstd shrinks float16 flow too little for its CPU cost (numbers in docs/preprocessing.md),
# so flow is stored raw and readers skip the decompression.
UNCOMPRESSED_COLUMNS = (RGB, NMFC, MASK, FLOW)


def _leaf_path(field: pa.Field) -> str:
    """A column's Parquet leaf path, the key of ``pq.write_table``'s per-column options."""
    nested = pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type)
    return f"{field.name}.list.element" if nested else field.name


FRAME_COMPRESSION = {
    _leaf_path(field): "none" if field.name in UNCOMPRESSED_COLUMNS else "zstd" for field in FRAME_SCHEMA
}


def _column(arrow_type: pa.DataType, default: Any) -> Any:
    """A ``VideoRecord`` field stored as ``arrow_type`` in videos.parquet."""
    return dataclasses.field(default=default, metadata={"arrow": arrow_type})


@dataclasses.dataclass(frozen=True)
class VideoRecord:
    """One unit's row of the per-video table (``videos.parquet``) and its ``records/<video_id>.json``.

    Failed units have ``status = STATUS_FAILED``, a short ``reason`` (a ``pipeline.errors`` code, or
    ``error_<stage>`` for an unexpected error, retried by the next run) and a ``message`` for people; their
    frame outputs are empty.
    """

    video_id: str = _column(pa.string(), "")  # the unit's id
    source_video_id: str = _column(pa.string(), "")  # the video the unit comes from
    segment: int = _column(pa.int32(), 0)  # 0-based length segment of the video
    segments: int = _column(pa.int32(), 1)  # segments the video was cut into (1 unless it is long)
    track_part: int = _column(pa.int32(), 0)  # 0-based part of the segment's face track
    track_parts: int = _column(pa.int32(), 1)  # parts of the segment's track (failed parts included)
    first_frame_index: int = _column(pa.int32(), -1)  # first source frame of the unit (-1: none)
    last_frame_index: int = _column(pa.int32(), -1)  # last source frame of the unit (-1: none)
    identity: str = _column(pa.string(), "")
    source: str = _column(pa.string(), "")  # source URI, credentials redacted
    note: str = _column(pa.string(), "")  # the manifest's licence or consent note for the video
    status: str = _column(pa.string(), STATUS_OK)
    reason: str = _column(pa.string(), "")  # short code for failures ("no_face", ...), "" when ok
    message: str = _column(pa.string(), "")  # a sentence for people
    frame_count: int = _column(pa.int32(), 0)  # frames in the source video
    kept_frames: int = _column(pa.int32(), 0)  # rows in the shard
    # Frames left out of the shard because their landmarks were unreliable (landmarks.min_presence): a gap
    # in frame_index, which training clips never span.
    dropped_frames: int = _column(pa.int32(), 0)
    fps: float = _column(pa.float32(), 0.0)
    width: int = _column(pa.int32(), 0)
    height: int = _column(pa.int32(), 0)
    crop_size: int = _column(pa.int32(), 0)
    identity_coefficients: tuple[float, ...] = _column(pa.list_(pa.float32()), ())  # 3DMM identity (N_id,)
    landmark_error_iod: float = _column(pa.float32(), 0.0)  # mean fit error, fraction of the eye distance
    fit_converged: bool = _column(pa.bool_(), False)
    config_hash: str = _column(pa.string(), "")
    shard: str = _column(pa.string(), "")  # shard path relative to the output URI, "" when failed
    seconds: float = _column(pa.float32(), 0.0)  # processing time of the unit, all stages
    stage_seconds: str = _column(pa.string(), "{}")  # JSON {stage: wall-clock seconds}
    stage_cpu_seconds: str = _column(pa.string(), "{}")  # JSON {stage: CPU seconds}
    started_at: float = _column(pa.float64(), 0.0)  # Unix time the unit's first stage began
    finished_at: float = _column(pa.float64(), 0.0)  # Unix time its record was written

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def retried(self) -> bool:
        """Failed by an unexpected error (not a data problem): the next run tries the unit again."""
        return self.reason.startswith("error_")

    def as_dict(self) -> dict[str, Any]:
        """The record as plain JSON-ready data (``identity_coefficients`` a list)."""
        data = dataclasses.asdict(self)
        data[_IDENTITY_COEFFICIENTS] = list(self.identity_coefficients)
        return data

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VideoRecord:
        """A record from a mapping holding (at least) some of its fields; other keys are ignored and
        missing fields take their defaults (records written before a column existed still read)."""
        values = {
            f.name: data[f.name].item() if isinstance(data[f.name], np.generic) else data[f.name]
            for f in dataclasses.fields(cls)
            if data.get(f.name) is not None
        }
        if _IDENTITY_COEFFICIENTS in values:
            values[_IDENTITY_COEFFICIENTS] = tuple(
                float(v) for v in np.asarray(values[_IDENTITY_COEFFICIENTS]).ravel()
            )
        return cls(**values)


_IDENTITY_COEFFICIENTS = "identity_coefficients"
VIDEO_SCHEMA = pa.schema([(f.name, f.metadata["arrow"]) for f in dataclasses.fields(VideoRecord)])


def unit_id(video_id: str, segment: int, segments: int, track_part: int = 0, track_parts: int = 1) -> str:
    """The id of a video's unit: ``<video_id>[_segNNN][_partNN]``, a suffix only where there are several."""
    unit = video_id if segments == 1 else f"{video_id}_seg{segment:03d}"
    return unit if track_parts == 1 else f"{unit}_part{track_part:02d}"


# PNG written here rather than by OpenCV: every row filtered by "up" (the row above; NMFC images and masks
# are flat regions, so most filtered bytes are 0), deflated at level 1 by ISA-L (``isal``) where it is
# installed, else by zlib level 1 with run-length matching (OpenCV's PNG settings). Lossless like any PNG;
# faster to write than OpenCV's encoder for somewhat more bytes, as ISA-L's level 1 finds fewer matches
# than zlib's run-length mode (numbers in docs/preprocessing.md).
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@functools.lru_cache(maxsize=1)
def _deflate() -> Callable[[np.ndarray], bytes]:
    """The PNG compressor: contiguous bytes -> a zlib stream (IDAT's format), ISA-L's level 1 when
    ``isal`` is installed, else zlib's level 1 with run-length matching."""
    try:
        from isal import isal_zlib
    except ImportError:

        def zlib_rle(data: np.ndarray) -> bytes:
            stream = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE)
            return stream.compress(data) + stream.flush()

        return zlib_rle
    return functools.partial(isal_zlib.compress, level=1)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return b"".join(
        [struct.pack(">I", len(data)), kind, data, struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))]
    )


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an image (H, W, 3) uint8 RGB or (H, W) uint8/bool grey (bool as 0/255); lossless,
    8-bit, every row "up"-filtered (see above)."""
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"PNG images are (H, W, 3) or (H, W) uint8, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"PNG encoding needs a non-empty image, got shape {image.shape}")
    rows = np.ascontiguousarray(image).reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = 2  # filter type "up": each byte minus the byte above (0 above the first row)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps modulo 256
    colour_type = 2 if image.ndim == 3 else 0  # truecolour or greyscale
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"".join(
        [
            _PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", _deflate()(filtered)),
            _png_chunk(b"IEND", b""),
        ]
    )


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of an RGB image (H, W, 3) uint8."""
    ok, data = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return data.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    """Inverse of ``encode_png``/``encode_jpeg``: (H, W, 3) uint8 RGB or (H, W) uint8 grey."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not a PNG or JPEG image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def encode_flows(flow: np.ndarray) -> pa.ChunkedArray:
    """Flow fields (T, H, W, 2) float32 -> the ``flow`` column: T float16 little-endian byte strings
    (stored uncompressed, see ``UNCOMPRESSED_COLUMNS``).

    One torch cast for all frames (the same round-to-nearest-even bits as numpy's ``astype(float16)`` at
    a third of its cost); the column's values are views of that one buffer (no per-frame copies), in
    chunks of ``ROW_GROUP_FRAMES`` frames (binary offsets are 32-bit: 2 GiB per chunk).
    """
    import torch

    half = torch.from_numpy(np.ascontiguousarray(flow, np.float32)).half().numpy().astype("<f2", copy=False)
    frame_bytes = half[0].nbytes if len(half) else 0
    chunks = []
    for first in range(0, len(half), ROW_GROUP_FRAMES):
        part = half[first : first + ROW_GROUP_FRAMES]
        offsets = np.arange(len(part) + 1, dtype=np.int32) * frame_bytes
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(part)]
        chunks.append(pa.Array.from_buffers(pa.binary(), len(part), buffers))
    return pa.chunked_array(chunks, pa.binary())


def decode_flow(data: bytes, size: int) -> np.ndarray:
    """Inverse of ``encode_flows`` for one frame of a square crop of ``size`` px: (size, size, 2) float32."""
    return np.frombuffer(data, "<f2").reshape(size, size, 2).astype(np.float32)


def video_complete(records: list[VideoRecord]) -> bool:
    """Whether a video's unit records (any order) cover all its units: every track part of every
    segment, as the records themselves count them (a segment's parts are known once it was tracked)."""
    if not records:
        return False
    seen = {(r.segment, r.track_part) for r in records}
    parts = {r.segment: r.track_parts for r in records}
    segments = records[0].segments
    return all(s in parts and all((s, p) in seen for p in range(parts[s])) for s in range(segments))
