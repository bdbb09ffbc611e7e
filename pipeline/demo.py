"""The whole chain on built-in defaults, sized for a 2-core laptop: ``make demo`` / ``python -m jobs.demo``.

1. inputs: three short talking-head clips and the ICT Face Model Light, from ../shared or else downloaded
   once into the cache, pinned by checksum (``infra.demo_assets``);
2. preprocessing (the Ray Data job) of the three clips;
3. a short multi-person training (Ray Train, configs/train_tiny.yaml) on two of the people;
4. few-shot fine-tuning of the third person, whom the training never saw;
5. a reenactment video: that person driven by one of the other people's clips, side by side, with its
   audio;
6. the self-reenactment evaluation report on the person's held-out frames.

Everything lands under one output folder and one MLflow store (``mlflow.db`` there). What a CPU learns in
minutes is blurry; configs/train.yaml and configs/finetune.yaml are the settings for GPUs. ``quick`` runs
the same chain at a size the test suite can afford.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infra import storage
from infra.config import load_config
from infra.demo_assets import demo_inputs
from infra.tracking import local_store_uri
from pipeline.evaluate.self_reenactment import EvaluateConfig, evaluate_people
from pipeline.finetune.batch import run_batch
from pipeline.finetune.config import FinetuneConfig
from pipeline.finetune.person_model import person_model_uri
from pipeline.preprocess.ray_preprocess import PreprocessJobConfig, run_preprocess
from pipeline.reenact.reenact import ReenactConfig, reenact
from pipeline.train.checkpoint import list_checkpoints
from pipeline.train.config import TrainConfig
from pipeline.train.loop import resolved_run_dir
from pipeline.train.ray_train import run_training

REPO = Path(__file__).resolve().parents[1]
# The demo's people (infra.assets pins these clips): two to train on, one to fine-tune, whose held-out
# frames the evaluation scores, and the driver of the reenactment (it has an audio track).
TRAIN_PEOPLE = ("liveportrait_d0", "aniportrait_pose_ref_video")
NEW_PERSON = "sadtalker_WDA_KatieHill_000"
DRIVER = "aniportrait_pose_ref_video"


@dataclass(frozen=True)
class DemoSize:
    """frames per clip, training image size and steps, fine-tuning steps, reenacted frames."""

    frames: int
    image_px: int
    train_steps: int
    finetune_steps: int
    reenact_frames: int


FULL = DemoSize(frames=125, image_px=64, train_steps=300, finetune_steps=100, reenact_frames=125)
QUICK = DemoSize(frames=36, image_px=32, train_steps=20, finetune_steps=10, reenact_frames=20)


def _size_overrides(size: DemoSize) -> list[str]:
    if size.image_px == 64:
        return []
    return [  # configs/train_tiny.yaml at 32 px (tests/pipeline/train/train_inputs.py's shrink)
        "data.image_px=32", "networks.generator.n_downsampling=2", "networks.generator.base_channels=8",
        "networks.embedder.input_px=32", "networks.mouth_discriminator.crop_px=9",
    ]  # fmt: skip


def run_demo(
    output: str,
    quick: bool = False,
    shared_dir: str | None = None,
    allow_download: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Runs the chain into ``output`` (a local folder); returns {artefact: path} and the minutes it took."""
    size = QUICK if quick else FULL
    start = time.perf_counter()
    out = Path(output).resolve()
    tracking = [f"tracking.tracking_uri={local_store_uri(str(out))}"]
    shared = shared_dir if shared_dir is not None else str(REPO.parent / "shared")
    model_path, clips = demo_inputs(shared, allow_download, log=log)
    log("What a CPU can learn in minutes is blurry: the demo shows the chain, configs/train.yaml and "
        "configs/finetune.yaml are the settings for GPUs.")  # fmt: skip

    # Preprocess: the Ray Data job over the three clips.
    manifest = out / "manifest.csv"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("path,identity,note\n" + "".join(f"{c},{Path(c).stem},demo clip\n" for c in clips))
    preprocess = load_config(PreprocessJobConfig, str(REPO / "configs" / "preprocess.yaml"), [
        f"preprocess.model.path={model_path}", f"preprocess.decode.max_frames={size.frames}",
        "preprocess.track.crop_size=128", "preprocess.render.image_size=[128,128]",
        "preprocess.render.mouth_box_px=36", "preprocess.mask.key_frames=1",
    ])  # fmt: skip
    shards = str(out / "preprocess")
    summary = run_preprocess(preprocess, str(manifest), shards, log=log)
    log(f"preprocessing: {summary['videos_ok']} of {summary['videos']} videos usable")

    # Train on two people.
    train = load_config(TrainConfig, str(REPO / "configs" / "train_tiny.yaml"), [
        f"run.storage_path={out / 'train'}", f"run.steps={size.train_steps}",
        f"run.checkpoint_every={size.train_steps}", f"run.preview_every={max(size.train_steps // 2, 1)}",
        f"run.log_every={max(size.train_steps // 10, 1)}", f"data.identities=[{','.join(TRAIN_PEOPLE)}]",
        "schedule.adversarial_from_step=" + str(size.train_steps // 4),
        "schedule.temporal_from_step=" + str(size.train_steps // 2), *_size_overrides(size), *tracking,
    ])  # fmt: skip
    run_training(train, shards, "demo")
    init = list_checkpoints(resolved_run_dir(train, "demo"))[-1][1]

    # Fine-tune the person the training never saw.
    finetune = load_config(FinetuneConfig, str(REPO / "configs" / "finetune_tiny.yaml"), [
        f"run.storage_path={out / 'finetune'}", f"budget.steps={size.finetune_steps}",
        f"budget.eval_every={max(size.finetune_steps // 2, 1)}", "batch.ray=false", *tracking,
    ])  # fmt: skip
    (status,) = run_batch(finetune, init, shards, [NEW_PERSON], log)
    if not status.ok:
        raise RuntimeError(f"fine-tuning {NEW_PERSON} failed: {status.reason}: {status.message}")
    person = person_model_uri(str(out / "finetune"), NEW_PERSON)

    # Reenact the person with another person's clip, and evaluate on the person's held-out frames.
    video = str(out / "reenactment.mp4")
    driver = next(c for c in clips if Path(c).stem == DRIVER)
    reenact_cfg = load_config(ReenactConfig, None, [
        f"source.decode.max_frames={size.reenact_frames}", f"source.model.path={model_path}",
        "side_by_side=true",
    ])  # fmt: skip
    reenact(str(driver), person, video, reenact_cfg, log=log)
    evaluation = str(out / "evaluation")
    evaluate_people([person], shards, evaluation, EvaluateConfig(), log=log)

    artefacts = {
        "contact sheets": str(Path(shards) / "contact_sheets"),
        "training previews": str(Path(resolved_run_dir(train, "demo")) / "previews"),
        "training samples": str(Path(resolved_run_dir(train, "demo")) / "samples.mp4"),
        "person model": person,
        "fine-tuning table": str(out / "finetune" / "finetune.csv"),
        "reenactment video": video,
        "evaluation report": str(Path(evaluation) / "report.html"),
        "MLflow UI": f"mlflow ui --backend-store-uri {local_store_uri(str(out))}",
    }
    minutes = round((time.perf_counter() - start) / 60, 2)
    log(f"demo done in {minutes} min:")
    for name, path in artefacts.items():
        log(f"  {name}: {path}")
    storage.write_text(str(out / "artefacts.json"), json.dumps({**artefacts, "minutes": minutes}, indent=2))
    return {**artefacts, "minutes": minutes}
