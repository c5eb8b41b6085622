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

This module chooses how the members are trained and finishes the run; the member-epoch itself
and what every strategy shares live in training/loop.py (one at a time), training/stacked.py
(several in one batched computation) and training/parallel.py (one process each, CPU). The
shared names stay importable from here.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.calibration import calibrate, expected_calibration_error, fit_ensemble_temperature
from training.checkpoint import check_or_write_params, checkpoint_epoch, load_checkpoint
from training.data import (
    GROUP_SEP,
    FeatureDataset,
    _parts,
    class_weights,
    data_fingerprint,
    group_split,
)
from training.ensemble import Ensemble, native_bf16, save_members
from training.loop import (  # re-exported: the shared loop's names stay importable from here
    EVAL_BATCH,
    EpochRun,
    TrainingStopped,
    augment_seed,
    evaluate,
    make_criterion,
    make_optimizer,
    make_scheduler,
    member_epoch,
    member_seeds,
    mixup_loss,
    predict_logits,
    train_one_epoch,
)
from training.metrics import accuracy, confusion_matrix, macro_f1
from training.mixing import with_mixtures
from training.model import N_FRAMES, N_MELS, build_member
from training.parallel import MemberProcesses
from training.params import DEFAULT_PRESET, PRESETS, TrainParams, preset_params
from training.stacked import stacked_epoch
from training.voice_head import fit_voice_head

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PRESET",
    "EVAL_BATCH",
    "PRESETS",
    "EpochRun",
    "TrainParams",
    "TrainResult",
    "TrainingStopped",
    "augment_seed",
    "evaluate",
    "make_criterion",
    "make_optimizer",
    "make_scheduler",
    "member_seeds",
    "mixup_loss",
    "predict_logits",
    "preset_params",
    "run",
    "train_one_epoch",
]

ENSEMBLE_DIR = "ensemble"


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
    # the voice head, when one was fitted: its fusion weight, and the fused validation scores
    voice: dict[str, Any] | None = None

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
            **({"voice": self.voice} if self.voice else {}),
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
    voice: np.ndarray | None = None,
    val_groups: Collection[str] | None = None,
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
    ``voice`` (N, D): each sample's voice features (pipeline/voice.py); when given, a voice head
    is fitted after the members (training/voice_head.py: on the training singers, its strength
    and fusion weight on the validation ones) and saved with them; ``meta["voice"]`` should say
    which features (version, config). It is not part of the data fingerprint: the members'
    checkpoints do not depend on it, so a run resumes with or without it.
    ``val_groups``: the validation singers, given instead of ``group_split``'s choice (fold-wise
    members, bench/voice_probe.py ``--folds``); see ``explicit_split``. Part of the run's data
    identity, so a resume with other validation singers is refused.
    Raises ValueError if work_dir holds a run with other params or other data.
    """
    params.validate()
    if voice is not None and len(voice) != len(y):
        raise ValueError(f"{len(voice)} voice feature rows for {len(y)} samples")
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

    if val_groups is None:
        train_idx, val_idx = group_split(groups, y, params.val_fraction, params.seed)
    else:
        train_idx, val_idx = explicit_split(groups, len(y), val_groups)
    if len(train_idx) == 0:
        raise ValueError("no training samples left after the group split")
    work_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(x, y, groups, classes)
    if val_groups is not None:
        fingerprint["val_groups"] = sorted(set(val_groups))
    check_or_write_params(work_dir, params, fingerprint)
    y_labelled = y  # the voice head and the finish see the labelled samples only
    if params.mix_multi:  # two-voice examples on the training side (validation stays real)
        x, y, train_idx = with_mixtures(
            x, y, groups, classes, train_idx, params.mix_multi, params.seed
        )

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
                records = [member_epoch(shared, group[0], epoch)]
            else:
                records = stacked_epoch(shared, group, epoch)
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
    labelled_idx = train_idx[train_idx < len(y_labelled)]
    return _finish(
        params, work_dir, device, classes, weights, val_loader, labelled_idx, y_labelled, meta,
        voice,
    )  # fmt: skip


def explicit_split(
    groups: Sequence[str | None] | None, n: int, val_groups: Collection[str]
) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) for given validation singers (``a+b`` names both): a sample is
    validation if all its singers are, training if none is, and dropped otherwise, as in
    ``group_split`` (a duet straddling the split would leak a voice)."""
    val = {p.strip() for g in val_groups for p in g.split(GROUP_SEP) if p.strip()}
    parts = _parts(groups, n)
    val_idx = np.array([i for i, p in enumerate(parts) if p <= val], dtype=np.int64)
    train_idx = np.array([i for i, p in enumerate(parts) if not p & val], dtype=np.int64)
    return train_idx, val_idx


def default_stack(device: str | torch.device, members: int) -> int:
    """How many members to train at once when the caller does not say: all of them on a GPU
    (one batch of 32 snippets leaves a card mostly idle), one at a time on the CPU, where the
    stacked convolutions are no faster (bench ``training``, docs/BENCHMARKS.md)."""
    return members if torch.device(device).type == "cuda" else 1


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
    voice: np.ndarray | None = None,
) -> TrainResult:
    """Load the final members, score validation as an ensemble, save it as safetensors (with
    the voice head fitted on ``voice``, when given)."""
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
    head, voice_info = None, None
    if voice is not None:
        val_idx = val_loader.dataset.indices
        head = fit_voice_head(
            voice[train_idx],
            y[train_idx],
            len(classes),
            voice[val_idx] if n_val else None,
            yv if n_val else None,
            calibrate(mean, temperature) if n_val else None,
        )
        voice_info = {
            "fusion_weight": head.fusion_weight,
            "l2": head.l2,
            "temperature": head.temperature,
        }
        if n_val:
            fused = head.fuse(
                torch.from_numpy(calibrate(mean, temperature)).float(),
                torch.from_numpy(np.asarray(voice[val_idx], dtype=np.float32)),
            )
            fpred = fused.argmax(1).numpy()
            voice_info["val_acc"] = accuracy(yv, fpred)
            voice_info["val_macro_f1"] = macro_f1(yv, fpred, len(classes))
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
        voice=voice_info,
    )
    saved_meta = {
        **(meta or {}),
        "classes": list(classes),
        "arch": params.arch,
        "normalize": params.normalize,
        "train_params": params.to_dict(),
        "metrics": result.metrics(),
        "temperature": temperature,
    }
    saved_meta.pop("voice", None)
    if head is not None:  # the head first: a meta.json naming a head always has its file
        result.ensemble_dir.mkdir(parents=True, exist_ok=True)
        head.save(result.ensemble_dir)
        saved_meta["voice"] = {**(meta or {}).get("voice", {}), **(voice_info or {})}
    save_members(result.ensemble_dir, ens.members, saved_meta)
    log.info("ensemble val acc %s (members %s)", ens_acc, member_acc)
    return result
