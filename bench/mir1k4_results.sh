#!/usr/bin/env bash
# The three comparisons of docs/RESULTS.md on mir1k4, held-out singers (bench/mir1k4_split.py).
#   bench/mir1k4_results.sh OUT_DIR   (env: MEMBERS ARCH EPOCHS SMALL_MEMBERS ABLATIONS=1)
# 1. members 1/2/5/10/20 of one ensemble (scorer evaluate's accuracy_vs_members) -> ref
# 2. separation on vs off, same member seeds (first SMALL_MEMBERS)            -> ref vs nosep
# 3. reference recipe vs the augmented preset, same member seeds              -> ref vs aug
#    and, with ABLATIONS=1, each change on its own: input normalisation (norm), label smoothing
#    (smooth), gain + time shift (shiftgain), twice the epochs (long)
# Needs ../shared/data/mir1k4 (never copied: the CSVs point into it). Resumable: every step
# skips what is already done (features are cached; a killed `scorer train` resumes).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:?usage: $0 OUT_DIR}" && cd "$1" && pwd)
data=${MIR1K4:-$here/../shared/data/mir1k4}
MEMBERS=${MEMBERS:-20} ARCH=${ARCH:-resnet34} EPOCHS=${EPOCHS:-20}
SMALL_MEMBERS=${SMALL_MEMBERS:-$MEMBERS}
export SCORER_DATA_DIR=${SCORER_DATA_DIR:-$out/data}
scorer=$here/.venv/bin/scorer
cd "$here"
.venv/bin/python -m bench.mir1k4_split --data "$data" --out "$out"
# Features of all 3000 snippets with separation (cached; a second run does nothing).
$scorer enqueue "$data/audio" --labels "$data/labels.csv" --no-score || [ $? -eq 3 ]
common=(--data "$out/train.csv" --arch "$ARCH" --epochs "$EPOCHS" --no-activate --json)
has() {
  $scorer models --json | .venv/bin/python -c \
    'import json, sys; sys.exit(not any(m["name"] == sys.argv[1] for m in json.load(sys.stdin)))' "$1"
}
has ref || $scorer train "${common[@]}" --members "$MEMBERS" --name ref > "$out/train_ref.json"
has nosep || SCORER_SEPARATION=false $scorer train "${common[@]}" --members "$SMALL_MEMBERS" \
  --name nosep > "$out/train_nosep.json"
has aug || $scorer train "${common[@]}" --members "$SMALL_MEMBERS" --preset augmented \
  --name aug > "$out/train_aug.json"
versions=(ref nosep aug)
if [ "${ABLATIONS:-0}" = 1 ]; then  # each improvement on its own, same member seeds
  small=("${common[@]}" --members "$SMALL_MEMBERS")
  has norm || $scorer train "${small[@]}" --normalize per_snippet --name norm > "$out/train_norm.json"
  has smooth || $scorer train "${small[@]}" --label-smoothing 0.1 --name smooth \
    > "$out/train_smooth.json"
  has shiftgain || $scorer train "${small[@]}" --aug-gain-db 6 --aug-shift-frames 30 \
    --name shiftgain > "$out/train_shiftgain.json"
  long=(--data "$out/train.csv" --arch "$ARCH" --epochs $((2 * EPOCHS)) --no-activate --json
        --members "$SMALL_MEMBERS")  # the same run, twice the epochs
  has long || $scorer train "${long[@]}" --name long > "$out/train_long.json"
  versions+=(norm smooth shiftgain long)
fi
for v in "${versions[@]}"; do
  [ -f "$out/eval_$v/metrics.json" ] && continue
  $scorer evaluate --labels "$out/test.csv" --model-version "$v" --out "$out/eval_$v" \
    | tee "$out/eval_$v.txt"
done
