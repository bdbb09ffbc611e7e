"""Fine-tuning cost: minutes per person for 50 and 500 training frames at the tiny CPU config, people per
hour one at a time and two at a time on Ray Tune, against the same fine-tunes one after another in one
process; on a GPU, the paper's budget (500 frames x 15 epochs) at 256 px.

    python -m benchmarks.finetune [--people N] [--epochs E] [--no-cpu] [--gpu-steps N]

CPU part: configs/train_tiny.yaml's networks (64 px), freshly initialised (speed does not depend on the
weights), fine-tuned with configs/finetune_tiny.yaml's settings but the paper's epoch budget (``--epochs``,
15) on shared clips preprocessed here at 128 px:
- minutes_per_person_{50,500}_frames: one person in this process (its held-out scoring included);
- people_per_hour_sequential / _ray_concurrency_{1,2}: ``--people`` people of 50 frames each, one after
  another in this process, and as a Ray Tune batch (Ray's start included);
  ray_overhead_vs_sequential_concurrency_1 = 1 - (Ray people/h) / (sequential people/h).
GPU part (CUDA only): the paper's 256 px networks (configs/train.yaml, VGG19 with random weights) on a
random batch, bf16: seconds per step, the minutes of 500 frames x 15 epochs (the paper: up to 30 on an RTX
2080 Ti; target: under 3), the peak memory of one fine-tune and how many would fit in the GPU's memory.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from infra.config import config_hash, load_config, to_dict
from model.face3d.loader import load_morphable_model
from model.networks.renderer import VideoRenderer
from pipeline.finetune.batch import run_batch
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.loop import finetune_person
from pipeline.preprocess.chain import preprocess_in_process
from pipeline.preprocess.ray_preprocess import PreprocessJobConfig
from pipeline.train.checkpoint import Checkpoint, save_checkpoint
from pipeline.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
VIDEOS = REPO.parent / "shared" / "data" / "videos"
LONG_CLIP = "liveportrait_d9"  # 587 frames: 500 to train, the rest held out
CLIPS = ("dpe_d", "liveportrait_d3", "sadtalker_WDA_KatieHill_000", "videoretalking_4", "liveportrait_d18")


def make_data(folder: Path, people: int) -> str:
    manifest = folder / "manifest.csv"
    clips = [LONG_CLIP, *CLIPS[:people]]
    manifest.write_text("path,identity\n" + "".join(f"{VIDEOS / f'{c}.mp4'},{c}\n" for c in clips))
    overrides = [
        "preprocess.decode.max_frames=587",
        "preprocess.track.crop_size=128",
        "preprocess.render.image_size=[128,128]",
        "preprocess.render.mouth_box_px=36",
    ]
    cfg = load_config(PreprocessJobConfig, None, overrides).preprocess
    out = str(folder / "shards")
    model = load_morphable_model(None)
    preprocess_in_process(str(manifest), out, cfg, config_hash(cfg), model, lambda m: None)
    return out


def random_init(path: Path, train_config: str, overrides: list[str] = ()) -> str:
    cfg = load_config(TrainConfig, str(REPO / "configs" / train_config), list(overrides))
    torch.manual_seed(0)
    nets = VideoRenderer(cfg.networks, 4)
    names = ("generator", "embedder", "image_discriminator", "mouth_discriminator", "temporal_discriminator")
    checkpoint = Checkpoint(
        kind="train", step=0, samples_seen=0, networks={n: getattr(nets, n).state_dict() for n in names},
        networks_config=cfg.networks, generator_kind="adain", identities=("a", "b", "c", "d"),
        config=to_dict(cfg),
    )  # fmt: skip
    save_checkpoint(str(path), checkpoint)
    return str(path)


def cpu_part(work: Path, people: int, epochs: float) -> dict:
    data = make_data(work, people)
    init = random_init(work / "init.pt", "train_tiny.yaml")
    base = [
        f"budget.epochs={epochs}", "budget.steps=0", "budget.eval_every=1000000", "split.holdout_frames=27",
        "split.holdout_share=0.2", "tracking.enabled=false", "run.log_every=1000000",
        f"run.threads={os.cpu_count()}",
    ]  # fmt: skip

    def config(name: str, *more: str) -> FinetuneConfig:
        return load_config(
            FinetuneConfig, str(REPO / "configs" / "finetune_tiny.yaml"),
            [*base, f"run.storage_path={work / name}", *more],
        )  # fmt: skip

    out: dict = {"epochs": epochs}
    for frames in (50, 500):
        start = time.perf_counter()
        cfg = config(f"one-{frames}", f"split.train_frames={frames}")
        status = finetune_person(cfg, init, data, LONG_CLIP)
        assert status.ok, status
        out[f"minutes_per_person_{frames}_frames"] = round((time.perf_counter() - start) / 60, 3)
        out[f"steps_{frames}_frames"] = status.steps
    batch = list(CLIPS[:people])
    start = time.perf_counter()
    sequential = config("sequential", "split.train_frames=50", "batch.ray=false")
    run_batch(sequential, init, data, batch, lambda m: None)
    out["people_per_hour_sequential"] = round(len(batch) / ((time.perf_counter() - start) / 3600), 1)
    cores = os.cpu_count() or 1
    for concurrency in (1, 2):
        cpus = max(1, cores // concurrency)
        cfg = config(
            f"ray-{concurrency}", "split.train_frames=50", "batch.ray=true",
            f"batch.concurrency={concurrency}",
            f"batch.cpus_per_person={cpus}", f"run.threads={cpus}",
        )  # fmt: skip
        start = time.perf_counter()
        run_batch(cfg, init, data, batch, lambda m: None)
        out[f"people_per_hour_ray_concurrency_{concurrency}"] = round(
            len(batch) / ((time.perf_counter() - start) / 3600), 1
        )
    out["ray_overhead_vs_sequential_concurrency_1"] = round(
        1 - out["people_per_hour_ray_concurrency_1"] / out["people_per_hour_sequential"], 3
    )
    return out


def gpu_part(steps: int) -> dict | None:
    if not torch.cuda.is_available():
        return None
    from benchmarks.train_step import random_batch
    from model.networks.finetune import convert_generator, convert_image_discriminator
    from model.networks.losses import ObjectiveConfig, VGGPerceptualLoss
    from pipeline.train.step import TrainStep

    cfg = load_config(TrainConfig, str(REPO / "configs" / "train.yaml"), ["loss.vgg.random_weights=true"])
    ft = FinetuneConfig()
    device = torch.device("cuda")
    torch.manual_seed(0)
    nets = VideoRenderer(cfg.networks, 4).to(device)
    h_new = torch.nn.functional.normalize(torch.randn(cfg.networks.n_f, device=device), dim=0)
    nets.generator = convert_generator(nets.generator, h_new)
    nets.image_discriminator = convert_image_discriminator(nets.image_discriminator, h_new)
    nets.embedder = None
    vgg = VGGPerceptualLoss(cfg.loss.vgg).to(device)
    trainer = TrainStep(nets, cfg.loss, ObjectiveConfig(), ft.optim, ft.schedule, vgg, torch.bfloat16)
    B, T, S = ft.run.batch_size, cfg.data.clip_frames, cfg.data.image_px
    batch = random_batch(B, T, 1, S, device)
    for _ in range(3):
        trainer(batch, 0)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        trainer(batch, 0)
    torch.cuda.synchronize()
    per_step = (time.perf_counter() - start) / steps
    paper_steps = math.ceil(15 * (500 // T) / B)
    peak = torch.cuda.max_memory_allocated()
    total = torch.cuda.get_device_properties(device).total_memory
    return {
        "device": torch.cuda.get_device_name(),
        "seconds_per_step_bf16": round(per_step, 4),
        "steps_500_frames_15_epochs": paper_steps,
        "minutes_500_frames_15_epochs": round(paper_steps * per_step / 60, 2),
        "peak_memory_gib": round(peak / 2**30, 2),
        "fine_tunes_fitting_in_memory": int(total // peak),
        "target_minutes": 3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=4, help="people in the batch runs (at most 5)")
    parser.add_argument("--epochs", type=float, default=15.0)
    parser.add_argument("--no-cpu", action="store_true")
    parser.add_argument("--gpu-steps", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="h2h-bench-finetune-"))
    try:
        result: dict = {"benchmark": "finetune", "cpu_count": os.cpu_count()}
        result["load_avg_1min"] = round(os.getloadavg()[0], 2)
        if not args.no_cpu:
            result["tiny_cpu"] = cpu_part(work, min(args.people, len(CLIPS)), args.epochs)
        result["gpu_256px"] = gpu_part(args.gpu_steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
