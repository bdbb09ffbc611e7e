"""The paper's self-reenactment protocol on people's held-out frames, and the report.

Each person's held-out frames (never trained on: ``pipeline.finetune.person``) are synthesised from their
own NMFC images with the person's generator, run by run in order as at test time, and compared with the
real (background-removed) frames:

- average pixel distance (the paper's APD, 0-255 RGB units) and masked APD over the real foreground;
- mask IoU of the generated foreground mask against the real one (paper Fig. 6);
- the relative flow warping error (temporal consistency against the real video's own);
- identity: cosine similarity of face-identity embeddings (dlib's face-recognition ResNet by default,
  ``identity_features``) between the generated frames and the person's real frames; KID per person and FID
  pooled over the people (flagged when computed on too few frames);
- expression and pose accuracy (beyond the paper): the generated frames are refitted by this project's
  3DMM fit and their expression coefficients and head angles compared with the real frames' fit;
- landmark distance between the generated and the real frames. With only dlib here, the same detector
  made the conditioning, so this number is partly circular; the table says which detector it used.

Every table records its estimators, alignment, versions and sample counts. Outputs: ``metrics.json``,
``metrics.csv``, ``strip_<person>.png`` (real / generated / NMFC) and ``report.html`` under the output folder.
"""

from __future__ import annotations

import dataclasses
import html
import json
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from infra import storage
from infra.config import from_dict
from infra.tracking import Tracker, TrackingConfig, local_store_uri
from model.face3d.loader import load_morphable_model
from pipeline import media, schema
from pipeline.evaluate.distributions import fid_pooled, kid_per_identity
from pipeline.evaluate.identity_features import (
    IdentityConfig,
    IdentityFeatures,
    identity_features,
    identity_similarity,
)
from pipeline.evaluate.metrics import (
    average_pixel_distance,
    flow_warping_errors,
    masked_average_pixel_distance,
    mean_mask_iou,
)
from pipeline.evaluate.provenance import evaluator_versions, fid_warnings, make_table
from pipeline.finetune.config import SplitConfig
from pipeline.finetune.person import person_data
from pipeline.finetune.person_model import IDENTITY_TAG, PersonModel, load_person_model, person_dir
from pipeline.preprocess.fit_3dmm import OUTER_EYE_CORNERS, FitConfig, fit_config_for, fit_video
from pipeline.preprocess.landmarks import LandmarkConfig, backend_description, detect_landmarks
from pipeline.reenact.synthesis import StreamingSynthesizer
from pipeline.train import data

IDENTITY_COLUMN = "person"  # the per-person table's key column
IDENTITY_ESTIMATOR = "identity_embedding"  # the provenance key of the identity metrics' embedder


@dataclass(frozen=True)
class EvaluateConfig:
    """identity: the face-identity estimator; refit: refit the generated frames for expression and pose
    accuracy; landmarks: the detector used to refit and to measure landmark distance."""

    identity: IdentityConfig = field(default_factory=IdentityConfig)
    refit: bool = True
    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)
    fit: FitConfig = field(default_factory=FitConfig)


@dataclass(frozen=True, eq=False)
class HeldOut:
    """A person's held-out frames, real and generated, at the stored crop size S (generated frames are
    resized up from the generator's size): real / generated (T, S, S, 3) uint8, real_mask /
    generated_mask (T, S, S) float in [0, 1], nmfc (T, S, S, 3) uint8, flow (T, S, S, 2) float32 (to the
    next frame within a window, zeros for a window's last), landmarks_px (T, 68, 2), expression (T, N_exp),
    camera (T, 7) of the real frames' fit, window (T,) int64: the window of T consecutive frames each frame
    was read in (a run is synthesised in order across its windows; flows are known within one)."""

    real: np.ndarray
    generated: np.ndarray
    real_mask: np.ndarray
    generated_mask: np.ndarray
    nmfc: np.ndarray
    flow: np.ndarray
    landmarks_px: np.ndarray
    expression: np.ndarray
    camera: np.ndarray
    window: np.ndarray


