"""docs/preprocessing.md documents every shard and per-video column and every failure reason."""

from __future__ import annotations

import inspect
from pathlib import Path

from pipeline import errors, schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "preprocessing.md"


def test_every_column_and_reason_is_documented():
    text = DOC.read_text()
    for name in [*schema.FRAME_SCHEMA.names, *schema.VIDEO_SCHEMA.names]:
        assert f"`{name}`" in text, f"column {name} is missing from {DOC.name}"
    reasons = {
        cls.reason
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.VideoRejected) and cls is not errors.VideoRejected
    }
    assert reasons and all(f"`{r}`" in text for r in reasons), reasons
