"""``python -m jobs.finetune`` end to end: a batch on Ray Tune tracked as one parent run with a child run per
person, an overnight batch killed midway and rerun, and raw videos to people's models in one command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import boto3
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from pipeline.finetune.person_model import IDENTITY_TAG, load_person_model, person_model_uri, read_status
from pipeline.train.checkpoint import list_checkpoints
from tests.pipeline.finetune.finetune_inputs import REPO, finetune_args, init_checkpoint

pytestmark = pytest.mark.slow
PEOPLE = ("dpe_d", "liveportrait_d3", "videoretalking_4")


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a new local Ray


def _finetune(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.finetune", *args],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def test_a_batch_on_ray_tune_with_a_parent_run_and_a_child_run_per_person(
    tiny_trained_run, new_people_shards, tmp_path, mlflow_server
):
    out = tmp_path / "ft"
    settings = (
        "batch.ray=true", "batch.concurrency=2", "budget.steps=10", "budget.eval_every=10",
        "tracking.enabled=true", f"tracking.tracking_uri={mlflow_server.uri}",
    )  # fmt: skip
    init = init_checkpoint(tiny_trained_run[0])
    inputs = ["--init", init, "--data", new_people_shards, "--identities", "all"]
    done = _finetune(inputs + finetune_args(out, *settings))
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    for person in PEOPLE:
        model = load_person_model(person_model_uri(str(out), person))  # found by the person's name
        assert model.identity == person and read_status(str(out), person).ok
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.get_experiment_by_name("head2head").experiment_id
    (parent,) = client.search_runs([experiment], "tags.job = 'finetune-batch'")
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.data.tags[IDENTITY_TAG] for r in children) == sorted(PEOPLE)
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"person/model.pt", "person/samples.png"} <= {
            a.path for a in client.list_artifacts(child.info.run_id, "person")
        }
        assert client.get_metric_history(child.info.run_id, "holdout_masked_l1")

    # Forget one person: nothing of them is left in the fine-tuning storage, the tracking server or S3.
    forgotten = next(c for c in children if c.data.tags[IDENTITY_TAG] == PEOPLE[0])
    gone = subprocess.run(
        [sys.executable, "-m", "jobs.forget", "--identity", PEOPLE[0], "--finetune", str(out),
         "--backend-store-uri", mlflow_server.backend_store_uri,
         "--set", f"tracking.tracking_uri={mlflow_server.uri}"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert [str(p) for p in out.rglob("*") if PEOPLE[0] in str(p)] == []
    assert PEOPLE[0] not in (out / "finetune.csv").read_text()
    everywhere = client.search_runs([experiment], run_view_type=ViewType.ALL)
    assert forgotten.info.run_id not in {r.info.run_id for r in everywhere}
    assert all(r.data.tags.get(IDENTITY_TAG) != PEOPLE[0] for r in everywhere)
    s3 = boto3.client("s3", endpoint_url=mlflow_server.s3_env["AWS_ENDPOINT_URL_S3"], **_keys(mlflow_server))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=mlflow_server.bucket).get("Contents", [])]
    assert keys and not any(forgotten.info.run_id in k for k in keys)


def _keys(server) -> dict:
    return {
        "aws_access_key_id": server.s3_env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": server.s3_env["AWS_SECRET_ACCESS_KEY"],
        "region_name": server.s3_env["AWS_DEFAULT_REGION"],
    }


def test_an_overnight_batch_killed_midway_resumes(tiny_trained_run, new_people_shards, tmp_path):
    """One person at a time (no Ray): kill the driver once the first person is done and the second has a
    checkpoint; the rerun skips the first, resumes the second at its checkpoint and does the third."""
    out = tmp_path / "ft"
    args = ["--init", init_checkpoint(tiny_trained_run[0]), "--data", new_people_shards] + finetune_args(
        out, "budget.steps=30", "run.checkpoint_every=10", "budget.eval_every=30"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.finetune", *args], cwd=REPO, env=_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    first, second = out / "persons" / PEOPLE[0], str(out / "persons" / PEOPLE[1])
    deadline = time.monotonic() + 600
    while not ((first / "model.pt").exists() and list_checkpoints(second)):
        assert proc.poll() is None and time.monotonic() < deadline, "the batch ended or stalled too early"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    model_time = (first / "model.pt").stat().st_mtime_ns
    checkpoint_step = list_checkpoints(second)[-1][0]
    assert read_status(str(out), PEOPLE[1]) is None and checkpoint_step < 30  # interrupted mid-way

    rerun = _finetune(args)
    output = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, output[-5000:]
    assert "3 people: 2 to fine-tune, 1 done with the same settings" in output
    assert f"{PEOPLE[1]}: resuming at step {checkpoint_step}/30" in output
    assert (first / "model.pt").stat().st_mtime_ns == model_time  # not trained again
    assert all(read_status(str(out), p).ok and read_status(str(out), p).steps == 30 for p in PEOPLE)


def test_raw_videos_to_models_in_one_command(tiny_trained_run, shared_videos, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for clip in ("dpe_d", "videoretalking_4"):
        (videos / f"{clip}.mp4").symlink_to(shared_videos / f"{clip}.mp4")
    out = tmp_path / "ft"
    preprocess = [
        "preprocess.preprocess.decode.max_frames=60", "preprocess.preprocess.track.crop_size=128",
        "preprocess.preprocess.render.image_size=[128,128]", "preprocess.preprocess.render.mouth_box_px=36",
        "preprocess.preprocess.mask.key_frames=1", "preprocess.preprocess.track.detect_every=6",
    ]  # fmt: skip
    done = _finetune(
        ["--init", init_checkpoint(tiny_trained_run[0]), "--data", str(videos)]
        + finetune_args(out, "budget.steps=10", "budget.eval_every=10", *preprocess)
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert "holds videos: preprocessing them" in done.stdout
    for person in ("dpe_d", "videoretalking_4"):
        assert load_person_model(person_model_uri(str(out), person)).info["train_frames"] == 45
    assert (out / "shards" / "videos.parquet").exists()
