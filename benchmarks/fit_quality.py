"""Per-clip quality of the per-video 3DMM fit (Eq. 2) on real landmark tracks of the shared clips.

    python -m benchmarks.fit_quality [--landmarks /tmp/h2h_landmarks] [--set fit.w_smooth=1e-2]

Reads ``<clip>.npz`` landmark tracks (``landmarks_px (T, 68, 2)``, as written by
``benchmarks.track_landmarks --dump``) and reports per clip:

- landmark error: mean distance between fitted and detected landmarks in % of that frame's inter-ocular
  distance (outer eye corners 36, 45), overall and per face region (jaw, brows, nose, eyes, mouth);
- coefficient magnitudes: identity RMS and max |id| (in standard deviations), expression mean / max and
  the fraction of weights at a bound;
- jitter: mean |second temporal difference| of expression and of pose (angles in degrees, translation in
  pixels), with the configured w_smooth and with w_smooth = 0, plus the landmark error of the latter;
- identity consistency: the identity fitted on the first half of a clip is compared with the second half's
  and with both halves of every other clip (Euclidean distance in standard deviations).

The last stdout line is one JSON object (the summary); per-clip tables go to stdout above it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from infra.config import load_config
from model.face3d.camera import PITCH, ROLL, SCALE, TX, TY
from model.face3d.loader import MorphableModelConfig, load_morphable_model
from pipeline.preprocess.fit_3dmm import (
    LANDMARK_REGIONS,
    OUTER_EYE_CORNERS,
    FitConfig,
    FitResult,
    fit_video,
)
from pipeline.preprocess.fit_shape import second_difference

DEFAULT_LANDMARKS = "/tmp/h2h_landmarks"
TARGET_ERROR_PCT = 2.0


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """The fit being evaluated and the model it uses."""

    fit: FitConfig = FitConfig()
    model: MorphableModelConfig = MorphableModelConfig()


def landmark_error_pct(result: FitResult, landmarks_px: np.ndarray) -> dict[str, float]:
    """Mean fitted-vs-detected distance in % of each frame's inter-ocular distance, overall and per region."""
    a, b = OUTER_EYE_CORNERS
    iod = np.linalg.norm(landmarks_px[:, a] - landmarks_px[:, b], axis=-1)  # (T,)
    dist = np.linalg.norm(result.residuals_px, axis=-1) / iod[:, None] * 100.0  # (T, 68)
    out = {"all": float(dist.mean())}
    out.update({name: float(dist[:, list(ids)].mean()) for name, ids in LANDMARK_REGIONS.items()})
    return out


def jitter(result: FitResult) -> dict[str, float]:
    """Mean |second temporal difference| of expression, pose angles (deg), translation (px), scale (rel)."""
    if result.expression.shape[0] < 3:
        return {"expression": 0.0, "angles_deg": 0.0, "translation_px": 0.0, "scale_rel": 0.0}
    cam = result.camera
    return {
        "expression": float(np.abs(second_difference(result.expression)).mean()),
        "angles_deg": float(np.rad2deg(np.abs(second_difference(cam[:, PITCH : ROLL + 1]))).mean()),
        "translation_px": float(np.abs(second_difference(cam[:, [TX, TY]])).mean()),
        "scale_rel": float(np.abs(second_difference(cam[:, SCALE])).mean() / cam[:, SCALE].mean()),
    }


def magnitudes(result: FitResult, model) -> dict[str, float]:
    lo, hi = model.expression_bounds.T
    exp = result.expression
    return {
        "identity_rms_std": float(np.sqrt(np.mean(result.identity**2))),
        "identity_max_abs_std": float(np.abs(result.identity).max()),
        "expression_mean": float(exp.mean()),
        "expression_max": float(exp.max()),
        "expression_at_bound": float(np.mean((exp <= lo + 1e-9) | (exp >= hi - 1e-9))),
    }


def identity_consistency(halves: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, float]]:
    """For each clip: distance between its halves' identities and the smallest distance to another clip's."""
    out = {}
    for name, (first, second) in halves.items():
        others = [v for other, pair in halves.items() if other != name for v in pair]
        own = float(np.linalg.norm(first - second))
        nearest = min(min(np.linalg.norm(first - o), np.linalg.norm(second - o)) for o in others)
        out[name] = {"own_halves": own, "nearest_other": float(nearest), "consistent": bool(own < nearest)}
    return out


