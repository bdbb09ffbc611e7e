"""benchmarks/hard_clips.py at tiny size: both configurations through the chain, the comparison's fields."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.mark.slow
def test_hard_clips_compares_both_backends_on_a_green_screen_clip(tmp_path, shared_videos, capsys):
    from benchmarks.hard_clips import main

    summary = main(
        ["--data", str(shared_videos.parent), "--clips", "liveportrait_d0", "--max-frames", "12",
         "--output", str(tmp_path)]
    )  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == json.loads(json.dumps(summary))
    assert summary["clips"] == 1 and summary["not_ok"] == {"old": [], "new": []}
    for name in ("old", "new"):
        assert 0 < summary["fit_error_pct_mean"][name] < 2.5
        assert 0.9 < summary["mask_iou_green"][name]["liveportrait_d0"] <= 1.0
        assert 0 < summary["cpu_ms_per_frame"][name]["landmarks"] < 100
    # The face mesh fits this frontal clip more closely than dlib's points do (0.7 % against 1.5 % on all
    # its frames), and each fit lands within a few % of the other detector's inner points.
    assert summary["fit_error_pct_mean"]["new"] < summary["fit_error_pct_mean"]["old"]
    assert all(np.isfinite(v) and v < 5 for v in summary["cross_inner_pct_mean"].values())
    assert (tmp_path / "hard_clips.md").read_text().count("liveportrait_d0") == 1
    assert [p.name for p in (tmp_path / "sheets").iterdir()] == ["liveportrait_d0_old_over_new.png"]
