"""Evaluation as a library: how good is a model version on labelled snippets it was not trained
on? `scorer evaluate` parses options and prints what ``evaluate_model`` returns; a notebook or a
bench script calls the same functions without click.

It runs the model version's ensemble again over the cached features (features table, keyed by
the model's front-end version), member by member, so one pass gives the full ensemble's metrics,
the accuracy of its first k members, and its calibration (before and after the model's
temperature). Files are judged like `scorer enqueue` judges them: one prediction per 3 s window
(calibrated, as the workers store it), combined by `worker.stages.file_verdict`.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scorer.errors import ScorerError

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

    from scorer.db.models import ModelVersion
    from scorer.manifest import Labelled
    from scorer.settings import Settings

CHUNK_FILES = 256
"""Files whose features are loaded at once: bounds memory (about 24 kB per window)."""

Notify = Callable[[str], None]


def to_stderr(msg: str) -> None:
    """The default ``notify``: one line for people on stderr (looked up at call time)."""
    sys.stderr.write(msg + "\n")


def evaluate_model(
    settings: Settings,
    engine: Engine,
    *,
    model_key: str | None = None,
    labels_csv: Path | None = None,
    exclude_training: bool | None = None,
    notify: Notify = to_stderr,
) -> dict[str, Any]:
    """The full report (see ``summarize``) of a model version (name or id; default the active
    one) on labelled files: those of ``labels_csv`` (ingested first when embedded), or every
    labelled snippet in the database; training files left out unless ``exclude_training`` is
    False. Notes and per-file failures go to ``notify``; undefined numbers are NaN (``finite``
    makes it JSON). Raises ScorerError with a one-line reason."""
    from scorer.db import queries
    from scorer.db.engine import make_sessionmaker

    sessions = make_sessionmaker(engine)
    with sessions() as s:
        model = queries.model_by_name_or_id(s, model_key) if model_key else queries.active_model(s)
        if model is None:
            raise ScorerError(
                f"no model version {model_key!r}; see `scorer models`"
                if model_key
                else "no active model version: run `scorer train` or give --model-version"
            )
        s.expunge(model)
        trained_on = _training_shas(s, model)
    classes = list(model.classes)
    if labels_csv is not None:
        files = _files_from_csv(settings, engine, model, labels_csv, notify)
        source = str(labels_csv)
    else:
        with sessions() as s:
            files = _labelled_in_database(s, model.frontend_version)
        source = "database"
    files, n_excluded, notes = _select(files, classes, trained_on, exclude_training, model.name)
    for note in notes:
        notify(note)
    if not files:
        raise ScorerError(
            f"no labelled files to evaluate model {model.name} on: enqueue labelled audio that "
            "it was not trained on (`scorer enqueue FILES --labels CSV`), or give --labels CSV"
        )
    member_proba, counts, temperature, decision = _run_ensemble(settings, engine, model, files)
    y_true = np.array([classes.index(f["label"]) for f in files], dtype=np.int64)
    report = summarize(member_proba, counts, y_true, classes, temperature, decision)
    includes = trained_on is None or any(f["sha256"] in trained_on for f in files)
    return {
        "model": model.name,
        "model_version_id": model.id,
        "members": model.members,
        "frontend_version": model.frontend_version,
        "source": source,
        "includes_training_data": includes,
        "excluded_training_files": n_excluded,
        **report,
    }


# --- which files --------------------------------------------------------------------------------


def _training_shas(s: Session, model: ModelVersion) -> set[str] | None:
    """The shas the model was trained on (train and validation), or None when unknown: a job
    without `shas` trained on every labelled snippet there was, and a deleted job says nothing."""
    from scorer.db.models import TrainingJob

    job = s.get(TrainingJob, model.training_job_id) if model.training_job_id else None
    shas = job.params.get("shas") if job is not None else None
    return None if shas is None else set(shas)


def _labelled_in_database(s: Session, frontend_version: str) -> list[dict[str, Any]]:
    """Every labelled snippet with features of this front end, ordered by path."""
    from sqlalchemy import select

    from scorer.db.models import Feature, Snippet

    rows = s.execute(
        select(Snippet.sha256, Snippet.label, Snippet.source_path, Feature.n_windows)
        .join(Feature, Feature.sha256 == Snippet.sha256)
        .where(Snippet.label.is_not(None), Feature.frontend_version == frontend_version)
        .order_by(Snippet.source_path, Snippet.sha256)
    )
    return [{"sha256": a, "label": b, "path": c, "n_windows": w} for a, b, c, w in rows]


def _files_from_csv(
    settings: Settings, engine: Engine, model: ModelVersion, csv_path: Path, notify: Notify
) -> list[dict[str, Any]]:
    """The CSV's files with its labels, found by the sha256 of their bytes; those without
    features of the model's front end are ingested first (embedded) or refused (workers)."""
    from scorer.db.engine import make_sessionmaker
    from scorer.manifest import read_manifest
    from worker.embedded import read_file

    labels = read_manifest(csv_path)
    found: dict[str, dict[str, Any]] = {}
    unreadable: list[tuple[str, str]] = []
    for path, lab in labels.items():
        sha, _, error = read_file(path)
        if error:
            unreadable.append((str(path), error))
        else:
            found.setdefault(sha, {"sha256": sha, "label": lab.label, "path": str(path)})
    _report_failures(unreadable, notify)
    with make_sessionmaker(engine)() as s:
        windows = _n_windows(s, list(found), model.frontend_version)
    missing = [f for sha, f in found.items() if sha not in windows]
    if missing:
        if not settings.embedded:
            raise ScorerError(
                f"{len(missing)} files of {csv_path} have no features for model {model.name} "
                f"yet (first: {missing[0]['path']}): run `scorer enqueue FILES --labels "
                f"{csv_path}` and wait until they are scored, then evaluate again"
            )
        paths = [Path(f["path"]) for f in missing]
        failed = _ingest(settings, engine, model, paths, labels, notify)
        with make_sessionmaker(engine)() as s:
            windows = _n_windows(s, list(found), model.frontend_version)
        lost = [f for f in missing if f["sha256"] not in windows and f["path"] not in failed]
        if lost:
            raise ScorerError(
                f"{lost[0]['path']}: its features do not match model {model.name}'s front end "
                f"{model.frontend_version}; enqueue it with the settings the model was trained "
                "with, then evaluate again"
            )
    return [{**f, "n_windows": windows[sha]} for sha, f in found.items() if sha in windows]


