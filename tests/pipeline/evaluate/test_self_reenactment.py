"""The self-reenactment protocol end to end on a tiny person: jobs.evaluate writes the tables and report."""

from __future__ import annotations

import json
import math

from jobs import evaluate


def test_evaluation_job_writes_tables_with_provenance_and_a_report(tiny_person, new_people_shards, tmp_path):
    people, person, _ = tiny_person
    out = tmp_path / "report"
    args = ["--people", people, "--data", new_people_shards, "--out", str(out)]
    assert evaluate.main([*args, "--set", "tracking.enabled=false"]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    (row,) = summary["per_person"]["rows"]
    assert row["person"] == person and row["frames"] == 9  # the held-out frames: one window of T frames
    assert "refit_failed" not in row, row.get("refit_failed")
    names = ("apd", "masked_apd", "mask_iou", "warping_error_relative", "identity_cosine", "kid",
             "landmark_distance_pct_iod", "expression_mae", "pose_error_deg")  # fmt: skip
    for name in names:
        assert math.isfinite(row[name]), name
    assert 0 < row["apd"] < 442 and 0 <= row["mask_iou"] <= 1
    provenance = summary["per_person"]["provenance"]
    assert provenance["estimators"]["identity_embedding"].startswith("dlib_resnet_v1 sha256:")
    assert "dlib" in provenance["versions"] or "dlib-bin" in provenance["versions"]
    assert summary["pooled"]["warnings"]  # FID on 9 frames is flagged as unstable
    page = (out / "report.html").read_text()
    assert "<table>" in page and f"strip_{person}.png" in page and (out / f"strip_{person}.png").exists()
    assert (out / "metrics.csv").read_text().startswith("# table: self_reenactment_per_person")
