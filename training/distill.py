"""Distillation: one student network trained on an ensemble's averaged probabilities.

Why: twenty ResNet-34s vote where one smaller network can carry most of their knowledge, at a
fraction of the inference cost (issue 12). The student learns the teacher's soft targets
(cross-entropy against the ensemble's mean probabilities = KL to the teacher up to a constant),
on every cached feature the teacher can score, labelled or not: a library already enqueued is
free training signal. Everything else is the reference recipe's machinery, reused as it is
(training/loop.py's ``train_one_epoch``, seeds, optimiser and schedule: AdamW, cosine warm
restarts per batch, Mixup, which mixes soft targets exactly as it mixes one-hot ones, since
cross-entropy is linear in its target).

Resumable like the members: after each epoch the student, its optimizer and scheduler go to
``work_dir/student.pt`` (atomic), and the epoch's randomness is derived from (seed, epoch).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from training.checkpoint import atomic_save, check_or_write_params
from training.data import FeatureDataset, data_fingerprint, group_split
from training.loop import (
    EVAL_BATCH,
    TrainingStopped,
    evaluate,
    make_optimizer,
    make_scheduler,
    member_seeds,
    train_one_epoch,
)
from training.model import N_FRAMES, N_MELS, build_member
from training.params import TrainParams

STUDENT_FILE = "student.pt"


class SoftTargetDataset(Dataset[tuple[Tensor, Tensor]]):
    """(features (1, 299, 40) float32, the teacher's probabilities (C,) float32) per snippet."""

    def __init__(self, x: np.ndarray, soft: np.ndarray, indices: np.ndarray) -> None:
        self.x = x
        self.soft = np.asarray(soft, dtype=np.float32)
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        j = int(self.indices[i])
        return torch.from_numpy(self.x[j].astype(np.float32))[None], torch.from_numpy(self.soft[j])


@dataclass
class DistillResult:
    student: nn.Module
    history: list[dict[str, Any]]
    n_train: int
    n_val: int
    val_acc: float | None  # against the true labels where known, else None
    val_agreement: float | None  # the student's verdicts equal to the teacher's


def distill(
    params: TrainParams,
    x: np.ndarray,
    soft: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str | None] | None,
    work_dir: Path,
    device: str | torch.device = "cpu",
    *,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    amp: bool = False,
) -> DistillResult:
    """Train one ``params.arch`` student on ``soft`` (N, C) teacher probabilities of ``x``.

    ``labels`` (N,) are true class indices where known, -1 where not (unlabelled library
    snippets); validation holds out ``params.val_fraction`` of the groups and reports accuracy
    against the known labels and agreement with the teacher. ``params.epochs``, ``batch_size``,
    ``lr``, ``weight_decay``, ``mixup_alpha``, ``normalize``, ``seed`` apply as in training.
    """
    device = torch.device(device)
    soft = np.asarray(soft, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if x.ndim != 3 or x.shape[1:] != (N_FRAMES, N_MELS) or not len(x) == len(soft) == len(labels):
        raise ValueError(f"need x (N, {N_FRAMES}, {N_MELS}), soft (N, C), labels (N,)")
    n_classes = soft.shape[1]
    teacher_verdict = soft.argmax(axis=1)
    split_y = np.where(labels >= 0, labels, teacher_verdict)
    train_idx, val_idx = group_split(groups, split_y, params.val_fraction, params.seed)
    if len(train_idx) == 0:
        raise ValueError("no training samples left after the group split")
    work_dir.mkdir(parents=True, exist_ok=True)
    # A resume with other params or other data is refused (ValueError), as for the members.
    fingerprint = data_fingerprint(x, labels, groups, [str(c) for c in range(n_classes)])
    fingerprint["soft_sha256"] = hashlib.sha256(soft.tobytes()).hexdigest()
    check_or_write_params(work_dir, params, fingerprint)
    ckpt = work_dir / STUDENT_FILE

    torch.manual_seed(member_seeds(params.seed, 0, 0)[0])
    student = build_member(n_classes, params.arch).to(device)
    optimizer = make_optimizer(student, params)
    steps = math.ceil(len(train_idx) / params.batch_size)
    scheduler = make_scheduler(optimizer, params.epochs, steps)
    history: list[dict[str, Any]] = []
    start = 1
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        start = int(state["epoch"]) + 1

    criterion = nn.CrossEntropyLoss()  # probability targets: soft cross-entropy
    train_ds = SoftTargetDataset(x, soft, train_idx)
    val_true = [i for i in val_idx if labels[i] >= 0]
    val_loaders = {
        "acc": DataLoader(
            FeatureDataset(x, labels.clip(0), np.array(val_true, np.int64)), EVAL_BATCH
        ),
        "agreement": DataLoader(FeatureDataset(x, teacher_verdict, val_idx), EVAL_BATCH),
    }
    for epoch in range(start, params.epochs + 1):
        dropout_seed, shuffle_seed, mixup_seed = member_seeds(params.seed, 0, epoch)
        torch.manual_seed(dropout_seed)
        loader = DataLoader(
            train_ds,
            batch_size=params.batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(shuffle_seed),
        )
        try:
            loss = train_one_epoch(
                student,
                loader,
                criterion,
                optimizer,
                scheduler,
                device,
                normalize=params.normalize,
                mixup_alpha=params.mixup_alpha,
                mixup_rng=np.random.default_rng(mixup_seed),
                perm_generator=torch.Generator().manual_seed(mixup_seed),
                should_stop=should_stop,
                amp=amp,
            )
        except TrainingStopped:
            raise TrainingStopped(epoch - 1, params.epochs) from None
        record: dict[str, Any] = {"epoch": epoch, "epochs": params.epochs, "train_loss": loss}
        for key, val_loader in val_loaders.items():
            record[f"val_{key}"] = evaluate(student, val_loader, device, params.normalize)["acc"]
        history.append(record)
        state = {
            "model": student.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "history": history,
            "params": params.to_dict(),
        }
        atomic_save(state, ckpt)
        if progress is not None:
            progress(dict(record))
    last = history[-1] if history else {}
    return DistillResult(
        student=student.eval(),
        history=history,
        n_train=len(train_idx),
        n_val=len(val_idx),
        val_acc=last.get("val_acc"),
        val_agreement=last.get("val_agreement"),
    )
