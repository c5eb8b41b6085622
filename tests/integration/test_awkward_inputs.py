"""Awkward input paths through the CLI, as a user hits them (issue 10, items 1, 2, 7, 11).

Embedded default: real SQLite, real Spleeter, a real (tiny) trained model. Every path must end
as scored, failed with its reason, or one `skipped:` line: never a traceback, never silently.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner, Result
from sqlalchemy import select

from scorer.cli import EXIT_ITEMS_FAILED, main
from scorer.db.engine import make_engine, make_sessionmaker
from scorer.db.models import Snippet, SnippetStatus, SourcePath
from scorer.settings import Settings

SR = 22_050


def settings_for(data_dir: Path, **values: object) -> Settings:
    return Settings(data_dir=data_dir, device="cpu", torch_threads=1, **values)  # type: ignore[arg-type]


CLASSES = ["none", "male", "female", "multi"]


def tone(seconds: float, f0: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    return (0.2 * x + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def invoke(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), obj=settings, catch_exceptions=False)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny trained model; tests enqueue their own folders against it."""
    root = tmp_path_factory.mktemp("awkward")
    settings = settings_for(
        root / "data", preprocess_batch=4, preprocess_processes=1, max_file_mb=0.5
    )
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
    return {"root": root, "settings": settings, "train": train}


def rows_under(settings: Settings, folder: Path) -> dict[str, tuple[SnippetStatus, str | None]]:
    """{path relative to folder: (status, error)} of the snippets seen under `folder`."""
    with make_sessionmaker(make_engine(settings))() as s:
        found = s.execute(
            select(SourcePath.path, Snippet.status, Snippet.error)
            .join(Snippet, Snippet.sha256 == SourcePath.sha256)
            .where(SourcePath.path.startswith(str(folder) + os.sep))
        ).all()
    return {str(Path(p).relative_to(folder)): (st, err) for p, st, err in found}


def lines_of(result: Result, kind: str) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith(f"{kind}: ")]


def test_a_folder_of_awkward_files_ends_every_path(env: dict) -> None:
    """Item 1 + 2: loops, a FIFO, /dev/zero, a too-large file, a linked folder, a 1-sample WAV
    and the bad inputs handled before: exit 3, one line per failed or skipped path, the good
    files scored."""
    root: Path = env["root"] / "awkward-case"
    folder = root / "inbox"
    outside = root / "elsewhere"
    (folder / "sub").mkdir(parents=True)
    outside.mkdir()
    sf.write(folder / "good.wav", tone(3.0, 220, seed=1), SR)
    sf.write(folder / "sub" / "inner.wav", tone(2.0, 330, seed=2), SR)
    sf.write(outside / "linked song.wav", tone(3.0, 250, seed=5), SR)
    os.symlink(outside, folder / "linked")  # a symlinked folder: followed once
    os.symlink(folder, folder / "sub" / "up")  # a link back up: a loop, listed once
    os.symlink(folder / "loop.wav", folder / "loop.wav")  # a symlink to itself
    os.mkfifo(folder / "x.wav")  # a read would block for ever
    os.symlink("/dev/zero", folder / "zero.wav")  # a read would never end
    sf.write(folder / "big.wav", tone(12.0, 200, seed=3), SR)  # ~1 MB > 0.5 MB limit
    sf.write(folder / "one sample.wav", np.zeros((1, 2), np.float32), 44_100)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.mp3").write_text("this is a text file, not audio\n")
    os.symlink(folder / "does-not-exist.wav", folder / "dangling.wav")
    expect = {
        "good.wav": "scored",
        "sub/inner.wav": "scored",
        "linked/linked song.wav": "scored",
        "sub/up": ("skipped", "folder already listed"),
        "loop.wav": ("skipped", "symlink loop"),
        "x.wav": ("skipped", "not a regular file (a FIFO)"),
        "zero.wav": ("skipped", "not a regular file (a character device)"),
        "big.wav": ("failed", "too large"),
        "one sample.wav": ("failed", "cannot featurise"),
        "empty.wav": ("failed", "empty file"),
        "notes.mp3": ("failed", "not a readable audio file"),
        "dangling.wav": ("failed", "cannot read file"),
    }
    result = invoke(env["settings"], "enqueue", str(folder))
    assert result.exit_code == EXIT_ITEMS_FAILED, result.output
    assert "Traceback" not in result.output
    reported = lines_of(result, "failed") + lines_of(result, "skipped")
    rows = rows_under(env["settings"], folder)
    for name, outcome in expect.items():
        mine = [line for line in reported if line.split(": ")[1] == str(folder / name)]
        if outcome == "scored":
            assert not mine, (name, mine)
            assert rows[name][0] == SnippetStatus.scored, (name, rows.get(name))
            continue
        kind, reason = outcome
        assert len(mine) == 1 and mine[0].startswith(f"{kind}: ") and reason in mine[0], (
            name,
            reported,
        )
        if kind == "failed":
            assert rows[name][0] == SnippetStatus.failed and reason in (rows[name][1] or "")
        else:
            assert name not in rows  # skipped: no row
    assert len(reported) == sum(o != "scored" for o in expect.values()), reported
    listed = json.loads(invoke(env["settings"], "results", "--json").output)
    paths = {r["path"] for r in listed}
    assert str(folder / "linked" / "linked song.wav") in paths
    assert str(folder / "good.wav") in paths


