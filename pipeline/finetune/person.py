"""One person's data for fine-tuning (paper section 3.4): the train / held-out split, the statistics a
person model carries for reenactment, and the held-out score.

A person's frames are taken in video order (units sorted by id, rows in order): the first
``split.train_frames`` train, the last ``holdout_frames`` (at most ``holdout_share`` of them) are held out
and never trained on. Clips never cross a gap, a unit border or the split.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch

from infra import storage
from model.networks.generator import generate_sequence
from model.networks.losses import masked_l1_loss
from pipeline import media, schema
from pipeline.finetune.config import SplitConfig
from pipeline.train import data
from pipeline.train.clip_index import ClipIndex, restrict_rows


class PersonFailed(Exception):
    """A person cannot be fine-tuned; ``reason`` is a short stable code, the message says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, eq=False)
class PersonData:
    """The person's clip index (vocabulary: the person alone), cut into training and held-out rows.

    train_rows / holdout_rows: {unit id: (first row, end row)}; *_frames count the frames in them.
    """

    identity: str
    index: ClipIndex
    train: ClipIndex
    holdout: ClipIndex
    train_rows: dict[int, tuple[int, int]]
    holdout_rows: dict[int, tuple[int, int]]
    train_frames: int
    holdout_frames: int
    records: tuple[schema.VideoRecord, ...]  # the person's ok units, as in videos.parquet


def _take(units: list[tuple[int, int]], count: int) -> dict[int, tuple[int, int]]:
    """Row ranges of the first ``count`` frames of (unit id, rows) taken in order."""
    ranges, left = {}, count
    for unit, rows in units:
        if left <= 0:
            break
        ranges[unit] = (0, min(rows, left))
        left -= ranges[unit][1]
    return ranges


def person_data(data_uri: str, identity: str, config: data.DataConfig, split: SplitConfig) -> PersonData:
    """Splits the person's frames; raises PersonFailed (``no_usable_video``, ``too_few_frames``)."""
    try:
        person_only = dataclasses.replace(config, identities=(identity,))
        index = data.build_index(data_uri, person_only, vocabulary=(identity,))
    except ValueError as err:
        raise PersonFailed("no_usable_video", f"{identity}: {err}") from None
    units = [(k, u.rows) for k, u in enumerate(index.units) if u.identity == 0]
    total = sum(rows for _, rows in units)
    holdout = min(split.holdout_frames, int(total * split.holdout_share))
    train = min(split.train_frames, total - holdout)
    train_rows = _take(units, train)
    # The last ``holdout`` frames: the first ones of the reversed order, mapped back to row ranges.
    rows_of = dict(units)
    tail = _take(list(reversed(units)), holdout)
    holdout_rows = {k: (rows_of[k] - count, rows_of[k]) for k, (_, count) in tail.items()}
    train_index, holdout_index = restrict_rows(index, train_rows), restrict_rows(index, holdout_rows)
    usable = int(train_index.run_frames.sum())
    if usable < max(split.min_train_frames, config.clip_frames):
        raise PersonFailed(
            "too_few_frames",
            f"{identity}: {usable} usable training frames (of {train} in runs of {config.clip_frames} "
            f"consecutive frames; split.min_train_frames={split.min_train_frames}), {total} frames in all",
        )
    if not len(holdout_index.run_frames):
        raise PersonFailed(
            "too_few_frames",
            f"{identity}: no run of {config.clip_frames} consecutive frames among its last {holdout} frames "
            "to hold out for evaluation",
        )
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(data_uri, schema.VIDEOS_TABLE))))
    records = [schema.VideoRecord.from_dict(r) for r in table.to_pylist()]
    kept = {u.video_id for u in index.units}
    return PersonData(
        identity=identity,
        index=index,
        train=train_index,
        holdout=holdout_index,
        train_rows=train_rows,
        holdout_rows=holdout_rows,
        train_frames=train,
        holdout_frames=holdout,
        records=tuple(sorted((r for r in records if r.video_id in kept), key=lambda r: r.video_id)),
    )


