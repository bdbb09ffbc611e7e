"""One training step: the loss schedule, which objective reaches which network, the NaN guard, and the
gradient averaging across workers (two real gloo processes)."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model.networks.losses import GENERATOR_TERMS, LossConfig, ObjectiveConfig
from model.networks.renderer import VideoRenderer
from pipeline.train import data
from pipeline.train import step as step_module
from pipeline.train.config import ScheduleConfig
from pipeline.train.step import TrainStep, average_gradients, broadcast_parameters, loss_stage
from tests.pipeline.train.train_inputs import tiny_config


@pytest.fixture(scope="module")
def setup(tiny_shards, tmp_path_factory):
    cfg = tiny_config(tmp_path_factory.mktemp("runs"))
    dataset = data.ClipDataset(data.build_index(tiny_shards, cfg.data), cfg.data)
    batch = torch.utils.data.default_collate([dataset[g] for g in range(2)])
    return cfg, dataset, batch


def _trainer(cfg, num_identities, objective=None, schedule=None, loss=None):
    torch.manual_seed(0)
    nets = VideoRenderer(cfg.networks, num_identities)
    objective = objective or ObjectiveConfig()
    step = TrainStep(nets, loss or cfg.loss, objective, cfg.optim, schedule or cfg.schedule, None)
    return nets, step


def _changed(before: torch.nn.Module, after: torch.nn.Module) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before.parameters(), after.parameters(), strict=True))


def test_loss_stage_is_a_pure_function_of_the_step():
    schedule = ScheduleConfig(adversarial_from_step=10, temporal_from_step=20)
    stages = [loss_stage(s, LossConfig(), schedule) for s in (0, 9, 10, 19, 20, 1000)]
    assert [(s.adversarial, s.temporal) for s in stages] == [
        (False, False), (False, False), (True, False), (True, False), (True, True), (True, True)
    ]  # fmt: skip
    assert not loss_stage(1000, LossConfig(use_temporal_discriminator=False), schedule).temporal
    paper = loss_stage(0, LossConfig(), ScheduleConfig())
    assert paper.adversarial and paper.temporal  # the paper trains everything from the start


def test_each_objective_reaches_only_its_network(setup):
    """In the reconstruction stage E_id's objective is L_mch alone: E_id moves, W (a discriminator
    parameter) does not; G moves. With E_id given the reconstruction terms too, its update differs."""
    cfg, dataset, batch = setup
    warmup = ScheduleConfig(adversarial_from_step=100, temporal_from_step=100)
    nets, step = _trainer(cfg, len(dataset.index.vocabulary), schedule=warmup)
    before = copy.deepcopy(nets)
    metrics = step(batch, 0)
    assert metrics["skipped"] == 0.0 and "loss/adv_image" not in metrics
    assert _changed(before.generator, nets.generator) and _changed(before.embedder, nets.embedder)
    assert not _changed(before.image_discriminator, nets.image_discriminator)  # W and the rest: no D step
    # The paper's split against one summed objective: E_id's update must differ.
    summed = ObjectiveConfig(generator_terms=GENERATOR_TERMS, embedder_terms=GENERATOR_TERMS)
    nets_s, step_s = _trainer(cfg, len(dataset.index.vocabulary), objective=summed, schedule=warmup)
    step_s(batch, 0)
    pairs = zip(nets.embedder.parameters(), nets_s.embedder.parameters(), strict=True)
    assert max((a - b).abs().max() for a, b in pairs) > 0
    # With E_id's objective empty (lambda_mch = 0, no adversarial terms) E_id does not move at all.
    no_mch = dataclasses.replace(cfg.loss, lambda_mch=0.0)
    nets_0, step_0 = _trainer(cfg, len(dataset.index.vocabulary), schedule=warmup, loss=no_mch)
    before_0 = copy.deepcopy(nets_0)
    step_0(batch, 0)
    assert not _changed(before_0.embedder, nets_0.embedder) and _changed(before_0.generator, nets_0.generator)


def test_adversarial_step_trains_every_network(setup):
    cfg, dataset, batch = setup
    nets, step = _trainer(cfg, len(dataset.index.vocabulary), schedule=ScheduleConfig())
    before = copy.deepcopy(nets)
    metrics = step(batch, 0)
    assert {"loss/adv_image", "loss/adv_temporal", "loss_d/temporal", "loss_d/mouth"} <= set(metrics)
    names = ("generator", "embedder", "image_discriminator", "mouth_discriminator", "temporal_discriminator")
    for name in names:
        assert _changed(getattr(before, name), getattr(nets, name)), name
    # W learns from D^I's hinge loss: the rows of the batch's identities moved.
    moved = (nets.image_discriminator.projection.W - before.image_discriminator.projection.W).abs().sum(1)
    assert bool((moved[batch[data.IDENTITY]] > 0).all())


def test_a_non_finite_step_updates_nothing(setup):
    cfg, dataset, batch = setup
    nets, step = _trainer(cfg, len(dataset.index.vocabulary), schedule=ScheduleConfig())
    before = copy.deepcopy(nets)
    poisoned = dict(batch)
    poisoned[data.RGB] = batch[data.RGB].clone()
    poisoned[data.RGB][0, 0, 0, 0, 0] = float("nan")
    metrics = step(poisoned, 0)
    assert metrics["skipped"] == 1.0
    assert not any(_changed(getattr(before, n), getattr(nets, n)) for n in ("generator", "embedder"))
    assert not _changed(before.image_discriminator, nets.image_discriminator)
    assert step.optimizer_g.state == {}  # Adam's moments untouched too


def test_a_non_finite_discriminator_gradient_updates_no_network_either(setup, monkeypatch):
    """G's gradients are finite and D's are not: the step is all or nothing, so G moves no more than D."""
    cfg, dataset, batch = setup
    nets, step = _trainer(cfg, len(dataset.index.vocabulary), schedule=ScheduleConfig())
    before = copy.deepcopy(nets)
    hinge = step_module.hinge_discriminator_loss
    poisoned = lambda real, fake: hinge(real, fake) * float("nan")  # noqa: E731
    monkeypatch.setattr(step_module, "hinge_discriminator_loss", poisoned)
    metrics = step(batch, 0)
    assert metrics["skipped"] == 1.0 and math.isfinite(metrics["loss/generator_total"])
    for name, module in before.named_children():
        assert not _changed(module, getattr(nets, name)), name
    assert step.optimizer_g.state == {} and step.optimizer_d.state == {}


def _worker(rank: int, world: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(rank)  # different initial weights per rank: broadcast makes them rank 0's
    layer = torch.nn.Linear(3, 2)
    broadcast_parameters(layer)
    layer.weight.grad = torch.full_like(layer.weight, float(rank + 1))
    layer.bias.grad = None  # a parameter without a gradient on every rank is skipped
    average_gradients(list(layer.parameters()))
    results[rank] = (layer.weight.detach().clone(), layer.weight.grad.clone(), layer.bias.grad)
    dist.destroy_process_group()


def test_gradients_are_averaged_and_parameters_broadcast_across_processes(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
        (w0, g0, b0), (w1, g1, b1) = results[0], results[1]
    assert torch.equal(w0, w1)  # rank 1 starts from rank 0's weights
    assert torch.equal(g0, torch.full_like(g0, 1.5)) and torch.equal(g1, g0)  # mean of 1 and 2
    assert b0 is None and b1 is None