def _n_windows(s: Session, shas: Sequence[str], frontend_version: str) -> dict[str, int]:
    from sqlalchemy import select

    from scorer.db.models import Feature

    out: dict[str, int] = {}
    for start in range(0, len(shas), 500):
        rows = s.execute(
            select(Feature.sha256, Feature.n_windows)
            .where(Feature.sha256.in_(shas[start : start + 500]))
            .where(Feature.frontend_version == frontend_version)
        )
        out.update((sha, n) for sha, n in rows)
    return out


def _ingest(
    settings: Settings,
    engine: Engine,
    model: ModelVersion,
    paths: list[Path],
    labels: dict[Path, Labelled],
    notify: Notify,
) -> set[str]:
    """Features (no scoring) for files not seen yet, with the model's separation settings so the
    features match its front end; returns the paths that failed (each already reported)."""
    from tqdm import tqdm

    from worker import embedded

    notify(f"ingesting {len(paths)} files that have no features yet (features only)")
    fe = model.frontend
    ingest_settings = settings.model_copy(
        update={
            "separation": fe["separation"],
            "spleeter_frames": fe["spleeter_frames"],
            "separation_bf16": "on" if fe.get("spleeter_bf16") else "off",
        }
    )
    with tqdm(total=len(paths), unit="file", desc="features", file=sys.stderr, disable=None) as bar:
        summary = embedded.run(
            ingest_settings, engine, paths, labels, score_with_model=False, progress=bar.update
        )
    _report_failures(summary.failures, notify)
    return {p for p, _ in summary.failures}


def _report_failures(failures: list[tuple[str, str]], notify: Notify) -> None:
    for path, reason in failures:
        notify(f"failed: {path}: {reason}")