def _read_rows(index: ClipIndex, unit: int, rows: tuple[int, int], columns: list[str]) -> dict:
    shard = pq.read_table(io.BytesIO(storage.read_bytes(index.units[unit].shard_uri)), columns=columns)
    return shard.slice(rows[0], rows[1] - rows[0]).to_pydict()


@dataclass(frozen=True, eq=False)
class PersonStatistics:
    """What reenactment needs of the person besides the generator, from the training frames.

    identity_coefficients (N_id,) float32: the 3DMM identity, averaged over the units (by frames);
    pose: per angle (pitch, yaw, roll, degrees) and scale, [min, 1st percentile, median, 99th percentile,
    max], so that reenactment can warn when a driver leaves the range the person was trained on;
    expression_low / expression_high (N_exp,) float32: 1st and 99th percentiles of each coefficient;
    background (S, S, 3) uint8: the mean of the training crops where the mask says background (the mean
    background colour where it is never seen); key_frame (S, S, 3) uint8 and key_mask (S, S) uint8: the
    middle training frame and its foreground mask; cameras (N, 7) float32: the training frames' cameras
    (``model/face3d/camera.py``) in the crops' pixels, crop_px S, for expression-only reenactment and pose
    adaptation; sources: (video id, redacted source, licence or consent note, frames) of each unit.
    """

    identity_coefficients: torch.Tensor
    pose: dict[str, list[float]]
    expression_low: torch.Tensor
    expression_high: torch.Tensor
    background: torch.Tensor
    key_frame: torch.Tensor
    key_mask: torch.Tensor
    cameras: torch.Tensor
    crop_px: int
    sources: tuple[tuple[str, str, str, int], ...]


def person_statistics(person: PersonData) -> PersonStatistics:
    """The person's ``PersonStatistics``."""
    cameras, expressions, weights, coefficients = [], [], [], []
    background_sum = background_count = key = None
    middle = person.train_frames // 2
    seen = 0
    by_id = {r.video_id: r for r in person.records}
    for unit, rows in person.train_rows.items():
        columns = [schema.CAMERA, schema.EXPRESSION, schema.RGB, schema.MASK]
        part = _read_rows(person.index, unit, rows, columns)
        cameras.append(np.asarray(part[schema.CAMERA], np.float64))
        expressions.append(np.asarray(part[schema.EXPRESSION], np.float64))
        record = by_id[person.index.units[unit].video_id]
        if record.identity_coefficients:
            coefficients.append(np.asarray(record.identity_coefficients, np.float64))
            weights.append(rows[1] - rows[0])
        for k, (rgb, mask) in enumerate(zip(part[schema.RGB], part[schema.MASK])):
            image, fg = schema.decode_image(rgb).astype(np.float64), schema.decode_image(mask) > 127
            if background_sum is None:
                background_sum, background_count = np.zeros_like(image), np.zeros(image.shape[:2])
            background_sum[~fg] += image[~fg]
            background_count[~fg] += 1
            if seen + k == middle:
                key = (image.astype(np.uint8), fg.astype(np.uint8) * 255)
        seen += rows[1] - rows[0]
    camera = np.concatenate(cameras)
    expression = np.concatenate(expressions)
    seen_any = background_count > 0
    fill = background_sum[seen_any].sum(0) / max(background_count[seen_any].sum(), 1)
    background = np.where(
        seen_any[..., None], background_sum / np.maximum(background_count, 1)[..., None], fill
    ).round().astype(np.uint8)
    pose = {}
    for name, values in (
        ("pitch_deg", np.degrees(camera[:, 0])),
        ("yaw_deg", np.degrees(camera[:, 1])),
        ("roll_deg", np.degrees(camera[:, 2])),
        ("scale", camera[:, 6]),
    ):
        pose[name] = [float(v) for v in np.percentile(values, [0, 1, 50, 99, 100])]
    identity = np.average(np.stack(coefficients), axis=0, weights=weights) if coefficients else np.zeros(0)
    return PersonStatistics(
        identity_coefficients=torch.from_numpy(identity.astype(np.float32)),
        pose=pose,
        expression_low=torch.from_numpy(np.percentile(expression, 1, axis=0).astype(np.float32)),
        expression_high=torch.from_numpy(np.percentile(expression, 99, axis=0).astype(np.float32)),
        background=torch.from_numpy(background),
        key_frame=torch.from_numpy(key[0]),
        key_mask=torch.from_numpy(key[1]),
        cameras=torch.from_numpy(camera.astype(np.float32)),
        crop_px=int(background.shape[0]),
        sources=tuple((r.video_id, r.source, r.note, r.kept_frames) for r in person.records),
    )


