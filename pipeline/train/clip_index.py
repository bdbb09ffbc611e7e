"""The index of a preprocessing output for training, and the seeded order in which it is sampled.

``pipeline/train/data.py`` reads the samples; its module docstring describes the whole scheme. Here:

- ``index_shards``: the ``ok`` units of ``videos.parquet`` and their runs of consecutive frames, reading
  only each shard's footer and ``frame_index`` column; shards that cannot be used are skipped and counted.
- ``epoch_windows``: an epoch's windows of T frames and their order, a function of (seed, epoch).
- ``rank_batches`` / ``ClipSampler``: which global samples each rank takes, batch after batch.

Nothing here decodes an image; the index holds a few integers per unit and per run.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch.utils.data

from infra import storage
from pipeline import schema

log = logging.getLogger(__name__)

# Columns a shard must have to be sampled.
CLIP_COLUMNS = (schema.FRAME_INDEX, schema.RGB, schema.NMFC, schema.MASK, schema.FLOW, schema.MOUTH_BOX_PX)
# Independent random streams from one seed (numpy SeedSequence entropy [seed, epoch or sample, stream]).
OFFSET_STREAM, ORDER_STREAM, IDENTITY_STREAM = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Unit:
    """A unit of the preprocessing output as the index sees it."""

    video_id: str
    identity: int  # row of the vocabulary
    shard_uri: str
    rows: int  # frames in the shard
    crop_size: int  # S, px
    step: int  # the unit's most common frame_index difference (its decode stride)


@dataclasses.dataclass(frozen=True, eq=False)
class ClipIndex:
    """Units, their runs of consecutive frames, and what was left out. Run arrays (R,) int64 hold only
    the runs of at least T frames; identity frames come from every row of the identity's units."""

    data_uri: str
    clip_frames: int  # T the runs were filtered for
    vocabulary: tuple[str, ...]  # sorted identity names; identity k is row k of D^I's W
    units: tuple[Unit, ...]
    run_unit: np.ndarray  # (R,) int64 index into units
    run_first_row: np.ndarray  # (R,) int64 first row of the run in its shard
    run_frames: np.ndarray  # (R,) int64 frames in the run, >= T
    skipped: tuple[tuple[str, str], ...]  # (video_id, reason) of ok units left out
    short_runs: int  # runs shorter than T (not sampled)
    short_frames: int  # frames in them

    @property
    def epoch_samples(self) -> int:
        """E: windows (samples) per epoch, the same every epoch."""
        return int((self.run_frames // self.clip_frames).sum())

    def summary(self) -> dict:
        """Counts for the job log."""
        return {
            "units": len(self.units),
            "identities": len(self.vocabulary),
            "runs": len(self.run_frames),
            "epoch_samples": self.epoch_samples,
            "skipped_units": len(self.skipped),
            "short_runs": self.short_runs,
            "short_frames": self.short_frames,
        }


def vocabulary_to_json(vocabulary: Sequence[str]) -> str:
    return json.dumps({"identities": list(vocabulary)})


def vocabulary_from_json(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text)["identities"])


def frame_runs(frame_index: np.ndarray) -> tuple[int, list[tuple[int, int]]]:
    """A unit's step and its runs of consecutive frames.

    frame_index (N,) int, in shard order -> (step, [(first_row, frames), ...]). The step is the most common
    difference between neighbours (the smallest of equally common ones; 1 for fewer than 2 frames); a run
    ends wherever the next difference is not the step.
    """
    n = len(frame_index)
    if n < 2:
        return 1, [(0, n)] if n else []
    diff = np.diff(np.asarray(frame_index, np.int64))
    values, counts = np.unique(diff, return_counts=True)
    step = int(values[np.argmax(counts)])  # np.unique sorts, argmax takes the first: the smallest
    cuts = np.flatnonzero(diff != step) + 1
    bounds = np.concatenate([[0], cuts, [n]])
    return step, [(int(a), int(b - a)) for a, b in zip(bounds[:-1], bounds[1:])]


def _read_table_bytes(uri: str) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(uri)))


def open_shard(uri: str) -> tuple[object | None, pq.ParquetFile]:
    """(file handle to close or None, ParquetFile): local files by pyarrow's native reader, other URIs
    through fsspec with no read-ahead cache (each column chunk pyarrow asks for is one ranged GET)."""
    fs, path = storage.filesystem(uri)
    if storage.is_local(uri):
        return None, pq.ParquetFile(path)
    handle = fs.open(path, "rb", cache_type="none")
    try:
        return handle, pq.ParquetFile(handle)
    except Exception:
        handle.close()
        raise