def _select(
    files: list[dict[str, Any]],
    classes: list[str],
    trained_on: set[str] | None,
    exclude_training: bool | None,
    model_name: str,
) -> tuple[list[dict[str, Any]], int, list[str]]:
    """Leave out training files and labels the model cannot predict; returns (files, how many
    training files were left out, notes for the user)."""
    notes: list[str] = []
    n_excluded = 0
    if exclude_training and trained_on is None:
        raise ScorerError(
            f"model {model_name} does not record which files it was trained on (it was trained "
            "on every labelled snippet there was): --exclude-training is impossible"
        )
    if trained_on is not None and exclude_training is not False:
        kept = [f for f in files if f["sha256"] not in trained_on]
        n_excluded = len(files) - len(kept)
        if n_excluded:
            notes.append(f"{n_excluded} training files of model {model_name} left out")
        files = kept
    elif trained_on is None:
        notes.append(
            f"WARNING: model {model_name} was trained on every labelled snippet there was and "
            "does not record which: this evaluation INCLUDES ITS TRAINING DATA and overstates "
            "how good it is"
        )
    else:
        used = sum(f["sha256"] in trained_on for f in files)
        if used:
            notes.append(f"WARNING: {used} evaluated files were training data (--include-training)")
    unknown = sorted({f["label"] for f in files} - set(classes))
    if unknown:
        n = sum(f["label"] in unknown for f in files)
        notes.append(
            f"{n} files labelled {', '.join(unknown)} left out: model {model_name} knows only "
            f"{', '.join(classes)}"
        )
        files = [f for f in files if f["label"] in classes]
    return files, n_excluded, notes


# --- the ensemble -------------------------------------------------------------------------------


def _run_ensemble(
    settings: Settings, engine: Engine, model: ModelVersion, files: list[dict[str, Any]]
) -> tuple[np.ndarray, np.ndarray, float]:
    """(M, N, C) float32 member probabilities (uncalibrated) of every window of `files` (in
    order), the (F,) window count of each file, and the model's temperature (1.0 without one).
    Features are loaded CHUNK_FILES files at a time."""
    import torch
    from tqdm import tqdm

    from scorer.db import queries
    from scorer.db.engine import make_sessionmaker
    from worker.runtime import Runtime
    from worker.stages import voice_windows

    ensemble = Runtime(settings).ensemble(model.weights_uri)
    if ensemble.classes != list(model.classes):
        raise ScorerError(
            f"model {model.name}: weights at {model.weights_uri} have classes "
            f"{ensemble.classes}, the database says {list(model.classes)}"
        )
    counts = np.array([f["n_windows"] for f in files], dtype=np.int64)
    parts: list[np.ndarray] = []
    decided: list[np.ndarray] = []  # the voice head's fused windows, where the model has one
    batch = settings.infer_batch
    with (
        make_sessionmaker(engine)() as s,
        tqdm(
            total=int(counts.sum()), unit="window", desc="evaluating", file=sys.stderr,
            disable=None,
        ) as bar,
    ):  # fmt: skip
        for start in range(0, len(files), CHUNK_FILES):
            shas = [f["sha256"] for f in files[start : start + CHUNK_FILES]]
            feats = queries.load_features(s, shas, model.frontend_version)
            windows = np.concatenate([feats[sha] for sha in shas])
            voice = voice_windows(s, ensemble, shas, feats)
            for b in range(0, len(windows), batch):
                x = torch.from_numpy(np.ascontiguousarray(windows[b : b + batch]))
                mp = ensemble.member_proba(x)
                parts.append(mp.cpu().numpy())
                if voice is not None:
                    vb = torch.from_numpy(voice[b : b + batch])
                    decided.append(ensemble.decision(mp, vb).cpu().numpy())
                bar.update(min(batch, len(windows) - b))
    decision = np.concatenate(decided) if decided else None
    return np.concatenate(parts, axis=1), counts, ensemble.temperature, decision


# --- the numbers --------------------------------------------------------------------------------


