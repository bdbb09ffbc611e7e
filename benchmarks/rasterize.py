"""NMFC rendering throughput for the ICT head surface (11,248 vertices, 22,288 triangles).

    python -m benchmarks.rasterize                     # last stdout line is one JSON object
    python -m benchmarks.rasterize --size 256 --seconds 3

Measures NMFC frames per second at ``--size`` x ``--size`` for batch 1 and batch 32, with one torch
thread and with all threads, on CPU (and CUDA when a device is present):

- ``nmfc``: the whole NMFC image from 3DMM parameters (model evaluation, ``model.face3d.camera.project``,
  rasterisation with back faces culled as ``NmfcConfig`` does, colour lookup) as float32 in [0, 1];
  ``nmfc_uint8`` the same as uint8, the format the preprocessing job stores (every frame gets its own
  random identity here; a video's frames share one, which saves the identity product);
- ``raster``: rasterisation alone of the same projected vertices: ``cull`` as NMFC runs it (back faces
  culled, no barycentrics) and ``full`` (every triangle of the open surface z-buffered, with
  barycentrics: the whole PyTorch3D-style output), by each backend (``numba`` on CPU, ``torch``; NMFC
  uses ``auto``, i.e. numba on CPU); with ``--pytorch3d`` also by PyTorch3D where it is installed (on CPU
  at batch 1 only: its CPU kernel takes seconds a frame).

``*_fps`` is the median by wall clock; on CPU ``*_fps_cpu_time`` is the median by this process's CPU
time, which is what one thread costs when other processes share the cores (with several threads it sums
them), and ``*_fps_best_cpu_time`` the best repeat by CPU time.

The process keeps freed memory for reuse (``infra.memory.retain_freed_memory``), as the preprocessing
workers do. Poses are random and realistic (head about 80 % of the image height, yaw up to +-35 degrees). Each
number is the median over repeats of at least ``--seconds``. The machine's other load changes them; the
JSON records the load average next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from infra.memory import retain_freed_memory
from model.face3d.camera import make_camera
from model.face3d.loader import load_morphable_model
from pipeline.preprocess.nmfc import NmfcConfig, NmfcRenderer
from pipeline.preprocess.rasterize import RasterizeConfig, pytorch3d_available, rasterize


def random_parameters(model, n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """identity (n, N_id), expression (n, N_exp), camera (n, 7) for realistic head poses."""
    rng = np.random.default_rng(seed)
    surface = model.surface().mean
    height_units = float(np.ptp(surface[:, 1]))
    cameras = [
        make_camera(
            pitch=rng.uniform(-0.3, 0.3),
            yaw=rng.uniform(-0.6, 0.6),
            roll=rng.uniform(-0.2, 0.2),
            tx=size / 2 + rng.uniform(-0.05, 0.05) * size,
            ty=size / 2 + rng.uniform(-0.05, 0.05) * size,
            scale=0.8 * size / height_units * rng.uniform(0.9, 1.1),
        )
        for _ in range(n)
    ]
    identity = rng.normal(size=(n, model.n_identity)) * 0.7
    expression = rng.uniform(0.0, 0.5, size=(n, model.n_expression))
    return tuple(torch.tensor(np.asarray(a), dtype=torch.float32) for a in (identity, expression, cameras))


def frames_per_second(
    run, frames_per_call: int, seconds: float, sync=lambda: None
) -> tuple[float, float, float]:
    """Frames/s of ``run()`` repeated for at least ``seconds`` (after one warm-up call): the median by
    wall clock, the median by this process's CPU time (less sensitive to other processes' load when torch
    runs one thread) and the best by CPU time (closest to an unloaded machine)."""
    run()
    sync()
    wall, cpu = [], []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(wall) < 3:
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        sync()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return (
        frames_per_call / float(np.median(wall)),
        frames_per_call / float(np.median(cpu)),
        frames_per_call / max(min(cpu), 1e-9),
    )


def _rounded(fps: float) -> float:
    """One decimal, or three significant digits below 10 frames/s (PyTorch3D on CPU)."""
    return round(fps, 1) if fps >= 10 else float(f"{fps:.3g}")


def measure(
    renderer: NmfcRenderer, params, batch: int, seconds: float, device: str, with_pytorch3d: bool = False
) -> dict:
    identity, expression, camera = (p[:batch].to(device) for p in params)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    verts_px = renderer.vertices_px(identity, expression, camera)
    size = renderer.config.image_size
    runs = {
        "nmfc": lambda: renderer.render(identity, expression, camera),
        "nmfc_uint8": lambda: renderer.render(identity, expression, camera, uint8=True),
    }
    # As NMFC uses it (back faces culled, no barycentrics), and the full PyTorch3D-like output, with each
    # of our backends that runs on the device (and PyTorch3D when asked for).
    backends = ["numba", "torch"] if device == "cpu" else ["torch"]
    if with_pytorch3d and pytorch3d_available() and (device == "cuda" or batch == 1):
        backends.append("pytorch3d")
    for backend in backends:
        for name, cull, bary in (("raster_cull", True, False), ("raster_full", False, True)):
            config = RasterizeConfig(backend=backend, cull_backfaces=cull, barycentrics=bary)
            runs[f"{name}_{backend}"] = lambda c=config: rasterize(verts_px, renderer.faces, size, c)
    result = {}
    for name, run in runs.items():
        wall_fps, cpu_fps, best_cpu_fps = frames_per_second(run, batch, seconds, sync)
        result[f"{name}_fps"] = _rounded(wall_fps)
        if device == "cpu":
            result[f"{name}_fps_cpu_time"] = _rounded(cpu_fps)
            result[f"{name}_fps_best_cpu_time"] = _rounded(best_cpu_fps)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--seconds", type=float, default=2.0, help="minimum timing per measurement")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--model", default=None, help="3DMM path (default: the ICT model in ../shared)")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU timings")
    parser.add_argument(
        "--pytorch3d", action="store_true", help="also time PyTorch3D (where installed; CPU: batch 1 only)"
    )
    args = parser.parse_args()

    allocator_retains = retain_freed_memory()  # as the preprocessing workers run
    model = load_morphable_model(args.model)
    all_threads = os.cpu_count() or 1
    params = random_parameters(model, max(args.batches), args.size)
    results: dict = {
        "benchmark": "rasterize",
        "image_size": args.size,
        "vertices": int(model.surface_vertex_count),
        "triangles": int(len(model.faces)),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": all_threads,
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "pytorch3d_available": pytorch3d_available(),
        "retain_freed_memory": allocator_retains,
        "cpu_results": {},
    }
    for threads in [] if args.no_cpu else sorted({1, all_threads}):
        torch.set_num_threads(threads)
        for device in ["cpu"]:
            renderer = NmfcRenderer(model, NmfcConfig(image_size=(args.size, args.size)), device=device)
            for batch in args.batches:
                key = f"threads{threads}_batch{batch}"
                results["cpu_results"][key] = measure(
                    renderer, params, batch, args.seconds, device, args.pytorch3d
                )
                print(key, results["cpu_results"][key], flush=True)
    if torch.cuda.is_available():
        renderer = NmfcRenderer(model, NmfcConfig(image_size=(args.size, args.size)), device="cuda")
        results["cuda_device"] = torch.cuda.get_device_name()
        results["cuda_results"] = {}
        for batch in args.batches:
            key = f"batch{batch}"
            results["cuda_results"][key] = measure(
                renderer, params, batch, args.seconds, "cuda", args.pytorch3d
            )
            print("cuda", key, results["cuda_results"][key], flush=True)
    results["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
