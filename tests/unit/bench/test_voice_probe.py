"""bench/voice_probe.py's issue-11 steps on tiny data: `from-db` from a real SQLite feature cache,
the input scales' maths, the singer folds, and `ensemble`/`fuse` with `--input` and `--folds`
end to end (real ResNet-10 members, one epoch on a few dozen windows, CPU)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from bench.voice_probe import (
    CLASSES,
    InputScale,
    clamp_floor,
    fold_groups,
    fold_of,
    from_db,
    main,
    train_explicit,
)
from training.train import explicit_split

torch.set_num_threads(1)

# (group, label, n): training singers fdps, Kenshin (male), titon, Ani (female) with their
# karaoke `none` windows and two duets; held out leon (male), annar (female); fdps+leon straddles
TINY = [
    ("fdps", "male", 4), ("fdps", "none", 2), ("Kenshin", "male", 4), ("Kenshin", "none", 2),
    ("titon", "female", 4), ("titon", "none", 2), ("Ani", "female", 4), ("Ani", "none", 2),
    ("Ani+fdps", "multi", 2), ("Kenshin+titon", "multi", 2),
    ("leon", "male", 3), ("leon", "none", 1), ("annar", "female", 3), ("annar", "none", 1),
    ("fdps+leon", "multi", 2),
]  # fmt: skip


def _dataset(root: Path) -> list[dict[str, str]]:
    """A mir1k4-shaped folder: labels.csv and distinct small 'audio' files (only hashed here)."""
    (root / "audio").mkdir(parents=True)
    rows = []
    for g, label, n in TINY:
        for _ in range(n):
            name = f"audio/{len(rows):04d}.mp3"
            (root / name).write_bytes(f"{name} {g} {label}".encode())
            rows.append({"file": name, "label": label, "class_idx": str(CLASSES.index(label)),
                         "singer": g, "split_group": g})  # fmt: skip
    with open(root / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return rows


def _features(rows: list[dict[str, str]], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Log-mels in dB (class c louder in bands 10c..10c+8, a -313 dB silent stretch) and
    256-d embeddings with a class signal."""
    rng = np.random.default_rng(seed)
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    mels = rng.normal(-60, 10, (len(rows), 299, 40))
    for c in range(4):
        mels[y == c, :, 10 * c : 10 * c + 8] += 25
    mels[:, :20] = -313.07
    emb = rng.normal(0, 1, (len(rows), 256))
    emb[np.arange(len(rows)), y] += 3
    return mels.astype(np.float16), emb.astype(np.float32)


def test_clamp_floor_and_scales() -> None:
    x = np.array([[[-313.0, 0.0], [-50.0, -100.0]], [[-313.0, -313.0], [-313.0, -313.0]]])
    # each window at its own max - 80 dB; an all-silent window stays as it is
    assert clamp_floor(x).tolist() == [[[-80.0, 0.0], [-50.0, -80.0]], [[-313.0] * 2] * 2]
    rng = np.random.default_rng(0)
    train = rng.normal(-60, 30, (50, 299, 40)).astype(np.float16)
    train[:, :10] = -313.07
    z = InputScale.fit("global", train)(train)
    assert abs(z.mean()) < 1e-4 and abs(z.std() - 1) < 1e-4
    floor = InputScale.fit("floor", train)
    zf = floor(train)
    assert abs(zf.mean()) < 1e-4 and abs(zf.std() - 1) < 1e-4
    assert zf.min() >= ((clamp_floor(train).max(axis=(1, 2)).min() - 80) - floor.mean) / floor.std
    other = train[:5] + 7  # held-out windows get the training side's numbers, not their own
    assert np.allclose(floor(other), (clamp_floor(other) - floor.mean) / floor.std)
    wide = InputScale.fit("floor120", train)  # --floor-db 120
    assert wide.floor_db == 120 and np.allclose(
        wide(other), (clamp_floor(other, 120) - wide.mean) / wide.std
    )
    assert np.array_equal(InputScale.fit("raw", train)(train), train)