def _scan_unit(uri: str, kept_frames: int) -> np.ndarray | str:
    """The shard's frame_index column (N,), or the reason it cannot be used."""
    handle = None
    try:
        handle, shard = open_shard(uri)
        missing = [c for c in CLIP_COLUMNS if c not in shard.schema_arrow.names]
        if missing:
            return f"columns {missing} missing"
        if shard.metadata.num_rows != kept_frames:
            return f"{shard.metadata.num_rows} rows but kept_frames={kept_frames} in {schema.VIDEOS_TABLE}"
        return shard.read(columns=[schema.FRAME_INDEX], use_threads=False).column(0).to_numpy()
    except FileNotFoundError:
        return "shard missing"
    except (OSError, ValueError, pa.ArrowException) as err:
        return f"unreadable ({type(err).__name__}: {err})"
    finally:
        if handle is not None:
            handle.close()


def index_shards(
    data_uri: str,
    clip_frames: int,
    identities: Sequence[str] = (),
    vocabulary: Sequence[str] | None = None,
    threads: int = 16,
) -> ClipIndex:
    """The index of the preprocessing output at ``data_uri`` (local path or URI) for clips of
    ``clip_frames`` frames, over the units of ``identities`` (all when empty).

    ``vocabulary``: the identity names of an earlier run (resume, fine-tuning), kept as they are; units of
    other identities are skipped. ``threads`` shards are scanned at once (I/O bound on S3). Raises
    ValueError when the table is absent, a requested identity is not in it, or no run of ``clip_frames``
    frames remains.
    """
    where = storage.redact(data_uri)
    table_uri = storage.join(data_uri, schema.VIDEOS_TABLE)
    try:
        table = _read_table_bytes(table_uri)
    except FileNotFoundError:
        raise ValueError(
            f"--data {where}: no {schema.VIDEOS_TABLE} (looked for {storage.redact(table_uri)}); point it at "
            f"the --output of jobs.preprocess"
        ) from None
    records = [schema.VideoRecord.from_dict(row) for row in table.to_pylist()]
    ok = [r for r in records if r.ok]
    if identities:
        unknown = sorted(set(identities) - {r.identity for r in ok})
        if unknown:
            raise ValueError(f"data.identities: {unknown} have no ok unit in {storage.redact(table_uri)}")
        ok = [r for r in ok if r.identity in set(identities)]
    vocabulary = tuple(vocabulary) if vocabulary is not None else tuple(sorted({r.identity for r in ok}))
    row_of = {name: k for k, name in enumerate(vocabulary)}
    ok.sort(key=lambda r: r.video_id)

    skipped: list[tuple[str, str]] = []
    candidates = []
    for r in ok:
        if r.identity not in row_of:
            skipped.append((r.video_id, f"identity {r.identity!r} not in the run's vocabulary"))
        elif not r.shard or r.crop_size <= 0:
            skipped.append((r.video_id, "no shard or crop size in the table"))
        else:
            candidates.append(r)
    uris = [storage.join(data_uri, *r.shard.split("/")) for r in candidates]
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        scans = list(pool.map(_scan_unit, uris, [r.kept_frames for r in candidates]))

    units: list[Unit] = []
    run_unit, run_first_row, run_frames = [], [], []
    short_runs = short_frames = 0
    for r, uri, scan in zip(candidates, uris, scans):
        if isinstance(scan, str):
            skipped.append((r.video_id, scan))
            continue
        step, runs = frame_runs(scan)
        for first, frames in runs:
            if frames >= clip_frames:
                run_unit.append(len(units))
                run_first_row.append(first)
                run_frames.append(frames)
            else:
                short_runs += 1
                short_frames += frames
        units.append(Unit(r.video_id, row_of[r.identity], uri, len(scan), r.crop_size, step))
    for video_id, reason in skipped:
        log.warning("training data %s: skipping unit %s: %s", where, video_id, reason)
    if not run_frames:
        reasons = "; ".join(f"{video_id}: {reason}" for video_id, reason in skipped[:5])
        raise ValueError(
            f"--data {where}: no run of {clip_frames} consecutive frames (data.clip_frames) in "
            f"{len(ok)} ok units of {schema.VIDEOS_TABLE} ({len(records)} in all); {len(skipped)} skipped"
            f"{f' ({reasons})' if reasons else ''}, {short_runs} runs shorter than that"
        )
    return ClipIndex(
        data_uri=data_uri,
        clip_frames=clip_frames,
        vocabulary=vocabulary,
        units=tuple(units),
        run_unit=np.asarray(run_unit, np.int64),
        run_first_row=np.asarray(run_first_row, np.int64),
        run_frames=np.asarray(run_frames, np.int64),
        skipped=tuple(skipped),
        short_runs=short_runs,
        short_frames=short_frames,
    )


