"""The GPU suite: everything a GPU machine should measure, in one command with no network.

    python -m bench.gpu_suite export --data-dir D --train train.csv --test test.csv --out F
    python -m bench.gpu_suite run [--tiny] [--features F] [--out DIR] [--budget-s S]
    bench/gpu_suite.sh [--tiny] ...        # the same `run`, with the interpreter found for you

A lent GPU machine has torch 2.11 + CUDA on Python 3.12, no network, at most 64 MiB of brought
files and 10 minutes per command. So the heavy front end (Spleeter on 2,916 mir1k4 snippets) runs
here, where the features are already cached in scorer's database, and ``export`` packs the
log-mel features of the fixed singer-disjoint split (bench/mir1k4_split.py) as float16 split
into byte planes and lzma-compressed: ~40 MB. ``run`` needs only numpy and torch (+ torchvision,
safetensors, tqdm: all on the GPU image) and, within ``--budget-s``:

1. trains the full reference recipe (20 × ResNet-34 × 20 epochs, all members stacked, bf16
   autocast where native) on the training singers, as ``scorer train`` would (same ordering by
   sha, same group split), stopping cleanly at its share of the budget: the epoch-major order
   leaves an evenly trained ensemble, and the epochs reached are reported;
2. evaluates it on the held-out singers: accuracy, macro-F1, per-class recall, the first-k
   members curve, ECE; every member's probabilities on the held-out, the training and the
   validation snippets go to OUT/probs_<run>.npz, so calibration, fusion and distillation (the
   teacher's soft labels) can be done afterwards on a CPU;
3. runs the GPU rows of the model bench cases (``python -m bench --only member_forward ensemble
   training``: fused vs loop at batch 1/32/256 in bf16, stacked training), and times Spleeter's
   U-Net on the GPU (batch 1/8/32 at T = 512, float32 and bf16; random weights, since speed does
   not depend on their values and the official ones would not fit beside the features);
4. with time left, extra training runs (``--extra``) for the accuracy issue.

Everything lands in OUT as it is produced (results.json rewritten after each step), so a run cut
short still returns what it finished. ``--tiny`` runs the same code on the CPU in about a
minute: synthetic features, 2 × resnet10 × 2 epochs, the quick bench sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import lzma
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ["none", "male", "female", "multi"]
MEMBER_CURVE = (1, 2, 5, 10, 20)


# ---------------------------------------------------------------------------------------------
# The feature file: float16 windows as two byte planes (high bytes compress well), lzma.


def pack_features(x: np.ndarray) -> np.ndarray:
    """(N, T, M) float16 -> uint8 lzma blob of its little-endian byte planes."""
    b = np.ascontiguousarray(x, dtype="<f2").view(np.uint8).reshape(-1, 2)
    return np.frombuffer(lzma.compress(np.ascontiguousarray(b.T).tobytes(), preset=6), np.uint8)


def unpack_features(blob: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``pack_features``: exactly the same float16 values."""
    planes = np.frombuffer(lzma.decompress(blob.tobytes()), np.uint8).reshape(2, -1)
    return np.ascontiguousarray(planes.T).view("<f2").reshape(shape).astype(np.float16)


@dataclass
class Split:
    """One side of the split: features, class indices, groups, sha256s."""

    x: np.ndarray
    y: np.ndarray
    groups: list[str]
    shas: list[str]


def save_split(path: Path, train: Split, test: Split, meta: dict[str, Any]) -> None:
    arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta))}
    for name, s in (("train", train), ("test", test)):
        arrays[f"{name}_x"] = pack_features(s.x)
        arrays[f"{name}_shape"] = np.array(s.x.shape)
        arrays[f"{name}_y"] = s.y.astype(np.int64)
        arrays[f"{name}_groups"] = np.array(s.groups)
        arrays[f"{name}_shas"] = np.array(s.shas)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_split(path: Path) -> tuple[Split, Split, dict[str, Any]]:
    z = np.load(path, allow_pickle=False)
    sides = []
    for name in ("train", "test"):
        shape = tuple(int(v) for v in z[f"{name}_shape"])
        sides.append(
            Split(
                x=unpack_features(z[f"{name}_x"], shape),
                y=z[f"{name}_y"],
                groups=[str(g) for g in z[f"{name}_groups"]],
                shas=[str(s) for s in z[f"{name}_shas"]],
            )
        )
    return sides[0], sides[1], json.loads(str(z["meta"]))


