"""The training job on Ray Train: ``TorchTrainer`` runs ``pipeline.train.loop.train`` on every worker.

Ray Train starts N workers (``cluster.num_workers``; one GPU each with NCCL, or CPU workers with gloo),
sets up their process group and restarts them after a failure (``cluster.max_failures``); the loop then
resumes from the run's newest checkpoint. The run is named by the job's ``--run-name`` under
``run.storage_path`` for both Ray (``RunConfig(name, storage_path)``, where Ray keeps its own state of the
run) and our run folder, so a rerun of a stopped job with the same name continues it. Only rank 0 talks to
MLflow (``infra.tracking``); set ``tracking.tracking_uri`` to a tracking server when the workers run on
other machines (the embedded default is a SQLite store under a local ``run.storage_path``).

``cluster.ray = false`` runs the same loop in this process, without Ray.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from typing import Any

from infra import storage
from infra.ray_session import ray_session
from infra.tracking import NullTracker, Tracker, local_store_uri
from pipeline.train.checkpoint import list_checkpoints, provenance
from pipeline.train.config import TrainConfig
from pipeline.train.loop import WorkerContext, resolved_run_dir, train

LAST_METRICS_FILE = "last_metrics.json"  # in the run folder: rank 0's last logged metrics


def _log(message: str) -> None:
    # Not print(): in a Ray Train worker print is patched to reach the driver twice (stdout and a log record).
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _quiet_report_log() -> None:
    """Ray Train logs each report's whole metrics dict at INFO; the progress line says the same, readably."""
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray Train version: its own logging stays as it is
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)  # Ray names this logger by file


def _tracker(cfg: TrainConfig, run_name: str, run_dir: str) -> Tracker:
    default = local_store_uri(cfg.run.storage_path) if storage.is_local(cfg.run.storage_path) else None
    return Tracker(
        cfg.tracking,
        run_name,
        default_uri=default,
        tags={"job": "train"},
        resume_key=storage.redact(run_dir),
        resume_existing=bool(list_checkpoints(run_dir)),  # one MLflow run per run folder's life
        log=_log,
    )


def _worker(config: dict[str, Any]) -> None:
    """Ray Train's per-worker entry point."""
    import ray.train
    import ray.train.torch

    _quiet_report_log()
    context = ray.train.get_context()
    rank = context.get_world_rank()
    cfg: TrainConfig = config["cfg"]
    tracker = _tracker(cfg, config["run_name"], config["run_dir"]) if rank == 0 else NullTracker()
    status = "FAILED"
    try:
        metrics = train(
            cfg,
            config["data_uri"],
            config["run_dir"],
            WorkerContext(
                rank=rank,
                world_size=context.get_world_size(),
                device=ray.train.torch.get_device(),
                report=ray.train.report,
                log=_log,
            ),
            tracker,
            config["provenance"],
        )
        if rank == 0:  # Ray Train keeps only checkpoint-attached metrics: the driver reads these instead
            storage.write_text(storage.join(config["run_dir"], LAST_METRICS_FILE), json.dumps(metrics))
        status = "FINISHED"
    finally:
        tracker.end(status)


def run_training(cfg: TrainConfig, data_uri: str, run_name: str) -> dict:
    """Trains (or resumes) ``run_name``; returns {run_dir, steps, metrics: the last logged metrics}."""
    run_dir = resolved_run_dir(cfg, run_name)
    if storage.is_local(cfg.run.storage_path):  # workers may run in other working directories
        run = dataclasses.replace(cfg.run, storage_path=os.path.abspath(cfg.run.storage_path))
        cfg = dataclasses.replace(cfg, run=run)
    info = {"run_dir": storage.redact(run_dir), "steps": cfg.run.steps}
    if not cfg.cluster.ray:
        tracker = _tracker(cfg, run_name, run_dir)
        status = "FAILED"
        try:
            metrics = train(cfg, data_uri, run_dir, WorkerContext(log=_log), tracker, provenance())
            status = "FINISHED"
        finally:
            tracker.end(status)
        return {**info, "metrics": metrics}

    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # More logical CPUs than the workers reserve: Ray Train's controller needs a slot too.
    wanted = cfg.cluster.num_workers * cfg.cluster.cpus_per_worker + 1
    with ray_session(cfg.cluster.address, min_cpus=wanted):
        trainer = TorchTrainer(
            _worker,
            train_loop_config={
                "cfg": cfg,
                "data_uri": data_uri,
                "run_dir": run_dir,
                "run_name": run_name,
                "provenance": provenance(),
            },
            scaling_config=ScalingConfig(
                num_workers=cfg.cluster.num_workers,
                use_gpu=cfg.cluster.use_gpu,
                resources_per_worker={"CPU": cfg.cluster.cpus_per_worker},
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=cfg.run.storage_path,
                failure_config=FailureConfig(max_failures=cfg.cluster.max_failures),
            ),
        )
        trainer.fit()
    sys.stdout.flush()
    return {**info, "metrics": json.loads(storage.read_text(storage.join(run_dir, LAST_METRICS_FILE)))}
