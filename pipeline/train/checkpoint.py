"""Training and fine-tuning checkpoints: one documented file format, written to the run's storage.

A checkpoint is one ``torch.save`` file, ``<run>/checkpoints/step-<step, 8 digits>.pt`` (local or S3, written
atomically), holding only tensors and plain data, so that it loads with ``torch.load(weights_only=True)``:

| key               | content                                                                          |
|-------------------|----------------------------------------------------------------------------------|
| format            | ``FORMAT`` (``head2head-checkpoint/1``)                                          |
| kind              | ``train`` (meta-learning, section 3.3) or ``finetune`` (one person, section 3.4)   |
| step              | optimiser steps done                                                             |
| samples_seen      | clips consumed over all workers (the data position to resume from)               |
| networks          | {name: state_dict} of ``generator``, ``embedder`` and the discriminators present |
| networks_config   | ``RendererConfig`` as plain data                                                  |
| generator_kind    | ``adain`` (identity-conditioned) or ``instance_norm`` (converted for one person)  |
| identities        | the vocabulary: row i of D^I's W belongs to identities[i]                        |
| optimizers        | {name: optimizer state_dict}                                                     |
| rng               | torch CPU (and CUDA) generator states                                             |
| config            | the resolved job config as plain data                                            |
| provenance        | git commit, package versions, creation time                                      |
| extra             | kind-specific plain data (fine-tuning: h_new, the person's statistics, ...)       |

``load_checkpoint`` reads it back and ``Checkpoint.renderer()`` rebuilds the networks, including a
fine-tuned generator, whose normalisation layers are of another type than the meta-learned one's.
"""

from __future__ import annotations

import dataclasses
import io
import re
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import torch

from infra import storage
from infra.config import from_dict, to_dict
from model.networks.finetune import convert_generator
from model.networks.renderer import RendererConfig, VideoRenderer

FORMAT = "head2head-checkpoint/1"
CHECKPOINTS_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})\.pt$")
PACKAGES = ("torch", "torchvision", "numpy", "ray", "mlflow", "head2head")


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A checkpoint's content (see the module docstring for each field)."""

    kind: Literal["train", "finetune"]
    step: int
    samples_seen: int
    networks: dict[str, dict[str, torch.Tensor]]
    networks_config: RendererConfig
    generator_kind: Literal["adain", "instance_norm"]
    identities: tuple[str, ...]
    optimizers: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def renderer(self, device: torch.device | str = "cpu") -> VideoRenderer:
        """The networks rebuilt with their weights, on ``device``; networks the checkpoint does not hold keep
        their initialisation, except E_id, which is then None (a fine-tuned renderer)."""
        nets = VideoRenderer(self.networks_config, max(1, len(self.identities)))
        if self.generator_kind == "instance_norm":
            nets.generator = convert_generator(nets.generator, torch.zeros(self.networks_config.n_f))
        if "embedder" not in self.networks:  # a fine-tuned renderer needs no E_id
            nets.embedder = None
        for name, state in self.networks.items():
            getattr(nets, name).load_state_dict(state)
        return nets.to(device)


def provenance() -> dict[str, Any]:
    """Git commit of the checkout (``unknown`` outside one), package versions and the time."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return {"git_commit": commit, "packages": versions, "created_at": time.time()}


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_uri(run_dir: str, step: int) -> str:
    return storage.join(run_dir, CHECKPOINTS_DIR, f"step-{step:08d}.pt")


def save_checkpoint(uri: str, checkpoint: Checkpoint) -> None:
    """Writes ``checkpoint`` to ``uri`` in one atomic write (a reader never sees a partial file)."""
    payload = {
        "format": FORMAT,
        "kind": checkpoint.kind,
        "step": checkpoint.step,
        "samples_seen": checkpoint.samples_seen,
        "networks": checkpoint.networks,
        "networks_config": to_dict(checkpoint.networks_config),
        "generator_kind": checkpoint.generator_kind,
        "identities": list(checkpoint.identities),
        "optimizers": checkpoint.optimizers,
        "rng": checkpoint.rng,
        "config": checkpoint.config,
        "provenance": checkpoint.provenance,
        "extra": checkpoint.extra,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with storage.atomic_writer(uri) as f:
        f.write(buffer.getbuffer())


def load_checkpoint(uri: str, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Reads a checkpoint with ``weights_only=True``; raises ValueError naming the file when it is not one
    of this format (or FileNotFoundError when it does not exist)."""
    if not storage.exists(uri):
        raise FileNotFoundError(f"checkpoint {storage.redact(uri)} not found")
    try:
        raw = io.BytesIO(storage.read_bytes(uri))
        payload = torch.load(raw, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{storage.redact(uri)}: not a readable checkpoint ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{storage.redact(uri)}: expected a {FORMAT} checkpoint, found {found!r}")
    fields = {f.name for f in dataclasses.fields(Checkpoint)}
    values = {k: v for k, v in payload.items() if k in fields}
    values["networks_config"] = from_dict(RendererConfig, payload["networks_config"])
    values["identities"] = tuple(payload["identities"])
    return Checkpoint(**values)


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """(step, uri) of the run's checkpoints, oldest first."""
    folder = storage.join(run_dir, CHECKPOINTS_DIR)
    if not storage.exists(folder):
        return []
    found = []
    for uri in storage.list_files(folder, [".pt"], recursive=False):
        match = _NAME.match(uri.rsplit("/", 1)[-1])
        if match:
            found.append((int(match.group(1)), uri))
    return sorted(found)


def latest_checkpoint(run_dir: str, log=print) -> Checkpoint | None:
    """The newest readable checkpoint of the run (a damaged newest file is reported and passed over)."""
    for _, uri in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(uri)
        except ValueError as err:
            log(f"warning: skipping {err}")
    return None
