"""The distributed preprocessing run on Ray Data: a thin wrapper over ``pipeline/preprocess/chain.py``.

One Ray Data row per video (the fit needs the whole video). Two layouts (``RayConfig.stages``):

``fused`` (default): one actor pool; each actor runs a video's whole chain (decode + track + crop +
    landmarks, then, per unit, fit + NMFC render + masks + flow + shard writing) and yields one small
    record per unit (a long video's segments and a cut track's parts are units, see
    ``chain.video_units``).
``split``: two actor pools, decode + track + crop + landmarks -> fit + render + masks + flow + write,
    with the crops moving between them through the object store; lets the two halves be sized (or
    placed on GPUs) independently.

Why whole chains and not one pool per step: per-step pools were mostly idle or waiting on a small
machine (each step of each video a scheduling round and an object-store copy of its frames), and every
extra process pays the torch / MTCNN / dlib / 3DMM start-up again. Fused is the default because it is
the cheapest: one process per core, no frames through the object store, models loaded once per core
(docs/preprocessing.md compares the two layouts). Each actor runs its numerical libraries on
``threads_per_actor`` threads, so that the actors sharing a node do not oversubscribe it.

Work already done with the same config hash (records for all of a video's units) is skipped before Ray
starts. Each unit's shard is written before its record, both under deterministic names, so a task retried
after a worker died rewrites the same objects: every unit ends up exactly once.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from infra import storage
from infra.config import config_hash, save_config
from infra.memory import retain_freed_memory
from infra.ray_session import ray_session
from model.face3d.loader import MorphableModelConfig, find_default_model, load_morphable_model
from pipeline import schema
from pipeline.preprocess import chain, shard_writer
from pipeline.preprocess.chain import PreprocessConfig
from pipeline.preprocess.manifest import VideoSource, discover_videos
from pipeline.preprocess.nmfc import NmfcRenderer


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide the job runs.

    address: None joins the cluster of ``RAY_ADDRESS`` (set by ``ray job submit``) or starts a local
        Ray; "auto" joins a running local cluster; or a ``ray://`` / GCS address.
    num_cpus: logical CPUs of a new local Ray; None gives 2 x the cores, so that a pool of one actor per
        core leaves Ray Data logical CPUs for its own tasks, and both ``split`` pools can hold one
        actor per core.
    stages: "fused" (one actor pool running each video's whole chain) or "split" (two pools: decode +
        landmarks, then fit + render + write); see the module docstring.
    actors: size of the fused pool (each actor holds every model; never more than there are videos);
        None: half the cluster's logical CPUs, i.e. one actor per core on a local Ray.
    landmark_actors, render_actors: sizes of the two ``split`` pools; None: half the cluster's logical
        CPUs each.
    threads_per_actor: torch / OpenCV threads inside each actor (and the CPUs it reserves).
    """

    address: str | None = None
    num_cpus: int | None = None
    stages: Literal["fused", "split"] = "fused"
    actors: int | None = None
    landmark_actors: int | None = None
    render_actors: int | None = None
    threads_per_actor: int = 1


@dataclass(frozen=True)
class PreprocessJobConfig:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def limit_threads(threads: int) -> None:
    """One actor's share of its node: torch and OpenCV thread pools of ``threads`` threads; freed memory
    is kept for reuse (``infra.memory``), so per-batch temporaries cost no page faults."""
    import cv2
    import torch

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    retain_freed_memory()


def _to_ray(row: dict) -> dict:
    """A chain row as a Ray Data row: the record as a plain mapping (an Arrow struct column)."""
    return {**row, chain.ROW_RECORD: row[chain.ROW_RECORD].as_dict()}


def _from_ray(row: dict) -> dict:
    return {**row, chain.ROW_RECORD: schema.VideoRecord.from_dict(row[chain.ROW_RECORD])}


class _DecodeLandmarks:
    """Stage 1 actor: decode, face track and crops, then landmarks (detector models loaded once); yields
    one row per unit of the video."""

    def __init__(self, cfg: PreprocessConfig, threads: int) -> None:
        limit_threads(threads)
        chain.load_models(cfg)
        self.cfg = cfg

    def __call__(self, row: dict) -> Iterator[dict]:
        for unit in chain.video_units(_from_ray(row), self.cfg):
            yield _to_ray(unit)


class _FitRenderWrite:
    """Stage 2 actor: 3DMM fit, NMFC rendering, masks, flow, the shard and the record (written last).

    Returns the unit's small record, so no frame data travels back to the driver.
    """

    def __init__(self, cfg: PreprocessConfig, output: str, cfg_hash: str, threads: int) -> None:
        import torch

        limit_threads(threads)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_morphable_model(cfg.model.path)
        self.renderer = NmfcRenderer(self.model, cfg.render, device=device)
        self.cfg, self.output, self.cfg_hash = cfg, output, cfg_hash

    def __call__(self, row: dict) -> dict:
        return self.write(_from_ray(row))

    def write(self, row: dict) -> dict:
        done = chain.fit_render_write(row, self.cfg, self.output, self.cfg_hash, self.model, self.renderer)
        return done.as_dict()


