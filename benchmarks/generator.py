"""Video renderer networks: parameter counts and generator synthesis speed.

    python -m benchmarks.generator                  # last stdout line is one JSON object
    python -m benchmarks.generator --size 256 --seconds 5 --threads 2

- Parameter counts of G, E_id, D^I (with ``--identities`` rows in W), D^M and D^V at the paper's sizes.
- Generator frames per second at ``--size`` px, batch 1, sequential as in synthesis (each output fed
  back as a previous frame), for the meta-learned AdaIN generator (given h) and for the fine-tuned one
  (section 3.4 conversion; what synthesis uses). On CPU in float32 with ``--threads`` torch threads;
  on CUDA (when present) in bf16 autocast with channels_last, the same replayed as a CUDA graph, and
  float32 for reference.

``*_fps`` is by wall clock; on CPU ``*_fps_cpu_time`` divides by this process's CPU time instead (other
processes sharing the cores inflate the wall clock, not the CPU time of a one-thread run). Each number
is the median over repeats of at least ``--seconds``; the JSON records the load average next to them.
The paper synthesises in real time (20 fps) on an RTX 2080 Ti; target on a modern GPU: >= 100 fps.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time

import torch

from model.networks.discriminators import (
    ImageDiscriminator,
    ImageDiscriminatorConfig,
    MouthDiscriminator,
    TemporalDiscriminator,
)
from model.networks.embedder import IdentityEmbedder
from model.networks.finetune import convert_generator
from model.networks.generator import Generator, GeneratorConfig
from model.networks.layers import count_parameters


def synthesis_fps(
    generator: Generator,
    h: torch.Tensor | None,
    size: int,
    seconds: float,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    cuda_graph: bool = False,
) -> tuple[float, float]:
    """(wall-clock fps, CPU-time fps) of sequential batch-1 synthesis, median over repeats.

    cuda_graph: capture one synthesis step as a CUDA graph and replay it per frame (batch-1 synthesis
    launches hundreds of small kernels; a replay launches them all at once).
    """
    cfg = generator.cfg
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    nmfc = torch.rand(1, cfg.n_frames * cfg.nmfc_channels, size, size, device=device)
    nmfc = nmfc.contiguous(memory_format=memory_format)
    prev = torch.zeros(1, cfg.n_frames - 1, cfg.image_channels, size, size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    autocast = (
        # A graph captures the casts too: autocast's cast cache must be off while capturing.
        torch.autocast(device.type, dtype=autocast_dtype, cache_enabled=not cuda_graph)
        if autocast_dtype
        else contextlib.nullcontext()
    )

    def step(prev: torch.Tensor) -> torch.Tensor:
        x_prev = prev.flatten(1, 2).contiguous(memory_format=memory_format)
        frame = generator(nmfc, x_prev, h).frame.float()
        return torch.cat([prev[:, 1:], frame[:, None]], dim=1)  # feed the output back (Eq. 5)

    with torch.inference_mode(), autocast:
        for _ in range(3):  # warm-up (cuDNN autotuning, allocator)
            prev = step(prev)
        sync()
        if cuda_graph:
            step = graphed(step, prev)
        wall_rates, cpu_rates = [], []
        for _ in range(3):
            frames = 0
            t0, c0 = time.perf_counter(), time.process_time()
            while True:
                prev = step(prev)
                frames += 1
                if device.type == "cuda" and frames % 10:
                    continue
                sync()
                if time.perf_counter() - t0 >= seconds / 3:
                    break
            wall_rates.append(frames / (time.perf_counter() - t0))
            cpu_rates.append(frames / max(time.process_time() - c0, 1e-9))
    return sorted(wall_rates)[1], sorted(cpu_rates)[1]


def graphed(step, prev: torch.Tensor):
    """``step`` captured as a CUDA graph on a static copy of ``prev``: the returned step replays it and
    writes the output back into that copy (the frames fed back), so it ignores its argument."""
    static_prev = prev.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step(static_prev)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step(static_prev)

    def replay(_prev: torch.Tensor) -> torch.Tensor:
        graph.replay()
        static_prev.copy_(static_out)
        return static_prev

    return replay


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256, help="frame size in pixels")
    parser.add_argument("--seconds", type=float, default=6.0, help="timing per configuration")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--identities", type=int, default=1, help="rows of D^I's W (training identities)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = GeneratorConfig()
    generator = Generator(cfg).eval()
    h = torch.nn.functional.normalize(torch.randn(1, cfg.n_f), dim=1)
    finetuned = convert_generator(generator, h[0]).eval()
    result: dict[str, object] = {
        "benchmark": "generator",
        "size_px": args.size,
        "batch": 1,
        "params": {
            "generator": count_parameters(generator),
            "generator_finetuned": count_parameters(finetuned),
            "embedder": count_parameters(IdentityEmbedder()),
            "image_discriminator": count_parameters(
                ImageDiscriminator(ImageDiscriminatorConfig(num_identities=args.identities))
            ),
            "mouth_discriminator": count_parameters(MouthDiscriminator()),
            "temporal_discriminator": count_parameters(TemporalDiscriminator()),
        },
        "cpu_threads": args.threads,
        "load_average_1min": os.getloadavg()[0],
        "machine": platform.machine(),
        "torch": torch.__version__,
    }
    print(json.dumps(result["params"]), flush=True)

    if not args.no_cpu:
        cpu = torch.device("cpu")
        for name, net, h_in in (("adain", generator, h), ("finetuned", finetuned, None)):
            fps, fps_cpu = synthesis_fps(net, h_in, args.size, args.seconds, cpu)
            result[f"cpu_{name}_fps"] = round(fps, 3)
            result[f"cpu_{name}_fps_cpu_time"] = round(fps_cpu, 3)
            print(f"cpu {name}: {fps:.2f} fps wall, {fps_cpu:.2f} fps per CPU second", flush=True)

    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
        result["gpu"] = torch.cuda.get_device_name(0)
        for name, net, h_in in (("adain", generator, h), ("finetuned", finetuned, None)):
            net_gpu = net.to(gpu)
            h_gpu = h_in.to(gpu) if h_in is not None else None
            fps, _ = synthesis_fps(net_gpu, h_gpu, args.size, args.seconds, gpu)
            result[f"gpu_{name}_fp32_fps"] = round(fps, 2)
            net_gpu = net_gpu.to(memory_format=torch.channels_last)
            fps, _ = synthesis_fps(net_gpu, h_gpu, args.size, args.seconds, gpu, torch.bfloat16, True)
            result[f"gpu_{name}_bf16_channels_last_fps"] = round(fps, 2)
            try:
                fps, _ = synthesis_fps(
                    net_gpu, h_gpu, args.size, args.seconds, gpu, torch.bfloat16, True, cuda_graph=True
                )
                result[f"gpu_{name}_bf16_channels_last_cuda_graph_fps"] = round(fps, 2)
            except RuntimeError as error:  # reported, not fatal: the eager numbers stand
                result[f"gpu_{name}_cuda_graph_error"] = str(error)[:300]
            print(
                f"gpu {name}: {result[f'gpu_{name}_bf16_channels_last_fps']} fps bf16 channels_last",
                flush=True,
            )
        result["gpu_target_fps"] = 100
    result["load_average_1min_end"] = os.getloadavg()[0]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
