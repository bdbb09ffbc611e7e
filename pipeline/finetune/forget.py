"""Forgetting a person: remove everything the system holds about one identity.

- preprocessing outputs (``--data``): the person's shards, records and contact sheets, and their rows of
  ``videos.parquet`` (rewritten from the records that remain);
- fine-tuning outputs (``--finetune``): ``persons/<identity>/`` (model, checkpoints, samples, status) and
  the person's row of ``finetune.csv``;
- MLflow: every run tagged with the identity (the fine-tuning runs), with their artifacts; MLflow only
  marks runs deleted, so with ``backend_store_uri`` (the tracking server's database) they are purged with
  ``mlflow gc`` as well;
- training runs (``--train-run``): the person's row of D^I's W is zeroed and their name replaced in the
  checkpoints' vocabulary and ``identities.json``, and the run's previews and sample video (which may show
  them) are removed. The networks' other weights were still shaped by the person's frames: only training
  again without them removes that.

Returns what was removed, so that the caller can report it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from dataclasses import dataclass, field

import torch

from infra import storage
from infra.tracking import TrackingConfig, delete_run, find_runs, resolve_tracking_uri
from pipeline import schema
from pipeline.finetune.person_model import IDENTITY_TAG, person_dir, read_table, write_table
from pipeline.preprocess import shard_writer
from pipeline.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from pipeline.train.clip_index import vocabulary_from_json, vocabulary_to_json
from pipeline.train.loop import IDENTITIES_FILE, PREVIEWS_DIR, SAMPLES_VIDEO

FORGOTTEN = "forgotten"  # the name a forgotten person's row of W keeps in a vocabulary


@dataclass
class Forgotten:
    """What ``forget`` removed or changed (URIs redacted)."""

    files: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    checkpoints_scrubbed: list[str] = field(default_factory=list)


def _remove(uri: str, report: Forgotten, recursive: bool = False) -> None:
    if storage.remove(uri, recursive=recursive):
        report.files.append(storage.redact(uri))


def forget_data(data_uri: str, identity: str, report: Forgotten) -> None:
    records = shard_writer.read_records(data_uri)
    for record in (r for r in records if r.identity == identity):
        if record.shard:
            _remove(storage.join(data_uri, *record.shard.split("/")), report)
        _remove(storage.join(data_uri, schema.CONTACT_SHEETS_DIR, f"{record.video_id}.png"), report)
        _remove(storage.join(data_uri, schema.RECORDS_DIR, f"{record.video_id}.json"), report)
    shard_writer.write_videos_table(data_uri, [r for r in records if r.identity != identity])


def forget_finetuning(storage_path: str, identity: str, report: Forgotten) -> None:
    _remove(person_dir(storage_path, identity), report, recursive=True)
    table = read_table(storage_path)
    if table.pop(identity, None) is not None:
        write_table(storage_path, table)


def forget_training(run_dir: str, identity: str, report: Forgotten) -> None:
    vocabulary_uri = storage.join(run_dir, IDENTITIES_FILE)
    if storage.exists(vocabulary_uri):
        names = vocabulary_from_json(storage.read_text(vocabulary_uri))
        scrubbed = [FORGOTTEN if n == identity else n for n in names]
        storage.write_text(vocabulary_uri, vocabulary_to_json(scrubbed))
    for _, uri in list_checkpoints(run_dir):
        checkpoint = load_checkpoint(uri)
        if identity not in checkpoint.identities:
            continue
        row = checkpoint.identities.index(identity)
        projection = checkpoint.networks["image_discriminator"]
        projection["projection.W"] = projection["projection.W"].clone()
        projection["projection.W"][row] = torch.zeros_like(projection["projection.W"][row])
        names = tuple(FORGOTTEN if n == identity else n for n in checkpoint.identities)
        save_checkpoint(uri, dataclasses.replace(checkpoint, identities=names))
        report.checkpoints_scrubbed.append(storage.redact(uri))
    _remove(storage.join(run_dir, PREVIEWS_DIR), report, recursive=True)
    _remove(storage.join(run_dir, SAMPLES_VIDEO), report)


def forget_tracking(
    config: TrackingConfig, identity: str, report: Forgotten, default_uri: str | None,
    backend_store_uri: str | None, log,
) -> None:  # fmt: skip
    runs = find_runs(config, IDENTITY_TAG, identity, default_uri=default_uri, log=log)
    for run_id in runs:
        if delete_run(config, run_id, default_uri=default_uri, log=log):
            report.runs.append(run_id)
    if runs and backend_store_uri:
        # MLflow's clients can only mark runs deleted; ``mlflow gc`` on the store removes their rows (it
        # resolves proxied artifact URIs through the tracking server named in its environment).
        env = dict(os.environ)
        server = resolve_tracking_uri(config, default_uri)
        if server:
            env["MLFLOW_TRACKING_URI"] = server
        subprocess.run(
            [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", backend_store_uri,
             "--run-ids", ",".join(runs)],
            check=True, capture_output=True, timeout=300, env=env,
        )  # fmt: skip


def forget(
    identity: str,
    data_uris: tuple[str, ...] = (),
    finetune_uris: tuple[str, ...] = (),
    train_runs: tuple[str, ...] = (),
    tracking: TrackingConfig | None = None,
    tracking_default_uri: str | None = None,
    backend_store_uri: str | None = None,
    log=print,
) -> Forgotten:
    """Removes ``identity`` from every place given (see the module docstring); returns what it removed."""
    person_dir("", identity)  # checks the name before anything is deleted
    report = Forgotten()
    for uri in data_uris:
        forget_data(uri, identity, report)
    for uri in finetune_uris:
        forget_finetuning(uri, identity, report)
    for uri in train_runs:
        forget_training(uri, identity, report)
    if tracking is not None and tracking.enabled:
        forget_tracking(tracking, identity, report, tracking_default_uri, backend_store_uri, log)
    return report
