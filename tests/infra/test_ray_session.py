"""A job's Ray session: a private local Ray unless told to join one, and nothing left running after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.ray_session import ray_session

pytestmark = pytest.mark.slow


def test_a_stale_cluster_file_is_ignored_and_the_session_is_shut_down(monkeypatch):
    import ray

    # What a crashed `ray start --head` leaves: Ray's default ray.init() would try to join this address.
    current = Path("/tmp/ray/ray_current_cluster")
    saved = current.read_text() if current.exists() else None
    current.parent.mkdir(parents=True, exist_ok=True)
    current.write_text("127.0.0.1:1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        with ray_session(None, num_cpus=3) as session:
            assert session.cluster_resources()["CPU"] == 3
            with ray_session(None, num_cpus=5):  # a caller's own Ray is kept, not replaced
                assert ray.cluster_resources()["CPU"] == 3
            assert ray.is_initialized()
        assert not ray.is_initialized()
    finally:
        ray.shutdown()
        if saved is None:
            current.unlink(missing_ok=True)
        else:
            current.write_text(saved)
