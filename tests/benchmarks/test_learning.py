"""benchmarks/learning.py at tiny size: every part of the study runs, the report has all five parts, and a
rerun takes its results from the cache."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest


@pytest.mark.slow
def test_learning_study_runs_every_part_and_resumes_from_its_cache(tmp_path, shared_videos):
    from benchmarks.learning import main

    out = str(tmp_path / "study")
    summary = main(["--size", "tiny", "--output", out])
    assert summary["groups_done"] == summary["groups"] == 7 and summary["init_steps_done"] == 16
    assert set(summary["table2"]) == {"init, seed 0", "random, seed 0", "init, seed 1", "random, seed 1"}
    assert set(summary["table3"]) == {"full", "without D^M", "without D^V"}
    assert set(summary["table1"]) == {"18 frames", "24 frames"}
    scores = [*summary["table2"].values(), *summary["table3"].values(), *summary["table1"].values()]
    assert all(np.isfinite(v) and 0 < v < 255 for v in scores), summary
    # The full model on the default frames with seed 0 is one group, shared by all three tables.
    assert summary["table2"]["init, seed 0"] == summary["table3"]["full"] == summary["table1"]["24 frames"]
    assert summary["init_vs_random"].startswith("Init vs random: ") and "spread" in summary["init_vs_random"]
    assert len(summary["cross"]) == 2
    for pair in summary["cross"].values():
        assert -1 <= pair["identity_cosine_to_target"] <= 1 and -1 <= pair["identity_cosine_to_source"] <= 1
        assert np.isnan(pair["expression_mae"]) or 0 <= pair["expression_mae"] < 1  # no face in 32 px output
        assert Path(pair["strip"]).is_file() and Path(pair["video"]).is_file()
    text = (tmp_path / "study" / "results.md").read_text()
    for part in ("Table 2", "Table 3", "Table 1", "Cross-identity", "Scale and hardware", "**Data.**"):
        assert part in text
    # Plots as text: the training curve from the run's MLflow history, Table 2's bars and Table 1's curve.
    assert text.count("```mermaid") == 3 and "Initialisation training: masked L1" in text
    for direction in ("Init vs random: ", "Full model vs without D^M: ", "24 frames vs 18: "):
        assert direction in text
    assert summary["compute_minutes"] > 0
    assert "not run yet" not in text and "python -m benchmarks.learning --size tiny" in text
    # A rerun finds every part in the cache: the same numbers, without training or fine-tuning again.
    start = time.perf_counter()
    again = main(["--size", "tiny", "--output", out])
    assert json.dumps(again["table2"]) == json.dumps(summary["table2"])  # as JSON: NaN equals NaN there
    assert json.dumps(again["cross"]) == json.dumps(summary["cross"])
    assert time.perf_counter() - start < 90
