"""Several members trained at once: their weights stacked, one vmapped forward and backward.

Why: a member's batch of 32 snippets (32 x 1 x 299 x 40) is far too small to fill a GPU, so
training 20 members one after another leaves the card mostly idle. Stacking K members'
parameters (``torch.func.stack_module_state``) and running ``vmap(functional_call)`` gives one
computation over K x 32 snippets per step: the same kernels, K times the work per launch.

What stays exactly as in one-at-a-time training (``training.loop.member_epoch``):
- each member's data: its own shuffle, Mixup draws, augmentation draws, from the same seeds;
- its dropout masks: drawn from a generator seeded like the global RNG of the sequential path,
  with the same call (``bernoulli_(1 - p)``), so on the CPU they are the very same masks;
- its optimiser: AdamW is elementwise, so one AdamW over stacked tensors is K AdamWs; the LR
  schedule is shared because every member has the same number of steps;
- its BatchNorm statistics: the running buffers are stacked too and updated per member;
- its checkpoint: after the epoch each member is unstacked and saved in the sequential format,
  so a run can be resumed stacked or not, with any stack size.
What differs: floating-point rounding of the batched convolutions (after two epochs of a tiny run
on the CPU the weights agree to ~1e-5, BatchNorm running variances to ~1e-3; see
tests/unit/training/test_stacked.py), so a stacked run is not bit-identical to a sequential one,
though it is reproducible run to run on the same device.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state
from torch.optim import AdamW
from torch.utils.data import DataLoader

from training.augment import augment
from training.loop import (
    EpochRun,
    TrainingStopped,
    augment_seed,
    epoch_loader,
    load_member,
    make_scheduler,
    member_seeds,
    mixup_loss,
    save_member,
)
from training.model import prepare_input

HEAD_WEIGHT = "fc.1.weight"
HEAD_BIAS = "fc.1.bias"
DROPOUT_P = 0.2


class Float32BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d computed in float32 whatever autocast feeds it (same parameters and buffers).

    Why: under vmap on CUDA, a bf16 activation meeting the float32 running statistics fails in
    the backward pass ("Expected running_mean to have type BFloat16 but got Float", seen on an
    H200 with torch 2.11), while one member outside vmap is fine. Upcasting the input makes every
    operand float32; the next convolution casts back to bf16 under autocast. A no-op in float32.
    """

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float())


class StackedMembers:
    """K members of one architecture as stacked tensors, trainable in one computation.

    ``params`` / ``buffers``: name -> (K, ...) tensors (params are leaves that require grad).
    """

    def __init__(self, members: list[nn.Module]) -> None:
        if not members:
            raise ValueError("need at least one member")
        self.k = len(members)
        self.names = [n for n, _ in members[0].named_parameters()]
        params, buffers = stack_module_state(members)
        self.params: dict[str, Tensor] = {
            n: params[n].detach().requires_grad_() for n in self.names
        }
        self.buffers: dict[str, Tensor] = buffers
        body = copy.deepcopy(members[0]).to("meta")
        body.fc = nn.Identity()  # the head (dropout + linear) is applied per member below
        for module in body.modules():
            if type(module) is nn.BatchNorm2d:
                module.__class__ = Float32BatchNorm2d
        body.train()
        self._body = body
        self._body_params = [n for n in self.names if n not in (HEAD_WEIGHT, HEAD_BIAS)]

    def parameters(self) -> list[Tensor]:
        """In a member's ``parameters()`` order, so optimiser state indices line up."""
        return [self.params[n] for n in self.names]

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        """x (K, B, 1, T, F), keep (K, B, 512) dropout multipliers -> logits (K, B, C)."""
        body_params = {n: self.params[n] for n in self._body_params}

        def one(p: dict[str, Tensor], b: dict[str, Tensor], xb: Tensor) -> Tensor:
            return functional_call(self._body, (p, b), (xb,))

        feats = torch.vmap(one)(body_params, self.buffers, x)  # (K, B, 512)
        w, bias = self.params[HEAD_WEIGHT], self.params[HEAD_BIAS]  # (K, C, 512), (K, C)
        return torch.baddbmm(bias.unsqueeze(1), feats * keep, w.transpose(1, 2))

    def member_state(self, i: int) -> dict[str, Tensor]:
        """Member i's ``state_dict`` (detached copies)."""
        out = {n: t[i].detach().clone() for n, t in self.params.items()}
        out.update({n: t[i].detach().clone() for n, t in self.buffers.items()})
        return out


def stack_optimizer_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """K single-member AdamW state dicts -> one for the stacked parameters."""
    first = states[0]
    stacked: dict[int, dict[str, Tensor]] = {}
    for j, s0 in first["state"].items():
        stacked[j] = {
            "step": s0["step"].clone(),
            "exp_avg": torch.stack([s["state"][j]["exp_avg"] for s in states]),
            "exp_avg_sq": torch.stack([s["state"][j]["exp_avg_sq"] for s in states]),
        }
    return {"state": stacked, "param_groups": copy.deepcopy(first["param_groups"])}