class _Preprocess:
    """The ``fused`` stage's actor: a video's whole chain in one process (models loaded once); yields one
    record per unit, so no frame data travels back to the driver."""

    def __init__(self, cfg: PreprocessConfig, output: str, cfg_hash: str, threads: int) -> None:
        self.fit_render_write = _FitRenderWrite(cfg, output, cfg_hash, threads)
        chain.load_models(cfg)
        self.cfg = cfg

    def __call__(self, row: dict) -> Iterator[dict]:
        for unit in chain.video_units(_from_ray(row), self.cfg):
            yield self.fit_render_write.write(unit)


def _pool(actors: int, videos: int):
    """A fixed pool of ``actors`` actors (never more than there are videos), all started at once so no
    core waits for a pool to grow; one video in flight per actor, so none queues videos while another
    idles."""
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=max(1, min(actors, videos)), max_tasks_in_flight_per_actor=1)


def resolve_model(cfg: PreprocessJobConfig) -> PreprocessJobConfig:
    """Pins the 3DMM path found on the driver, so workers (other working dirs) load the same file."""
    from dataclasses import replace

    if cfg.preprocess.model.path:
        return cfg
    path = str(find_default_model().resolve())
    return replace(cfg, preprocess=replace(cfg.preprocess, model=MorphableModelConfig(path=path)))


def plan(
    cfg: PreprocessJobConfig, input_uri: str, output: str
) -> tuple[list[VideoSource], list[VideoSource], str]:
    """(all sources, sources still to do, config hash) for a run over ``input_uri``."""
    sources = discover_videos(input_uri)
    cfg_hash = config_hash(cfg.preprocess)
    done = shard_writer.videos_done(output, cfg_hash)
    return sources, [s for s in sources if s.video_id not in done], cfg_hash


def _process(
    ray, cfg: PreprocessJobConfig, todo: list[VideoSource], output: str, cfg_hash: str, log
) -> set[str]:
    """Runs the chain over ``todo`` as a Ray Data pipeline, logging each video as it finishes; returns the
    ids of the units written."""
    processed: set[str] = set()
    resources = ray.cluster_resources()
    gpu = float(resources.get("GPU", 0)) > 0
    auto_actors = max(1, int(resources.get("CPU", 1)) // 2)
    p = cfg.preprocess
    items = [_to_ray(chain.new_row(s)) for s in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    writer_args = (p, output, cfg_hash, cfg.ray.threads_per_actor)
    if cfg.ray.stages == "fused":
        ds = ds.flat_map(
            _Preprocess,
            fn_constructor_args=writer_args,
            compute=_pool(cfg.ray.actors or auto_actors, len(todo)),
            num_cpus=cfg.ray.threads_per_actor,
            num_gpus=0.5 if gpu else 0,
        )
    else:
        ds = ds.flat_map(
            _DecodeLandmarks,
            fn_constructor_args=(p, cfg.ray.threads_per_actor),
            compute=_pool(cfg.ray.landmark_actors or auto_actors, len(todo)),
            num_cpus=cfg.ray.threads_per_actor,
            num_gpus=0.5 if gpu and p.landmarks.backend == "fan" else 0,
        )
        ds = ds.map(
            _FitRenderWrite,
            fn_constructor_args=writer_args,
            compute=_pool(cfg.ray.render_actors or auto_actors, len(todo)),
            num_cpus=cfg.ray.threads_per_actor,
            num_gpus=0.5 if gpu else 0,
        )
    units: dict[str, list[schema.VideoRecord]] = defaultdict(list)
    finished = 0
    for row in ds.iter_rows():
        unit = schema.VideoRecord.from_dict(row)
        processed.add(unit.video_id)
        units[unit.source_video_id].append(unit)
        finished += schema.video_complete(units[unit.source_video_id])
        outcome = f"{unit.kept_frames} frames" if unit.ok else unit.reason
        log(
            f"[{finished}/{len(todo)} videos] {unit.video_id}: {unit.status} "
            f"({outcome}, {unit.seconds:.1f} s)"
        )
        sys.stdout.flush()
    return processed


def run_preprocess(cfg: PreprocessJobConfig, input_uri: str, output: str, log=print) -> dict:
    """Runs the job: returns the run summary (also written to ``output``/summary.json)."""
    start, started_at = time.perf_counter(), time.time()
    chain.check_config(cfg.preprocess)
    cfg = resolve_model(cfg)
    sources, todo, cfg_hash = plan(cfg, input_uri, output)
    save_config(cfg, storage.join(output, schema.CONFIG))
    log(
        f"{len(sources)} videos in {storage.redact(input_uri)}: {len(todo)} to process, "
        f"{len(sources) - len(todo)} done"
    )
    processed: set[str] = set()
    if todo:
        with ray_session(cfg.ray.address, cfg.ray.num_cpus) as ray:
            processed = _process(ray, cfg, todo, output, cfg_hash, log)
    records = shard_writer.read_records(output)
    shard_writer.write_videos_table(output, records)
    summary = shard_writer.summarise(records, processed, time.perf_counter() - start, started_at)
    storage.write_text(storage.join(output, schema.SUMMARY), json.dumps(summary, indent=2))
    return summary