def _up(frames: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    if frames.shape[-1] == size:
        return frames
    align = False if mode in ("bilinear", "bicubic") else None
    return torch.nn.functional.interpolate(frames, size=(size, size), mode=mode, align_corners=align)



@torch.no_grad()
def held_out(person: PersonModel, data_uri: str) -> HeldOut:
    """Synthesises the person's held-out frames from their NMFC (each run in order, state carried)."""
    config = person.config
    split = from_dict(SplitConfig, config.get("split", {}))
    size = int(person.info["image_px"])
    clip_frames = int((config.get("data") or {}).get("clip_frames", 9))
    cfg = data.DataConfig(image_px=size, clip_frames=clip_frames, identity_frames=1, num_workers=0)
    split_data = person_data(data_uri, person.identity, cfg, split)
    crop = person.statistics.crop_px
    full = data.ClipDataset(split_data.holdout, dataclasses.replace(cfg, image_px=crop))
    small = data.ClipDataset(split_data.holdout, cfg)
    names = ("real", "generated", "real_mask", "generated_mask", schema.NMFC, schema.FLOW)
    parts: dict[str, list] = {k: [] for k in names}
    rows: dict[str, list] = {"window": [], schema.FRAME_INDEX: [], "unit": []}
    synthesizer = StreamingSynthesizer(person.generator)
    for unit, first, count in zip(
        split_data.holdout.run_unit, split_data.holdout.run_first_row, split_data.holdout.run_frames
    ):
        synthesizer.reset()
        for k in range(int(count) // clip_frames):
            clip = small.read_clip(int(unit), int(first) + k * clip_frames)
            real = full.read_clip(int(unit), int(first) + k * clip_frames)
            generated, masks = synthesizer.run(clip[data.NMFC])
            parts["generated"].append(media.generator_images(_up(generated, crop)))
            parts["generated_mask"].append(_up(masks, crop, "bilinear")[:, 0].numpy())
            parts["real"].append(media.generator_images(real[data.RGB]))
            parts["real_mask"].append(real[data.MASK][:, 0].numpy())
            parts[schema.NMFC].append(media.generator_images(real[data.NMFC]))
            flow = torch.cat([real[data.FLOW], torch.zeros_like(real[data.FLOW][:1])])  # (T, 2, S, S)
            parts[schema.FLOW].append(flow.permute(0, 2, 3, 1).numpy())
            rows["window"].append(np.full(clip_frames, len(rows["window"])))
            rows[schema.FRAME_INDEX].append(real[data.FRAME_INDEX].numpy())
            rows["unit"].append(np.full(clip_frames, int(unit)))
    stacked = {k: np.concatenate(v) for k, v in parts.items()}
    units, frame_index = np.concatenate(rows["unit"]), np.concatenate(rows[schema.FRAME_INDEX])
    fits = _stored_fits(split_data.index, units, frame_index)
    return HeldOut(**stacked, **fits, window=np.concatenate(rows["window"]))


def _stored_fits(index, units: np.ndarray, frame_index: np.ndarray) -> dict[str, np.ndarray]:
    """The real frames' landmarks and fit from their shards, in the frames' order."""
    import io

    import pyarrow.parquet as pq

    out: dict[str, list] = {schema.LANDMARKS_PX: [], schema.EXPRESSION: [], schema.CAMERA: []}
    tables = {}
    for unit, frame in zip(units, frame_index):
        if unit not in tables:
            table = pq.read_table(
                io.BytesIO(storage.read_bytes(index.units[unit].shard_uri)),
                columns=[schema.FRAME_INDEX, schema.LANDMARKS_PX, schema.EXPRESSION, schema.CAMERA],
            ).to_pydict()
            tables[unit] = (table, {f: i for i, f in enumerate(table[schema.FRAME_INDEX])})
        table, row_of = tables[unit]
        row = row_of[int(frame)]
        for column, values in out.items():
            values.append(np.asarray(table[column][row], np.float64))
    fits = {k: np.stack(v) for k, v in out.items()}
    fits[schema.LANDMARKS_PX] = fits[schema.LANDMARKS_PX].reshape(-1, 68, 2)
    return fits


def _windows(values: np.ndarray, window: np.ndarray) -> list[np.ndarray]:
    return [values[window == w] for w in np.unique(window)]


def evaluate_person(
    person: PersonModel, frames: HeldOut, cfg: EvaluateConfig
) -> tuple[dict, dict, IdentityFeatures, IdentityFeatures]:
    """One person's row of metrics, the provenance of its estimators, and the identity features of the
    generated and the real frames (for the distribution metrics over people)."""
    row: dict = {IDENTITY_COLUMN: person.identity, "frames": len(frames.real)}
    row["apd"] = average_pixel_distance(frames.generated, frames.real)
    row["masked_apd"] = masked_average_pixel_distance(frames.generated, frames.real, frames.real_mask)
    row["mask_iou"] = mean_mask_iou(frames.generated_mask, frames.real_mask)
    warps = [
        flow_warping_errors(g, r, flow=f, mask=m)
        for g, r, f, m in zip(
            _windows(frames.generated, frames.window), _windows(frames.real, frames.window),
            _windows(frames.flow, frames.window), _windows(frames.real_mask, frames.window),
        )  # fmt: skip
    ]
    row["warping_error_relative"] = float(np.mean([w.relative for w in warps]))
    generated_ids = identity_features(frames.generated, config=cfg.identity)
    real_ids = identity_features(frames.real, landmarks_px=frames.landmarks_px, config=cfg.identity)
    similarity = identity_similarity(generated_ids, real_ids)
    row["identity_cosine"] = similarity.mean_cosine
    row["identity_l2"] = similarity.mean_l2
    provenance = {IDENTITY_ESTIMATOR: generated_ids.provenance}
    if cfg.refit:
        boxes = np.tile([[0.2, 0.2, 0.8, 0.8]], (len(frames.generated), 1)) * frames.generated.shape[1]
        landmarks = detect_landmarks(frames.generated, boxes.astype(np.float32), cfg.landmarks)
        a, b = OUTER_EYE_CORNERS
        iod = np.linalg.norm(frames.landmarks_px[:, a] - frames.landmarks_px[:, b], axis=-1)
        distance = np.linalg.norm(landmarks - frames.landmarks_px, axis=-1).mean(-1) / iod
        row["landmark_distance_pct_iod"] = float(100 * distance.mean())
        model = load_morphable_model(None)  # outside the try: a missing 3DMM is an error, not a NaN result
        try:
            refit = fit_video(model, landmarks, config=fit_config_for(cfg.fit, cfg.landmarks.backend))
            row["expression_mae"] = float(np.abs(refit.expression - frames.expression).mean())
            angles = np.abs(refit.camera[:, :3] - frames.camera[:, :3])
            row["pose_error_deg"] = float(np.degrees(angles).mean())
        except Exception as err:  # noqa: BLE001 - a generated clip the fit rejects is a result, not a crash
            row["expression_mae"] = row["pose_error_deg"] = float("nan")
            row["refit_failed"] = str(err)
        provenance["landmarks"] = (
            f"{backend_description(cfg.landmarks)}; the same detector made the "
            "conditioning, so landmark distance and the refit are partly circular"
        )
    return row, provenance, generated_ids, real_ids


def frame_strip(frames: HeldOut, count: int = 8, tile_px: int = 96) -> np.ndarray:
    """Rows real / generated / NMFC of ``count`` frames spread over the held-out frames: uint8 RGB."""
    picks = np.unique(np.linspace(0, len(frames.real) - 1, count).round().astype(int))
    rows = [[cv2.resize(x[k], (tile_px, tile_px), interpolation=cv2.INTER_AREA) for k in picks]
            for x in (frames.real, frames.generated, frames.nmfc)]  # fmt: skip
    return media.image_grid(rows, labels=None)


def evaluate_people(
    person_uris: list[str], data_uri: str, out_dir: str, cfg: EvaluateConfig = EvaluateConfig(), log=print
) -> dict:
    """The protocol over several people: writes the report and returns the summary (tables as dicts)."""
    rows, provenance, features_real, features_generated = [], {}, {}, {}
    strips = {}
    for uri in person_uris:
        person = load_person_model(uri)
        frames = held_out(person, data_uri)
        row, provenance[person.identity], generated, real = evaluate_person(person, frames, cfg)
        rows.append(row)
        features_generated[person.identity], features_real[person.identity] = generated, real
        strips[person.identity] = frame_strip(frames)
        media.write_png(storage.join(out_dir, f"strip_{person.identity}.png"), strips[person.identity])
        scores = ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float))
        log(f"{person.identity}: {scores}")
    kids = kid_per_identity(features_generated, features_real)
    for row in rows:
        row["kid"] = kids[row[IDENTITY_COLUMN]].mean
    pooled = fid_pooled(features_generated, features_real)
    estimator = next(iter(features_generated.values())).estimator_id
    per_person = make_table(
        "self_reenactment_per_person",
        rows,
        estimators={IDENTITY_ESTIMATOR: estimator, "landmarks": cfg.landmarks.backend},
        alignment=next(iter(features_generated.values())).alignment,
        sample_counts={r[IDENTITY_COLUMN]: r["frames"] for r in rows},
        warnings=[],
        provenance_per_person=provenance,
    )
    pooled_table = make_table(
        "self_reenactment_pooled",
        [{"people": len(rows), "frames": sum(r["frames"] for r in rows), "fid": pooled.value}],
        estimators={IDENTITY_ESTIMATOR: estimator},
        sample_counts={"generated": pooled.count_a, "real": pooled.count_b},
        warnings=fid_warnings({"pooled FID": pooled}),
    )
    summary = {
        "per_person": per_person.as_dict(),
        "pooled": pooled_table.as_dict(),
        "versions": evaluator_versions(),
    }
    storage.write_text(storage.join(out_dir, "metrics.json"), json.dumps(summary, indent=2, default=str))
    storage.write_text(storage.join(out_dir, "metrics.csv"), per_person.to_csv())
    storage.write_text(storage.join(out_dir, "report.html"), report_html(per_person, pooled_table, strips))
    return summary


