"""Preprocessing of one video, stage by stage, without Ray (``ray_preprocess.py`` distributes it).

A unit of work travels through the stages as a row ``dict`` (a Ray Data row in the distributed job): its
``schema.VideoRecord`` under ``ROW_RECORD`` (replaced, never mutated, as stages add to it) and its heavy
per-frame arrays. Each stage takes the row and returns it with its outputs added; a stage's failure (a
``VideoRejected`` data problem, or any unexpected error) turns the row into a failed record carrying a
short reason, and later stages pass it through untouched, so one bad unit never costs the others.

    video_units (decode + track + crop -> landmarks, per unit) -> fit -> render -> masks_flow_write

Units (``schema`` module docstring): ``video_units`` cuts a video's kept frames into segments of at most
``decode.segment_frames`` frames and each segment's face track at its jumps and long gaps into parts, and
yields one row per part; from there on a part is a unit of its own (own id, fit, shard and record). Only
one segment's frames are in memory at a time.

Heavy arrays, T frames of the unit, crop size S: crops (T, S, S, 3) uint8, frame_index (T,) int64,
face_boxes_px (T, 4), landmarks_px (T, 68, 2), landmark_confidence (T,), expression (T, N_exp), camera
(T, 7), nmfc (T, S, S, 3) uint8, face_mask (T, S, S) bool, mouth_box_px (T, 4) int32.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from pipeline.errors import TooShort, VideoRejected
from pipeline.preprocess import shard_writer
from pipeline.preprocess.decode import DecodeConfig, VideoInfo, check_length, split_segments, video_info
from pipeline.preprocess.face_track import load_detector, track_and_crop_parts
from pipeline.preprocess.fit_3dmm import FitConfig, fit_config_for, fit_video
from pipeline.preprocess.flow import FlowConfig, optical_flow
from pipeline.preprocess.landmarks import (
    LandmarkConfig,
    landmark_weights,
    landmarks_and_confidence,
    load_landmark_model,
)
from pipeline.preprocess.manifest import VideoSource
from pipeline.preprocess.masks import MaskConfig, foreground_masks, landmark_face_masks
from pipeline.preprocess.nmfc import NmfcConfig, NmfcRenderer
from pipeline.preprocess.track_parts import FaceTrackConfig

Row = dict

ROW_RECORD = "record"  # the unit's schema.VideoRecord
ROW_URI = "uri"  # the source's full URI, for reading (the record keeps the redacted one)
# Heavy per-frame arrays, dropped from failed rows.
ROW_CROPS = "crops"
ROW_FACE_BOXES_PX = "face_boxes_px"
ROW_FACE_MASK = "face_mask"
HEAVY_KEYS = (
    ROW_CROPS,
    ROW_FACE_BOXES_PX,
    ROW_FACE_MASK,
    schema.FRAME_INDEX,
    schema.LANDMARKS_PX,
    schema.EXPRESSION,
    schema.CAMERA,
    schema.NMFC,
    schema.MOUTH_BOX_PX,
    schema.LANDMARK_CONFIDENCE,
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
    calls it), so that their imports and weights count as start-up, not as the first video's stage time.
    A missing model file is left for the landmarks stage to report, per video."""
    load_detector()
    with contextlib.suppress(FileNotFoundError):
        load_landmark_model(cfg.landmarks)


def record(row: Row) -> schema.VideoRecord:
    return row[ROW_RECORD]


def update(row: Row, **changes) -> Row:
    """The row with its record's fields replaced by ``changes``."""
    row[ROW_RECORD] = dataclasses.replace(row[ROW_RECORD], **changes)
    return row


def new_row(source: VideoSource) -> Row:
    unit = schema.VideoRecord(
        video_id=source.video_id,
        source_video_id=source.video_id,
        identity=source.identity,
        source=storage.redact(source.uri),
        note=source.note,
    )
    return {ROW_RECORD: unit, ROW_URI: source.uri}


def _add_seconds(spent_json: str, stage: str, seconds: float) -> str:
    spent = json.loads(spent_json or "{}")
    spent[stage] = round(spent.get(stage, 0.0) + seconds, 4)
    return json.dumps(spent)


