"""The demo's inputs: ../shared first, pinned downloads from a loopback mirror, one clear offline error."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest

from infra import assets, demo_assets
from infra.demo_assets import MissingInputsError, demo_inputs, fetch_ict_facekit, unpack_pinned
from infra.fetch import ChecksumError, sha256_file
from tests.conftest import ICT_PACKED, VIDEOS, require


def quiet(_line: str) -> None:
    pass


def closed_port_base() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def fake_shared(root: Path) -> Path:
    """A ../shared layout with placeholder files (demo_inputs only checks that they exist)."""
    (root / "3dmm").mkdir(parents=True)
    (root / "3dmm" / "ict_facekit_light.npz").write_bytes(b"model")
    (root / "data" / "videos").mkdir(parents=True)
    for name in assets.DEMO_CLIPS:
        (root / "data" / "videos" / f"{name}.mp4").write_bytes(b"video")
    return root


def serve_repo_file(server, file: assets.RepoFile, body: bytes) -> None:
    """Puts ``body`` where the mirror layout of ``infra.assets`` expects ``file``."""
    server.files[f"/{file.repo}/{file.commit}/{file.path}"] = body


def synthetic_ict(tmp_path: Path) -> tuple[list[assets.RepoFile], dict[str, bytes]]:
    """A tiny stand-in for the pinned ICT files: LICENSE and two FaceXModel files."""
    bodies = {
        "LICENSE": b"MIT licence text\n",
        "FaceXModel/generic_neutral_mesh.obj": b"v 0 0 0\n",
        "FaceXModel/vertex_indices.json": b"{}",
    }
    files = [
        assets.RepoFile(
            assets.ICT_REPO, assets.ICT_COMMIT, path, hashlib.sha256(body).hexdigest(), len(body), "MIT"
        )
        for path, body in bodies.items()
    ]
    return files, bodies


def zip_of(bodies: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path, body in bodies.items():
            zf.writestr(f"ICT-FaceKit-{assets.ICT_COMMIT}/{path}", body)
    return buffer.getvalue()


def stub_convert(monkeypatch) -> list[Path]:
    """Replaces the (torch, 400 MB) conversion: records its source and writes a placeholder model."""
    calls = []

    def convert(source, dest, fingerprint):
        calls.append(Path(source))
        assert (Path(source) / "generic_neutral_mesh.obj").exists()
        Path(dest).write_bytes(b"converted")
        return Path(dest)

    monkeypatch.setattr(demo_assets, "convert_ict_facekit", convert)
    return calls


def test_shared_copies_come_first_and_nothing_is_downloaded(tmp_path, monkeypatch):
    monkeypatch.delenv(demo_assets.MODEL_ENV, raising=False)
    shared = fake_shared(tmp_path / "shared")
    model, clips = demo_inputs(shared, True, cache_dir=tmp_path / "cache", base_url=closed_port_base())
    assert model == shared / "3dmm" / "ict_facekit_light.npz"
    assert clips == [shared / "data" / "videos" / f"{name}.mp4" for name in assets.DEMO_CLIPS]
    assert not (tmp_path / "cache").exists()


def test_given_inputs_and_model_variable_win(tmp_path, monkeypatch):
    own_model, own_clip = tmp_path / "mine.npz", tmp_path / "me.mp4"
    own_model.write_bytes(b"m")
    own_clip.write_bytes(b"v")
    monkeypatch.setenv(demo_assets.MODEL_ENV, str(own_model))
    shared = fake_shared(tmp_path / "shared")
    assert demo_inputs(shared, False, inputs=[own_clip]) == (own_model, [own_clip])
    monkeypatch.setenv(demo_assets.MODEL_ENV, str(tmp_path / "absent.npz"))
    with pytest.raises(MissingInputsError, match="absent.npz"):
        demo_inputs(shared, False)
    monkeypatch.delenv(demo_assets.MODEL_ENV)
    with pytest.raises(MissingInputsError, match="nope.mp4"):
        demo_inputs(shared, False, inputs=[tmp_path / "nope.mp4"])


def test_without_downloads_the_error_lists_every_url_and_destination(tmp_path, monkeypatch, server):
    monkeypatch.delenv(demo_assets.MODEL_ENV, raising=False)
    cache = tmp_path / "cache"
    with pytest.raises(MissingInputsError) as info:
        demo_inputs(tmp_path / "no-shared", False, cache_dir=cache, base_url=server.base_url)
    message = str(info.value)
    assert server.requests == []
    assert "downloading is switched off" in message
    assert assets.archive_url(assets.ICT_REPO, assets.ICT_COMMIT, server.base_url) in message
    assert str(cache / "ict_facekit_light.npz") in message and "$HEAD2HEAD_3DMM" in message
    for name in assets.DEMO_CLIPS:
        asset = assets.clip_asset(name, server.base_url)
        assert asset.urls[0] in message and asset.sha256 in message and str(cache / asset.filename) in message


def test_offline_fails_fast_with_one_message(tmp_path, monkeypatch):
    monkeypatch.delenv(demo_assets.MODEL_ENV, raising=False)
    with pytest.raises(MissingInputsError) as info:
        demo_inputs(None, True, cache_dir=tmp_path / "cache", base_url=closed_port_base(), log=quiet)
    message = str(info.value)
    assert "downloads failed" in message and "unreachable" in message
    assert message.count("put it at") == len(assets.DEMO_CLIPS) + 1  # the clips and the model
    assert "3D face model: " in message and all(f"clip {name}: " in message for name in assets.DEMO_CLIPS)


@pytest.mark.shared_data
def test_clips_download_from_a_mirror_and_verify(tmp_path, monkeypatch, server):
    require(VIDEOS)
    monkeypatch.delenv(demo_assets.MODEL_ENV, raising=False)
    for name in assets.DEMO_CLIPS:
        serve_repo_file(server, assets.CLIPS[name], (VIDEOS / f"{name}.mp4").read_bytes())
    model = tmp_path / "model.npz"
    model.write_bytes(b"m")
    args = dict(model_path=model, cache_dir=tmp_path / "cache", base_url=server.base_url, log=quiet)
    _, clips = demo_inputs(None, True, **args)
    assert [c.name for c in clips] == [f"{name}.mp4" for name in assets.DEMO_CLIPS]
    assert all(sha256_file(c) == assets.CLIPS[c.stem].sha256 for c in clips)
    assert demo_inputs(None, False, **args)[1] == clips  # cached: found without downloads
    assert len(server.requests) == len(assets.DEMO_CLIPS)


def test_ict_from_the_archive_then_cached(tmp_path, monkeypatch, server):
    files, bodies = synthetic_ict(tmp_path)
    server.files[f"/{assets.ICT_REPO}/archive/{assets.ICT_COMMIT}.zip"] = zip_of(bodies)
    calls = stub_convert(monkeypatch)
    model = fetch_ict_facekit(tmp_path, base_url=server.base_url, log=quiet, files=files)
    assert model == tmp_path / "ict_facekit_light.npz" and model.read_bytes() == b"converted"
    assert calls == [tmp_path / assets.ICT_FOLDER / "FaceXModel"]
    assert (tmp_path / "ICT-FaceKit-LICENSE").read_bytes() == bodies["LICENSE"]
    assert not (tmp_path / assets.ICT_FOLDER).exists()  # the OBJs and the archive are removed
    assert not (tmp_path / f"{assets.ICT_FOLDER}.zip").exists()
    assert fetch_ict_facekit(tmp_path, base_url=server.base_url, log=quiet, files=files) == model
    assert len(server.requests) == 1 and len(calls) == 1


def test_ict_falls_back_to_single_files_when_the_archive_differs(tmp_path, monkeypatch, server):
    files, bodies = synthetic_ict(tmp_path)
    tampered = {**bodies, "FaceXModel/vertex_indices.json": b'{"changed": 1}'}
    server.files[f"/{assets.ICT_REPO}/archive/{assets.ICT_COMMIT}.zip"] = zip_of(tampered)
    for file in files:
        serve_repo_file(server, file, bodies[file.path])
    lines = []
    stub_convert(monkeypatch)
    fetch_ict_facekit(tmp_path, base_url=server.base_url, log=lines.append, files=files)
    assert any("vertex_indices.json" in line and "one by one" in line for line in lines)
    # The members unpacked before the bad one passed their checks and are kept: only it is fetched.
    tampered_url = f"/{assets.ICT_REPO}/{assets.ICT_COMMIT}/FaceXModel/vertex_indices.json"
    assert [path for path, _ in server.requests][1:] == [tampered_url]


def test_ict_failure_says_how_to_provide_the_model(tmp_path, monkeypatch):
    files, _ = synthetic_ict(tmp_path)
    stub_convert(monkeypatch)
    with pytest.raises(demo_assets.FetchError) as info:
        fetch_ict_facekit(tmp_path, base_url=closed_port_base(), log=quiet, files=files)
    message = str(info.value)
    assert "archive: " in message and "files: " in message and "convert_3dmm" in message
    assert str(tmp_path / "ict_facekit_light.npz") in message


def test_unpack_names_a_missing_member_and_a_broken_zip(tmp_path):
    files, bodies = synthetic_ict(tmp_path)
    archive = tmp_path / "a.zip"
    archive.write_bytes(zip_of({"LICENSE": bodies["LICENSE"]}))
    with pytest.raises(ChecksumError, match="has no FaceXModel/generic_neutral_mesh.obj"):
        unpack_pinned(archive, tmp_path / "out", files)
    archive.write_bytes(b"not a zip")
    with pytest.raises(ChecksumError, match="not a readable zip"):
        unpack_pinned(archive, tmp_path / "out", files)


def test_ict_pins_agree_with_the_shared_packed_model():
    """The pinned vertex_indices.json and expression OBJs are the ones the shared copy was packed from."""
    with np.load(require(ICT_PACKED)) as data:
        json_text = str(data["vertex_indices_json"])
        expressions = [str(n) for n in data["expression_names"]]
    pinned = {f.path: f for f in assets.ICT_FILES}
    assert len(pinned) == len(assets.ICT_FILES) == 3 + 100 + 53
    assert hashlib.sha256(json_text.encode()).hexdigest() == pinned["FaceXModel/vertex_indices.json"].sha256
    assert expressions == json.loads(json_text)["expressions"]
    assert all(f"FaceXModel/{name}.obj" in pinned for name in expressions)
    assert all(f"FaceXModel/identity{k:03d}.obj" in pinned for k in range(100))
    license_file = ICT_PACKED.parent / "ICT-FaceKit-LICENSE"
    assert sha256_file(license_file) == pinned["LICENSE"].sha256


@pytest.mark.shared_data
def test_clip_pins_are_the_shared_clips():
    for name, file in assets.CLIPS.items():
        clip = require(VIDEOS / f"{name}.mp4")
        assert (clip.stat().st_size, sha256_file(clip)) == (file.size_bytes, file.sha256), name


@pytest.mark.shared_data
def test_conversion_reproduces_the_pinned_model(tmp_path):
    """The converter's output reloads to ICT_MODEL_FINGERPRINT (the OBJ import equals the packed file
    bitwise); another fingerprint leaves no file behind."""
    from model.face3d.loader import load_morphable_model

    source = require(ICT_PACKED)
    dest = tmp_path / "ict_facekit_light.npz"
    with pytest.raises(ChecksumError, match="expected fingerprint 0000"):
        demo_assets.convert_ict_facekit(source, dest, fingerprint="0" * 64)
    assert list(tmp_path.iterdir()) == []
    assert demo_assets.convert_ict_facekit(source, dest) == dest
    assert demo_assets.model_fingerprint(load_morphable_model(dest)) == assets.ICT_MODEL_FINGERPRINT
