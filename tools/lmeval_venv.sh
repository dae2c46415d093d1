#!/usr/bin/env bash
# Makes .bench_cache/lmeval-venv (or $1): lm-evaluation-harness 0.4.13 with its Hugging Face backend on torch 2.13.0,
# what tools/lmeval_compare.py and bench/eval.py run lm-eval in. Idempotent: a venv that already imports them is kept.
# CI never needs it: tests/test_evals_lmeval.py compares jaxgpt with lm-eval's committed numbers
# (tests/data/evals/lmeval_golden.json) and runs the live comparison only where this venv exists.
# accelerate is lm-eval's `hf` extra that `--model hf` imports; without it lm_eval stops at "No module named
# 'accelerate'". pip takes torch from its configured index: on a machine without GPUs, add
# `--index-url https://download.pytorch.org/whl/cpu` through PIP_INDEX_URL for the CPU build (about 200 MB, not 2 GB).
set -euo pipefail
VENV=${1:-$(cd "$(dirname "$0")/.." && pwd)/.bench_cache/lmeval-venv}
PACKAGES=(torch==2.13.0 'transformers<5' lm-eval==0.4.13 accelerate)
CHECK='from importlib.metadata import version as v; import accelerate, lm_eval, torch, transformers
assert (v("lm_eval"), v("torch").split("+")[0], v("transformers")[0]) == ("0.4.13", "2.13.0", "4")'
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "$CHECK" 2>/dev/null; then
  echo "$VENV: lm-eval venv present"
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install "${PACKAGES[@]}"
"$VENV/bin/python" -c "$CHECK"
echo "$VENV: lm-eval venv ready"
