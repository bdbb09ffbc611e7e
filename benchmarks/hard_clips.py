"""Landmarks and masks on every shared person's clip: the old backends (dlib + colour model) against the new
(face mesh + selfie segmentation), through the preprocessing chain itself.

    python -m benchmarks.hard_clips [--max-frames N] [--clips NAME ...] [--output DIR]

Both configurations preprocess the 52 clips of ``../shared/data/videos`` and ``corpus`` (in two processes
at once, ``preprocess_in_process``), then per clip from their shards and records:

- status (and reason) of each unit; frames kept, and frames dropped for unreliable landmarks;
- fit error: the per-video 3DMM fit's mean landmark error against its own detector's landmarks
  (``landmark_error_iod``, % of the eye distance), and against the other detector's on the inner face
  (points 17-67, which both backends mean the same way; the jaw is a silhouette for dlib and fixed surface
  points for the mesh): each backend a check on the other, since a fit's error against its own detector is
  partly circular;
- temporal jitter: mean |second difference| of the inner landmarks over frames, % of the eye distance;
- masks: IoU against a chroma key on every green-screen clip (liveportrait_d0, dreamtalk_*, eamm_*), and
  flicker as the mean IoU of consecutive masks (1 = steady);
- CPU ms per frame of the landmarks stage and of the write stage (masks, flow, encoding).

Writes the table (``hard_clips.md``) and, for the three clips with the largest old fit error, the old and
new contact sheets side by side (``sheets/``) to the output folder (faces stay out of git); prints the
table and, on its last line, a JSON summary.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from model.face3d.camera import project_xy_numpy
from model.face3d.loader import load_morphable_model
from pipeline import schema
from pipeline.preprocess import shard_writer
from pipeline.preprocess.chain import PreprocessConfig, load_models, preprocess_in_process
from pipeline.preprocess.fit_3dmm import OUTER_EYE_CORNERS
from pipeline.preprocess.fit_shape import LandmarkBasis
from pipeline.preprocess.landmarks import LandmarkConfig
from pipeline.preprocess.masks import MaskConfig, chroma_key_ground_truth, iou

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GREEN_SCREEN_PREFIXES = ("liveportrait_d0", "dreamtalk_", "eamm_")
INNER = slice(17, 68)  # brows, nose, eyes, mouth: the same places for both backends
CONFIGS = {
    "old": PreprocessConfig(
        landmarks=LandmarkConfig(backend="dlib"), mask=MaskConfig(backend="colour_model")
    ),
    "new": PreprocessConfig(landmarks=LandmarkConfig(backend="mediapipe"), mask=MaskConfig(backend="selfie")),
}


def _preprocess(task: tuple[str, str, str, int | None]) -> None:
    """One configuration over the manifest in this process: one thread, models loaded first (as actors do)."""
    from pipeline.preprocess.ray_preprocess import limit_threads

    name, manifest, output, max_frames = task
    limit_threads(1)
    cfg = CONFIGS[name]
    cfg = replace(cfg, decode=replace(cfg.decode, max_frames=max_frames))
    load_models(cfg)  # as an actor does: model loading and compilation are not a stage's cost
    preprocess_in_process(manifest, output, cfg, name, load_morphable_model(), log=lambda line: None)


def read_unit(output: Path, unit: schema.VideoRecord) -> dict[str, np.ndarray]:
    columns = [
        schema.FRAME_INDEX,
        schema.LANDMARKS_PX,
        schema.EXPRESSION,
        schema.CAMERA,
        schema.RGB,
        schema.MASK,
    ]
    table = pq.read_table(output / unit.shard, columns=columns).to_pandas()  # not the NMFC or flow images
    frame_index = table[schema.FRAME_INDEX].to_numpy()
    return {
        "frame_index": frame_index,
        "landmarks_px": np.stack(table[schema.LANDMARKS_PX].to_numpy()).reshape(len(table), 68, 2),
        "expression": np.stack(table[schema.EXPRESSION].to_numpy()).astype(np.float64),
        "camera": np.stack(table[schema.CAMERA].to_numpy()).astype(np.float64),
        "rgb": table[schema.RGB].to_numpy(),
        "mask": table[schema.MASK].to_numpy(),
    }


def fitted_inner_px(basis: LandmarkBasis, unit: schema.VideoRecord, frames: dict) -> np.ndarray:
    """The fit's inner landmarks (T, 51, 2) crop px: the model's landmark vertices projected."""
    identity = np.asarray(unit.identity_coefficients, np.float64)
    points = basis.candidate_points(identity, frames["expression"])[:, :, 0]  # standard vertices (T, 68, 3)
    return project_xy_numpy(points, frames["camera"])[:, INNER]


def pct_iod(a: np.ndarray, b: np.ndarray, reference: np.ndarray) -> float:
    """Mean distance of (T, K, 2) point sets in % of ``reference``'s (T, 68, 2) outer-eye-corner distance."""
    i, j = OUTER_EYE_CORNERS
    iod = np.linalg.norm(reference[:, i] - reference[:, j], axis=-1)
    return float(100 * (np.linalg.norm(a - b, axis=-1).mean(-1) / iod).mean())