def guarded(stage: str, fn: Callable[[Row], Row]) -> Callable[[Row], Row]:
    """Runs ``fn`` on ok rows, timing it; turns its failure into a failed row with a reason.

    Records wall-clock and CPU seconds: where processes share cores the wall clock also counts waiting,
    while the process's CPU time (its libraries run on one thread in the job) is the stage's own cost.
    """

    def run(row: Row) -> Row:
        if not record(row).ok:
            return row
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            row = fn(row)
        except VideoRejected as err:
            row = fail(row, err.reason, str(err))
        except Exception as err:  # noqa: BLE001 - any bug in one video must not cost the others
            detail = "".join(traceback.format_exception_only(type(err), err)).strip()
            row = fail(row, f"error_{stage}", f"{stage} failed: {detail}")
        unit = record(row)
        return update(
            row,
            stage_seconds=_add_seconds(unit.stage_seconds, stage, time.perf_counter() - start),
            stage_cpu_seconds=_add_seconds(unit.stage_cpu_seconds, stage, time.process_time() - start_cpu),
        )

    return run


def fail(row: Row, reason: str, message: str) -> Row:
    row = {k: v for k, v in row.items() if k not in HEAVY_KEYS}
    return update(row, status=schema.STATUS_FAILED, reason=reason, message=message)


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


def video_units(row: Row, cfg: PreprocessConfig) -> Iterator[Row]:
    """The first stage of a video: yields one row per unit (segment x track part), decoded, tracked,
    cropped, with landmarks.

    The video is fetched once (``LocalCopy``) for all its units; only one segment's frames are in memory
    at a time. A video that cannot be opened or is too short yields one failed row; a segment whose
    face cannot be tracked at all yields one failed row; a track part that cannot be used (too short)
    yields a failed row of its own while the segment's other parts go on.
    """
    row = update(row, started_at=time.time())
    if not record(row).ok:
        yield row
        return
    with contextlib.ExitStack() as stack:
        opened: list[tuple[str, VideoInfo, list[np.ndarray]]] = []

        def open_video(r: Row) -> Row:
            path = stack.enter_context(LocalCopy(r[ROW_URI]))
            info = video_info(path, cfg.decode)
            segments = split_segments(check_length(info, cfg.decode), cfg.decode.segment_frames)
            opened.append((path, info, segments))
            return update(
                r,
                fps=float(info.fps),
                width=int(info.width),
                height=int(info.height),
                frame_count=int(info.num_frames),
            )

        row = guarded("decode_crop", open_video)(row)
        if not record(row).ok:
            yield row
            return
        path, info, segments = opened[0]
        for k, frame_index in enumerate(segments):
            segment = dict(row)
            update(
                segment,
                video_id=schema.unit_id(record(row).video_id, k, len(segments)),
                segment=k,
                segments=len(segments),
                first_frame_index=int(frame_index[0]),
                last_frame_index=int(frame_index[-1]),
            )
            if k > 0:  # opening the video is counted once, in the first unit
                update(segment, stage_seconds="{}", stage_cpu_seconds="{}", started_at=time.time())
            parts: list[Row] = []
            segment = guarded(
                "decode_crop", lambda r, f=frame_index, p=parts: decode_crop(r, cfg, path, f, info, p)
            )(segment)
            if parts:  # the segment's decoding and tracking is counted in its first part
                spent = record(segment)
                update(parts[0], stage_seconds=spent.stage_seconds, stage_cpu_seconds=spent.stage_cpu_seconds)
            for unit in parts or [segment]:
                yield guarded("landmarks", lambda r: landmarks(r, cfg))(unit)


def decode_crop(
    row: Row,
    cfg: PreprocessConfig,
    path: str,
    frame_index: np.ndarray,
    info: VideoInfo | None,
    parts: list[Row],
) -> Row:
    """Tracks the face over the frames ``frame_index`` (T,) of the local video ``path`` (``info``: its
    ``video_info``, when already read) and crops them, in one decoding pass; appends one row per part of
    the track (cut at jumps and long gaps; the frames between parts come back as a failed part) to
    ``parts``. Raises the segment's rejection when no part can be tracked."""
    tracked = track_and_crop_parts(path, cfg.decode, cfg.track, frame_index, info)
    base = record(row)
    for p, part in enumerate(tracked):
        unit = update(
            {k: v for k, v in row.items() if k not in HEAVY_KEYS},
            video_id=schema.unit_id(base.video_id, 0, 1, p, len(tracked)),
            track_part=p,
            track_parts=len(tracked),
            first_frame_index=int(part.frame_index[0]),
            last_frame_index=int(part.frame_index[-1]),
        )
        if p > 0:
            update(unit, stage_seconds="{}", stage_cpu_seconds="{}", started_at=time.time())
        if part.rejected is not None:
            unit = fail(unit, part.rejected.reason, str(part.rejected))
        else:
            unit[ROW_CROPS] = part.crops
            unit[schema.FRAME_INDEX] = part.track.frame_index.astype(np.int64)
            unit[ROW_FACE_BOXES_PX] = part.track.face_box_crop_px().astype(np.float32)
        parts.append(unit)
    return row


