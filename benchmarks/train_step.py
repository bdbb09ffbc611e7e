"""Training throughput: frames/s per worker of the tiny config on CPU (the loop in one process, and on Ray
Train with 1 and 2 workers), and the paper's 256 px step on a GPU when there is one.

    python -m benchmarks.train_step [--steps N] [--data OUT] [--workers 1 2] [--no-cpu] [--gpu-steps N]

CPU part: configs/train_tiny.yaml (64 px, all losses but VGG) on a shard set that the preprocessing chain
makes here from shared clips (``--clips`` clips x ``--frames`` frames at 128 px), or on ``--data``. Each run
trains ``--steps`` steps; its rate is the loop's own measure over the second half (start-up, the first
compilations and the data set-up excluded): training frames (clips x T) per second per worker.
- plain_loop: ``train`` in this process, no Ray (``cluster.ray=false``);
- ray_<W>_workers: ``python -m jobs.train``'s path, Ray Train with W CPU workers (gloo), each with
  ``cluster.cpus_per_worker`` CPUs; ray_overhead_vs_plain = 1 - ray_1_worker / plain_loop.
GPU part (CUDA only): one ``TrainStep`` of the paper's networks (``configs/train.yaml``: 256 px, FaceNet,
VGG19 with random weights, since none are downloaded) on a random batch, float32 and bf16 autocast:
frames/s and peak memory. The target is the paper's fine-tuning budget (500 frames x 15 epochs) in under
3 minutes: >= 45 training frames/s.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from infra.config import config_hash, load_config
from model.face3d.loader import load_morphable_model
from pipeline.preprocess.chain import preprocess_in_process
from pipeline.preprocess.ray_preprocess import PreprocessJobConfig
from pipeline.train.config import TrainConfig
from pipeline.train.ray_train import run_training

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = REPO.parent / "shared" / "data" / "videos"
CLIPS = ("liveportrait_d0", "sadtalker_WDA_KatieHill_000", "videoretalking_5", "dpe_d")
CROP_PX = 128


def make_shards(folder: Path, clips: int, frames: int) -> str:
    manifest = folder / "manifest.csv"
    rows = [f"{SHARED_VIDEOS / f'{c}.mp4'},{c}" for c in CLIPS[:clips]]
    manifest.write_text("path,identity\n" + "\n".join(rows) + "\n")
    overrides = [
        f"preprocess.decode.max_frames={frames}",
        f"preprocess.track.crop_size={CROP_PX}",
        f"preprocess.render.image_size=[{CROP_PX},{CROP_PX}]",
        f"preprocess.render.mouth_box_px={CROP_PX * 72 // 256}",
    ]
    cfg = load_config(PreprocessJobConfig, None, overrides).preprocess
    out = str(folder / "shards")
    model = load_morphable_model(None)
    preprocess_in_process(str(manifest), out, cfg, config_hash(cfg), model, log=lambda m: None)
    return out


def cpu_rates(data_uri: str, steps: int, workers: list[int], work: Path) -> dict:
    base = [
        f"run.storage_path={work / 'runs'}",
        f"run.steps={steps}",
        f"run.log_every={steps // 2}",
        f"run.checkpoint_every={steps}",
        f"run.preview_every={steps * 10}",
        "run.video_frames=0",
        "tracking.enabled=false",
        "schedule.adversarial_from_step=0",
        "schedule.temporal_from_step=0",
    ]
    results: dict = {}

    def rate(name: str, overrides: list[str]) -> float:
        cfg = load_config(TrainConfig, str(REPO / "configs" / "train_tiny.yaml"), base + overrides)
        start = time.perf_counter()
        info = run_training(cfg, data_uri, name)
        results[f"{name}_wall_s"] = round(time.perf_counter() - start, 1)
        return round(float(info["metrics"]["frames_per_s_per_worker"]), 2)

    cores = os.cpu_count() or 1
    results["plain_loop_frames_per_s"] = rate("plain_loop", ["cluster.ray=false", f"run.threads={cores}"])
    for w in workers:
        per_worker_cpus = max(1, cores // w)
        results[f"ray_{w}_workers_frames_per_s_per_worker"] = rate(
            f"ray_{w}_workers",
            ["cluster.ray=true", f"cluster.num_workers={w}", f"cluster.cpus_per_worker={per_worker_cpus}"],
        )
    if 1 in workers:
        results["ray_overhead_vs_plain"] = round(
            1 - results["ray_1_workers_frames_per_s_per_worker"] / results["plain_loop_frames_per_s"], 3
        )
    return results


def random_batch(B: int, T: int, M: int, S: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A training batch of random tensors: B clips of T frames and M identity frames at S px (speed does
    not depend on the pixels)."""
    from pipeline.train import data

    return {
        data.RGB: torch.rand(B, T, 3, S, S, device=device) * 2 - 1,
        data.NMFC: torch.rand(B, T, 3, S, S, device=device) * 2 - 1,
        data.MASK: (torch.rand(B, T, 1, S, S, device=device) > 0.3).float(),
        data.FLOW: torch.randn(B, T - 1, 2, S, S, device=device),
        data.MOUTH_CENTER_PX: torch.full((B, T, 2), S / 2, device=device),
        data.IDENTITY: torch.arange(B, device=device) % 4,
        data.ID_RGB: torch.rand(B, M, 3, S, S, device=device) * 2 - 1,
        data.ID_MASK: torch.ones(B, M, 1, S, S, device=device),
    }


