"""Throughput of the per-video 3DMM fit (Eq. 2) and the energy gap between its two shape solvers.

    python -m benchmarks.fit_3dmm [--frames 1000] [--reference-frames 20] [--landmarks CLIP.npz]

One core (torch and BLAS limited to one thread). On a landmark track of ``--frames`` frames (synthetic:
known parameters, yaw up to 45 degrees, 0.5 px noise, 3 occluded points per frame; or a real clip's
``landmarks_px`` looped forwards and backwards to that length):

1. the whole ``fit_video`` (camera/shape alternation, structured solver): frames/s;
2. one shape solve (cameras fixed at the fit's, the linear bounded problem of Eq. 2) by the structured
   solver from zero, Gram blocks included: frames/s, and its energy against the same solver run to a
   100x tighter tolerance;
3. the reference (``lsq_linear`` trf on the joint problem) and the structured solver on the first
   ``--reference-frames`` frames of that problem (the generic solver is far too slow for 1000 frames):
   frames/s of both and the relative energy gap (fast - reference) / reference.

Wall-clock frames/s and frames per CPU-second of this (single-threaded) process are both reported: on
a machine shared with other jobs the latter is the fairer per-core figure. The last stdout line is one
JSON object.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from model.face3d.loader import load_morphable_model
from pipeline.preprocess.fit_3dmm import FitConfig, fit_video, uses_jaw_contour
from pipeline.preprocess.fit_reference_lsq import fit_shape_bounded_lsq
from pipeline.preprocess.fit_shape import LandmarkBasis, build_shape_problem, identity_asymmetry_gram
from pipeline.preprocess.fit_structured import StructuredSolverConfig, fit_shape_admm_structured
from pipeline.preprocess.synthetic_landmarks import synthetic_track


def landmark_track(frames: int, landmarks: str | None, model) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks (frames, 68, 2) and weights (frames, 68): synthetic (occluded points weighted 0), or a
    real clip looped forwards/backwards to the length (all weights 1)."""
    if landmarks is None:
        track = synthetic_track(model, frames, seed=0, max_yaw_deg=45.0, noise_px=0.5)
        return track.landmarks_px, track.weights
    with np.load(landmarks) as data:
        clip = data["landmarks_px"].astype(np.float64)
    loop = np.concatenate([clip, clip[::-1]])
    track = np.concatenate([loop] * (frames // len(loop) + 1))[:frames]
    return track, np.ones(track.shape[:2])


def shape_problem_at(model, result, landmarks_px, weights, config: FitConfig, frames: slice):
    """The linear shape problem with the fit's cameras and contour choice, for a range of frames."""
    basis = LandmarkBasis.from_model(model, uses_jaw_contour(config))
    expression = result.expression[frames]
    camera = result.camera[frames]
    choice = basis.choose(basis.candidate_points(result.identity, expression), camera)
    bound = config.identity_bound_std
    return build_shape_problem(
        basis,
        choice,
        camera,
        landmarks_px[frames],
        weights[frames],
        result.iod_px,
        config,
        np.tile([-bound, bound], (model.n_identity, 1)),
        model.expression_bounds.astype(np.float64),
        config.w_asymmetry * identity_asymmetry_gram(model) if config.w_asymmetry > 0 else None,
    )


def timed(fn, *args):
    """fn(*args), wall seconds (CPU seconds of this process in ``timed.cpu_s`` afterwards)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    timed.cpu_s = time.process_time() - start_cpu
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--reference-frames", type=int, default=20)
    parser.add_argument("--landmarks", default=None, help="a <clip>.npz landmark track (default: synthetic)")
    parser.add_argument("--model", default=None, help="3DMM path (default: ../shared/3dmm)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = load_morphable_model(args.model)
    config = FitConfig()
    landmarks_px, weights = landmark_track(args.frames, args.landmarks, model)
    zeros_id = np.zeros(model.n_identity)

    with threadpool_limits(limits=1):
        # 1. The whole fit.
        result, fit_s = timed(fit_video, model, landmarks_px, weights, config)
        fit_cpu_s = timed.cpu_s
        print(f"fit_video: {args.frames} frames in {fit_s:.2f} s, {result.iterations} rounds", flush=True)

        # 2. One structured shape solve on all frames (a fresh problem: its Gram blocks are timed too).
        problem, build_s = timed(shape_problem_at, model, result, landmarks_px, weights, config, slice(None))
        zeros_exp = np.zeros((args.frames, model.n_expression))
        (fast_id, fast_exp, fast_iters, _), fast_s = timed(
            fit_shape_admm_structured, problem, zeros_id, zeros_exp
        )
        fast_cpu_s = timed.cpu_s
        tight = dataclasses.replace(StructuredSolverConfig(), tolerance=2e-6, max_iterations=5000)
        tight_id, tight_exp, tight_iters, _ = fit_shape_admm_structured(problem, zeros_id, zeros_exp, tight)
        e_fast, e_tight = problem.energy(fast_id, fast_exp), problem.energy(tight_id, tight_exp)
        print(f"structured: {args.frames} frames in {fast_s:.3f} s ({fast_iters} iterations)", flush=True)

        # 3. Reference vs structured on the first frames.
        small = shape_problem_at(
            model, result, landmarks_px, weights, config, slice(0, args.reference_frames)
        )
        zeros_small = np.zeros((args.reference_frames, model.n_expression))
        (ref_id, ref_exp, ref_iters), ref_s = timed(fit_shape_bounded_lsq, small, zeros_id, zeros_small)
        ref_cpu_s = timed.cpu_s
        (sf_id, sf_exp, *_), small_fast_s = timed(fit_shape_admm_structured, small, zeros_id, zeros_small)
        e_ref, e_small_fast = small.energy(ref_id, ref_exp), small.energy(sf_id, sf_exp)
        print(
            f"reference: {args.reference_frames} frames in {ref_s:.1f} s ({ref_iters} iterations)", flush=True
        )

    summary = {
        "benchmark": "fit_3dmm",
        "track": args.landmarks or "synthetic",
        "frames": args.frames,
        "threads": 1,
        "fit_video_frames_per_s": args.frames / fit_s,
        "fit_video_frames_per_cpu_s": args.frames / fit_cpu_s,
        "fit_video_rounds": result.iterations,
        "fit_video_last_move_pct_iod": 100 * result.last_move_iod,
        "fit_video_converged": result.converged,
        "fit_mean_error_pct_iod": float(100 * result.mean_error_iod(weights).mean()),
        "shape_problem_build_s": build_s,
        "structured_frames_per_s": args.frames / fast_s,
        "structured_frames_per_cpu_s": args.frames / fast_cpu_s,
        "structured_iterations": fast_iters,
        "structured_gap_vs_tight": (e_fast - e_tight) / e_tight,
        "tight_iterations": tight_iters,
        "reference_frames": args.reference_frames,
        "reference_frames_per_s": args.reference_frames / ref_s,
        "reference_frames_per_cpu_s": args.reference_frames / ref_cpu_s,
        "reference_iterations": ref_iters,
        "structured_frames_per_s_on_reference_problem": args.reference_frames / small_fast_s,
        "energy_reference": e_ref,
        "energy_structured": e_small_fast,
        "energy_gap": (e_small_fast - e_ref) / e_ref,
        "feasible": bool(problem.is_feasible(fast_id, fast_exp, 0) and small.is_feasible(ref_id, ref_exp, 0)),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
