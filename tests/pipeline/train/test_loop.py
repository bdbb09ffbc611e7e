"""The training loop in one process: it learns on real shards, and a stopped run resumes exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from model.networks.generator import generate_sequence
from model.networks.losses import masked_l1_loss
from model.networks.renderer import VideoRenderer
from pipeline.train import data
from pipeline.train.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from pipeline.train.loop import PREVIEWS_DIR, SAMPLES_VIDEO, WorkerContext, resolved_run_dir, train
from tests.pipeline.train.train_inputs import tiny_config


def _clips(dataset: data.ClipDataset, per_identity: int = 2) -> dict[int, dict]:
    """A batch of ``per_identity`` clips per identity, keyed by identity."""
    found: dict[int, list[int]] = {}
    for g in range(dataset.index.epoch_samples):
        unit = dataset.index.units[dataset.window(g)[0]]
        found.setdefault(unit.identity, [])
        if len(found[unit.identity]) < per_identity:
            found[unit.identity].append(g)
    return {k: torch.utils.data.default_collate([dataset[g] for g in v]) for k, v in found.items()}


@torch.no_grad()
def _synthesise(nets: VideoRenderer, batch: dict, h: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Frames (B, T, 3, H, W) generated sequentially for the batch's NMFC, with its own identity vector or
    ``h``; and that identity vector."""
    nets.eval()
    h = nets.embedder(batch[data.ID_RGB], batch[data.ID_MASK]) if h is None else h
    return generate_sequence(nets.generator, batch[data.NMFC], h).frame, h


def _masked_l1(nets: VideoRenderer, batch: dict) -> float:
    fake, _ = _synthesise(nets, batch)
    real, mask = batch[data.RGB].flatten(0, 1), batch[data.MASK].flatten(0, 1)
    return float(masked_l1_loss(fake.flatten(0, 1), real, mask))


def _mean_colour(frames: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mean RGB inside the masks: frames (..., 3, H, W), masks (..., 1, H, W) -> (3,)."""
    weight = masks.expand_as(frames)
    dims = (*range(frames.ndim - 3), -2, -1)
    return (frames * weight).sum(dim=dims) / weight.sum(dim=dims)


def test_training_learns_on_real_shards(tiny_shards, tiny_trained_run):
    """The masked L1 of the generated clips falls below half its start, and each identity's h carries its
    appearance: with another identity's h the output moves towards that identity's colours."""
    run_dir, cfg = tiny_trained_run
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.step == cfg.run.steps
    dataset = data.ClipDataset(data.build_index(tiny_shards, cfg.data, checkpoint.identities), cfg.data)
    clips = _clips(dataset)
    torch.manual_seed(cfg.run.seed)  # the loop's initialisation: the networks at step 0
    initial = VideoRenderer(cfg.networks, len(checkpoint.identities))
    trained = checkpoint.renderer()
    start = np.mean([_masked_l1(initial, b) for b in clips.values()])
    end = np.mean([_masked_l1(trained, b) for b in clips.values()])
    assert end < 0.5 * start, (start, end)

    # Identity swap: drive A's NMFC with B's h; the foreground colour must move towards B's real frames.
    moved = []
    for a, batch_a in clips.items():
        for b, batch_b in clips.items():
            if a == b:
                continue
            _, h_b = _synthesise(trained, batch_b)
            own, _ = _synthesise(trained, batch_a)
            swapped, _ = _synthesise(trained, batch_a, h=h_b)
            mask = batch_a[data.MASK]
            target = _mean_colour(batch_b[data.RGB], batch_b[data.MASK])
            d_own = (_mean_colour(own, mask) - target).norm()
            d_swapped = (_mean_colour(swapped, mask) - target).norm()
            moved.append(float(d_own - d_swapped))
    # On average over the ordered pairs, and for most of them (a tiny run's h carries colour, not yet all).
    assert np.mean(moved) > 0 and sum(m > 0 for m in moved) > len(moved) / 2, moved

    # What a person looks at: previews and the generated clip.
    assert list((Path(run_dir) / PREVIEWS_DIR).glob("step-*.png"))
    assert (Path(run_dir) / SAMPLES_VIDEO).stat().st_size > 0


def test_a_stopped_run_resumes_to_the_same_weights(tiny_shards, tmp_path):
    """Run A trains 8 steps straight; run B stops after 4 (a checkpoint) and is rerun to 8. Both end with
    bitwise equal networks and optimiser states (CPU), across the schedule's stage changes."""
    overrides = ("run.checkpoint_every=4", "run.log_every=4", "run.preview_every=1000", "run.video_frames=0",
                 "schedule.adversarial_from_step=3", "schedule.temporal_from_step=5")  # fmt: skip
    full = tiny_config(tmp_path / "a", "run.steps=8", *overrides)
    train(full, tiny_shards, resolved_run_dir(full, "run"))
    first_half = tiny_config(tmp_path / "b", "run.steps=4", *overrides)
    train(first_half, tiny_shards, resolved_run_dir(first_half, "run"))
    assert [s for s, _ in list_checkpoints(resolved_run_dir(first_half, "run"))] == [4]
    logs: list[str] = []
    resumed = tiny_config(tmp_path / "b", "run.steps=8", *overrides)
    train(resumed, tiny_shards, resolved_run_dir(resumed, "run"), WorkerContext(log=logs.append))
    assert any("resuming at step 4/8" in line for line in logs), logs
    a = load_checkpoint(list_checkpoints(resolved_run_dir(full, "run"))[-1][1])
    b = load_checkpoint(list_checkpoints(resolved_run_dir(resumed, "run"))[-1][1])
    assert a.step == b.step == 8 and a.samples_seen == b.samples_seen == 8 * 2
    for name, state in a.networks.items():
        assert all(torch.equal(state[k], b.networks[name][k]) for k in state), name
    for name in a.optimizers:
        adam_a, adam_b = a.optimizers[name]["state"], b.optimizers[name]["state"]
        assert adam_a.keys() == adam_b.keys()
        assert all(torch.equal(adam_a[i]["exp_avg"], adam_b[i]["exp_avg"]) for i in adam_a), name