def export(data_dir: Path, train_csv: Path, test_csv: Path, out: Path) -> dict[str, Any]:
    """Features of the CSVs' files from scorer's database under ``data_dir`` (embedded SQLite,
    the settings' front end), ordered by sha256 as ``scorer train`` orders them."""
    import hashlib

    from sqlalchemy.orm import Session

    from scorer.db import queries
    from scorer.db.engine import make_engine
    from scorer.manifest import read_manifest
    from scorer.settings import Settings
    from worker.runtime import frontend_from_settings

    settings = Settings(data_dir=data_dir, database_url=None, broker_url=None)
    frontend = frontend_from_settings(settings)
    engine = make_engine(settings)
    sides = []
    missing: dict[str, int] = {}
    for name, csv_path in (("train", train_csv), ("test", test_csv)):
        labelled = read_manifest(csv_path)
        rows = sorted(
            (hashlib.sha256(p.read_bytes()).hexdigest(), lab.label, lab.group or str(p))
            for p, lab in labelled.items()
        )
        with Session(engine) as s:
            feats = queries.load_features(s, [r[0] for r in rows], frontend.version)
        kept = [r for r in rows if r[0] in feats and feats[r[0]].shape[0] == 1]
        missing[name] = len(rows) - len(kept)
        sides.append(
            Split(
                x=np.stack([feats[sha][0] for sha, _, _ in kept]),
                y=np.array([CLASSES.index(label) for _, label, _ in kept]),
                groups=[g for _, _, g in kept],
                shas=[sha for sha, _, _ in kept],
            )
        )
    meta = {"classes": CLASSES, "frontend": frontend.to_dict(), "version": frontend.version}
    save_split(out, sides[0], sides[1], meta)
    return {
        "train": len(sides[0].y),
        "test": len(sides[1].y),
        "missing": missing,
        "frontend_version": frontend.version,
        "bytes": out.stat().st_size,
    }


def synthetic_split(n_train: int = 64, n_test: int = 32) -> tuple[Split, Split, dict[str, Any]]:
    """Learnable stand-in features for ``--tiny`` (class c is louder in mel bands 10c..10c+8)."""
    rng = np.random.default_rng(0)

    def side(n: int, offset: int) -> Split:
        y = np.arange(n) % len(CLASSES)
        x = rng.normal(-60, 10, (n, 299, 40))
        for c in range(len(CLASSES)):
            x[y == c, :, 10 * c : 10 * c + 8] += 25
        groups = [f"singer{offset + i % 8}" for i in range(n)]
        return Split(x.astype(np.float16), y, groups, [f"{offset}-{i}" for i in range(n)])

    return side(n_train, 0), side(n_test, 100), {"classes": CLASSES, "synthetic": True}


# ---------------------------------------------------------------------------------------------
# Evaluation of member probabilities (pure functions: also used on the CPU afterwards).