def jitter_pct(landmarks_px: np.ndarray) -> float:
    """Mean |second temporal difference| of the inner landmarks, % of the eye distance (nan for T < 3)."""
    if len(landmarks_px) < 3:
        return float("nan")
    second = landmarks_px[2:, INNER] - 2 * landmarks_px[1:-1, INNER] + landmarks_px[:-2, INNER]
    return pct_iod(second, 0 * second, landmarks_px[1:-1])


def mask_scores(frames: dict) -> tuple[float, float]:
    """(mean IoU against the chroma key, mean IoU of consecutive masks)."""
    crops = np.stack([schema.decode_image(b) for b in frames["rgb"]])
    masks = np.stack([schema.decode_image(b) > 127 for b in frames["mask"]])
    truth, valid = chroma_key_ground_truth(crops)
    key = float(np.mean([iou(m, t, v) for m, t, v in zip(masks, truth, valid, strict=True)]))
    steady = (
        float(np.mean([iou(a, b) for a, b in zip(masks[1:], masks[:-1], strict=True)]))
        if len(masks) > 1
        else 1.0
    )
    return key, steady


def compare(outputs: dict[str, Path], clips: list[Path]) -> list[dict]:
    """One row per clip: both configurations' status, fit errors (own and cross), jitter, masks, costs."""
    model = load_morphable_model()
    basis = LandmarkBasis.from_model(model, jaw_contour=False)
    records = {name: shard_writer.read_records(str(out)) for name, out in outputs.items()}
    rows = []
    for clip in clips:
        row: dict = {"clip": clip.stem, "green_screen": clip.stem.startswith(GREEN_SCREEN_PREFIXES)}
        units = {name: [r for r in recs if r.identity == clip.stem] for name, recs in records.items()}
        frames = {}
        for name, found in units.items():
            ok = [u for u in found if u.ok]
            row[f"{name}_status"] = (
                "ok"
                if ok and len(ok) == len(found)
                else ("partly ok" if ok else "; ".join(sorted({u.reason for u in found})) or "missing")
            )
            row[f"{name}_units"] = len(found)
            row[f"{name}_frames"] = sum(u.kept_frames for u in ok)
            row[f"{name}_dropped"] = sum(u.dropped_frames for u in found)
            kept = max(1, row[f"{name}_frames"])
            row[f"{name}_fit_error_pct"] = (
                100 * sum(u.landmark_error_iod * u.kept_frames for u in ok) / kept if ok else float("nan")
            )
            for stage in ("landmarks", "write"):
                cpu = sum(json.loads(u.stage_cpu_seconds).get(stage, 0.0) for u in ok)
                row[f"{name}_{stage}_ms"] = 1e3 * cpu / kept if ok else float("nan")
            frames[name] = [(u, read_unit(outputs[name], u)) for u in ok]
            row[f"{name}_jitter_pct"] = (
                float(np.mean([jitter_pct(f["landmarks_px"]) for _, f in frames[name]]))
                if ok
                else float("nan")
            )
            if row["green_screen"] and ok:
                scores = [mask_scores(f) for _, f in frames[name]]
                row[f"{name}_mask_iou"] = float(np.mean([s[0] for s in scores]))
                row[f"{name}_mask_steadiness"] = float(np.mean([s[1] for s in scores]))
        for fit_of, against in (("old", "new"), ("new", "old")):
            errors = []
            for unit, f in frames.get(fit_of, []):
                for _, g in frames.get(against, []):
                    common, i, j = np.intersect1d(f["frame_index"], g["frame_index"], return_indices=True)
                    if len(common):
                        fitted = fitted_inner_px(basis, unit, f)[i]
                        errors.append(
                            (len(common), pct_iod(fitted, g["landmarks_px"][j, INNER], g["landmarks_px"][j]))
                        )
            total = sum(n for n, _ in errors)
            row[f"{fit_of}_fit_vs_{against}_inner_pct"] = (
                sum(n * e for n, e in errors) / total if total else float("nan")
            )
        rows.append(row)
    return rows


