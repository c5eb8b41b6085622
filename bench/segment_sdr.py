"""Spleeter's segment by need (T = 0) against the official T = 512 on real held-out mir1k4 files.

    python -m bench.segment_sdr --vocals DIR [--data ../shared/data/mir1k4] [--n 200]
        [--done ROWS] [--out F]

DIR holds `bench.mir1k4_vocals`'s T = 512 output (vocals_T512.npy, vocals_files.txt,
vocals_T512.done): the reference vocals, so T = 512 need not be separated again for the SDR.
`--n` held-out files (the fixed split of bench/mir1k4_split.py, spread evenly over those the
dump has done, or over its first `--done` rows) are separated by need (T = 192 for these 3 s
clips) and at T = 512, interleaved, 1 torch thread, each timed in the same run; the T = 512 run
is also checked against the dump.
Prints the vocals' SDR against T = 512 (16 kHz mono, what the log-mel sees), per class, the
log-mel drift, and the time per clip of both.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.mir1k4_split import side
from bench.spleeter_frames import _mel_diff, _sdr
from bench.timing import speedup
from pipeline.decode import decode
from pipeline.frontend import FrontendConfig
from pipeline.preprocess import mel_windows, vocals_mono
from pipeline.spleeter import BY_NEED, OFFICIAL_FRAMES, load_separator


def held_out_done(
    data: Path, vocals: Path, n: int, done: int | None = None
) -> list[tuple[int, str, str]]:
    """(row in the dump, file, label) of `n` held-out files the dump has done, evenly spread
    (so the pick depends on how far the dump had come: the output says, as `picked_rows`)."""
    files = (vocals / "vocals_files.txt").read_text(encoding="utf-8").split()
    finished = int((vocals / f"vocals_T{OFFICIAL_FRAMES}.done").read_text())
    done = finished if done is None else min(done, finished)
    with open(data / "labels.csv", newline="", encoding="utf-8") as f:
        rows = {r["file"]: r for r in csv.DictReader(f)}
    held = [
        (i, name, rows[name]["label"])
        for i, name in enumerate(files[:done])
        if side(rows[name]["split_group"]) == "test"
    ]
    if len(held) < n:
        raise SystemExit(f"only {len(held)} held-out files separated so far (want {n})")
    step = len(held) / n
    return [held[int(k * step)] for k in range(n)]


def _summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {
        "median": round(float(np.median(a)), 1),
        "p10": round(float(np.percentile(a, 10)), 1),
        "min": round(float(a.min()), 1),
    }


def measure(data: Path, vocals: Path, n: int, done: int | None = None) -> dict[str, Any]:
    picked = held_out_done(data, vocals, n, done)
    ref = np.load(vocals / f"vocals_T{OFFICIAL_FRAMES}.npy", mmap_mode="r")
    cfg = {t: FrontendConfig(spleeter_frames=t) for t in (BY_NEED, OFFICIAL_FRAMES)}
    seps = {t: load_separator("cpu", t) for t in cfg}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    secs: dict[int, float] = defaultdict(float)
    sdr, by_class, mel, dump_diff = [], defaultdict(list), [], 0.0
    try:
        first = decode((data / picked[0][1]).read_bytes(), name=picked[0][1])
        for t in cfg:  # warm-up
            vocals_mono([first], cfg[t], seps[t])
        for k, (row, name, label) in enumerate(picked):
            audio = decode((data / name).read_bytes(), name=name)
            out = {}
            for t in cfg if k % 2 else reversed(list(cfg)):  # alternate the order
                t0 = time.perf_counter()
                (out[t],) = vocals_mono([audio], cfg[t], seps[t])
                secs[t] += time.perf_counter() - t0
            width = cfg[OFFICIAL_FRAMES].window_samples
            reference = np.asarray(ref[row], dtype=np.float32)
            mine = out[OFFICIAL_FRAMES][:width].astype(np.float16).astype(np.float32)
            dump_diff = max(dump_diff, float(np.abs(mine - reference).max()))
            need = out[BY_NEED][:width].astype(np.float32)
            s = _sdr(reference, need)
            sdr.append(s)
            by_class[label].append(s)
            a, b = mel_windows([reference, need], cfg[OFFICIAL_FRAMES])
            mel.append(_mel_diff(a, b))
    finally:
        torch.set_num_threads(threads)
    per = {t: secs[t] / len(picked) for t in cfg}
    return {
        "files": len(picked),
        "picked_rows": [row for row, _, _ in picked],
        "threads": 1,
        "s_per_clip": {"T512": round(per[OFFICIAL_FRAMES], 4), "by_need": round(per[BY_NEED], 4)},
        "speedup_by_need_vs_T512": speedup(per[OFFICIAL_FRAMES], per[BY_NEED]),
        "vocals_sdr_vs_T512_db": _summary(sdr),
        "vocals_sdr_by_class": {
            c: _summary(v) | {"n": len(v)} for c, v in sorted(by_class.items())
        },
        "mel_abs_diff_db": {
            "median": round(float(np.median([m for m, _ in mel])), 3),
            "p99_median": round(float(np.median([p for _, p in mel])), 3),
        },
        "T512_vs_dump_max_abs": dump_diff,
    }


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=here.parent / "shared/data/mir1k4")
    parser.add_argument("--vocals", type=Path, required=True)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--done", type=int, default=None, help="pick from the first ROWS only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = measure(args.data, args.vocals, args.n, args.done)
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
