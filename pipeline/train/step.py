"""One training step of the video renderer (paper section 3.3): the G / E_id update, then the D update.

Per step, for a batch of B clips of T frames (``pipeline.train.data``):

1. h = E_id(M frames of the clip's identity) (Eq. 4);
2. the clip is synthesised frame by frame, each frame conditioned on the NMFC window and the two previous
   generated frames (Eq. 5; the fed-back frames are detached, so only the current frame's graph is kept);
3. the G / E_id terms on every frame (D^I with the identity projection, D^M on mouth crops, VGG, mask,
   optional pixel L1) and on the clip (D^V at its temporal scales), and L_mch (Eq. 8) against w_i,
   detached (W is a discriminator parameter); ``split_objective`` sums them into G's and E_id's
   objectives, and each objective's gradient goes to its own network only;
4. the hinge losses of the discriminators on the real clip and the detached generated one.

Data parallelism: every worker computes its gradients, then one bucketed all-reduce averages them before
each optimiser step. This is DDP's arithmetic, written out because each objective must reach only its
own network (two ``autograd.grad`` calls from one graph), which DDP's gradient hooks do not see; and it
makes a module that a schedule stage or an ablation leaves unused harmless (its gradients are None on
every worker, nothing waits for them). Gradients are checked for NaN/Inf after averaging, so every
worker skips the same steps.

Precision: under ``bf16`` the networks run in bfloat16 autocast on CUDA; flows are composed
(``grid_sample``) and every loss is computed in float32.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from model.networks.discriminators import ScaleOutput, flows_between, temporal_frame_indices
from model.networks.generator import generate_sequence
from model.networks.losses import (
    LossConfig,
    ObjectiveConfig,
    VGGPerceptualLoss,
    discriminator_objective,
    embedding_matching_loss,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    mask_l1_loss,
    masked_l1_loss,
    split_objective,
)
from model.networks.renderer import VideoRenderer
from pipeline.train import data
from pipeline.train.config import OptimConfig, ScheduleConfig

ALLREDUCE_BUCKET_ELEMENTS = 16 * 2**20  # 64 MB of float32 per all-reduce call


@dataclass(frozen=True)
class LossStage:
    """Which groups of terms are on at a step (``loss_stage``)."""

    adversarial: bool
    temporal: bool


def loss_stage(step: int, loss: LossConfig, schedule: ScheduleConfig) -> LossStage:
    """The schedule as a pure function of the step (0-based)."""
    adversarial = step >= schedule.adversarial_from_step
    temporal = loss.use_temporal_discriminator and adversarial and step >= schedule.temporal_from_step
    return LossStage(adversarial, temporal)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def average_gradients(params: list[nn.Parameter]) -> None:
    """Averages the gradients of ``params`` over the workers (parameters without a gradient are skipped:
    which ones have none is the same on every worker)."""
    workers = world_size()
    if workers == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    bucket: list[torch.Tensor] = []
    for k, grad in enumerate(grads):
        bucket.append(grad)
        if sum(g.numel() for g in bucket) >= ALLREDUCE_BUCKET_ELEMENTS or k == len(grads) - 1:
            flat = torch._utils._flatten_dense_tensors(bucket)
            dist.all_reduce(flat)
            flat /= workers
            for g, averaged in zip(bucket, torch._utils._unflatten_dense_tensors(flat, bucket)):
                g.copy_(averaged)
            bucket = []


def broadcast_parameters(module: nn.Module) -> None:
    """Makes every worker start from rank 0's parameters and buffers."""
    if world_size() == 1:
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def _grads_finite(params: list[nn.Parameter]) -> bool:
    norms = [p.grad.float().norm() for p in params if p.grad is not None]
    return bool(torch.isfinite(torch.stack(norms).sum())) if norms else True


def _set_grads(params: list[nn.Parameter], grads: tuple[torch.Tensor | None, ...]) -> None:
    for p, g in zip(params, grads, strict=True):
        p.grad = None if g is None else g.detach()


def _scores_float(outputs: list[ScaleOutput]) -> list[ScaleOutput]:
    return [ScaleOutput([f.float() for f in o.features], o.score.float()) for o in outputs]


