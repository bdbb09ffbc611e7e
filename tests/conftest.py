"""Shared fixtures: paths to ../shared data (tests needing it skip cleanly where it is absent)."""

from __future__ import annotations

from pathlib import Path

# OpenCV before any test module imports decord: decord's libraries bring their own zlib, and if they load
# first, OpenCV's PNG codec binds to it and fails to decode ("libpng error: bad parameters to zlib").
import cv2  # noqa: F401
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
ICT_PACKED = SHARED / "3dmm" / "ict_facekit_light.npz"
VIDEOS = SHARED / "data" / "videos"
IMAGES = SHARED / "data" / "images"


def require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present (../shared is laid beside the checkout in CI)")
    return path


@pytest.fixture(scope="session")
def ict_model():
    """The ICT Face Model Light loaded from the packed npz in ../shared."""
    from model.face3d.loader import load_morphable_model

    return load_morphable_model(require(ICT_PACKED))


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    return require(VIDEOS)


@pytest.fixture(scope="session")
def shared_images() -> Path:
    return require(IMAGES)


# The tiny shard set (``tiny_shards``): the first TINY_FRAMES frames of three shared clips of three people,
# preprocessed at TINY_CROP_PX; identity = the clip's name.
TINY_CLIPS = ("liveportrait_d0", "sadtalker_WDA_KatieHill_000", "videoretalking_5")
TINY_FRAMES = 48
TINY_CROP_PX = 128
TINY_MOUTH_BOX_PX = 36


def tiny_preprocess_overrides(frames: int = TINY_FRAMES) -> list[str]:
    """``--set`` overrides of the preprocessing job for the tiny shard sets (also used by benchmarks)."""
    return [
        f"preprocess.decode.max_frames={frames}",
        f"preprocess.track.crop_size={TINY_CROP_PX}",
        f"preprocess.render.image_size=[{TINY_CROP_PX},{TINY_CROP_PX}]",
        f"preprocess.render.mouth_box_px={TINY_MOUTH_BOX_PX}",
        "preprocess.mask.key_frames=1",
        "preprocess.track.detect_every=6",
    ]


def make_shard_set(folder: Path, model, videos: list[Path], frames: int) -> str:
    """Preprocesses the first ``frames`` frames of ``videos`` (identity = file stem) in this process with
    ``tiny_preprocess_overrides`` into ``folder/out``; asserts one ok unit of ``frames`` frames per video."""
    from infra.config import config_hash, load_config
    from pipeline.preprocess.chain import preprocess_in_process
    from pipeline.preprocess.ray_preprocess import PreprocessJobConfig

    manifest = folder / "manifest.csv"
    manifest.write_text("path,identity,note\n" + "".join(f"{v},{v.stem},shared test clip\n" for v in videos))
    cfg = load_config(PreprocessJobConfig, None, tiny_preprocess_overrides(frames)).preprocess
    out = str(folder / "out")
    records = preprocess_in_process(str(manifest), out, cfg, config_hash(cfg), model, log=lambda m: None)
    assert [(r.status, r.kept_frames) for r in records] == [("ok", frames)] * len(videos), records
    return out


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory, ict_model, shared_videos) -> str:
    """A real preprocessing output (shards, records, videos.parquet) made by the preprocessing chain in
    this process (no Ray): one ok unit of TINY_FRAMES frames per clip of TINY_CLIPS, crops of
    TINY_CROP_PX px, mouth boxes of TINY_MOUTH_BOX_PX px. Returns the output folder (a local path).
    Read-only: tests that damage it work on a copy."""
    videos = [require(shared_videos / f"{clip}.mp4") for clip in TINY_CLIPS]
    return make_shard_set(tmp_path_factory.mktemp("tiny_shards"), ict_model, videos, TINY_FRAMES)


# People the tiny run never saw, for fine-tuning (``new_people_shards``): NEW_PEOPLE_FRAMES frames each.
NEW_PEOPLE = ("dpe_d", "liveportrait_d3", "videoretalking_4")
NEW_PEOPLE_FRAMES = 60


@pytest.fixture(scope="session")
def new_people_shards(tmp_path_factory, ict_model, shared_videos) -> str:
    """Like ``tiny_shards`` for NEW_PEOPLE: the few-shot fine-tuning tests' new identities."""
    videos = [require(shared_videos / f"{clip}.mp4") for clip in NEW_PEOPLE]
    return make_shard_set(tmp_path_factory.mktemp("new_people"), ict_model, videos, NEW_PEOPLE_FRAMES)