def gpu_rates(steps: int) -> dict | None:
    if not torch.cuda.is_available():
        return None
    from model.networks.losses import VGGPerceptualLoss
    from model.networks.renderer import VideoRenderer
    from pipeline.train.step import TrainStep

    cfg = load_config(TrainConfig, str(REPO / "configs" / "train.yaml"), ["loss.vgg.random_weights=true"])
    device = torch.device("cuda")
    B, T, M, S = cfg.run.batch_size, cfg.data.clip_frames, cfg.data.identity_frames, cfg.data.image_px
    batch = random_batch(B, T, M, S, device)
    out = {"device": torch.cuda.get_device_name(), "batch": B, "clip_frames": T, "image_px": S}
    for precision, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        nets = VideoRenderer(cfg.networks, 4).to(device)
        vgg = VGGPerceptualLoss(cfg.loss.vgg).to(device)
        step = TrainStep(nets, cfg.loss, cfg.objective, cfg.optim, cfg.schedule, vgg, dtype)
        for _ in range(3):
            step(batch, 10**6)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(steps):
            step(batch, 10**6)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        out[f"{precision}_frames_per_s"] = round(steps * B * T / seconds, 1)
        out[f"{precision}_peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        del nets, vgg, step
        torch.cuda.empty_cache()
    out["finetune_budget_minutes_bf16"] = round(500 * 15 / out["bf16_frames_per_s"] / 60, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per CPU run")
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--frames", type=int, default=96, help="frames per clip of the shard set")
    parser.add_argument("--data", default=None, help="an existing preprocessing output to train on")
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2], help="Ray worker counts")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU runs")
    parser.add_argument("--gpu-steps", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="h2h-bench-train-"))
    try:
        result: dict = {
            "benchmark": "train_step",
            "torch": torch.__version__,
            "cpu": platform.machine(),
            "cpu_count": os.cpu_count(),
            "load_avg_1min": round(os.getloadavg()[0], 2),
        }
        if not args.no_cpu:
            data_uri = args.data or make_shards(work, args.clips, args.frames)
            result["tiny_cpu"] = {"steps": args.steps, **cpu_rates(data_uri, args.steps, args.workers, work)}
        result["gpu_256px"] = gpu_rates(args.gpu_steps)
        result["target_gpu_frames_per_s"] = 45
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
