"""int8 for the distilled student (issue 12): is PT2E static int8 worth it for the fast profile?

    python -m bench.int8_student [--data-dir D --model-version V [--labels test.csv]]
        [--threads 1,2] [--batches 1,32] [--quick] [--out int8-student.json]

The fast profile scores with a 1-member ResNet-10 student in bf16 eager where the CPU has it
natively (training/ensemble.py). This quantises the same student with PT2E (torchao's
``X86InductorQuantizer``: static, per-channel symmetric int8 weights, per-tensor uint8
activations), calibrated on cached feature windows, and runs it through ``torch.compile``
(inductor with freezing: the oneDNN int8 kernels). Beside it, on the same weights and windows:
float32 and bf16 eager (what scorer runs today) and compiled, and int8 mixed with bf16 (the
quantised graph under bf16 autocast, torchao's "int8-mixed-bf16").

Speed: per window at each batch size, best and median of N interleaved rounds after warm-up,
each thread count in a process of its own (inductor bakes the thread count into its kernels,
and a process pays the compile once); the first call at each batch size is the one-off compile,
timed with an empty inductor cache (a fresh process on a fresh host). Quality: argmax agreement
and max |prob diff| against float32 eager on windows disjoint from the calibration ones; with
``--labels``, accuracy and macro-F1 of the files, judged as `scorer evaluate` judges them
(scorer.evaluation.summarize: windows calibrated, then worker.stages.file_verdict).

Without ``--data-dir`` the student has random weights (BatchNorm statistics set from the inputs,
so activations have a trained network's scale) and the windows are random dB-like values: for
speed only; the agreement is then a smoke check, not a measurement. Needs ``torchao`` (not a
scorer dependency): ``pip install torchao==0.17.0``, the release made for torch 2.11.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from training.model import N_FRAMES, N_MELS, build_member, prepare_input

Forward = Callable[[torch.Tensor], torch.Tensor]
USER_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
"""Read before torchao is imported: importing it sets the variable to inductor's default."""
CLASSES = ["none", "male", "female", "multi"]


@dataclass
class Student:
    """The network and what feeding and judging it needs."""

    net: nn.Module
    classes: list[str]
    normalize: str
    temperature: float
    source: str


@dataclass
class Windows:
    """Calibration and evaluation windows, (N, 299, 40) float16 dB; disjoint by file.
    ``files``/``counts``/``y_true``: the labelled files the evaluation windows belong to (in
    order), or None without labels."""

    calib: np.ndarray
    evaluate: np.ndarray
    counts: np.ndarray | None = None
    y_true: np.ndarray | None = None


# --- inputs -------------------------------------------------------------------------------------


def random_student(seed: int, settle_on: torch.Tensor) -> Student:
    """A ResNet-10 member with random weights whose BatchNorm statistics are those of
    ``settle_on``: at init they are (0, 1), and raw dB inputs would then saturate every softmax."""
    torch.manual_seed(seed)
    net = build_member(len(CLASSES), "resnet10")
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the settling batches
    net.train()
    with torch.no_grad():
        for start in range(0, len(settle_on), 32):
            net(settle_on[start : start + 32])
    return Student(net.eval(), CLASSES, "none", 1.0, f"random weights (seed {seed})")


