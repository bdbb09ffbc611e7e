from __future__ import annotations

import dataclasses
import inspect
import os
import time

import numpy as np
import pytest

from infra import tracking
from infra.tracking import NullTracker, Tracker, TrackingConfig
from tests.conftest import free_port

SECRET = "hunter2-secret-value"


@dataclasses.dataclass(frozen=True)
class _Optim:
    lr_g: float = 2e-4
    betas: tuple = (0.5, 0.999)


def _params() -> dict:
    """A config as a job logs it: nested, with a URI holding inline credentials and a secret-named key."""
    return {
        "data": {"uri": f"s3://AKIAKEY:{SECRET}@bucket/shards", "frames": 9},
        "optim": _Optim(),
        "storage": {"aws_secret_access_key": SECRET, "auth_token": SECRET},
        "num_tokens": 5,
        "note": "x" * 7000,
    }


class _Lines(list):
    def __call__(self, line: str) -> None:
        self.append(line)


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.delenv(key, raising=False)


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


# -- pure helpers ----------------------------------------------------------------------------------


def test_flatten_redact_and_secret_keys():
    flat = tracking.flatten(_params())
    assert flat["data.frames"] == 9 and flat["optim.lr_g"] == 2e-4 and flat["optim.betas"] == (0.5, 0.999)
    assert (
        tracking.redact_text(f"copy s3://k:{SECRET}@b/x to http://u:p@h:1/y")
        == "copy s3://***@b/x to http://***@h:1/y"
    )
    assert [k for k in flat if tracking.is_secret_key(k)] == [
        "storage.aws_secret_access_key",
        "storage.auth_token",
    ]
    assert not any(tracking.is_secret_key(k) for k in ("num_tokens", "tokenizer", "lr_g", "author"))
    assert tracking.flatten(_Optim()) == {"lr_g": 2e-4, "betas": (0.5, 0.999)}
    assert tracking.local_store_uri("/tmp/run") == "sqlite:////tmp/run/mlflow.db"
    with pytest.raises(ValueError, match="local folder"):
        tracking.local_store_uri("s3://bucket/run")


def test_http_limits_are_set_only_during_a_call_and_a_user_value_wins(monkeypatch):
    with tracking._http_limits(3, 1):
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    with tracking._http_limits(3, 1):
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"


def test_null_tracker_has_the_tracker_api():
    public = {n for n in dir(Tracker) if not n.startswith("_")} - {"config"}
    assert public <= set(dir(NullTracker))
    for name in public:
        member = getattr(Tracker, name)
        if callable(member):
            assert inspect.signature(member) == inspect.signature(getattr(NullTracker, name)), name
    with NullTracker() as null:
        null.log_params({"a": 1})
        null.log_metrics({"loss": 1.0}, step=0)
        null.end("FAILED")
    assert null.run_id is None and not null.active


def test_disabled_or_uri_less_tracking_does_nothing():
    lines = _Lines()
    off = Tracker(TrackingConfig(enabled=False), "run", default_uri="sqlite:////nonexistent/x.db", log=lines)
    assert off.run_id is None and not off.active and lines == []
    none = Tracker(TrackingConfig(), "run", log=lines)
    none.log_metrics({"loss": 1.0}, step=0)
    assert none.run_id is None and len(lines) == 1 and "no tracking URI" in lines[0]


# -- failure semantics -----------------------------------------------------------------------------


def test_an_unreachable_server_costs_seconds_and_one_line(tmp_path):
    import mlflow  # noqa: F401 - imported first, so the timing below is the connection attempts only

    lines = _Lines()
    uri = f"http://user:{SECRET}@127.0.0.1:{free_port()}"
    start = time.monotonic()
    tracker = Tracker(TrackingConfig(tracking_uri=uri), "run", log=lines)
    tracker.log_params({"a": 1})
    tracker.log_metrics({"loss": 0.5}, step=1)
    (tmp_path / "f.txt").write_text("x")
    tracker.log_artifact(str(tmp_path / "f.txt"))
    tracker.log_image(np.zeros((4, 4, 3), np.uint8), "previews/a.png")
    tracker.set_tags({"stage": "x"})
    tracker.end("FINISHED")
    elapsed = time.monotonic() - start
    assert elapsed < 8, elapsed  # MLflow's own defaults retry for minutes
    assert tracker.run_id is None and not tracker.active
    assert len(lines) == 1, lines
    assert "unreachable" in lines[0] and "training continues without tracking" in lines[0]
    assert "127.0.0.1" in lines[0] and SECRET not in lines[0]


