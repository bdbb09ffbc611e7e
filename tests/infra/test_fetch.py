"""infra.fetch against an HTTP server on loopback (127.0.0.1 only; no test reaches the internet)."""

from __future__ import annotations

import hashlib
import socket
import time

import pytest

from infra import fetch as fetch_module
from infra.fetch import Asset, ChecksumError, DownloadError, cache_root, fetch

PAYLOAD = bytes(range(256)) * 1000  # 256 000 bytes, several read chunks of the test server


def make_asset(url: str, payload: bytes = PAYLOAD, sha256: str | None = "auto", **kwargs) -> Asset:
    digest = hashlib.sha256(payload).hexdigest() if sha256 == "auto" else sha256
    return Asset(
        name="sample.bin",
        filename="sub/sample.bin",
        urls=(url,),
        sha256=digest,
        size_bytes=len(payload),
        **kwargs,
    )


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/sample.bin"


def test_download_then_cache_hit_without_network(server, tmp_path):
    server.files["/sample.bin"] = PAYLOAD
    asset = make_asset(server.base_url + "/sample.bin")
    lines = []
    path = fetch(asset, tmp_path, log=lines.append, progress=True)
    assert path == tmp_path / "sub" / "sample.bin"
    assert path.read_bytes() == PAYLOAD
    assert not path.with_name("sample.bin.part").exists()
    assert server.requests == [("/sample.bin", None)]
    assert any("saved" in line for line in lines)
    # Second call: the verified file is returned and the server sees no request.
    assert fetch(asset, tmp_path, log=lines.append) == path
    assert len(server.requests) == 1


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("HEAD2HEAD_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("HEAD2HEAD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "head2head"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(cache_root()).endswith(".cache/head2head")


def test_default_cache_dir_is_cache_root(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HEAD2HEAD_CACHE", str(tmp_path))
    server.files["/sample.bin"] = PAYLOAD
    path = fetch(make_asset(server.base_url + "/sample.bin"), log=lambda _: None)
    assert path == tmp_path / "sub" / "sample.bin"


def test_checksum_mismatch_deletes_the_file_and_names_both_checksums(server, tmp_path):
    server.files["/sample.bin"] = PAYLOAD
    wrong = "0" * 64
    asset = make_asset(server.base_url + "/sample.bin", sha256=wrong)
    with pytest.raises(ChecksumError) as info:
        fetch(asset, tmp_path, log=lambda _: None)
    message = str(info.value)
    assert "sample.bin" in message and asset.urls[0] in message
    assert wrong in message and hashlib.sha256(PAYLOAD).hexdigest() in message
    assert "deleted" in message and str(tmp_path / "sub" / "sample.bin") in message
    assert list((tmp_path / "sub").iterdir()) == []


def test_a_corrupted_cached_copy_is_fetched_again(server, tmp_path):
    server.files["/sample.bin"] = PAYLOAD
    asset = make_asset(server.base_url + "/sample.bin")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "sample.bin").write_bytes(b"x" * len(PAYLOAD))
    assert fetch(asset, tmp_path, log=lambda _: None).read_bytes() == PAYLOAD
    assert len(server.requests) == 1


def test_preseeded_part_file_is_resumed_with_a_range_request(server, tmp_path):
    server.files["/sample.bin"] = PAYLOAD
    half = len(PAYLOAD) // 2
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "sample.bin.part").write_bytes(PAYLOAD[:half])
    lines = []
    path = fetch(make_asset(server.base_url + "/sample.bin"), tmp_path, log=lines.append)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/sample.bin", f"bytes={half}-")]
    assert any("resuming" in line for line in lines)


def test_dropped_connection_leaves_a_part_that_the_next_call_resumes(server, tmp_path):
    server.files["/sample.bin"] = PAYLOAD
    half = len(PAYLOAD) // 2
    server.drop_after["/sample.bin"] = half
    asset = make_asset(server.base_url + "/sample.bin")
    with pytest.raises(DownloadError, match="closed after"):
        fetch(asset, tmp_path, log=lambda _: None, retries=0)
    assert (tmp_path / "sub" / "sample.bin.part").stat().st_size == half
    path = fetch(asset, tmp_path, log=lambda _: None, retries=0)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/sample.bin", None), ("/sample.bin", f"bytes={half}-")]


