"""Many (source, target) pairs as Ray tasks through ``jobs.reenact --pairs``: the good pairs are written,
a broken source and a missing person are recorded with their reasons, and the results table lists all."""

from __future__ import annotations

import csv
import json

import decord
import pytest

from jobs import reenact as reenact_job
from pipeline.reenact.ray_reenact import read_pairs

pytestmark = pytest.mark.slow


def test_pairs_run_as_ray_tasks_and_failures_are_recorded(tiny_person, shared_videos, tmp_path, capsys):

    people, person, _ = tiny_person
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(
        "source,target,out\n"
        f"{shared_videos / 'dpe_d.mp4'},{person},\n"
        f"{shared_videos / 'sadtalker_WDA_KatieHill_000.mp4'},{person},katie.mp4\n"
        f"{broken},{person},\n"
        f"{shared_videos / 'dpe_d.mp4'},nobody,\n"
    )
    out = tmp_path / "out"
    overrides = ["--set", "source.decode.max_frames=12", "--set", "output_px=64"]
    code = reenact_job.main(["--pairs", str(pairs), "--people", people, "--out", str(out), *overrides])
    assert code == 1  # some pairs failed
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"pairs": 4, "ok": 2, "failed": 2}
    rows = list(csv.DictReader((out / "reenact.csv").open()))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed"]  # in the file's order
    assert rows[2]["reason"] == "unreadable" and "broken.mp4" in rows[2]["message"]
    assert rows[3]["reason"] == "bad_input" and rows[3]["target"] == "nobody"
    for name in (f"{person}__dpe_d.mp4", "katie.mp4"):
        assert len(decord.VideoReader(str(out / name))) == 12
    assert int(rows[0]["frames"]) == 12 and float(rows[0]["synthesis_frames_per_s"]) > 0


def test_pairs_file_errors_name_the_file(tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("video,person\na.mp4,alice\n")
    with pytest.raises(ValueError, match="pairs.csv: needs a header with the columns source,target"):
        read_pairs(str(pairs), "people", "out")
    pairs.write_text("source,target\nclips/a.mp4,alice\nother/a.mp4,alice\n")
    with pytest.raises(ValueError, match="several pairs write .*alice__a.mp4; add an out column"):
        read_pairs(str(pairs), "people", "out")
    pairs.write_text("source,target,out\nclips/a.mp4,alice,\ns3://b/x.mp4,/m/bob.pt,s3://o/y.mp4\n")
    first, second = read_pairs(str(pairs), "people", "out")
    assert first["out"].endswith("out/alice__a.mp4") and first["person"].endswith(".pt")
    assert second == {"source": "s3://b/x.mp4", "target": "/m/bob.pt", "person": "/m/bob.pt", "out": "s3://o/y.mp4"}
