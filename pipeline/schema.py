"""The preprocessing output: layout under the output URI, shard and per-video schemas, encodings.

Layout (``OUT`` is the job's ``--output`` URI):

    OUT/config.yaml                  resolved config of the last run
    OUT/summary.json                 run summary (videos ok / failed by reason, frames, frames/s)
    OUT/videos.parquet               per-video table (one row per video or segment, ok or failed)
    OUT/shards/<video_id>.parquet    frame shard of one video or segment (one row per kept frame, in order)
    OUT/records/<video_id>.json      per-video record; written last, it marks the video as done
    OUT/contact_sheets/<video_id>.png  crop + landmarks | NMFC | mask | flow, a few frames

Long videos: a video with more kept frames than ``decode.segment_frames`` (900 by default) is split into
consecutive segments of near-equal length, each processed as its own unit (its own 3DMM fit, shard and
record) with ``video_id = <video id>_segNNN`` (NNN from 000); ``source_video_id``, ``segment`` and
``segments`` in the per-video table tie the segments to their video, and ``frame_index`` stays the
index in the source video. This bounds a worker's memory whatever the video's length; the price is that
identity coefficients are fitted per segment (``identity_coefficients`` per row of the table). A rerun
counts a video as done only when all its segments have records.

Why one shard per video with one row per frame: training samples K consecutive frames of one video, which
is then a contiguous row range of one file (row groups of ``ROW_GROUP_FRAMES`` frames keep such reads
small), and per-clip rows would store every frame K times over. A shard is written in one atomic put
(S3) or rename (local), so readers never see a partial shard; its record is written after it, so a rerun
redoes exactly the videos without a record for the current config hash, overwriting any shard a crash
left behind (same name, same content): no duplicate rows.

Frame shard columns (``FRAME_SCHEMA``); images decode with ``decode_image``, flow with ``decode_flow``:

| column          | type                        | meaning                                                   |
|-----------------|-----------------------------|-----------------------------------------------------------|
| identity        | string                      | identity label (manifest, or the file stem)              |
| video_id        | string                      | stable id of the video (or segment, ``_segNNN``)         |
| frame_index     | int32                       | index of the frame in the source video                   |
| rgb             | binary                      | face crop, JPEG or PNG (config ``rgb_format``), S x S x 3 |
| nmfc            | binary                      | NMFC image (Eq. 3), PNG, lossless 8-bit RGB               |
| mask            | binary                      | foreground mask, PNG, 0/255 grey                          |
| flow            | binary                      | flow to the next frame, float16 (S, S, 2) little-endian   |
| landmarks_px    | fixed_size_list<float32>[136] | 68 (x, y), crop pixels (model/face3d/camera.py)  |
| expression      | list<float32>               | 3DMM expression coefficients of the frame (N_exp)        |
| camera          | fixed_size_list<float32>[7] | (pitch, yaw, roll, tx, ty, tz, scale), crop pixels        |
| mouth_box_px    | fixed_size_list<int32>[4]   | mouth crop (x0, y0, x1, y1) for the mouth discriminator   |

Per-video table columns: see ``VIDEO_SCHEMA``.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable

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

STATUS_OK = "ok"
STATUS_FAILED = "failed"

FRAME_SCHEMA = pa.schema(
    [
        ("identity", pa.string()),
        ("video_id", pa.string()),
        ("frame_index", pa.int32()),
        ("rgb", pa.binary()),
        ("nmfc", pa.binary()),
        ("mask", pa.binary()),
        ("flow", pa.binary()),
        ("landmarks_px", pa.list_(pa.float32(), 136)),
        ("expression", pa.list_(pa.float32())),
        ("camera", pa.list_(pa.float32(), 7)),
        ("mouth_box_px", pa.list_(pa.int32(), 4)),
    ]
)

# Frame columns written without Parquet compression (the rest use zstd). PNG/JPEG bytes are compressed
# already; zstd shrank the float16 flow by only 11% (measured on a shared clip) for about 1 ms of CPU per
# frame, a tenth of the whole write stage, so flow is stored raw (readers also skip the decompression).
UNCOMPRESSED_COLUMNS = ("rgb", "nmfc", "mask", "flow")


def _leaf_path(field: pa.Field) -> str:
    """A column's Parquet leaf path, the key of ``pq.write_table``'s per-column options."""
    nested = pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type)
    return f"{field.name}.list.element" if nested else field.name


FRAME_COMPRESSION = {
    _leaf_path(field): "none" if field.name in UNCOMPRESSED_COLUMNS else "zstd" for field in FRAME_SCHEMA
}

VIDEO_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),  # the unit's id: the video's, or with a _segNNN suffix for segments
        ("source_video_id", pa.string()),  # the id of the video the unit comes from
        ("segment", pa.int32()),  # 0-based segment number within the video
        ("segments", pa.int32()),  # segments the video was split into (1 unless it is long)
        ("identity", pa.string()),
        ("source", pa.string()),  # source URI (credentials redacted)
        ("status", pa.string()),  # "ok" or "failed"
        ("reason", pa.string()),  # short code for failures ("no_face", ...), "" when ok
        ("message", pa.string()),  # sentence for people
        ("frame_count", pa.int32()),  # frames in the source video
        ("kept_frames", pa.int32()),  # rows in the shard
        ("fps", pa.float32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("crop_size", pa.int32()),
        ("identity_coefficients", pa.list_(pa.float32())),  # 3DMM identity (N_id,)
        ("landmark_error_iod", pa.float32()),  # mean fit error, fraction of inter-ocular distance
        ("fit_converged", pa.bool_()),
        ("config_hash", pa.string()),
        ("shard", pa.string()),  # shard path relative to the output URI, "" when failed
        ("seconds", pa.float32()),  # processing time of the video, all stages
        ("stage_seconds", pa.string()),  # JSON {stage: wall-clock seconds}
        ("stage_cpu_seconds", pa.string()),  # JSON {stage: CPU seconds}
        ("started_at", pa.float64()),  # Unix time the unit's first stage began
        ("finished_at", pa.float64()),  # Unix time its record was written
    ]
)


# PNG written here rather than by OpenCV: every row filtered by "up" (the row above; NMFC images and masks
# are flat regions, so most filtered bytes are 0), deflated at level 1 by ISA-L (``isal``) where it is
# installed, else by zlib with run-length matching (OpenCV's settings before). Lossless like any PNG;
# on this project's 2-vCPU machine a 256 px NMFC image took 0.6 ms instead of OpenCV's 2.2 ms, for 15%
# more bytes (ISA-L's level 1 finds fewer matches than zlib's run-length mode).
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