def evaluate_clip(model, landmarks_px: np.ndarray, config: FitConfig) -> dict:
    """All per-clip numbers for one landmark track (T, 68, 2)."""
    start = time.perf_counter()
    result = fit_video(model, landmarks_px, config=config)
    seconds = time.perf_counter() - start
    rough = fit_video(model, landmarks_px, config=dataclasses.replace(config, w_smooth=0.0))
    half = landmarks_px.shape[0] // 2
    first = fit_video(model, landmarks_px[:half], config=config)
    second = fit_video(model, landmarks_px[half:], config=config)
    error = landmark_error_pct(result, landmarks_px)
    error_rough = landmark_error_pct(rough, landmarks_px)
    return {
        "frames": int(landmarks_px.shape[0]),
        "fit_s": seconds,
        "fit_iterations": result.iterations,
        "converged": bool(result.converged),
        "error_pct_iod": error,
        "magnitudes": magnitudes(result, model),
        "jitter": jitter(result),
        "jitter_w_smooth_0": jitter(rough),
        "error_pct_iod_w_smooth_0": error_rough["all"],
        "_halves": (first.identity, second.identity),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--landmarks", default=DEFAULT_LANDMARKS, help="folder of <clip>.npz landmark tracks")
    parser.add_argument("--clips", nargs="*", default=None, help="clip stems (default: all in --landmarks)")
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. fit.w_smooth=0.01")
    args = parser.parse_args(argv)
    config = load_config(QualityConfig, None, args.set)
    model = load_morphable_model(config.model.path)
    files = sorted(Path(args.landmarks).glob("*.npz"))
    if args.clips:
        files = [f for f in files if f.stem in set(args.clips)]
    if not files:
        raise SystemExit(f"--landmarks {args.landmarks}: no <clip>.npz landmark tracks found")

    clips = {}
    for path in files:
        with np.load(path) as data:
            landmarks_px = data["landmarks_px"].astype(np.float64)
        clips[path.stem] = evaluate_clip(model, landmarks_px, config.fit)
        c = clips[path.stem]
        regions = " ".join(f"{k}={v:.2f}" for k, v in c["error_pct_iod"].items())
        jit, jit0, mag = c["jitter"], c["jitter_w_smooth_0"], c["magnitudes"]
        print(
            f"{path.stem:44s} T={c['frames']:4d} err%iod {regions}"
            f" | w_sm=0: {c['error_pct_iod_w_smooth_0']:.2f}"
            f" | jitter exp {jit['expression']:.4f} (w_sm=0 {jit0['expression']:.4f})"
            f" ang {jit['angles_deg']:.3f} ({jit0['angles_deg']:.3f}) deg"
            f" | id rms {mag['identity_rms_std']:.2f} max {mag['identity_max_abs_std']:.2f}"
            f" | {c['fit_s']:.1f}s",
            flush=True,
        )
    consistency = identity_consistency({k: v.pop("_halves") for k, v in clips.items()})
    for name, c in consistency.items():
        clips[name]["identity_consistency"] = c
    errors = [c["error_pct_iod"]["all"] for c in clips.values()]
    rough_ratio = [c["error_pct_iod"]["all"] / c["error_pct_iod_w_smooth_0"] for c in clips.values()]
    jitter_ratio = [
        c["jitter"]["expression"] / max(c["jitter_w_smooth_0"]["expression"], 1e-12) for c in clips.values()
    ]
    angle_ratio = [
        c["jitter"]["angles_deg"] / max(c["jitter_w_smooth_0"]["angles_deg"], 1e-12) for c in clips.values()
    ]
    summary = {
        "benchmark": "fit_quality",
        "config": dataclasses.asdict(config.fit),
        "clips": len(clips),
        "max_error_pct_iod": max(errors),
        "mean_error_pct_iod": float(np.mean(errors)),
        "all_within_target": bool(max(errors) <= TARGET_ERROR_PCT),
        "max_error_increase_from_smoothing": float(max(rough_ratio) - 1.0),
        "mean_expression_jitter_ratio": float(np.mean(jitter_ratio)),
        "max_expression_jitter_ratio": float(np.max(jitter_ratio)),
        "mean_angle_jitter_ratio": float(np.mean(angle_ratio)),
        "max_angle_jitter_ratio": float(np.max(angle_ratio)),
        "identity_consistent_clips": int(sum(c["consistent"] for c in consistency.values())),
        "per_clip": clips,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
