"""The meta-learning training loop of the video renderer (paper section 3.3), one function per worker.

``train`` knows no Ray and no MLflow: ``ray_train.py`` runs it on every Ray Train worker (the process group
is set up there), or a test or a debugging session calls it in one process; experiment tracking comes in
as a ``Tracker`` (``infra.tracking``), a no-op on every worker but rank 0.

Run folder (``run.storage_path/<run name>``, local or S3): ``config.yaml`` (the resolved config),
``identities.json`` (the vocabulary: row i of D^I's W is identities[i]), ``checkpoints/step-N.pt``
(``pipeline.train.checkpoint``), ``previews/step-N.png`` (the fixed preview batch: NMFC | real | generated
| mask per clip) and ``samples.mp4`` (the preview clips generated at the end). Resume = rerun with the
same run name: the loop continues from the newest checkpoint with the same networks, optimisers, schedule
stage (a function of the step) and data position.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from infra import storage
from infra.config import config_yaml, to_dict
from infra.tracking import NullTracker, Tracker
from model.networks.losses import VGGPerceptualLoss
from model.networks.renderer import VideoRenderer
from pipeline import media
from pipeline.train import data
from pipeline.train.checkpoint import (
    Checkpoint,
    checkpoint_uri,
    latest_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from pipeline.train.clip_index import vocabulary_to_json
from pipeline.train.config import StabilityConfig, TrainConfig
from pipeline.train.step import TrainStep, broadcast_parameters, loss_stage, world_size

IDENTITIES_FILE = "identities.json"
PREVIEWS_DIR = "previews"
SAMPLES_VIDEO = "samples.mp4"
FAIL_AT_STEP_ENV = "HEAD2HEAD_TEST_FAIL_AT_STEP"  # test hook: raise once at this step (see _maybe_fail)
FAIL_MARKER_ENV = "HEAD2HEAD_TEST_FAIL_MARKER"  # ... unless this file exists; it is created on failing


@dataclass
class WorkerContext:
    """What the loop needs from its surroundings: rank, device, how to report and log."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    report: Callable[[dict], None] = lambda metrics: None
    log: Callable[[str], None] = print


def pretrained_weights_statement(cfg: TrainConfig) -> str:
    """One line saying which pretrained weights the run uses and which networks start random."""
    if cfg.loss.lambda_vgg <= 0:
        vgg = "VGG19: off (loss.lambda_vgg = 0)"
    elif cfg.loss.vgg.random_weights:
        vgg = "VGG19: RANDOM weights (loss.vgg.random_weights; the VGG term compares random features)"
    else:
        vgg = f"VGG19: ImageNet weights ({cfg.loss.vgg.weights_path or 'torch hub cache'})"
    embedder = cfg.networks.embedder
    if embedder.arch == "facenet" and embedder.weights_path:
        e_id = f"E_id: FaceNet weights from {embedder.weights_path}"
    else:
        e_id = f"E_id ({embedder.arch}): random initialisation"
    return f"pretrained weights: {vgg}; {e_id}; G and the discriminators: random initialisation"


def _maybe_fail(step: int, rank: int) -> None:
    """Test hook for the resume tests: rank 0 raises once at the configured step."""
    at, marker = os.environ.get(FAIL_AT_STEP_ENV), os.environ.get(FAIL_MARKER_ENV)
    if at is None or rank != 0 or int(at) != step or not marker or os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(str(step))
    raise RuntimeError(f"test failure injected at step {step} ({FAIL_AT_STEP_ENV})")


def _mean_over_workers(metrics: dict[str, float], device: torch.device) -> dict[str, float]:
    if world_size() == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    values /= world_size()
    return dict(zip(keys, values.tolist()))


def parameters_in_sync(module: torch.nn.Module, device: torch.device) -> bool:
    """Whether every worker holds bit-identical parameters (a checksum per worker, compared on all)."""
    if world_size() == 1:
        return True
    flat = torch.cat([p.detach().flatten().double() for p in module.parameters()])
    weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device).remainder_(9973)
    checksum = torch.stack([flat.sum(), (flat * weights).sum()]).to(device)
    gathered = [torch.empty_like(checksum) for _ in range(world_size())]
    dist.all_gather(gathered, checksum)
    return all(torch.equal(g, gathered[0]) for g in gathered)