def _enqueue_as_nobody(folder: str, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    # Imported first: after dropping to nobody, root's Python installation cannot be read.
    import tqdm  # noqa: F401

    import scorer.cli.enqueue
    import scorer.manifest  # noqa: F401
    import worker.embedded  # noqa: F401

    if os.geteuid() == 0:  # root reads every folder: drop to nobody, as a user would be
        os.setgid(65534)
        os.setuid(65534)
    result = CliRunner().invoke(main, ["enqueue", folder], obj=settings_for(Path(folder) / "db"))
    out.put((result.exit_code, result.output + repr(result.exception)))


def test_a_folder_that_cannot_be_listed_is_reported() -> None:
    """Item 1: os.walk swallowed it (exit 0, no line); now one `skipped` line and exit 3."""
    base = Path(tempfile.mkdtemp(prefix="scorer-unlistable-"))
    try:
        base.chmod(0o755)
        (base / "locked").mkdir()
        sf.write(base / "locked" / "hidden.wav", tone(0.5, 200), SR)
        (base / "locked").chmod(0o000)
        fork = multiprocessing.get_context("fork")
        out: multiprocessing.Queue = fork.Queue()  # type: ignore[type-arg]
        child = fork.Process(target=_enqueue_as_nobody, args=(str(base), out))
        child.start()
        code, output = out.get(timeout=60)
        child.join(10)
    finally:
        (base / "locked").chmod(0o755)
        shutil.rmtree(base)
    assert code == EXIT_ITEMS_FAILED, output
    assert f"skipped: {base / 'locked'}: cannot list folder: Permission denied" in output


def test_a_file_gone_between_listing_and_reading_is_skipped(env: dict, tmp_path: Path) -> None:
    """Item 1: listed, then deleted before the run reads it: one skip, the rest scored."""
    from scorer.cli.enqueue import list_inputs
    from worker.embedded import run

    sf.write(tmp_path / "a.wav", tone(1.0, 200, seed=8), SR)
    sf.write(tmp_path / "b.wav", tone(1.0, 260, seed=9), SR)
    files, skipped = list_inputs((tmp_path,))
    assert not skipped and len(files) == 2
    (tmp_path / "a.wav").unlink()
    engine = make_engine(env["settings"])
    summary = run(env["settings"], engine, files)
    assert summary.skipped == [(str(tmp_path / "a.wav"), "gone before it was read")]
    assert summary.scored == 1 and not summary.failures


def test_a_file_that_changes_while_read_is_detected(tmp_path: Path) -> None:
    """Item 1: the size and mtime before and after the read, and the bytes read, must agree."""
    from worker.inputs import changed

    path = tmp_path / "growing.wav"
    path.write_bytes(b"x" * 100)
    before = os.stat(path)
    assert not changed(before, os.stat(path), 100)
    assert changed(before, os.stat(path), 101)  # read one byte more than the size said
    with path.open("ab") as f:
        f.write(b"more")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000))
    assert changed(before, os.stat(path), 100)


@pytest.fixture
def one_sample_and_a_song(tmp_path: Path) -> Iterator[list]:
    from worker.stages import Item

    sf.write(tmp_path / "one.wav", np.zeros((1, 2), np.float32), 44_100)
    sf.write(tmp_path / "song.wav", tone(1.5, 200, seed=4), SR)
    yield [Item(f"{i:064d}", (tmp_path / n).read_bytes(), n) for i, n in enumerate(
        ["one.wav", "song.wav"])]  # fmt: skip


def test_an_item_that_cannot_be_windowed_fails_alone_in_its_batch(
    one_sample_and_a_song: list,
) -> None:
    """Item 2: a valid 1-sample 44.1 kHz WAV resamples to nothing; it raised ValueError out of
    the whole batch (every run of its folder died there)."""
    from worker.runtime import Runtime
    from worker.stages import preprocess

    rt = Runtime(settings_for(Path(tempfile.gettempdir()), preprocess_processes=1))
    one, song = preprocess(rt, one_sample_and_a_song)
    assert one.error is not None and one.error.startswith("cannot featurise: ValueError")
    assert one.windows is None
    assert song.error is None and song.windows is not None and song.windows.shape[0] == 1