def member_optimizer_state(stacked: dict[str, Any], i: int) -> dict[str, Any]:
    """Member i's AdamW state dict out of the stacked one (the sequential format)."""
    state = {
        j: {
            "step": s["step"].clone(),
            "exp_avg": s["exp_avg"][i].clone(),
            "exp_avg_sq": s["exp_avg_sq"][i].clone(),
        }
        for j, s in stacked["state"].items()
    }
    return {"state": state, "param_groups": copy.deepcopy(stacked["param_groups"])}


def dropout_keep(batch: int, width: int, gen: torch.Generator) -> Tensor:
    """The multiplier ``nn.Dropout(p)`` applies in training on the CPU: bernoulli(1 - p) / (1 - p),
    drawn with the same call, so the same generator state gives the same mask."""
    keep = 1.0 - DROPOUT_P
    return torch.empty(batch, width).bernoulli_(keep, generator=gen).div_(keep)


def train_stacked_epoch(
    stack: StackedMembers,
    loaders: list[DataLoader],
    criterion: nn.Module,
    optimizer: AdamW,
    scheduler: Any,
    device: torch.device,
    *,
    normalize: str,
    mixup_alpha: float,
    mixup_rngs: list[np.random.Generator],
    perm_generators: list[torch.Generator],
    dropout_generators: list[torch.Generator],
    augment_cfg: Any,
    augment_generators: list[torch.Generator],
    should_stop: Callable[[], bool] | None = None,
    amp: bool = False,
) -> list[float]:
    """One epoch of every stacked member, each on its own loader; returns each member's mean
    loss. Per member and per batch the draws are made in the sequential path's order."""
    aug = augment_cfg if augment_cfg is not None and not augment_cfg.is_identity else None
    k = stack.k
    totals = torch.zeros(k, device=device)
    seen = 0
    for batches in zip(*loaders, strict=True):
        if should_stop is not None and should_stop():
            raise TrainingStopped(0, 0)
        xs, ys, ybs, lams = [], [], [], []
        for m, (x, y) in enumerate(batches):
            x = x.to(device, non_blocking=True)
            if aug is not None:
                x = augment(prepare_input(x, "none"), aug, augment_generators[m])
            x = prepare_input(x, normalize)
            y = y.to(device, non_blocking=True)
            if mixup_alpha > 0:
                lam = float(mixup_rngs[m].beta(mixup_alpha, mixup_alpha))
                perm = torch.randperm(x.shape[0], generator=perm_generators[m]).to(device)
                x = lam * x + (1.0 - lam) * x[perm]
                y_b = y[perm]
            else:
                lam, y_b = 1.0, y
            xs.append(x)
            ys.append(y)
            ybs.append(y_b)
            lams.append(lam)
        b = xs[0].shape[0]
        width = stack.params[HEAD_WEIGHT].shape[-1]
        keep = torch.stack([dropout_keep(b, width, g) for g in dropout_generators]).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = stack.forward(torch.stack(xs), keep).float()
        losses = torch.stack(
            [mixup_loss(criterion, logits[m], ys[m], ybs[m], lams[m]) for m in range(k)]
        )
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # members share nothing: each gets exactly its own gradient
        optimizer.step()
        scheduler.step()
        totals += losses.detach() * b
        seen += b
    return [float(t) / max(seen, 1) for t in totals.cpu()]


def stacked_epoch(r: EpochRun, group: list[int], epoch: int) -> list[dict[str, Any]]:
    """``member_epoch`` for several members at once (training/stacked.py): same seeds, same
    draws, same checkpoints, one batched computation."""
    params = r.params
    loaded = [load_member(r, i, epoch) for i in group]
    stack = StackedMembers([m for m, _, _, _ in loaded])
    optimizer = AdamW(stack.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    scheduler = make_scheduler(optimizer, params.epochs, r.steps_per_epoch)
    if epoch > 1:
        optimizer.load_state_dict(stack_optimizer_states([o.state_dict() for _, o, _, _ in loaded]))
        scheduler.load_state_dict(loaded[0][2].state_dict())
    seeds = [member_seeds(params.seed, i, epoch) for i in group]
    losses = train_stacked_epoch(
        stack,
        [epoch_loader(r, s[1]) for s in seeds],
        r.criterion,
        optimizer,
        scheduler,
        r.device,
        normalize=params.normalize,
        mixup_alpha=params.mixup_alpha,
        mixup_rngs=[np.random.default_rng(s[2]) for s in seeds],
        perm_generators=[torch.Generator().manual_seed(s[2]) for s in seeds],
        dropout_generators=[torch.Generator().manual_seed(s[0]) for s in seeds],
        augment_cfg=params.augment_config(),
        augment_generators=[
            torch.Generator().manual_seed(augment_seed(params.seed, i, epoch)) for i in group
        ],
        should_stop=r.should_stop,
        amp=r.amp,
    )
    opt_state = optimizer.state_dict()
    lr = float(optimizer.param_groups[0]["lr"])
    records = []
    for m, i in enumerate(group):
        model, _, _, history = loaded[m]
        model.load_state_dict(stack.member_state(m))
        opt_m = member_optimizer_state(opt_state, m)
        record = save_member(
            r, i, epoch, model, opt_m, scheduler.state_dict(), lr, history, losses[m]
        )
        records.append(record)
    return records