def random_windows(n_calib: int, n_eval: int, seed: int) -> Windows:
    """dB-like noise (mean -60, std 20), the shape of real windows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(-60.0, 20.0, size=(n_calib + n_eval, N_FRAMES, N_MELS)).astype(np.float16)
    return Windows(calib=x[:n_calib], evaluate=x[n_calib:])


def load_student(data_dir: Path, model_key: str) -> tuple[Student, Any, Any, Any]:
    """(student, its model version row, settings, engine) of ``model_key`` in ``data_dir``. A
    version of several members gives member 0 (a student has one)."""
    from scorer.db import queries
    from scorer.db.engine import make_engine, make_sessionmaker
    from scorer.settings import Settings
    from training.ensemble import load_ensemble

    settings = Settings(data_dir=data_dir, database_url=None, broker_url=None, device="cpu")
    engine = make_engine(settings)
    with make_sessionmaker(engine)() as s:
        mv = queries.model_by_name_or_id(s, model_key)
        if mv is None:
            raise SystemExit(f"no model version {model_key!r} in {data_dir}")
        s.expunge(mv)
    path = Path(mv.weights_uri)
    path = path if path.is_absolute() else settings.resolved_model_dir / path
    ens = load_ensemble(path, "cpu", amp=False)
    note = "" if ens.n_members == 1 else f", member 0 of {ens.n_members}"
    student = Student(
        ens.members[0].eval(),
        ens.classes,
        ens.normalize,
        ens.temperature,
        f"{mv.name} ({mv.params.get('arch')}{note})",
    )
    return student, mv, settings, engine


def real_windows(
    settings: Any, engine: Any, mv: Any, labels: Path | None, n_calib: int, n_eval: int, seed: int
) -> Windows:
    """Cached windows of the model's front end. With ``labels``: every window of those files is
    evaluated, and calibration draws from the other files; without: both from a seeded shuffle
    of all files, calibration first."""
    from sqlalchemy import select

    from scorer.db.engine import make_sessionmaker
    from scorer.db.models import Feature

    with make_sessionmaker(engine)() as s:
        every = sorted(
            s.scalars(select(Feature.sha256).where(Feature.frontend_version == mv.frontend_version))
        )
    rng = np.random.default_rng(seed)
    order = [every[i] for i in rng.permutation(len(every))]
    counts = y_true = None
    if labels is not None:
        files = labelled_files(settings, engine, mv, labels)
        eval_shas = [f["sha256"] for f in files]
        counts = np.array([f["n_windows"] for f in files], dtype=np.int64)
        y_true = np.array([list(mv.classes).index(f["label"]) for f in files], dtype=np.int64)
        held = set(eval_shas)
        calib_shas = [sha for sha in order if sha not in held]
    else:
        calib_shas, eval_shas = order, []
    with make_sessionmaker(engine)() as s:
        calib, used = _take(s, calib_shas, mv.frontend_version, n_calib)
        if labels is None:
            evaluate, _ = _take(s, calib_shas[used:], mv.frontend_version, n_eval)
        else:
            evaluate, _ = _take(s, eval_shas, mv.frontend_version, None)
    return Windows(calib=calib, evaluate=evaluate, counts=counts, y_true=y_true)


def _take(
    session: Any, shas: list[str], frontend_version: str, limit: int | None
) -> tuple[np.ndarray, int]:
    """The windows of ``shas`` in order, whole files, until ``limit`` windows (None: all);
    returns them and how many files they came from."""
    from scorer.db import queries

    parts: list[np.ndarray] = []
    n = used = 0
    for start in range(0, len(shas), 256):
        chunk = shas[start : start + 256]
        feats = queries.load_features(session, chunk, frontend_version)
        for sha in chunk:
            if limit is not None and n >= limit:
                return np.concatenate(parts)[:limit], used
            parts.append(feats[sha])
            n += len(feats[sha])
            used += 1
    if not parts:
        return np.zeros((0, N_FRAMES, N_MELS), np.float16), 0
    return np.concatenate(parts)[:limit], used


def labelled_files(settings: Any, engine: Any, mv: Any, labels: Path) -> list[dict[str, Any]]:
    """The CSV's files as `scorer evaluate --labels` finds them (by the sha256 of their bytes;
    embedded, files without features are featurised first), labels the model knows only.
    Files the model trained on are kept: a student learns from every cached window."""
    from scorer.evaluation import _files_from_csv, _select

    files = _files_from_csv(settings, engine, mv, labels, lambda msg: print(msg, file=sys.stderr))
    files, _, notes = _select(files, list(mv.classes), set(), None, mv.name)
    for note in notes:
        print(note, file=sys.stderr)
    return files


# --- the variants -------------------------------------------------------------------------------


def quantize_int8(net: nn.Module, calib: torch.Tensor, batch: int = 32) -> nn.Module:
    """PT2E static int8 of ``net`` (float32, eval): exported with a dynamic batch axis (one
    quantised graph for every batch size), observed on ``calib`` (B, 1, 299, 40), converted
    to quantize/dequantize pairs that inductor folds into oneDNN int8 kernels when compiled
    with freezing.

    Exported strict: the quantizer finds convolutions by their ``source_fn_stack``, which
    torch 2.11's default (non-strict) export does not record for this network; it then
    annotates nothing and "int8" silently stays float32 (``int8_ops`` counts what it did)."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())  # per-channel
    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    exported = torch.export.export(
        copy.deepcopy(net).eval(), (calib[:2],), dynamic_shapes=({0: batch_dim},), strict=True
    ).module()
    with warnings.catch_warnings():  # "input of maxpool2d is not quantized": the stem's
        warnings.filterwarnings("ignore", "The input of maxpool2d", UserWarning)
        prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for start in range(0, len(calib), batch):
            prepared(calib[start : start + batch])
    return convert_pt2e(prepared)


