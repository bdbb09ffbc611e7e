"""The fine-tuning job's configuration (paper section 3.4): one frozen dataclass of every part's settings.

Data and loss settings default to the init checkpoint's own training config (``None`` here), so a person is
fine-tuned at the size and with the losses that the meta-learned networks were trained with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from infra.tracking import TrackingConfig
from model.networks.losses import LossConfig
from pipeline.preprocess.ray_preprocess import PreprocessJobConfig
from pipeline.train.config import OptimConfig, ScheduleConfig, StabilityConfig
from pipeline.train.data import DataConfig


@dataclass(frozen=True)
class SplitConfig:
    """Which of a person's frames train and which are held out (frames in video order, videos by id).

    train_frames: N, the first N frames train (the paper uses 50 to 500).
    holdout_frames: the last frames are held out for evaluation and never trained on ...
    holdout_share: ... at most this share of the person's frames (short videos).
    min_train_frames: a person with fewer usable training frames fails with reason ``too_few_frames``.
    """

    train_frames: int = 500
    holdout_frames: int = 100
    holdout_share: float = 0.2
    min_train_frames: int = 18


@dataclass(frozen=True)
class BudgetConfig:
    """How long each person trains and how the kept model is chosen.

    epochs: passes over the training frames (the paper: 15); used when ``steps`` is 0.
    steps: a fixed number of optimiser steps instead (budgets in epochs over 50 frames are tiny and
        overfit; a step budget is the same amount of training whatever N).
    eval_every: steps between scores on the held-out frames (and at the end).
    keep: ``best`` keeps the networks of the best held-out score, ``last`` the last ones.
    """

    epochs: float = 15.0
    steps: int = 0
    eval_every: int = 50
    keep: Literal["best", "last"] = "best"


@dataclass(frozen=True)
class PersonRunConfig:
    """Where the people's models go, batch size, precision, logging and checkpoints.

    storage_path: ``<storage_path>/persons/<identity>/`` holds each person's model, checkpoints and
        status; ``<storage_path>/finetune.csv`` the table of every person done so far.
    seed: torch's generator and the data order (window offsets, epoch order): what differs between two
        fine-tunes of one person from one init.
    """

    storage_path: str = "outputs/finetune"
    batch_size: int = 4
    precision: Literal["bf16", "fp32"] = "bf16"
    log_every: int = 20
    checkpoint_every: int = 100
    seed: int = 0
    threads: int = 0


@dataclass(frozen=True)
class BatchConfig:
    """How the people are spread over the cluster (Ray Tune, one trial per person).

    ray: False fine-tunes the people one after another in this process.
    address: None joins ``RAY_ADDRESS`` or starts a local Ray; "auto" a running one.
    concurrency: people fine-tuned at the same time (``max_concurrent_trials``).
    cpus_per_person, gpus_per_person: each trial's resources; a GPU fraction shares a GPU between
        several people (size it by memory: ``benchmarks/finetune.py`` reports a person's peak).
    """

    ray: bool = True
    address: str | None = None
    concurrency: int = 2
    cpus_per_person: float = 1.0
    gpus_per_person: float = 0.0


@dataclass(frozen=True)
class FinetuneConfig:
    data: DataConfig | None = None  # None: the init checkpoint's training data settings
    loss: LossConfig | None = None  # None: the init checkpoint's training losses
    split: SplitConfig = field(default_factory=SplitConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)
    run: PersonRunConfig = field(default_factory=PersonRunConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    preprocess: PreprocessJobConfig = field(default_factory=PreprocessJobConfig)  # when --data is videos
