#!/usr/bin/env bash
# The getting-started flow on the bundled RedPajama samples, from a fresh clone:
#   JSONL -> .idx -> .pbin (both splits) -> train gpt60m -> evaluate -> Orbax checkpoint in runs/gpt60m_steps$STEPS.
# On a 2-core CPU the full epoch takes about an hour, so by default training stops after $STEPS steps (about 10 minutes
# there). On a GPU machine run it with STEPS=0 for the full epoch. Running it again resumes from the checkpoint.
set -euo pipefail
cd "$(dirname "$0")"
STEPS=${STEPS:-24}            # optimizer steps; 0 = one full epoch of the training split (the config's default)
EVAL_STEPS=${EVAL_STEPS:-8}  # validation batches per evaluation; 0 = the full validation split
WORKDIR=${WORKDIR:-runs/gpt60m_steps$STEPS}  # one workdir per schedule: a resume must keep num_steps

python3 -m venv .venv
.venv/bin/pip install -q -e .

mkdir -p data/packed
for split in train test; do
  name=redpajama_v2_samples_512_$split
  .venv/bin/jaxgpt create_memmap_index --file_existence_policy skip \
    --index_path data/packed/$name.idx data/raw/$name.jsonl
  .venv/bin/jaxgpt create_packed_data --file_existence_policy skip \
    --jq_pattern .raw_content --index_path data/packed/$name.idx --dst_path data/packed/$name.pbin \
    --tokenizer_file data/tokenizer/tokenizer.json data/raw/$name.jsonl
done

# A tiny downstream task scored at each evaluation (50 cloze requests from the validation split: tools/make_sample_tasks.py);
# EVAL_TASKS= turns it off, or names your own (NAME:KIND:PATH, joined by ",": docs/evaluation.md).
EVAL_TASKS=${EVAL_TASKS-redpajama_cloze:cloze:data/evals/redpajama_cloze.jsonl}
flags=(--config.train.eval_steps="$EVAL_STEPS" --config.train.eval_tasks="$EVAL_TASKS")
if [ "$STEPS" != 0 ]; then
  flags+=(--config.train.num_steps="$STEPS" --config.train.eval_every="$STEPS")
  echo "getting_started: training gpt60m for $STEPS steps only, evaluating on $EVAL_STEPS validation batches" \
    "(a cap for CPUs; STEPS=0 EVAL_STEPS=0 runs the full epoch and the full validation split)"
fi
# train.compute_dtype="auto" computes in float32 on CPUs, which have no fast bfloat16 matmuls, and in bfloat16 on GPUs.
if [ "$(.venv/bin/python -c 'import jax; print(jax.default_backend())')" = cpu ]; then
  # XLA on CPU allocates its large buffers afresh every step; glibc's malloc then maps them in 4 KiB pages that the
  # kernel faults in and zeroes one by one (~8 s of system time per gpt60m step here). Transparent huge pages for
  # malloc cut it to less than half: steps 5-15% faster (BENCHMARKS.md). glibc reads it at process start: set here.
  export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1"
fi
.venv/bin/jaxgpt train --config=configs/gpt60m.py --workdir="$WORKDIR" "${flags[@]}"
