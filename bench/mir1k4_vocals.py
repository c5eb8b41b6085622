"""Separated vocals of every mir1k4 snippet, once, for the voice-feature measurements.

    python -m bench.mir1k4_vocals --out DIR [--data ../shared/data/mir1k4] [--frames 512]

writes DIR/vocals_T<frames>.npy: (N, 48000) float16, the front end's 16 kHz mono vocals of each
file of labels.csv in its order (exactly what `pipeline.preprocess.vocals_mono` gives the
log-mel), and DIR/vocals_files.txt. Resumable: progress is kept in DIR/vocals_T<frames>.done, so
a killed run goes on where it stopped. Spleeter dominates (~0.44 CPU-s per clip); everything
measured from the vocals (log-mel, pitch, speaker embedding, SDR between segment lengths) is then
seconds to minutes, and never copies the licensed audio (only derived arrays, outside the repo).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.decode import decode
from pipeline.frontend import FrontendConfig
from pipeline.preprocess import vocals_mono
from pipeline.spleeter import load_separator

CHUNK = 32


def dump(data: Path, out: Path, frames: int) -> Path:
    """Separate every file of data/labels.csv; returns the .npy path."""
    out.mkdir(parents=True, exist_ok=True)
    with open(data / "labels.csv", newline="", encoding="utf-8") as f:
        files = [r["file"] for r in csv.DictReader(f)]
    (out / "vocals_files.txt").write_text("\n".join(files) + "\n", encoding="utf-8")
    cfg = FrontendConfig(spleeter_frames=frames)
    path = out / f"vocals_T{frames}.npy"
    done_path = out / f"vocals_T{frames}.done"
    mode = "r+" if path.exists() else "w+"
    arr = np.lib.format.open_memmap(
        path, mode=mode, dtype=np.float16, shape=(len(files), cfg.window_samples)
    )
    done = int(done_path.read_text()) if done_path.exists() else 0
    separator = load_separator("cpu", frames)
    t0 = time.perf_counter()
    start = done
    with torch.inference_mode():
        for lo in range(done, len(files), CHUNK):
            names = files[lo : lo + CHUNK]
            audios = [decode((data / n).read_bytes(), name=n) for n in names]
            for i, v in enumerate(vocals_mono(audios, cfg, separator)):
                v = v[: cfg.window_samples]
                arr[lo + i, : v.shape[0]] = v
                arr[lo + i, v.shape[0] :] = 0
            arr.flush()
            done = lo + len(names)
            done_path.write_text(str(done))
            rate = (done - start) / (time.perf_counter() - t0)
            print(f"{done}/{len(files)}  {rate:.2f} clips/s", flush=True)
    return path


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=here.parent / "shared/data/mir1k4")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=512)
    args = parser.parse_args()
    print(dump(args.data, args.out, args.frames))


if __name__ == "__main__":
    main()
