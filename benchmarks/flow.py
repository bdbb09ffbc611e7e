"""Optical flow backends on real face crops: cost per frame and how well each flow explains the motion.

    python -m benchmarks.flow [--clips N] [--frames F]    # last stdout line is one JSON object

Crops come from the preprocessing job's own tracking (``track_and_crop``, 256 px) of the first ``--clips``
shared clips. For each CPU backend (DIS presets, Farneback) and for zero flow it reports:
- ``ms_per_frame_cpu``: CPU time of ``optical_flow`` per frame pair, on one OpenCV thread;
- ``warp_error``: ``pipeline.preprocess.flow.warp_error``, the mean absolute grey-level difference between a
  frame and its successor sampled along the flow (lower is better; zero flow is the baseline).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from pipeline.preprocess.decode import DecodeConfig
from pipeline.preprocess.face_track import FaceTrackConfig, track_and_crop
from pipeline.preprocess.flow import FlowConfig, optical_flow, warp_error

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
CONFIGS = {
    "dis_ultrafast": FlowConfig(dis_preset="ultrafast"),
    "dis_fast": FlowConfig(dis_preset="fast"),
    "dis_medium": FlowConfig(dis_preset="medium"),
    "farneback": FlowConfig(backend="farneback"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=4, help="shared clips (sorted by name, every 3rd)")
    parser.add_argument("--frames", type=int, default=120, help="frames per clip")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    clips = sorted(SHARED_VIDEOS.glob("*.mp4"))[::3][: args.clips]
    if not clips:
        raise SystemExit(f"no clips in {SHARED_VIDEOS}")
    decode = DecodeConfig(max_frames=args.frames)
    crops = [track_and_crop(str(c), decode, FaceTrackConfig(), None)[1] for c in clips]
    pairs = sum(len(c) - 1 for c in crops)
    result: dict = {"benchmark": "flow", "clips": [c.stem for c in clips], "frame_pairs": pairs}
    for name, config in CONFIGS.items():
        start = time.process_time()
        flows = [optical_flow(c, config) for c in crops]
        seconds = time.process_time() - start
        errors = [warp_error(c, f) * (len(c) - 1) for c, f in zip(crops, flows)]
        result[name] = {
            "ms_per_frame_cpu": round(1000 * seconds / pairs, 2),
            "warp_error": round(sum(errors) / pairs, 3),
        }
    zero = [warp_error(c, np.zeros((*c.shape[:3], 2), np.float32)) * (len(c) - 1) for c in crops]
    result["zero_flow"] = {"warp_error": round(sum(zero) / pairs, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
