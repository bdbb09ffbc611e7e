"""Reenactment speed: the batch path's frames per second and seconds per stage, the streaming path's
throughput, latency and per-stage milliseconds, and the generator's synthesis rate at 256 px.

    python -m benchmarks.reenact [--frames N] [--no-cpu] [--gpu-frames N]

CPU part: a person model made here (configs/train_tiny.yaml's 64 px networks, freshly initialised and
fine-tuned for a few steps: speed does not depend on what the weights learned) from a shared clip
preprocessed at 128 px, driven by ``--frames`` frames of another shared clip, batch and streaming (the
file played as fast as the pipeline takes it).
Generator part: the paper's 256 px generator (configs/train.yaml's networks, converted for one person)
synthesising frame after frame with its two previous outputs fed back: frames per second on this machine's
CPU (fp32) and, where CUDA is available, on the GPU (bf16), the card named; real time is 25 frames/s.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.finetune import LONG_CLIP, REPO, VIDEOS, make_data, random_init
from infra.config import load_config
from model.networks.finetune import convert_generator
from model.networks.renderer import VideoRenderer
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.loop import finetune_person
from pipeline.finetune.person_model import person_model_uri
from pipeline.reenact.reenact import ReenactConfig, reenact, reenact_stream
from pipeline.reenact.synthesis import StreamingSynthesizer
from pipeline.train.config import TrainConfig

SOURCE = "sadtalker_WDA_KatieHill_000"


def person_model(work: Path) -> str:
    data = make_data(work, 0)
    init = random_init(work / "init.pt", "train_tiny.yaml")
    overrides = [
        "budget.steps=2", "budget.eval_every=1000000", "split.holdout_frames=27", "split.train_frames=100",
        "tracking.enabled=false", "run.log_every=1000000", f"run.storage_path={work / 'people'}",
    ]  # fmt: skip
    cfg = load_config(FinetuneConfig, str(REPO / "configs" / "finetune_tiny.yaml"), overrides)
    status = finetune_person(cfg, init, data, LONG_CLIP)
    assert status.ok, status
    return person_model_uri(str(work / "people"), LONG_CLIP)


def cpu_part(work: Path, frames: int) -> dict:
    person = person_model(work)
    source = str(VIDEOS / f"{SOURCE}.mp4")
    cfg = load_config(ReenactConfig, None, [f"source.decode.max_frames={frames}", "output_px=256"])
    batch = reenact(source, person, str(work / "batch.mp4"), cfg, log=lambda m: None)
    stream = reenact_stream(source, person, str(work / "stream.mp4"), cfg, realtime=False, log=lambda m: None)
    return {
        "person_px": 64,
        "batch": {
            "frames": batch["frames"],
            "frames_per_s_end_to_end": round(batch["frames"] / batch["total_s"], 2),
            "synthesis_frames_per_s": batch["synthesis_frames_per_s"],
            "seconds": batch["seconds"],
        },
        "stream": stream,
    }


def generator_rate(device: torch.device, frames: int, autocast: torch.dtype | None) -> float:
    cfg = load_config(TrainConfig, str(REPO / "configs" / "train.yaml"), ["loss.vgg.random_weights=true"])
    torch.manual_seed(0)
    generator = VideoRenderer(cfg.networks, 4).generator
    h_new = torch.nn.functional.normalize(torch.randn(cfg.networks.n_f), dim=0)
    generator = convert_generator(generator, h_new).to(device).eval()
    size = cfg.data.image_px
    nmfc = torch.rand(frames, 3, size, size, device=device) * 2 - 1
    synthesizer = StreamingSynthesizer(generator, autocast)
    synthesizer.run(nmfc[:3])  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for t in range(frames):
        synthesizer.run(nmfc[t : t + 1])  # one frame at a time, as a stream does
    if device.type == "cuda":
        torch.cuda.synchronize()
    return round(frames / (time.perf_counter() - start), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="source frames driven on the CPU")
    parser.add_argument("--no-cpu", action="store_true")
    parser.add_argument("--gpu-frames", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="h2h-bench-reenact-"))
    try:
        result: dict = {"benchmark": "reenact", "cpu_count": os.cpu_count()}
        result["load_avg_1min"] = round(os.getloadavg()[0], 2)
        if not args.no_cpu:
            result["tiny_cpu"] = cpu_part(work, args.frames)
            result["generator_256px_cpu_fp32_frames_per_s"] = generator_rate(torch.device("cpu"), 10, None)
        if torch.cuda.is_available():
            result["gpu"] = {
                "device": torch.cuda.get_device_name(),
                "generator_256px_bf16_frames_per_s": generator_rate(
                    torch.device("cuda"), args.gpu_frames, torch.bfloat16
                ),
                "realtime_frames_per_s": 25,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
