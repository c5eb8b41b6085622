"""Throughput of the separation stage: batch 8 vs 1, torch threads 2 vs 1, T = 256 vs 512.

Each configuration runs in its own process, so torch's thread pool is set before first use and
the peak RSS (a process-wide high-water mark) belongs to that configuration alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench import fixtures
from bench.timing import speedup

# (name, T frames, max_batch, torch threads); the first is the baseline: scorer's CPU default.
CONFIGS = [
    ("T512_b1_t1", 512, 1, 1),
    ("T512_b8_t1", 512, 8, 1),
    ("T512_b1_t2", 512, 1, 2),
    ("T256_b1_t1", 256, 1, 1),
    ("T256_b8_t1", 256, 8, 1),
]


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs in the child: load, warm up on one clip, time separate_vocals over all clips."""
    import torch

    torch.set_num_threads(spec["threads"])
    from bench.timing import measure, once, peak_rss_mb, reset_peak_rss, rss_mb
    from pipeline import spleeter

    x = list(np.load(spec["clips"]))
    base_rss = rss_mb("VmHWM") or peak_rss_mb()
    dev = spec.get("device", "cpu")
    sync = torch.cuda.synchronize if dev == "cuda" else None
    sep, load_s, _ = once(lambda: spleeter.load_separator(dev, spec["frames"]))
    loaded_rss = rss_mb("VmHWM") or peak_rss_mb()
    spleeter.separate_vocals(sep, x[:1], dev, max_batch=1)  # warm-up: first-call allocations
    resting = rss_mb("VmRSS")
    # VmHWM, not getrusage: ru_maxrss survives exec and would report the parent's peak.
    process_peak = rss_mb("VmHWM") or peak_rss_mb()
    reset = reset_peak_rss()
    t = measure(
        lambda: spleeter.separate_vocals(sep, x, dev, max_batch=spec["batch"]),
        repeat=spec["repeat"],
        warmup=0,
        sync=sync,
    )
    return {
        "load_s": round(load_s, 3),
        "timing": t.as_dict(),
        "rss_before_load_mb": base_rss,
        "rss_loaded_mb": loaded_rss,
        "peak_rss_mb": max(process_peak, rss_mb("VmHWM") or 0.0),
        "rss_resting_mb": resting,
        "separation_peak_mb": rss_mb("VmHWM") if reset else None,
    }


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _extra(peak: float | None, resting: float | None) -> float | None:
    return round(peak - resting, 1) if peak is not None and resting is not None else None


def run(quick: bool) -> dict[str, Any]:
    """Per-clip wall and CPU time, snippets/s per core, and peak memory of each configuration."""
    n, repeat = (4, 1) if quick else (16, 2)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sep-") as tmp:
        path = Path(tmp) / "clips.npy"
        np.save(path, np.stack(fixtures.clips(n, seed=0)))
        configs = [(*c, "cpu") for c in CONFIGS]
        if _cuda():
            configs += [(f"cuda_T512_b{b}", 512, b, 1, "cuda") for b in (1, 8, 32)]
        for name, frames, batch, threads, device in configs:
            spec = {"clips": str(path), "frames": frames, "batch": batch, "threads": threads,
                    "device": device}  # fmt: skip
            spec["repeat"] = repeat
            proc = subprocess.run(
                [sys.executable, "-m", "bench.separation", json.dumps(spec)],
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"separation child {name} failed:\n{proc.stderr[-2000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            t = r["timing"]
            rows.append(
                {
                    "config": name,
                    "device": device,
                    "T": frames,
                    "max_batch": batch,
                    "threads": threads,
                    "wall_s_per_clip": round(t["best_s"] / n, 4),
                    "cpu_s_per_clip": round(t["best_cpu_s"] / n, 4),
                    "snippets_per_s": round(n / t["best_s"], 3),
                    "snippets_per_s_per_core": round(n / t["best_s"] / threads, 3),
                    "median_wall_s": t["median_s"],
                    "load_s": r["load_s"],
                    "peak_rss_mb": r["peak_rss_mb"],
                    "stage_peak_mb": r["separation_peak_mb"],
                    "stage_extra_mb": _extra(r["separation_peak_mb"], r["rss_resting_mb"]),
                }
            )
    by = {r["config"]: r for r in rows}

    def ratio(base: str, cand: str, key: str = "wall_s_per_clip") -> float:
        return speedup(by[base][key], by[cand][key])

    per_core = "snippets_per_s_per_core"
    gpu = {
        f"cuda_b{b}_vs_cpu_1_core": ratio("T512_b1_t1", f"cuda_T512_b{b}")
        for b in (1, 8, 32)
        if f"cuda_T512_b{b}" in by
    }
    return {
        "config": {"clips": n, "clip": "3 s stereo 44.1 kHz (pipeline/synth.py, seed 0)"},
        "rows": rows,
        "ratios": {
            "batch8_vs_batch1_T512": ratio("T512_b1_t1", "T512_b8_t1"),
            "batch8_vs_batch1_T256": ratio("T256_b1_t1", "T256_b8_t1"),
            "threads2_vs_threads1_wall": ratio("T512_b1_t1", "T512_b1_t2"),
            "threads2_vs_threads1_per_core": round(
                by["T512_b1_t2"][per_core] / by["T512_b1_t1"][per_core], 3
            ),
            "T256_vs_T512": ratio("T512_b1_t1", "T256_b1_t1"),
            "T256_vs_T512_cpu": ratio("T512_b1_t1", "T256_b1_t1", "cpu_s_per_clip"),
            **gpu,
        },
        "notes": [
            "speed-ups are on wall time per clip (best of runs); *_cpu on CPU time",
            "per core = snippets/s divided by the torch threads used",
            "peak_rss_mb: whole child process (VmHWM: imports, weight loading, separation);"
            " stage_peak_mb: RSS high-water during the timed separation alone (VmHWM reset"
            " after loading); stage_extra_mb: that minus the RSS at rest before it",
        ],
    }


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