def test_dropped_connection_is_resumed_within_one_call(server, tmp_path):
    server.files["/sample.bin"] = PAYLOAD
    server.drop_after["/sample.bin"] = 1000
    path = fetch(make_asset(server.base_url + "/sample.bin"), tmp_path, log=lambda _: None, backoff_s=0)
    assert path.read_bytes() == PAYLOAD
    assert server.requests == [("/sample.bin", None), ("/sample.bin", "bytes=1000-")]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.files["/sample.bin"] = PAYLOAD
    server.ignore_range = True
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "sample.bin.part").write_bytes(PAYLOAD[:1000])
    path = fetch(make_asset(server.base_url + "/sample.bin"), tmp_path, log=lambda _: None)
    assert path.read_bytes() == PAYLOAD  # not the first 1000 bytes twice
    assert server.requests == [("/sample.bin", "bytes=1000-")]


def test_complete_part_is_verified_without_a_request(server, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "sample.bin.part").write_bytes(PAYLOAD)
    assert fetch(make_asset(server.base_url + "/sample.bin"), tmp_path, log=lambda _: None).exists()
    assert server.requests == []


def test_http_error_falls_through_to_the_next_url(server, tmp_path):
    server.files["/mirror/sample.bin"] = PAYLOAD
    asset = make_asset(server.base_url + "/missing.bin")
    asset = Asset(**{**asset.__dict__, "urls": (asset.urls[0], server.base_url + "/mirror/sample.bin")})
    assert fetch(asset, tmp_path, log=lambda _: None).read_bytes() == PAYLOAD
    assert [path for path, _ in server.requests] == ["/missing.bin", "/mirror/sample.bin"]


def test_unreachable_server_fails_fast_with_instructions(tmp_path):
    url = closed_port_url()
    asset = make_asset(url, offline_hint="Or set $SOMETHING_ELSE.")
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch(asset, tmp_path, log=lambda _: None)
    assert time.monotonic() - start < 2.0  # no retries for a server that never answered
    message = str(info.value)
    assert url in message and "unreachable" in message
    assert f"put it at {tmp_path / 'sub' / 'sample.bin'}" in message
    assert asset.sha256 in message and "HEAD2HEAD_CACHE" in message and "$SOMETHING_ELSE" in message
    assert info.value.reasons and info.value.reasons[0].startswith(url)


def test_stalled_server_times_out_within_the_limit(tmp_path):
    with socket.socket() as listener:  # accepts connections (backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/sample.bin"
        start = time.monotonic()
        with pytest.raises(DownloadError, match="unreachable"):
            fetch(make_asset(url), tmp_path, log=lambda _: None, timeout_s=0.3)
        assert time.monotonic() - start < 2.0


def test_plain_progress_lines_without_a_terminal(server, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch_module, "PLAIN_PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(fetch_module, "CHUNK_BYTES", 64 * 1024)
    server.files["/sample.bin"] = PAYLOAD
    lines = []
    fetch(make_asset(server.base_url + "/sample.bin"), tmp_path, log=lines.append)
    progress = [line for line in lines if "%" in line]
    assert progress and progress[-1].endswith("(100%)")


def test_asset_rejects_bad_pins():
    with pytest.raises(ValueError, match="64 lowercase hex"):
        Asset(name="a", filename="a", urls=("http://127.0.0.1/a",), sha256="ABC")
    with pytest.raises(ValueError, match="relative"):
        Asset(name="a", filename="../a", urls=("http://127.0.0.1/a",), sha256=None)


def test_a_file_of_another_size_is_refused_before_it_is_read(server, tmp_path):
    server.files["/sample.bin"] = PAYLOAD + b"extra"
    with pytest.raises(DownloadError, match="offers 256005 bytes, the pinned file has 256000"):
        fetch(make_asset(server.base_url + "/sample.bin"), tmp_path, log=lambda _: None)


def test_progress_bar_on_a_terminal(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fetch_module.sys.stderr, "isatty", lambda: True, raising=False)
    server.files["/sample.bin"] = PAYLOAD
    lines = []
    fetch(make_asset(server.base_url + "/sample.bin"), tmp_path, log=lines.append)
    assert "sample.bin" in capsys.readouterr().err  # the tqdm bar, on stderr
    assert not any("%" in line for line in lines)
