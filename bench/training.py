"""Several members trained at once against one at a time: stacked (one vmapped computation, the
GPU way) and, on the CPU, one process per core (1 thread each).

Every mode runs ``training.train.run`` on the same features, params and seeds (same data order,
Mixup and dropout draws per member); only ``stack`` / ``processes`` differ. The figure is
training samples per second over all members (members x epochs x training snippets / wall
time), and how far each mode's weights ended from one at a time's (float rounding only). These
run in float32; where the hardware runs bf16 natively (the default turns bf16 autocast on there,
``SCORER_TRAIN_BF16``), one more row trains one at a time in bf16.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.timing import once, peak_rss_mb, speedup
from training.ensemble import native_bf16
from training.train import TrainParams
from training.train import run as train_run

CLASSES = ["none", "male", "female", "multi"]

# quick / full: (snippets, members, arch, epochs)
SIZES: dict[bool, tuple[int, int, str, int]] = {
    True: (80, 4, "resnet10", 1),
    False: (240, 4, "resnet18", 1),
}


def _features(n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Learnable log-mel-like features: class c is louder in mel bands 10c..10c+8."""
    rng = np.random.default_rng(0)
    y = np.arange(n) % len(CLASSES)
    x = rng.normal(-60, 10, (n, 299, 40))
    for c in range(len(CLASSES)):
        x[y == c, :, 10 * c : 10 * c + 8] += 25
    return x.astype(np.float16), y, [f"s{i % 16}" for i in range(n)]


def _final_weights(work: Path, members: int) -> list[dict[str, torch.Tensor]]:
    return [
        torch.load(work / f"member_{i:02d}.pt", weights_only=True)["model"] for i in range(members)
    ]


def _key(name: str) -> str:
    return name.replace(",", "").replace(" ", "_")


def run(quick: bool) -> dict[str, Any]:
    n, members, arch, epochs = SIZES[quick]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = TrainParams(members=members, epochs=epochs, arch=arch, batch_size=32, val_fraction=0.2)
    x, y, g = _features(n)
    cores = os.cpu_count() or 1
    modes = [("one at a time", 1, 1, False), (f"stacked x{members}", members, 1, False)]
    if device == "cpu" and cores > 1:
        modes.append((f"{cores} processes x 1 thread", 1, cores, False))
    if native_bf16(device):
        modes.append(("one at a time, bf16", 1, 1, True))
    rows: list[dict[str, Any]] = []
    walls: dict[str, float] = {}
    weights: dict[str, list[dict[str, torch.Tensor]]] = {}
    n_train = 0
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for name, k, procs, amp in modes:
            work = Path(tmp) / f"s{k}p{procs}{'bf16' if amp else ''}"
            result, wall, cpu = once(
                lambda work=work, k=k, procs=procs, amp=amp: train_run(
                    params,
                    x,
                    y,
                    g,
                    CLASSES,
                    work,
                    device=device,
                    stack=k,
                    processes=procs,
                    show_progress=False,
                    amp=amp,
                )
            )
            n_train = result.n_train
            walls[name] = wall
            weights[name] = _final_weights(work, members)
            samples = members * epochs * n_train
            rows.append(
                {
                    "mode": name,
                    "stack": k,
                    "processes": procs,
                    "bf16": amp,
                    "wall_s": round(wall, 2),
                    "cpu_s_this_process": round(cpu, 2),
                    "samples_per_s": round(samples / wall, 2),
                    "ensemble_val_acc": result.ensemble_val_acc,
                }
            )
    base = modes[0][0]
    diffs = {
        name: max(
            float((a[key].double() - b[key].double()).abs().max())
            for a, b in zip(weights[base], weights[name], strict=True)
            for key in a
        )
        for name, _, _, amp in modes[1:]
        if not amp  # bf16 is not float rounding: its effect on accuracy is in docs/RESULTS.md
    }
    return {
        "config": {
            "snippets": n,
            "training_snippets": n_train,
            "members": members,
            "arch": arch,
            "epochs": epochs,
            "batch": 32,
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "process_peak_rss_mb": peak_rss_mb(),
        },
        "rows": rows,
        "ratios": {
            f"{_key(name)}_vs_one_at_a_time": speedup(walls[base], walls[name])
            for name, _, _, _ in modes[1:]
        },
        "notes": [
            *(
                f"max abs weight difference, {n} vs one at a time: {d:.2e}"
                for n, d in diffs.items()
            ),
            "defaults: all members stacked on CUDA; on the CPU one at a time "
            "(SCORER_TRAIN_PROCESSES=1); bf16 autocast where native (SCORER_TRAIN_BF16=auto)",
            "the processes row includes spawning them (~3 s of imports each)",
        ],
    }
