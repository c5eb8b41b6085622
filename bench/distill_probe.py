"""A student distilled from a GPU-trained teacher, measured on held-out singers, on the CPU.

    python -m bench.distill_probe --probs probs_reference.npz [--features .gpu/mir1k4.npz]
        [--arch resnet18] [--epochs 20] [--work DIR] [--transductive]

``probs_reference.npz`` is what ``bench/gpu_suite.sh`` brings back: every teacher member's
probabilities on the training and held-out snippets of the fixed mir1k4 split (the features
file of the same run). The student learns the members' mean on the training snippets (all of
them: the teacher's own validation singers included, labels unused), with its own 20 % of the
singers for validation; ``--transductive`` adds the teacher's probabilities on the held-out
snippets too (what ``scorer distill`` does with a library already enqueued: the truth is never
used, but the test snippets' features are). Prints teacher vs student on the held-out singers
and their inference cost per window. Resumable: the work dir keeps the student's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.gpu_suite import CLASSES, load_split, summary
from bench.timing import measure
from training.distill import distill
from training.model import build_member, prepare_input
from training.params import TrainParams


def cost(arch: str, members: int, batch: int = 32) -> float:
    """Seconds per window of ``members`` × ``arch`` in a loop, float32, on this CPU."""
    torch.manual_seed(0)
    nets = [build_member(len(CLASSES), arch).eval() for _ in range(members)]
    x = prepare_input(torch.randn(batch, 299, 40) * 20 - 60)

    @torch.no_grad()
    def step() -> None:
        for n in nets:
            n(x)

    return measure(step, repeat=3, warmup=1).best / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probs", type=Path, required=True)
    parser.add_argument("--features", type=Path, default=Path(".gpu/mir1k4.npz"))
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("bench/out/distill"))
    parser.add_argument("--transductive", action="store_true")
    args = parser.parse_args()
    train, test, _ = load_split(args.features)
    probs = np.load(args.probs)
    teacher_train = probs["train"].astype(np.float32).mean(axis=0)
    teacher_test = probs["test"].astype(np.float32)
    x, soft, labels, groups = train.x, teacher_train, train.y, list(train.groups)
    if args.transductive:
        x = np.concatenate([x, test.x])
        soft = np.concatenate([soft, teacher_test.mean(axis=0)])
        labels = np.concatenate([labels, np.full(len(test.y), -1)])
        groups += [f"library:{g}" for g in test.groups]
    params = TrainParams(members=1, epochs=args.epochs, arch=args.arch)
    work = args.work / f"{args.arch}_e{args.epochs}{'_trans' if args.transductive else ''}"
    t0 = time.monotonic()
    result = distill(
        params, x, soft, labels, groups, work, progress=lambda r: print(json.dumps(r), flush=True)
    )
    train_s = time.monotonic() - t0
    with torch.no_grad():
        chunks = [torch.from_numpy(test.x[i : i + 128]) for i in range(0, len(test.x), 128)]
        student_p = np.concatenate(
            [torch.softmax(result.student(prepare_input(c)), 1).numpy() for c in chunks]
        )
    teacher = summary(teacher_test, test.y, len(CLASSES))
    student = summary(student_p[None], test.y, len(CLASSES))
    agree = float(np.mean(student_p.argmax(1) == teacher_test.mean(0).argmax(1)))
    t_teacher = cost("resnet34", teacher_test.shape[0])
    t_student = cost(args.arch, 1)
    keys = ("accuracy", "macro_f1", "recall", "ece")
    print(
        json.dumps(
            {
                "student": {k: student[k] for k in keys},
                "teacher": {k: teacher[k] for k in keys},
                "agreement_with_teacher": agree,
                "student_train_s": round(train_s, 1),
                "n_train": result.n_train,
                "n_val": result.n_val,
                "val_acc": result.val_acc,
                "cpu_s_per_window": {"teacher": t_teacher, "student": t_student},
                "speedup": round(t_teacher / t_student, 1),
                "torch_threads": torch.get_num_threads(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
