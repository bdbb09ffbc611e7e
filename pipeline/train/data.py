"""Training data: clips of T consecutive frames of one unit, plus M frames of the same identity.

Reads the preprocessing output (``pipeline/schema.py``: ``OUT/videos.parquet`` and ``OUT/shards/``), local
or ``s3://``, and never holds the corpus: the index keeps a few integers per unit and per run of
consecutive frames, and each sample reads only the row groups that hold its frames.

- **Index** (``build_index``). The ``ok`` units of ``videos.parquet``; per unit only the shard's footer and
  its ``frame_index`` column are read, and the unit is cut into *runs* wherever two consecutive rows are
  not one step apart (the unit's step is its most common ``frame_index`` difference: 2 with
  ``decode.stride=2``). A clip lies inside one run, so it never spans dropped frames, a segment border or
  a track cut (those are separate units anyway). Runs shorter than T are not sampled (counted); a shard
  that is absent, unreadable or disagrees with the table is skipped with one warning and counted.
- **Vocabulary**: the sorted identity names of the table's ``ok`` units (after ``DataConfig.identities``);
  identity ``k`` is row ``k`` of D^I's W. It depends on the table only, not on which shards read, and a
  resumed or fine-tuning run passes the saved one back.
- **Samples** are global ids g = 0, 1, 2, ... over an endless sequence of epochs (``epoch_windows``). An
  epoch cuts every run into floor(frames / T) non-overlapping windows at an offset drawn from (seed,
  epoch, run), so windows move between epochs while the epoch's length E stays fixed, and visits them in
  an order permuted by (seed, epoch); g -> window ``g % E`` of epoch ``g // E``. Everything is a function
  of (seed, g) and the index: a resumed run at ``samples_seen`` continues the same stream.
- **Ranks** (``ClipSampler``): step b of rank r takes the global samples
  ``start + (b * W + r) * B ... + B - 1``, so the W ranks together consume the contiguous range
  ``[start, start + (b + 1) * W * B)``: ``samples_seen = start + steps * W * B`` whatever W is, and a resume
  with any world size continues exactly where the stream stopped (no sample repeated or skipped).
- **Reading** happens in DataLoader worker processes (``make_loader``); each keeps a small LRU of open
  shards. A read that fails at run time (a shard deleted mid-run, a corrupt row group) logs one warning
  per unit, is counted, and the sample is replaced by the next readable one (g + 1, g + 2, ...).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Sequence

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.utils.data

from infra import storage
from pipeline import schema
from pipeline.train.clip_index import (
    CLIP_COLUMNS,
    IDENTITY_STREAM,
    ClipIndex,
    ClipSampler,
    Unit,
    epoch_windows,
    index_shards,
    open_shard,
    rank_batches,
    vocabulary_from_json,
    vocabulary_to_json,
)

# The training side's API in one place (the index and sampling names come from clip_index.py).
__all__ = [
    "DataConfig", "build_index", "ClipIndex", "Unit", "ClipDataset", "ClipSampler", "make_loader",
    "epoch_windows", "rank_batches", "decode_frames", "vocabulary_to_json", "vocabulary_from_json",
]  # fmt: skip

log = logging.getLogger(__name__)

# Keys of a sample (a batch adds a leading B). Where the content is a frame column's, the key is its name.
RGB = schema.RGB  # (T, 3, H, W) float32 in [-1, 1], background -1
NMFC = schema.NMFC  # (T, 3, H, W) float32 in [-1, 1]
MASK = schema.MASK  # (T, 1, H, W) float32 in {0, 1}
FLOW = schema.FLOW  # (T - 1, 2, H, W) float32, pixels at image_px, frame t -> t + 1, (dx, dy)
MOUTH_BOX_PX = schema.MOUTH_BOX_PX  # (T, 4) float32 (x0, y0, x1, y1) at image_px, x1 exclusive
MOUTH_CENTER_PX = "mouth_center_px"  # (T, 2) float32 (x, y) at image_px, camera.py pixels (see _read)
IDENTITY = schema.IDENTITY  # () int64: row of the vocabulary
ID_RGB = "id_rgb"  # (M, 3, H, W) float32 in [-1, 1], background -1: frames of the same identity
ID_MASK = "id_mask"  # (M, 1, H, W) float32 in {0, 1}
SAMPLE = "sample"  # () int64: the global sample id g asked for
UNIT = "unit"  # () int64: index of the clip's unit in ``ClipIndex.units``
FRAME_INDEX = schema.FRAME_INDEX  # (T,) int64: the clip's source frame indices
ID_UNIT = "id_unit"  # (M,) int64: units of the identity frames
ID_FRAME_INDEX = "id_frame_index"  # (M,) int64: their source frame indices
BAD_READS = "bad_reads"  # () int64: failed reads skipped to produce this sample (sum a batch to count)

_IDENTITY_COLUMNS = (schema.FRAME_INDEX, schema.RGB, schema.MASK)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """What a training sample is and how it is read."""

    image_px: int = 256  # side of the square frames; stored crops of S px are resized to it
    clip_frames: int = 9  # T: the temporal discriminator's 3 scales with K = 3 need 1 + 2 * 4 = 9
    identity_frames: int = 8  # M: frames of the same identity for the identity embedder E_id
    seed: int = 0  # window offsets, epoch order and identity frames are functions of (seed, sample)
    num_workers: int = 4  # DataLoader processes per rank that read and decode (0: in the training process)
    identities: tuple[str, ...] = ()  # train on these identities only; () for all
    max_bad_reads: int = 16  # failed reads in a row before a sample gives up (each counted and skipped)
    open_shards: int = 16  # open shard files kept per loader process (LRU)
    index_threads: int = 16  # shards whose footer and frame_index column are read at once by build_index

    def __post_init__(self) -> None:
        if self.image_px < 1 or self.clip_frames < 2 or self.identity_frames < 1 or self.max_bad_reads < 0:
            raise ValueError(
                f"data: image_px={self.image_px} must be >= 1, clip_frames={self.clip_frames} >= 2 "
                f"(flow links consecutive frames), identity_frames={self.identity_frames} >= 1, "
                f"max_bad_reads={self.max_bad_reads} >= 0"
            )


def build_index(data_uri: str, config: DataConfig, vocabulary: Sequence[str] | None = None) -> ClipIndex:
    """The index of the preprocessing output at ``data_uri`` for ``config`` (``clip_index.index_shards``):
    pass the saved ``vocabulary`` when resuming or fine-tuning, so identities keep their rows of W."""
    return index_shards(data_uri, config.clip_frames, config.identities, vocabulary, config.index_threads)


class _ShardFiles:
    """Open shards of one process (LRU). Handles never cross a fork: a forked loader process starts empty."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.pid = os.getpid()
        self.open: collections.OrderedDict[str, tuple[object | None, pq.ParquetFile]] = (
            collections.OrderedDict()
        )

    def get(self, uri: str) -> pq.ParquetFile:
        if self.pid != os.getpid():
            self.open, self.pid = collections.OrderedDict(), os.getpid()  # the parent's, not ours to close
        if uri in self.open:
            self.open.move_to_end(uri)
        else:
            self.open[uri] = open_shard(uri)
            while len(self.open) > self.capacity:
                self.close(next(iter(self.open)))
        return self.open[uri][1]

    def close(self, uri: str) -> None:
        handle, _ = self.open.pop(uri, (None, None))
        if handle is not None:
            handle.close()

    def read_rows(self, uri: str, rows: np.ndarray, columns: Sequence[str]) -> pa.Table:
        """The given rows (sorted (N,) int) of a shard, reading only the row groups that hold them."""
        shard = self.get(uri)
        sizes = [shard.metadata.row_group(i).num_rows for i in range(shard.metadata.num_row_groups)]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        if len(rows) and (rows[0] < 0 or rows[-1] >= starts[-1]):
            raise ValueError(f"rows {rows[0]}..{rows[-1]} outside the shard's {starts[-1]} rows")
        group_of = np.searchsorted(starts, rows, side="right") - 1  # (N,) row group of each row
        groups = np.unique(group_of)
        table = shard.read_row_groups(groups.tolist(), columns=list(columns), use_threads=False)
        group_start = np.concatenate([[0], np.cumsum([sizes[g] for g in groups])])  # in the table read
        local = group_start[np.searchsorted(groups, group_of)] + rows - starts[group_of]
        return table.take(pa.array(local))


