"""Preprocessing of one video, stage by stage, without Ray (``pipeline/preprocess/ray_preprocess.py`` wraps
it).

A video travels through the stages as a ``dict`` (a Ray Data row in the distributed job). Each stage
takes the row and returns it with its outputs added; a stage's failure (a ``VideoRejected`` data
problem, or any unexpected error) turns the row into a failed record carrying a short reason, and later
stages pass it through untouched, so one bad video never costs the others.

    video_segments (decode_crop -> landmarks, per segment) -> fit -> render -> masks_flow_write

Long videos: ``video_segments`` splits a video's kept frames into consecutive segments of at most
``decode.segment_frames`` frames (``pipeline.preprocess.decode.split_segments``) and yields one row per
segment;
from there on a segment is a unit of its own (own id ``segment_id``, fit, shard and record), so memory
stays bounded whatever the video's length. A video of one segment keeps its plain video id.

Row keys (``ROW_*``) are defined here and nowhere else; heavy arrays are per frame, T kept frames, crop
size S: crops (T, S, S, 3) uint8, frame_index (T,) int64, face_boxes_px (T, 4), landmarks_px (T, 68, 2),
expression (T, N_exp), camera (T, 7), nmfc (T, S, S, 3) uint8, face_mask (T, S, S) bool,
mouth_box_px (T, 4) int32.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from infra import storage
from model.face3d.loader import MorphableModelConfig
from model.face3d.morphable_model import MorphableModel
from pipeline import schema
from pipeline.errors import VideoRejected
from pipeline.preprocess import shard_writer
from pipeline.preprocess.decode import DecodeConfig, VideoInfo, check_length, split_segments, video_info
from pipeline.preprocess.face_track import FaceTrackConfig, load_detector, track_and_crop
from pipeline.preprocess.fit_3dmm import FitConfig, fit_video
from pipeline.preprocess.flow import FlowConfig, optical_flow
from pipeline.preprocess.landmarks import LandmarkConfig, detect_landmarks, load_landmark_model
from pipeline.preprocess.manifest import VideoSource
from pipeline.preprocess.masks import MaskConfig, foreground_masks, landmark_face_masks
from pipeline.preprocess.nmfc import NmfcConfig, NmfcRenderer

Row = dict

# Keys every row has from the start (all small).
ROW_VIDEO_ID = "video_id"
ROW_IDENTITY = "identity"
ROW_SOURCE = "source"  # redacted URI, for records
ROW_URI = "uri"  # full URI, for reading
ROW_STATUS = "status"
ROW_REASON = "reason"
ROW_MESSAGE = "message"
ROW_SOURCE_VIDEO_ID = "source_video_id"  # the video a segment comes from
ROW_SEGMENT = "segment"  # 0-based segment number
ROW_SEGMENTS = "segments"  # segments of the video
ROW_STAGE_SECONDS = "stage_seconds"  # JSON {stage: wall-clock seconds}
ROW_STAGE_CPU_SECONDS = "stage_cpu_seconds"  # JSON {stage: CPU seconds of the process running it}
ROW_STARTED_AT = "started_at"  # Unix time the unit's first stage began
# Heavy per-frame arrays, dropped from failed rows.
HEAVY_KEYS = (
    "crops",
    "frame_index",
    "face_boxes_px",
    "landmarks_px",
    "expression",
    "camera",
    "nmfc",
    "face_mask",
    "mouth_box_px",
)


@dataclass(frozen=True)
class OutputConfig:
    rgb_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = 95
    contact_sheet_frames: int = 4


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything the preprocessing of one video needs (composed into the job's config)."""

    model: MorphableModelConfig = field(default_factory=MorphableModelConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    track: FaceTrackConfig = field(default_factory=FaceTrackConfig)
    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    render: NmfcConfig = field(default_factory=NmfcConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def load_models(cfg: PreprocessConfig) -> None:
    """Loads the face detector and the landmark model ahead of the first video (an actor's constructor
    calls it), so their ~3 s of imports and weights count as start-up, not as the first video's stage
    time. A missing model file is left for the landmarks stage to report, per video, as before."""
    load_detector()
    with contextlib.suppress(FileNotFoundError):
        load_landmark_model(cfg.landmarks)


def new_row(source: VideoSource) -> Row:
    return {
        ROW_VIDEO_ID: source.video_id,
        ROW_IDENTITY: source.identity,
        ROW_SOURCE: storage.redact(source.uri),
        ROW_URI: source.uri,
        ROW_SOURCE_VIDEO_ID: source.video_id,
        ROW_SEGMENT: 0,
        ROW_SEGMENTS: 1,
        ROW_STATUS: schema.STATUS_OK,
        ROW_REASON: "",
        ROW_MESSAGE: "",
        ROW_STAGE_SECONDS: "{}",
        ROW_STAGE_CPU_SECONDS: "{}",
    }


def _add_seconds(row: Row, key: str, stage: str, seconds: float) -> None:
    spent = json.loads(row.get(key) or "{}")
    spent[stage] = round(spent.get(stage, 0.0) + seconds, 4)
    row[key] = json.dumps(spent)


def guarded(stage: str, fn: Callable[[Row], Row]) -> Callable[[Row], Row]:
    """Runs ``fn`` on ok rows, timing it; turns its failure into a failed row with a reason.

    Records wall-clock and CPU seconds: where processes share cores the wall clock also counts waiting,
    while the process's CPU time (its libraries run on one thread in the job) is the stage's own cost.
    """

    def run(row: Row) -> Row:
        if row[ROW_STATUS] != schema.STATUS_OK:
            return row
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            row = fn(row)
        except VideoRejected as err:
            row = fail(row, err.reason, str(err))
        except Exception as err:  # noqa: BLE001 - any bug in one video must not cost the others
            detail = "".join(traceback.format_exception_only(type(err), err)).strip()
            row = fail(row, f"error_{stage}", f"{stage} failed: {detail}")
        _add_seconds(row, ROW_STAGE_SECONDS, stage, time.perf_counter() - start)
        _add_seconds(row, ROW_STAGE_CPU_SECONDS, stage, time.process_time() - start_cpu)
        return row

    return run


def fail(row: Row, reason: str, message: str) -> Row:
    row = {k: v for k, v in row.items() if k not in HEAVY_KEYS}
    row[ROW_STATUS] = schema.STATUS_FAILED
    row[ROW_REASON] = reason
    row[ROW_MESSAGE] = message
    return row


class LocalCopy:
    """A local file for a URI: the path itself when local, else a temporary download removed on exit."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.tmp: str | None = None

    def __enter__(self) -> str:
        if storage.is_local(self.uri):
            return storage.normalise(self.uri)
        fs, path = storage.filesystem(self.uri)
        suffix = os.path.splitext(path)[1]
        handle, self.tmp = tempfile.mkstemp(suffix=suffix, prefix="h2h-")
        os.close(handle)
        try:
            fs.get(path, self.tmp)
        except FileNotFoundError as err:
            raise VideoRejected(f"{storage.redact(self.uri)}: not found", reason="unreadable") from err
        return self.tmp

    def __exit__(self, *exc) -> None:
        if self.tmp and os.path.exists(self.tmp):
            os.remove(self.tmp)


def segment_id(video_id: str, segment: int, segments: int) -> str:
    """The unit id of segment ``segment`` of ``segments``: the video id itself for a one-segment video."""
    return video_id if segments == 1 else f"{video_id}_seg{segment:03d}"


def video_segments(row: Row, cfg: PreprocessConfig) -> Iterator[Row]:
    """The first stage of a video: yields one row per segment, decoded, tracked, cropped, with landmarks.

    The video is fetched once (``LocalCopy``) for all its segments; only one segment's frames are in
    memory at a time. A video that cannot be opened or is too short yields one failed row.
    """
    row[ROW_STARTED_AT] = time.time()
    if row[ROW_STATUS] != schema.STATUS_OK:
        yield row
        return
    with contextlib.ExitStack() as stack:
        opened: list[tuple[str, VideoInfo, list[np.ndarray]]] = []

        def open_video(r: Row) -> Row:
            path = stack.enter_context(LocalCopy(r[ROW_URI]))
            info = video_info(path, cfg.decode)
            segments = split_segments(check_length(info, cfg.decode), cfg.decode.segment_frames)
            opened.append((path, info, segments))
            r.update(
                fps=float(info.fps),
                width=int(info.width),
                height=int(info.height),
                frame_count=int(info.num_frames),
            )
            return r

        row = guarded("decode_crop", open_video)(row)
        if row[ROW_STATUS] != schema.STATUS_OK:
            yield row
            return
        path, info, segments = opened[0]
        for k, frame_index in enumerate(segments):
            unit = dict(row)
            unit.update({ROW_VIDEO_ID: segment_id(row[ROW_VIDEO_ID], k, len(segments))})
            unit.update({ROW_SEGMENT: k, ROW_SEGMENTS: len(segments)})
            if k > 0:  # opening the video is counted once, in the first segment
                unit.update(
                    {ROW_STAGE_SECONDS: "{}", ROW_STAGE_CPU_SECONDS: "{}", ROW_STARTED_AT: time.time()}
                )
            unit = guarded("decode_crop", lambda r, f=frame_index: decode_crop(r, cfg, path, f, info))(unit)
            yield guarded("landmarks", lambda r: landmarks(r, cfg))(unit)


def decode_crop(
    row: Row, cfg: PreprocessConfig, path: str, frame_index: np.ndarray, info: VideoInfo | None = None
) -> Row:
    """Tracks the face over the frames ``frame_index`` (T,) of the local video ``path`` (``info``: its
    ``video_info``, when already read) and crops them, in one decoding pass."""
    track, crops = track_and_crop(path, cfg.decode, cfg.track, frame_index, info)
    row.update(
        crops=crops,
        frame_index=track.frame_index.astype(np.int64),
        face_boxes_px=track.face_box_crop_px().astype(np.float32),
    )
    return row


def landmarks(row: Row, cfg: PreprocessConfig) -> Row:
    """68 landmarks per crop with the configured backend."""
    row["landmarks_px"] = detect_landmarks(
        np.asarray(row["crops"]), np.asarray(row["face_boxes_px"]), cfg.landmarks
    )
    return row


def fit(row: Row, cfg: PreprocessConfig, model: MorphableModel) -> Row:
    """The per-video 3DMM fit (Eq. 2)."""
    result = fit_video(model, np.asarray(row["landmarks_px"]), config=cfg.fit)
    row.update(
        identity_coefficients=result.identity.astype(np.float32),
        expression=result.expression.astype(np.float32),
        camera=result.camera.astype(np.float32),
        landmark_error_iod=float(result.mean_error_iod().mean()),
        fit_converged=bool(result.converged),
    )
    return row


def render(row: Row, renderer: NmfcRenderer) -> Row:
    """NMFC images (Eq. 3), the face-surface mask and the mouth boxes from the fit."""
    expression = torch.tensor(np.asarray(row["expression"]), dtype=torch.float32)
    camera = torch.tensor(np.asarray(row["camera"]), dtype=torch.float32)
    identity = torch.tensor(np.asarray(row["identity_coefficients"]), dtype=torch.float32).expand(
        len(camera), -1
    )
    with torch.inference_mode():
        images = renderer.render(identity, expression, camera, uint8=True)  # the stored format
        boxes = renderer.mouth_boxes(identity, expression, camera)
    row.update(
        nmfc=images.image.cpu().numpy(),
        face_mask=images.mask.cpu().numpy(),
        mouth_box_px=boxes.cpu().numpy().astype(np.int32),
    )
    return row


def check_config(cfg: PreprocessConfig) -> None:
    """Fails fast on settings that disagree with each other."""
    size = (cfg.track.crop_size, cfg.track.crop_size)
    if tuple(cfg.render.image_size) != size:
        raise ValueError(
            f"render.image_size={list(cfg.render.image_size)} must equal the crop size {list(size)} "
            f"(track.crop_size={cfg.track.crop_size}): NMFC images overlay the crops"
        )


def masks_flow_write(row: Row, cfg: PreprocessConfig, output: str) -> Row:
    """Foreground masks and optical flow, then the shard, the contact sheet and the record."""
    crops = np.asarray(row["crops"])
    landmarks_px = np.asarray(row["landmarks_px"], np.float32)
    face = landmark_face_masks(landmarks_px, crops.shape[1])
    masks = foreground_masks(crops, face, cfg.mask, head_masks=np.asarray(row["face_mask"]).astype(bool))
    flow = optical_flow(crops, cfg.flow)
    nmfc = np.asarray(row["nmfc"])
    encode_rgb = (
        (lambda im: schema.encode_jpeg(im, cfg.output.jpeg_quality))
        if cfg.output.rgb_format == "jpeg"
        else schema.encode_png
    )
    t = len(crops)
    columns = {
        "identity": [row[ROW_IDENTITY]] * t,
        "video_id": [row[ROW_VIDEO_ID]] * t,
        "frame_index": np.asarray(row["frame_index"]).astype(np.int32).tolist(),
        "rgb": [encode_rgb(im) for im in crops],
        "nmfc": [schema.encode_png(im) for im in nmfc],
        "mask": [schema.encode_png(m) for m in masks],
        "flow": schema.encode_flows(flow),
        "landmarks_px": landmarks_px.reshape(t, -1).tolist(),
        "expression": np.asarray(row["expression"], np.float32).tolist(),
        "camera": np.asarray(row["camera"], np.float32).tolist(),
        "mouth_box_px": np.asarray(row["mouth_box_px"], np.int32).tolist(),
    }
    row["shard"] = shard_writer.write_shard(output, row[ROW_VIDEO_ID], columns)
    sheet = shard_writer.contact_sheet(
        crops, landmarks_px, nmfc, masks, flow, cfg.output.contact_sheet_frames
    )
    sheet_uri = storage.join(output, schema.CONTACT_SHEETS_DIR, f"{row[ROW_VIDEO_ID]}.png")
    storage.write_bytes(sheet_uri, schema.encode_png(sheet))
    row["kept_frames"] = t
    row["crop_size"] = int(crops.shape[1])
    return row


def record_of(row: Row, config_hash: str, seconds: float) -> dict:
    """The per-video record (``schema.VIDEO_SCHEMA``) of a finished or failed row."""
    ok = row[ROW_STATUS] == schema.STATUS_OK
    identity = row.get("identity_coefficients")
    return {
        "video_id": row[ROW_VIDEO_ID],
        "source_video_id": row.get(ROW_SOURCE_VIDEO_ID, row[ROW_VIDEO_ID]),
        "segment": int(row.get(ROW_SEGMENT) or 0),
        "segments": int(row.get(ROW_SEGMENTS) or 1),
        "identity": row[ROW_IDENTITY],
        "source": row[ROW_SOURCE],
        "status": row[ROW_STATUS],
        "reason": row[ROW_REASON],
        "message": row[ROW_MESSAGE],
        "frame_count": int(row.get("frame_count") or 0),
        "kept_frames": int(row.get("kept_frames") or 0) if ok else 0,
        "fps": float(row.get("fps") or 0.0),
        "width": int(row.get("width") or 0),
        "height": int(row.get("height") or 0),
        "crop_size": int(row.get("crop_size") or 0),
        "identity_coefficients": np.asarray(identity, np.float32).tolist()
        if ok and identity is not None
        else [],
        "landmark_error_iod": float(row.get("landmark_error_iod") or 0.0),
        "fit_converged": bool(row.get("fit_converged") or False),
        "config_hash": config_hash,
        "shard": row.get("shard", "") if ok else "",
        "seconds": round(seconds, 4),
        "stage_seconds": row[ROW_STAGE_SECONDS],
        "stage_cpu_seconds": row.get(ROW_STAGE_CPU_SECONDS, "{}"),
        "started_at": float(row.get(ROW_STARTED_AT) or 0.0),
        "finished_at": time.time(),
    }


def fit_render_write(
    row: Row,
    cfg: PreprocessConfig,
    output: str,
    config_hash: str,
    model: MorphableModel,
    renderer: NmfcRenderer,
) -> dict:
    """The rest of one unit's chain after ``video_segments``: fit, NMFC render, masks + flow + shard, then
    its record, written last (it marks the unit done). Returns the record."""
    row = guarded("fit", lambda r: fit(r, cfg, model))(row)
    row = guarded("render", lambda r: render(r, renderer))(row)
    row = guarded("write", lambda r: masks_flow_write(r, cfg, output))(row)
    record = record_of(row, config_hash, sum(json.loads(row[ROW_STAGE_SECONDS]).values()))
    shard_writer.write_record(output, record)
    return record


def process_video(
    source: VideoSource,
    cfg: PreprocessConfig,
    output: str,
    config_hash: str,
    model: MorphableModel,
    renderer: NmfcRenderer,
) -> list[dict]:
    """All stages of one video in this process (what the Ray job distributes); returns its records, one
    per segment.

    Writes the shards, contact sheets and records like the job does.
    """
    return [
        fit_render_write(row, cfg, output, config_hash, model, renderer)
        for row in video_segments(new_row(source), cfg)
    ]
