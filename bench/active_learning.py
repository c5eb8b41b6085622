"""Active learning, simulated: does labelling the K least certain training-pool snippets buy more
held-out accuracy than labelling K random ones? (issue 13; docs/RESULTS.md)

    python -m bench.active_learning OUT [--data ../shared/data/mir1k4] [--seed-files 300]
        [--picks 100] [--repeats 3] [--members 5] [--arch resnet34] [--epochs 20]
    python -m bench.active_learning OUT --tiny      # demo synthesiser, seconds-sized (the test)

Per repeat r: a random seed set of the training side of the split (bench/mir1k4_split.py: held-out
singers) trains `al-r<r>-base`; it scores the rest of the training side (the pool) as `scorer
enqueue` does for the review queue; the K pool snippets of highest verdict entropy (the queue's
order) and K random pool snippets, with their known labels standing in for a person on `scorer
review`, are added to the seed set, and `al-r<r>-uncertain` and `al-r<r>-random` are trained
with the same member seeds. All three are evaluated on the held-out singers (`scorer evaluate
--labels test.csv`). Everything goes through the `scorer` CLI, in SCORER_DATA_DIR (default
OUT/data). Resumable: a step whose model or report exists is skipped, so the same command
continues after a kill. Writes OUT/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
SCORER = [sys.executable, "-m", "scorer"]
ARMS = ("base", "uncertain", "random")
ENQUEUE_CHUNK = 500


def run(env: dict[str, str], *args: str, ok: tuple[int, ...] = (0,)) -> str:
    """One `scorer` command; its stdout. Exit code 3 (some files failed) is allowed where said."""
    done = subprocess.run([*SCORER, *args], env=env, cwd=HERE, stdout=subprocess.PIPE, text=True)
    if done.returncode not in ok:
        raise SystemExit(f"scorer {' '.join(args[:3])} ... exited {done.returncode}")
    return done.stdout


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a labels CSV, `file` made absolute against the CSV's folder."""
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["file"] = str((path.parent / r["file"]).resolve())
        r.setdefault("group", r.get("split_group") or r.get("singer") or "")
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["file", "label", "group"], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def sha256_of(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def split(args: argparse.Namespace, out: Path, env: dict[str, str]) -> tuple[Path, Path]:
    """train.csv and test.csv: mir1k4's held-out-singer split, or the demo's train/test."""
    train, test = out / "train.csv", out / "test.csv"
    if train.exists() and test.exists():
        return train, test
    if args.tiny:
        demo = out / "demo"
        if not (demo / "test" / "labels.csv").exists():
            run(env, "demo-data", str(demo), "--per-class", "6", "--seed", "0")
        write_csv(train, read_csv(demo / "train" / "labels.csv"))
        write_csv(test, read_csv(demo / "test" / "labels.csv"))
    else:
        from bench.mir1k4_split import split as mir1k4_split

        mir1k4_split(args.data, out)
    return train, test


def models(env: dict[str, str]) -> set[str]:
    return {m["name"] for m in json.loads(run(env, "models", "--json"))}


def train(env: dict[str, str], args: argparse.Namespace, name: str, data: Path, seed: int) -> None:
    if name in models(env):
        print(f"  {name}: trained before", file=sys.stderr)
        return
    run(
        env, "train", "--data", str(data), "--name", name, "--no-activate", "--json",
        "--members", str(args.members), "--arch", args.arch, "--epochs", str(args.epochs),
        "--seed", str(seed),
    )  # fmt: skip


def least_certain(env: dict[str, str], model: str, pool: list[dict[str, str]], k: int) -> list:
    """The `k` pool rows of highest verdict entropy under `model` (the review queue's order),
    after scoring the pool with it as `scorer enqueue` does."""
    from sqlalchemy import select

    from scorer.db import queries
    from scorer.db.engine import make_engine, make_sessionmaker
    from scorer.db.models import FILE_WINDOW, Prediction
    from scorer.settings import Settings

    run(env, "models", "activate", model)
    files = [r["file"] for r in pool]
    for start in range(0, len(files), ENQUEUE_CHUNK):
        run(env, "enqueue", *files[start : start + ENQUEUE_CHUNK], ok=(0, 3))
    by_sha = {sha256_of(r["file"]): r for r in pool}
    engine = make_engine(Settings(data_dir=Path(env["SCORER_DATA_DIR"])))
    with make_sessionmaker(engine)() as s:
        version = queries.model_by_name_or_id(s, model)
        assert version is not None
        ranked = s.execute(
            select(Prediction.sha256)
            .where(Prediction.model_version_id == version.id)
            .where(Prediction.window_index == FILE_WINDOW)
            .order_by(Prediction.entropy.desc(), Prediction.id.desc())
        ).scalars()
        picked = [by_sha[sha] for sha in ranked if sha in by_sha][:k]
    engine.dispose()
    return picked


def evaluate(env: dict[str, str], name: str, test: Path, report: Path) -> dict[str, Any]:
    if not report.exists():
        text = run(env, "evaluate", "--labels", str(test), "--model-version", name, "--json")
        report.write_text(text)
    full = json.loads(report.read_text())
    return {"accuracy": full["accuracy"], "macro_f1": full["macro_f1"], "files": full["files"]}


def repeat(args: argparse.Namespace, out: Path, env: dict[str, str], r: int) -> dict[str, Any]:
    train_csv, test_csv = split(args, out, env)
    rows = read_csv(train_csv)
    rng = random.Random(1000 + r)
    order = rng.sample(rows, len(rows))
    seed_rows, pool = order[: args.seed_files], order[args.seed_files :]
    if len(pool) < args.picks:
        raise SystemExit(f"the pool has {len(pool)} files, fewer than --picks {args.picks}")
    folder = out / f"r{r}"
    names = {arm: f"al-r{r}-{arm}" for arm in ARMS}
    train(env, args, names["base"], write_csv(folder / "base.csv", seed_rows), 1000 * r)
    uncertain_csv = folder / "uncertain.csv"
    if not uncertain_csv.exists():
        picked = least_certain(env, names["base"], pool, args.picks)
        write_csv(uncertain_csv, seed_rows + picked)
    random_csv = folder / "random.csv"
    if not random_csv.exists():
        write_csv(random_csv, seed_rows + rng.sample(pool, args.picks))
    train(env, args, names["uncertain"], uncertain_csv, 1000 * r)
    train(env, args, names["random"], random_csv, 1000 * r)
    return {arm: evaluate(env, names[arm], test_csv, folder / f"eval_{arm}.json") for arm in ARMS}


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| repeat | base | + uncertain | + random | uncertain - random |",
        "|---|---|---|---|---|",
    ]
    for r, res in enumerate(results):
        a = {arm: res[arm]["accuracy"] for arm in ARMS}
        lines.append(
            f"| {r} | {a['base']:.3f} | {a['uncertain']:.3f} | {a['random']:.3f} | "
            f"{a['uncertain'] - a['random']:+.3f} |"
        )
    mean = {arm: sum(x[arm]["accuracy"] for x in results) / len(results) for arm in ARMS}
    lines.append(
        f"| mean | {mean['base']:.3f} | {mean['uncertain']:.3f} | {mean['random']:.3f} | "
        f"{mean['uncertain'] - mean['random']:+.3f} |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=HERE.parent / "shared" / "data" / "mir1k4")
    ap.add_argument("--tiny", action="store_true", help="demo data, resnet10, 1 member, 1 epoch")
    ap.add_argument("--seed-files", type=int, default=300)
    ap.add_argument("--picks", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--arch", default="resnet34")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args(argv)
    if args.tiny:
        args.seed_files, args.picks, args.repeats = 8, 4, 1
        args.members, args.arch, args.epochs = 1, "resnet10", 1
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ}
    env.setdefault("SCORER_DATA_DIR", str(out / "data"))
    if args.tiny:
        env.setdefault("SCORER_SEPARATION", "false")  # seconds, not minutes: no Spleeter
    results = [repeat(args, out, env, r) for r in range(args.repeats)]
    summary = {"params": {k: str(v) for k, v in vars(args).items()}, "repeats": results}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