def landmarks(row: Row, cfg: PreprocessConfig) -> Row:
    """68 landmarks and their confidence per crop with the configured backend; frames whose face-presence
    score is below ``landmarks.min_presence`` (the face mesh lost the face: heavy occlusion, a turn away)
    are dropped from the unit, leaving a gap in its frame_index that no training clip spans. Raises
    TooShort when fewer than ``decode.min_frames`` frames are left."""
    points, confidence = landmarks_and_confidence(
        np.asarray(row[ROW_CROPS]), np.asarray(row[ROW_FACE_BOXES_PX]), cfg.landmarks
    )
    keep = confidence >= cfg.landmarks.min_presence
    if not keep.all():
        for key in (ROW_CROPS, ROW_FACE_BOXES_PX, schema.FRAME_INDEX):
            row[key] = np.asarray(row[key])[keep]
        points, confidence = points[keep], confidence[keep]
        if keep.sum() < cfg.decode.min_frames:
            raise TooShort(
                f"{record(row).video_id}: only {int(keep.sum())} of {len(keep)} frames have reliable "
                f"landmarks (face-presence score >= landmarks.min_presence={cfg.landmarks.min_presence})"
            )
        update(row, dropped_frames=int((~keep).sum()))
    row[schema.LANDMARKS_PX], row[schema.LANDMARK_CONFIDENCE] = points, confidence
    return row


def fit(row: Row, cfg: PreprocessConfig, model: MorphableModel) -> Row:
    """The per-unit 3DMM fit (Eq. 2)."""
    result = fit_video(
        model,
        np.asarray(row[schema.LANDMARKS_PX]),
        weights=landmark_weights(np.asarray(row[schema.LANDMARK_CONFIDENCE]), cfg.landmarks),
        config=fit_config_for(cfg.fit, cfg.landmarks.backend),
    )
    row[schema.EXPRESSION] = result.expression.astype(np.float32)
    row[schema.CAMERA] = result.camera.astype(np.float32)
    return update(
        row,
        identity_coefficients=tuple(result.identity.astype(np.float32).tolist()),
        landmark_error_iod=float(result.mean_error_iod().mean()),
        fit_converged=bool(result.converged),
    )


def render(row: Row, renderer: NmfcRenderer) -> Row:
    """NMFC images (Eq. 3), the face-surface mask and the mouth boxes from the fit."""
    expression = torch.tensor(np.asarray(row[schema.EXPRESSION]), dtype=torch.float32)
    camera = torch.tensor(np.asarray(row[schema.CAMERA]), dtype=torch.float32)
    identity = torch.tensor(record(row).identity_coefficients, dtype=torch.float32).expand(len(camera), -1)
    with torch.inference_mode():
        images = renderer.render(identity, expression, camera, uint8=True)  # the stored format
        boxes = renderer.mouth_boxes(identity, expression, camera)
    row[schema.NMFC] = images.image.cpu().numpy()
    row[ROW_FACE_MASK] = images.mask.cpu().numpy()
    row[schema.MOUTH_BOX_PX] = boxes.cpu().numpy().astype(np.int32)
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
    """Foreground masks and optical flow, then the shard and the contact sheet."""
    crops = np.asarray(row[ROW_CROPS])
    landmarks_px = np.asarray(row[schema.LANDMARKS_PX], np.float32)
    face = landmark_face_masks(landmarks_px, crops.shape[1])
    masks = foreground_masks(crops, face, cfg.mask, head_masks=np.asarray(row[ROW_FACE_MASK]).astype(bool))
    flow = optical_flow(crops, cfg.flow)
    nmfc = np.asarray(row[schema.NMFC])
    encode_rgb = (
        (lambda im: schema.encode_jpeg(im, cfg.output.jpeg_quality))
        if cfg.output.rgb_format == "jpeg"
        else schema.encode_png
    )
    unit, t = record(row), len(crops)
    columns = {
        schema.IDENTITY: [unit.identity] * t,
        schema.VIDEO_ID: [unit.video_id] * t,
        schema.FRAME_INDEX: np.asarray(row[schema.FRAME_INDEX]).astype(np.int32).tolist(),
        schema.RGB: [encode_rgb(im) for im in crops],
        schema.NMFC: [schema.encode_png(im) for im in nmfc],
        schema.MASK: [schema.encode_png(m) for m in masks],
        schema.FLOW: schema.encode_flows(flow),
        schema.LANDMARKS_PX: landmarks_px.reshape(t, -1).tolist(),
        schema.EXPRESSION: np.asarray(row[schema.EXPRESSION], np.float32).tolist(),
        schema.CAMERA: np.asarray(row[schema.CAMERA], np.float32).tolist(),
        schema.MOUTH_BOX_PX: np.asarray(row[schema.MOUTH_BOX_PX], np.int32).tolist(),
        schema.LANDMARK_CONFIDENCE: np.asarray(row[schema.LANDMARK_CONFIDENCE], np.float32).tolist(),
    }
    shard = shard_writer.write_shard(output, unit.video_id, columns)
    sheet = shard_writer.contact_sheet(
        crops, landmarks_px, nmfc, masks, flow, cfg.output.contact_sheet_frames
    )
    sheet_uri = storage.join(output, schema.CONTACT_SHEETS_DIR, f"{unit.video_id}.png")
    storage.write_bytes(sheet_uri, schema.encode_png(sheet))
    return update(row, shard=shard, kept_frames=t, crop_size=int(crops.shape[1]))