COLUMNS = [
    ("clip", "clip", "{}"),
    ("old_status", "old status", "{}"),
    ("new_status", "new status", "{}"),
    ("new_frames", "frames", "{}"),
    ("new_dropped", "dropped", "{}"),
    ("old_fit_error_pct", "old fit err %", "{:.2f}"),
    ("new_fit_error_pct", "new fit err %", "{:.2f}"),
    ("old_fit_vs_new_inner_pct", "old fit vs mesh (inner) %", "{:.2f}"),
    ("new_fit_vs_old_inner_pct", "new fit vs dlib (inner) %", "{:.2f}"),
    ("old_jitter_pct", "dlib jitter %", "{:.2f}"),
    ("new_jitter_pct", "mesh jitter %", "{:.2f}"),
    ("old_mask_iou", "old mask IoU", "{:.3f}"),
    ("new_mask_iou", "new mask IoU", "{:.3f}"),
    ("old_mask_steadiness", "old steadiness", "{:.4f}"),
    ("new_mask_steadiness", "new steadiness", "{:.4f}"),
]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [fmt.format(row[key]) if key in row else "" for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def side_by_side_sheets(outputs: dict[str, Path], clips: list[str], folder: Path) -> list[str]:
    """Old over new contact sheets of ``clips`` (their first units) into ``folder``; returns the files."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for clip in clips:
        images = []
        for name in ("old", "new"):
            sheets = sorted((outputs[name] / schema.CONTACT_SHEETS_DIR).glob(f"{clip}*.png"))
            if sheets:
                images.append(cv2.imread(str(sheets[0])))
        if len(images) == 2 and images[0].shape[1] == images[1].shape[1]:
            path = folder / f"{clip}_old_over_new.png"
            cv2.imwrite(str(path), np.concatenate(images, 0))
            written.append(str(path))
    return written


def mean_of(rows: list[dict], key: str, where=lambda row: True) -> float:
    values = [row[key] for row in rows if key in row and where(row) and np.isfinite(row[key])]
    return round(float(np.mean(values)), 3) if values else float("nan")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--max-frames", type=int, default=None, help="frames per clip (default: all)")
    parser.add_argument("--clips", nargs="*", default=None, help="clip names (default: every clip)")
    parser.add_argument("--output", type=Path, default=None, help="output folder (default: a temporary one)")
    args = parser.parse_args(argv)
    clips = sorted([*args.data.glob("videos/*.mp4"), *args.data.glob("corpus/*.mp4")], key=lambda p: p.stem)
    if args.clips:
        clips = [c for c in clips if c.stem in set(args.clips)]
    work = args.output or Path(tempfile.mkdtemp(prefix="h2h-hard-clips-"))
    work.mkdir(parents=True, exist_ok=True)
    manifest = work / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([schema.MANIFEST_PATH, schema.MANIFEST_IDENTITY])
        writer.writerows([[str(c.resolve()), c.stem] for c in clips])
    outputs = {name: work / name for name in CONFIGS}
    tasks = [(name, str(manifest), str(out), args.max_frames) for name, out in outputs.items()]
    with multiprocessing.get_context("spawn").Pool(len(tasks)) as pool:
        pool.map(_preprocess, tasks, chunksize=1)
    rows = compare(outputs, clips)
    table = markdown_table(rows)
    (work / "hard_clips.md").write_text(table + "\n")
    print(table)
    hardest = [
        r["clip"] for r in sorted(rows, key=lambda r: -np.nan_to_num(r["old_fit_error_pct"], nan=99))[:3]
    ]
    sheets = side_by_side_sheets(outputs, hardest, work / "sheets")
    green = lambda row: row["green_screen"]  # noqa: E731
    summary = {
        "clips": len(rows),
        "output": str(work),
        "max_frames": args.max_frames,
        "not_ok": {name: [r["clip"] for r in rows if r[f"{name}_status"] != "ok"] for name in CONFIGS},
        "dropped_frames": {name: int(sum(r[f"{name}_dropped"] for r in rows)) for name in CONFIGS},
        "fit_error_pct_mean": {name: mean_of(rows, f"{name}_fit_error_pct") for name in CONFIGS},
        "fit_error_pct_max": {
            name: round(float(np.nanmax([r[f"{name}_fit_error_pct"] for r in rows])), 3) for name in CONFIGS
        },
        "clips_over_2pct": {
            name: [r["clip"] for r in rows if not r[f"{name}_fit_error_pct"] <= 2.0] for name in CONFIGS
        },
        "cross_inner_pct_mean": {
            "old_fit_vs_mesh": mean_of(rows, "old_fit_vs_new_inner_pct"),
            "new_fit_vs_dlib": mean_of(rows, "new_fit_vs_old_inner_pct"),
        },
        "jitter_pct_mean": {name: mean_of(rows, f"{name}_jitter_pct") for name in CONFIGS},
        "mask_iou_green": {
            name: {r["clip"]: round(r[f"{name}_mask_iou"], 4) for r in rows if f"{name}_mask_iou" in r}
            for name in CONFIGS
        },
        "mask_steadiness_green_mean": {
            name: mean_of(rows, f"{name}_mask_steadiness", green) for name in CONFIGS
        },
        "cpu_ms_per_frame": {
            name: {stage: mean_of(rows, f"{name}_{stage}_ms") for stage in ("landmarks", "write")}
            for name in CONFIGS
        },
        "hardest_by_old_fit": hardest,
        "sheets": sheets,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
