#!/usr/bin/env bash
# The whole chain, stage by stage; each stage skips work already done.
#   bash run_all.sh [--smoke] [--config configs/X.yaml] [--from STAGE] [--only STAGE] [--submit]
# Data: the Kaggle layout in data/dsb2018 (a folder or a symlink), or wherever DSB_DATA points.
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

config=configs/full.yaml
from="" only="" submit=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) config=configs/smoke.yaml ;;
    --config) config="$2"; shift ;;
    --from) from="$2"; shift ;;
    --only) only="$2"; shift ;;
    --submit) submit=1 ;;
    -h|--help) sed -n 2,4p "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

stages=(download prepare folds build-v9 train oof tune predict postprocess submit leaderboard)
started=""
[ -z "$from" ] && started=1
run() {
  local stage=$1; shift
  [ "$stage" = "$from" ] && started=1
  [ -z "$started" ] && return 0
  [ -n "$only" ] && [ "$stage" != "$only" ] && return 0
  echo "=== $stage ($config)"
  local t0=$SECONDS
  python3 -m nuclei "$@" --config "$config"
  echo "=== $stage done in $((SECONDS - t0)) s"
}
for stage in "${stages[@]}"; do
  case "$stage" in
    download) run download download ;;
    prepare) run prepare prepare ;;
    folds) run folds folds ;;
    build-v9) run build-v9 build-v9 ;;
    train) run train train --resume ;;
    oof) run oof oof ;;
    tune) run tune tune ;;
    predict) run predict predict ;;
    postprocess) run postprocess postprocess ;;
    submit)
      # Uploading needs Kaggle credentials; without --submit the CSV is only recorded in the leaderboard.
      if [ "$submit" = 1 ]; then run submit submit; else run submit leaderboard --add "submissions/$(basename "$config" .yaml).csv"; fi ;;
    leaderboard) run leaderboard leaderboard ;;
    *) echo "run_all.sh: stage $stage is not implemented" >&2; exit 1 ;;
  esac
done
