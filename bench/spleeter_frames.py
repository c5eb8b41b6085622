"""What a shorter Spleeter segment (T = 256 or 192 frames instead of 512) costs in fidelity.

A 3 s snippet is ~130 STFT frames at 44.1 kHz; the official segment is T = 512, so ~3/4 of the
U-Net's work is on zero padding. A shorter T cuts that work, but the U-Net then sees other
padding, so its masks change. This case measures both sides on the same clips, T = 512 being the
baseline: separation time per clip (1 thread), the vocals' SDR against T = 512's vocals, and how
far the log-mel features move (dB, over values within 80 dB of each window's peak).

    python -m bench --only spleeter_frames            # seeded synthetic snippets
    python -m bench.spleeter_frames --labels test.csv --model DIR [--limit N]

The second form also runs a trained ensemble (DIR = a model version's folder under the model
dir) on features made at each T, so the accuracy cost on real labelled files is measured with
a model trained on T = 512 features.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import fixtures
from bench.timing import speedup
from pipeline.decode import Audio, decode, downmix
from pipeline.frontend import FrontendConfig
from pipeline.preprocess import mel_windows, spleeter_input
from pipeline.resample import resample
from pipeline.spleeter import SPLEETER_SAMPLE_RATE, load_separator, separate_vocals

FRAMES = (512, 256, 192)


def _sdr(ref: np.ndarray, est: np.ndarray) -> float:
    noise = float(np.sum((ref - est) ** 2))
    return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(ref**2)) / noise)


def _mel_diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(median, 99th percentile) |a - b| in dB over values within 80 dB of each window's peak."""
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    peak = a32.max(axis=(1, 2), keepdims=True)
    d = np.abs(a32 - b32)[a32 > peak - 80]
    return float(np.median(d)), float(np.percentile(d, 99))


def compare(audios: list[Audio], frames: tuple[int, ...] = FRAMES) -> dict[str, Any]:
    """Time, SDR and feature drift of each T against the first (the baseline), same clips."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _compare(audios, frames)
    finally:
        torch.set_num_threads(threads)  # the cases after this one run with the usual threads


def _compare(audios: list[Audio], frames: tuple[int, ...]) -> dict[str, Any]:
    x = [spleeter_input(a) for a in audios]
    rows, vocals, feats, secs = [], {}, {}, {}
    for t in frames:
        sep = load_separator("cpu", t)
        separate_vocals(sep, x[:1], "cpu")  # warm-up
        t0 = time.perf_counter()
        vocals[t] = separate_vocals(sep, x, "cpu")
        secs[t] = (time.perf_counter() - t0) / len(x)
        cfg = replace(FrontendConfig(), spleeter_frames=t)
        mono = [resample(downmix(v), SPLEETER_SAMPLE_RATE, cfg.sample_rate) for v in vocals[t]]
        feats[t] = mel_windows(mono, cfg)
    base = frames[0]
    for t in frames:
        sdr = [_sdr(r, e) for r, e in zip(vocals[base], vocals[t], strict=True)]
        md = [_mel_diff(a, b) for a, b in zip(feats[base], feats[t], strict=True)]
        rows.append(
            {
                "T": t,
                "s_per_clip_1_thread": round(secs[t], 4),
                "speedup_vs_T512": speedup(secs[base], secs[t]),
                "vocals_sdr_vs_T512_db_median": round(float(np.median(sdr)), 1),
                "vocals_sdr_vs_T512_db_min": round(float(np.min(sdr)), 1),
                "mel_abs_diff_db_median": round(float(np.median([m for m, _ in md])), 3),
                "mel_abs_diff_db_p99": round(float(np.median([p for _, p in md])), 3),
            }
        )
    return {"rows": rows, "features": feats}


def run(quick: bool) -> dict[str, Any]:
    n = 4 if quick else 16
    audios = [Audio(c, 44_100) for c in fixtures.clips(n, seed=5)]
    out = compare(audios)
    return {
        "config": {"clips": n, "frames": list(FRAMES), "threads": 1},
        "rows": out["rows"],
        "ratios": {f"T{r['T']}_vs_T512": r["speedup_vs_T512"] for r in out["rows"][1:]},
        "notes": [
            "SDR of each T's vocals against T = 512's (the official output); mel differences "
            "over values within 80 dB of each window's peak",
            "accuracy on real labelled files: python -m bench.spleeter_frames --labels --model",
        ],
    }


def _accuracy(model_dir: Path, feats: list[np.ndarray], labels: list[str]) -> float:
    from training.ensemble import load_ensemble
    from worker.stages import file_verdict

    ens = load_ensemble(model_dir, "cpu")
    classes = list(ens.classes)
    hits = 0
    with torch.inference_mode():
        for f, label in zip(feats, labels, strict=True):
            p = ens.predict_proba(torch.from_numpy(f)).cpu().numpy()
            hits += classes[int(np.argmax(file_verdict(p, classes)))] == label
    return hits / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, required=True, help="CSV file,label[,group]")
    parser.add_argument("--model", type=Path, required=True, help="a model version's folder")
    parser.add_argument("--limit", type=int, default=0, help="first N files only (0 = all)")
    args = parser.parse_args()
    with open(args.labels, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if args.limit:
        rows = rows[: args.limit]
    paths = [(args.labels.parent / r["file"]).resolve() for r in rows]
    audios = [decode(p.read_bytes(), name=p.name) for p in paths]
    out = compare(audios)
    labels = [r["label"] for r in rows]
    for r in out["rows"]:
        r["accuracy"] = round(_accuracy(args.model, out["features"][r["T"]], labels), 4)
    print(json.dumps({"files": len(rows), "model": str(args.model), "rows": out["rows"]}, indent=1))


if __name__ == "__main__":
    main()
