"""A fine-tuning batch on Ray Tune: one trial per person, ``batch.concurrency`` at a time.

Ray Tune with a function trainable fits the job: each person is an independent run with its own resources
(``batch.cpus_per_person``, ``batch.gpus_per_person``: a GPU fraction lets several people share one GPU),
Tune queues the rest and places trials as the cluster has room. The trainable is ``finetune_in_process``:
the person's resume, child MLflow run (under the batch's ``parent_run_id``) and failure rules are the same
as without Ray. ``Tuner.fit()`` does not raise on a trial's error: ``ResultGrid.errors`` are read and each
becomes that person's failed row.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable

from infra.ray_session import ray_session
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.loop import finetune_in_process
from pipeline.finetune.person_model import STATUS_FAILED, PersonStatus, write_status

TRIAL_PERSON = "person"  # the trial config's key: the identity it fine-tunes


def _trial(
    config: dict, cfg: FinetuneConfig, init_uri: str, data_uri: str, parent_run_id: str | None
) -> None:
    from ray import tune

    def log(message: str) -> None:
        print(message, flush=True)

    status = finetune_in_process(cfg, init_uri, data_uri, config[TRIAL_PERSON], parent_run_id, log)
    tune.report(status.as_dict())


def run_trials(
    cfg: FinetuneConfig,
    init_uri: str,
    data_uri: str,
    identities: list[str],
    parent_run_id: str | None,
    log: Callable[[str], None] = print,
) -> list[PersonStatus]:
    """Runs one trial per person; returns their statuses (a crashed trial's says ``error`` and why)."""
    import dataclasses

    from ray import tune

    threads = max(1, int(cfg.batch.cpus_per_person))
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, threads=cfg.run.threads or threads))
    resources = {"cpu": cfg.batch.cpus_per_person, "gpu": cfg.batch.gpus_per_person}
    inputs = {"cfg": cfg, "init_uri": init_uri, "data_uri": data_uri, "parent_run_id": parent_run_id}
    # More logical CPUs than cores: Tune's controller and the trials' actors need slots.
    slots = cfg.batch.concurrency * cfg.batch.cpus_per_person + 1
    with ray_session(cfg.batch.address, min_cpus=slots):
        trial = tune.with_parameters(_trial, **inputs)
        trainable = tune.with_resources(trial, resources)
        tuner = tune.Tuner(
            trainable,
            param_space={TRIAL_PERSON: tune.grid_search(identities)},
            tune_config=tune.TuneConfig(max_concurrent_trials=cfg.batch.concurrency),
            run_config=tune.RunConfig(
                name=f"finetune-{time.strftime('%Y%m%d-%H%M%S')}",
                storage_path=os.path.join(tempfile.gettempdir(), "head2head-tune"),
                verbose=0,
            ),
        )
        grid = tuner.fit()
    statuses = []
    for result in grid:
        identity = result.config[TRIAL_PERSON]
        if result.error is not None:  # the trial itself crashed (Tune does not raise): that person failed
            statuses.append(PersonStatus(identity, STATUS_FAILED, reason="error", message=str(result.error)))
            write_status(cfg.run.storage_path, identity, statuses[-1])
        else:
            statuses.append(PersonStatus.from_dict(result.metrics))
    for error in grid.errors:
        log(f"warning: a fine-tuning trial failed: {error}")
    return statuses
