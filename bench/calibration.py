"""Temperature scaling of an ensemble, measured on stored member probabilities.

    python -m bench.calibration --probs probs_reference.npz [--json]

The npz (written by ``bench.gpu_suite``) holds each member's probabilities: ``val`` (M, N, C)
on the validation singers with ``val_y``, ``test`` (M, N', C) on held-out singers with
``test_y``. One temperature is fitted on ``val`` two ways and judged on ``test``:
``ensemble`` (what scorer uses: the members' mean probability rescaled, softmax(log p / T),
``training.calibration.fit_ensemble_temperature``) and ``members`` (each member's
log-probabilities divided by T before averaging; softmax ignores the per-sample constant that
separates them from logits). Reported per way: T, test NLL, ECE (10 bins), accuracy, macro-F1,
and for ``scorer results --uncertain`` (windows ranked by predictive entropy) the share of
errors among the 10 % most uncertain windows and how many of all errors they catch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from training.calibration import (
    calibrate,
    expected_calibration_error,
    fit_ensemble_temperature,
    fit_temperature,
    nll,
    tempered_proba,
)
from training.metrics import accuracy, macro_f1

TOP = 0.10
"""The most uncertain share of windows that a review with ``--uncertain`` would look at."""


def uncertain_errors(proba: np.ndarray, y: np.ndarray, top: float = TOP) -> tuple[float, float]:
    """(share of errors among the ``top`` most uncertain windows by entropy, share of all
    errors that they hold)."""
    entropy = -np.sum(proba * np.log(np.clip(proba, 1e-12, None)), axis=1)
    wrong = proba.argmax(axis=1) != y
    k = max(1, round(top * len(y)))
    picked = np.argsort(-entropy, kind="stable")[:k]
    return float(wrong[picked].mean()), float(wrong[picked].sum() / max(wrong.sum(), 1))


def row(name: str, temperature: float, proba: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    n_classes = proba.shape[1]
    pred = proba.argmax(axis=1)
    precision, recall = uncertain_errors(proba, y)
    return {
        "calibration": name,
        "temperature": temperature,
        "nll": nll(proba, y),
        "ece": expected_calibration_error(proba, y),
        "accuracy": accuracy(y, pred),
        "macro_f1": macro_f1(y, pred, n_classes),
        "errors_in_top10pct_uncertain": precision,
        "errors_caught_by_top10pct": recall,
    }


def measure(probs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """The table's rows: none, ensemble (scorer's), members."""
    val, test = (np.asarray(probs[k], dtype=np.float64) for k in ("val", "test"))
    val_y, test_y = (np.asarray(probs[k], dtype=np.int64) for k in ("val_y", "test_y"))
    log_val, log_test = (np.log(np.clip(p, 1e-12, None)) for p in (val, test))
    mean = test.mean(axis=0)
    t_ens = fit_ensemble_temperature(val.mean(axis=0), val_y)
    t_mem = fit_temperature(log_val, val_y)
    return [
        row("none", 1.0, mean, test_y),
        row("ensemble", t_ens, calibrate(mean, t_ens), test_y),
        row("members", t_mem, tempered_proba(log_test, t_mem), test_y),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probs", type=Path, required=True, help="npz with val, val_y, test, test_y")
    ap.add_argument("--json", action="store_true", help="The rows as JSON.")
    args = ap.parse_args()
    try:
        with np.load(args.probs) as f:
            rows = measure({k: f[k] for k in ("val", "val_y", "test", "test_y")})
    except (OSError, KeyError, ValueError) as exc:
        raise SystemExit(f"{args.probs}: {exc}") from None
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(
        "calibration  T      test NLL  ECE     accuracy  macro-F1  "
        "errors in top 10% uncertain  errors caught"
    )
    for r in rows:
        print(
            f"{r['calibration']:<12} {r['temperature']:.3f}  {r['nll']:.4f}    {r['ece']:.4f}  "
            f"{r['accuracy']:.4f}    {r['macro_f1']:.4f}    "
            f"{r['errors_in_top10pct_uncertain']:.3f}                        "
            f"{r['errors_caught_by_top10pct']:.3f}"
        )


if __name__ == "__main__":
    main()
