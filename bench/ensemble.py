"""Fused ensemble forward (stacked weights + vmap) against the member loop, same inputs.

docs/ARCHITECTURE.md chooses the mode per device by measurement; this is that measurement, and
it also checks that both modes give the same probabilities.
"""

from __future__ import annotations

from typing import Any

import torch

from bench import fixtures
from bench.timing import measure, peak_rss_mb, speedup
from training.ensemble import Ensemble, native_bf16


def _inputs(batch: int) -> torch.Tensor:
    """(B, 299, 40) float16 log-mel-like values in dB, as features arrive from the database."""
    g = torch.Generator().manual_seed(batch)
    return (torch.randn(batch, 299, 40, generator=g) * 20 - 60).half()


def run(quick: bool) -> dict[str, Any]:
    """Loop vs fused at batch 1, 32 (and 256 where it fits), float32, and bf16 autocast where
    the hardware runs it natively (CUDA, or a CPU with AVX512-BF16/AMX)."""
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    n, arch = (5, "resnet10") if quick else (20, "resnet34")
    batches = [1, 32] if quick else [1, 32, 256]
    members = fixtures.members(n, arch, seed=0)
    sync = torch.cuda.synchronize if cuda else None
    dtypes = ["float32", "bf16"] if native_bf16(device) else ["float32"]
    rows: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    notes: list[str] = []
    reference: dict[int, torch.Tensor] = {}  # float32 loop probabilities per batch size
    for dtype in dtypes:
        amp = dtype == "bf16"
        # per_snippet normalisation keeps random members' logits moderate, so the probabilities
        # are not all saturated at 0/1 and the equality check means something; speed is the same.
        common = {"device": device, "amp": amp, "normalize": "per_snippet"}
        loop = Ensemble(members, fixtures.CLASSES, mode="loop", **common)
        fused = Ensemble(members, fixtures.CLASSES, mode="fused", **common)
        for b in batches:
            if b == 256 and not cuda:
                # M=20 ResNet34 at 256 windows is ~4 TFLOP per forward: many minutes per mode on
                # 2 busy cores, and the fused activations alone need ~10 GB. Estimated instead.
                est = {r["mode"]: round(8 * r["best_s"], 1) for r in rows if r["batch"] == 32}
                notes.append(f"batch 256 skipped on CPU; 8 x batch 32 would be {est} s")
                continue
            x = _inputs(b)
            heavy = b * n * (4 if arch == "resnet34" else 2) > 2000 and not cuda
            reps, warm = (1, 0) if heavy else (3, 1)  # minutes per call: first-call costs are noise
            results: dict[str, torch.Tensor] = {}
            timings = {}
            for name, ens in (("loop", loop), ("fused", fused)):
                timings[name] = measure(
                    # member_logits is predict_proba without its (M, B, 4) softmax and mean
                    lambda ens=ens, x=x, out=results: out.__setitem__(
                        ens.mode, ens.member_logits(x)
                    ),
                    repeat=reps,
                    warmup=warm,
                    sync=sync,
                )
            logits_l, logits_f = results["loop"].float(), results["fused"].float()
            proba = {k: torch.softmax(v.float(), dim=-1).mean(dim=0) for k, v in results.items()}
            reference.setdefault(b, proba["loop"])
            diff = float((proba["loop"] - proba["fused"]).abs().max())
            rel = float((logits_l - logits_f).abs().max() / logits_l.abs().max())
            ratio = speedup(timings["loop"].best, timings["fused"].best)
            ratios[f"fused_vs_loop_{dtype}_b{b}"] = ratio
            if dtype != "float32":
                fp32_loop = next(
                    r for r in rows if r["batch"] == b and r["mode"] == "loop"
                )  # measured in the float32 pass
                ratios[f"loop_{dtype}_vs_loop_float32_b{b}"] = speedup(
                    fp32_loop["best_s"], timings["loop"].best
                )
            for name, t in timings.items():
                rows.append(
                    {
                        "dtype": dtype,
                        "batch": b,
                        "mode": name,
                        **t.as_dict(),
                        "windows_per_s": round(b / t.best, 2),
                        "speedup_vs_loop": ratio if name == "fused" else 1.0,
                        "max_abs_diff_proba_vs_loop": diff if name == "fused" else 0.0,
                        "max_rel_diff_logits_vs_loop": rel if name == "fused" else 0.0,
                        "max_abs_diff_proba_vs_fp32_loop": float(
                            (proba[name] - reference[b]).abs().max()
                        ),
                        "mean_top_proba": round(float(proba[name].max(dim=1).values.mean()), 3),
                    }
                )
        del loop, fused
    return {
        "config": {
            "members": n,
            "arch": arch,
            "device": device,
            "batches": batches,
            "process_peak_rss_mb": peak_rss_mb(),
        },
        "rows": rows,
        "ratios": ratios,
        "notes": notes,
    }
