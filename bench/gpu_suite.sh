#!/usr/bin/env bash
# One command for a GPU machine with no network (issue 12 item 6); bench/gpu_suite.py says what
# it measures. Run from the repository root:
#   bench/gpu_suite.sh [--tiny] [--budget-s 540] [--extra global_std all_singers]
# Inputs: .gpu/mir1k4.npz, made here beforehand by
#   python -m bench.gpu_suite export --data-dir DIR --train train.csv --test test.csv
# (carried to the machine: `.gpu` is git-ignored). Outputs in $OUT (or ./gpu-out): results.json,
# probs_<run>.npz, log.txt. --tiny proves the same code on any CPU in about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
# The project's venv where there is one; else the machine's python3 (the GPU image's holds torch).
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
set -o pipefail
"$py" -m bench.gpu_suite run --out "$out" "$@" 2>&1 | tee "$out/log.txt"