def report_html(per_person, pooled, strips: dict[str, np.ndarray]) -> str:
    """A page a person can open: both tables with their provenance, and a frame strip per person (the PNG
    files beside it)."""

    def table(t) -> str:
        columns = t.columns
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in t.rows
        )
        notes = "".join(
            f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in t.provenance.items()
        )
        return f"<h2>{html.escape(t.name)}</h2><table><tr>{head}</tr>{body}</table><ul>{notes}</ul>"

    images = "".join(
        f"<h3>{html.escape(name)}: real / generated / NMFC</h3><img src='strip_{html.escape(name)}.png'>"
        for name in strips
    )
    style = "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px;font:13px monospace}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Self-reenactment report</title>"
        f"<style>{style}</style></head><body><h1>Self-reenactment on held-out frames</h1>"
        f"{table(per_person)}{table(pooled)}{images}</body></html>"
    )


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def log_to_people_runs(summary: dict, people_storage: str, out_dir: str, tracking: TrackingConfig) -> None:
    """Adds each person's scores and the report to their fine-tuning MLflow run (found by its folder)."""
    default = local_store_uri(people_storage) if storage.is_local(people_storage) else None
    for row in summary["per_person"]["rows"]:
        folder = person_dir(people_storage, row[IDENTITY_COLUMN])
        tags = {IDENTITY_TAG: row[IDENTITY_COLUMN]}
        with Tracker(tracking, row[IDENTITY_COLUMN], default_uri=default, resume_key=storage.redact(folder),
                     tags=tags) as tracker:  # fmt: skip
            tracker.log_metrics({f"eval/{k}": v for k, v in row.items() if isinstance(v, float)}, 0)
            tracker.log_artifact_uri(storage.join(out_dir, "report.html"), "evaluation")
