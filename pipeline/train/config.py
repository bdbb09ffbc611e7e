"""The training job's configuration: one frozen dataclass composed of every part's settings.

``TrainConfig`` is what ``configs/train.yaml`` (the paper's 256 px setting) and ``configs/train_tiny.yaml``
(a CPU-sized one) fill in; ``python -m jobs.train --set optim.lr_generator=1e-4`` overrides one value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from infra.tracking import TrackingConfig
from model.networks.losses import LossConfig, ObjectiveConfig
from model.networks.renderer import RendererConfig
from pipeline.train.data import DataConfig


@dataclass(frozen=True)
class OptimConfig:
    """Adam for each side (the authors' earlier system: lr 2e-4, betas (0.5, 0.999))."""

    lr_generator: float = 2e-4
    lr_embedder: float = 2e-4
    lr_discriminator: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)


@dataclass(frozen=True)
class ScheduleConfig:
    """When each group of loss terms joins, as steps (``loss_stage`` is a pure function of the step).

    Before ``adversarial_from_step`` G and E_id train on the reconstruction terms only (VGG, mask, pixel
    L1 where weighted, L_mch) and no discriminator trains; D^V and its terms join at
    ``temporal_from_step``. Both 0 is the paper's all-at-once training.
    """

    adversarial_from_step: int = 0
    temporal_from_step: int = 0


@dataclass(frozen=True)
class StabilityConfig:
    """Guards against the failures that few-shot talking-head GANs are known for.

    max_bad_steps: consecutive steps with non-finite losses or gradients (each skipped) after which the
        run rolls back to its last checkpoint.
    max_rollbacks: rollbacks after which the run stops with an error instead.
    d_collapse_loss: a discriminator whose hinge loss stays below this for ``d_collapse_steps`` logged
        steps is reported as having won (the generator then gets little gradient).
    d_collapse_steps: see above.
    """

    max_bad_steps: int = 5
    max_rollbacks: int = 3
    d_collapse_loss: float = 0.05
    d_collapse_steps: int = 5


@dataclass(frozen=True)
class RunConfig:
    """Length, batch, precision and what is saved when.

    storage_path: where runs live (local path or s3:// URI); the run's folder is ``storage_path/run_name``.
    steps: optimiser steps of the whole run (a rerun past the end does nothing).
    batch_size: clips per worker per step.
    precision: ``bf16`` autocasts the networks on CUDA (warps and losses stay float32); ``fp32`` always;
        on CPU the run is float32 either way.
    log_every, checkpoint_every, preview_every: in steps; the last step always logs and checkpoints.
    preview_clips: clips of the fixed preview batch (rendered every ``preview_every`` steps).
    video_frames: frames of the generated clip written at the end (0: none).
    seed: initialises the networks and the data order (the same on every worker).
    threads: torch threads per worker on CPU (0: torch's default).
    """

    storage_path: str = "outputs/train"
    steps: int = 100_000
    batch_size: int = 4
    precision: Literal["bf16", "fp32"] = "bf16"
    log_every: int = 50
    checkpoint_every: int = 2_000
    preview_every: int = 1_000
    preview_clips: int = 4
    video_frames: int = 50
    seed: int = 0
    threads: int = 0


@dataclass(frozen=True)
class ClusterConfig:
    """Ray Train scaling (``pipeline/train/ray_train.py``).

    address: None joins ``RAY_ADDRESS`` (``ray job submit``) or starts a local Ray; "auto" a running one.
    num_workers: data-parallel workers; use_gpu: one GPU each (NCCL), else CPU workers (gloo).
    cpus_per_worker: CPUs each worker reserves (its loader processes included).
    max_failures: worker failures retried from the last checkpoint before the run fails.
    ray: False runs the loop in this process, without Ray (tests, debugging).
    """

    address: str | None = None
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: int = 1
    max_failures: int = 2
    ray: bool = True


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    networks: RendererConfig = field(default_factory=RendererConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    run: RunConfig = field(default_factory=RunConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
