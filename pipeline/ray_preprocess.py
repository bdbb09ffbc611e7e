"""The distributed preprocessing run on Ray Data: a thin wrapper over ``pipeline/preprocess.py``.

One Ray Data row per video (the fit needs the whole video). Stages and where they run:

    decode_crop (tasks) -> landmarks (actor pool, GPU when the cluster has one and the backend uses it)
    -> fit (actor pool, CPU; the 3DMM loaded once per actor) -> render NMFC (actor pool, GPU when
    available) -> masks + flow + shard writing (tasks)

Work already done with the same config hash (a record exists) is skipped before Ray starts. Each video's
shard is written before its record, both under deterministic names, so a task retried after a worker
died rewrites the same objects: every video ends up exactly once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field

from infra import storage
from infra.config import config_hash, save_config
from model.morphable_model import ModelConfig, find_default_model, load_morphable_model
from pipeline import preprocess, schema, shard_writer
from pipeline.manifest import VideoSource, discover_videos
from pipeline.nmfc import NmfcRenderer
from pipeline.preprocess import PreprocessConfig


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide the job runs.

    address: None joins the cluster of ``RAY_ADDRESS`` (set by ``ray job submit``) or starts a local
        Ray; "auto" joins a running local cluster; or a ``ray://`` / GCS address.
    num_cpus: logical CPUs of a new local Ray; None gives 2 x the cores, so that actor pools on a small
        machine do not starve the read and write tasks.
    *_actors: actor pool sizes (capped: each actor holds a model).
    """

    address: str | None = None
    num_cpus: int | None = None
    landmark_actors: int = 1
    fit_actors: int = 1
    render_actors: int = 1


@dataclass(frozen=True)
class PreprocessJobConfig:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def _decode_crop(row: dict, cfg: PreprocessConfig) -> dict:
    return preprocess.guarded("decode_crop", lambda r: preprocess.decode_crop(r, cfg))(row)


class _Landmarks:
    def __init__(self, cfg: PreprocessConfig) -> None:
        self.run = preprocess.guarded("landmarks", lambda row: preprocess.landmarks(row, cfg))

    def __call__(self, row: dict) -> dict:
        return self.run(row)


class _Fit:
    def __init__(self, cfg: PreprocessConfig) -> None:
        model = load_morphable_model(cfg.model.path)
        self.run = preprocess.guarded("fit", lambda row: preprocess.fit(row, cfg, model))

    def __call__(self, row: dict) -> dict:
        return self.run(row)


class _Render:
    def __init__(self, cfg: PreprocessConfig) -> None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        renderer = NmfcRenderer(load_morphable_model(cfg.model.path), cfg.render, device=device)
        self.run = preprocess.guarded("render", lambda row: preprocess.render(row, renderer))

    def __call__(self, row: dict) -> dict:
        return self.run(row)


def _finish(row: dict, cfg: PreprocessConfig, output: str, cfg_hash: str) -> dict:
    """Masks, flow and writing; returns the video's small record and writes it last."""
    row = preprocess.guarded("write", lambda r: preprocess.masks_flow_write(r, cfg, output))(row)
    seconds = sum(json.loads(row[preprocess.ROW_STAGE_SECONDS]).values())
    record = preprocess.record_of(row, cfg_hash, seconds)
    shard_writer.write_record(output, record)
    return record


def _init_ray(cfg: RayConfig):
    import ray

    if ray.is_initialized():
        return ray
    if cfg.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=cfg.address, log_to_driver=True)
    else:
        ray.init(num_cpus=cfg.num_cpus or 2 * (os.cpu_count() or 1), include_dashboard=False)
    return ray


def resolve_model(cfg: PreprocessJobConfig) -> PreprocessJobConfig:
    """Pins the 3DMM path found on the driver, so workers (other working dirs) load the same file."""
    from dataclasses import replace

    if cfg.preprocess.model.path:
        return cfg
    path = str(find_default_model().resolve())
    return replace(cfg, preprocess=replace(cfg.preprocess, model=ModelConfig(path=path)))


def plan(
    cfg: PreprocessJobConfig, input_uri: str, output: str
) -> tuple[list[VideoSource], list[VideoSource], str]:
    """(all sources, sources still to do, config hash) for a run over ``input_uri``."""
    sources = discover_videos(input_uri)
    cfg_hash = config_hash(cfg.preprocess)
    # Done: ok, or rejected for a data problem; unexpected errors ("error_<stage>") are retried.
    done = {
        r["video_id"]
        for r in shard_writer.read_records(output)
        if r.get("config_hash") == cfg_hash and not r["reason"].startswith("error_")
    }
    return sources, [s for s in sources if s.video_id not in done], cfg_hash


def run_preprocess(cfg: PreprocessJobConfig, input_uri: str, output: str, log=print) -> dict:
    """Runs the job: returns the run summary (also written to ``output``/summary.json)."""
    start = time.perf_counter()
    preprocess.check_config(cfg.preprocess)
    cfg = resolve_model(cfg)
    sources, todo, cfg_hash = plan(cfg, input_uri, output)
    save_config(cfg, storage.join(output, schema.CONFIG))
    log(
        f"{len(sources)} videos in {storage.redact(input_uri)}: {len(todo)} to process, "
        f"{len(sources) - len(todo)} done"
    )
    processed: set[str] = set()
    if todo:
        ray = _init_ray(cfg.ray)
        from ray.data import ActorPoolStrategy

        gpu = float(ray.cluster_resources().get("GPU", 0)) > 0
        p = cfg.preprocess
        items = [preprocess.new_row(s) for s in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map(_decode_crop, fn_kwargs={"cfg": p}, num_cpus=1)
        ds = ds.map(
            _Landmarks,
            fn_constructor_args=(p,),
            compute=ActorPoolStrategy(size=cfg.ray.landmark_actors),
            num_cpus=1,
            num_gpus=0.5 if gpu and p.landmarks.backend == "fan" else 0,
        )
        ds = ds.map(
            _Fit, fn_constructor_args=(p,), compute=ActorPoolStrategy(size=cfg.ray.fit_actors), num_cpus=1
        )
        ds = ds.map(
            _Render,
            fn_constructor_args=(p,),
            compute=ActorPoolStrategy(size=cfg.ray.render_actors),
            num_cpus=1,
            num_gpus=0.5 if gpu else 0,
        )
        ds = ds.map(_finish, fn_kwargs={"cfg": p, "output": output, "cfg_hash": cfg_hash}, num_cpus=1)
        for k, record in enumerate(ds.iter_rows(), start=1):
            processed.add(record["video_id"])
            outcome = (
                f"{record['kept_frames']} frames"
                if record["status"] == schema.STATUS_OK
                else record["reason"]
            )
            log(
                f"[{k}/{len(todo)}] {record['video_id']}: {record['status']} "
                f"({outcome}, {record['seconds']:.1f} s)"
            )
            sys.stdout.flush()
    records = shard_writer.read_records(output)
    shard_writer.write_videos_table(output, records)
    summary = shard_writer.summarise(records, processed, time.perf_counter() - start)
    storage.write_text(storage.join(output, schema.SUMMARY), json.dumps(summary, indent=2))
    return summary
