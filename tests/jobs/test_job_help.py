"""Every job is runnable as ``python -m jobs.<name>`` and answers --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

JOBS = sorted(
    p.stem for p in (Path(__file__).resolve().parents[2] / "jobs").glob("*.py") if p.stem != "__init__"
)


@pytest.mark.parametrize("job", JOBS)
def test_job_help(job):
    out = subprocess.run(
        [sys.executable, "-m", f"jobs.{job}", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and "--dry-run" in out.stdout


def test_convert_3dmm_job_writes_model_preview_and_config(tmp_path, ict_model):
    from jobs import convert_3dmm
    from model.face3d.loader import load_morphable_model

    assert convert_3dmm.main(["--output", str(tmp_path), "--set", "preview_size_px=128"]) == 0
    converted = load_morphable_model(tmp_path / "model.npz")
    assert np.array_equal(converted.mean, ict_model.mean)
    assert "preview_size_px: 128" in (tmp_path / "config.yaml").read_text()
    image = cv2.imread(str(tmp_path / "landmarks.png"))
    assert image.shape == (128, 256, 3)
    # The 68 landmarks are drawn in red on both views.
    red = (image[..., 2] > 180) & (image[..., 1] < 80) & (image[..., 0] < 80)
    assert red[:, :128].sum() > 68 and red[:, 128:].sum() > 34
