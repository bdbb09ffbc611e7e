"""The checkpoint format: round trip with weights_only loading, fine-tuned networks, damaged files."""

from __future__ import annotations

from importlib import metadata

import pytest
import torch

from model.networks.finetune import convert_generator
from model.networks.renderer import RendererConfig, VideoRenderer
from pipeline.train.checkpoint import (
    FORMAT,
    Checkpoint,
    checkpoint_uri,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    provenance,
    rng_state,
    save_checkpoint,
)
from tests.pipeline.train.train_inputs import tiny_config

NAMES = ("generator", "embedder", "image_discriminator", "mouth_discriminator", "temporal_discriminator")


def _networks(num_identities: int = 3) -> tuple[RendererConfig, VideoRenderer]:
    cfg = tiny_config("unused").networks
    torch.manual_seed(0)
    return cfg, VideoRenderer(cfg, num_identities)


def _checkpoint(nets: VideoRenderer, cfg: RendererConfig, step: int = 7, **changes) -> Checkpoint:
    values = dict(
        kind="train",
        step=step,
        samples_seen=step * 4,
        networks={n: getattr(nets, n).state_dict() for n in NAMES},
        networks_config=cfg,
        generator_kind="adain",
        identities=("alice", "bob", "carol"),
        optimizers={"g": {"state": {}, "param_groups": [{"lr": 2e-4}]}},
        rng=rng_state(),
        config={"run": {"steps": 10}},
        provenance=provenance(),
    )
    values.update(changes)
    return Checkpoint(**values)


def test_round_trip_loads_with_weights_only_and_rebuilds_the_networks(tmp_path):
    cfg, nets = _networks()
    uri = checkpoint_uri(str(tmp_path / "run"), 7)
    save_checkpoint(uri, _checkpoint(nets, cfg))
    payload = torch.load(uri, weights_only=True)  # plain torch can read it safely
    assert payload["format"] == FORMAT and payload["identities"] == ["alice", "bob", "carol"]
    loaded = load_checkpoint(uri)
    assert loaded.step == 7 and loaded.samples_seen == 28 and loaded.networks_config == cfg
    assert loaded.provenance["packages"]["torch"] == metadata.version("torch")
    assert len(loaded.provenance["git_commit"]) == 40  # the tests run in a git checkout
    rebuilt = loaded.renderer()
    for name in NAMES:
        original, restored = getattr(nets, name).state_dict(), getattr(rebuilt, name).state_dict()
        assert all(torch.equal(original[k], restored[k]) for k in original), name
    assert rebuilt.image_discriminator.projection.W.shape[0] == 3
    assert list_checkpoints(str(tmp_path / "run")) == [(7, uri)]


def test_a_fine_tuned_generator_is_rebuilt_with_its_own_layer_types(tmp_path):
    cfg, nets = _networks(num_identities=1)
    h_new = torch.nn.functional.normalize(torch.randn(cfg.n_f), dim=0)
    tuned = convert_generator(nets.generator, h_new)
    checkpoint = _checkpoint(
        nets,
        cfg,
        kind="finetune",
        generator_kind="instance_norm",
        identities=("dave",),
        networks={
            "generator": tuned.state_dict(),
            "image_discriminator": nets.image_discriminator.state_dict(),
        },
        extra={"h_new": h_new},
    )
    uri = str(tmp_path / "person.pt")
    save_checkpoint(uri, checkpoint)
    loaded = load_checkpoint(uri)
    generator = loaded.renderer().generator
    nmfc, prev = torch.rand(1, 9, 32, 32), torch.zeros(1, 6, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(generator(nmfc, prev, None).frame, tuned(nmfc, prev, None).frame)
    torch.testing.assert_close(loaded.extra["h_new"], h_new)


def test_damaged_and_foreign_files_are_named(tmp_path):
    cfg, nets = _networks()
    run = str(tmp_path / "run")
    save_checkpoint(checkpoint_uri(run, 2), _checkpoint(nets, cfg, step=2))
    newest = checkpoint_uri(run, 4)
    save_checkpoint(newest, _checkpoint(nets, cfg, step=4))
    with open(newest, "r+b") as f:  # cut the newest short, as a crash mid-copy would
        f.truncate(1000)
    warnings: list[str] = []
    assert latest_checkpoint(run, warnings.append).step == 2
    assert len(warnings) == 1 and "step-00000004.pt" in warnings[0]
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt.*head2head-checkpoint/1"):
        load_checkpoint(str(tmp_path / "other.pt"))
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(str(tmp_path / "absent.pt"))
    assert latest_checkpoint(str(tmp_path / "empty")) is None
