"""Few-shot fine-tuning of one person (paper section 3.4), in one process, without Ray or MLflow.

``finetune_person``: the person's frames are split (``person.person_data``); h_new is the mean E_id
embedding of the training frames (Eq. 9); the generator's AdaIN layers become instance norms set from
h_new and D^I's projection the single row w = h_new (``model.networks.finetune``); E_id is dropped. Then the
networks train on the person's clips with the meta-learning losses (every clip starts from no previous
frames, so the first frames of a sequence are tuned as well as the steady state), the held-out frames are
scored every ``budget.eval_every`` steps and the best generator is kept. A rerun resumes from the person's
newest checkpoint. The person model (``person_model``) is written last, with its status.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import torch

from infra import storage
from infra.config import config_hash, from_dict, to_dict
from infra.tracking import NullTracker, Tracker, local_store_uri
from model.networks.embedder import identity_vector_all_frames
from model.networks.finetune import convert_generator, convert_image_discriminator
from model.networks.losses import LossConfig, ObjectiveConfig, VGGPerceptualLoss
from pipeline import media
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.person import (
    PersonFailed,
    evaluate_holdout,
    person_data,
    person_statistics,
    training_frames,
)
from pipeline.finetune.person_model import (
    IDENTITY_TAG,
    SAMPLES_FILE,
    STATUS_FAILED,
    STATUS_OK,
    PersonStatus,
    person_checkpoint,
    person_dir,
    person_model_uri,
    write_status,
)
from pipeline.train import data
from pipeline.train.checkpoint import (
    Checkpoint,
    checkpoint_uri,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from pipeline.train.loop import NonFiniteTraining, StepPlan, WorkerContext, run_steps
from pipeline.train.step import TrainStep

BEST_FILE = "best.pt"  # the generator of the best held-out score so far (for keep = "best")
NETWORKS = ("generator", "image_discriminator", "mouth_discriminator", "temporal_discriminator")


def settings(cfg: FinetuneConfig, init: Checkpoint) -> tuple[data.DataConfig, LossConfig]:
    """The data and loss settings: the config's, else the init checkpoint's training ones. Loader
    processes are the fine-tuning job's choice, one identity frame is read per clip (E_id is gone), and the
    data order follows ``run.seed`` (the init's would make every seed of a person the same run)."""
    data_cfg = cfg.data or from_dict(data.DataConfig, init.config.get("data", {}))
    loss_cfg = cfg.loss or from_dict(LossConfig, init.config.get("loss", {}))
    return dataclasses.replace(data_cfg, identity_frames=1, seed=cfg.run.seed), loss_cfg


def finetune_hash(cfg: FinetuneConfig, init_uri: str, data_uri: str) -> str:
    """What makes two fine-tunes of a person the same: the settings that shape the model, the init
    checkpoint and the data (not where it runs or how it is tracked)."""
    shaping = {k: v for k, v in to_dict(cfg).items() if k not in ("batch", "tracking", "preprocess")}
    shaping["run"] = {k: v for k, v in shaping["run"].items() if k not in ("log_every", "threads")}
    sources = {"init": storage.redact(init_uri), "data": storage.redact(data_uri)}
    return config_hash({"config": shaping, **sources})


def finetune_person(
    cfg: FinetuneConfig,
    init_uri: str,
    data_uri: str,
    identity: str,
    ctx: WorkerContext | None = None,
    tracker: Tracker | NullTracker | None = None,
) -> PersonStatus:
    """Fine-tunes (or resumes) ``identity``; returns (and writes) its status. Data problems give a failed
    status with a reason (``too_few_frames``, ``no_usable_video``, ``non_finite``); other errors raise."""
    ctx, tracker = ctx or WorkerContext(), tracker or NullTracker()
    started = time.perf_counter()
    folder = person_dir(cfg.run.storage_path, identity)
    try:
        status = _finetune(cfg, init_uri, data_uri, identity, folder, ctx, tracker)
    except PersonFailed as err:
        status = PersonStatus(identity, STATUS_FAILED, reason=err.reason, message=str(err))
    except NonFiniteTraining as err:
        status = PersonStatus(identity, STATUS_FAILED, reason="non_finite", message=str(err))
    status = dataclasses.replace(
        status,
        minutes=round((time.perf_counter() - started) / 60, 3),
        config_hash=finetune_hash(cfg, init_uri, data_uri),
        init=storage.redact(init_uri),
    )
    write_status(cfg.run.storage_path, identity, status)
    tracker.set_tags({"outcome": status.status, "outcome_reason": status.reason})
    return status


def _finetune(
    cfg: FinetuneConfig, init_uri: str, data_uri: str, identity: str, folder: str,
    ctx: WorkerContext, tracker: Tracker | NullTracker,
) -> PersonStatus:  # fmt: skip
    device, log = ctx.device, ctx.log
    if device.type == "cpu" and cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)

    # Set up: the person's data, the converted networks (or the resumed ones), the optimisers.
    init = load_checkpoint(init_uri)
    data_cfg, loss_cfg = settings(cfg, init)
    person = person_data(data_uri, identity, data_cfg, cfg.split)
    resumed = latest_checkpoint(folder, log)
    torch.manual_seed(cfg.run.seed)
    if resumed is not None:
        nets, h_new = resumed.renderer(device), resumed.extra["h_new"].to(device)
    else:
        nets = init.renderer(device)
        frames, masks = training_frames(person, data_cfg)
        h_new = identity_vector_all_frames(nets.embedder, frames.to(device), masks.to(device))  # Eq. (9)
        nets.generator = convert_generator(nets.generator, h_new)
        nets.image_discriminator = convert_image_discriminator(nets.image_discriminator, h_new)
        nets.embedder = None
    vgg = VGGPerceptualLoss(loss_cfg.vgg).to(device) if loss_cfg.lambda_vgg > 0 else None
    autocast = torch.bfloat16 if cfg.run.precision == "bf16" and device.type == "cuda" else None
    trainer = TrainStep(nets, loss_cfg, ObjectiveConfig(), cfg.optim, cfg.schedule, vgg, autocast)
    step, samples_seen, best = 0, 0, {"holdout_masked_l1": math.inf, "step": 0}
    if resumed is not None:
        trainer.load_state_dict(resumed.optimizers)
        restore_rng(resumed.rng)
        step, samples_seen, best = resumed.step, resumed.samples_seen, resumed.extra["best"]
    dataset = data.ClipDataset(person.train, data_cfg)
    holdout = data.ClipDataset(person.holdout, data_cfg)
    total = cfg.budget.steps or math.ceil(cfg.budget.epochs * person.train.epoch_samples / cfg.run.batch_size)
    tracker.set_tags({IDENTITY_TAG: identity})
    tracker.log_params(
        dict(
            person=identity,
            train_frames=person.train_frames,
            holdout_frames=person.holdout_frames,
            steps=total,
            init_checkpoint=storage.redact(init_uri),
            shards=storage.redact(data_uri),
            **to_dict(cfg),
        )
    )
    log(
        f"{identity}: {'resuming' if resumed else 'starting'} at step {step}/{total}; "
        f"{person.train_frames} training frames, {person.holdout_frames} held out"
    )

    def checkpoint(at_step: int, at_samples: int) -> Checkpoint:
        return Checkpoint(
            kind="finetune",
            step=at_step,
            samples_seen=at_samples,
            networks={name: getattr(nets, name).state_dict() for name in NETWORKS},
            networks_config=init.networks_config,
            generator_kind="instance_norm",
            identities=(identity,),
            optimizers=trainer.state_dict(),
            rng=rng_state(),
            config=to_dict(cfg),
            provenance=init.provenance,
            extra={"h_new": h_new.detach().cpu(), "best": dict(best)},
        )

    def evaluate(at_step: int) -> dict[str, float]:
        scores, strip = evaluate_holdout(nets.generator, holdout, person.holdout, device)
        if scores["holdout_masked_l1"] < best["holdout_masked_l1"]:
            best.update(scores, step=at_step)
            save_checkpoint(storage.join(folder, BEST_FILE), checkpoint(at_step, 0))
            media.write_png(storage.join(folder, SAMPLES_FILE), strip)
            tracker.log_image(strip, "person/samples.png")
        log(
            f"{identity}: step {at_step} held-out masked L1 {scores['holdout_masked_l1']:.4f} PSNR "
            f"{scores['holdout_psnr_db']:.2f} dB (best {best['holdout_masked_l1']:.4f} at {best['step']})"
        )
        return scores

    # Train, scoring the held-out frames as it goes.
    plan = StepPlan(
        total_steps=total,
        batch_size=cfg.run.batch_size,
        log_every=cfg.run.log_every,
        checkpoint_every=cfg.run.checkpoint_every,
        eval_every=cfg.budget.eval_every,
    )
    step, samples_seen, last = run_steps(
        trainer, dataset, plan, step, samples_seen, cfg.stability, ctx, tracker,
        save=lambda s, n: save_checkpoint(checkpoint_uri(folder, s), checkpoint(s, n)),
        restore=lambda: latest_checkpoint(folder, log), evaluate=evaluate,
    )  # fmt: skip

    # Write the person model: the kept generator with what reenactment needs.
    keep_best = cfg.budget.keep == "best"
    kept = load_checkpoint(storage.join(folder, BEST_FILE)) if keep_best else checkpoint(step, 0)
    info = {
        "image_px": data_cfg.image_px,
        "init": storage.redact(init_uri),
        "data": storage.redact(data_uri),
        "train_frames": person.train_frames,
        "holdout_frames": person.holdout_frames,
        "steps": step,
        "kept_step": kept.step,
        "best": best,
        "final_losses": {k: v for k, v in last.items() if k.startswith("loss")},
    }
    model = person_checkpoint(
        identity, kept.networks["generator"], kept, h_new.detach().cpu(), person_statistics(person), info
    )
    uri = person_model_uri(cfg.run.storage_path, identity)
    save_checkpoint(uri, model)
    tracker.log_metrics({"best_holdout_masked_l1": best["holdout_masked_l1"]}, step)
    tracker.log_artifact_uri(uri, "person")
    scores = best if keep_best else last
    return PersonStatus(
        identity,
        STATUS_OK,
        train_frames=person.train_frames,
        holdout_frames=person.holdout_frames,
        steps=step,
        kept_step=kept.step,
        holdout_masked_l1=scores.get("holdout_masked_l1", math.nan),
        holdout_psnr_db=scores.get("holdout_psnr_db", math.nan),
        final_losses=json.dumps({k: round(v, 4) for k, v in last.items() if k.startswith("loss")}),
        model=storage.redact(uri),
    )