def summary(member_proba: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class recall/precision, confusion, ECE, first-k members curve
    of (M, N, C) member probabilities against labels y (N,)."""
    from training.calibration import accuracy_vs_members, expected_calibration_error, member_counts
    from training.metrics import accuracy, confusion_matrix, macro_f1, precision_recall_f1

    proba = member_proba.mean(axis=0)
    pred = proba.argmax(axis=1)
    prec, rec, _ = precision_recall_f1(y, pred, n_classes)
    members = member_proba.shape[0]
    counts = member_counts(members, MEMBER_CURVE)
    member_acc = [accuracy(y, p.argmax(axis=1)) for p in member_proba]
    return {
        "n": len(y),
        "accuracy": accuracy(y, pred),
        "macro_f1": macro_f1(y, pred, n_classes),
        "recall": [float(v) for v in rec],
        "precision": [float(v) for v in prec],
        "confusion": confusion_matrix(y, pred, n_classes).tolist(),
        "ece": expected_calibration_error(proba, y),
        "accuracy_vs_members": accuracy_vs_members(member_proba, y, counts),
        "member_accuracy_mean": float(np.mean(member_acc)),
        "member_accuracy_best": float(np.max(member_acc)),
    }


# ---------------------------------------------------------------------------------------------
# The steps of `run`.


class Report:
    """results.json in OUT, rewritten after every step so a cut-short run keeps what it did."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.out / "results.json")
        print(f"[gpu_suite] {key}: {json.dumps(value, default=str)[:2000]}", flush=True)


def train_and_evaluate(
    name: str,
    train: Split,
    test: Split,
    params: Any,
    device: str,
    out: Path,
    deadline: float,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Train ``params`` on ``train`` until done or ``deadline`` (time.monotonic), then evaluate
    every member on the held-out ``test`` and on the run's own validation singers."""
    import tempfile

    import torch

    from training.data import group_split
    from training.ensemble import Ensemble
    from training.train import TrainingStopped
    from training.train import run as train_run

    x_train = transform(train.x) if transform else train.x
    x_test = transform(test.x) if transform else test.x
    epochs_done: list[int] = []

    def progress(rec: dict[str, Any]) -> None:
        if rec["member"] == params.members - 1:
            epochs_done.append(rec["epoch"])
            print(
                f"[gpu_suite] {name}: epoch {rec['epoch']}/{params.epochs} done at "
                f"{time.monotonic() - t0:.0f} s, val_acc(last member) {rec.get('val_acc')}",
                flush=True,
            )

    t0 = time.monotonic()
    # Checkpoints (20 x ~260 MB, rewritten every epoch) go to RAM where there is a tmpfs.
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix=f"gpu-{name}-", dir=shm) as tmp:
        work = Path(tmp)
        stopped = False
        amp: bool | None = None  # bf16 where native, as scorer train does
        for attempt in (1, 2):
            try:
                train_run(
                    params,
                    x_train,
                    train.y,
                    train.groups,
                    CLASSES,
                    work / str(attempt),
                    device=device,
                    progress=progress,
                    should_stop=lambda: time.monotonic() > deadline,
                    show_progress=False,
                    amp=amp,
                )
            except TrainingStopped:
                stopped = True
            except RuntimeError as e:  # a device-specific failure: measure float32 instead
                if attempt == 2 or amp is False:
                    raise
                print(f"[gpu_suite] {name}: bf16 training failed ({e!r}); float32", flush=True)
                amp = False
                continue
            break
        work = work / str(attempt)
        train_s = time.monotonic() - t0
        members = []
        for i in range(params.members):
            path = work / f"member_{i:02d}.pt"
            if not path.exists():
                break
            from training.model import build_member

            m = build_member(len(CLASSES), params.arch)
            m.load_state_dict(torch.load(path, weights_only=True, map_location="cpu")["model"])
            members.append(m)
    if not members:
        return {"name": name, "error": "no member finished an epoch", "train_s": train_s}
    ens = Ensemble(members, CLASSES, normalize=params.normalize, device=device)
    train_idx, val_idx = group_split(train.groups, train.y, params.val_fraction, params.seed)

    def member_proba(x: np.ndarray) -> np.ndarray:
        parts = [
            ens.member_proba(torch.from_numpy(x[i : i + 256])).cpu().numpy()
            for i in range(0, len(x), 256)
        ]
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(members), 0, 4))

    t1 = time.monotonic()
    test_p = member_proba(x_test)
    eval_s = time.monotonic() - t1
    train_p = member_proba(x_train)  # the teacher's soft labels, for distillation here
    val_p = train_p[:, val_idx]
    np.savez_compressed(
        out / f"probs_{name}.npz",
        test=test_p.astype(np.float16),
        test_y=test.y,
        test_shas=np.array(test.shas),
        train=train_p.astype(np.float16),
        train_y=train.y,
        train_shas=np.array(train.shas),
        val=val_p.astype(np.float16),
        val_y=train.y[val_idx],
        val_shas=np.array([train.shas[i] for i in val_idx]),
    )
    result = {
        "name": name,
        "params": params.to_dict(),
        "input": getattr(transform, "__doc__", None) or "log-mel dB as stored (the reference)",
        "members_evaluated": len(members),
        "epochs_done": max(epochs_done, default=0),
        "stopped_at_deadline": stopped,
        "train_amp": "auto (bf16 where native)" if amp is None else amp,
        "n_train": len(train_idx),
        "n_val": len(val_idx),
        "train_s": round(train_s, 1),
        "samples_per_s": round(
            max(epochs_done, default=0) * params.members * len(train_idx) / train_s,
            1,
        ),
        "test_eval_s": round(eval_s, 2),
        "test": summary(test_p, test.y, len(CLASSES)),
    }
    if len(val_idx):
        result["val"] = summary(val_p, train.y[val_idx], len(CLASSES))
    return result


