"""`make demo`'s chain at the test suite's size: preprocess, train, fine-tune, reenact, evaluate."""

from __future__ import annotations

import json

import av
import pytest
import ray

from jobs import demo

pytestmark = pytest.mark.slow


def test_the_demo_runs_the_whole_chain_from_shared_inputs(tmp_path, shared_videos, ict_model, capsys):
    out = tmp_path / "demo"
    shared = str(shared_videos.parents[1])
    assert demo.main(["--output", str(out), "--quick", "--no-download", "--shared", shared]) == 0
    assert not ray.is_initialized()  # each stage shut down the Ray it started: nothing left to go stale
    artefacts = json.loads((out / "artefacts.json").read_text())
    names = ("contact sheets", "training previews", "training samples", "person model", "fine-tuning table",
             "reenactment video", "evaluation report")  # fmt: skip
    for name in names:
        assert (tmp_path / artefacts[name]).exists(), name
    with av.open(artefacts["reenactment video"]) as video:
        assert [s.type for s in video.streams] == ["video", "audio"]  # the driver's audio
        assert video.metadata["synthetic"] == "true"
    printed = capsys.readouterr().out
    assert "MLflow UI: mlflow ui --backend-store-uri sqlite:///" in printed and "blurry" in printed