def int8_ops(graph_module: nn.Module) -> dict[str, int]:
    """How many weights and activations the converted graph quantises: 0 means nothing was."""
    targets = [str(n.target) for n in graph_module.graph.nodes if n.op == "call_function"]
    return {
        "weights_per_channel": sum("dequantize_per_channel" in t for t in targets),
        "activations": sum("quantize_per_tensor" in t and "dequantize" not in t for t in targets),
    }


def _bf16(fn: Forward) -> Forward:
    """``fn`` under bf16 autocast, as training/ensemble.py runs a member where bf16 is native."""

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(x)

    return run


def variants(net: nn.Module, int8: nn.Module | None, bf16: bool, quick: bool) -> dict[str, Forward]:
    """name -> forward (logits); compiled ones compile on their first call. ``bf16``: include
    the bf16 rows (only where bf16 is native: elsewhere it is emulated and scorer runs float32)."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # weights as constants: prepacked (int8: quantised) kernels
    out: dict[str, Forward] = {"fp32 eager": net}
    if bf16:
        out["bf16 eager"] = _bf16(net)
    if not quick:
        out["fp32 compiled"] = _compile(copy.deepcopy(net))
        if bf16:
            out["bf16 compiled"] = _bf16(_compile(copy.deepcopy(net)))
    if int8 is not None:
        out["int8 compiled"] = _compile(int8)
        if bf16 and not quick:
            out["int8+bf16 compiled"] = _bf16(_compile(copy.deepcopy(int8)))
    return out


def _compile(net: nn.Module) -> Forward:
    """Inductor, one static graph per batch size. Why static: with a dynamic batch axis the
    int8 graph does not run (torch 2.11: the quantised stem convolution's output strides
    disagree with its meta kernel, an AssertionError in assert_size_stride); the float graphs
    are compiled the same way so that compile costs compare. In a product this means padding
    batches to a few sizes: dynamo recompiles per size only up to its cache limit (8)."""
    return torch.compile(net, dynamic=False)


# --- measuring ----------------------------------------------------------------------------------


def first_calls(fns: dict[str, Forward], x: torch.Tensor, batches: list[int]) -> dict[str, dict]:
    """Seconds of each variant's first call at each batch size: for a compiled variant the
    compile for that size (the first one also pays the process's one-off set-up)."""
    out: dict[str, dict] = {}
    with torch.no_grad():
        for name, fn in fns.items():
            out[name] = {}
            for b in batches:
                t0 = time.perf_counter()
                fn(x[:b])
                out[name][b] = time.perf_counter() - t0
    return out


def speed(fns: dict[str, Forward], x: torch.Tensor, batch: int, rounds: int) -> dict[str, list]:
    """Wall seconds per call of every variant at ``batch``, ``rounds`` interleaved rounds after
    one warm-up call each: load from elsewhere then hits all variants alike."""
    walls: dict[str, list[float]] = {name: [] for name in fns}
    with torch.no_grad():
        for fn in fns.values():
            fn(x[:batch])
        for _ in range(rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(x[:batch])
                walls[name].append(time.perf_counter() - t0)
    return walls


def probabilities(fn: Forward, x: torch.Tensor, batch: int = 32) -> np.ndarray:
    """(N, C) float32 softmax of ``fn`` over ``x`` in batches."""
    with torch.no_grad():
        parts = [fn(x[i : i + batch]).float().softmax(dim=-1) for i in range(0, len(x), batch)]
    return torch.cat(parts).numpy()


def agreement(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """How far ``got`` (N, C) is from ``ref``: argmax agreement and |prob diff| max and mean."""
    diff = np.abs(got.astype(np.float64) - ref)
    return {
        "argmax_agreement": float((got.argmax(axis=1) == ref.argmax(axis=1)).mean()),
        "max_abs_prob_diff": float(diff.max()),
        "mean_abs_prob_diff": float(diff.mean()),
    }


def file_scores(
    proba: np.ndarray, counts: np.ndarray, y_true: np.ndarray, classes: list[str], t: float
) -> dict[str, float]:
    """Accuracy and macro-F1 of the files, windows combined as `scorer evaluate` does."""
    from scorer.evaluation import summarize

    report = summarize(proba[None], counts, y_true, classes, t)
    return {"accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


# --- one process: one thread count --------------------------------------------------------------


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    """Every figure at ``args.threads[0]`` threads, in this process."""
    from bench.timing import machine
    from training.ensemble import native_bf16

    threads = args.threads[0]
    torch.set_num_threads(threads)
    n_calib, n_eval = (64, 96) if args.quick else (args.calib, args.eval)
    if args.data_dir:
        student, mv, settings, engine = load_student(args.data_dir, args.model_version)
        windows = real_windows(settings, engine, mv, args.labels, n_calib, n_eval, args.seed)
    else:
        windows = random_windows(n_calib, n_eval, args.seed)
        student = random_student(args.seed, prepare_input(torch.from_numpy(windows.calib)))
    calib = prepare_input(torch.from_numpy(windows.calib), student.normalize)
    evaluate = prepare_input(torch.from_numpy(windows.evaluate), student.normalize)
    t0 = time.perf_counter()
    int8 = quantize_int8(student.net, calib)
    quantize_s = time.perf_counter() - t0
    bf16 = args.bf16 if args.bf16 is not None else native_bf16("cpu")
    fns = variants(student.net, int8, bf16, args.quick)
    if args.only:  # float32 eager stays: every ratio is against it
        fns = {k: f for k, f in fns.items() if k == "fp32 eager" or k in args.only}
    x = _at_least(evaluate, max(args.batches))
    firsts = first_calls(fns, x, args.batches)
    rows = []
    for b in args.batches:
        walls = speed(fns, x, b, args.rounds or (3 if args.quick else 10))
        best = {name: min(w) for name, w in walls.items()}
        for name, w in walls.items():
            rows.append(
                {
                    "variant": name,
                    "threads": threads,
                    "batch": b,
                    "ms_per_window": 1e3 * min(w) / b,
                    "ms_per_window_median": 1e3 * float(np.median(w)) / b,
                    "windows_per_s": b / min(w),
                    "vs_fp32_eager": best["fp32 eager"] / min(w),
                    "vs_bf16_eager": best["bf16 eager"] / min(w) if "bf16 eager" in best else None,
                    "first_call_s": firsts[name][b],
                }
            )
    quality = measure_quality(fns, evaluate, windows, student) if args.quality else []
    return {
        "config": {
            "student": student.source,
            "normalize": student.normalize,
            "calibration_windows": len(calib),
            "evaluation_windows": len(evaluate),
            "labelled_files": None if windows.counts is None else len(windows.counts),
            "quantizer": "torchao X86InductorQuantizer, static, per-channel int8 weights, "
            "per-tensor uint8 activations (HistogramObserver)",
            "torchao": _torchao_version(),
            "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default"),
            "quantize_s": quantize_s,
            "int8_ops": int8_ops(int8),
        },
        "machine": machine(),
        "speed": rows,
        "quality": quality,
    }


def measure_quality(
    fns: dict[str, Forward], x: torch.Tensor, windows: Windows, student: Student
) -> list[dict[str, Any]]:
    """Every variant against float32 eager on the evaluation windows; files' accuracy and
    macro-F1 where they are labelled."""
    probs = {name: probabilities(fn, x) for name, fn in fns.items()}
    ref = probs["fp32 eager"]
    out = []
    for name, p in probs.items():
        row: dict[str, Any] = {"variant": name, "windows": len(p), **agreement(ref, p)}
        if windows.counts is not None and windows.y_true is not None:
            row.update(
                file_scores(p, windows.counts, windows.y_true, student.classes, student.temperature)
            )
        out.append(row)
    return out


def _at_least(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x``'s first n windows, repeated when it has fewer."""
    reps = -(-n // max(len(x), 1))
    return x.repeat(reps, 1, 1, 1)[:n] if reps > 1 else x[:n]


def _torchao_version() -> str:
    import torchao

    return torchao.__version__


# --- several thread counts: a process each ------------------------------------------------------


def run_children(args: argparse.Namespace) -> dict[str, Any]:
    """One child process per thread count (its own compile, threads set before torch starts);
    quality is measured by the first only (the same weights and windows)."""
    merged: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="int8-student-") as tmp:
        for i, t in enumerate(args.threads):
            out = Path(tmp) / f"threads-{t}.json"
            cmd = [sys.executable, "-m", "bench.int8_student", "--threads", str(t)]
            cmd += ["--out", str(out), "--batches", ",".join(map(str, args.batches))]
            cmd += ["--seed", str(args.seed), "--calib", str(args.calib), "--eval", str(args.eval)]
            if args.data_dir:
                cmd += ["--data-dir", str(args.data_dir), "--model-version", args.model_version]
            if args.labels:
                cmd += ["--labels", str(args.labels)]
            if args.quick:
                cmd.append("--quick")
            if args.rounds:
                cmd += ["--rounds", str(args.rounds)]
            if args.only:
                cmd += ["--only", ",".join(args.only)]
            if args.bf16 is not None:
                cmd.append("--bf16" if args.bf16 else "--no-bf16")
            if i > 0 or not args.quality:
                cmd.append("--no-quality")
            if args.warm_cache:
                cmd.append("--warm-cache")
            env = {**os.environ, "OMP_NUM_THREADS": str(t), "MKL_NUM_THREADS": str(t)}
            if USER_CACHE is None:  # each child its own cold cache (or inductor's default)
                env.pop("TORCHINDUCTOR_CACHE_DIR", None)
            done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL)
            if done.returncode:
                raise SystemExit(f"threads {t}: child exited {done.returncode}")
            part = json.loads(out.read_text())
            if not merged:
                merged = {**part, "machine": [part["machine"]], "config": [part["config"]]}
            else:
                merged["speed"] += part["speed"]
                merged["machine"].append(part["machine"])
                merged["config"].append(part["config"])
        if args.compile_probe:
            merged["compile_cold"] = compile_probe(args, merged, Path(tmp))
    return merged


def compile_probe(args: argparse.Namespace, merged: dict[str, Any], tmp: Path) -> list[dict]:
    """Each compiled variant alone in a fresh process at 1 thread: its own cold compile
    (in the shared runs the first compiled variant also pays the process's one-off set-up)."""
    rows = []
    for name in sorted({r["variant"] for r in merged["speed"] if "compiled" in r["variant"]}):
        out = tmp / "probe.json"
        cmd = [sys.executable, "-m", "bench.int8_student", "--threads", "1", "--out", str(out)]
        cmd += ["--batches", ",".join(map(str, args.batches)), "--only", name, "--rounds", "1"]
        cmd += ["--no-quality", "--seed", str(args.seed), "--calib", str(args.calib)]
        if args.data_dir:
            cmd += ["--data-dir", str(args.data_dir), "--model-version", args.model_version]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if USER_CACHE is None:
            env.pop("TORCHINDUCTOR_CACHE_DIR", None)
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode:
            raise SystemExit(f"compile probe of {name} failed")
        part = json.loads(out.read_text())
        first = {r["batch"]: r["first_call_s"] for r in part["speed"] if r["variant"] == name}
        rows.append(
            {"variant": name, "first_call_s": first, "quantize_s": part["config"]["quantize_s"]}
        )
    return rows


# --- output -------------------------------------------------------------------------------------


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def markdown(result: dict[str, Any]) -> str:
    """The speed table, then the quality table."""
    lines = [
        "| variant | threads | batch | ms/window (best) | median | windows/s | vs fp32 eager "
        "| vs bf16 eager | first call s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["speed"]:
        lines.append(
            f"| {r['variant']} | {r['threads']} | {r['batch']} | {r['ms_per_window']:.2f} "
            f"| {r['ms_per_window_median']:.2f} | {r['windows_per_s']:.0f} "
            f"| {_x(r['vs_fp32_eager'])} | {_x(r['vs_bf16_eager'])} | {r['first_call_s']:.2f} |"
        )
    if result.get("compile_cold"):
        batches = sorted({b for r in result["compile_cold"] for b in r["first_call_s"]}, key=int)
        lines += [
            "",
            "| variant, alone in a fresh process (1 thread, cold cache) | "
            + " | ".join(f"first call s, batch {b}" for b in batches)
            + " |",
            "| --- |" + " --- |" * len(batches),
        ]
        for r in result["compile_cold"]:
            cells = " | ".join(f"{r['first_call_s'][b]:.1f}" for b in batches)
            lines.append(f"| {r['variant']} | {cells} |")
    if result["quality"]:
        lines += [
            "",
            "| variant | windows | argmax agreement vs fp32 | max abs prob diff "
            "| mean abs prob diff | accuracy | macro-F1 |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in result["quality"]:
            acc = "-" if "accuracy" not in r else f"{r['accuracy']:.4f}"
            f1 = "-" if "macro_f1" not in r else f"{r['macro_f1']:.4f}"
            lines.append(
                f"| {r['variant']} | {r['windows']} | {r['argmax_agreement']:.4f} "
                f"| {r['max_abs_prob_diff']:.2e} | {r['mean_abs_prob_diff']:.2e} | {acc} | {f1} |"
            )
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, help="A scorer data dir (SQLite, models/).")
    ap.add_argument("--model-version", help="The student's model version (name or id).")
    ap.add_argument("--labels", type=Path, help="Labelled CSV: evaluate on these files.")
    ap.add_argument("--threads", type=_ints, default=[1, 2], help="Comma list; default 1,2.")
    ap.add_argument("--batches", type=_ints, default=[1, 32], help="Comma list; default 1,32.")
    ap.add_argument("--calib", type=int, default=200, help="Calibration windows.")
    ap.add_argument("--eval", type=int, default=2000, help="Evaluation windows (no --labels).")
    ap.add_argument("--rounds", type=int, default=0, help="Timed rounds (default 10; quick 3).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                    help="bf16 rows; default where bf16 is native.")  # fmt: skip
    ap.add_argument("--quality", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--only", type=lambda t: t.split(","), help="These variants (and fp32 eager).")
    ap.add_argument(
        "--compile-probe",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Time each compiled variant's cold compile alone (default: with several threads).",
    )
    ap.add_argument(
        "--quick", action="store_true", help="1 thread, batches 1,8, fewer rows: the test."
    )
    ap.add_argument(
        "--warm-cache", action="store_true", help="Keep inductor's cache (default: cold, empty)."
    )
    ap.add_argument("--out", type=Path, default=Path("int8-student.json"))
    args = ap.parse_args(argv)
    if bool(args.data_dir) != bool(args.model_version):
        ap.error("--data-dir and --model-version go together")
    if args.labels and not args.data_dir:
        ap.error("--labels needs --data-dir and --model-version")
    if args.quick and "--threads" not in (argv or sys.argv):
        args.threads = [1]
    if args.quick and "--batches" not in (argv or sys.argv):
        args.batches = [1, 8]
    if args.compile_probe is None:
        args.compile_probe = len(args.threads) > 1
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="inductor-cold-") as cache:
        if not args.warm_cache and USER_CACHE is None:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache  # a cold compile, as on a fresh host
        try:
            import torchao  # noqa: F401
        except ImportError:
            raise SystemExit("needs torchao: pip install torchao==0.17.0 (torch 2.11)") from None
        result = run_one(args) if len(args.threads) == 1 else run_children(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(markdown(result))


if __name__ == "__main__":
    main()
