#!/usr/bin/env bash
# Every accelerator measurement in one run, under 10 minutes on one H200
# (benchmarks/gpu_suite.py lists the steps); each ratio is printed beside its
# baseline from the same run, and everything lands in OUT/summary.json.
#
#   bash benchmarks/gpu.sh                 # on the GPU machine; OUT: $GPU_BENCH_OUT, $OUT or /tmp
#   bash benchmarks/gpu.sh --small         # the CPU smoke run of every step (CI)
#   bash benchmarks/gpu.sh --out DIR --only mfu_774m,members
#
# The PPO baseline is TRL 1.12's PPOTrainer (TRL removed PPO in 1.13): unless
# --small, it is installed here with pip when missing.
set -euo pipefail
started_at=$(date +%s)
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${GPU_BENCH_OUT:-${OUT:-/tmp}/gpu_bench}"
small=0
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; shift ;;
    --small) small=1; args+=("$1"); shift ;;
    *) args+=("$1"); shift ;;
  esac
done
python="${PYTHON:-python}"
if [ "$small" = 0 ]; then
  if ! "$python" -c 'import trl, sys; sys.exit(trl.__version__ != "1.12.0")' 2>/dev/null; then
    echo "== installing trl==1.12.0 (the PPO baseline)"
    "$python" -m pip install -q "trl==1.12.0" || echo "== pip install trl failed: ppo.py falls back to its hand-written PyTorch baseline and says so"
  fi
  "$python" -c 'import jax; print("== devices:", jax.devices())' || true
fi
mkdir -p "$out"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$root/benchmarks/gpu_suite.py" --out "$out" --started_at "$started_at" ${args[@]+"${args[@]}"}
