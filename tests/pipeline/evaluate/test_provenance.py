from __future__ import annotations

import csv
import io
import json

import numpy as np

from pipeline.evaluate.distributions import fid
from pipeline.evaluate.provenance import evaluator_versions, fid_warnings, make_table


def test_table_carries_versions_estimators_counts_and_warnings():
    rng = np.random.default_rng(0)
    small = fid(rng.normal(size=(50, 4)), rng.normal(size=(60, 4)))
    estimator = {"estimator": "dlib_resnet_v1", "model_sha256": "55533b28a95800a5", "count": 50}
    table = make_table(
        "self_reenactment",
        [
            {"identity": "p1", "apd": np.float32(12.5), "fid": small.value},
            {"identity": "p2", "apd": 9.0, "masked_apd": float("nan")},
        ],
        estimators={"fid": estimator},
        alignment="face track crops, 128 px",
        sample_counts={"frames_generated": 50, "frames_real": 60},
        warnings=fid_warnings({"pooled": small}),
        flow="dis ultrafast",
    )
    versions = evaluator_versions()
    assert {"python", "numpy", "scipy", "dlib-bin"} <= set(versions)
    data = json.loads(table.to_json())
    assert data["provenance"]["versions"] == versions and data["provenance"]["flow"] == "dis ultrafast"
    assert data["provenance"]["estimators"]["fid"]["model_sha256"] == "55533b28a95800a5"
    assert data["rows"][0]["apd"] == 12.5 and data["rows"][1]["masked_apd"] is None
    assert data["warnings"] == ["FID pooled on 50 frames (< 1000): unstable, do not rank by it"]
    text = table.to_csv()
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert comments[0] == "# table: self_reenactment" and any(
        line.startswith("# warning: FID") for line in comments
    )
    rows = list(
        csv.DictReader(io.StringIO("\n".join(line for line in text.splitlines() if not line.startswith("#"))))
    )
    assert table.columns == ["identity", "apd", "fid", "masked_apd"]
    assert rows[1] == {"identity": "p2", "apd": "9.0", "fid": "", "masked_apd": ""}
