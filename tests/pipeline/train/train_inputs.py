"""A 32 px training config for tests: configs/train_tiny.yaml shrunk so that a step takes under a second."""

from __future__ import annotations

from pathlib import Path

from infra.config import load_config
from pipeline.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[3]
TINY_CONFIG = REPO / "configs" / "train_tiny.yaml"

# configs/train_tiny.yaml at 32 px: G with two downsamplings, narrower discriminators, 2 clips a step,
# 2 identity frames, no loader processes, no MLflow (tests that track turn it on).
TEST_OVERRIDES = (
    "data.image_px=32",
    "data.identity_frames=2",
    "data.num_workers=0",
    "networks.generator.base_channels=8",
    "networks.generator.n_downsampling=2",
    "networks.generator.n_blocks=2",
    "networks.embedder.input_px=32",
    "networks.embedder.small_channels=8",
    "networks.image_discriminator.patchgan.ndf=8",
    "networks.mouth_discriminator.crop_px=9",
    "networks.mouth_discriminator.patchgan.ndf=8",
    "networks.temporal_discriminator.patchgan.ndf=8",
    "run.batch_size=2",
    "run.preview_clips=3",
    "run.video_frames=18",
    "cluster.ray=false",
    "tracking.enabled=false",
)


def tiny_config(storage_path: str | Path, *overrides: str) -> TrainConfig:
    """The test config with its runs under ``storage_path`` and any further ``KEY=VALUE`` overrides."""
    return load_config(
        TrainConfig, str(TINY_CONFIG), [*TEST_OVERRIDES, f"run.storage_path={storage_path}", *overrides]
    )


def tiny_args(storage_path: str | Path, *overrides: str) -> list[str]:
    """The same config as ``python -m jobs.train`` arguments."""
    args = ["--config", str(TINY_CONFIG)]
    for override in (*TEST_OVERRIDES, f"run.storage_path={storage_path}", *overrides):
        args += ["--set", override]
    return args