class NonFiniteTraining(RuntimeError):
    """Too many steps in a row had non-finite gradients, even after rolling back."""


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def render_preview(trainer: TrainStep, batch: dict) -> tuple[np.ndarray, list[np.ndarray]]:
    """The fixed batch generated by the current networks: a grid (one row per clip, its middle frame:
    NMFC | real | generated | generated mask) and video frames (the clips one after another, each frame
    NMFC | real | generated), uint8 RGB."""
    _, fake, fake_mask = trainer.generate(batch)
    nmfc, real, fake = (media.generator_images(x) for x in (batch[data.NMFC], batch[data.RGB], fake))
    mask = media.to_uint8(fake_mask[:, :, 0].float().cpu().numpy())  # (B, T, H, W), [0, 1] -> uint8
    t_mid = real.shape[1] // 2
    rows = [[nmfc[b, t_mid], real[b, t_mid], fake[b, t_mid], mask[b, t_mid]] for b in range(real.shape[0])]
    frames = [
        np.concatenate([nmfc[b, t], real[b, t], fake[b, t]], axis=1)
        for b in range(real.shape[0])
        for t in range(real.shape[1])
    ]
    return media.image_grid(rows), frames


def preview_batch(dataset: data.ClipDataset, clips: int) -> dict:
    """The fixed preview batch: the first sample of each of the first ``clips`` identities met in sample
    order (so the grid shows different people), then more samples if there are fewer identities."""
    picked: dict[int, int] = {}
    limit = min(dataset.index.epoch_samples, 50 * clips)
    for g in range(limit):
        unit = dataset.index.units[dataset.window(g)[0]]
        picked.setdefault(unit.identity, g)
        if len(picked) == clips:
            break
    samples = sorted(picked.values())
    samples += [g for g in range(limit) if g not in samples][: clips - len(samples)]
    return torch.utils.data.default_collate([dataset[g] for g in samples])