def summarize(
    member_proba: np.ndarray,
    counts: np.ndarray,
    y_true: np.ndarray,
    classes: list[str],
    temperature: float = 1.0,
    decision: np.ndarray | None = None,
) -> dict[str, Any]:
    """Every number of the report from (M, N, C) window probabilities per member, (F,) windows
    per file (in order), (F,) true class indices and the model's temperature. Windows are
    calibrated before they are combined, as the workers score them; calibration keeps every
    window's decision, and ECE is given before and after it. ``decision`` (N, C): the model's
    own window probabilities where they are not the members' calibrated mean (a voice head's
    fusion); the verdicts, accuracy, per-class figures and ECE are then its, and
    ``members_alone`` gives the members' accuracy and macro-F1 beside it. Pure: no I/O."""
    from training.calibration import (
        accuracy_vs_members,
        calibrate,
        expected_calibration_error,
        member_counts,
        reliability_bins,
    )
    from training.metrics import accuracy, confusion_matrix, macro_f1, precision_recall_f1
    from worker.stages import file_verdict

    n_classes = len(classes)
    bounds = np.cumsum(counts)[:-1]

    def verdicts(window_proba: np.ndarray, t: float = temperature) -> np.ndarray:
        """(N, C) uncalibrated windows -> (F, C) files, the windows calibrated at ``t``."""
        window_proba = calibrate(window_proba, t) if t != 1.0 else window_proba
        return np.stack([file_verdict(p, classes) for p in np.split(window_proba, bounds)])

    raw_window_proba = member_proba.mean(axis=0)  # (N, C)
    window_proba = raw_window_proba
    if temperature != 1.0:
        window_proba = calibrate(raw_window_proba, temperature)
    file_proba = verdicts(raw_window_proba)  # (F, C)
    members_alone = None
    if decision is not None:
        pred_members = file_proba.argmax(axis=1)
        members_alone = {
            "accuracy": accuracy(y_true, pred_members),
            "macro_f1": macro_f1(y_true, pred_members, n_classes),
        }
        window_proba = decision
        file_proba = np.stack([file_verdict(p, classes) for p in np.split(decision, bounds)])
    y_pred = file_proba.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    precision, recall, f1 = precision_recall_f1(y_true, y_pred, n_classes)
    bins = reliability_bins(file_proba, y_true)
    curve = accuracy_vs_members(
        member_proba, y_true, member_counts(member_proba.shape[0]), combine=verdicts
    )

    def prefix_f1(k: int) -> float:  # the first k members' macro-F1, like the accuracy curve
        pred = verdicts(member_proba[:k].mean(axis=0)).argmax(axis=1)
        return macro_f1(y_true, pred, n_classes)

    return {
        "classes": classes,
        "files": len(counts),
        "windows": int(counts.sum()),
        "accuracy": accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred, n_classes),
        "per_class": [
            {
                "class": c,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(cm[i].sum()),
            }
            for i, c in enumerate(classes)
        ],
        "confusion_matrix": cm.tolist(),
        "accuracy_vs_members": [
            {"members": k, "accuracy": a, "macro_f1": prefix_f1(k)} for k, a in curve
        ],
        # each member alone: the ensemble's gain is measured against the best of these
        "member_accuracy": [accuracy(y_true, verdicts(p).argmax(axis=1)) for p in member_proba],
        "calibration": {
            "ece": expected_calibration_error(file_proba, y_true),
            "ece_uncalibrated": expected_calibration_error(verdicts(raw_window_proba, 1.0), y_true),
            "temperature": float(temperature),
            "n_bins": len(bins),
            "bins": [asdict(b) for b in bins],
        },
        "multi_window": _multi_window(window_proba, counts, y_true, classes),
        **({"members_alone": members_alone} if members_alone else {}),
    }


