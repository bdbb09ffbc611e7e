"""End-to-end preprocessing throughput on this machine, per-stage costs and Ray overhead; mask quality.

    python -m benchmarks.preprocess [--clips N] [--max-frames F] [--output DIR]

Runs the real job (local Ray, default stage layout) over the shared clips (all their frames, or the
first F of each) and reports:
- frames_per_s: kept frames / wall time of the Ray run (start-up included);
- stage_seconds: summed wall-clock time inside each stage over all videos (from the per-video records);
  where actors share cores this includes waiting for a core;
- stage_cpu_seconds, stage_ms_per_frame_cpu: the same as CPU time of the actor process (each actor runs
  one thread), i.e. what each stage costs regardless of the machine's other load;
- sequential_frames_per_s: the same stages run one video after another in one process (no Ray), and
  sequential_frames_per_cpu_s the same by this process's CPU time (one torch / OpenCV thread);
- processes_frames_per_s: the same stages in a pool of one plain process per core (multiprocessing,
  no Ray; process start, imports and models included, as for the actors): what this machine's cores
  give in parallel (two processes on this VM's two vCPUs each run 15-40% slower than one alone);
- ray_overhead_share: 1 - (Ray frames/s) / (cores x sequential frames/s): the share of the ideal
  parallel throughput lost to scheduling, serialisation, object transfers, Ray start, idle cores and
  the cores slowing each other down; ray_overhead_vs_processes: 1 - (Ray frames/s) / (processes
  frames/s), what Ray costs against plain processes on the same cores;
- time_outside_stages_share: 1 - (summed wall time inside the stages) / (actors x wall time): the share
  of the actors' time spent outside the stages (start-up, scheduling, serialisation, idling), and
  time_outside_stages_share_after_startup the same over the processing window;
- startup_s: from the job's start until the first video's first stage began (planning, Ray start,
  actor start: imports and models), a fixed cost per run; processing_frames_per_s and
  ray_overhead_share_after_startup: the same measures over the processing window after it;
- running_cluster_*: the same job joining a cluster started beforehand with ``ray start --head`` (as
  ``ray job submit`` runs against one): its frames/s, wall time, start-up (planning, connecting, the
  actors' start) and processing-window frames/s, and its Ray overhead against the plain processes;
  Ray's own start is not in them;
- mask_iou_green_screen: IoU of the foreground masks against a chroma key on liveportrait_d0 (shot on
  a green screen), over the shard's frames.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from infra.config import load_config
from model.face3d.loader import load_morphable_model
from model.face3d.morphable_model import MorphableModel
from pipeline import schema
from pipeline.preprocess.chain import PreprocessConfig, load_models, process_video
from pipeline.preprocess.manifest import VideoSource, discover_videos
from pipeline.preprocess.masks import chroma_key_ground_truth, iou
from pipeline.preprocess.nmfc import NmfcRenderer
from pipeline.preprocess.ray_preprocess import (
    PreprocessJobConfig,
    limit_threads,
    resolve_model,
    run_preprocess,
)

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
GREEN_SCREEN = "liveportrait_d0"


def mask_iou(output: Path) -> float | None:
    shards = list((output / schema.SHARDS_DIR).glob(f"{GREEN_SCREEN}-*.parquet"))
    if not shards:
        return None
    frame = pq.read_table(shards[0], columns=[schema.RGB, schema.MASK]).to_pandas()
    crops = np.stack([schema.decode_image(b) for b in frame[schema.RGB]])
    masks = np.stack([schema.decode_image(b) > 127 for b in frame[schema.MASK]])
    truth, valid = chroma_key_ground_truth(crops)
    return float(np.mean([iou(m, t, v) for m, t, v in zip(masks, truth, valid)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=14, help="number of shared clips (sorted by name)")
    parser.add_argument("--max-frames", type=int, default=None, help="frames per clip (default: all)")
    parser.add_argument("--output", default=None, help="output folder (default: a temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    clips = sorted(SHARED_VIDEOS.glob("*.mp4"))[: args.clips]
    if GREEN_SCREEN not in {c.stem for c in clips}:
        clips.append(SHARED_VIDEOS / f"{GREEN_SCREEN}.mp4")
    work = Path(args.output or tempfile.mkdtemp(prefix="h2h-bench-"))
    try:
        result = run(clips, work, args.max_frames, args.overrides)
    finally:
        if not args.output:  # shards of a benchmark are not kept unless asked for
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


_WORKER: dict = {}


def _set_up_like_an_actor(cfg: PreprocessConfig) -> tuple[MorphableModel, NmfcRenderer]:
    """This process set up as an actor is: one torch / OpenCV thread, freed memory kept, every model
    loaded before the first video. Returns the 3DMM and the renderer."""
    limit_threads(1)
    model = load_morphable_model(cfg.model.path)
    renderer = NmfcRenderer(model, cfg.render)
    load_models(cfg)
    return model, renderer


def _worker_init(cfg: PreprocessConfig) -> None:
    model, renderer = _set_up_like_an_actor(cfg)
    _WORKER.update(cfg=cfg, model=model, renderer=renderer)


def _worker_video(task: tuple[VideoSource, str]) -> int:
    source, output = task
    w = _WORKER
    records = process_video(source, w["cfg"], output, "processes", w["model"], w["renderer"])
    return sum(r.kept_frames for r in records)


def processes_fps(cfg: PreprocessConfig, sources: list[VideoSource], output: str, processes: int) -> float:
    """Frames/s of a pool of ``processes`` plain processes (spawned, each video a task, taken in order as
    processes free up, like the actor pool), from the pool's start to the last video's end."""
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(processes, _worker_init, (cfg,)) as pool:
        frames = sum(pool.imap_unordered(_worker_video, [(s, output) for s in sources], chunksize=1))
    return frames / (time.perf_counter() - start)


def running_cluster_run(cfg: PreprocessJobConfig, manifest: str, output: str) -> tuple[dict, float]:
    """The job joining a local cluster started with ``ray start --head`` before the timing starts (the
    cluster a ``ray job submit`` runs on, with as many logical CPUs as a local run gets): (its summary,
    its wall seconds)."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Token auth, as a user's cluster has it (Ray 2.59+), with the token this process already holds
    # (~/.ray/auth_token, made by the earlier run; Ray reads it once per process).
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    ray_cli = str(Path(sys.executable).parent / "ray")
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Unix socket paths must stay under 108 bytes
    subprocess.run(
        [ray_cli, "start", "--head", f"--port={port}", f"--num-cpus={2 * (os.cpu_count() or 1)}",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    try:
        joined = dataclasses.replace(cfg, ray=dataclasses.replace(cfg.ray, address=f"127.0.0.1:{port}"))
        start = time.perf_counter()
        summary = run_preprocess(joined, manifest, output)
        return summary, time.perf_counter() - start
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(temp_dir, ignore_errors=True)


def run(clips: list[Path], work: Path, max_frames: int | None, overrides: list[str]) -> dict:
    """Both runs (sequential baseline, then the Ray job) over ``clips``, outputs under ``work``."""
    manifest = work / "manifest.csv"
    work.mkdir(parents=True, exist_ok=True)
    manifest.write_text("path\n" + "\n".join(str(c) for c in clips) + "\n")
    overrides = [f"preprocess.decode.max_frames={'null' if max_frames is None else max_frames}", *overrides]
    cfg = resolve_model(load_config(PreprocessJobConfig, None, overrides))

    # Baseline: every stage in this process, one video after another, on one thread as in an actor.
    model, renderer = _set_up_like_an_actor(cfg.preprocess)
    start = time.perf_counter()
    start_cpu = time.process_time()
    sequential_frames = 0
    for source in discover_videos(str(manifest)):
        records = process_video(source, cfg.preprocess, str(work / "sequential"), "baseline", model, renderer)
        sequential_frames += sum(r.kept_frames for r in records)
    sequential_fps = sequential_frames / (time.perf_counter() - start)
    sequential_cpu_fps = sequential_frames / (time.process_time() - start_cpu)

    cores = os.cpu_count() or 1
    sources = discover_videos(str(manifest))
    pool_fps = processes_fps(cfg.preprocess, sources, str(work / "processes"), cores)

    start = time.perf_counter()
    summary = run_preprocess(cfg, str(manifest), str(work / "out"))
    wall_s = time.perf_counter() - start
    ray_fps = summary["frames_this_run"] / wall_s
    ray_cfg, videos = cfg.ray, len(sources)  # the pools' sizes on a local Ray
    actors = (
        min(ray_cfg.actors or cores, videos)
        if ray_cfg.stages == "fused"
        else min(ray_cfg.landmark_actors or cores, videos) + min(ray_cfg.render_actors or cores, videos)
    )
    inside_stages = sum(summary["stage_wall_s"].values())
    cluster_summary, cluster_wall_s = running_cluster_run(cfg, str(manifest), str(work / "out_cluster"))
    return {
        "benchmark": "preprocess",
        "cores": cores,
        "videos": summary["videos"],
        "videos_ok": summary["videos_ok"],
        "frames": summary["frames_this_run"],
        "wall_s": round(wall_s, 2),
        "frames_per_s": round(ray_fps, 2),
        "sequential_frames_per_s": round(sequential_fps, 2),
        "sequential_frames_per_cpu_s": round(sequential_cpu_fps, 2),
        "stage_seconds": summary["stage_wall_s"],
        "stage_frames_per_s": {
            k: round(summary["frames_this_run"] / v, 1) for k, v in summary["stage_wall_s"].items() if v
        },
        "stage_cpu_seconds": summary["stage_cpu_s"],
        "stage_ms_per_frame_cpu": {
            k: round(1000 * v / summary["frames_this_run"], 2)
            for k, v in summary["stage_cpu_s"].items()
        },
        "processes_frames_per_s": round(pool_fps, 2),
        "ray_overhead_share": round(1.0 - ray_fps / (cores * sequential_fps), 3),
        "ray_overhead_vs_processes": round(1.0 - ray_fps / pool_fps, 3),
        "time_outside_stages_share": round(1.0 - inside_stages / (actors * wall_s), 3),
        "time_outside_stages_share_after_startup": round(
            1.0 - inside_stages / (actors * summary["processing_s"]), 3
        ),
        "startup_s": summary["startup_s"],
        "processing_frames_per_s": summary["processing_frames_per_s"],
        "ray_overhead_share_after_startup": round(
            1.0 - summary["processing_frames_per_s"] / (cores * sequential_fps), 3
        ),
        "running_cluster_frames_per_s": round(cluster_summary["frames_this_run"] / cluster_wall_s, 2),
        "running_cluster_wall_s": round(cluster_wall_s, 2),
        "running_cluster_startup_s": cluster_summary["startup_s"],
        "running_cluster_processing_frames_per_s": cluster_summary["processing_frames_per_s"],
        "running_cluster_ray_overhead_vs_processes": round(
            1.0 - cluster_summary["frames_this_run"] / cluster_wall_s / pool_fps, 3
        ),
        "mask_iou_green_screen": mask_iou(work / "out"),
        "target_frames_per_s": 50,
    }


if __name__ == "__main__":
    main()
