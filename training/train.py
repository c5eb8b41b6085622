"""Training an ensemble: the reference recipe, resumable member-epoch by member-epoch.

Recipe (the reference, kept exactly): class-balanced CrossEntropyLoss; AdamW lr 3e-4, weight decay
1e-5; batch 32; 20 epochs; CosineAnnealingWarmRestarts with T_0 = half of all steps, stepped every
batch; Mixup (one lam ~ Beta(a, a) per batch, partner = the batch permuted). Member i is seeded
with seed + i. ``TrainParams()`` is exactly this recipe (``PRESETS["reference"]``); the knobs of
the accuracy experiments (label smoothing, label-preserving augmentation, see training/augment.py)
default to off and are switched on by a preset (``PRESETS["augmented"]``) or one by one. A recipe
becomes the default only after it beats the reference on held-out singers.

Order is epoch-major (for epoch: for member) so all members advance together and a job stopped
at any point has a usable, evenly trained ensemble so far. After each member-epoch the member's
model, optimizer and scheduler state go to ``work_dir/member_XX.pt`` (atomic replace). All
randomness of member i's epoch e (shuffle, mixup, dropout, augmentation) is derived from
(seed + i, e), so a resumed run needs no saved RNG state and ends with the same weights as an
uninterrupted one (bit-identical on CPU).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import CosineAnnealingWarmRestarts, LRScheduler
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.augment import AugmentConfig, augment
from training.calibration import calibrate, expected_calibration_error, fit_ensemble_temperature
from training.checkpoint import (
    atomic_save,
    check_or_write_params,
    checkpoint_epoch,
    checkpoint_path,
    load_checkpoint,
)
from training.data import FeatureDataset, class_weights, data_fingerprint, group_split
from training.ensemble import Ensemble, native_bf16, save_members
from training.metrics import accuracy, confusion_matrix, macro_f1
from training.model import N_FRAMES, N_MELS, build_member, prepare_input
from training.parallel import MemberProcesses
from training.params import DEFAULT_PRESET, PRESETS, TrainParams, preset_params
from training.stacked import (
    StackedMembers,
    member_optimizer_state,
    stack_optimizer_states,
    train_stacked_epoch,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "TrainParams",
    "TrainResult",
    "TrainingStopped",
    "preset_params",
    "run",
]

ENSEMBLE_DIR = "ensemble"
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


@dataclass
class TrainResult:
    """What a finished run produced. Accuracies are None when there is no validation set."""

    classes: list[str]
    member_val_acc: list[float | None]
    ensemble_val_acc: float | None
    ensemble_val_macro_f1: float | None
    confusion: list[list[int]]  # rows true class, columns predicted, on validation
    history: list[dict[str, Any]]  # one entry per member-epoch, ordered (epoch, member)
    class_weights: list[float]
    n_train: int
    n_val: int
    n_dropped: int
    ensemble_dir: Path
    members: list[nn.Module] = field(repr=False)
    # temperature scaling fitted on validation (1.0 without one); ECE of the ensemble before/after
    temperature: float = 1.0
    val_ece: float | None = None
    val_ece_calibrated: float | None = None

    def metrics(self) -> dict[str, Any]:
        """The JSON-serialisable part, for a model_versions row or meta.json."""
        return {
            "member_val_acc": self.member_val_acc,
            "ensemble_val_acc": self.ensemble_val_acc,
            "ensemble_val_macro_f1": self.ensemble_val_macro_f1,
            "confusion": self.confusion,
            "class_weights": self.class_weights,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_dropped": self.n_dropped,
            "temperature": self.temperature,
            "val_ece": self.val_ece,
            "val_ece_calibrated": self.val_ece_calibrated,
        }


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


def run(
    params: TrainParams,
    x: np.ndarray,
    y: np.ndarray,
    groups: Sequence[str | None] | None,
    classes: Sequence[str],
    work_dir: Path,
    device: str | torch.device = "cpu",
    progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    meta: dict[str, Any] | None = None,
    show_progress: bool | None = None,
    stack: int | None = None,
    processes: int = 1,
    amp: bool | None = False,
    fence: Callable[[], None] | None = None,
) -> TrainResult:
    """Train (or resume training) an ensemble on features ``x`` (N, 299, 40) float16.

    ``y`` (N,) int indices into ``classes``; ``groups`` singer names for the split (see
    ``group_split``). ``progress(record)`` is called after each member-epoch with member, epoch
    (1-based), epochs, members, train_loss, val_acc, val_loss, fraction_done. ``should_stop`` is
    polled between batches; when it returns True, ``TrainingStopped`` is raised. ``meta`` (e.g.
    frontend parameters and version) is stored with the saved ensemble in work_dir/ensemble.
    ``show_progress``: tqdm bar on stderr; None = only on a TTY. ``stack``: members trained at
    once in one batched computation (training/stacked.py); None = ``default_stack(device,
    members)``. ``processes``: on the CPU (and unstacked), members trained in parallel, one
    process each (training/parallel.py). ``amp``: forward passes in bf16 autocast (float32 by
    default: the reference); None = where the hardware runs bf16 natively (``native_bf16``: a
    GPU, or a CPU with AVX512-BF16/AMX). It is not part of the params: a run may be resumed with
    it on or off. ``fence`` runs before each checkpoint replaces the last and raises to refuse
    it (a job's claim check; not in the member processes, whose parent polls ``should_stop``).
    Raises ValueError if work_dir holds a run with other params or other data.
    """
    params.validate()
    device = torch.device(device)
    work_dir = Path(work_dir)
    y = np.asarray(y, dtype=np.int64)
    n_classes = len(classes)
    if x.ndim != 3 or x.shape[1:] != (N_FRAMES, N_MELS) or len(x) != len(y):
        raise ValueError(f"need x (N, {N_FRAMES}, {N_MELS}) and y (N,), got {x.shape}, {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(
            f"labels must index classes (0..{n_classes - 1}), got {y.min()}..{y.max()}"
        )

    train_idx, val_idx = group_split(groups, y, params.val_fraction, params.seed)
    if len(train_idx) == 0:
        raise ValueError("no training samples left after the group split")
    work_dir.mkdir(parents=True, exist_ok=True)
    check_or_write_params(work_dir, params, data_fingerprint(x, y, groups, classes))

    weights = class_weights(y[train_idx], n_classes)
    pin = device.type == "cuda"
    val_loader = DataLoader(FeatureDataset(x, y, val_idx), batch_size=EVAL_BATCH, pin_memory=pin)
    steps_per_epoch = math.ceil(len(train_idx) / params.batch_size)
    amp = native_bf16(device) if amp is None else amp
    shared = EpochRun(
        params=params,
        work_dir=work_dir,
        device=device,
        train_ds=FeatureDataset(x, y, train_idx),
        val_loader=val_loader,
        criterion=make_criterion(weights, params, device),
        n_classes=n_classes,
        steps_per_epoch=steps_per_epoch,
        should_stop=should_stop,
        amp=amp,
        fence=fence,
    )
    log.info(
        "training %d x %s on %d samples (%d validation, %d dropped), %d steps/epoch, %s%s",
        params.members,
        params.arch,
        len(train_idx),
        len(val_idx),
        len(y) - len(train_idx) - len(val_idx),
        steps_per_epoch,
        device,
        ", bf16 autocast" if amp else "",
    )

    done = [checkpoint_epoch(work_dir, i) for i in range(params.members)]
    total = params.members * params.epochs
    n_done = sum(done)
    k = max(1, min(stack or default_stack(device, params.members), params.members))
    n_procs = max(1, min(processes, params.members)) if device.type == "cpu" and k == 1 else 1
    pool = None
    if k > 1:
        log.info("training %d members at a time (stacked)", k)
    elif n_procs > 1:
        log.info("training %d members at a time (one process each)", n_procs)
        pool = MemberProcesses(
            n_procs, params, x, y, train_idx, val_idx, weights, n_classes, steps_per_epoch,
            work_dir, amp,
        )  # fmt: skip

    def epoch_records(epoch: int, pending: list[int]) -> Iterator[tuple[int, dict[str, Any]]]:
        """(member, record) of each pending member's epoch, in the chosen mode."""
        if pool is not None:
            yield from pool.run_epoch(pending, epoch, should_stop)
            return
        for start in range(0, len(pending), k):
            group = pending[start : start + k]
            if should_stop is not None and should_stop():
                raise TrainingStopped(0, 0)
            if len(group) == 1:
                records = [_member_epoch(shared, group[0], epoch)]
            else:
                records = _stacked_epoch(shared, group, epoch)
            yield from zip(group, records, strict=True)

    disable = None if show_progress is None else not show_progress
    try:
        with tqdm(
            total=total, initial=n_done, desc="member-epochs", file=sys.stderr, disable=disable
        ) as bar:
            for epoch in range(1, params.epochs + 1):
                # Epoch-major order keeps every member at epoch - 1 or epoch: the pending ones
                # are all at epoch - 1 and can be trained together.
                pending = [i for i in range(params.members) if done[i] < epoch]
                if pending and should_stop is not None and should_stop():
                    raise TrainingStopped(n_done, total)
                try:
                    for i, record in epoch_records(epoch, pending):
                        done[i] = epoch
                        n_done += 1
                        bar.update(1)
                        record.update(epochs=params.epochs, members=params.members)
                        record["fraction_done"] = n_done / total
                        log.info(
                            "member %d epoch %d/%d: train loss %.4f, val acc %s",
                            i,
                            epoch,
                            params.epochs,
                            record["train_loss"],
                            record["val_acc"],
                        )
                        if progress is not None:
                            progress(record)
                except TrainingStopped:
                    raise TrainingStopped(n_done, total) from None
    finally:
        if pool is not None:
            pool.close()
    meta = {**(meta or {}), "train_bf16": amp}  # provenance: how the weights were trained
    return _finish(params, work_dir, device, classes, weights, val_loader, train_idx, y, meta)


def default_stack(device: str | torch.device, members: int) -> int:
    """How many members to train at once when the caller does not say: all of them on a GPU
    (one batch of 32 snippets leaves a card mostly idle), one at a time on the CPU, where the
    stacked convolutions are no faster (bench ``training``, docs/BENCHMARKS.md)."""
    return members if torch.device(device).type == "cuda" else 1


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


def _load_member(
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


def _epoch_loader(r: EpochRun, shuffle_seed: int) -> DataLoader:
    return DataLoader(
        r.train_ds,
        batch_size=r.params.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(shuffle_seed),
        pin_memory=r.pin,
    )


def _save_member(
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


def _member_epoch(r: EpochRun, i: int, epoch: int) -> dict[str, Any]:
    """Train member i for its epoch ``epoch`` (1-based) from its checkpoint, then checkpoint it.

    The uninterrupted run also reloads from disk, so it takes exactly the path a resumed run
    takes; and only one member's optimizer state is in memory at a time.
    """
    params = r.params
    model, optimizer, scheduler, history = _load_member(r, i, epoch)
    dropout_seed, shuffle_seed, mixup_seed = member_seeds(params.seed, i, epoch)
    torch.manual_seed(dropout_seed)  # global RNG: dropout (and CUDA's, on a GPU)
    train_loss = train_one_epoch(
        model,
        _epoch_loader(r, shuffle_seed),
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
    return _save_member(
        r, i, epoch, model, optimizer.state_dict(), scheduler.state_dict(), lr, history, train_loss
    )


def _stacked_epoch(r: EpochRun, group: list[int], epoch: int) -> list[dict[str, Any]]:
    """``_member_epoch`` for several members at once (training/stacked.py): same seeds, same
    draws, same checkpoints, one batched computation."""
    params = r.params
    loaded = [_load_member(r, i, epoch) for i in group]
    stack = StackedMembers([m for m, _, _, _ in loaded])
    optimizer = AdamW(stack.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    scheduler = make_scheduler(optimizer, params.epochs, r.steps_per_epoch)
    if epoch > 1:
        optimizer.load_state_dict(stack_optimizer_states([o.state_dict() for _, o, _, _ in loaded]))
        scheduler.load_state_dict(loaded[0][2].state_dict())
    seeds = [member_seeds(params.seed, i, epoch) for i in group]
    losses = train_stacked_epoch(
        stack,
        [_epoch_loader(r, s[1]) for s in seeds],
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
        record = _save_member(
            r, i, epoch, model, opt_m, scheduler.state_dict(), lr, history, losses[m]
        )
        records.append(record)
    return records


def _finish(
    params: TrainParams,
    work_dir: Path,
    device: torch.device,
    classes: Sequence[str],
    weights: np.ndarray,
    val_loader: DataLoader,
    train_idx: np.ndarray,
    y: np.ndarray,
    meta: dict[str, Any] | None,
) -> TrainResult:
    """Load the final members, score validation as an ensemble, save it as safetensors."""
    members, history = [], []
    for i in range(params.members):
        ckpt = load_checkpoint(work_dir, i, device)
        m = build_member(len(classes), params.arch)
        m.load_state_dict(ckpt["model"])
        members.append(m)
        history.extend(ckpt["history"])
    history.sort(key=lambda r: (r["epoch"], r["member"]))
    ens = Ensemble(members, classes, normalize=params.normalize, device=device, mode="loop")
    probs, labels = [], []
    for xb, yb in val_loader:
        probs.append(ens.member_proba(xb).cpu())
        labels.append(yb)
    n_val = sum(len(b) for b in labels)
    cm = np.zeros((len(classes), len(classes)), dtype=np.int64)
    member_acc: list[float | None] = [None] * params.members
    ens_acc = ens_f1 = ece = ece_t = None
    temperature = 1.0
    if n_val:
        mp = torch.cat(probs, dim=1)  # (M, N_val, C)
        yv = torch.cat(labels).numpy()
        # Calibration only rescales the mean: accuracy and every argmax below are unchanged.
        mean = mp.mean(0).numpy()
        temperature = fit_ensemble_temperature(mean, yv)
        ece = expected_calibration_error(mean, yv)
        ece_t = expected_calibration_error(calibrate(mean, temperature), yv)
        pred = mp.mean(0).argmax(1).numpy()
        member_acc = [accuracy(yv, mp[k].argmax(1).numpy()) for k in range(len(members))]
        ens_acc = accuracy(yv, pred)
        ens_f1 = macro_f1(yv, pred, len(classes))
        cm = confusion_matrix(yv, pred, len(classes))
    result = TrainResult(
        classes=list(classes),
        member_val_acc=member_acc,
        ensemble_val_acc=ens_acc,
        ensemble_val_macro_f1=ens_f1,
        confusion=cm.tolist(),
        history=history,
        class_weights=[float(w) for w in weights],
        n_train=len(train_idx),
        n_val=n_val,
        n_dropped=len(y) - len(train_idx) - n_val,
        ensemble_dir=work_dir / ENSEMBLE_DIR,
        members=ens.members,
        temperature=temperature,
        val_ece=ece,
        val_ece_calibrated=ece_t,
    )
    save_members(
        result.ensemble_dir,
        ens.members,
        {
            **(meta or {}),
            "classes": list(classes),
            "arch": params.arch,
            "normalize": params.normalize,
            "train_params": params.to_dict(),
            "metrics": result.metrics(),
            "temperature": temperature,
        },
    )
    log.info("ensemble val acc %s (members %s)", ens_acc, member_acc)
    return result
