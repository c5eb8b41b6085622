"""What every training strategy shares: one member-epoch's inputs and steps.

Three strategies train the members of a run (``training.train.run`` chooses): one at a time
(``member_epoch`` here), several stacked in one batched computation (training/stacked.py), and
one process per member on the CPU (training/parallel.py, which runs ``member_epoch`` in each
child). They all take an ``EpochRun``, seed each member-epoch with ``member_seeds`` /
``augment_seed``, build the optimiser, schedule and class-balanced criterion with the factories
below, compute Mixup's loss with ``mixup_loss``, stop with ``TrainingStopped`` and checkpoint with
``save_member``, so they cannot drift apart. This module imports no strategy: no import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LRScheduler
from torch.utils.data import DataLoader

from training.augment import AugmentConfig, augment
from training.checkpoint import atomic_save, checkpoint_path, load_checkpoint
from training.data import FeatureDataset
from training.metrics import accuracy
from training.model import build_member, prepare_input
from training.params import TrainParams

EVAL_BATCH = 64


class TrainingStopped(Exception):
    """``should_stop()`` returned True. Every finished member-epoch is checkpointed; calling
    ``run`` again with the same work_dir and params resumes. The member-epoch in flight when the
    stop came is discarded and redone on resume (its randomness is derived, not saved)."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"training stopped after {done} of {total} member-epochs")
        self.done = done
        self.total = total

    def __reduce__(self) -> tuple[type, tuple[int, int]]:  # crosses process boundaries intact
        return (type(self), (self.done, self.total))


def member_seeds(seed: int, member: int, epoch: int) -> tuple[int, int, int]:
    """(dropout, shuffle, mixup) seeds of one member-epoch; epoch 0 is the initialisation."""
    s = np.random.SeedSequence([seed + member, epoch]).generate_state(3)
    return int(s[0]), int(s[1]), int(s[2])


def augment_seed(seed: int, member: int, epoch: int) -> int:
    """The augmentation seed of one member-epoch: its own stream, so switching augmentation on
    or off leaves the shuffle, Mixup and dropout draws (``member_seeds``) unchanged."""
    return int(np.random.SeedSequence([seed + member, epoch], spawn_key=(1,)).generate_state(1)[0])


def make_optimizer(model: nn.Module, params: TrainParams) -> AdamW:
    return AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)


def make_criterion(
    weights: np.ndarray, params: TrainParams, device: str | torch.device = "cpu"
) -> nn.CrossEntropyLoss:
    """Class-balanced CE ((C,) ``weights``), with ``params.label_smoothing`` (0 = the reference):
    the target puts 1 - s + s/C on the label and s/C on every class. Mixup mixes two such
    losses (``mixup_loss``), so smoothing, weights and Mixup compose."""
    return nn.CrossEntropyLoss(
        weight=torch.as_tensor(weights, dtype=torch.float32, device=device),
        label_smoothing=params.label_smoothing,
    )


def make_scheduler(optimizer: Optimizer, epochs: int, steps_per_epoch: int) -> LRScheduler:
    """Cosine with warm restarts, stepped per batch; the first cycle spans half the run."""
    return CosineAnnealingWarmRestarts(optimizer, T_0=max(1, epochs * steps_per_epoch // 2))


def mixup_loss(
    criterion: nn.Module, logits: Tensor, y_a: Tensor, y_b: Tensor, lam: float
) -> Tensor:
    """Mixup's loss for inputs ``lam * x_a + (1 - lam) * x_b``; plain CE on y_a when lam = 1."""
    return lam * criterion(logits, y_a) + (1.0 - lam) * criterion(logits, y_b)


@dataclass(frozen=True)
class EpochRun:
    """What every member-epoch of one run shares, built once by ``run`` (or by each training
    process, training/parallel.py) and passed whole: the one-member, stacked and parallel paths
    take the same inputs and cannot drift apart."""

    params: TrainParams
    work_dir: Path
    device: torch.device
    train_ds: FeatureDataset
    val_loader: DataLoader
    criterion: nn.Module
    n_classes: int
    steps_per_epoch: int
    should_stop: Callable[[], bool] | None = None
    amp: bool = False  # bf16 autocast of the forward passes
    fence: Callable[[], None] | None = None  # refuses a checkpoint write by raising

    @property
    def pin(self) -> bool:
        return self.device.type == "cuda"


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    criterion: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler,
    device: torch.device,
    *,
    normalize: str = "none",
    mixup_alpha: float = 0.4,
    mixup_rng: np.random.Generator | None = None,
    perm_generator: torch.Generator | None = None,
    augment_cfg: AugmentConfig | None = None,
    augment_generator: torch.Generator | None = None,
    should_stop: Callable[[], bool] | None = None,
    amp: bool = False,
) -> float:
    """One pass over ``loader`` ((B, 1, 299, 40) features, (B,) labels); returns the mean loss.

    ``mixup_rng`` draws lam, ``perm_generator`` (a CPU generator) the partner permutation;
    ``augment_cfg`` (None or identity = none, the reference) is applied to each batch in dB,
    before input normalisation and Mixup, with draws from ``augment_generator`` (a CPU
    generator). All seeded by the caller so the epoch is reproducible. ``should_stop`` is
    polled before each batch and raises ``TrainingStopped`` (the partial epoch is thrown away by
    the caller). ``amp``: the forward pass in bf16 autocast (weights, gradients and AdamW stay
    float32; bf16 needs no loss scaling).
    """
    model.train()
    mixup_rng = mixup_rng if mixup_rng is not None else np.random.default_rng()
    aug = augment_cfg if augment_cfg is not None and not augment_cfg.is_identity else None
    if aug is not None and augment_generator is None:
        augment_generator = torch.Generator()
        augment_generator.seed()  # unseeded, like mixup_rng's default
    total = torch.zeros((), device=device)
    seen = 0
    for x, y in loader:
        if should_stop is not None and should_stop():
            raise TrainingStopped(0, 0)
        x = x.to(device, non_blocking=True)
        if aug is not None:  # in dB, before normalisation: gain and masks are defined there
            x = augment(prepare_input(x, "none"), aug, augment_generator)
        x = prepare_input(x, normalize)
        y = y.to(device, non_blocking=True)
        if mixup_alpha > 0:
            lam = float(mixup_rng.beta(mixup_alpha, mixup_alpha))
            perm = torch.randperm(x.shape[0], generator=perm_generator).to(device)
            x = lam * x + (1.0 - lam) * x[perm]
            y_b = y[perm]
        else:
            lam, y_b = 1.0, y
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = mixup_loss(criterion, logits.float(), y, y_b, lam)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach() * x.shape[0]
        seen += x.shape[0]
    return float(total.item()) / max(seen, 1)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    normalize: str = "none",
    amp: bool = False,
) -> tuple[Tensor, Tensor]:
    """(N, C) float32 logits and (N,) labels on CPU, in eval mode (bf16 autocast if ``amp``)."""
    model.eval()
    outs, labels = [], []
    for x, y in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(prepare_input(x.to(device), normalize))
        outs.append(logits.float().cpu())
        labels.append(y)
    if not outs:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.int64)
    return torch.cat(outs), torch.cat(labels)


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    normalize: str = "none",
    amp: bool = False,
) -> dict[str, float | None]:
    """Accuracy and plain (unweighted) CE of one member; None for both on an empty loader."""
    logits, y = predict_logits(model, loader, device, normalize, amp)
    if len(y) == 0:
        return {"acc": None, "loss": None}
    return {
        "acc": accuracy(y.numpy(), logits.argmax(1).numpy()),
        "loss": float(nn.functional.cross_entropy(logits, y)),
    }


