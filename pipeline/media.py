"""Writing what people look at: H.264 videos (``VideoWriter``, ``write_mp4``), PNGs and image grids.

The one module that writes videos and sample sheets (training previews, reenactment outputs); readers of
our own videos use ``pipeline.preprocess.decode`` (decord).

Videos: H.264 (libx264) in yuv420p with BT.601 limited-range colour, tagged as such (smpte170m), so
ordinary players, browsers and decord decode the colours we encoded; an .mp4 with its index at the front
(``movflags=faststart``) so players start before the whole file has arrived. yuv420p halves the chroma
resolution, so a frame with an odd height or width is padded to even size by repeating its last row or
column: a (H, W) input gives a (H + H % 2, W + W % 2) video. Frames are encoded as they come; memory does
not grow with the video's length. The file is written locally (beside the target under a hidden
``.<name>.tmp-<id>`` name, or in the temp folder for remote URIs) and renamed or uploaded when closed, so
readers never see a partial video.

Audio (``audio_from``, a local path or URI): the first audio stream of a video or audio file, muxed in
step with the frames and cut at the video's end. AAC is copied (cut at packet granularity, 1024
samples); anything else is decoded and re-encoded to AAC, mono or stereo (cut at the exact sample). A
file without audio gives a silent video.

Metadata: container tags such as ``{"title": ..., "comment": ..., "synthetic": "true", "tool": ...}``.
They are written as QuickTime ``mdta`` keys (``movflags=use_metadata_tags``), which keep any key name
(plain mp4 tags keep only a fixed set such as title, comment, description and copyright); PyAV and
ffprobe read them back in ``container.metadata``. ``encoder`` is always FFmpeg's own ("Lavf...").
"""

from __future__ import annotations

import fractions
import os
import tempfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import av
import cv2
import numpy as np
from av.video.reformatter import Colorspace

from infra import storage
from pipeline import schema

VIDEO_CODEC = "libx264"
AUDIO_CODEC = "aac"
PIXEL_FORMAT = "yuv420p"
# ITU-T H.273 code points for BT.601 525-line ("smpte170m"): the matrix swscale uses by default.
_SMPTE170M = 6
_LIMITED_RANGE = 1  # AVCOL_RANGE_MPEG: Y in [16, 235]


def to_uint8(image: Any, value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """An image as uint8 with its layout unchanged: (H, W), (H, W, 1) or (H, W, 3) -> same shape uint8.

    uint8 is returned as is, bool becomes 0/255, floats map ``value_range`` linearly onto [0, 255]
    (clipped, rounded): (0, 1) for images and masks, (-1, 1) for generator outputs.
    """
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"images are uint8, bool or float, got {array.dtype}")
    low, high = value_range
    scaled = (array.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def generator_images(images: Any) -> np.ndarray:
    """Generator-style images to uint8 frames: a tensor (..., 3, H, W) in [-1, 1] -> (..., H, W, 3) uint8."""
    array = images.detach().float().cpu().numpy()
    return to_uint8(np.moveaxis(array, -3, -1), (-1.0, 1.0))


def _rgb(tile: Any, value_range: tuple[float, float]) -> np.ndarray:
    """(h, w), (h, w, 1) or (h, w, 3) -> (h, w, 3) uint8."""
    array = to_uint8(tile, value_range)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"an image is (h, w), (h, w, 1) or (h, w, 3), got {array.shape}")
    return array


def write_png(uri: str, image: Any, value_range: tuple[float, float] = (0.0, 1.0)) -> None:
    """Writes an image (H, W, 3) RGB or (H, W) grey (uint8, bool or float: ``to_uint8``) as a lossless PNG
    to a local path or URI, atomically (``storage.write_bytes``)."""
    array = to_uint8(image, value_range)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    storage.write_bytes(uri, schema.encode_png(array))