class _Monitor:
    """Running means of the step metrics between log lines, throughput and the D-collapse watch."""

    def __init__(self, stability: StabilityConfig) -> None:
        self.stability = stability
        self.sums: dict[str, float] = defaultdict(float)
        self.count = 0
        self.frames = 0.0
        self.start = time.perf_counter()
        self.low_d: dict[str, int] = defaultdict(int)
        self.warned: set[str] = set()

    def add(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            self.sums[k] += v
        self.count += 1
        self.frames += metrics["frames"]

    def flush(self) -> tuple[dict[str, float], float]:
        """(mean metrics since the last flush, training frames/s of this worker)."""
        counted = ("frames", "data/bad_reads")
        means = {k: v / max(self.count, 1) for k, v in self.sums.items() if k not in counted}
        means["data/bad_reads"] = self.sums.get("data/bad_reads", 0.0)  # a count, not a mean
        rate = self.frames / max(time.perf_counter() - self.start, 1e-9)
        self.sums, self.count, self.frames, self.start = defaultdict(float), 0, 0.0, time.perf_counter()
        return means, rate

    def collapsed(self, means: dict[str, float]) -> list[str]:
        """Discriminators whose hinge loss stayed under the threshold for the configured log intervals,
        each named once per run."""
        found = []
        for key, value in means.items():
            if not key.startswith("loss_d/"):
                continue
            self.low_d[key] = self.low_d[key] + 1 if value < self.stability.d_collapse_loss else 0
            if self.low_d[key] >= self.stability.d_collapse_steps and key not in self.warned:
                self.warned.add(key)
                found.append(key.split("/", 1)[1])
        return found


@dataclass(frozen=True)
class StepPlan:
    """How many steps and what happens when: every ``*_every`` is in steps (0: never); the last step
    always logs, evaluates and checkpoints."""

    total_steps: int
    batch_size: int
    log_every: int
    checkpoint_every: int
    preview_every: int = 0
    eval_every: int = 0


def run_steps(
    trainer: TrainStep,
    dataset: data.ClipDataset,
    plan: StepPlan,
    step: int,
    samples_seen: int,
    stability: StabilityConfig,
    ctx: WorkerContext,
    tracker: Tracker | NullTracker,
    save: Callable[[int, int], None],
    restore: Callable[[], Checkpoint | None],
    preview: Callable[[int], object] | None = None,
    evaluate: Callable[[int], dict[str, float]] | None = None,
) -> tuple[int, int, dict[str, float]]:
    """Steps ``trainer`` from ``step`` to ``plan.total_steps`` on ``dataset`` (from global sample
    ``samples_seen``) with the guards, the log, the previews, the evaluations and the checkpoints
    (``save(step, samples_seen)``); ``restore()`` gives the checkpoint to roll back to. The loop of
    meta-learning and of fine-tuning alike. Returns (step, samples_seen, the last logged metrics)."""
    log = ctx.log if ctx.rank == 0 else (lambda message: None)
    device, nets = ctx.device, trainer.nets
    monitor, last = _Monitor(stability), {}
    bad_steps, rollbacks = 0, 0
    per_step = plan.batch_size * ctx.world_size
    epoch_samples = max(dataset.epoch_samples, 1)
    nets.train()
    loader = data.make_loader(dataset, plan.batch_size, ctx.rank, ctx.world_size, samples_seen)
    batches = iter(loader)
    run_start, start_step = time.perf_counter(), step
    while step < plan.total_steps:
        _maybe_fail(step, ctx.rank)
        batch = _to_device(next(batches), device)
        metrics = trainer(batch, step)
        metrics["data/bad_reads"] = float(batch[data.BAD_READS].sum())  # shards that failed mid-run
        samples_seen += per_step
        step += 1
        monitor.add(metrics)
        final = step == plan.total_steps

        # Guard: skipped steps (non-finite gradients) in a row roll the networks back.
        bad_steps = bad_steps + 1 if metrics["skipped"] else 0
        if bad_steps >= stability.max_bad_steps:
            rollbacks += 1
            restored = restore()
            if restored is None or rollbacks > stability.max_rollbacks:
                raise NonFiniteTraining(
                    f"step {step}: {bad_steps} steps in a row with non-finite gradients"
                    + ("" if restored else " and no checkpoint to roll back to")
                    + f" ({rollbacks} rollbacks); lower the learning rates or enable stability options"
                )
            for name, state in restored.networks.items():
                getattr(nets, name).load_state_dict(state)
            trainer.load_state_dict(restored.optimizers)
            log(f"warning: rolled back to step {restored.step} after {bad_steps} non-finite steps")
            bad_steps = 0

        # Evaluate.
        scores: dict[str, float] = {}
        if evaluate is not None and (final or (plan.eval_every and step % plan.eval_every == 0)):
            scores = evaluate(step)
            tracker.log_metrics(scores, step)

        # Report status.
        if final or step % plan.log_every == 0:
            means, rate = monitor.flush()
            means = _mean_over_workers(means, device)
            stage = loss_stage(step - 1, trainer.loss, trainer.schedule)
            elapsed = time.perf_counter() - run_start
            eta_s = elapsed / max(step - start_step, 1) * (plan.total_steps - step)
            last = {
                **means,
                **scores,
                "frames_per_s_per_worker": rate,
                "epoch": samples_seen / epoch_samples,
                "lr/generator": trainer.optimizer_g.param_groups[0]["lr"],
                "lr/discriminator": trainer.optimizer_d.param_groups[0]["lr"],
            }
            tracker.log_metrics(last, step)
            ctx.report({**last, "step": step})
            losses = " ".join(
                f"{k.replace('loss_d/', 'D_').replace('loss/', '')}={v:.3f}"
                for k, v in sorted(means.items())
                if k.startswith("loss")
            )
            log(
                f"step {step}/{plan.total_steps} epoch {last['epoch']:.2f} "
                f"[{'adversarial' if stage.adversarial else 'reconstruction'}"
                f"{'+temporal' if stage.temporal else ''}] {losses} "
                f"l1_masked={means.get('l1_masked', math.nan):.3f} {rate:.1f} frames/s/worker "
                f"ETA {eta_s / 60:.1f} min"
            )
            for name in monitor.collapsed(means):
                log(
                    f"warning: the {name} discriminator's loss stayed below {stability.d_collapse_loss} "
                    f"for {stability.d_collapse_steps} log intervals: it is winning and G gets little "
                    "gradient (try spectral norm, a lower discriminator learning rate or a longer warm-up)"
                )

        # Save previews and checkpoints.
        if preview is not None and plan.preview_every and step % plan.preview_every == 0 and not final:
            preview(step)
        if final or step % plan.checkpoint_every == 0:
            save(step, samples_seen)
    return step, samples_seen, last


def train(
    cfg: TrainConfig,
    data_uri: str,
    run_dir: str,
    ctx: WorkerContext | None = None,
    tracker: Tracker | NullTracker | None = None,
    provenance: dict | None = None,
) -> dict[str, float]:
    """Trains (or resumes) the run in ``run_dir`` on the preprocessing output ``data_uri``; returns the
    last logged metrics. Every worker calls it with the same arguments (rank and device in ``ctx``)."""
    ctx = ctx or WorkerContext()
    tracker = tracker if tracker is not None and ctx.rank == 0 else NullTracker()
    log = ctx.log if ctx.rank == 0 else (lambda message: None)
    device = ctx.device
    if device.type == "cpu" and cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)

    # Set up the data, the networks and their optimisers; resume from the newest checkpoint.
    resumed = latest_checkpoint(run_dir, log)
    vocabulary = resumed.identities if resumed else None
    index = data.build_index(data_uri, cfg.data, vocabulary)
    dataset = data.ClipDataset(index, cfg.data)
    cfg.networks.check(cfg.data.image_px, cfg.data.clip_frames)
    torch.manual_seed(cfg.run.seed)
    nets = VideoRenderer(cfg.networks, len(index.vocabulary)).to(device)
    vgg = None
    if cfg.loss.lambda_vgg > 0:
        vgg = VGGPerceptualLoss(cfg.loss.vgg).to(device)
    autocast = torch.bfloat16 if cfg.run.precision == "bf16" and device.type == "cuda" else None
    trainer = TrainStep(nets, cfg.loss, cfg.objective, cfg.optim, cfg.schedule, vgg, autocast)
    step, samples_seen = 0, 0
    if resumed is not None:
        for name, state in resumed.networks.items():
            getattr(nets, name).load_state_dict(state)
        trainer.load_state_dict(resumed.optimizers)
        restore_rng(resumed.rng)
        step, samples_seen = resumed.step, resumed.samples_seen
    else:
        broadcast_parameters(nets)
    if ctx.rank == 0:
        storage.write_text(storage.join(run_dir, "config.yaml"), config_yaml(cfg))
        storage.write_text(storage.join(run_dir, IDENTITIES_FILE), vocabulary_to_json(index.vocabulary))
        tracker.log_params(to_dict(cfg))
        tracker.set_tags({"data": storage.redact(data_uri), "run_dir": storage.redact(run_dir)})
    log(pretrained_weights_statement(cfg))
    log(f"data {storage.redact(data_uri)}: {index.summary()}")
    if index.skipped:
        log(f"warning: {len(index.skipped)} units skipped: {list(index.skipped)[:5]}")
    log(f"{'resuming' if resumed else 'starting'} at step {step}/{cfg.run.steps}, {ctx.world_size} worker(s)")
    preview = _to_device(preview_batch(dataset, cfg.run.preview_clips), device)

    def checkpoint(at_step: int, at_samples: int) -> Checkpoint:
        return Checkpoint(
            kind="train",
            step=at_step,
            samples_seen=at_samples,
            networks={name: getattr(nets, name).state_dict() for name in _NETWORK_NAMES},
            networks_config=cfg.networks,
            generator_kind="adain",
            identities=index.vocabulary,
            optimizers=trainer.state_dict(),
            rng=rng_state(),
            config=to_dict(cfg),
            provenance=provenance or {},
        )

    def save(at_step: int, at_samples: int) -> None:
        # The workers' copies must agree before one of them is saved for all.
        if not parameters_in_sync(nets, device):
            raise RuntimeError(f"step {at_step}: the workers' parameters differ; gradients were not averaged")
        if ctx.rank == 0:
            save_checkpoint(checkpoint_uri(run_dir, at_step), checkpoint(at_step, at_samples))
            log(f"checkpoint at step {at_step} ({ctx.world_size} worker(s) in sync)")
        if world_size() > 1:
            dist.barrier()

    def write_preview(at_step: int) -> list[np.ndarray]:
        nets.eval()
        grid, frames = render_preview(trainer, preview)
        nets.train()
        if ctx.rank == 0:
            uri = storage.join(run_dir, PREVIEWS_DIR, f"step-{at_step:08d}.png")
            media.write_png(uri, grid)
            tracker.log_image(grid, f"{PREVIEWS_DIR}/step-{at_step:08d}.png")
        return frames

    # Train: one G / E_id update and one D update per step.
    plan = StepPlan(
        total_steps=cfg.run.steps,
        batch_size=cfg.run.batch_size,
        log_every=cfg.run.log_every,
        checkpoint_every=cfg.run.checkpoint_every,
        preview_every=cfg.run.preview_every,
    )
    step, samples_seen, last = run_steps(
        trainer, dataset, plan, step, samples_seen, cfg.stability, ctx, tracker,
        save=save, restore=lambda: latest_checkpoint(run_dir, log), preview=write_preview,
    )  # fmt: skip

    # The end: last preview, the preview clips as a video, the final checkpoint as an artifact.
    frames = write_preview(step)
    if ctx.rank == 0:
        if cfg.run.video_frames > 0:
            video = storage.join(run_dir, SAMPLES_VIDEO)
            media.write_mp4(video, frames[: cfg.run.video_frames], fps=25.0)
            tracker.log_artifact_uri(video, "videos")
        final = checkpoint_uri(run_dir, step)
        if storage.exists(final):
            tracker.log_artifact_uri(final, "checkpoints")
    return last


_NETWORK_NAMES = (
    "generator",
    "embedder",
    "image_discriminator",
    "mouth_discriminator",
    "temporal_discriminator",
)


def resolved_run_dir(cfg: TrainConfig, run_name: str) -> str:
    """The run's folder: ``run.storage_path/run_name``, an absolute path when local."""
    root = cfg.run.storage_path
    root = os.path.abspath(root) if storage.is_local(root) else root
    return storage.join(root, run_name)


