"""Loading an ensemble: random-initialised members then load_state_dict (the naive way) against
`load_ensemble` (members built on the meta device, weights assigned from safetensors)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from bench import fixtures
from bench.timing import measure, speedup
from training.ensemble import load_ensemble, member_file, save_members
from training.model import build_member


def run(quick: bool) -> dict[str, Any]:
    n, arch = (5, "resnet34") if quick else (20, "resnet34")
    with tempfile.TemporaryDirectory(prefix="bench-loading-") as tmp:
        folder = Path(tmp)
        meta = {"classes": fixtures.CLASSES, "arch": arch, "normalize": "none"}
        save_members(folder, fixtures.members(n, arch, seed=0), meta)

        def naive() -> list[torch.nn.Module]:
            out = []
            for i in range(n):
                m = build_member(len(fixtures.CLASSES), arch)
                m.load_state_dict(load_file(str(folder / member_file(i))))
                out.append(m)
            return out

        base = measure(naive, repeat=2, warmup=0)
        cand = measure(lambda: load_ensemble(folder, "cpu"), repeat=2, warmup=0)
        x = torch.randn(2, 1, 299, 40)
        a = torch.stack([torch.softmax(m.eval()(x), -1) for m in naive()]).mean(0)
        b = load_ensemble(folder, "cpu").predict_proba(x)
    return {
        "config": {"members": n, "arch": arch},
        "rows": [
            {"way": "init + load_state_dict", **base.as_dict()},
            {"way": "load_ensemble (meta device)", **cand.as_dict()},
        ],
        "ratios": {"load_ensemble_vs_naive": speedup(base.best, cand.best)},
        "notes": [f"max |probability difference| {float((a - b).abs().max()):.2e}"],
    }