def test_fold_of_places_pairs_with_their_singers_or_nowhere() -> None:
    folds = [["a", "b"], ["c"]]
    assert fold_of(["a", "c", "a+b", "a+c", "b+a"], folds).tolist() == [0, 1, 0, -1, 0]
    assert [x.tolist() for x in explicit_split(["a", "c", "a+b", "a+c"], 4, folds[1])] == [
        [0, 2],
        [1],
    ]  # the straddling pair neither validates with c's fold nor trains its member


def test_fold_groups_disjoint_covering_and_pairs_with_their_singers() -> None:
    groups = [g for g, _, n in TINY if "leon" not in g and "annar" not in g for _ in range(n)]
    y = np.array([CLASSES.index(lab) for g, lab, n in TINY if g in groups for _ in range(n)])
    folds = fold_groups(groups, y, 2)
    assert fold_groups(groups, y, 2) == folds  # deterministic
    singers = [a for f in folds for a in f]
    assert len(singers) == len(set(singers)) == 4  # disjoint, every training singer
    assert set(singers) == {"fdps", "Kenshin", "titon", "Ani"}
    where = fold_of(groups, folds)
    for g, j in zip(groups, where, strict=True):
        parts = g.split("+")
        if j >= 0:
            assert set(parts) <= set(folds[j])  # validated with both singers
        else:
            assert len(parts) == 2 and not any(set(parts) <= set(f) for f in folds)
    # each fold's validation is exactly its singers' snippets, the folds' union is the rest
    vals = [explicit_split(groups, len(y), f)[1] for f in folds]
    assert sorted(np.concatenate(vals).tolist()) == np.flatnonzero(where >= 0).tolist()


@pytest.mark.slow
def test_fold_groups_on_mir1k4() -> None:
    from bench.mir1k4_split import side

    labels = Path(__file__).resolve().parents[4] / "shared/data/mir1k4/labels.csv"
    if not labels.is_file():
        pytest.skip("mir1k4 is not here")
    with labels.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if side(r["split_group"]) == "train"]
    groups = [r["split_group"] for r in rows]
    y = np.array([CLASSES.index(r["label"]) for r in rows])
    folds = fold_groups(groups, y, 3)
    singers = {a for g in groups for a in g.split("+")}
    assert sorted(a for f in folds for a in f) == sorted(singers)
    where = fold_of(groups, folds)
    assert (where[y != CLASSES.index("multi")] >= 0).all()  # only pairs can straddle
    for j in range(3):  # every fold validates on male and none snippets
        assert {0, 1} <= set(y[where == j].tolist())


def _store(engine: Engine, data: Path, rows: list[dict[str, str]], skip: int | None) -> None:
    from pipeline.frontend import FrontendConfig
    from pipeline.voice import VoiceConfig
    from scorer.db import queries

    mels, emb = _features(rows)
    fv = FrontendConfig().version
    with Session(engine) as s:
        for k, r in enumerate(rows):
            sha = hashlib.sha256((data / r["file"]).read_bytes()).hexdigest()
            queries.add_snippets(s, [{"sha256": sha, "source_path": r["file"], "size_bytes": 1}])
            if k == skip:
                continue
            queries.store_features(s, sha, fv, mels[k][None])
            queries.store_features(s, sha, VoiceConfig().version(fv), emb[k][None, None])
        s.commit()


def test_from_db_reads_the_feature_cache(tmp_path: Path, sqlite_engine: Engine) -> None:
    data, run = tmp_path / "mir1k4", tmp_path / "run"
    rows = _dataset(data)
    _store(sqlite_engine, data, rows, skip=None)
    from_db(run, data, tmp_path)  # sqlite_engine's data dir is tmp_path
    used = [k for k, r in enumerate(rows) if r["split_group"] != "fdps+leon"]
    assert (run / "vocals_files.txt").read_text().split() == [rows[k]["file"] for k in used]
    mels, emb = _features(rows)
    got = np.load(run / "mels.npy")
    assert got.dtype == np.float16 and np.array_equal(got, mels[used])
    voice = np.load(run / "voice.npy")
    assert voice.shape == (len(used), 301) and voice.dtype == np.float32
    assert np.isnan(voice[:, :45]).all() and np.array_equal(
        voice[:, 45:], emb[used].astype(np.float16).astype(np.float32)
    )  # stored as float16
    assert json.loads((run / "from_db.json").read_text())["n"] == len(used)