# The tiny trained run (``tiny_trained_run``): tests/pipeline/train/train_inputs.py's 32 px config trained on
# ``tiny_shards`` for TINY_TRAIN_STEPS steps in this process; the fine-tuning, reenactment and demo tests
# start from it.
TINY_TRAIN_STEPS = 300


@pytest.fixture(scope="session")
def tiny_trained_run(tiny_shards, tmp_path_factory):
    """(run folder, TrainConfig) of a finished tiny training run; read-only for the tests."""
    from pipeline.train.loop import resolved_run_dir, train
    from tests.pipeline.train.train_inputs import tiny_config

    cfg = tiny_config(
        tmp_path_factory.mktemp("train"),
        f"run.steps={TINY_TRAIN_STEPS}",
        "run.log_every=50",
        f"run.checkpoint_every={TINY_TRAIN_STEPS}",
        f"run.preview_every={TINY_TRAIN_STEPS // 2}",
    )
    run_dir = resolved_run_dir(cfg, "tiny")
    train(cfg, tiny_shards, run_dir)
    return run_dir, cfg


# The tiny person (``tiny_person``): NEW_PEOPLE's TINY_PERSON fine-tuned from ``tiny_trained_run`` with
# tests/pipeline/finetune/finetune_inputs.py's settings, in this process.
TINY_PERSON = "liveportrait_d3"


@pytest.fixture(scope="session")
def tiny_person(tiny_trained_run, new_people_shards, tmp_path_factory):
    """(fine-tuning storage path, identity, status) of a person fine-tuned for the reenactment tests."""
    from pipeline.finetune.loop import finetune_person
    from tests.pipeline.finetune.finetune_inputs import finetune_config, init_checkpoint

    storage_path = str(tmp_path_factory.mktemp("people"))
    status = finetune_person(
        finetune_config(storage_path), init_checkpoint(tiny_trained_run[0]), new_people_shards, TINY_PERSON
    )
    assert status.ok, status
    return storage_path, TINY_PERSON, status


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API on localhost (moto server); yields the environment that points clients at it.

    The variables are the usual AWS ones plus the endpoint override, exactly as a user sets them for an
    S3-compatible store. Tests apply them with monkeypatch or pass them to subprocesses.
    """
    import subprocess
    import sys
    import time
    import urllib.request

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    env = {
        "AWS_ACCESS_KEY_ID": "testing-key-id",
        "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
    }
    yield env
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The moto S3 environment applied to this process, with a fresh bucket; yields the bucket URI."""
    import uuid

    import boto3

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL_S3"]).create_bucket(Bucket=bucket)
    # s3fs caches filesystem instances and listings; start each test from a clean one.
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield f"s3://{bucket}"


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory):
    """A real MLflow tracking server: SQLite backend, artifacts proxied into a bucket of the moto S3 server.

    Clients reach the artifacts through the server (``mlflow-artifacts:/`` URIs), so they need no S3
    credentials; the server gets the moto environment. Yields a namespace: ``uri`` (http://127.0.0.1:P),
    ``bucket`` (the bucket's name), ``s3_env`` (the moto environment, to list the bucket with boto3),
    ``backend_store_uri`` (its database, for ``mlflow gc``).
    """
    import os
    import signal
    import subprocess
    import sys
    import time
    import types
    import urllib.request
    import uuid

    import boto3

    folder = tmp_path_factory.mktemp("mlflow_server")
    bucket = f"mlflow-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3",
        endpoint_url=s3_server["AWS_ENDPOINT_URL_S3"],
        aws_access_key_id=s3_server["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_server["AWS_SECRET_ACCESS_KEY"],
        region_name=s3_server["AWS_DEFAULT_REGION"],
    ).create_bucket(Bucket=bucket)
    port = free_port()
    # No server-side job runner (LLM-judge jobs): one process fewer to start and stop.
    env = dict(
        os.environ,
        **s3_server,
        MLFLOW_S3_ENDPOINT_URL=s3_server["AWS_ENDPOINT_URL_S3"],
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = folder / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
             "--artifacts-destination", f"s3://{bucket}/mlartifacts", "--serve-artifacts",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
        )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120  # the first start creates the database schema (alembic migrations)
    while True:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=2)
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                raise RuntimeError(f"mlflow server did not start:\n{log_path.read_text()[-3000:]}") from None
            time.sleep(0.3)
    yield types.SimpleNamespace(
        uri=uri, bucket=bucket, s3_env=dict(s3_server), backend_store_uri=f"sqlite:///{folder}/mlflow.db"
    )
    # The CLI process runs uvicorn as a child: stop the session it leads (this server's processes only).
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
