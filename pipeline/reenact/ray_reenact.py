"""Many reenactments on Ray: one task per (source, target) pair of a CSV.

The pairs file has the columns ``source`` (a video URI) and ``target`` (a person's name under the people
folder, or a person model URI), and optionally ``out`` (a file name under the output folder, or a URI;
by default ``<target>__<source stem>.mp4``). Each pair is a Ray task with ``pairs.cpus_per_pair`` CPUs
and ``pairs.gpus_per_pair`` GPUs; Ray queues the rest. A pair that fails (no usable face in the source, a
missing person model) is recorded with its reason and the others go on. ``reenact.csv`` in the output
folder lists every pair: status, reason, message, frames, synthesis frames/s, the output's identity
similarity to the person and to the source, seconds, output.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import PurePosixPath

from infra import storage
from infra.ray_session import ray_session
from pipeline.errors import VideoRejected
from pipeline.finetune.person_model import person_model_uri
from pipeline.reenact.reenact import ReenactConfig, reenact

RESULT_COLUMNS = ("source", "target", "out", "status", "reason", "message", "frames",
                  "synthesis_frames_per_s", "identity_cosine_to_target", "identity_cosine_to_source",
                  "identity_estimator", "total_s")  # fmt: skip


def read_pairs(pairs_uri: str, people: str, out_dir: str) -> list[dict[str, str]]:
    """The pairs of a CSV as rows {source, target, person (model URI), out (URI)}; raises ValueError
    naming the file when a column is missing or two pairs would write the same output."""
    rows = list(csv.DictReader(io.StringIO(storage.read_text(pairs_uri))))
    name = storage.redact(pairs_uri)
    if not rows or not {"source", "target"} <= set(rows[0]):
        raise ValueError(f"--pairs {name}: needs a header with the columns source,target[,out] and a row")
    pairs = []
    for row in rows:
        source, target = row["source"].strip(), row["target"].strip()
        person = target if target.endswith(".pt") else person_model_uri(people, target)
        stem = PurePosixPath(source.rstrip("/")).stem
        out = (row.get("out") or "").strip() or f"{PurePosixPath(target).stem}__{stem}.mp4"
        out = out if "://" in out or out.startswith("/") else storage.join(out_dir, out)
        pairs.append({"source": source, "target": target, "person": person, "out": out})
    outs = [p["out"] for p in pairs]
    if len(set(outs)) != len(outs):
        twice = sorted({o for o in outs if outs.count(o) > 1})
        raise ValueError(f"--pairs {name}: several pairs write {storage.redact(twice[0])}; add an out column")
    return pairs


def reenact_pair(pair: dict[str, str], cfg: ReenactConfig, threads: int = 0) -> dict:
    """One pair (what a Ray task runs): its result row; data problems become a failed row."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if cfg.pairs.gpus_per_pair > 0 and torch.cuda.is_available() else "cpu"
    row = {"source": pair["source"], "target": pair["target"], "out": storage.redact(pair["out"])}
    try:
        summary = reenact(pair["source"], pair["person"], pair["out"], cfg, device, log=lambda m: None)
    except VideoRejected as err:
        return {**row, "status": "failed", "reason": err.reason, "message": str(err)}
    except (ValueError, FileNotFoundError) as err:
        return {**row, "status": "failed", "reason": "bad_input", "message": str(err)}
    return {**row, "status": "ok", "reason": "", "message": "", **summary, "out": row["out"]}


def reenact_pairs(
    pairs_uri: str, people: str, out_dir: str, cfg: ReenactConfig, log: Callable[[str], None] = print
) -> list[dict]:
    """Runs every pair of ``pairs_uri`` as a Ray task; writes and returns the result rows (in file order)."""
    pairs = read_pairs(pairs_uri, people, out_dir)
    with ray_session(cfg.pairs.address, min_cpus=cfg.pairs.cpus_per_pair) as ray:
        task = ray.remote(num_cpus=cfg.pairs.cpus_per_pair, num_gpus=cfg.pairs.gpus_per_pair)(reenact_pair)
        threads = max(1, int(cfg.pairs.cpus_per_pair))
        pending = {task.remote(pair, cfg, threads): k for k, pair in enumerate(pairs)}
        rows: list[dict | None] = [None] * len(pairs)
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            k = pending.pop(done)
            try:
                rows[k] = ray.get(done)
            except Exception as err:  # the task itself crashed (out of memory, a bug): that pair failed
                pair = pairs[k]
                rows[k] = {"source": pair["source"], "target": pair["target"],
                           "out": storage.redact(pair["out"]), "status": "failed", "reason": "error",
                           "message": str(err).splitlines()[-1]}  # fmt: skip
            row = rows[k]
            outcome = f" ({row['reason']}: {row['message']})" if row["status"] != "ok" else ""
            log(f"[{len(pairs) - len(pending)}/{len(pairs)}] {row['target']} <- {row['source']}: "
                f"{row['status']}{outcome}")  # fmt: skip
    table = io.StringIO()
    writer = csv.DictWriter(table, RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text(storage.join(out_dir, "reenact.csv"), table.getvalue())
    return rows