def default_tracking_uri(cfg: FinetuneConfig) -> str | None:
    return local_store_uri(cfg.run.storage_path) if storage.is_local(cfg.run.storage_path) else None


def person_tracker(cfg: FinetuneConfig, identity: str, parent_run_id: str | None, log) -> Tracker:
    """The person's child run under the batch's run (continued when the person resumes)."""
    folder = person_dir(cfg.run.storage_path, identity)
    return Tracker(
        cfg.tracking,
        identity,
        default_uri=default_tracking_uri(cfg),
        tags={IDENTITY_TAG: identity, "job": "finetune"},
        parent_run_id=parent_run_id,
        resume_key=storage.redact(folder),
        resume_existing=bool(list_checkpoints(folder)),
        log=log,
    )


def finetune_in_process(
    cfg: FinetuneConfig, init_uri: str, data_uri: str, identity: str, parent_run_id: str | None, log
) -> PersonStatus:
    """One person in this process with its own child run; an unexpected error becomes a failed status
    with reason ``error`` (recorded like any other)."""
    tracker = person_tracker(cfg, identity, parent_run_id, log)
    try:
        status = finetune_person(cfg, init_uri, data_uri, identity, WorkerContext(log=log), tracker)
    except Exception as err:  # noqa: BLE001 - one person's bug must not cost the others
        status = PersonStatus(identity, STATUS_FAILED, reason="error", message=f"{type(err).__name__}: {err}")
        write_status(cfg.run.storage_path, identity, status)
        log(f"{identity}: failed: {status.message}")
    tracker.end("FINISHED" if status.ok else "FAILED")
    return status