def finished_record(row: Row, config_hash: str) -> schema.VideoRecord:
    """The unit's final record: a failed one keeps no frame outputs."""
    unit = record(row)
    seconds = round(sum(json.loads(unit.stage_seconds).values()), 4)
    done = dataclasses.replace(unit, config_hash=config_hash, seconds=seconds, finished_at=time.time())
    if done.ok:
        return done
    return dataclasses.replace(done, kept_frames=0, identity_coefficients=(), shard="")


def fit_render_write(
    row: Row,
    cfg: PreprocessConfig,
    output: str,
    config_hash: str,
    model: MorphableModel,
    renderer: NmfcRenderer,
) -> schema.VideoRecord:
    """The rest of one unit's chain after ``video_units``: fit, NMFC render, masks + flow + shard, then
    its record, written last (it marks the unit done). Returns the record."""
    row = guarded("fit", lambda r: fit(r, cfg, model))(row)
    row = guarded("render", lambda r: render(r, renderer))(row)
    row = guarded("write", lambda r: masks_flow_write(r, cfg, output))(row)
    done = finished_record(row, config_hash)
    shard_writer.write_record(output, done)
    return done


def process_video(
    source: VideoSource,
    cfg: PreprocessConfig,
    output: str,
    config_hash: str,
    model: MorphableModel,
    renderer: NmfcRenderer,
) -> list[schema.VideoRecord]:
    """All stages of one video in this process (what the Ray job distributes); returns its records, one
    per unit. Writes the shards, contact sheets and records like the job does."""
    return [
        fit_render_write(row, cfg, output, config_hash, model, renderer)
        for row in video_units(new_row(source), cfg)
    ]


def preprocess_in_process(
    input_uri: str,
    output: str,
    cfg: PreprocessConfig,
    config_hash: str,
    model: MorphableModel,
    log: Callable[[str], None] = print,
) -> list[schema.VideoRecord]:
    """Every video of ``input_uri`` (a folder, prefix or manifest) through the chain, one after another in
    this process, then the per-unit table: the job's output without Ray, for a handful of videos (tests,
    benchmarks, a laptop). Videos done with the same config hash are skipped, as the job skips them.
    Returns the records of this call's units."""
    from pipeline.preprocess.manifest import discover_videos

    check_config(cfg)
    renderer = NmfcRenderer(model, cfg.render)
    records: list[schema.VideoRecord] = []
    done = shard_writer.videos_done(output, config_hash)
    for source in discover_videos(input_uri):
        if source.video_id in done:
            continue
        for unit in process_video(source, cfg, output, config_hash, model, renderer):
            records.append(unit)
            log(f"{unit.video_id}: {unit.status} ({unit.kept_frames if unit.ok else unit.reason})")
    shard_writer.write_videos_table(output, shard_writer.read_records(output))
    return records
