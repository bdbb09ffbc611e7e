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


# The arguments each job needs besides its config, to reach config loading.
REQUIRED_ARGS = {
    "convert_3dmm": ["--output", "unused"],
    "preprocess": ["--input", "unused", "--output", "unused"],
    "reconstruct": ["unused.mp4"],
    "train": ["--data", "unused", "--run-name", "unused"],
    "finetune": ["--init", "unused", "--data", "unused"],
    "forget": ["--identity", "unused"],
    "reenact": ["--source", "unused.mp4", "--target", "unused", "--out", "unused.mp4"],
    "evaluate": ["--model", "unused.pt", "--data", "unused", "--out", "unused"],
    "demo": [],
}


@pytest.mark.parametrize("job", JOBS)
def test_a_bad_config_value_is_one_line_naming_the_key_and_exit_status_2(job):
    assert job in REQUIRED_ARGS, f"add jobs.{job}'s required arguments to REQUIRED_ARGS"
    for override, named in [("nope.key=1", "nope"), ("dry_run=1", "dry_run")]:
        out = subprocess.run(
            [sys.executable, "-m", f"jobs.{job}", *REQUIRED_ARGS[job], "--set", override],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert f"'{named}'" in out.stderr and "known here:" in out.stderr, out.stderr


def test_a_wrongly_typed_value_says_what_is_allowed():
    from jobs import preprocess

    with pytest.raises(SystemExit) as exit_info:
        preprocess.main(["--input", "x", "--output", "y", "--set", "preprocess.fit.solver=fast"])
    assert exit_info.value.code == 2
