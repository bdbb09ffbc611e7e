"""Writing preprocessing outputs: frame shards, per-video records, the per-video table, contact sheets.

See ``pipeline/schema.py`` for the layout and why records are written after shards (idempotent reruns,
no partial shard visible to readers).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infra import storage
from pipeline import schema
from pipeline.preprocess.flow import flow_to_rgb


def shard_path(video_id: str) -> str:
    return f"{schema.SHARDS_DIR}/{video_id}.parquet"


def write_shard(output: str, video_id: str, columns: dict[str, list | pa.Array | pa.ChunkedArray]) -> str:
    """Writes one video's frame rows (``schema.FRAME_SCHEMA`` columns) atomically (``storage.atomic_writer``):
    readers never see a partial shard. Returns the shard's path relative to ``output``.
    """
    table = pa.table(columns, schema=schema.FRAME_SCHEMA)
    relative = shard_path(video_id)
    with storage.atomic_writer(storage.join(output, *relative.split("/"))) as f:
        pq.write_table(table, f, row_group_size=schema.ROW_GROUP_FRAMES, compression=schema.FRAME_COMPRESSION)
    return relative


def write_record(output: str, record: schema.VideoRecord) -> None:
    """Writes a unit's record (``records/<video_id>.json``); marks the unit done."""
    uri = storage.join(output, schema.RECORDS_DIR, f"{record.video_id}.json")
    storage.write_text(uri, record.to_json())


def read_records(output: str) -> list[schema.VideoRecord]:
    """All unit records under ``output`` (any config hash), sorted by unit id."""
    uris = storage.list_files(storage.join(output, schema.RECORDS_DIR), [".json"], recursive=False)
    records = (schema.VideoRecord.from_dict(json.loads(storage.read_text(u))) for u in uris)
    return sorted(records, key=lambda r: r.video_id)


def videos_done(output: str, cfg_hash: str) -> set[str]:
    """Ids of the source videos under ``output`` that a run with config hash ``cfg_hash`` need not redo:
    every unit ok or rejected for a data problem. An unexpected error (``error_<stage>``) in any unit makes
    the whole video pending again (its other units are rewritten with the same names and content)."""
    by_video: dict[str, list[schema.VideoRecord]] = defaultdict(list)
    retry: set[str] = set()
    for r in read_records(output):
        if r.config_hash == cfg_hash:
            video = r.source_video_id or r.video_id
            by_video[video].append(r)
            if r.retried:
                retry.add(video)
    return {video for video, units in by_video.items() if video not in retry and schema.video_complete(units)}


def write_videos_table(output: str, records: list[schema.VideoRecord]) -> None:
    """The per-unit table (``videos.parquet``) from records, written atomically."""
    table = pa.Table.from_pylist([r.as_dict() for r in records], schema=schema.VIDEO_SCHEMA)
    with storage.atomic_writer(storage.join(output, schema.VIDEOS_TABLE)) as f:
        pq.write_table(table, f)


def summarise(
    records: list[schema.VideoRecord],
    processed_ids: set[str],
    wall_s: float,
    run_started_at: float | None = None,
) -> dict:
    """Run summary: videos and units ok / failed by reason (all records), what this run did, frames and
    frames/s, and the summed wall-clock and CPU seconds per stage of the units processed in this run.

    With ``run_started_at`` (Unix time), also the run's start-up, ``startup_s`` (until the first unit's
    first stage began: planning, Ray and actor start), and the processing window after it,
    ``processing_s`` (until the last record was written), with ``processing_frames_per_s``.
    """
    ok = [r for r in records if r.ok]
    failed = [r for r in records if not r.ok]
    this_run = [r for r in records if r.video_id in processed_ids]
    frames_this_run = sum(r.kept_frames for r in this_run)
    stage_totals: Counter = Counter()
    stage_cpu_totals: Counter = Counter()
    for r in this_run:
        stage_totals.update(json.loads(r.stage_seconds or "{}"))
        stage_cpu_totals.update(json.loads(r.stage_cpu_seconds or "{}"))
    videos = {r.source_video_id or r.video_id for r in records}
    videos_ok = {r.source_video_id or r.video_id for r in ok}
    summary = {
        "videos": len(videos),
        "videos_ok": len(videos_ok),  # videos with at least one usable unit
        "videos_failed": len(videos - videos_ok),
        "units": len(records),
        "units_ok": len(ok),
        "units_failed": len(failed),
        "failed_by_reason": dict(sorted(Counter(r.reason for r in failed).items())),
        "frames": sum(r.kept_frames for r in ok),
        "processed_this_run": len(this_run),
        "skipped_this_run": len(records) - len(this_run),
        "frames_this_run": frames_this_run,
        "wall_s": round(wall_s, 3),
        "frames_per_s": round(frames_this_run / wall_s, 2) if wall_s > 0 else 0.0,
        "stage_wall_s": {k: round(v, 3) for k, v in sorted(stage_totals.items())},
        "stage_cpu_s": {k: round(v, 3) for k, v in sorted(stage_cpu_totals.items())},
    }
    started = [r.started_at for r in this_run if r.started_at]
    if run_started_at is not None and started:
        processing_s = max(r.finished_at for r in this_run) - min(started)
        summary["startup_s"] = round(min(started) - run_started_at, 3)
        summary["processing_s"] = round(processing_s, 3)
        summary["processing_frames_per_s"] = round(frames_this_run / max(processing_s, 1e-9), 2)
    return summary


def contact_sheet(
    crops: np.ndarray,
    landmarks_px: np.ndarray,
    nmfc: np.ndarray,
    masks: np.ndarray,
    flow: np.ndarray,
    frames: int = 4,
    tile_px: int = 160,
) -> np.ndarray:
    """A few frames side by side: crop with landmarks | NMFC | mask | flow, one row per frame.

    crops (T, S, S, 3) uint8, landmarks_px (T, 68, 2), nmfc (T, S, S, 3) uint8, masks (T, S, S) bool,
    flow (T, S, S, 2) -> image (rows * tile_px, 4 * tile_px, 3) uint8 RGB.
    """
    t = crops.shape[0]
    picks = np.unique(np.linspace(0, t - 1, min(frames, t)).round().astype(int))
    scale = tile_px / crops.shape[1]
    rows = []
    for k in picks:
        crop = cv2.resize(crops[k], (tile_px, tile_px), interpolation=cv2.INTER_AREA)
        for x, y in landmarks_px[k] * scale + (scale - 1) / 2:
            cv2.circle(crop, (int(round(x)), int(round(y))), 1, (0, 255, 0), -1)
        tiles = [
            crop,
            cv2.resize(nmfc[k], (tile_px, tile_px), interpolation=cv2.INTER_NEAREST),
            cv2.resize(np.repeat(masks[k, ..., None].astype(np.uint8) * 255, 3, 2), (tile_px, tile_px)),
            cv2.resize(flow_to_rgb(flow[k], max(float(np.abs(flow[k]).max()), 1.0)), (tile_px, tile_px)),
        ]
        rows.append(np.concatenate(tiles, axis=1))
    return np.concatenate(rows, axis=0)
