"""Training data (pipeline/train/data.py, clip_index.py) on a real tiny shard set made by preprocessing."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from model.networks.discriminators import crop_regions
from pipeline import schema
from pipeline.train import data
from pipeline.train.clip_index import frame_runs
from tests.conftest import TINY_CLIPS, TINY_CROP_PX, TINY_FRAMES, TINY_MOUTH_BOX_PX

T = 9


def _dataset(uri: str, image_px: int = 64, seed: int = 0, identity_frames: int = 4, **kw) -> data.ClipDataset:
    cfg = data.DataConfig(image_px=image_px, clip_frames=T, identity_frames=identity_frames, seed=seed, **kw)
    return data.ClipDataset(data.build_index(uri, cfg), cfg)


def _stored(uri: str, unit: data.Unit, frame_index) -> dict[str, np.ndarray]:
    """The stored rows of a unit with the given frame indices, decoded at full size (the reference)."""
    table = pq.read_table(unit.shard_uri).to_pandas().set_index(schema.FRAME_INDEX).loc[list(frame_index)]
    S = unit.crop_size
    return {
        schema.RGB: np.stack([schema.decode_image(b) for b in table[schema.RGB]]),
        schema.NMFC: np.stack([schema.decode_image(b) for b in table[schema.NMFC]]),
        schema.MASK: np.stack([schema.decode_image(b) > 127 for b in table[schema.MASK]]),
        schema.FLOW: np.stack([schema.decode_flow(b, S) for b in table[schema.FLOW]]),
        schema.MOUTH_BOX_PX: np.stack(table[schema.MOUTH_BOX_PX].to_numpy()),
    }


def _copy(tiny_shards: str, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(tiny_shards, out)
    return out


def _videos(out: Path):
    return pq.read_table(out / schema.VIDEOS_TABLE).to_pandas()


def test_frame_runs_cut_at_gaps_with_the_units_step():
    assert frame_runs(np.array([0, 2, 4, 6, 10, 12, 14, 15, 17])) == (2, [(0, 4), (4, 3), (7, 2)])
    assert frame_runs(np.arange(5, 12)) == (1, [(0, 7)])
    assert frame_runs(np.array([3])) == (1, [(0, 1)]) and frame_runs(np.array([], int)) == (1, [])


def test_a_sample_has_the_documented_shapes_ranges_and_background_removed(tiny_shards):
    ds = _dataset(tiny_shards, image_px=64, identity_frames=4)
    assert ds.index.vocabulary == tuple(sorted(TINY_CLIPS)) and len(ds.index.units) == 3
    assert ds.epoch_samples == 3 * (TINY_FRAMES // T) and ds.index.skipped == ()
    for g in (0, 7, ds.epoch_samples + 2):
        s = ds[g]
        shapes = {k: (tuple(v.shape), v.dtype) for k, v in s.items()}
        f32, i64, P = torch.float32, torch.int64, 64
        assert shapes == {
            data.RGB: ((T, 3, P, P), f32), data.NMFC: ((T, 3, P, P), f32), data.MASK: ((T, 1, P, P), f32),
            data.FLOW: ((T - 1, 2, P, P), f32), data.MOUTH_BOX_PX: ((T, 4), f32),
            data.MOUTH_CENTER_PX: ((T, 2), f32), data.IDENTITY: ((), i64), data.ID_RGB: ((4, 3, P, P), f32),
            data.ID_MASK: ((4, 1, P, P), f32), data.SAMPLE: ((), i64), data.UNIT: ((), i64),
            data.FRAME_INDEX: ((T,), i64), data.ID_UNIT: ((4,), i64), data.ID_FRAME_INDEX: ((4,), i64),
            data.BAD_READS: ((), i64),
        }  # fmt: skip
        assert int(s[data.SAMPLE]) == g and int(s[data.BAD_READS]) == 0
        for images, masks in ((s[data.RGB], s[data.MASK]), (s[data.ID_RGB], s[data.ID_MASK])):
            assert set(masks.unique().tolist()) == {0.0, 1.0}
            assert images.min() >= -1 and images.max() <= 1
            background = (masks == 0).expand_as(images)
            assert (images[background] == -1).all()  # background removed exactly where the mask is 0
            assert images[~background].mean() > -0.6  # the person is not black
        nmfc_uint8 = (s[data.NMFC] + 1) * 127.5
        assert torch.allclose(nmfc_uint8, nmfc_uint8.round(), atol=1e-3)  # uint8 / 127.5 - 1
        assert (torch.diff(s[data.FRAME_INDEX]) == 1).all()  # consecutive frames
        assert int(s[data.IDENTITY]) == ds.index.units[int(s[data.UNIT])].identity
        # The mouth centres make the discriminator's crop cut the stored boxes, scaled (to a pixel).
        xy = torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="xy"))[None]
        crop_px = TINY_MOUTH_BOX_PX * 64 // TINY_CROP_PX
        corners = crop_regions(xy.expand(T, -1, -1, -1), s[data.MOUTH_CENTER_PX], crop_px)[:, :, 0, 0]
        assert (corners - s[data.MOUTH_BOX_PX][:, :2]).abs().max() <= 0.5


def test_at_the_stored_size_a_sample_is_the_stored_frames(tiny_shards):
    """image_px = S: no resizing, so every tensor is the stored data, exactly; the mouth centre cuts the
    stored mouth box with the mouth discriminator's crop."""
    ds = _dataset(tiny_shards, image_px=TINY_CROP_PX)
    s = ds[4]
    unit = ds.index.units[int(s[data.UNIT])]
    ref = _stored(tiny_shards, unit, s[data.FRAME_INDEX].tolist())
    mask = ref[schema.MASK]
    assert torch.equal(s[data.MASK][:, 0], torch.from_numpy(mask).float())
    rgb = torch.from_numpy(ref[schema.RGB]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(s[data.RGB], torch.where(torch.from_numpy(mask)[:, None], rgb, torch.tensor(-1.0)))
    nmfc = torch.from_numpy(ref[schema.NMFC]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(s[data.NMFC], nmfc)
    assert torch.equal(s[data.FLOW], torch.from_numpy(ref[schema.FLOW][:-1]).permute(0, 3, 1, 2))
    boxes = torch.from_numpy(ref[schema.MOUTH_BOX_PX].astype(np.int64))
    crops = crop_regions(s[data.RGB], s[data.MOUTH_CENTER_PX], TINY_MOUTH_BOX_PX)
    for t, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        assert torch.equal(crops[t], s[data.RGB][t, :, y0:y1, x0:x1])


def test_flow_is_resized_and_its_vectors_scaled(tiny_shards):
    ds = _dataset(tiny_shards, image_px=64)
    s = ds[2]
    unit = ds.index.units[int(s[data.UNIT])]
    stored = _stored(tiny_shards, unit, s[data.FRAME_INDEX].tolist())[schema.FLOW][:-1]  # (T-1, S, S, 2)
    flow = s[data.FLOW].permute(0, 2, 3, 1).numpy()  # (T-1, 64, 64, 2)
    scale = 64 / TINY_CROP_PX
    # Area averaging by a whole factor keeps the mean displacement; the vectors shrink by P / S.
    np.testing.assert_allclose(flow.mean((1, 2)), stored.mean((1, 2)) * scale, rtol=1e-3, atol=1e-5)
    ratio = np.abs(flow).mean() / np.abs(stored).mean()
    assert abs(ratio - scale) < 0.1 * scale, ratio


def test_clips_never_cross_a_gap_and_windows_move_between_epochs(tiny_shards, tmp_path):
    """A unit with frames 20..22 dropped (rows cut out of its shard, row groups of 16 so clips also cross
    row-group borders): every clip of several epochs is consecutive, inside one run, and is the stored
    rows with those frame indices."""
    out = _copy(tiny_shards, tmp_path)
    videos = _videos(out)
    shard = out / videos["shard"][0]
    table = pq.read_table(shard)
    keep = [i for i, f in enumerate(table.column(schema.FRAME_INDEX).to_pylist()) if not 20 <= f <= 22]
    pq.write_table(table.take(keep), shard, row_group_size=16)
    videos.loc[0, "kept_frames"] = len(keep)
    pq.write_table(pa.Table.from_pandas(videos, preserve_index=False), out / schema.VIDEOS_TABLE)

    ds = _dataset(str(out), image_px=TINY_CROP_PX, identity_frames=8)
    gap_unit = 0
    assert ds.index.units[gap_unit].rows == TINY_FRAMES - 3
    index = ds.index
    runs = list(zip(index.run_unit.tolist(), index.run_first_row.tolist(), index.run_frames.tolist()))
    assert (gap_unit, 0, 20) in runs and (gap_unit, 20, 25) in runs
    assert ds.epoch_samples == 20 // T + 25 // T + 2 * (TINY_FRAMES // T)

    epochs = 4
    firsts = []
    for g in range(epochs * ds.epoch_samples):
        unit, first_row = ds.window(g)
        run = next(r for r in runs if r[0] == unit and r[1] <= first_row < r[1] + r[2])
        assert first_row + T <= run[1] + run[2]  # the window lies inside one run
        firsts.append((g // ds.epoch_samples, unit, first_row))
    for epoch in range(epochs):  # an epoch's windows of a run do not overlap
        for unit in range(3):
            starts = sorted(r for e, u, r in firsts if e == epoch and u == unit)
            assert all(b - a >= T for a, b in zip(starts, starts[1:]))
    windows_by_epoch = [{(u, r) for e, u, r in firsts if e == epoch} for epoch in range(epochs)]
    assert len({frozenset(w) for w in windows_by_epoch}) > 1  # offsets move the windows between epochs

    for g in range(0, 2 * ds.epoch_samples, 3):  # decoded clips: consecutive frames, never across the gap
        s = ds[g]
        frames = s[data.FRAME_INDEX]
        assert (torch.diff(frames) == 1).all(), frames
        assert int(s[data.BAD_READS]) == 0  # identity frames may straddle the gap; they read fine
        if int(s[data.UNIT]) == gap_unit:
            assert bool((frames < 20).all()) or bool((frames > 22).all())
            ref = _stored(str(out), ds.index.units[gap_unit], frames.tolist())
            assert torch.equal(s[data.MASK][:, 0], torch.from_numpy(ref[schema.MASK]).float())
            nmfc = torch.from_numpy(ref[schema.NMFC]).permute(0, 3, 1, 2).float() / 127.5 - 1
            assert torch.equal(s[data.NMFC], nmfc)  # the rows read across row groups are the right ones


def test_same_seed_same_order_other_seed_another(tiny_shards):
    index = data.build_index(tiny_shards, data.DataConfig(clip_frames=T))
    a = data.epoch_windows(index, seed=0, epoch=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, data.epoch_windows(index, seed=0, epoch=1)))
    for other in (data.epoch_windows(index, seed=1, epoch=1), data.epoch_windows(index, seed=0, epoch=2)):
        assert not all(np.array_equal(x, y) for x, y in zip(a, other))
    # Every epoch holds the same number of windows, each of them once.
    for epoch in range(3):
        runs, firsts = data.epoch_windows(index, seed=0, epoch=epoch)
        assert len(set(zip(runs.tolist(), firsts.tolist()))) == len(runs) == index.epoch_samples


def test_resuming_at_samples_seen_continues_the_stream_exactly(tiny_shards):
    ds = _dataset(tiny_shards, image_px=32, identity_frames=2)
    B, steps, stop = 2, 8, 3

    def batches(loader, n):
        it = iter(loader)
        return [next(it) for _ in range(n)]

    full = batches(data.make_loader(ds, B, num_workers=0), steps)
    samples_seen = stop * B  # what the loop stores after `stop` steps with W = 1
    resumed = batches(data.make_loader(ds, B, start_sample=samples_seen, num_workers=0), steps - stop)
    for a, b in zip(full[stop:], resumed):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.cat([b[data.SAMPLE] for b in full]).tolist() == list(range(steps * B))
    # Loader processes give the same batches as the training process.
    workers = batches(data.make_loader(ds, B, start_sample=samples_seen, num_workers=2), 2)
    for a, b in zip(resumed, workers):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_ranks_take_disjoint_samples_that_cover_the_epoch_whatever_the_world_size():
    E, B = 15, 2
    for W in (1, 2, 3):
        seen = [list(data.ClipSampler(B, r, W, start_sample=0, end_sample=E)) for r in range(W)]
        flat = [g for s in seen for g in s]
        assert len(flat) == len(set(flat)) and set(range(E)) <= set(flat)  # disjoint, covering
        assert len({len(s) for s in seen}) == 1  # the same number of steps on every rank
        assert max(flat) < E + W * B  # at most one step past the end
    # A run that stopped after 3 steps of W = 2 resumes with W = 3 at samples_seen: nothing repeated or
    # skipped, because the ranks of every step take one contiguous range of global samples.
    before = {g for r in range(2) for g in list(data.ClipSampler(B, r, 2, 0, 3 * 2 * B))}
    after = {g for r in range(3) for g in list(data.ClipSampler(B, r, 3, 3 * 2 * B, 3 * 2 * B + 2 * 3 * B))}
    assert before == set(range(12)) and after == set(range(12, 24))


def test_identity_frames_are_of_the_same_identity_and_outside_the_clip(tiny_shards):
    ds = _dataset(tiny_shards, image_px=TINY_CROP_PX, identity_frames=8)
    for g in range(0, 30, 4):
        s = ds[g]
        identity = int(s[data.IDENTITY])
        id_units = s[data.ID_UNIT].tolist()
        assert all(ds.index.units[u].identity == identity for u in id_units)
        clip = set(s[data.FRAME_INDEX].tolist())
        pairs = list(zip(id_units, s[data.ID_FRAME_INDEX].tolist()))
        assert len(set(pairs)) == 8  # distinct frames
        assert not any(u == int(s[data.UNIT]) and f in clip for u, f in pairs)
        if g == 0:  # the pixels are the stored frames of those rows
            ref = _stored(tiny_shards, ds.index.units[id_units[0]], [pairs[0][1]])
            rgb = torch.from_numpy(ref[schema.RGB][0]).permute(2, 0, 1).float() / 127.5 - 1
            expect = torch.where(torch.from_numpy(ref[schema.MASK][0]), rgb, torch.tensor(-1.0))
            assert torch.equal(s[data.ID_RGB][0], expect)
    again = ds[8]
    assert torch.equal(again[data.ID_FRAME_INDEX], ds[8][data.ID_FRAME_INDEX])  # drawn from (seed, g)


def test_vocabulary_is_sorted_kept_on_resume_and_restricted_by_identities(tiny_shards):
    index = data.build_index(tiny_shards, data.DataConfig(clip_frames=T))
    assert data.vocabulary_from_json(data.vocabulary_to_json(index.vocabulary)) == index.vocabulary
    saved = ("zz_other_person",) + tuple(reversed(index.vocabulary))  # an older run's order is kept
    resumed = data.build_index(tiny_shards, data.DataConfig(clip_frames=T), vocabulary=saved)
    assert resumed.vocabulary == saved
    assert {saved[u.identity] for u in resumed.units} == set(TINY_CLIPS)
    assert all(saved[u.identity] == index.vocabulary[v.identity] for u, v in zip(resumed.units, index.units))
    one = data.build_index(tiny_shards, data.DataConfig(clip_frames=T, identities=(TINY_CLIPS[1],)))
    assert one.vocabulary == (TINY_CLIPS[1],) and len(one.units) == 1
    with pytest.raises(ValueError, match="nobody"):
        data.build_index(tiny_shards, data.DataConfig(clip_frames=T, identities=("nobody",)))


def test_bad_shards_are_skipped_with_one_warning_each_and_counted(tiny_shards, tmp_path, caplog):
    out = _copy(tiny_shards, tmp_path)
    videos = _videos(out)
    ids = videos["video_id"].tolist()
    (out / videos["shard"][0]).unlink()  # absent
    (out / videos["shard"][1]).write_bytes((out / videos["shard"][1]).read_bytes()[:1000])  # cut short
    with caplog.at_level(logging.WARNING, logger="pipeline.train.clip_index"):
        ds = _dataset(str(out), image_px=32, identity_frames=2)
    assert [u.video_id for u in ds.index.units] == [ids[2]]
    reasons = dict(ds.index.skipped)
    assert set(reasons) == {ids[0], ids[1]}
    assert reasons[ids[0]] == "shard missing" and reasons[ids[1]].startswith("unreadable")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("skipping unit" in r.getMessage() for r in warnings)
    assert {int(ds[g][data.UNIT]) for g in range(ds.epoch_samples)} == {0}

    # The row count of the last one disagrees with the table: nothing usable is left.
    videos.loc[2, "kept_frames"] = TINY_FRAMES + 1
    pq.write_table(pa.Table.from_pandas(videos, preserve_index=False), out / schema.VIDEOS_TABLE)
    with pytest.raises(ValueError, match=f"{out}.*no run of {T} consecutive frames"):
        data.build_index(str(out), data.DataConfig(clip_frames=T))
    with pytest.raises(ValueError, match="no videos.parquet"):
        data.build_index(str(tmp_path / "nothing"), data.DataConfig(clip_frames=T))


def test_a_shard_lost_mid_run_costs_one_warning_and_the_next_sample(tiny_shards, tmp_path, caplog):
    out = _copy(tiny_shards, tmp_path)
    ds = _dataset(str(out), image_px=32, identity_frames=2)
    lost = 1
    losing = [g for g in range(ds.epoch_samples) if ds.window(g)[0] == lost]
    fine = {g: ds[g + 1] for g in losing if ds.window(g + 1)[0] != lost}
    Path(ds.index.units[lost].shard_uri).unlink()
    with caplog.at_level(logging.WARNING, logger="pipeline.train.data"):
        for g, expected in fine.items():
            s = ds[g]
            assert int(s[data.SAMPLE]) == g and int(s[data.BAD_READS]) == 1
            assert torch.equal(s[data.RGB], expected[data.RGB])  # sample g + 1's clip, deterministically
    assert ds.bad_reads == len(fine) > 0
    assert len([r for r in caplog.records if "cannot read unit" in r.getMessage()]) == 1


def test_reads_from_s3(tiny_shards, s3_env):
    from infra import storage

    uri = storage.join(s3_env, "tiny")
    fs, path = storage.filesystem(uri)
    fs.put(str(Path(tiny_shards) / schema.VIDEOS_TABLE), f"{path}/{schema.VIDEOS_TABLE}")
    fs.put(str(Path(tiny_shards) / schema.SHARDS_DIR) + "/", f"{path}/{schema.SHARDS_DIR}/", recursive=True)
    remote = _dataset(uri, image_px=32, identity_frames=2)
    local = _dataset(tiny_shards, image_px=32, identity_frames=2)
    assert remote.index.units[0].shard_uri.startswith("s3://") and remote.index.skipped == ()
    a, b = remote[5], local[5]
    assert all(torch.equal(a[k], b[k]) for k in a)
