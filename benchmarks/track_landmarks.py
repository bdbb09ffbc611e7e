"""Face tracking and landmark throughput on the shared clips; ``--dump DIR`` writes their landmarks.

    python -m benchmarks.track_landmarks                 # throughput; last stdout line is one JSON object
    python -m benchmarks.track_landmarks --dump /tmp/h2h_landmarks

Throughput (frames/s, one torch thread unless --threads): decoding, MTCNN detection (per detection
frame, on the downscaled frame), the preprocessing job's one-pass decode + track + crop
(``track_and_crop``, per kept frame), cropping alone, landmarks per available backend (dlib always; FAN
when its weights are present locally, else FAN's speed alone with random weights), and end to end
(``landmarks_for_video``).

``--dump DIR`` runs ``landmarks_for_video`` (the job's decode -> track -> crop -> landmarks path;
``--backend``, dlib by default) on every frame of every clip and writes ``DIR/<clip_stem>.npz`` with
``landmarks_px (T, 68, 2) float32`` (crop pixels), ``frame_index (T,) int64``, ``crop_size`` (int),
``fps`` (float), the crop transform (``crop_center_px (T, 2)``, ``crop_side_px (T,)`` frame pixels; see
pipeline/preprocess/face_crop.py) and ``frame_hw``; rejected clips are listed with their reason in
``DIR/summary.json``; ``DIR/DONE`` is written last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import VideoRejected
from pipeline.preprocess.decode import DecodeConfig, iter_frames
from pipeline.preprocess.face_crop import crop_faces
from pipeline.preprocess.face_track import FaceTrackConfig, detect_faces, detection_frames, track_and_crop
from pipeline.preprocess.landmarks import (
    LandmarkConfig,
    detect_landmarks,
    fan_weights_path,
    landmarks_for_video,
)

VIDEOS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "videos"


def dump_landmarks(
    videos: list[Path], out_dir: Path, decode_config: DecodeConfig, config: LandmarkConfig | None = None
) -> dict:
    """Landmarks of every kept frame of each video to ``out_dir/<stem>.npz``; returns a summary."""
    config = config or LandmarkConfig()
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    for path in videos:
        start = time.perf_counter()
        try:
            result = landmarks_for_video(path, decode_config, None, config)
        except VideoRejected as err:
            summary[path.stem] = {"rejected": err.reason, "message": str(err)}
            print(f"{path.name}: rejected ({err.reason}): {err}", flush=True)
            continue
        seconds = time.perf_counter() - start
        # Written under a temporary name and renamed, so a reader never sees a half-written file.
        partial = out_dir / f"{path.stem}.partial.npz"
        np.savez(
            partial,
            landmarks_px=result.landmarks_px,
            frame_index=result.frame_index,
            crop_size=np.int64(result.crop_size),
            fps=np.float64(result.fps),
            crop_center_px=result.track.crop_center_px,
            crop_side_px=result.track.crop_side_px,
            frame_hw=np.array(result.track.frame_hw, np.int64),
        )
        os.replace(partial, out_dir / f"{path.stem}.npz")
        summary[path.stem] = {"frames": len(result.frame_index), "seconds": round(seconds, 2)}
        print(f"{path.name}: {len(result.frame_index)} frames in {seconds:.1f} s", flush=True)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    (out_dir / "DONE").write_text("done\n")
    return summary


def measure(videos: list[Path], frames_per_clip: int, device: str = "cpu") -> dict:
    """Throughput of each step on the first ``frames_per_clip`` frames of each video."""
    decode_config = DecodeConfig(max_frames=frames_per_clip, min_frames=1)
    track_config = FaceTrackConfig()
    totals = {k: 0.0 for k in ("decode", "detect", "track_and_crop", "crop", "dlib", "fan", "end_to_end")}
    counts = {k: 0 for k in totals}
    have_fan = True
    try:
        fan_weights_path(LandmarkConfig(backend="fan"))
    except FileNotFoundError as err:
        have_fan, fan_missing = False, str(err)

    def timed(key, count, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        totals[key] += time.perf_counter() - start
        counts[key] += count
        return out

    # Warm-up: model loading (MTCNN, the 100 MB dlib predictor) is not throughput.
    detect_faces(np.zeros((1, 64, 64, 3), np.uint8), track_config)
    detect_landmarks(np.zeros((1, 64, 64, 3), np.uint8), np.array([[16.0, 16, 48, 48]]), LandmarkConfig())
    for path in videos:
        chunks = timed("decode", frames_per_clip, lambda p: list(iter_frames(p, decode_config)), path)
        frame_index = np.concatenate([c[0] for c in chunks])
        frames = np.concatenate([c[1] for c in chunks])
        detect_at = detection_frames(frame_index, track_config.detect_every)
        timed("detect", len(detect_at), detect_faces, frames[np.searchsorted(frame_index, detect_at)])
        track, crops = timed(
            "track_and_crop", len(frame_index), track_and_crop, path, decode_config, track_config
        )
        rows = np.arange(len(track))
        timed("crop", len(rows), crop_faces, frames, rows, track)
        boxes = track.face_box_crop_px().astype(np.float32)  # as the job passes them
        timed("dlib", len(rows), detect_landmarks, crops, boxes, LandmarkConfig(backend="dlib"))
        if have_fan:
            timed(
                "fan", len(rows), detect_landmarks, crops, boxes, LandmarkConfig(backend="fan", device=device)
            )
        timed("end_to_end", len(rows), landmarks_for_video, path, decode_config, track_config)
    fps = {f"{k}_fps": round(counts[k] / totals[k], 2) for k in totals if counts[k]}
    result = {
        "benchmark": "track_landmarks",
        "clips": len(videos),
        "frames_per_clip": frames_per_clip,
        "torch_threads": torch.get_num_threads(),
        "host": platform.node(),
        "load_average_1min": round(os.getloadavg()[0], 2),  # other processes share these cores
        "note": "track_and_crop_fps includes decoding every frame; crop_fps is cropping alone",
        **fps,
    }
    if not have_fan:
        result["fan"] = f"unavailable: {fan_missing.split(';')[0]}"
        # FAN's cost does not depend on its weights: time the network with random ones (speed only).
        result["fan_random_weights_fps"] = fan_speed_random_weights(crops[:8], boxes[:8], device)
    return result


def fan_speed_random_weights(crops: np.ndarray, boxes: np.ndarray, device: str) -> float:
    """FAN-4 landmark throughput (frames/s) with randomly initialised weights from a temporary file."""
    from face_alignment.models import FAN

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fan_random.pth.tar"
        torch.save(FAN(4).state_dict(), path)
        config = LandmarkConfig(backend="fan", fan_weights_path=str(path), device=device, batch_size=8)
        detect_landmarks(crops[:1], boxes[:1], config)  # load and warm up
        start = time.perf_counter()
        detect_landmarks(crops, boxes, config)
        return round(len(crops) / (time.perf_counter() - start), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", default=str(VIDEOS), help="folder of .mp4 clips")
    parser.add_argument("--dump", default=None, help="write landmarks of every frame of every clip here")
    parser.add_argument("--frames", type=int, default=60, help="frames per clip for the throughput run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--backend", default="dlib", choices=["dlib", "fan"], help="landmarks for --dump")
    parser.add_argument("--device", default="cpu", help="torch device for the FAN backend")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    videos = sorted(Path(args.videos).glob("*.mp4"))
    if not videos:
        raise SystemExit(f"--videos {args.videos}: no .mp4 clips found")
    if args.dump:
        config = LandmarkConfig(backend=args.backend, device=args.device)
        summary = dump_landmarks(videos, Path(args.dump), DecodeConfig(), config)
        print(json.dumps({"dumped": len([s for s in summary.values() if "frames" in s]), "to": args.dump}))
        return
    print(json.dumps(measure(videos, args.frames, args.device)))


if __name__ == "__main__":
    main()
