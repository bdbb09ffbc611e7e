"""End-to-end tests of the preprocessing job on real clips with bad inputs mixed in.

Each run is a real ``python -m jobs.preprocess`` (its own in-process Ray), a real ``ray start --head`` +
``ray job submit``, or a multi-node ``ray.cluster_utils.Cluster`` losing a node mid-run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline import schema
from pipeline.preprocess.masks import landmark_face_masks
from tests.jobs.preprocess_inputs import GOOD_CLIPS, make_inputs

REPO = Path(__file__).resolve().parents[2]
FRAMES = 30
# Small and fast settings for tests: sparse detection, two mask key frames.
FAST = ["--set", "preprocess.mask.key_frames=2", "--set", "ray.num_cpus=4"]

pytestmark = pytest.mark.slow


def check_shards(table, expected_videos: int) -> None:
    """Counts, shapes and consistency of frame rows read back with plain pyarrow."""
    frame = table.to_pandas()
    assert frame["video_id"].nunique() == expected_videos
    assert frame.groupby("video_id").size().tolist() == [FRAMES] * expected_videos
    assert not frame.duplicated(["video_id", "frame_index"]).any()
    for _, row in frame.groupby("video_id").head(3).iterrows():
        rgb = schema.decode_image(row["rgb"])
        nmfc = schema.decode_image(row["nmfc"])
        mask = schema.decode_image(row["mask"])
        size = rgb.shape[0]
        assert rgb.shape == nmfc.shape == (size, size, 3) and mask.shape == (size, size)
        assert schema.decode_flow(row["flow"], size).shape == (size, size, 2)
        landmarks = np.asarray(row["landmarks_px"]).reshape(68, 2)
        assert np.all((landmarks > -0.5) & (landmarks < size - 0.5))  # inside the crop
        # The NMFC covers the face: nearly all of the face inside the landmarks is painted.
        face = landmark_face_masks(landmarks[None], size)[0]
        assert (nmfc[face].max(axis=1) > 0).mean() > 0.95
        assert (mask[face] == 255).all()  # the face is foreground
        assert len(row["expression"]) == 53 and len(row["camera"]) == 7


def run_job(args: list[str], env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.preprocess", *args, *FAST],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_local_run_records_bad_inputs_keeps_good_ones_and_reruns_idempotently(
    tmp_path, shared_videos, shared_images
):
    expected = make_inputs(tmp_path / "in", shared_videos, shared_images, frames=FRAMES)
    out = tmp_path / "out"
    first = run_job(["--input", str(tmp_path / "in"), "--output", str(out)])
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    summary = json.loads((out / schema.SUMMARY).read_text())
    assert summary["videos"] == 7 and summary["videos_ok"] == 3 and summary["processed_this_run"] == 7
    videos = pq.read_table(out / schema.VIDEOS_TABLE).to_pandas()
    outcome = {row.video_id.rsplit("-", 1)[0]: row.reason or row.status for row in videos.itertuples()}
    assert outcome == expected
    assert all(videos.loc[videos.status == "failed", "message"].str.len() > 10)
    check_shards(pq.read_table(out / schema.SHARDS_DIR), expected_videos=3)
    assert len(list((out / schema.CONTACT_SHEETS_DIR).glob("*.png"))) == 3
    assert (out / schema.CONFIG).exists()

    shard_times = {p.name: p.stat().st_mtime_ns for p in (out / schema.SHARDS_DIR).iterdir()}
    second = run_job(["--input", str(tmp_path / "in"), "--output", str(out)])
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((out / schema.SUMMARY).read_text())
    assert again["processed_this_run"] == 0 and again["skipped_this_run"] == 7
    assert {p.name: p.stat().st_mtime_ns for p in (out / schema.SHARDS_DIR).iterdir()} == shard_times
    check_shards(pq.read_table(out / schema.SHARDS_DIR), expected_videos=3)


def test_ray_job_submit_to_a_local_cluster_with_s3_input_and_output(
    tmp_path, s3_server, shared_videos, shared_images
):
    """Also the one end-to-end run of the ``split`` stage layout (the other tests run ``fused``)."""
    import boto3
    import s3fs

    make_inputs(tmp_path / "in", shared_videos, shared_images, frames=FRAMES, bad=False)
    s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL_S3"], **_keys(s3_server))
    s3.create_bucket(Bucket="corpus")
    for clip in GOOD_CLIPS:
        s3.upload_file(str(tmp_path / "in" / f"{clip}.mp4"), "corpus", f"videos/{clip}.mp4")

    env = {
        **os.environ,
        **s3_server,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": os.urandom(16).hex(),
    }
    dashboard = str(_free_port())
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Unix socket paths must stay under 108 bytes
    subprocess.run(
        ["ray", "start", "--head", "--num-cpus=4", "--port=0", f"--dashboard-port={dashboard}",
         "--include-dashboard=true", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, check=True, capture_output=True, timeout=180,
    )  # fmt: skip
    try:
        for _ in range(12):  # the head's job agent can come up after ``ray start`` returns: Ray says retry
            submitted = subprocess.run(
                ["ray", "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".",
                 "--runtime-env-json", json.dumps({"excludes": [".venv", ".git", "outputs"]}), "--",
                 "python", "-m", "jobs.preprocess", "--input", "s3://corpus/videos", "--output",
                 "s3://corpus/shards", "--set", f"preprocess.model.path={_model_path()}",
                 "--set", "preprocess.mask.key_frames=2", "--set", "ray.stages=split"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False,
            )  # fmt: skip
            if "No available agent to submit job" not in submitted.stdout + submitted.stderr:
                break
            time.sleep(5)
        assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-2000:]
        assert "succeeded" in submitted.stdout + submitted.stderr
    finally:
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(temp_dir, ignore_errors=True)

    fs = s3fs.S3FileSystem(
        client_kwargs={"endpoint_url": s3_server["AWS_ENDPOINT_URL_S3"]}, **_s3fs_keys(s3_server)
    )
    check_shards(pq.read_table("corpus/shards/shards", filesystem=fs), expected_videos=3)
    summary = json.loads(fs.cat("corpus/shards/summary.json"))
    assert summary["videos_ok"] == 3 and summary["frames"] == 3 * FRAMES
    assert len(fs.ls("corpus/shards/contact_sheets")) == 3
    config = fs.cat("corpus/shards/config.yaml").decode()
    assert s3_server["AWS_SECRET_ACCESS_KEY"] not in config


def test_worker_node_lost_mid_run_still_yields_every_video_exactly_once(
    tmp_path, shared_videos, shared_images
):
    import ray
    from ray.cluster_utils import Cluster

    from infra.config import load_config
    from pipeline.preprocess.ray_preprocess import PreprocessJobConfig, run_preprocess

    make_inputs(tmp_path / "in", shared_videos, shared_images, frames=FRAMES, bad=False)
    out = tmp_path / "out"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=4) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        cfg = load_config(PreprocessJobConfig, None, ["preprocess.mask.key_frames=2"])
        result: dict = {}
        runner = threading.Thread(
            target=lambda: result.update(run_preprocess(cfg, str(tmp_path / "in"), str(out)))
        )
        runner.start()
        # Remove a worker node as soon as the first video is written; the rest must be redone elsewhere.
        deadline = time.monotonic() + 600
        while (
            not list((out / schema.RECORDS_DIR).glob("*.json"))
            if (out / schema.RECORDS_DIR).exists()
            else True
        ):
            assert time.monotonic() < deadline and runner.is_alive(), "no video finished"
            time.sleep(0.2)
        cluster.remove_node(workers[0], allow_graceful=False)
        runner.join(timeout=900)
        assert not runner.is_alive()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert result["videos_ok"] == 3, result
    check_shards(pq.read_table(out / schema.SHARDS_DIR), expected_videos=3)
    assert len(list((out / schema.RECORDS_DIR).glob("*.json"))) == 3


def _keys(env: dict) -> dict:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
    }


def _s3fs_keys(env: dict) -> dict:
    return {"key": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"]}


def _free_port() -> int:
    from tests.conftest import free_port

    return free_port()


def _model_path() -> str:
    from tests.conftest import ICT_PACKED

    return str(ICT_PACKED)
