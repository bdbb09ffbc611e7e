"""Shared fixtures: paths to ../shared data (tests needing it skip cleanly where it is absent)."""

from __future__ import annotations

from pathlib import Path

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
