#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md: bench/train_step.py on one GPU at micro batch 64, 8 and 128, at 64 and 8 against
# Modalities' GPT2LLM on the same GPU. Run from the repo root where python3 has CUDA jax and torch; packages that
# python lacks (ml-collections, modalities and its pure-Python needs) may wait as wheels in .whl/ (BENCHMARKS.md lists
# them). Logs go to $OUT (default bench_out/). For a profile: bench/train_step.py --profile_dir=DIR (Perfetto trace).
set -uo pipefail
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
  rm -rf /tmp/site && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, flax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__)" \
  | tee -a "$OUT/gpu.txt"

bench() {  # name, time limit in seconds, then flags
  local name=$1 limit=$2
  shift 2
  echo "== $name: $*" | tee "$OUT/$name.txt"
  timeout "$limit" python3 bench/train_step.py --config=configs/gpt60m.py --modalities_python=python3 "$@" 2>&1 \
    | grep -v "Unable to initialize backend" | tee -a "$OUT/$name.txt"
}
bench b64 75 --steps=30 --warmup=3 --torch_steps=30 --config.train.micro_batch_size=64
bench b8 70 --steps=100 --warmup=5 --torch_steps=50
bench b128 60 --steps=15 --warmup=3 --nomodalities --config.train.micro_batch_size=128