def load_member(
    r: EpochRun, i: int, epoch: int
) -> tuple[nn.Module, AdamW, LRScheduler, list[dict[str, Any]]]:
    """Member i as it is before its epoch ``epoch``: fresh (seeded) for epoch 1, else from its
    checkpoint; with its optimizer, scheduler and history."""
    params = r.params
    if epoch == 1:
        torch.manual_seed(member_seeds(params.seed, i, 0)[0])
    model = build_member(r.n_classes, params.arch).to(r.device)
    optimizer = make_optimizer(model, params)
    scheduler = make_scheduler(optimizer, params.epochs, r.steps_per_epoch)
    history: list[dict[str, Any]] = []
    if epoch > 1:
        ckpt = load_checkpoint(r.work_dir, i, r.device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history = list(ckpt["history"])
    return model, optimizer, scheduler, history


def epoch_loader(r: EpochRun, shuffle_seed: int) -> DataLoader:
    return DataLoader(
        r.train_ds,
        batch_size=r.params.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(shuffle_seed),
        pin_memory=r.pin,
    )


def save_member(
    r: EpochRun,
    i: int,
    epoch: int,
    model: nn.Module,
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    lr: float,
    history: list[dict[str, Any]],
    train_loss: float,
) -> dict[str, Any]:
    """Validate member i after its epoch and checkpoint it (atomic); returns the epoch record."""
    ev = evaluate(model, r.val_loader, r.device, r.params.normalize, r.amp)
    record = {
        "member": i,
        "epoch": epoch,
        "train_loss": train_loss,
        "val_acc": ev["acc"],
        "val_loss": ev["loss"],
        "lr": lr,
        "bf16": r.amp,
    }
    history.append(record)
    atomic_save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer_state,
            "scheduler": scheduler_state,
            "epoch": epoch,
            "member": i,
            "history": history,
            "params": r.params.to_dict(),
        },
        checkpoint_path(r.work_dir, i),
        fence=r.fence,
    )
    return dict(record)


def member_epoch(r: EpochRun, i: int, epoch: int) -> dict[str, Any]:
    """Train member i for its epoch ``epoch`` (1-based) from its checkpoint, then checkpoint it.

    The uninterrupted run also reloads from disk, so it takes exactly the path a resumed run
    takes; and only one member's optimizer state is in memory at a time.
    """
    params = r.params
    model, optimizer, scheduler, history = load_member(r, i, epoch)
    dropout_seed, shuffle_seed, mixup_seed = member_seeds(params.seed, i, epoch)
    torch.manual_seed(dropout_seed)  # global RNG: dropout (and CUDA's, on a GPU)
    train_loss = train_one_epoch(
        model,
        epoch_loader(r, shuffle_seed),
        r.criterion,
        optimizer,
        scheduler,
        r.device,
        normalize=params.normalize,
        mixup_alpha=params.mixup_alpha,
        mixup_rng=np.random.default_rng(mixup_seed),
        perm_generator=torch.Generator().manual_seed(mixup_seed),
        augment_cfg=params.augment_config(),
        augment_generator=torch.Generator().manual_seed(augment_seed(params.seed, i, epoch)),
        should_stop=r.should_stop,
        amp=r.amp,
    )
    lr = float(optimizer.param_groups[0]["lr"])
    return save_member(
        r, i, epoch, model, optimizer.state_dict(), scheduler.state_dict(), lr, history, train_loss
    )
