"""A batch of people to fine-tune: which ones, raw videos turned into shards first, the overnight rules,
the parent MLflow run and the table at the end. Ray comes in through ``ray_finetune.py``.

Overnight rules: a rerun skips every person whose status is ``ok`` for the same fine-tuning hash (config,
init checkpoint, data), resumes an interrupted one from its newest checkpoint, and tries failed ones again;
one person failing (too few frames, no usable video, non-finite losses, an unexpected error) never stops
the others and is recorded with its reason. The batch ends with ``finetune.csv`` (every person done so
far, newest row per person) and the same table printed.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from collections.abc import Callable

import pyarrow.parquet as pq

from infra import storage
from infra.config import config_hash
from infra.tracking import NullTracker, Tracker
from model.face3d.loader import load_morphable_model
from pipeline import schema
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.loop import default_tracking_uri, finetune_hash, finetune_in_process
from pipeline.finetune.person_model import STATUS_DONE, PersonStatus, read_status, read_table, write_table
from pipeline.preprocess.chain import preprocess_in_process

SHARDS_DIR = "shards"  # raw videos given as --data are preprocessed into <storage_path>/shards


def is_shards(data_uri: str) -> bool:
    """Whether ``data_uri`` is a preprocessing output (it has the per-unit table)."""
    return storage.exists(storage.join(data_uri, schema.VIDEOS_TABLE))


def prepare_data(cfg: FinetuneConfig, data_uri: str, log: Callable[[str], None] = print) -> str:
    """The shards to fine-tune on: ``data_uri`` itself, or for raw videos (a folder, prefix or manifest)
    the preprocessing output made from them under ``<storage_path>/shards`` (the preprocessing job's code
    and idempotence: videos done with the same config are not redone)."""
    if is_shards(data_uri):
        return data_uri
    output = storage.join(cfg.run.storage_path, SHARDS_DIR)
    log(f"--data {storage.redact(data_uri)} holds videos: preprocessing them into {storage.redact(output)}")
    if cfg.batch.ray:
        from pipeline.preprocess.ray_preprocess import run_preprocess

        summary = run_preprocess(cfg.preprocess, data_uri, output, log=log)
        log(f"preprocessing: {summary['videos_ok']} of {summary['videos']} videos usable")
    else:
        p = cfg.preprocess.preprocess
        model = load_morphable_model(p.model.path)
        preprocess_in_process(data_uri, output, p, config_hash(p), model, log)
    return output


def resolve_identities(spec: str, data_uri: str) -> list[str]:
    """``all`` (every identity with a usable unit), a file of names (one per line), or a comma-separated
    list. Raises ValueError naming what is missing."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(data_uri, schema.VIDEOS_TABLE))))
    records = [schema.VideoRecord.from_dict(r) for r in table.to_pylist()]
    known = sorted({r.identity for r in records})
    if spec == "all":
        return sorted({r.identity for r in records if r.ok})
    if os.path.isfile(spec) or (not storage.is_local(spec) and storage.exists(spec)):
        names = [line.strip() for line in storage.read_text(spec).splitlines() if line.strip()]
    else:
        names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(
            f"--identities: {unknown} are not in {storage.redact(data_uri)} (it has {known[:10]}"
            f"{' ...' if len(known) > 10 else ''})"
        )
    return names


def plan_batch(
    cfg: FinetuneConfig, init_uri: str, data_uri: str, identities: list[str]
) -> tuple[list[str], list[PersonStatus]]:
    """(people to fine-tune, the statuses of people already done with the same fine-tuning hash)."""
    digest = finetune_hash(cfg, init_uri, data_uri)
    done = []
    for identity in identities:
        status = read_status(cfg.run.storage_path, identity)
        if status is not None and status.ok and status.config_hash == digest:
            done.append(status)
    finished = {s.identity for s in done}
    return [i for i in identities if i not in finished], done


def run_batch(
    cfg: FinetuneConfig,
    init_uri: str,
    data_uri: str,
    identities: list[str],
    log: Callable[[str], None] = print,
) -> list[PersonStatus]:
    """Fine-tunes the people not done yet (in parallel on Ray when ``batch.ray``); returns every person's
    status in this batch (those skipped as done with status ``done``)."""
    todo, done = plan_batch(cfg, init_uri, data_uri, identities)
    log(f"{len(identities)} people: {len(todo)} to fine-tune, {len(done)} done with the same settings")
    statuses = [dataclasses.replace(s, status=STATUS_DONE) for s in done]
    fresh: list[PersonStatus] = []
    if todo:
        parent = Tracker(
            cfg.tracking,
            f"finetune-batch-{time.strftime('%Y%m%d-%H%M%S')}",
            default_uri=default_tracking_uri(cfg),
            tags={"job": "finetune-batch", "people": ",".join(todo)[:5000]},
            log=log,
        ) if cfg.tracking.enabled else NullTracker()  # fmt: skip
        try:
            if cfg.batch.ray:
                from pipeline.finetune.ray_finetune import run_trials

                fresh = run_trials(cfg, init_uri, data_uri, todo, parent.run_id, log)
            else:
                fresh = [finetune_in_process(cfg, init_uri, data_uri, i, parent.run_id, log) for i in todo]
            ok = sum(s.ok for s in fresh)
            parent.log_metrics({"people_ok": ok, "people_failed": len(fresh) - ok}, 0)
        finally:
            parent.end("FINISHED")
        statuses += fresh
    table = read_table(cfg.run.storage_path)
    table.update({s.identity: s for s in fresh})  # the newest row per person
    log(write_table(cfg.run.storage_path, table))
    return statuses