def _resize(image: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    """(S, S, C) or (S, S) -> (size, size, ...); area averaging downwards, bilinear upwards unless nearest."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    if interpolation == cv2.INTER_AREA and size > image.shape[0]:
        interpolation = cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def decode_frames(
    table: pa.Table, crop_size: int, image_px: int, with_nmfc_flow: bool
) -> dict[str, np.ndarray]:
    """Decodes and resizes a shard's rows (N frames) to image_px = P.

    -> rgb (N, 3, P, P) float32 in [-1, 1] with the background at -1; mask (N, 1, P, P) float32 {0, 1};
    and with ``with_nmfc_flow``: nmfc (N, 3, P, P) float32 in [-1, 1], flow (N, 2, P, P) float32 pixels at P.

    - RGB: the background (stored mask 0) is blacked out at S, then area-averaged, so that an edge pixel
      mixes the face only with black, never with the real background; pixels whose resized mask is 0 are
      then exactly -1.
    - Mask: area-averaged, then >= 0.5 (smoother edges than picking one source pixel per output pixel).
    - NMFC: nearest (centred, ``INTER_NEAREST_EXACT``). An NMFC colour is a surface position; averaging
      across the silhouette mixes it with the black background into positions on no face, colours that an
      NMFC rendered at P (hard-edged point samples, as reenactment renders them) never has. Inside the face
      the colours vary smoothly, so nearest differs from area by less than one source pixel's change.
    - Flow: area-averaged like the images it moves, and its vectors scaled by P / S.
    """
    scale = image_px / crop_size
    n = table.num_rows
    rgb = np.empty((n, image_px, image_px, 3), np.float32)
    mask = np.empty((n, image_px, image_px), np.float32)
    nmfc = np.empty((n, image_px, image_px, 3), np.float32) if with_nmfc_flow else None
    flow = np.empty((n, image_px, image_px, 2), np.float32) if with_nmfc_flow else None
    images = (
        (schema.RGB, schema.MASK, schema.NMFC, schema.FLOW) if with_nmfc_flow else (schema.RGB, schema.MASK)
    )
    columns = {c: table.column(c).to_pylist() for c in images}
    for t in range(n):
        image = schema.decode_image(columns[schema.RGB][t])
        stored_mask = schema.decode_image(columns[schema.MASK][t])
        if image.shape != (crop_size, crop_size, 3) or stored_mask.shape != (crop_size, crop_size):
            raise ValueError(f"frame of {image.shape} / mask {stored_mask.shape}, expected {crop_size} px")
        foreground = stored_mask > 127
        image = image * foreground[..., None].astype(np.uint8)
        mask[t] = _resize(foreground.astype(np.float32), image_px, cv2.INTER_AREA) >= 0.5
        rgb[t] = _resize(image, image_px, cv2.INTER_AREA) / np.float32(127.5) - 1
        rgb[t][mask[t] == 0] = -1
        if with_nmfc_flow:
            nmfc[t] = _resize(schema.decode_image(columns[schema.NMFC][t]), image_px, cv2.INTER_NEAREST_EXACT)
            flow[t] = _resize(
                schema.decode_flow(columns[schema.FLOW][t], crop_size), image_px, cv2.INTER_AREA
            )
    out = {RGB: rgb.transpose(0, 3, 1, 2), MASK: mask[:, None]}
    if with_nmfc_flow:
        out[NMFC] = nmfc.transpose(0, 3, 1, 2) / np.float32(127.5) - 1
        out[FLOW] = flow.transpose(0, 3, 1, 2) * np.float32(scale)
    return out


class _UnreadableUnit(Exception):
    """A unit's shard failed to read or decode (the cause is chained)."""

    def __init__(self, unit_id: int) -> None:
        super().__init__(unit_id)
        self.unit_id = unit_id


class ClipDataset(torch.utils.data.Dataset):
    """Sample g -> a clip and identity frames (keys above; with a DataLoader, each gains a leading B).

    Map-style over the endless global sample ids (use ``ClipSampler``); ``epoch_samples`` is E. Picklable
    (loader processes get a copy); open files and the epoch cache are per process.
    """

    def __init__(self, index: ClipIndex, config: DataConfig) -> None:
        assert index.clip_frames == config.clip_frames, (index.clip_frames, config.clip_frames)
        self.index, self.config = index, config
        self.bad_reads = 0  # in this process
        units_of = [
            np.flatnonzero([u.identity == k for u in index.units]) for k in range(len(index.vocabulary))
        ]
        self._identity_units = units_of  # per identity: (U_k,) unit ids
        rows = np.asarray([u.rows for u in index.units], np.int64)
        self._identity_first = [np.concatenate([[0], np.cumsum(rows[u])]) for u in units_of]  # (U_k + 1,)
        self._reset()

    def _reset(self) -> None:
        self._files = _ShardFiles(self.config.open_shards)
        self._epochs: collections.OrderedDict[int, tuple[np.ndarray, np.ndarray]] = collections.OrderedDict()
        self._warned: set[int] = set()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for key in ("_files", "_epochs", "_warned"):
            state.pop(key)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    @property
    def epoch_samples(self) -> int:
        return self.index.epoch_samples

    def window(self, sample: int) -> tuple[int, int]:
        """(unit id, first row) of global sample g's clip."""
        epoch, position = divmod(sample, self.epoch_samples)
        if epoch not in self._epochs:
            self._epochs[epoch] = epoch_windows(self.index, self.config.seed, epoch)
            while len(self._epochs) > 2:  # the current epoch and the next (a batch may straddle both)
                self._epochs.popitem(last=False)
        runs, first_rows = self._epochs[epoch]
        return int(self.index.run_unit[runs[position]]), int(first_rows[position])

    def identity_rows(self, sample: int, unit: int, first_row: int) -> tuple[np.ndarray, np.ndarray]:
        """M frames of the clip's identity drawn by (seed, g): (unit ids (M,), rows (M,)) int64, sorted.

        Distinct frames from all the identity's units, outside the clip's own T frames while the identity
        has at least M others; with fewer than M frames in all, drawn with replacement.
        """
        T, M = self.config.clip_frames, self.config.identity_frames
        identity = self.index.units[unit].identity
        units, first = self._identity_units[identity], self._identity_first[identity]
        total = int(first[-1])
        rng = np.random.default_rng([self.config.seed, sample, IDENTITY_STREAM])
        if total - T >= M:
            clip_start = int(first[np.searchsorted(units, unit)]) + first_row
            picks = rng.choice(total - T, M, replace=False)
            picks[picks >= clip_start] += T
        elif total >= M:
            picks = rng.choice(total, M, replace=False)
        else:
            picks = rng.integers(0, total, M)
        picks.sort()
        which = np.searchsorted(first, picks, side="right") - 1
        return units[which].astype(np.int64), (picks - first[which]).astype(np.int64)

    def _read_unit(
        self, unit_id: int, rows: np.ndarray, clip: bool
    ) -> tuple[pa.Table, dict[str, np.ndarray]]:
        """Rows (N,) sorted of a unit, read and decoded (``decode_frames``): a clip's (consecutive rows of
        one run, with NMFC and flow) or identity frames'. A data problem raises ``_UnreadableUnit``."""
        unit = self.index.units[unit_id]
        try:
            table = self._files.read_rows(unit.shard_uri, rows, CLIP_COLUMNS if clip else _IDENTITY_COLUMNS)
            frame_index = table.column(schema.FRAME_INDEX).to_numpy()
            if clip and not (np.diff(frame_index) == unit.step).all():  # the index's runs say they are
                raise ValueError(f"frame_index {frame_index.tolist()} at rows {rows.tolist()}: shard changed")
            frames = decode_frames(table, unit.crop_size, self.config.image_px, with_nmfc_flow=clip)
        except (OSError, ValueError, EOFError, pa.ArrowException) as err:
            raise _UnreadableUnit(unit_id) from err
        return table, frames

    def _read(self, sample: int) -> dict[str, torch.Tensor]:
        return self.read_clip(*self.window(sample), sample=sample)

    def read_clip(self, unit_id: int, first_row: int, sample: int = 0) -> dict[str, torch.Tensor]:
        """The clip of T frames from ``first_row`` of unit ``unit_id`` (a window of one of its runs) with
        identity frames drawn by (seed, ``sample``): the sample dict. Raises ``_UnreadableUnit``."""
        cfg = self.config
        unit = self.index.units[unit_id]
        rows = np.arange(first_row, first_row + cfg.clip_frames)
        table, frames = self._read_unit(unit_id, rows, clip=True)
        frame_index = table.column(schema.FRAME_INDEX).to_numpy().astype(np.int64)
        scale = np.float32(cfg.image_px / unit.crop_size)
        # Boxes are pixel edges (x1 exclusive) and scale as they are. Their centre is the rounded mouth
        # landmark mean they were cut around, x0 + side // 2 (as ``centers_from_boxes`` in
        # model/networks/discriminators.py), a point in camera.py pixels (pixel j's centre at x = j), which
        # maps to image_px as (c + 0.5) * P / S - 0.5; crop_regions then cuts the stored box, scaled.
        stored = np.asarray(table.column(schema.MOUTH_BOX_PX).to_pylist(), np.int64)  # (T, 4)
        boxes = stored.astype(np.float32) * scale
        centres_stored = stored[:, :2] + (stored[:, 2:] - stored[:, :2]) // 2
        centres = ((centres_stored + 0.5) * scale - 0.5).astype(np.float32)

        id_units, id_rows = self.identity_rows(sample, unit_id, first_row)
        id_rgb, id_mask, id_frame_index = [], [], []
        for u in np.unique(id_units):  # one read per unit, of the row groups holding its frames
            part, decoded = self._read_unit(int(u), id_rows[id_units == u], clip=False)
            id_rgb.append(decoded[RGB])
            id_mask.append(decoded[MASK])
            id_frame_index.append(part.column(schema.FRAME_INDEX).to_numpy().astype(np.int64))
        return {
            RGB: torch.from_numpy(frames[RGB]),
            NMFC: torch.from_numpy(np.ascontiguousarray(frames[NMFC])),
            MASK: torch.from_numpy(frames[MASK]),
            FLOW: torch.from_numpy(np.ascontiguousarray(frames[FLOW][:-1])),
            MOUTH_BOX_PX: torch.from_numpy(boxes),
            MOUTH_CENTER_PX: torch.from_numpy(centres),
            IDENTITY: torch.tensor(unit.identity, dtype=torch.int64),
            ID_RGB: torch.from_numpy(np.ascontiguousarray(np.concatenate(id_rgb))),
            ID_MASK: torch.from_numpy(np.concatenate(id_mask)),
            SAMPLE: torch.tensor(sample, dtype=torch.int64),
            UNIT: torch.tensor(unit_id, dtype=torch.int64),
            FRAME_INDEX: torch.from_numpy(frame_index),
            ID_UNIT: torch.from_numpy(id_units),
            ID_FRAME_INDEX: torch.from_numpy(np.concatenate(id_frame_index)),
        }

    def __getitem__(self, sample: int) -> dict[str, torch.Tensor]:
        """Sample g, or when its shards cannot be read, the next readable one (g + 1, ...): deterministic
        for a given set of readable shards. Raises RuntimeError after ``max_bad_reads`` failures in a row."""
        sample = int(sample)
        error: BaseException | None = None
        for attempt in range(self.config.max_bad_reads + 1):
            try:
                out = self._read(sample + attempt)
            except _UnreadableUnit as bad:
                error, unit = bad.__cause__, self.index.units[bad.unit_id]
                self.bad_reads += 1
                self._files.close(unit.shard_uri)  # reopened if it comes back
                if bad.unit_id not in self._warned:
                    self._warned.add(bad.unit_id)
                    log.warning(
                        "training data: sample %d: cannot read unit %s (%s: %s); using the next sample",
                        sample + attempt, unit.video_id, type(error).__name__, error,
                    )  # fmt: skip
                continue
            out[SAMPLE] = torch.tensor(sample, dtype=torch.int64)
            out[BAD_READS] = torch.tensor(attempt, dtype=torch.int64)
            return out
        raise RuntimeError(
            f"training data {storage.redact(self.index.data_uri)}: samples {sample}..{sample + attempt} all "
            f"failed to read (data.max_bad_reads={self.config.max_bad_reads})"
        ) from error


def _init_worker(worker_id: int) -> None:
    """Loader processes decode one sample each: one thread apiece, so W loaders use W cores."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def make_loader(
    dataset: ClipDataset,
    batch_size: int,
    rank: int = 0,
    world_size: int = 1,
    start_sample: int = 0,
    num_workers: int | None = None,
    end_sample: int | None = None,
    multiprocessing_context: str = "spawn",
) -> torch.utils.data.DataLoader:
    """A DataLoader over rank ``rank``'s batches from global sample ``start_sample`` (``ClipSampler``;
    endless unless ``end_sample``). ``num_workers`` defaults to ``DataConfig.num_workers``; loader
    processes persist across iterations and pinned memory is used when CUDA is available. Batches hold the
    sample keys with a leading B; ``samples_seen`` after ``steps`` steps is ``start_sample + steps * W * B``.

    Loader processes are spawned, not forked: OpenCV's and OpenMP's thread pools (and s3fs's event loop)
    do not survive a fork of a process that has used them (a forked loader can hang in its first OpenCV
    call), and a training process has used them. They start once (``persistent_workers``).
    """
    workers = dataset.config.num_workers if num_workers is None else num_workers
    seed_state = np.random.SeedSequence([dataset.config.seed, rank]).generate_state(1)[0]
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ClipSampler(batch_size, rank, world_size, start_sample, end_sample),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_init_worker if workers > 0 else None,
        generator=torch.Generator().manual_seed(int(seed_state)),
        multiprocessing_context=multiprocessing_context if workers > 0 else None,
    )
