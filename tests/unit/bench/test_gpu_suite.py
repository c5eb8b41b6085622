"""The GPU suite (bench/gpu_suite.sh): its feature file, its evaluation maths, and the whole
script proved on the CPU with --tiny, as the GPU machine will run it (only numpy + torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import fixtures
from bench.gpu_suite import Split, load_split, pack_features, save_split, summary, unpack_features
from pipeline.synth import LABELS

ROOT = Path(__file__).resolve().parents[3]


def test_packed_features_come_back_bit_identical_and_smaller(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(-60, 20, (5, 299, 40))).astype(np.float16)
    x[0] = -313.0  # the silence floor of a silent window
    blob = pack_features(x)
    assert blob.nbytes < x.nbytes
    back = unpack_features(blob, x.shape)
    assert back.dtype == np.float16
    assert back.tobytes() == x.tobytes()

    train = Split(x[:3], np.array([0, 1, 2]), ["a", "b", "c"], ["s0", "s1", "s2"])
    test = Split(x[3:], np.array([3, 0]), ["d", "e"], ["s3", "s4"])
    save_split(tmp_path / "f.npz", train, test, {"classes": ["none", "male", "female", "multi"]})
    tr, te, meta = load_split(tmp_path / "f.npz")
    assert tr.x.tobytes() == x[:3].tobytes() and te.x.tobytes() == x[3:].tobytes()
    assert tr.groups == ["a", "b", "c"] and te.shas == ["s3", "s4"]
    assert te.y.tolist() == [3, 0] and meta["classes"][3] == "multi"


def test_summary_of_member_probabilities() -> None:
    y = np.array([0, 1, 2, 3])
    good = np.eye(4)[None].repeat(2, axis=0) * 0.9 + 0.025  # (2, 4, 4): both right
    bad = good.copy()
    bad[1] = np.eye(4)[[1, 2, 3, 0]] * 0.5 + 0.125  # the second member always (less) wrong
    s = summary(good, y, 4)
    assert s["accuracy"] == 1.0 and s["macro_f1"] == 1.0 and s["recall"] == [1.0] * 4
    assert s["ece"] == pytest.approx(1 - 0.925)
    mixed = summary(bad, y, 4)
    # the mean puts (0.925 + 0.125) / 2 on the truth and (0.025 + 0.625) / 2 on the wrong class
    assert mixed["accuracy_vs_members"] == [(1, 1.0), (2, 1.0)]
    assert mixed["member_accuracy_mean"] == 0.5 and mixed["member_accuracy_best"] == 1.0


def test_bench_classes_are_the_synthesisers() -> None:
    assert list(LABELS) == fixtures.CLASSES


def test_model_cases_import_with_only_torch() -> None:
    """The GPU image has torch and numpy but not sqlalchemy, pydantic, soundfile or soxr."""
    blocked = ["sqlalchemy", "pydantic", "pydantic_settings", "soundfile", "soxr", "celery"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None\n"
        "import bench.ensemble, bench.member_forward, bench.training, bench.gpu_suite\n"
        "import pipeline.spleeter\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_tiny_suite_runs_every_step_on_the_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        # one member for the extra run: it proves the extra-run step, the reference proves 2
        ["bash", "bench/gpu_suite.sh", "--tiny", "--extra", "global_std", "--extra-members", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["machine"]["device"] == "cpu"
    ref = results["reference"]
    assert ref["epochs_done"] == 2 and ref["members_evaluated"] == 2
    assert ref["test"]["n"] == results["data"]["test"]
    assert 0.0 <= ref["test"]["accuracy"] <= 1.0
    assert "ensemble" in results["bench"] and "rows" in results["bench"]["ensemble"]
    assert results["spleeter"][0]["clips_per_s"] > 0
    assert results["global_std"]["members_evaluated"] == 1
    assert "total_s" in results
    probs = np.load(tmp_path / "probs_reference.npz")
    assert probs["test"].shape == (2, results["data"]["test"], 4)
    assert (tmp_path / "log.txt").read_text().count("[gpu_suite]") >= 5
