"""Reconstruct one video or photo: face track, 68 landmarks and the per-video 3DMM fit (no Ray).

    python -m jobs.reconstruct VIDEO [--set fit.w_smooth=0.01]

Prints a one-line JSON summary: frames, landmark error of the fit (% of the inter-ocular distance, overall
and per face region), identity magnitude, convergence and seconds per step. Bad inputs end with their
reason (``no_face``, ``too_short``, ...) and exit status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

from infra.config import add_config_arguments, parse_job_args
from model.face3d.loader import load_morphable_model
from pipeline.errors import VideoRejected
from pipeline.preprocess.reconstruct import ReconstructConfig, reconstruct_video


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.reconstruct", description=__doc__.split("\n\n")[0])
    parser.add_argument("video", help="a video or image file")
    add_config_arguments(parser, ReconstructConfig, "fit.w_smooth=0.01")
    args, config = parse_job_args(parser, ReconstructConfig, argv)
    if args.dry_run:
        print(json.dumps(dataclasses.asdict(config)))
        return 0
    model = load_morphable_model(config.model.path)
    try:
        result = reconstruct_video(args.video, model, config)
    except VideoRejected as err:
        print(f"{args.video}: {err.reason}: {err}", file=sys.stderr)
        return 1
    summary = {
        "video": args.video,
        "frames": int(len(result.landmarks.frame_index)),
        "error_pct_iod": result.error_pct_iod(),
        "identity_rms_std": float(np.sqrt(np.mean(result.fit.identity**2))),
        "fit_converged": bool(result.fit.converged),
        **result.seconds,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