def image_grid(
    rows: Sequence[Sequence[Any]],
    pad_px: int = 2,
    labels: Sequence[str] | None = None,
    value_range: tuple[float, float] = (0.0, 1.0),
    pad_value: int = 255,
) -> np.ndarray:
    """A sample sheet: row-major tiles of one size (h, w) on a ``pad_value`` background -> (H, W, 3) uint8.

    ``rows[r][c]`` is an image (h, w, 3) RGB or (h, w) / (h, w, 1) grey; uint8, bool (0/255) or float
    mapped from ``value_range`` (``to_uint8``). Rows may be shorter than the longest (blank tiles). With
    ``C`` columns, ``R`` rows and ``p = pad_px``, tile (r, c) has its top-left corner at
    ``(y, x) = (top + p + r * (h + p), p + c * (w + p))``, where ``top`` is 0 without labels, else the
    height of a band above the grid holding ``labels[c]`` centred over column c (cv2 Hershey font, scaled
    to fit the tile width). The sheet is ``(top + p + R * (h + p), p + C * (w + p), 3)``.
    """
    tiles = [[_rgb(tile, value_range) for tile in row] for row in rows]
    shapes = {tile.shape for row in tiles for tile in row}
    if len(shapes) != 1:
        raise ValueError(f"grid tiles must share one size, got {sorted(shapes)}")
    h, w, _ = shapes.pop()
    n_rows, n_cols = len(tiles), max(len(row) for row in tiles)
    labels = list(labels or [])
    if len(labels) > n_cols:
        raise ValueError(f"{len(labels)} labels for {n_cols} columns")
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1
    top, scale = 0, 1.0
    if labels:
        widest = max(cv2.getTextSize(text, font, 1.0, thickness)[0][0] for text in labels) or 1
        scale = float(np.clip((w - 2) / widest, 0.3, 1.0))
        (_, text_h), baseline = cv2.getTextSize("Ag", font, scale, thickness)
        top = text_h + baseline + 2 * pad_px
    sheet = np.full(
        (top + pad_px + n_rows * (h + pad_px), pad_px + n_cols * (w + pad_px), 3), pad_value, np.uint8
    )
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            y, x = top + pad_px + r * (h + pad_px), pad_px + c * (w + pad_px)
            sheet[y : y + h, x : x + w] = tile
    colour = (0, 0, 0) if pad_value >= 128 else (255, 255, 255)
    for c, text in enumerate(labels):
        (text_w, _), baseline = cv2.getTextSize(text, font, scale, thickness)
        x = pad_px + c * (w + pad_px) + max(0, (w - text_w) // 2)
        cv2.putText(
            sheet, text, (x, top - baseline - pad_px // 2), font, scale, colour, thickness, cv2.LINE_AA
        )
    return sheet


def _fps_fraction(fps: float | fractions.Fraction) -> fractions.Fraction:
    """fps as an exact fraction: 25 -> 25/1, 29.97002997 (30000/1001 as a float) -> 30000/1001."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return fractions.Fraction(fps).limit_denominator(1001)


def _even(frame: np.ndarray) -> np.ndarray:
    """Pads an odd height/width by repeating the last row/column (yuv420p needs even sizes)."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    return frame


class _AudioSource:
    """The first audio stream of a file, muxed into ``output`` up to a time: copied (AAC) or re-encoded."""

    def __init__(self, path: str, output: Any):
        self.input = av.open(path)
        self.stream = self.input.streams.audio[0] if self.input.streams.audio else None
        self.done = self.stream is None
        if self.done:
            self.input.close()
            return
        self.copy = self.stream.codec_context.name == AUDIO_CODEC
        if self.copy:
            self.output = output.add_stream_from_template(self.stream)
        else:
            self.output = output.add_stream(AUDIO_CODEC, rate=self.stream.codec_context.sample_rate)
            # A named layout (AAC rejects "unspecified order" ones, as WAV files often have): mono stays
            # mono, anything else is mixed down to stereo.
            self.output.layout = "mono" if self.stream.codec_context.channels == 1 else "stereo"
            self.resampler = av.AudioResampler(
                format="fltp", layout=self.output.layout, rate=self.output.rate
            )
        self.items = iter(self._items())
        self.pending: Any = None  # a packet or decoded frame read past the last limit

    def _items(self) -> Iterable[Any]:
        """Packets (copy) or fltp frames (re-encode) in order, each with ``pts`` and ``time_base``."""
        for packet in self.input.demux(self.stream):
            if packet.dts is None:  # the demuxer's final flush packet
                continue
            if self.copy:
                yield packet
            else:
                for frame in packet.decode():
                    yield from self.resampler.resample(frame)

    def mux_until(self, container: Any, end_s: float, final: bool = False) -> None:
        """Muxes the audio up to ``end_s``: packets that start before it (copy), decoded frames that end
        by it (re-encode). ``final``: ``end_s`` is the video's end; the frame across it is cut there, the
        encoder flushed and the input closed."""
        if self.done:
            return
        while True:
            item = self.pending if self.pending is not None else next(self.items, None)
            self.pending = None
            if item is None:
                break
            start_s = float(item.pts * item.time_base) if item.pts is not None else 0.0
            end_item_s = start_s if self.copy else start_s + item.samples / item.sample_rate
            if start_s >= end_s or (end_item_s > end_s and not final):
                self.pending = item
                break
            if self.copy:
                item.stream = self.output
                container.mux(item)
            else:
                container.mux(self.output.encode(self._cut(item, end_s - start_s)))
        if final:
            if not self.copy:
                container.mux(self.output.encode(None))
            self.input.close()
            self.done = True

    def _cut(self, frame: Any, keep_s: float) -> Any:
        """An fltp frame cut to its first ``keep_s`` seconds."""
        keep = int(round(keep_s * frame.sample_rate))
        if keep >= frame.samples:
            return frame
        cut = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(frame.to_ndarray()[:, :keep]), format="fltp", layout=frame.layout.name
        )
        cut.sample_rate, cut.pts, cut.time_base = frame.sample_rate, frame.pts, frame.time_base
        return cut


class VideoWriter:
    """Streams RGB frames into an H.264 mp4 at a local path or URI (module docstring for the format).

    ``with VideoWriter(uri, fps=25) as video: video.write(frame)`` writes each (H, W, 3) uint8 RGB frame
    as it comes; leaving the block normally closes the file (renamed or uploaded into place), an exception
    drops it. All frames have the first frame's size. ``crf``/``preset``: libx264's quality (0 lossless,
    18 visually lossless, 23 its default) and speed/size trade-off.
    """

    def __init__(
        self,
        uri: str,
        fps: float | fractions.Fraction,
        *,
        audio_from: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        crf: int = 18,
        preset: str = "medium",
    ):
        self.uri = uri
        self.fps = _fps_fraction(fps)
        self.frames_written = 0
        self.size: tuple[int, int] | None = None  # (H, W) of the input frames
        self._crf, self._preset = crf, preset
        self._audio_from, self._audio_copy = self._local_audio(audio_from)
        if storage.is_local(uri):
            folder, name = os.path.split(storage.normalise(uri))
            os.makedirs(folder or ".", exist_ok=True)
            self._local = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
        else:
            handle, self._local = tempfile.mkstemp(suffix=".mp4")
            os.close(handle)
        options = {"movflags": "+faststart+use_metadata_tags"}
        self._container = av.open(self._local, "w", format="mp4", options=options)
        self._container.metadata.update({str(k): str(v) for k, v in (metadata or {}).items()})
        self._video: Any = None
        self._audio: _AudioSource | None = None
        self._closed = False

    @staticmethod
    def _local_audio(audio_from: str | None) -> tuple[str | None, str | None]:
        """(a local path FFmpeg can open, the temporary copy of a remote file to remove at the end)."""
        if audio_from is None:
            return None, None
        if storage.is_local(audio_from):
            path = storage.normalise(audio_from)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"audio_from={audio_from}: no such file")
            return path, None
        handle, copy = tempfile.mkstemp(suffix=os.path.splitext(audio_from)[1])
        with os.fdopen(handle, "wb") as f:
            f.write(storage.read_bytes(audio_from))
        return copy, copy

    @property
    def has_audio(self) -> bool:
        """True when the video has an audio stream (``audio_from`` had one); known after the first frame."""
        return self._audio is not None and self._audio.stream is not None

    def _open_streams(self, height: int, width: int) -> None:
        """Adds the streams (the container's header is written at the first packet, after this)."""
        self.size = (height, width)
        stream = self._container.add_stream(VIDEO_CODEC, rate=self.fps)
        stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, PIXEL_FORMAT
        stream.options = {"crf": str(self._crf), "preset": self._preset}
        codec = stream.codec_context
        codec.colorspace = codec.color_primaries = codec.color_trc = _SMPTE170M
        codec.color_range = _LIMITED_RANGE
        self._video = stream
        if self._audio_from is not None:
            self._audio = _AudioSource(self._audio_from, self._container)

    def write(self, frame: np.ndarray) -> None:
        """Encodes one frame (H, W, 3) uint8 RGB."""
        if self._closed:
            raise ValueError(f"{storage.redact(self.uri)}: write after close")
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"video frames are (H, W, 3) uint8 RGB, got {frame.dtype} {frame.shape}")
        if self._video is None:
            self._open_streams(*frame.shape[:2])
        elif frame.shape[:2] != self.size:
            raise ValueError(f"frame {self.frames_written} is {frame.shape[:2]}, the video is {self.size}")
        image = av.VideoFrame.from_ndarray(np.ascontiguousarray(_even(frame)), format="rgb24")
        image = image.reformat(format=PIXEL_FORMAT, dst_colorspace=Colorspace.ITU601)
        image.pts, image.time_base = self.frames_written, 1 / self.fps
        self._container.mux(self._video.encode(image))
        self.frames_written += 1
        if self._audio is not None:
            self._audio.mux_until(self._container, self.frames_written / self.fps)

    def close(self) -> str:
        """Finishes the file and moves (or uploads) it to ``uri``; returns ``uri``."""
        if self._closed:
            return self.uri
        if self.frames_written == 0:
            self.abort()
            raise ValueError(f"{storage.redact(self.uri)}: a video needs at least one frame")
        try:
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._audio.mux_until(self._container, self.frames_written / self.fps, final=True)
            self._container.close()
            self._closed = True
            if storage.is_local(self.uri):
                os.replace(self._local, storage.normalise(self.uri))
            else:
                fs, path = storage.filesystem(self.uri)
                fs.put_file(self._local, path)  # one PUT (or a multipart upload completed at once)
        finally:
            self.abort()
        return self.uri

    def abort(self) -> None:
        """Drops the partial file (no-op once closed and moved)."""
        self._closed = True
        try:
            self._container.close()
        except Exception:  # a broken half-written container has nothing left to keep
            pass
        if self._audio is not None and not self._audio.done:
            self._audio.input.close()
        for path in (self._local, self._audio_copy):
            if path is not None and os.path.exists(path):
                os.remove(path)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def write_mp4(
    uri: str,
    frames: Iterable[np.ndarray] | np.ndarray,
    fps: float | fractions.Fraction,
    audio_from: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    *,
    crf: int = 18,
    preset: str = "medium",
) -> str:
    """Writes frames (an iterable of (H, W, 3) uint8 RGB, or an array (T, H, W, 3)) as an H.264 mp4 at a
    local path or URI (``VideoWriter``; the module docstring has the format). Returns ``uri``."""
    with VideoWriter(uri, fps, audio_from=audio_from, metadata=metadata, crf=crf, preset=preset) as video:
        for frame in frames:
            video.write(frame)
    return uri
