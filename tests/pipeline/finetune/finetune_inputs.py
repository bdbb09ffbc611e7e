"""Fine-tuning settings for tests: configs/finetune_tiny.yaml with a small budget on ``new_people_shards``
(60 frames a person: 45 train, 15 held out)."""

from __future__ import annotations

from pathlib import Path

from infra.config import load_config
from pipeline.finetune.config import FinetuneConfig
from pipeline.train.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[3]
TINY_CONFIG = REPO / "configs" / "finetune_tiny.yaml"
OVERRIDES = (
    "split.train_frames=45",
    "split.holdout_frames=15",
    "split.holdout_share=0.25",
    "budget.steps=30",
    "budget.eval_every=15",
    "run.batch_size=2",
    "run.log_every=10",
    "run.checkpoint_every=10",
    "batch.ray=false",
    "tracking.enabled=false",
)


def finetune_config(storage_path: str | Path, *overrides: str) -> FinetuneConfig:
    return load_config(
        FinetuneConfig, str(TINY_CONFIG), [*OVERRIDES, f"run.storage_path={storage_path}", *overrides]
    )


def finetune_args(storage_path: str | Path, *overrides: str) -> list[str]:
    args = ["--config", str(TINY_CONFIG)]
    for override in (*OVERRIDES, f"run.storage_path={storage_path}", *overrides):
        args += ["--set", override]
    return args


def init_checkpoint(run_dir: str) -> str:
    """The newest checkpoint of a training run."""
    return list_checkpoints(run_dir)[-1][1]