def test_from_db_stops_on_a_file_without_features(tmp_path: Path, sqlite_engine: Engine) -> None:
    data, run = tmp_path / "mir1k4", tmp_path / "run"
    rows = _dataset(data)
    _store(sqlite_engine, data, rows, skip=3)
    with pytest.raises(SystemExit, match="1 of 36 files have no log-mel"):
        from_db(run, data, tmp_path)
    assert not (run / "mels.npy").exists()


@pytest.fixture
def tiny_run(tmp_path: Path) -> tuple[Path, Path]:
    """A run dir as `from-db` leaves it, over the tiny dataset (straddling duet excluded)."""
    data, run = tmp_path / "mir1k4", tmp_path / "run"
    rows = [r for r in _dataset(data) if r["split_group"] != "fdps+leon"]
    mels, emb = _features(rows)
    run.mkdir()
    np.save(run / "mels.npy", mels)
    voice = np.full((len(rows), 301), np.nan, np.float32)
    voice[:, 45:] = emb
    np.save(run / "voice.npy", voice)
    (run / "vocals_files.txt").write_text("\n".join(r["file"] for r in rows) + "\n")
    return data, run


def _args(data: Path, run: Path, step: str, *more: str) -> list[str]:
    return [step, "--run", str(run), "--data", str(data), "--members", "1", "--epochs", "1",
            *more]  # fmt: skip


def test_explicit_split_training_matches_the_runs_own_mixing(tiny_run: tuple[Path, Path]) -> None:
    """Mixtures made before the run (so they can be scaled) are the run's own: one epoch from
    the same seed gives the same weights as `run(mix_multi=...)` choosing its split itself."""
    from bench.voice_probe import _training_side, _val_singers
    from training.params import TrainParams
    from training.train import run as train_run

    data, run = tiny_run
    train = _training_side(run, data, None, 0)[3]
    params = TrainParams(arch="resnet10", members=1, epochs=1, batch_size=8, mix_multi=6)
    singers = _val_singers(train.groups, train.y, 0)
    ours = train_explicit(params, train, singers, InputScale("raw"))
    theirs = train_run(
        params, train.x, train.y, train.groups, CLASSES, run / "w", amp=None, show_progress=False
    ).members
    for a, b in zip(ours[0].state_dict().values(), theirs[0].state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_folds_and_input_scale_end_to_end(
    tiny_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = tiny_run
    main(_args(data, run, "ensemble", "--folds", "2", "--input", "floor"))
    name = "resnet10x2x1_infloor_folds2"
    probs = np.load(run / f"probs_{name}.npz")
    folds = json.loads(str(probs["folds"]))
    assert probs["test"].shape == (2, 8, 4) and len(folds) == 2
    # out of fold: each training snippet scored by the member whose validation fold holds it
    files = (run / "vocals_files.txt").read_text().split()
    with open(data / "labels.csv", newline="") as f:
        group = {r["file"]: r["split_group"] for r in csv.DictReader(f)}
    for sha, m in zip(probs["oof_shas"], probs["oof_member"], strict=True):
        assert set(group[sha].split("+")) <= set(folds[m])
    in_both = [f for f in files if "+" in group[f] and fold_of([group[f]], folds)[0] < 0]
    assert len(probs["oof_shas"]) == 36 - 8 - len(in_both)
    assert (run / f"fold_{name}_m0.npz").exists() and (run / f"fold_{name}_m1.npz").exists()
    main(_args(data, run, "fuse", "--folds", "2", "--input", "floor"))
    out = json.loads((run / f"voice_probe_{name}.json").read_text())
    assert out["n_oof"] == len(probs["oof_shas"]) and out["cpu_s_per_snippet"] is None
    assert "ensemble + speaker embedding (256)" in out["table"]
    assert 0.0 <= out["table"]["ensemble + speaker embedding (256)"]["w"] <= 1.0
    # today's split with a scaled input: gpu_suite's layout, read by the usual fuse
    main(_args(data, run, "ensemble", "--input", "global", "--mix-multi", "4"))
    main(_args(data, run, "fuse", "--input", "global", "--mix-multi", "4"))
    out = json.loads((run / "voice_probe_resnet10x1x1_mixmulti4_inglobal.json").read_text())
    assert out["n_test"] == 8 and "ensemble alone" in out["table"]
