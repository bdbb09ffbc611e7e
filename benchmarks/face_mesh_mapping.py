"""Derives and checks the face-mesh -> 3DMM landmark mapping (``face_mesh.MESH_TO_IBUG68``) on shared clips.

    python -m benchmarks.face_mesh_mapping [--max-frames 300] [--max-yaw-ratio 0.15]

The 3DMM fit matches 68 model vertices (the iBUG markup, jaw on fixed vertices) to 68 image points. The
mesh's points are other places on the face, so each of the 68 is an affine combination of ``NEIGHBOURS``
mesh points with convex weights, fitted to where the 3DMM's vertex projects:

1. On the 14 shared test clips, dlib's 68 points are fitted by the per-video 3DMM fit with fixed jaw
   vertices (``jaw_contour=False``); on near-frontal frames (the mesh's nose tip within
   ``max-yaw-ratio`` of the face oval's middle) with a face-presence score above 0.9 and a fit error
   under 2 % of the eye distance, the projected model landmarks are the targets. The fit, not dlib's raw
   points, is the target: it is on the model's vertices and has less of dlib's per-frame noise.
2. For each landmark, the ``NEIGHBOURS`` mesh points nearest to its target on average, with non-negative
   weights summing to 1 fitted by least squares (distances in units of the eye distance).

Prints the table to paste into pipeline/preprocess/face_mesh.py, each point's mean offset from its
target for the nearest single mesh point and for the combination, and, on its last line, a JSON summary
(frames, mean offsets per region, and the module's current table's offsets).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from model.face3d.loader import load_morphable_model
from pipeline.preprocess.decode import DecodeConfig
from pipeline.preprocess.face_mesh import (
    MESH_IDS,
    MESH_WEIGHTS,
    face_mesh_model_path,
    face_mesh_track,
    ibug68_from_mesh,
)
from pipeline.preprocess.face_track import track_and_crop
from pipeline.preprocess.fit_3dmm import LANDMARK_REGIONS, OUTER_EYE_CORNERS, FitConfig, fit_video
from pipeline.preprocess.landmarks import LandmarkConfig, detect_landmarks

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
NOSE_TIP, OVAL_RIGHT, OVAL_LEFT = 4, 234, 454  # mesh points: the nose tip and the oval's sides
NEIGHBOURS = 4


def clip_pairs(clip: Path, max_frames: int, max_yaw_ratio: float, model) -> tuple[np.ndarray, np.ndarray]:
    """The fitted model landmarks (N, 68, 2) and the mesh's points (N, 468, 2) on the clip's usable frames."""
    track, crops = track_and_crop(clip, DecodeConfig(max_frames=max_frames))
    boxes = track.face_box_crop_px().astype(np.float32)
    dlib_px = detect_landmarks(crops, boxes, LandmarkConfig(backend="dlib"))
    fit = fit_video(model, dlib_px, config=FitConfig(jaw_contour=False))
    target_px = dlib_px + fit.residuals_px
    mesh_px, presence = face_mesh_track(crops, boxes, face_mesh_model_path())
    mesh_px = mesh_px[..., :2].astype(np.float64)
    across = mesh_px[:, OVAL_LEFT, 0] - mesh_px[:, OVAL_RIGHT, 0]
    middle = (mesh_px[:, NOSE_TIP, 0] - mesh_px[:, OVAL_RIGHT, 0]) / across - 0.5
    keep = (np.abs(middle) < max_yaw_ratio) & (presence > 0.9) & (fit.mean_error_iod() < 0.02)
    return target_px[keep], mesh_px[keep]


def fit_combination(target: np.ndarray, mesh: np.ndarray, neighbours: int) -> tuple[np.ndarray, np.ndarray]:
    """Mesh points and convex weights best reproducing one landmark: target (N, 2), mesh (N, 468, 2), both
    in eye distances -> (ids (neighbours,), weights (neighbours,) >= 0, sum 1). Convex, because free
    weights on nearly collinear points extrapolate and multiply the mesh's per-frame noise."""
    mean_offset = np.linalg.norm(mesh - target[:, None], axis=-1).mean(0)
    ids = np.argsort(mean_offset)[:neighbours]
    design = mesh[:, ids].transpose(0, 2, 1).reshape(-1, neighbours)  # (N * 2, neighbours)
    # The sum-to-one constraint as a heavily weighted extra row of the non-negative least squares.
    penalty = 1e3 * np.sqrt(len(target))
    weights, _ = nnls(
        np.vstack([design, penalty * np.ones(neighbours)]), np.append(target.reshape(-1), penalty)
    )
    return ids, weights / weights.sum()


def offsets_pct(target: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Mean distance per landmark in % of the eye distance: (N, 68, 2) each (eye-distance units) -> (68,)."""
    return 100 * np.linalg.norm(points - target, axis=-1).mean(0)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--videos", type=Path, default=SHARED_VIDEOS)
    parser.add_argument("--max-frames", type=int, default=300)
    parser.add_argument("--max-yaw-ratio", type=float, default=0.15)
    args = parser.parse_args(argv)
    model = load_morphable_model()
    targets, meshes = [], []
    for clip in sorted(args.videos.glob("*.mp4")):
        target_px, mesh_px = clip_pairs(clip, args.max_frames, args.max_yaw_ratio, model)
        print(f"{clip.stem}: {len(target_px)} frames used", flush=True)
        a, b = OUTER_EYE_CORNERS
        iod = np.linalg.norm(target_px[:, a] - target_px[:, b], axis=-1)[:, None, None]
        targets.append(target_px / iod)
        meshes.append(mesh_px / iod)
    target, mesh = np.concatenate(targets), np.concatenate(meshes)
    table = [fit_combination(target[:, k], mesh, NEIGHBOURS) for k in range(68)]
    ids = np.stack([t[0] for t in table])
    weights = np.stack([t[1] for t in table])
    combined = np.einsum("nkjd,kj->nkd", mesh[:, ids], weights)
    combined_pct = offsets_pct(target, combined)
    nearest_pct = offsets_pct(target, mesh[:, ids[:, 0]])
    current_pct = offsets_pct(target, ibug68_from_mesh(mesh))
    print("MESH_IDS =", ids.tolist())
    print("MESH_WEIGHTS =", np.round(weights, 3).tolist())
    for k in range(68):
        print(
            f"  {k:2d}: nearest {ids[k, 0]:3d} {nearest_pct[k]:5.2f} %, combination {combined_pct[k]:5.2f} %"
        )

    def by_region(values: np.ndarray) -> dict[str, float]:
        return {name: round(float(values[list(r)].mean()), 3) for name, r in LANDMARK_REGIONS.items()}

    summary = {
        "clips": len(targets),
        "frames": len(target),
        "neighbours": NEIGHBOURS,
        "combination_offset_pct": round(float(combined_pct.mean()), 3),
        "combination_offset_pct_by_region": by_region(combined_pct),
        "nearest_offset_pct": round(float(nearest_pct.mean()), 3),
        "module_table_offset_pct": round(float(current_pct.mean()), 3),
        "module_table_offset_pct_by_region": by_region(current_pct),
        "module_table_is_derived": bool(
            np.array_equal(MESH_IDS, ids) and np.allclose(MESH_WEIGHTS, weights, atol=2e-3)
        ),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
