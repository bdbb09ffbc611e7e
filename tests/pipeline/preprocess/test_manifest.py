from __future__ import annotations

import pytest

from pipeline.preprocess.manifest import discover_videos, video_id_for


def test_folder_discovery_sorts_filters_and_labels_by_stem(tmp_path):
    for name in ("b.mp4", "a.MOV", "notes.txt", "sub/c.mkv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    sources = discover_videos(str(tmp_path))
    assert [s.identity for s in sources] == ["a", "b", "c"]
    assert all(s.video_id.startswith(s.identity + "-") for s in sources)
    assert len({s.video_id for s in sources}) == 3


def test_same_stem_in_two_folders_gets_two_ids(tmp_path):
    assert video_id_for(str(tmp_path / "x" / "clip.mp4")) != video_id_for(str(tmp_path / "y" / "clip.mp4"))
    assert video_id_for("s3://bucket/a b/clip (1).mp4").split("-")[0] == "clip_1_"


def test_csv_manifest_with_relative_paths_and_identities(tmp_path):
    (tmp_path / "videos").mkdir()
    (tmp_path / "manifest.csv").write_text("path,identity\nvideos/one.mp4,alice\nvideos/two.mp4,\n")
    sources = discover_videos(str(tmp_path / "manifest.csv"))
    assert [(s.uri, s.identity) for s in sources] == [
        (str(tmp_path / "videos" / "one.mp4"), "alice"),
        (str(tmp_path / "videos" / "two.mp4"), "two"),
    ]


def test_empty_input_and_bad_manifest_name_the_input(tmp_path):
    with pytest.raises(ValueError, match=r"--input .*: no videos found \(looked for \.mp4"):
        discover_videos(str(tmp_path))
    (tmp_path / "m.csv").write_text("file\nx.mp4\n")
    with pytest.raises(ValueError, match="'path' column"):
        discover_videos(str(tmp_path / "m.csv"))
    (tmp_path / "dup.csv").write_text("path\nx.mp4\nx.mp4\n")
    with pytest.raises(ValueError, match="listed twice"):
        discover_videos(str(tmp_path / "dup.csv"))


def test_s3_prefix_discovery(s3_env):
    from infra import storage

    storage.write_bytes(f"{s3_env}/corpus/p1.mp4", b"x")
    storage.write_bytes(f"{s3_env}/corpus/readme.md", b"x")
    sources = discover_videos(f"{s3_env}/corpus")
    assert [s.uri for s in sources] == [f"{s3_env}/corpus/p1.mp4"]
