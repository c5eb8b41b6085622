"""Does scoring stay flat in memory as a file gets longer? Peak RSS of `scorer enqueue` (embedded
mode, Spleeter on, a registered model) over a 60-minute file against a 2-minute one.

The audio is real: MIR-1K snippets from ../shared/data/mir1k4 end to end (other snippets on the
right channel), upsampled to 44.1 kHz stereo, 2 minutes of it repeated to the length, written as
16-bit FLAC. Each file is scored by `scorer enqueue` in a fresh process that reports its own
peak RSS (ru_maxrss); the ratio is peak(60 min) / peak(2 min), and the issue's target is <= 1.3.
Both files are over 60 s, so both take the block path (pipeline/blocks.py); the 60-minute file
is also over SCORER_MAX_MESSAGE_MB, so it is hashed in blocks and read from its path.

CPU heavy (Spleeter over an hour of audio): about 10+ minutes on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mir1k4"
SR = 44_100

CHILD = """
import resource, sys
from scorer.cli import main
try:
    main(["enqueue", sys.argv[1]], standalone_mode=False)
finally:
    sys.stdout.flush()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def base_minutes(minutes: int = 2) -> np.ndarray:
    """(n, 2) float32 at 44.1 kHz: `minutes` of real MIR-1K singing and accompaniment."""
    from pipeline.resample import resample

    n = minutes * 20  # 3 s snippets per channel
    files = sorted((DATA / "audio").glob("*.mp3"))[: 2 * n]
    if len(files) < 2 * n:
        raise SystemExit(f"need {2 * n} snippets under {DATA}/audio")
    clips = [sf.read(f, dtype="float32")[0] for f in files]
    left, right = np.concatenate(clips[:n]), np.concatenate(clips[n:])
    return resample(np.stack([left, right]), 16_000, SR).T.copy()


def write_song(path: Path, base: np.ndarray, minutes: int) -> None:
    """`minutes` of `base` repeated, written a piece at a time (the writer holds no hour)."""
    per = base.shape[0] / SR / 60
    with sf.SoundFile(path, "w", SR, 2, format="FLAC", subtype="PCM_16") as f:
        for _ in range(round(minutes / per)):
            f.write(base)


def peak_mb(folder: Path, data_dir: Path) -> tuple[float, float, str]:
    """(peak RSS in MB, seconds, summary line) of `scorer enqueue folder`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORER_")}
    env.update(SCORER_DATA_DIR=str(data_dir), SCORER_DEVICE="cpu")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(folder)], env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    if proc.returncode != 0:
        raise RuntimeError(f"scorer enqueue failed ({proc.returncode}): {proc.stderr[-2000:]}")
    said = [line for line in lines if " scored" in line] or [""]
    if " 1 scored" not in said[-1]:
        raise RuntimeError(f"the file was not scored: {proc.stderr[-2000:]}")
    return int(lines[-1]) / 1024, seconds, said[-1]


def run(quick: bool) -> dict[str, Any]:
    from bench.fixtures import embedded_settings, register_model, sqlite_engine

    lengths = (2, 10) if quick else (2, 60)
    base = base_minutes(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in lengths:
            root = Path(tmp) / f"{minutes}min"
            folder, data_dir = root / "in", root / "data"
            folder.mkdir(parents=True)
            song = folder / f"{minutes} minutes.flac"
            write_song(song, base, minutes)
            settings = embedded_settings(data_dir)
            engine = sqlite_engine(settings)
            register_model(engine, settings, "bench", n_members=2, arch="resnet10", seed=0)
            engine.dispose()
            peak, seconds, last = peak_mb(folder, data_dir)
            rows.append({
                "minutes": minutes,
                "file_mb": round(song.stat().st_size / 2**20, 1),
                "peak_rss_mb": round(peak, 1),
                "seconds": round(seconds, 1),
                "summary": last,
            })  # fmt: skip
    small, large = rows
    return {
        "config": {
            "mode": "embedded",
            "device": "cpu",
            "separation": True,
            "model": "2 x resnet10",
        },
        "rows": rows,
        "ratios": {
            f"peak_rss_{large['minutes']}min_vs_{small['minutes']}min": round(
                large["peak_rss_mb"] / small["peak_rss_mb"], 3
            )
        },
        "notes": ["target <= 1.3: decode, Spleeter and log-mel run in blocks (pipeline/blocks.py)"],
    }


if __name__ == "__main__":
    quick = "--quick" in sys.argv
    result = run(quick)
    for row in result["rows"]:
        print(row)
    for name, value in result["ratios"].items():
        print(f"ratio {name}: {value}")