def _multi_window(
    window_proba: np.ndarray, counts: np.ndarray, y_true: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Files of several windows: how often a single window is right, and the per-file accuracy
    of the documented rule against the plain mean and a majority vote of the windows."""
    from training.calibration import majority_vote
    from worker.stages import file_verdict

    multi = counts > 1
    out: dict[str, Any] = {"files": int(multi.sum()), "windows": int(counts[multi].sum())}
    if not multi.any():
        return {**out, "window_accuracy": None, "file_accuracy_by_rule": None}
    per_file = np.split(window_proba, np.cumsum(counts)[:-1])
    chosen = [(p, int(t)) for p, t, m in zip(per_file, y_true, multi, strict=True) if m]
    window_hits = np.concatenate([p.argmax(axis=1) == t for p, t in chosen])
    rules = {
        "voiced_mean": lambda p: file_verdict(p, classes),
        "mean": lambda p: p.mean(axis=0),
        "majority_vote": majority_vote,
    }
    return {
        **out,
        "window_accuracy": float(window_hits.mean()),
        "file_accuracy_by_rule": {
            name: float(np.mean([rule(p).argmax() == t for p, t in chosen]))
            for name, rule in rules.items()
        },
    }


def finite(obj: Any) -> Any:
    """NaN (undefined, e.g. an empty bin) as null, so the output is valid JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


# --- output -------------------------------------------------------------------------------------


def write_outputs(report: dict[str, Any], out_dir: Path) -> None:
    """confusion.png, reliability.png and metrics.json from the report (NaN where undefined)."""
    from training.calibration import ReliabilityBin
    from training.plots import confusion_png, reliability_png

    title = f"model {report['model']}, {report['files']} files"
    cal = report["calibration"]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        cm = np.array(report["confusion_matrix"])
        confusion_png(cm, report["classes"], out_dir / "confusion.png", f"Confusion, {title}")
        bins = [ReliabilityBin(**b) for b in cal["bins"]]
        reliability_png(bins, out_dir / "reliability.png", cal["ece"], f"Reliability, {title}")
        (out_dir / "metrics.json").write_text(json.dumps(finite(report), indent=1) + "\n")
    except OSError as exc:
        raise ScorerError(f"{out_dir}: cannot write the results: {exc.strerror}") from exc


def _num(x: float | None, fmt: str = ".4f") -> str:
    return "-" if x is None else format(x, fmt)


def format_report(r: dict[str, Any]) -> str:
    """The report as text for people: the same numbers as the JSON."""
    classes = r["classes"]
    w = max(8, *(len(c) for c in classes))
    lines = [
        f"model {r['model']} ({r['members']} members), {r['files']} files, {r['windows']} "
        f"windows, labels from {r['source']}"
        + (", INCLUDES TRAINING DATA" if r["includes_training_data"] else ""),
        f"accuracy   {_num(r['accuracy'])}",
        f"macro-F1   {_num(r['macro_f1'])}",
        "",
        f"{'class':<{w}} precision  recall      f1  support",
    ]
    for c in r["per_class"]:
        lines.append(
            f"{c['class']:<{w}} {_num(c['precision'], '9.4f')} {_num(c['recall'], '7.4f')} "
            f"{_num(c['f1'], '7.4f')} {c['support']:8d}"
        )
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    lines.append(" " * w + "".join(f" {c:>{w}}" for c in classes))
    for c, row in zip(classes, r["confusion_matrix"], strict=True):
        lines.append(f"{c:<{w}}" + "".join(f" {n:>{w}d}" for n in row))
    lines += ["", "members  accuracy  macro-F1"]
    lines += [
        f"{p['members']:7d}  {_num(p['accuracy'])}    {_num(p['macro_f1'])}"
        for p in r["accuracy_vs_members"]
    ]
    single = r["member_accuracy"]
    best = int(np.argmax(single))
    lines.append(
        f"each member alone: mean {_num(float(np.mean(single)))}, best {_num(single[best])} "
        f"(member {best}), worst {_num(min(single))}"
    )
    cal = r["calibration"]
    lines += ["", f"expected calibration error ({cal['n_bins']} bins): {_num(cal['ece'])}"]
    if cal["temperature"] != 1.0:
        lines[-1] += (
            f" (temperature {cal['temperature']:.3f}; uncalibrated {_num(cal['ece_uncalibrated'])})"
        )
    mw = r["multi_window"]
    if mw["files"]:
        rules = ", ".join(f"{k} {_num(v)}" for k, v in mw["file_accuracy_by_rule"].items())
        lines += [
            "",
            f"files of several windows: {mw['files']} ({mw['windows']} windows)",
            f"  window accuracy        {_num(mw['window_accuracy'])}",
            f"  file accuracy by rule  {rules} (voiced_mean is the verdict)",
        ]
    return "\n".join(lines)
