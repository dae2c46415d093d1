#!/usr/bin/env bash
# Instruction tuning that visibly works, in minutes on a CPU (README "Instruction tuning", docs/instruction_tuning.md):
#   synthetic conversations ("first word of (cat,moon,red)" -> "cat") and plain-text sentences -> Modalities' YAML
#   -> prepare_instruction_tuning_data -> pretrain configs/tiny.py on the sentences -> fine-tune it (train.init_from)
#   with loss masks, and again without -> exact match of the chat replies on held-out conversations, before and after,
#   and the targets each run's loss counted.
# From the repository root after `pip install -e .`; `python` is the one jaxgpt is installed in. SMALL=1: the same,
# smaller (tests/test_tutorial_instruction_tuning.py runs it). WORK=DIR: where everything is written (runs,
# prepared data; default tutorials/instruction_tuning/work, ignored by git), started afresh each time.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/instruction_tuning" && pwd)
REPO=$(dirname "$(dirname "$HERE")")
WORK=${WORK:-$HERE/work}
SMALL=${SMALL:-0}
if [ "$SMALL" = 1 ]; then
  sizes=(2000 100 2000 500 500 20) # conversations, held out, documents, pretraining, fine-tuning, unmasked steps
else
  sizes=(4000 200 4000 1000 800 800)
fi
CONVERSATIONS=${CONVERSATIONS:-${sizes[0]}} HELD_OUT=${HELD_OUT:-${sizes[1]}} DOCUMENTS=${DOCUMENTS:-${sizes[2]}}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-${sizes[3]}} FINETUNE_STEPS=${FINETUNE_STEPS:-${sizes[4]}}
UNMASKED_STEPS=${UNMASKED_STEPS:-${sizes[5]}}
SEED=${SEED:-0} # of the data (the held-out set's is SEED + 1) and of the model's init
jaxgpt() { python -m jaxgpt.cli "$@"; }
stage() { echo "== [$SECONDS s] $*"; }
# XLA on CPU allocates its buffers afresh every step; huge pages for malloc halve the kernel time that costs
# (getting_started.sh, BENCHMARKS.md). glibc reads it at process start, so it is set before any.
export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1"
# Compiled steps kept on disk: a second run of this script skips most of each process's ~8 s of compiling
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache}

mkdir -p "$WORK"
cd "$WORK"
rm -rf runs prepared results.jsonl # this script's outputs only: a second run starts afresh
cp "$HERE/apply_chat_template.yaml" "$HERE/pbin_config.yaml" .

stage "data: conversations, held-out conversations, pretraining text and their word-level tokenizer"
python "$HERE/make_data.py" --out . --conversations "$CONVERSATIONS" --held_out "$HELD_OUT" \
  --documents "$DOCUMENTS" --seed "$SEED"
jaxgpt data prepare_instruction_tuning_data --config_file_path apply_chat_template.yaml
PREPARED=$(ls -d prepared/conversations_*)
jaxgpt create_memmap_index --index_path pretrain.idx pretrain.jsonl
jaxgpt create_packed_data --jq_pattern .text --index_path pretrain.idx --dst_path pretrain.pbin \
  --tokenizer_file tokenizer/tokenizer.json pretrain.jsonl

# configs/tiny.py (2 blocks) at width 128 on the tutorial's 90 tokens (vocab_size 128): 312,576 parameters. At tiny's
# width 64, SMALL=1 (500 + 500 steps) ended at 3-67% over seeds and learning rates, at 128 at 53-100% over seeds 0-3
# (chance ~24%). 16 windows of 64 a step on one device (tests force it: their 8 fake ones would make it 8 x 16).
tiny=(--config="$REPO/configs/tiny.py" --config.model.n_embd=128 --config.model.vocab_size=128
  --config.data.tokenizer_file=tokenizer/tokenizer.json --config.train.seed="$SEED"
  --config.train.micro_batch_size=16 --config.optim.lr=1e-3 --config.checkpoint.every=100000
  --config.train.peak_flops=1e11) # peak_flops: MFU's denominator, given to skip timing a 2048^3 matmul at each start

stage "pretraining: $PRETRAIN_STEPS steps on the plain-text sentences (no roles, no markers)"
jaxgpt train "${tiny[@]}" --workdir=runs/pretrained --config.train.num_steps="$PRETRAIN_STEPS" \
  --config.data.train_path=pretrain.pbin --config.data.val_path= --config.train.log_every=50

# The fine-tuning runs: one conversation per window (65 = seq_len + 1 tokens, disjoint), from the pretrained parameters,
# the chat template recorded for generate --chat; no evaluation during training (the held-out accuracy is the measure)
finetune=("${tiny[@]}" --config.train.init_from=runs/pretrained --config.data.reuse_last_target=False
  --config.data.chat_template_file=apply_chat_template.yaml
  --config.data.train_path="$(ls "$PREPARED"/*_train.*.pbin)" --config.data.val_path=)
stage "fine-tuning with loss masks: $FINETUNE_STEPS steps, only the assistant's replies (between ^ and \$) count"
jaxgpt train "${finetune[@]}" --workdir=runs/masked --config.train.num_steps="$FINETUNE_STEPS" \
  --config.data.loss_mask_tokens="('^','\$')"
stage "fine-tuning without masks: $UNMASKED_STEPS steps, every target counts"
jaxgpt train "${finetune[@]}" --workdir=runs/unmasked --config.train.num_steps="$UNMASKED_STEPS"

stage "what each run's loss counted"
python "$HERE/check_masks.py" --masked=runs/masked --unmasked=runs/unmasked --results=results.jsonl
stage "exact match of the greedy chat replies on $HELD_OUT held-out conversations"
python "$HERE/evaluate.py" --held_out=held_out.jsonl --chat_template_file=apply_chat_template.yaml \
  --results=results.jsonl "before (pretrained)=runs/pretrained" "after (masked)=runs/masked" \
  "after (unmasked, $UNMASKED_STEPS steps)=runs/unmasked"

stage "the same from the command line: python -m jaxgpt.generate --workdir=runs/masked --chat --prompts_file=F"
python -c 'import json
rows = [json.loads(line)["messages"] for line in open("held_out.jsonl")]
print("\n".join([m[0]["content"] for m in rows if len(m) == 2][:3]))' >chat_prompts.txt
python -m jaxgpt.generate --workdir=runs/masked --chat --max_new_tokens=8 --prompts_file=chat_prompts.txt |
  tee chat_replies.txt
echo "instruction tuning tutorial: done in $SECONDS s; runs and data in $WORK"
