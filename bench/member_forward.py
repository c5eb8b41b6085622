"""One member's forward pass: the plain module against the usual speed-ups, same weights, same
input. Which of channels_last, TorchScript freezing and ``torch.compile`` pays off here decides
what the ensemble uses on this device (keep only what wins). bf16 autocast is measured where the
hardware runs it natively (a GPU, or a CPU with AVX512-BF16/AMX: ``native_bf16``), which is
where the ensemble uses it by default."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch

from bench import fixtures
from bench.timing import measure, speedup
from training.ensemble import native_bf16


def _variants(
    model: torch.nn.Module, x: torch.Tensor, cuda: bool, quick: bool
) -> dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]]:
    out: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]] = {
        "plain": (model, x)
    }
    nhwc = _clone(model).to(memory_format=torch.channels_last)
    out["channels_last"] = (nhwc, x.contiguous(memory_format=torch.channels_last))
    with torch.inference_mode():
        out["jit_freeze"] = (torch.jit.freeze(torch.jit.trace(_clone(model), x)), x)
    if not quick:
        out["torch_compile"] = (torch.compile(_clone(model)), x)
    if cuda:

        def bf16_nhwc(inp: torch.Tensor, m: torch.nn.Module = nhwc) -> torch.Tensor:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return m(inp)

        out["channels_last_bf16"] = (bf16_nhwc, x.contiguous(memory_format=torch.channels_last))
    elif native_bf16("cpu"):

        def bf16(inp: torch.Tensor, m: torch.nn.Module = model) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(inp)

        out["bf16"] = (bf16, x)
    return out


def _clone(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).eval()


def run(quick: bool) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    arch, batch = ("resnet18", 32) if quick else ("resnet34", 64)
    model = fixtures.members(1, arch, seed=0)[0].to(device).eval()
    x = (torch.randn(batch, 1, 299, 40, generator=torch.Generator().manual_seed(0)) * 20 - 60).to(
        device
    )
    sync = torch.cuda.synchronize if cuda else None
    rows: list[dict[str, Any]] = []
    base_s = None
    with torch.inference_mode():
        want = model(x).float()
        for name, (fn, inp) in _variants(model, x, cuda, quick).items():
            t0 = time.perf_counter()
            got = fn(inp).float()  # first call: tracing / compiling / kernel selection
            first_s = time.perf_counter() - t0
            t = measure(lambda fn=fn, inp=inp: fn(inp), repeat=3, warmup=1, sync=sync)
            base_s = base_s or t.best
            rows.append(
                {
                    "variant": name,
                    "first_call_s": round(first_s, 2),
                    **t.as_dict(),
                    "windows_per_s": round(batch / t.best, 1),
                    "speedup_vs_plain": speedup(base_s, t.best),
                    "max_abs_diff_logits": float((got - want).abs().max()),
                    "max_rel_diff_logits": float((got - want).abs().max() / want.abs().max()),
                }
            )
    return {
        "config": {"arch": arch, "batch": batch, "device": device,
                   "torch_threads": torch.get_num_threads()},
        "rows": rows,
        "ratios": {f"{r['variant']}_vs_plain": r["speedup_vs_plain"] for r in rows[1:]},
        "notes": ["keep a variant only where it wins; torch_compile runs in full mode only"],
    }  # fmt: skip