EXTRAS = ("global_std", "all_singers", "global_all")
BENCH_CASES = ("ensemble", "training", "member_forward")  # member_forward compiles: last


def bench_rows(cases: list[str], quick: bool, deadline: float, out: Path) -> dict[str, Any]:
    """Each model bench case in its own subprocess (own CUDA context, own time limit), so one
    that hangs or fails costs only itself."""
    rows: dict[str, Any] = {}
    for case in cases:
        left = deadline - time.monotonic()
        if left < 20:
            rows[case] = {"skipped": f"{left:.0f} s left"}
            continue
        cmd = [sys.executable, "-m", "bench", "--json", "--only", case, *(["--quick"] * quick)]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=left, cwd=Path(__file__).parents[1]
            )
        except subprocess.TimeoutExpired:
            rows[case] = {"error": f"timed out after {left:.0f} s"}
            continue
        with open(out / "bench_stderr.txt", "a") as f:
            f.write(f"== {case} (exit {proc.returncode})\n{proc.stderr[-8000:]}\n")
        if proc.returncode != 0:
            rows[case] = {"error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
            continue
        report = json.loads(proc.stdout)
        rows[case] = report.get(case, report)
        rows.setdefault("machine", report.get("machine"))
    return rows


def spleeter_rows(device: str, tiny: bool) -> list[dict[str, Any]]:
    """Spleeter's two U-Nets + STFT on ``device``: clips/s at batch 1/8/32, float32 and bf16."""
    import torch

    from bench.timing import measure
    from pipeline.spleeter import Separator

    torch.manual_seed(0)
    sep = Separator(frames=512).to(device).eval()
    sync = torch.cuda.synchronize if device == "cuda" else None
    rows = []
    for batch in (1,) if tiny else (1, 8, 32):
        wave = torch.randn(batch, 2, 44_100 * 3, device=device) * 0.1
        for bf16 in (False, True):
            if bf16 and device != "cuda":
                continue

            def step(wave: torch.Tensor = wave, bf16: bool = bf16) -> None:
                with (
                    torch.no_grad(),
                    torch.autocast(device, dtype=torch.bfloat16, enabled=bf16),
                ):
                    sep.separate(wave)

            t = measure(step, repeat=1 if tiny else 5, warmup=1, sync=sync)
            rows.append(
                {
                    "batch": batch,
                    "bf16": bf16,
                    "median_s": round(t.median, 5),
                    "clips_per_s": round(batch / t.median, 1),
                }
            )
    return rows


def run(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    deadline = t_start + args.budget_s
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from training.train import TrainParams

    report = Report(out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report.put(
        "machine",
        {
            "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(),
            "tiny": args.tiny,
        },
    )
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest kernels
    if args.tiny:
        train, test, meta = synthetic_split()
        ref = TrainParams(members=2, epochs=2, arch="resnet10")
    else:
        train, test, meta = load_split(Path(args.features))
        ref = TrainParams()  # the reference recipe: 20 × ResNet-34 × 20 epochs
    report.put("data", {"train": len(train.y), "test": len(test.y), **meta})

    # 1-2. The reference recipe, with the budget minus what the benches need.
    reserve = 0 if args.tiny else args.reserve_s
    result = guarded(
        lambda: train_and_evaluate("reference", train, test, ref, device, out, deadline - reserve)
    )
    report.put("reference", result)

    # 3. Bench rows, then Spleeter on the device.
    bench_deadline = deadline - (10 if args.tiny else 30)
    report.put("bench", bench_rows(args.bench, args.tiny, bench_deadline, out))
    report.put("spleeter", guarded(lambda: spleeter_rows(device, args.tiny)))

    # 4. Extra runs with the first k members' seeds: comparable with the reference's first k
    # members (member i is seeded seed + i whatever the ensemble size), at k/20 of its cost.
    k = min(args.extra_members, ref.members)
    extras = {
        # One global mean/std of the training log-mel (issue 11: the raw dB scale, down to the
        # -313 dB silence floor, vs a standardised input).
        "global_std": (_replace(ref, members=k), _global_standardiser(train.x)),
        # Every training singer trains (no validation hold-out).
        "all_singers": (_replace(ref, members=k, val_fraction=0.0), None),
        # Both.
        "global_all": (_replace(ref, members=k, val_fraction=0.0), _global_standardiser(train.x)),
    }
    per_member_s = result.get("train_s", 0) / max(result.get("members_evaluated", 1), 1)
    for name in args.extra:
        params, transform = extras[name]
        left = deadline - time.monotonic()
        need = per_member_s * k * 1.3
        if left < need + 15:
            report.put(name, {"skipped": f"{left:.0f} s left, ~{need:.0f} s needed"})
            continue
        report.put(
            name,
            guarded(
                lambda params=params, transform=transform, name=name: train_and_evaluate(
                    name, train, test, params, device, out, deadline - 10, transform
                )
            ),
        )
    report.put("total_s", round(time.monotonic() - t_start, 1))
    return 0


def guarded(step: Callable[[], Any]) -> Any:
    """A step's result, or its error: one failing measurement must not lose the others."""
    try:
        return step()
    except Exception as e:
        import traceback

        traceback.print_exc()
        return {"error": repr(e)}


def _replace(params: Any, **changes: Any) -> Any:
    from dataclasses import replace

    return replace(params, **changes)


def _global_standardiser(x: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """(x - mean) / std with one mean and std of the whole training log-mel."""
    mean = float(x.astype(np.float32).mean())
    std = float(x.astype(np.float32).std())

    def apply(a: np.ndarray) -> np.ndarray:
        return ((a.astype(np.float32) - mean) / std).astype(np.float16)

    apply.__doc__ = f"one global standardisation: (x - {mean:.3f}) / {std:.3f}"
    return apply


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_suite", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="pack cached mir1k4 features for the GPU machine")
    ex.add_argument("--data-dir", type=Path, required=True, help="SCORER_DATA_DIR with features")
    ex.add_argument("--train", type=Path, required=True)
    ex.add_argument("--test", type=Path, required=True)
    ex.add_argument("--out", type=Path, default=Path(".gpu/mir1k4.npz"))
    r = sub.add_parser("run", help="the suite (on the GPU machine; --tiny on any CPU)")
    r.add_argument("--tiny", action="store_true", help="synthetic data, tiny sizes, ~1 min")
    r.add_argument("--features", type=Path, default=Path(".gpu/mir1k4.npz"))
    r.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    r.add_argument("--budget-s", type=float, default=540.0, help="stop everything by then")
    r.add_argument("--reserve-s", type=float, default=150.0, help="kept for benches after training")
    r.add_argument("--extra", nargs="*", default=[], choices=EXTRAS)
    r.add_argument("--extra-members", type=int, default=5, help="members of each extra run")
    r.add_argument("--bench", nargs="*", default=None, choices=BENCH_CASES,
                   help="model bench cases (default: all; --tiny: ensemble)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.cmd == "export":
        print(json.dumps(export(args.data_dir, args.train, args.test, args.out)))
        return 0
    if args.bench is None:
        args.bench = ["ensemble"] if args.tiny else list(BENCH_CASES)
    if not args.tiny and not args.features.is_file():
        parser.error(f"no features at {args.features}: run `export` first (or --tiny)")
    with contextlib.suppress(BrokenPipeError):
        return run(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