def test_bad_arguments_are_the_callers_bug_and_raise():
    with pytest.raises(ValueError, match="quotes"):
        Tracker(TrackingConfig(enabled=False), "run", resume_key="it's")
    with pytest.raises(ValueError, match="status"):
        Tracker(TrackingConfig(enabled=False), "run").end("DONE")


# -- the embedded store (no server) ----------------------------------------------------------------


def test_the_embedded_sqlite_store_keeps_runs_and_artifacts_under_the_output_folder(tmp_path):
    lines = _Lines()
    default = tracking.local_store_uri(str(tmp_path / "out"))
    with Tracker(TrackingConfig(), "local-run", default_uri=default, log=lines) as tracker:
        tracker.log_params(_params())
        for step in range(3):
            tracker.log_metrics({"loss": {"G": 1.0 / (step + 1)}}, step=step)
        tracker.log_image(np.full((8, 12, 3), 200, np.uint8), "previews/step0.png")
    client = _client(default)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "local-run"
    assert [m.step for m in client.get_metric_history(tracker.run_id, "loss.G")] == [0, 1, 2]
    # Reports read a run back by its name (the learning study plots its training curve so).
    [found] = tracking.find_runs(TrackingConfig(), "mlflow.runName", "local-run", default_uri=default)
    history = tracking.metric_history(TrackingConfig(), found, "loss.G", default_uri=default)
    assert history == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert tracking.metric_history(TrackingConfig(), found, "absent", default_uri=default) == []
    assert (tmp_path / "out" / "mlflow.db").is_file()
    pngs = list((tmp_path / "out" / "mlartifacts").rglob("step0.png"))
    assert len(pngs) == 1
    assert all(SECRET not in line for line in lines)


# -- a real tracking server with artifacts in S3 ----------------------------------------------------


def _s3_keys(server) -> list[str]:
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=server.s3_env["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=server.s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=server.s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name=server.s3_env["AWS_DEFAULT_REGION"],
    )
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=server.bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


