#!/usr/bin/env bash
# The GPU path in one go (project issue 21, item 5): on one GPU, in under 8 minutes,
#   (a) the CUDA tests (`pytest -m cuda`: every device-parametrised test's cuda run and the
#       CUDA-only tests);
#   (b) Table 1 on 1,000 test images of Model B (9 targets each, tau 0.05, kappa 0, the default
#       attack): success with its Wilson interval, attacks/s and the fraction of the GPU's peak
#       reached (benchmarks/gpu_check.py; Model B is trained into the store first if missing);
#   (c) a 4-trial smoke sweep (sweeps/kappa_tau.py --smoke-test) with --gpus-per-trial 0.25;
# and writes ONE JSON: the path given, else $OUT/gpu_check.json when $OUT is set, else
# benchmarks/gpu_check.json.
#
# --dry-run, or a machine without CUDA: the same steps at toy size on the CPU (3 images, a
# Model B quick-trained on 500 images and never stored, the smoke sweep without GPUs and its
# smoke model in a temporary store), meant to take well under 2 minutes on an idle machine
# (a Ray start is much of it: --address saves it); the JSON says "dry_run": true.
#
#   bash benchmarks/gpu_check.sh [--dry-run] [--peak-tflops 67] [--precision fp32]
#                                [--address RAY_ADDRESS] [JSON]
#
# --address joins a running Ray for the sweep (the sweep's own flag) instead of starting one;
# --precision is Table 1's attack policy (stadv/precision.py; the verdict is fp32 either way).
#
# From a fresh clone with the project's virtual environment activated (`pip install -e
# '.[dev]'`); real MNIST comes from $STADV_DATA_SOURCE (default ../shared/data), the model
# store is $STADV_STORE (default ~/.cache/stadv/models; the dry run uses its own temporary
# one). Exit status: 0 when every step passed (the JSON's "ok"), 1 otherwise. Failing CUDA
# tests or a failing sweep are recorded in the JSON; a crash of the Table 1 step stops the
# script before it (set -e).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s.%N)

dry_run=0
peak=67
precision=fp32
json=""
address=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry_run=1 ;;
    --peak-tflops) peak=$2; shift ;;
    --precision) precision=$2; shift ;;
    --address) address=(--address "$2"); shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu_check.sh: unknown flag $1" >&2; exit 2 ;;
    *) json=$1 ;;
  esac
  shift
done
if [[ -z $json ]]; then
  json=${OUT:+$OUT/gpu_check.json}
  json=${json:-benchmarks/gpu_check.json}
fi
if [[ $dry_run == 0 ]] && ! python -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
  echo "gpu_check.sh: no CUDA device here: running the dry run (toy size, CPU)" >&2
  dry_run=1
fi

work=$(mktemp -d -t gpu-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
export PYTHONUNBUFFERED=1
data_dir=${STADV_DATA_DIR:-$work/data}
if [[ $dry_run == 1 ]]; then
  export CUDA_VISIBLE_DEVICES="" # the CPU, even on a GPU machine
  store=$work/store # a toy Model B never lands in the real store
  table1=(--dry-run --n-images 3 --max-iterations 30 --train-limit 500)
  gpus=0
  dry=(--dry-run)
else
  store=${STADV_STORE:-$HOME/.cache/stadv/models}
  table1=(--n-images 1000)
  gpus=0.25
  dry=()
fi
now() { date +%s.%N; }
seconds() { python -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }

# (a) the CUDA tests. pytest's 5 (nothing selected) counts as a failure; a dry run collects
# them and sees them skip.
echo "== (a) CUDA tests: pytest -m cuda" >&2
t0=$(now)
set +e
python -m pytest -q -m cuda -p no:cacheprovider --junitxml "$work/cuda.xml" tests
pytest_status=$?
set -e
pytest_seconds=$(seconds "$t0" "$(now)")

# (b) Table 1, model B
echo "== (b) Table 1 on model B" >&2
python benchmarks/gpu_check.py table1 --out "$work/table1.json" "${table1[@]}" \
  --precision "$precision" --peak-tflops "$peak" --store "$store" --data-dir "$data_dir"

# (c) the smoke sweep: 4 trials, each with a quarter of the GPU (none in a dry run)
echo "== (c) smoke sweep, --gpus-per-trial $gpus" >&2
uri="sqlite:///$work/mlflow.db"
t0=$(now)
set +e
python sweeps/kappa_tau.py --smoke-test --gpus-per-trial "$gpus" --tracking-uri "$uri" "${address[@]}" \
  --experiment-name gpu-check --storage-path "$work/ray" --store "$store" --data-dir "$data_dir"
sweep_status=$?
set -e
sweep_seconds=$(seconds "$t0" "$(now)")

mkdir -p "$(dirname "$json")"
python benchmarks/gpu_check.py assemble --out "$json" "${dry[@]}" --table1 "$work/table1.json" \
  --pytest-xml "$work/cuda.xml" --pytest-status "$pytest_status" \
  --pytest-seconds "$pytest_seconds" --sweep-status "$sweep_status" \
  --sweep-seconds "$sweep_seconds" --gpus-per-trial "$gpus" --tracking-uri "$uri" \
  --experiment gpu-check --wall-seconds "$(seconds "$start" "$(now)")"
echo "gpu_check.sh: wrote $json" >&2
python -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["ok"] else 1)' "$json"
