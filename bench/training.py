"""Several members trained at once (stacked, one vmapped computation) against one at a time.

Both modes run ``training.train.run`` on the same features, params and seeds (same data order,
Mixup and dropout draws per member); only ``stack`` differs. The figure is training samples per
second over all members (members x epochs x training snippets / wall time), and how far the
stacked weights ended from the sequential ones (float rounding only, see training/stacked.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.timing import once, peak_rss_mb, speedup
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


def run(quick: bool) -> dict[str, Any]:
    n, members, arch, epochs = SIZES[quick]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = TrainParams(members=members, epochs=epochs, arch=arch, batch_size=32, val_fraction=0.2)
    x, y, g = _features(n)
    rows: list[dict[str, Any]] = []
    walls: dict[int, float] = {}
    weights: dict[int, list[dict[str, torch.Tensor]]] = {}
    n_train = 0
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        for k in (1, members):
            work = Path(tmp) / f"stack{k}"
            result, wall, cpu = once(
                lambda work=work, k=k: train_run(
                    params, x, y, g, CLASSES, work, device=device, stack=k, show_progress=False
                )
            )
            n_train = result.n_train
            walls[k] = wall
            weights[k] = _final_weights(work, members)
            samples = members * epochs * n_train
            rows.append(
                {
                    "mode": "one at a time" if k == 1 else f"stacked x{k}",
                    "stack": k,
                    "wall_s": round(wall, 2),
                    "cpu_s": round(cpu, 2),
                    "samples_per_s": round(samples / wall, 2),
                    "ensemble_val_acc": result.ensemble_val_acc,
                }
            )
    diff = max(
        float((a[key].double() - b[key].double()).abs().max())
        for a, b in zip(weights[1], weights[members], strict=True)
        for key in a
    )
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
        "ratios": {f"stacked_x{members}_vs_one_at_a_time": speedup(walls[1], walls[members])},
        "notes": [
            f"max abs weight difference, stacked vs one at a time: {diff:.2e} (rounding only)",
            "auto (SCORER_TRAIN_STACK=0) stacks all members on CUDA, none on the CPU",
        ],
    }