@pytest.mark.slow
def test_a_run_on_a_tracking_server_with_artifacts_in_s3(mlflow_server, tmp_path):
    import av

    from pipeline import media
    from pipeline.schema import decode_image

    lines = _Lines()
    config = TrackingConfig(tracking_uri=mlflow_server.uri, experiment="server-test")
    frames = np.stack([np.full((16, 16, 3), 20 * t, np.uint8) for t in range(10)])
    clip = media.write_mp4(str(tmp_path / "sample.mp4"), frames, 10)
    image = np.zeros((8, 12, 3), np.uint8)
    image[:, :6] = (255, 0, 0)
    tags = {"source": f"s3://AKIAKEY:{SECRET}@bucket/x", "api_key": SECRET}
    with Tracker(config, "server-run", tags=tags, log=lines) as tracker:
        tracker.log_params(_params())
        for step in (0, 10, 20):
            tracker.log_metrics({"loss/G": 1.0 / (step + 1), "frames_per_s": 100.0 + step}, step=step)
        tracker.log_image(image, "previews/step20.png")
        tracker.log_artifact(clip, "videos")
        tracker.log_text("lr: 0.0002\n", "config.yaml")
        run_id = tracker.run_id
    assert run_id is not None and lines == [
        "MLflow: not logging secret-looking tags ['api_key']",
        "MLflow: not logging secret-looking params ['storage.auth_token', 'storage.aws_secret_access_key']",
    ]

    client = _client(mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["data.uri"] == "s3://***@bucket/shards" and params["data.frames"] == "9"
    assert params["optim.betas"] == "(0.5, 0.999)" and params["num_tokens"] == "5"
    assert len(params["note"]) == tracking.MAX_PARAM_VALUE_CHARS and params["note"].endswith("...")
    assert "storage.aws_secret_access_key" not in params and "storage.auth_token" not in params
    everything = repr(params) + repr(run.data.tags) + "".join(lines)
    assert SECRET not in everything and "AKIAKEY" not in everything
    assert run.data.tags["source"] == "s3://***@bucket/x"
    history = client.get_metric_history(run_id, "loss/G")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (10, 1 / 11), (20, 1 / 21)]

    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert artifacts == {"previews", "videos", "config.yaml"}
    png = client.download_artifacts(run_id, "previews/step20.png", str(tmp_path))
    with open(png, "rb") as f:
        np.testing.assert_array_equal(decode_image(f.read()), image)
    mp4 = client.download_artifacts(run_id, "videos/sample.mp4", str(tmp_path / "down"))
    container = av.open(mp4)
    assert container.streams.video[0].codec_context.name == "h264"
    assert sum(1 for _ in container.decode(video=0)) == 10

    keys = _s3_keys(mlflow_server)
    for name in ("previews/step20.png", "videos/sample.mp4", "config.yaml"):
        assert any(k.startswith("mlartifacts/") and k.endswith(f"{run_id}/artifacts/{name}") for k in keys), (
            name
        )


@pytest.mark.slow
def test_child_runs_resume_find_and_delete(mlflow_server, tmp_path):
    config = TrackingConfig(tracking_uri=mlflow_server.uri, experiment="resume-test")
    client = _client(mlflow_server.uri)
    lines = _Lines()

    # A child run under a parent made by another tracker (another process, in fine-tuning).
    with (
        Tracker(config, "parent", log=lines) as parent,
        Tracker(config, "child", parent_run_id=parent.run_id, log=lines) as child,
    ):
        child.log_metrics({"loss": 1.0}, step=0)
    assert client.get_run(child.run_id).data.tags[tracking.PARENT_TAG] == parent.run_id

    # A resumed job logs into the same run: metrics appended, a changed param kept at its first value.
    first = Tracker(config, "train", resume_key="job-42", log=lines)
    first.log_params({"lr": 1e-3, "steps": 100})
    first.log_metrics({"loss": 2.0}, step=0)
    (tmp_path / "ckpt.pt").write_bytes(b"weights")
    first.log_artifact(str(tmp_path / "ckpt.pt"), "checkpoints")
    first.end("KILLED")
    assert not first.resumed
    second = Tracker(config, "train", resume_key="job-42", log=lines)
    assert second.resumed and second.run_id == first.run_id
    assert client.get_run(second.run_id).info.status == "RUNNING"
    second.log_params({"lr": 1e-3, "steps": 200, "new": "yes"})
    second.log_metrics({"loss": 1.0}, step=1)
    second.end()
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"lr": "0.001", "steps": "100", "new": "yes"}
    assert [m.step for m in client.get_metric_history(first.run_id, "loss")] == [0, 1]
    assert lines == ["MLflow: params ['steps'] differ from the run's first values; keeping the first"]
    other = Tracker(config, "train", resume_key="job-43", log=lines)
    assert other.run_id != first.run_id and not other.resumed
    other.end()

    # Fine-tuning reruns find a run by tag and delete it with its artifacts.
    assert tracking.find_runs(config, tracking.RESUME_TAG, "job-42") == [first.run_id]
    assert any(first.run_id in k for k in _s3_keys(mlflow_server))
    assert tracking.delete_run(config, first.run_id)
    assert tracking.find_runs(config, tracking.RESUME_TAG, "job-42") == []
    assert not any(first.run_id in k for k in _s3_keys(mlflow_server))
    assert Tracker(config, "train", resume_key="job-42", log=lines).run_id != first.run_id  # a fresh run