def training_frames(person: PersonData, config: data.DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """All training frames at ``config.image_px`` (background removed): rgb (N, 3, H, W) in [-1, 1] and
    masks (N, 1, H, W) in {0, 1}: the frames h_new is averaged over (Eq. 9)."""
    rgb, masks = [], []
    for unit, rows in person.train_rows.items():
        part = _read_rows(person.index, unit, rows, [schema.RGB, schema.MASK])
        for image_bytes, mask_bytes in zip(part[schema.RGB], part[schema.MASK]):
            rgb.append(schema.decode_image(image_bytes))
            masks.append(schema.decode_image(mask_bytes))
    size = config.image_px
    crops = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).float() / 127.5 - 1
    fg = torch.from_numpy(np.stack(masks))[:, None].float() / 255
    crops = torch.nn.functional.interpolate(crops, size=(size, size), mode="area")
    fg = (torch.nn.functional.interpolate(fg, size=(size, size), mode="area") >= 0.5).float()
    return torch.where(fg > 0, crops, torch.full_like(crops, -1.0)), fg


@torch.no_grad()
def evaluate_holdout(
    generator: torch.nn.Module, dataset: data.ClipDataset, holdout: ClipIndex, device: torch.device
) -> tuple[dict[str, float], np.ndarray]:
    """The generator on the held-out frames, each run synthesised in order as at test time (the two
    previous outputs carried from window to window): masked L1 (mean per-pixel distance inside the real
    foreground, images in [-1, 1]), masked PSNR (dB, images in [0, 1]) and frames scored; and a strip of
    the middle window (rows NMFC / real / generated, uint8 RGB) to look at."""
    T = holdout.clip_frames
    l1, psnr, frames, strip = [], [], 0, None
    generator.eval()
    runs = zip(holdout.run_unit, holdout.run_first_row, holdout.run_frames)
    for r, (unit, first, count) in enumerate(runs):
        prev = None
        for k in range(int(count) // T):
            window = dataset.read_clip(int(unit), int(first) + k * T)
            clip = {key: v[None].to(device) for key, v in window.items()}
            out = generate_sequence(generator, clip[data.NMFC], None, prev_frames=prev)
            prev = out.frame[:, -(generator.cfg.n_frames - 1) :]
            real, mask = clip[data.RGB][0], clip[data.MASK][0]
            fake = out.frame[0]
            for t in range(T):
                l1.append(float(masked_l1_loss(fake[t : t + 1], real[t : t + 1], mask[t : t + 1])))
                weight = mask[t].expand_as(fake[t])
                mse = float(((fake[t] - real[t]) / 2).pow(2).mul(weight).sum() / weight.sum().clamp_min(1))
                psnr.append(10 * np.log10(1.0 / max(mse, 1e-10)))
            frames += T
            if strip is None and r == 0 and k == (int(count) // T) // 2:
                rows = [clip[data.NMFC][0], real, fake]
                # rows of T frames (T, H, W, 3) -> one image (3 H, T W, 3)
                strip = np.concatenate([np.concatenate(list(media.generator_images(x)), 1) for x in rows])
    generator.train()
    metrics = {"holdout_masked_l1": float(np.mean(l1)), "holdout_psnr_db": float(np.mean(psnr))}
    return {**metrics, "holdout_frames": frames}, strip


