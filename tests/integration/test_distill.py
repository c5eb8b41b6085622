"""`scorer distill`: a student of a trained ensemble, on every cached feature (labelled or not),
registered as a model version that scores and evaluates like any other (real SQLite, real
torch models in tiny sizes)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file
from sqlalchemy import select

from scorer.cli import main
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.models import ModelVersion
from scorer.settings import Settings
from training.distill import SoftTargetDataset, distill
from training.params import TrainParams

SR = 22_050
CLASSES = ["none", "male", "female", "multi"]


def tone(seconds: float, f0: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (0.2 * x + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def invoke(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), obj=settings)


def test_soft_targets_mix_like_one_hot_ones() -> None:
    """Cross-entropy is linear in its target, so Mixup of soft targets is the mixed loss."""
    logits = torch.randn(3, 4)
    a = torch.softmax(torch.randn(3, 4), 1)
    b = torch.softmax(torch.randn(3, 4), 1)
    ce = torch.nn.CrossEntropyLoss()
    torch.testing.assert_close(
        ce(logits, 0.3 * a + 0.7 * b), 0.3 * ce(logits, a) + 0.7 * ce(logits, b)
    )
    ds = SoftTargetDataset(np.zeros((2, 299, 40), np.float16), a[:2].numpy(), np.array([1]))
    x, soft = ds[0]
    assert x.shape == (1, 299, 40) and torch.equal(soft, a[1])


def test_student_learns_the_teacher_and_resumes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 48
    teacher = np.arange(n) % 4
    x = rng.normal(-60, 10, (n, 299, 40))
    for c in range(4):
        x[teacher == c, :, 10 * c : 10 * c + 8] += 25
    soft = np.full((n, 4), 0.05)
    soft[np.arange(n), teacher] = 0.85
    labels = np.where(np.arange(n) % 3 == 0, -1, teacher)  # a third unlabelled
    groups = [f"g{i % 12}" for i in range(n)]
    params = TrainParams(members=1, epochs=3, arch="resnet10", normalize="per_snippet")
    result = distill(params, x.astype(np.float16), soft, labels, groups, tmp_path)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.val_agreement is not None and result.val_agreement >= 0.75
    assert (tmp_path / "student.pt").exists()
    again = distill(params, x.astype(np.float16), soft, labels, groups, tmp_path)
    assert len(again.history) == 3  # nothing left to train: loaded from the checkpoint
    for k, v in result.student.state_dict().items():
        torch.testing.assert_close(again.student.state_dict()[k], v)


def test_distill_command_registers_a_student_version(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(separation=False, preprocess_batch=4)
    data = tmp_path / "train"
    data.mkdir()
    rows = ["file,label,group"]
    for k, c in enumerate(CLASSES):
        for j in range(2):
            sf.write(data / f"{c}_{j}.wav", tone(3.0, 110 * (k + 1) + 7 * j, seed=j), SR)
            rows.append(f"{c}_{j}.wav,{c},{c}_{j}")
    (data / "labels.csv").write_text("\n".join(rows) + "\n")
    result = invoke(
        settings, "train", "--data", str(data / "labels.csv"), "--members", "2", "--epochs",
        "1", "--arch", "resnet10", "--val-fraction", "0.25", "--name", "teacher",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    library = tmp_path / "library"  # unlabelled snippets: free training signal
    library.mkdir()
    sf.write(library / "song.wav", tone(7.0, 300, seed=5), SR)
    result = invoke(settings, "enqueue", str(library))
    assert result.exit_code == 0, result.output

    result = invoke(settings, "distill", "teacher", "--arch", "resnet10", "--epochs", "2",
                    "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["name"] == "teacher-student-resnet10" and out["teacher"] == "teacher"
    assert out["windows"] == 8 + 3 and out["labelled"] == 8 and not out["active"]

    with make_sessionmaker(make_engine(settings))() as s:
        mv = s.scalars(select(ModelVersion).where(ModelVersion.name == out["name"])).one()
        assert mv.members == 1 and mv.classes == CLASSES
        assert mv.params["distilled_from"] == "teacher" and mv.params["arch"] == "resnet10"
        folder = settings.resolved_model_dir / mv.weights_uri
    assert sorted(p.name for p in folder.iterdir()) == ["member_00.safetensors", "meta.json"]
    assert json.loads((folder / "meta.json").read_text())["distilled_from"] == "teacher"
    assert load_file(folder / "member_00.safetensors")

    # A name taken is refused before any work; the student scores like any model version.
    again = invoke(settings, "distill", "teacher", "--arch", "resnet10", "--epochs", "2")
    assert again.exit_code == 1 and "is taken" in again.output
    result = invoke(settings, "models", "activate", out["name"])
    assert result.exit_code == 0, result.output
    result = invoke(settings, "enqueue", str(library))
    assert result.exit_code == 0, result.output
    result = invoke(settings, "results", "--json", "--model-version", out["name"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [Path(r["path"]).name for r in rows] == ["song.wav"]
    assert rows[0]["disagreement"] == 0.0  # one member: nothing to disagree with