def test_the_pool_fails_the_item_not_the_run(one_sample_and_a_song: list) -> None:
    """Item 2, embedded mode on every core: the pool re-raised the item's exception."""
    from pipeline.frontend import FrontendConfig
    from worker.pool import PreprocessPool

    settings = settings_for(Path(tempfile.gettempdir()))
    pool = PreprocessPool(settings, FrontendConfig(separation=False), 1)
    try:
        one, song = pool.map(one_sample_and_a_song)
    finally:
        pool.close()
    assert one.error is not None and "ValueError" in one.error
    assert song.windows is not None


def test_paths_are_stored_absolute(env: dict, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Item 7: a relative path given to enqueue is stored absolute (reconcile reads it from
    anywhere)."""
    (tmp_path / "rel").mkdir()
    sf.write(tmp_path / "rel" / "r.wav", tone(1.0, 180, seed=11), SR)
    monkeypatch.chdir(tmp_path)
    result = invoke(env["settings"], "enqueue", "rel")
    assert result.exit_code == 0, result.output
    with make_sessionmaker(make_engine(env["settings"]))() as s:
        sha = s.scalars(
            select(SourcePath.sha256).where(SourcePath.path.endswith("/rel/r.wav"))
        ).one()
        snippet = s.scalars(select(Snippet).where(Snippet.sha256 == sha)).one()
        paths = s.scalars(select(SourcePath.path).where(SourcePath.sha256 == sha)).all()
    assert snippet.source_path == str(tmp_path / "rel" / "r.wav")
    assert paths == [str(tmp_path / "rel" / "r.wav")]


def test_every_enqueued_path_is_listed_under_its_own_name(env: dict, tmp_path: Path) -> None:
    """Item 11: two copies of one song, and a copy of a training file, each listed under the
    path the user enqueued; --by-content lists each content once."""
    sf.write(tmp_path / "song.wav", tone(3.0, 240, seed=12), SR)
    shutil.copy(tmp_path / "song.wav", tmp_path / "copy of song.wav")
    shutil.copy(env["train"] / "male" / "male_0.wav", tmp_path / "mine.wav")
    result = invoke(env["settings"], "enqueue", str(tmp_path))
    assert result.exit_code == 0, result.output
    listed = json.loads(invoke(env["settings"], "results", "--json").output)
    by_path = {r["path"]: r["sha256"] for r in listed}
    song, copy, mine = (str(tmp_path / n) for n in ("song.wav", "copy of song.wav", "mine.wav"))
    assert song in by_path and copy in by_path and by_path[song] == by_path[copy]
    assert mine in by_path
    content = json.loads(invoke(env["settings"], "results", "--json", "--by-content").output)
    shas = [r["sha256"] for r in content]
    assert len(shas) == len(set(shas)) and by_path[song] in shas
    assert len(listed) > len(content)


def test_embedded_recovery_of_rows_a_crashed_run_left(env: dict, tmp_path: Path) -> None:
    """Item 7: rows a crashed embedded run left queued are finished by the next enqueue (of
    other files) and by `scorer reconcile` (no broker); an unreachable source stays queued with
    a warning, a changed one fails."""
    from worker.embedded import RunSummary, ingest

    settings = env["settings"]
    for name, f0 in (("a.wav", 200), ("b.wav", 300), ("gone.wav", 400), ("changed.wav", 500)):
        sf.write(tmp_path / name, tone(1.0, f0, seed=f0), SR)
    sessions = make_sessionmaker(make_engine(settings))
    crashed = [tmp_path / n for n in ("a.wav", "gone.wav", "changed.wav")]
    read = ingest(sessions, crashed, {}, RunSummary(), False, max_bytes=1 << 20)  # then: a crash
    shas = {p.name: sha for p, sha, _, _ in read}
    (tmp_path / "gone.wav").rename(tmp_path / "moved.wav")
    sf.write(tmp_path / "changed.wav", tone(1.0, 510, seed=1), SR)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(tmp_path / "b.wav", other / "b.wav")
    result = invoke(settings, "enqueue", str(other))
    assert result.exit_code == EXIT_ITEMS_FAILED, result.output  # changed.wav: content gone
    assert [w for w in lines_of(result, "warning") if "gone.wav: source unreachable" in w]
    assert [f for f in lines_of(result, "failed") if "changed.wav: source file changed" in f]
    with sessions() as s:
        status = dict(s.execute(select(Snippet.sha256, Snippet.status)).all())
    assert status[shas["a.wav"]] == SnippetStatus.scored
    assert status[shas["gone.wav"]] == SnippetStatus.queued
    assert status[shas["changed.wav"]] == SnippetStatus.failed
    (tmp_path / "moved.wav").rename(tmp_path / "gone.wav")  # the mount is back
    result = invoke(settings, "reconcile")
    assert result.exit_code == 0, result.output
    assert "0 left queued (source unreachable)" in result.output
    with sessions() as s:
        assert s.get(Snippet, s.scalar(select(Snippet.id).where(
            Snippet.sha256 == shas["gone.wav"]))).status == SnippetStatus.scored  # fmt: skip


def test_reconcile_scores_preprocessed_rows_embedded(env: dict, tmp_path: Path) -> None:
    """Item 7: `scorer reconcile` needed a broker; embedded it scores what was preprocessed."""
    sf.write(tmp_path / "p.wav", tone(1.0, 350, seed=21), SR)
    result = invoke(env["settings"], "enqueue", "--no-score", str(tmp_path))
    assert result.exit_code == 0, result.output
    with make_sessionmaker(make_engine(env["settings"]))() as s:
        sha = s.scalars(select(SourcePath.sha256).where(SourcePath.path.endswith("/p.wav"))).one()
        assert s.scalars(select(Snippet.status).where(Snippet.sha256 == sha)).one() == (
            SnippetStatus.preprocessed
        )
    result = invoke(env["settings"], "reconcile")
    assert result.exit_code == 0, result.output
    with make_sessionmaker(make_engine(env["settings"]))() as s:
        assert s.scalars(select(Snippet.status).where(Snippet.sha256 == sha)).one() == (
            SnippetStatus.scored
        )


def test_distributed_reconcile_leaves_an_unreachable_source_queued(tmp_path: Path) -> None:
    """Item 7: reconcile failed every row whose source it could not read from its own
    directory; now an unreachable source stays queued (counted), a changed one fails, and a
    copy seen at another path is re-sent from there."""
    import redis

    from scorer.db.migrate import upgrade
    from worker.celery_app import PREPROCESS_QUEUE, make_celery, queue_depths
    from worker.embedded import RunSummary, ingest
    from worker.publish import reconcile

    client = redis.Redis(host="127.0.0.1", port=6379, db=13)
    client.flushdb()
    settings = settings_for(tmp_path / "data", broker_url="redis://127.0.0.1:6379/13")
    engine = make_engine(settings)
    upgrade(engine)
    for name, f0 in (("away.wav", 200), ("changed.wav", 300), ("first.wav", 400)):
        sf.write(tmp_path / name, tone(1.0, f0, seed=f0), SR)
    shutil.copy(tmp_path / "first.wav", tmp_path / "second.wav")
    sessions = make_sessionmaker(engine)
    paths = [tmp_path / n for n in ("away.wav", "changed.wav", "first.wav", "second.wav")]
    read = ingest(sessions, paths, {}, RunSummary(), False, max_bytes=1 << 20)  # messages lost
    shas = {p.name: sha for p, sha, _, _ in read}
    (tmp_path / "away.wav").rename(tmp_path / "elsewhere.wav")  # a mount that is away
    sf.write(tmp_path / "changed.wav", tone(1.0, 310, seed=1), SR)
    (tmp_path / "first.wav").unlink()  # the content is still at second.wav
    try:
        counts = reconcile(settings, engine, make_celery(settings), 0)
        depth = queue_depths(make_celery(settings))[PREPROCESS_QUEUE]
    finally:
        client.flushdb()
        client.close()
    with sessions() as s:
        status = dict(s.execute(select(Snippet.sha256, Snippet.status)).all())
    engine.dispose()
    assert counts == {"preprocess": 1, "infer": 0, "failed": 1, "unreachable": 1}
    assert depth == 1
    assert status[shas["away.wav"]] == SnippetStatus.queued
    assert status[shas["changed.wav"]] == SnippetStatus.failed
    assert status[shas["first.wav"]] == SnippetStatus.queued  # re-sent from second.wav


def test_scorer_train_reports_a_skipped_training_file(env: dict) -> None:
    """A FIFO in a folder-per-class training set: one `skipped:` line, training goes on."""
    train = env["root"] / "train-with-fifo"
    for label in CLASSES:
        shutil.copytree(env["train"] / label, train / label)  # the same bytes: features cached
    os.mkfifo(train / "male" / "pipe.wav")
    result = invoke(
        env["settings"], "train", "--data", str(train), "--members", "1", "--epochs", "1",
        "--arch", "resnet10", "--name", "with-fifo",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert lines_of(result, "skipped") == [
        f"skipped: {train / 'male' / 'pipe.wav'}: not a regular file (a FIFO)"
    ]
    assert "12 labelled files ready, 0 failed, 1 skipped" in result.output