class TrainStep:
    """Optimisers and one alternating update of a ``VideoRenderer`` (see the module docstring).

    __call__(batch, step) -> metrics {name: float}; ``metrics["skipped"]`` is 1.0 when the step's
    gradients were not finite and nothing was updated. batch: the ``pipeline.train.data`` dict on the
    networks' device.
    """

    def __init__(
        self,
        networks: VideoRenderer,
        loss: LossConfig,
        objective: ObjectiveConfig,
        optim: OptimConfig,
        schedule: ScheduleConfig,
        vgg: VGGPerceptualLoss | None,
        autocast_dtype: torch.dtype | None = None,
    ):
        self.nets, self.loss, self.objective, self.schedule = networks, loss, objective, schedule
        self.vgg = vgg if loss.lambda_vgg > 0 else None
        self.autocast_dtype = autocast_dtype
        self.g_params = list(networks.generator.parameters())
        # A fine-tuned renderer has no E_id: its generator's normalisation holds the person (section 3.4).
        self.e_params = [] if networks.embedder is None else list(networks.embedder.parameters())
        self.d_params = [p for d in networks.discriminators() for p in d.parameters()]
        groups = [{"params": self.g_params, "lr": optim.lr_generator}]
        if self.e_params:
            groups.append({"params": self.e_params, "lr": optim.lr_embedder})
        self.optimizer_g = torch.optim.Adam(groups, betas=optim.betas)
        self.optimizer_d = torch.optim.Adam(self.d_params, lr=optim.lr_discriminator, betas=optim.betas)

    def _autocast(self, device: torch.device):
        if self.autocast_dtype is None or device.type != "cuda":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.autocast_dtype)

    def generate(self, batch: dict) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """h (B, n_f) (None for a fine-tuned renderer), and the clip synthesised sequentially: frames
        (B, T, 3, H, W), masks (B, T, 1, H, W), float32."""
        with self._autocast(batch[data.RGB].device):
            h = None
            if self.nets.embedder is not None:
                h = self.nets.embedder(batch[data.ID_RGB], batch[data.ID_MASK]).float()
            out = generate_sequence(self.nets.generator, batch[data.NMFC], h, detach_prev=True)
        return h, out.frame.float(), out.mask.float()

    def __call__(self, batch: dict, step: int) -> dict[str, float]:
        stage = loss_stage(step, self.loss, self.schedule)
        device = batch[data.RGB].device
        real, nmfc, mask = batch[data.RGB], batch[data.NMFC], batch[data.MASK]
        B, T = real.shape[:2]
        ids = batch[data.IDENTITY]
        ids_t = ids.repeat_interleave(T)
        mouth = batch[data.MOUTH_CENTER_PX].flatten(0, 1)

        # Evaluate the G / E_id terms and their gradients.
        h, fake, fake_mask = self.generate(batch)
        real_f, fake_f, nmfc_f, mask_f = (x.flatten(0, 1) for x in (real, fake, nmfc, mask))
        terms: dict[str, torch.Tensor] = {"mask_l1": mask_l1_loss(fake_mask, mask)}
        if self.loss.lambda_l1 > 0:
            terms["pixel_l1"] = masked_l1_loss(fake_f, real_f, mask_f)
        if self.vgg is not None:
            with self._autocast(device):
                terms["vgg"] = self.vgg(fake_f, real_f).float()
        if h is not None:  # Eq. (8) against the detached row w_i: W learns from D^I's hinge loss only
            w_i = self.nets.image_discriminator.projection.W[ids].detach()
            terms["mch"] = embedding_matching_loss(h, w_i)
        if stage.adversarial:
            with self._autocast(device):
                fake_i = _scores_float(self.nets.image_discriminator(fake_f, nmfc_f, ids_t))
                with torch.no_grad():
                    real_i = _scores_float(self.nets.image_discriminator(real_f, nmfc_f, ids_t))
                terms["adv_image"] = hinge_generator_loss(fake_i)
                terms["fm_image"] = feature_matching_loss(real_i, fake_i)
                if self.loss.use_mouth_discriminator:
                    fake_m = _scores_float(self.nets.mouth_discriminator(fake_f, nmfc_f, mouth))
                    terms["adv_mouth"] = hinge_generator_loss(fake_m)
        if stage.temporal:
            # Per D^V scale: the frame indices (K,) and the real clip's flows composed between them, used
            # by both passes (float32: composing warps stays out of autocast).
            d_v = self.nets.temporal_discriminator.cfg
            windows = [temporal_frame_indices(T, d_v.n_frames, s) for s in range(d_v.num_temporal_scales)]
            flows_v = [flows_between(batch[data.FLOW], idx) for idx in windows]
            adv_v, fm_v = fake.new_zeros(()), fake.new_zeros(())
            for s, (idx, fl) in enumerate(zip(windows, flows_v)):
                with self._autocast(device):
                    fake_v = _scores_float(self.nets.temporal_discriminator(s, fake[:, idx], fl))
                    with torch.no_grad():
                        real_v = _scores_float(self.nets.temporal_discriminator(s, real[:, idx], fl))
                adv_v = adv_v + hinge_generator_loss(fake_v)
                fm_v = fm_v + feature_matching_loss(real_v, fake_v)
            terms["adv_temporal"], terms["fm_temporal"] = adv_v, fm_v
        objectives = split_objective(self.loss, self.objective, terms)
        same = set(self.objective.generator_terms) == set(self.objective.embedder_terms)
        params = self.g_params + self.e_params
        if same or not self.e_params:
            grads = torch.autograd.grad(objectives.generator, params, allow_unused=True)
        else:
            grads_g = torch.autograd.grad(
                objectives.generator, self.g_params, retain_graph=True, allow_unused=True
            )
            grads_e = torch.autograd.grad(objectives.embedder, self.e_params, allow_unused=True)
            grads = (*grads_g, *grads_e)
        _set_grads(params, grads)
        average_gradients(params)
        g_finite = _grads_finite(params)

        # Evaluate the discriminators' hinge losses on the detached clip, and their gradients.
        d_terms: dict[str, torch.Tensor] = {}
        if stage.adversarial and g_finite:
            fake_f, fake = fake_f.detach(), fake.detach()
            with self._autocast(device):
                d_terms["image"] = hinge_discriminator_loss(
                    _scores_float(self.nets.image_discriminator(real_f, nmfc_f, ids_t)),
                    _scores_float(self.nets.image_discriminator(fake_f, nmfc_f, ids_t)),
                )
                if self.loss.use_mouth_discriminator:
                    d_terms["mouth"] = hinge_discriminator_loss(
                        _scores_float(self.nets.mouth_discriminator(real_f, nmfc_f, mouth)),
                        _scores_float(self.nets.mouth_discriminator(fake_f, nmfc_f, mouth)),
                    )
            if stage.temporal:
                total_v = fake.new_zeros(())
                for s, (idx, fl) in enumerate(zip(windows, flows_v)):
                    with self._autocast(device):
                        total_v = total_v + hinge_discriminator_loss(
                            _scores_float(self.nets.temporal_discriminator(s, real[:, idx], fl)),
                            _scores_float(self.nets.temporal_discriminator(s, fake[:, idx], fl)),
                        )
                d_terms["temporal"] = total_v
        d_finite = True
        if d_terms:
            total_d, _ = discriminator_objective(self.loss, d_terms)
            _set_grads(self.d_params, torch.autograd.grad(total_d, self.d_params, allow_unused=True))
            average_gradients(self.d_params)
            d_finite = _grads_finite(self.d_params)

        # Update (all or nothing: a non-finite gradient anywhere skips the whole step on every worker).
        skipped = not (g_finite and d_finite)
        if not skipped:
            self.optimizer_g.step()
            if d_terms:
                self.optimizer_d.step()
        for p in params + self.d_params:
            p.grad = None
        metrics = {f"loss/{k}": float(v.detach()) for k, v in objectives.weighted.items()}
        metrics.update({f"loss_d/{k}": float(v.detach()) for k, v in d_terms.items()})
        metrics["loss/generator_total"] = float(objectives.generator.detach())
        if self.e_params:
            metrics["loss/embedder_total"] = float(objectives.embedder.detach())
        with torch.no_grad():
            metrics["l1_masked"] = float(masked_l1_loss(fake_f, real_f, mask_f))
        metrics["skipped"] = float(skipped)
        metrics["frames"] = float(B * T)
        return {k: (v if math.isfinite(v) else float("nan")) for k, v in metrics.items()}

    def state_dict(self) -> dict:
        return {"optimizer_g": self.optimizer_g.state_dict(), "optimizer_d": self.optimizer_d.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer_g.load_state_dict(state["optimizer_g"])
        self.optimizer_d.load_state_dict(state["optimizer_d"])
