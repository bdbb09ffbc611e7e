"""A person's model: what fine-tuning leaves for reenactment, found by the person's name.

Layout under the fine-tuning storage path (``run.storage_path``, local or S3)::

    persons/<identity>/model.pt              the person model (below)
    persons/<identity>/status.json           ok / failed, reason, frames, minutes, metrics, config hash
    persons/<identity>/checkpoints/step-N.pt the fine-tuning checkpoints (resume)
    persons/<identity>/samples.png           held-out frames: NMFC / real / generated
    finetune.csv                             one row per person fine-tuned so far

The person model is a checkpoint (``pipeline.train.checkpoint``, ``kind = "finetune"``) holding only the
fine-tuned generator (its AdaIN layers turned into instance norms set from h_new, section 3.4), and in
``extra``: ``h_new`` (n_f,), the person's ``PersonStatistics`` (3DMM identity, pose and expression ranges,
mean background, key frame, source videos with their licence or consent notes), the held-out scores, and
where it came from (init checkpoint, data, frames). MLflow holds a copy as the artifact ``person/model.pt``
of the person's run (tag ``head2head.identity``). Person models stay out of images and git: their footage
may carry non-commercial terms.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from dataclasses import dataclass
from typing import Any

import torch

from infra import storage
from model.networks.generator import Generator
from pipeline.finetune.person import PersonStatistics
from pipeline.train.checkpoint import Checkpoint, load_checkpoint

PERSONS_DIR = "persons"
MODEL_FILE = "model.pt"
STATUS_FILE = "status.json"
SAMPLES_FILE = "samples.png"
TABLE_FILE = "finetune.csv"
IDENTITY_TAG = "head2head.identity"
_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def person_dir(storage_path: str, identity: str) -> str:
    """The person's folder; identities must be file-name safe (letters, digits, ``._-``)."""
    if not _SAFE.match(identity):
        raise ValueError(f"identity {identity!r}: names may hold only letters, digits, '.', '_' and '-'")
    return storage.join(storage_path, PERSONS_DIR, identity)


def person_model_uri(storage_path: str, identity: str) -> str:
    return storage.join(person_dir(storage_path, identity), MODEL_FILE)


def list_people(storage_path: str) -> list[str]:
    """The identities that have a person model under ``storage_path``, sorted."""
    folder = storage.join(storage_path, PERSONS_DIR)
    if not storage.exists(folder):
        return []
    models = storage.list_files(folder, [".pt"])
    return sorted(uri.rsplit("/", 2)[-2] for uri in models if uri.rsplit("/", 1)[-1] == MODEL_FILE)


@dataclass(frozen=True, eq=False)
class PersonModel:
    """A loaded person model: ``generator`` (eval mode, takes h=None), ``h_new``, ``statistics``, ``info``
    (held-out scores, provenance) and ``config`` (the fine-tuning job's resolved config)."""

    identity: str
    generator: Generator
    h_new: torch.Tensor
    statistics: PersonStatistics
    info: dict[str, Any]
    config: dict[str, Any]


def person_checkpoint(
    identity: str, generator_state: dict, base: Checkpoint, h_new: torch.Tensor,
    statistics: PersonStatistics, info: dict[str, Any],
) -> Checkpoint:  # fmt: skip
    """The person model as a checkpoint (``base``: the fine-tuning checkpoint it comes from)."""
    return dataclasses.replace(
        base,
        networks={"generator": generator_state},
        identities=(identity,),
        optimizers={},
        extra={"h_new": h_new, "statistics": dataclasses.asdict(statistics), "info": info},
    )


def load_person_model(uri: str, device: torch.device | str = "cpu") -> PersonModel:
    """Reads a person model (``person_model_uri``) and rebuilds its generator."""
    checkpoint = load_checkpoint(uri)
    if checkpoint.kind != "finetune" or "statistics" not in checkpoint.extra:
        raise ValueError(f"{storage.redact(uri)}: not a person model (a {checkpoint.kind} checkpoint)")
    generator = checkpoint.renderer(device).generator.eval()
    stats = checkpoint.extra["statistics"]
    stats["sources"] = tuple(tuple(s) for s in stats["sources"])
    return PersonModel(
        identity=checkpoint.identities[0],
        generator=generator,
        h_new=checkpoint.extra["h_new"],
        statistics=PersonStatistics(**stats),
        info=checkpoint.extra["info"],
        config=checkpoint.config,
    )


STATUS_OK, STATUS_FAILED, STATUS_DONE = "ok", "failed", "done"  # done: skipped, finished earlier


@dataclass(frozen=True)
class PersonStatus:
    """A person's row of ``finetune.csv`` and their ``status.json``: outcome, reason (a short code such
    as ``too_few_frames``), sizes, time, held-out scores (masked L1 in [-1, 1] units, PSNR in dB, on the
    kept generator) and the last logged losses (JSON)."""

    identity: str
    status: str
    reason: str = ""
    message: str = ""
    train_frames: int = 0
    holdout_frames: int = 0
    steps: int = 0
    kept_step: int = 0
    minutes: float = 0.0
    holdout_masked_l1: float = float("nan")
    holdout_psnr_db: float = float("nan")
    final_losses: str = "{}"
    model: str = ""
    config_hash: str = ""
    init: str = ""

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PersonStatus:
        """From a mapping (a JSON file, a CSV row of strings): known fields only, converted to their types."""
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in data and data[f.name] not in (None, ""):
                kind = type(f.default) if f.default is not dataclasses.MISSING else str
                values[f.name] = kind(data[f.name])
        return cls(**values)


TABLE_COLUMNS = tuple(f.name for f in dataclasses.fields(PersonStatus))


def read_table(storage_path: str) -> dict[str, PersonStatus]:
    """``storage_path``/finetune.csv by identity ({} before the first batch)."""
    uri = storage.join(storage_path, TABLE_FILE)
    if not storage.exists(uri):
        return {}
    rows = (PersonStatus.from_dict(r) for r in csv.DictReader(io.StringIO(storage.read_text(uri))))
    return {status.identity: status for status in rows}


def write_table(storage_path: str, table: dict[str, PersonStatus]) -> str:
    """Writes ``storage_path``/finetune.csv, a row per person sorted by identity; returns its text."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=TABLE_COLUMNS)
    writer.writeheader()
    writer.writerows(table[identity].as_dict() for identity in sorted(table))
    storage.write_text(storage.join(storage_path, TABLE_FILE), text.getvalue())
    return text.getvalue()


def read_status(storage_path: str, identity: str) -> PersonStatus | None:
    uri = storage.join(person_dir(storage_path, identity), STATUS_FILE)
    return PersonStatus.from_dict(json.loads(storage.read_text(uri))) if storage.exists(uri) else None


def write_status(storage_path: str, identity: str, status: PersonStatus) -> None:
    uri = storage.join(person_dir(storage_path, identity), STATUS_FILE)
    storage.write_text(uri, json.dumps(status.as_dict()))
