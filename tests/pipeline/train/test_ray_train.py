"""The training job end to end: ``python -m jobs.train`` on Ray Train with 2 CPU workers (gloo), tracked by a
real MLflow server whose artifacts land in S3 (moto); a worker failure is retried from the last checkpoint
and ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import av
import boto3
import pytest
import torch

from pipeline.train.checkpoint import list_checkpoints, load_checkpoint
from pipeline.train.loop import FAIL_AT_STEP_ENV, FAIL_MARKER_ENV
from tests.pipeline.train.train_inputs import REPO, tiny_args

pytestmark = pytest.mark.slow

STEPS = 12
OVERRIDES = (
    f"run.steps={STEPS}",
    "run.checkpoint_every=4",
    "run.log_every=4",
    "run.preview_every=8",
    "run.video_frames=9",
    "schedule.adversarial_from_step=1",
    "schedule.temporal_from_step=2",
    "cluster.ray=true",
    "cluster.num_workers=2",
    "cluster.cpus_per_worker=1",
    "cluster.max_failures=1",
)


def _train(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.train", *args],
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **env},  # a new local Ray
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def test_two_workers_resume_after_a_failure_and_track_to_mlflow(tiny_shards, tmp_path, mlflow_server):
    from mlflow import MlflowClient

    storage = tmp_path / "runs"
    marker = tmp_path / "failed-once"
    tracking = ("tracking.enabled=true", f"tracking.tracking_uri={mlflow_server.uri}")
    tracked = _train(
        ["--data", tiny_shards, "--run-name", "tracked"] + tiny_args(storage, *OVERRIDES, *tracking),
        {FAIL_AT_STEP_ENV: "6", FAIL_MARKER_ENV: str(marker)},
    )
    output = tracked.stdout + tracked.stderr
    assert tracked.returncode == 0, output[-5000:]
    assert marker.exists(), "the injected failure did not happen"
    assert "test failure injected at step 6" in output and "resuming at step 4/12" in output
    assert f"checkpoint at step {STEPS} (2 worker(s) in sync)" in output  # parameters identical across ranks
    (summary,) = [line for line in tracked.stdout.splitlines() if line.startswith('{"run_dir"')]
    last = json.loads(summary)["last"]  # rank 0's last metrics, through the run folder
    assert last["frames_per_s_per_worker"] > 0 and math.isfinite(last["loss/mask_l1"])

    straight = _train(["--data", tiny_shards, "--run-name", "straight"] + tiny_args(storage, *OVERRIDES), {})
    assert straight.returncode == 0, (straight.stdout + straight.stderr)[-5000:]
    a = load_checkpoint(list_checkpoints(str(storage / "tracked"))[-1][1])
    b = load_checkpoint(list_checkpoints(str(storage / "straight"))[-1][1])
    assert a.step == b.step == STEPS and a.samples_seen == b.samples_seen == STEPS * 2 * 2
    for name, state in a.networks.items():
        assert all(torch.equal(state[k], b.networks[name][k]) for k in state), name

    # MLflow: one run with the config, losses, a preview grid, the clip and the final checkpoint, in S3.
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("head2head").experiment_id], "attributes.run_name = 'tracked'"
    )
    assert run.info.status == "FINISHED"
    assert run.data.params["networks.generator.base_channels"] == "8"
    assert run.data.params["cluster.num_workers"] == "2"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss/mask_l1")]
    assert steps[-1] == STEPS and len(set(steps)) == len(steps)  # the retried steps logged once each
    artifacts = {a.path for folder in ("previews", "videos", "checkpoints") for a in client.list_artifacts(
        run.info.run_id, folder)}  # fmt: skip
    assert {"videos/samples.mp4", f"checkpoints/step-{STEPS:08d}.pt"} <= artifacts
    assert any(p.startswith("previews/step-") for p in artifacts)
    local = client.download_artifacts(run.info.run_id, "videos/samples.mp4", str(tmp_path))
    with av.open(local) as video:
        assert video.streams.video[0].codec_context.name == "h264"
        assert sum(1 for _ in video.decode(video=0)) == 9
    s3 = boto3.client(
        "s3",
        endpoint_url=mlflow_server.s3_env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=mlflow_server.s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=mlflow_server.s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name=mlflow_server.s3_env["AWS_DEFAULT_REGION"],
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=mlflow_server.bucket).get("Contents", [])]
    assert any(k.endswith(f"checkpoints/step-{STEPS:08d}.pt") and run.info.run_id in k for k in keys)
