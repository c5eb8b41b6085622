"""bench/int8_student.py --quick: a random-weight ResNet-10 really quantised to int8 (PT2E, x86
inductor), compiled, timed and compared with float32. Runs the bench as a process of its own
(inductor's global config, its compile threads and torchao's warnings stay out of pytest)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torchao", reason="torchao (PT2E quantisation) is not installed")

from training.ensemble import native_bf16

ROOT = Path(__file__).resolve().parents[3]


def test_quick_int8_student_agrees_with_float32_and_reports_every_row(tmp_path: Path) -> None:
    out = tmp_path / "int8.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.int8_student", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())

    ops = result["config"]["int8_ops"]
    assert ops["weights_per_channel"] == 13  # 12 convolutions + the linear head: all int8
    assert ops["activations"] >= 12

    variants = ["fp32 eager", *(["bf16 eager"] if native_bf16("cpu") else []), "int8 compiled"]
    rows = {(r["variant"], r["threads"], r["batch"]) for r in result["speed"]}
    assert rows == {(v, 1, b) for v in variants for b in (1, 8)}
    for r in result["speed"]:
        assert r["ms_per_window"] > 0 and r["first_call_s"] > 0
    for v in variants:  # each variant's row, in the printed table too
        assert done.stdout.count(f"| {v} | 1 |") == 2

    quality = {r["variant"]: r for r in result["quality"]}
    assert list(quality) == variants
    int8 = quality["int8 compiled"]
    assert int8["windows"] == 96
    assert int8["argmax_agreement"] >= 0.9  # int8 decides like float32 on most windows...
    assert 0 < int8["max_abs_prob_diff"] < 0.1  # ... is close, and is not float32 in disguise
    assert quality["fp32 eager"]["max_abs_prob_diff"] == 0.0