def restrict_rows(index: ClipIndex, rows: dict[int, tuple[int, int]]) -> ClipIndex:
    """``index`` cut to the row ranges ``rows[unit] = (first, end)`` (end exclusive); runs are cut at the
    range borders, pieces shorter than T are dropped (counted as short) and units not listed lose their
    runs (they stay in ``units``, so unit ids keep their meaning)."""
    T = index.clip_frames
    run_unit, run_first_row, run_frames = [], [], []
    short_runs, short_frames = index.short_runs, index.short_frames
    for u, first, frames in zip(index.run_unit, index.run_first_row, index.run_frames):
        lo, hi = rows.get(int(u), (0, 0))
        a, b = max(int(first), lo), min(int(first + frames), hi)
        if b - a >= T:
            run_unit.append(int(u))
            run_first_row.append(a)
            run_frames.append(b - a)
        elif b > a:
            short_runs += 1
            short_frames += b - a
    return dataclasses.replace(
        index,
        run_unit=np.asarray(run_unit, np.int64),
        run_first_row=np.asarray(run_first_row, np.int64),
        run_frames=np.asarray(run_frames, np.int64),
        short_runs=short_runs,
        short_frames=short_frames,
    )


def epoch_windows(index: ClipIndex, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows of one epoch in its order: (run ids (E,) int64, first rows (E,) int64).

    Run r of L frames gives floor(L / T) windows starting at first_row + o + k * T, with its offset o drawn
    uniformly from 0 .. L - T * floor(L / T) by (seed, epoch, r); the order is a permutation by (seed, epoch).
    """
    T = index.clip_frames
    windows = index.run_frames // T
    slack = index.run_frames - windows * T
    offsets = np.random.default_rng([seed, epoch, OFFSET_STREAM]).integers(0, slack + 1)
    runs = np.repeat(np.arange(len(windows)), windows)
    within = np.arange(len(runs)) - np.repeat(np.cumsum(windows) - windows, windows)
    first_rows = (index.run_first_row + offsets)[runs] + within * T
    order = np.random.default_rng([seed, epoch, ORDER_STREAM]).permutation(len(runs))
    return runs[order], first_rows[order]


def rank_batches(start_sample: int, batch_size: int, rank: int, world_size: int) -> Iterator[range]:
    """Global sample ids of rank ``rank``'s batches b = 0, 1, ...: ``start + (b * W + r) * B + [0, B)``."""
    assert 0 <= rank < world_size and batch_size > 0 and start_sample >= 0, (rank, world_size, batch_size)
    first = start_sample + rank * batch_size
    while True:
        yield range(first, first + batch_size)
        first += world_size * batch_size


class ClipSampler(torch.utils.data.Sampler[int]):
    """Global sample ids for one rank, batch after batch (``rank_batches``), for a DataLoader with the same
    ``batch_size``. Endless unless ``end_sample`` is given: then every rank yields the batches whose global
    step starts before it, the same number on every rank (DDP ranks must take the same steps)."""

    def __init__(
        self, batch_size: int, rank: int = 0, world_size: int = 1, start_sample: int = 0,
        end_sample: int | None = None,
    ) -> None:  # fmt: skip
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.start_sample, self.end_sample = start_sample, end_sample

    def steps(self) -> int | None:
        if self.end_sample is None:
            return None
        per_step = self.world_size * self.batch_size
        return max(0, -(-(self.end_sample - self.start_sample) // per_step))

    def __iter__(self) -> Iterator[int]:
        steps = self.steps()
        for b, batch in enumerate(
            rank_batches(self.start_sample, self.batch_size, self.rank, self.world_size)
        ):
            if steps is not None and b >= steps:
                return
            yield from batch

    def __len__(self) -> int:
        steps = self.steps()
        if steps is None:
            raise TypeError("an endless ClipSampler has no length (give end_sample)")
        return steps * self.batch_size
