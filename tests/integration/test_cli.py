"""The CLI end to end on the embedded default: real SQLite, real Spleeter, real (tiny) torch models.

One tiny model is trained once per module; the tests then enqueue good and bad audio through
click's CliRunner and check what a user sees and what the database holds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from sqlalchemy import func, select

from scorer.cli import EXIT_ITEMS_FAILED, main
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.models import FILE_WINDOW, Feature, Prediction, Snippet, SnippetStatus
from scorer.settings import Settings

# log-mel feature rows (voice features, when on, are rows of their own, "vf-...")
LOGMEL_ROWS = select(func.count()).select_from(Feature).where(Feature.frontend_version.like("fe-%"))

SR = 22_050
CLASSES = ["none", "male", "female", "multi"]


def tone(seconds: float, f0: float, sr: int = SR, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A harmonic tone plus noise: enough to exercise the pipeline (labels here are arbitrary)."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    x = 0.2 * x + 0.02 * rng.standard_normal(t.size)
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def invoke(settings: Settings, *args: str):
    return CliRunner().invoke(main, list(args), obj=settings, catch_exceptions=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cli")
    settings = Settings(data_dir=root / "data", torch_threads=1, preprocess_batch=4)
    train = root / "train"
    rows = []
    for k, label in enumerate(CLASSES):
        for j in range(3):
            path = train / label / f"{label}_{j}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, tone(3.0, 110 * (k + 1) + 7 * j, seed=10 * k + j), SR)
            rows.append({"file": f"{label}/{path.name}", "label": label, "group": f"{label}{j}"})
    with (train / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "group"])
        w.writeheader()
        w.writerows(rows)
    result = invoke(
        settings, "train", "--data", str(train), "--members", "2", "--epochs", "1",
        "--arch", "resnet10", "--val-fraction", "0.34",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "model version v1 (active)" in result.output
    return {"root": root, "settings": settings, "train": train}


def session(settings: Settings):
    return make_sessionmaker(make_engine(settings))()


def test_every_command_has_help() -> None:
    """Every command of the table and every subcommand of a group, found from the CLI itself
    (a new command cannot be left out of this list)."""
    import click

    ctx = click.Context(main)
    paths: list[list[str]] = [[]]
    for name in main.list_commands(ctx):
        paths.append([name])
        cmd = main.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            paths += [[name, sub] for sub in cmd.list_commands(ctx)]
    assert ["review"] in paths and ["worker", "gpu"] in paths
    for args in paths:
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0, (args, result.output)
        assert "Usage:" in result.output
    assert "SCORER_DATABASE_URL" in CliRunner().invoke(main, ["--help"]).output


def test_training_registered_an_active_model(env: dict) -> None:
    result = invoke(env["settings"], "models", "--json")
    models = json.loads(result.output)
    assert [m["name"] for m in models] == ["v1"]
    assert models[0]["active"] and models[0]["classes"] == CLASSES and models[0]["members"] == 2
    with session(env["settings"]) as s:
        assert s.scalar(LOGMEL_ROWS) == 12
        labelled = s.scalar(select(func.count()).where(Snippet.label.is_not(None)))
        assert labelled == 12


def _bad_and_odd_inputs(folder: Path) -> dict[str, str]:
    """Writes every kind of input a library throws at us; returns name -> expected outcome."""
    folder.mkdir(parents=True)
    expect: dict[str, str] = {}
    (folder / "empty.wav").write_bytes(b"")
    expect["empty.wav"] = "empty file"
    (folder / "notes.mp3").write_text("this is a text file, not audio\n")
    expect["notes.mp3"] = "not a readable audio file"
    sf.write(folder / "silence.wav", np.zeros((3 * SR, 2), np.float32), SR)
    expect["silence.wav"] = "scored"
    sf.write(folder / "hour.flac", np.zeros((3600 * 8000, 1), np.int16), 8000, subtype="PCM_16")
    expect["hour.flac"] = "too long"
    sf.write(folder / "tel 8k.wav", tone(3.0, 200, sr=8000), 8000)
    expect["tel 8k.wav"] = "scored"
    sf.write(folder / "surround.wav", tone(3.0, 150, sr=96_000, channels=6), 96_000)
    expect["surround.wav"] = "scored"
    sf.write(folder / "Björk – ünïcode 歌.wav", tone(2.0, 300, seed=3), SR)
    expect["Björk – ünïcode 歌.wav"] = "scored"
    sf.write(folder / "song.mp3", tone(10.0, 180, sr=44_100, channels=2, seed=4), 44_100)
    expect["song.mp3"] = "scored"
    full = (folder / "song.mp3").read_bytes()
    (folder / "truncated.mp3").write_bytes(full[: len(full) // 3])
    expect["truncated.mp3"] = "scored"  # libsndfile decodes the frames before the cut
    (folder / "stub.mp3").write_bytes(full[:200])
    expect["stub.mp3"] = "not a readable audio file"
    os.symlink(folder / "does-not-exist.wav", folder / "dangling.wav")
    expect["dangling.wav"] = "cannot read file"
    return expect


def test_bad_input_fails_alone_and_the_rest_is_scored(env: dict) -> None:
    folder = env["root"] / "inbox"
    expect = _bad_and_odd_inputs(folder)
    policy = env["settings"].model_copy(update={"max_duration_s": 900})  # hour.flac: too long
    result = invoke(policy, "enqueue", str(folder))
    assert result.exit_code == EXIT_ITEMS_FAILED, result.output
    failed_lines = [line for line in result.output.splitlines() if line.startswith("failed: ")]
    for name, outcome in expect.items():
        lines = [line for line in failed_lines if f"/{name}: " in line]
        if outcome == "scored":
            assert not lines, (name, lines)
        else:
            assert len(lines) == 1 and outcome in lines[0], (name, failed_lines)
            assert "Traceback" not in result.output
    with session(env["settings"]) as s:
        rows = {Path(p).name: (st, err) for p, st, err in s.execute(
            select(Snippet.source_path, Snippet.status, Snippet.error)
            .where(Snippet.source_path.startswith(str(folder)))
        )}  # fmt: skip
        for name, outcome in expect.items():
            status, error = rows[name]
            if outcome == "scored":
                assert status == SnippetStatus.scored, (name, status, error)
            else:
                assert status == SnippetStatus.failed and outcome in error, (name, error)
                assert "\n" not in error
        song = s.scalars(select(Snippet).where(Snippet.source_path.endswith("song.mp3"))).one()
        assert song.n_windows == 4  # 10 s: three full windows + a 1 s tail
        windows = s.scalars(
            select(Prediction.window_index).where(Prediction.sha256 == song.sha256)
        ).all()
        assert sorted(windows) == [FILE_WINDOW, 0, 1, 2, 3]


def test_same_bytes_again_do_no_new_work(env: dict, tmp_path: Path) -> None:
    folder = tmp_path / "again"
    folder.mkdir()
    sf.write(folder / "a.wav", tone(3.0, 220, seed=7), SR)
    first = invoke(env["settings"], "enqueue", str(folder))
    assert first.exit_code == 0, first.output
    assert "1 new, 1 preprocessed, 1 scored" in first.output
    (folder / "copy of a.wav").write_bytes((folder / "a.wav").read_bytes())
    second = invoke(env["settings"], "enqueue", str(folder))
    assert second.exit_code == 0, second.output
    assert "2 files, 1 distinct, 0 new, 0 preprocessed, 0 scored" in second.output
    sha = hashlib.sha256((folder / "a.wav").read_bytes()).hexdigest()
    with session(env["settings"]) as s:  # the work itself, once (unique keys hide a second time)
        runs = s.execute(
            select(Snippet.preprocess_runs, Snippet.score_runs).where(Snippet.sha256 == sha)
        ).one()
    assert tuple(runs) == (1, 1)


def test_results_json_csv_and_windows(env: dict) -> None:
    rows = json.loads(invoke(env["settings"], "results", "--json").output)
    assert rows and all(r["label"] in CLASSES for r in rows)
    for r in rows:
        probs = [r[f"p_{c}"] for c in CLASSES]
        assert abs(sum(probs) - 1) < 1e-3
        assert r["label"] == CLASSES[int(np.argmax(probs))] or len({*probs}) < 4
    out = invoke(env["settings"], "results", "--csv").output
    parsed = list(csv.DictReader(out.splitlines()))
    assert len(parsed) == len(rows) and "p_female" in parsed[0]
    windows = json.loads(invoke(env["settings"], "results", "--windows", "--json").output)
    assert len(windows) > len(rows) and {"window", "start_s"} <= set(windows[0])
    uncertain = json.loads(invoke(env["settings"], "results", "--uncertain", "--json").output)
    entropies = [r["entropy"] for r in uncertain]
    assert entropies == sorted(entropies, reverse=True)


def test_status_lists_counts_and_failures(env: dict) -> None:
    info = json.loads(invoke(env["settings"], "status", "--json").output)
    assert info["active_model"] == "v1"
    assert info["total"] == sum(info["counts"].values())
    assert all(f["reason"] for f in info["failures"])


def test_expected_errors_are_one_line(env: dict) -> None:
    result = CliRunner().invoke(main, ["models", "activate", "nope"], obj=env["settings"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: no model version 'nope'; see `scorer models`"
    result = CliRunner().invoke(main, ["enqueue", "/no/such/folder"], obj=env["settings"])
    assert result.exit_code == 1 and result.output.startswith("Error: /no/such/folder")
    result = CliRunner().invoke(main, ["train", "--members", "0"], obj=env["settings"])
    assert result.exit_code == 2
