"""Shared fixtures: paths to ../shared data (tests needing it skip cleanly where it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
ICT_PACKED = SHARED / "3dmm" / "ict_facekit_light.npz"
VIDEOS = SHARED / "data" / "videos"
IMAGES = SHARED / "data" / "images"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is laid beside the checkout in CI)")
    return path


@pytest.fixture(scope="session")
def ict_model():
    """The ICT Face Model Light loaded from the packed npz in ../shared."""
    from model.morphable_model import load_morphable_model

    return load_morphable_model(require(ICT_PACKED))


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    return require(VIDEOS)


@pytest.fixture(scope="session")
def shared_images() -> Path:
    return require(IMAGES)
